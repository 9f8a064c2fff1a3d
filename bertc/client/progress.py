"""A one-line progress bar on stderr, redrawn at most 10 times a second."""

import sys
import time


class ProgressBar:
    """`update(ok)` once per finished request; `close()` ends the line."""

    WIDTH = 30

    def __init__(self, total: int, enabled: bool, stream=None):
        self.total = total
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.done = 0
        self.errors = 0
        self._start = time.monotonic()
        self._last_draw = 0.0

    def update(self, ok: bool = True) -> None:
        self.done += 1
        self.errors += 0 if ok else 1
        now = time.monotonic()
        if self.enabled and (now - self._last_draw >= 0.1 or self.done == self.total):
            self._last_draw = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        filled = int(self.WIDTH * self.done / max(self.total, 1))
        rate = self.done / max(now - self._start, 1e-9)
        self.stream.write(f"\r[{'#' * filled}{'.' * (self.WIDTH - filled)}] "
                          f"{self.done}/{self.total} requests  {rate:.1f}/s  "
                          f"errors {self.errors}")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.done:
            self.stream.write("\n")
            self.stream.flush()


def should_show(requested: bool, stream=None) -> bool:
    """--progress, or stderr is a terminal."""
    stream = stream or sys.stderr
    return requested or (hasattr(stream, "isatty") and stream.isatty())
