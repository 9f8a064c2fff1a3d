"""Atomic output directories: build in a sibling temporary directory, then rename.

An error, Ctrl-C or a kill before the rename leaves the destination as it was:
never a half-written output. An existing directory is replaced only with
overwrite, and only when bertc wrote it (its marker says so) or it is empty;
the old one stays whole until the new one is complete. The output's place is
checked before any work: not the working directory or a directory holding it,
not the source or inside it, and its parent can be created and written. The
finished tree gets the modes of a normal file tree (0777/0666 less the umask).
"""

import contextlib
import json
import os
import shutil
import tempfile
from typing import Callable, Iterable, List, Optional

from bertc.errors import BertcError

#: A check that says whether an existing directory is an output bertc wrote.
Marker = Callable[[str], bool]


def json_marker(file_name: str, key: str, value=None) -> Marker:
    """A marker: `file_name` in the directory is a JSON object with `key`
    (equal to `value` when one is given)."""
    def is_bertc_output(path: str) -> bool:
        try:
            with open(os.path.join(path, file_name), encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, ValueError):
            return False
        return isinstance(doc, dict) and key in doc and (value is None or doc[key] == value)
    is_bertc_output.describe = (f"{file_name} with {key!r}" if value is None
                                else f"{file_name} saying {key} {value!r}")
    return is_bertc_output


def _inside(path: str, root: str) -> bool:
    """path is root or below it (both real paths)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def check_place(path: str, sources: Iterable[str] = (), flag: str = "output") -> None:
    """Refuses an output that holds the working directory or a source, or lies in one."""
    real = os.path.realpath(path)
    if _inside(os.path.realpath(os.getcwd()), real):
        raise BertcError(f"`{flag}` {path}: contains the working directory; expected a new "
                         "directory elsewhere, such as artifacts/NAME")
    for source in sources:
        source_real = os.path.realpath(source)
        if _inside(source_real, real):
            raise BertcError(f"`{flag}` {path}: contains the source {source}; expected a "
                             "directory outside it")
        if _inside(real, source_real):
            raise BertcError(f"`{flag}` {path}: is inside the source {source}; expected a "
                             "directory outside it")


def _listing(path: str, limit: int = 3) -> str:
    names = sorted(os.listdir(path))
    shown = [n + ("/" if os.path.isdir(os.path.join(path, n)) else "") for n in names[:limit]]
    return ", ".join(shown) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def refuse_existing(path: str, overwrite: bool, flag: str = "output",
                    marker: Optional[Marker] = None) -> None:
    """Refuses an existing `path` unless overwrite and it is empty or bertc's (marker)."""
    if not os.path.lexists(path):
        return
    if not overwrite:
        raise BertcError(f"`{flag}` {path}: already exists; expected a new path, or pass "
                         "`overwrite` to replace it")
    if os.path.islink(path) or not os.path.isdir(path):
        raise BertcError(f"`{flag}` {path}: exists and is not a directory; refusing to replace it")
    if not os.listdir(path) or (marker is not None and marker(path)):
        return
    what = getattr(marker, "describe", "a bertc marker")
    raise BertcError(f"`{flag}` {path}: `overwrite` replaces only an empty directory or one "
                     f"bertc wrote ({what}); it holds {_listing(path)}; nothing was deleted")


def _make_parent(parent: str, flag: str, path: str) -> List[str]:
    """Creates the missing directories up to `parent`; returns them, outermost first."""
    missing = []
    here = parent
    while not os.path.exists(here):
        missing.insert(0, here)
        here = os.path.dirname(here)
    if not os.path.isdir(here):
        raise BertcError(f"`{flag}` {path}: {here} is not a directory; expected a path under "
                         "a writable directory")
    for directory in missing:
        try:
            os.mkdir(directory)
        except OSError as e:
            _remove_empty(missing)
            raise BertcError(f"`{flag}` {path}: cannot create {directory} ({e.strerror}); "
                             "expected a path under a writable directory") from None
    return missing


def _remove_empty(directories: List[str]) -> None:
    for directory in reversed(directories):
        with contextlib.suppress(OSError):
            os.rmdir(directory)


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask_modes(root: str) -> None:
    """Directories 0777 and files 0666 (0777 if executable) less the umask, as a
    normal file tree; mkdtemp's 0700 would otherwise survive the rename."""
    mask = current_umask()
    os.chmod(root, 0o777 & ~mask)
    for base, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(base, name), 0o777 & ~mask)
        for name in files:
            full = os.path.join(base, name)
            if not os.path.islink(full):
                executable = os.stat(full).st_mode & 0o111
                os.chmod(full, (0o777 if executable else 0o666) & ~mask)


def _temporary_directory(parent: str, name: str, flag: str, path: str) -> str:
    try:
        return tempfile.mkdtemp(prefix=f".{name}.partial-", dir=parent)
    except OSError as e:
        raise BertcError(f"`{flag}` {path}: cannot write in {parent} ({e.strerror}); expected "
                         "a writable directory") from None


def _move_into_place(tmp: str, path: str) -> None:
    """Renames tmp to path; an existing path is moved aside first and removed after."""
    if not os.path.lexists(path):
        os.rename(tmp, path)
        return
    parent, name = os.path.split(path)
    old = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
    os.rename(path, os.path.join(old, "x"))
    os.rename(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def output_directory(path: str, overwrite: bool = False, flag: str = "output",
                     marker: Optional[Marker] = None, sources: Iterable[str] = ()):
    """Yields a temporary directory that becomes `path` when the block succeeds.

    Every check runs before the block: the place (check_place), an existing
    directory (refuse_existing), and that the parent can be created and written.
    """
    path = os.path.abspath(path)
    check_place(path, sources, flag)
    refuse_existing(path, overwrite, flag, marker)
    parent = os.path.dirname(path)
    created = _make_parent(parent, flag, path)
    try:
        tmp = _temporary_directory(parent, os.path.basename(path), flag, path)
    except BaseException:
        _remove_empty(created)
        raise
    try:
        yield tmp
        apply_umask_modes(tmp)
        _move_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        raise
