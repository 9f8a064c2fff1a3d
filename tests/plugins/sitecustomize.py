"""Test-only start-up hook (tests put this directory first on PYTHONPATH; users never do).

BERTC_TEST_FAIL_STAGE=<stage> makes that build stage raise a RuntimeError, a stand-in
for a bug in bertc, so tests can see what the CLI does with an unexpected exception.
"""

import contextlib
import os

_STAGE = os.environ.get("BERTC_TEST_FAIL_STAGE")

if _STAGE:
    from bertc.builder import stages

    _original = stages.StageLog.stage

    @contextlib.contextmanager
    def _failing_stage(self, name):
        if name == _STAGE:
            raise RuntimeError(f"injected failure in stage {name}")
        with _original(self, name):
            yield

    stages.StageLog.stage = _failing_stage
