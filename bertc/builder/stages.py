"""Timing and peak memory of the build's stages, logged as they finish."""

import contextlib
import logging
import resource
import sys
import time

#: The stage lines' logger: the CLI shows it at its default verbosity.
logger = logging.getLogger(__name__)
#: Loggers whose INFO lines a quiet `bertc build` still shows: the stage lines, and
#: the int8 search's steps (each names the layers it put back in f32, and the error).
SHOWN_LOGGERS = (__name__, "bertc.builder.targets.openvino_int8")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class StageLog:
    """Collects (stage, seconds, peak MiB) and logs each stage when it ends."""

    def __init__(self):
        self.stages = []

    @contextlib.contextmanager
    def stage(self, name: str):
        start = time.monotonic()
        yield
        seconds = time.monotonic() - start
        peak = peak_rss_mb()
        self.stages.append({"stage": name, "seconds": round(seconds, 3),
                            "peak_rss_mb": round(peak, 1)})
        logger.info("stage %-8s %7.2f s   peak memory %8.1f MiB", name, seconds, peak)

    def total_seconds(self) -> float:
        return sum(s["seconds"] for s in self.stages)
