"""The one exception type users see.

A `BertcError` carries a single line that names the file, flag, field or tensor
at fault and what was expected. The CLI prints it as `bertc: error: <line>` and
exits 2 (bad input) or, for a `CheckFailed`, 1, without a traceback; library
callers can catch it.
"""


class BertcError(Exception):
    """A user-facing error: one line naming what is wrong and what was expected."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class CheckFailed(BertcError):
    """A check ran and said no (verify outside its thresholds, no request answered).

    The CLI exits 1 for it; every other BertcError is bad input and exits 2.
    """
