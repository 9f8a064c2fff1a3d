"""Atomic output directories: build in a sibling temporary directory, then rename.

An error, Ctrl-C or a kill before the rename leaves the destination as it was:
never a half-written artifact, never an existing directory clobbered unless the
caller asked for overwrite.
"""

import contextlib
import os
import shutil
import tempfile

from bertc.errors import BertcError


def refuse_existing(path: str, overwrite: bool, flag: str = "--output") -> None:
    if os.path.lexists(path) and not overwrite:
        raise BertcError(f"{flag} {path}: already exists; expected a new path, or pass "
                         "--overwrite to replace it")
    if os.path.lexists(path) and not os.path.isdir(path):
        raise BertcError(f"{flag} {path}: exists and is not a directory; refusing to replace it")


@contextlib.contextmanager
def output_directory(path: str, overwrite: bool = False, flag: str = "--output"):
    """Yields a temporary directory that becomes `path` when the block succeeds."""
    path = os.path.abspath(path)
    refuse_existing(path, overwrite, flag)
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise BertcError(f"{flag} {path}: cannot create parent directory ({e.strerror})") from None
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.partial-", dir=parent)
    try:
        yield tmp
        if os.path.lexists(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
            os.rename(path, os.path.join(old, "x"))
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
