"""The TensorFlow runtime settings bertc applies in its own processes.

oneDNN. TensorFlow's x86 builds (2.9 and later) carry oneDNN kernels (the _Mkl*
ops: fused MatMul + BiasAdd + activation, LayerNorm, Softmax, BatchMatMul) beside
the Eigen ones. TensorFlow turns them on by default only on CPUs with
AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX. On AVX2-only CPUs (AMD Zen 1-3, Intel
before Cascade Lake) the Eigen kernels run, unless TF_ENABLE_ONEDNN_OPTS=1.
On this project's machine oneDNN was worth 1.23-1.35x on BERT at [4, 128] full
length (benchmarks/runtime_sweep.py, BENCHMARKS.md). So bertc's processes (the
CLI, the server, the library, the benchmarks) set TF_ENABLE_ONEDNN_OPTS=1
unless the environment already sets it. TF_ENABLE_ONEDNN_OPTS=0 keeps Eigen.

TensorFlow reads the variable once, when it is imported. `import bertc` sets it
and imports nothing else, so it works when bertc is imported before
TensorFlow. If TensorFlow came first, its own choice stays, and
`onednn_enabled()` says which one that was. A TensorFlow Serving process that
loads a bertc artifact needs the same variable; BUILD_NOTES.md ("Serving")
gives the settings.

The other runtime settings were measured too (BENCHMARKS.md): XLA auto-jit and
single inter-op threads gained nothing, and Grappler's remapper is on by default.
bertc leaves them as TensorFlow has them.
"""

import os
import sys
from typing import MutableMapping, Optional

ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
#: Replicas `bertc serve` runs by default, each one Session; 2 x 1 thread beat
#: 1 x 2 threads on 2 cores (bertc/serving/defaults.py, BENCHMARKS.md).
DEFAULT_REPLICAS = 2


def default_intra_op_threads(replicas: int = DEFAULT_REPLICAS) -> int:
    """Intra-op threads of one served Session when `replicas` Sessions share the CPU."""
    return max(1, (os.cpu_count() or 1) // replicas)


def apply_defaults(environ: Optional[MutableMapping[str, str]] = None) -> bool:
    """Sets TF_ENABLE_ONEDNN_OPTS=1 where the environment leaves it unset.

    Returns True if it was set here. It does nothing once TensorFlow is imported,
    because TensorFlow has then already chosen its kernels.
    """
    environ = os.environ if environ is None else environ
    if ONEDNN_VARIABLE in environ or "tensorflow" in sys.modules:
        return False
    environ[ONEDNN_VARIABLE] = "1"
    return True


def onednn_enabled() -> bool:
    """Whether the imported TensorFlow runs its oneDNN (_Mkl*) ops."""
    from tensorflow.python.util import _pywrap_util_port
    return bool(_pywrap_util_port.IsMklEnabled())


def describe() -> str:
    """One line for logs, e.g. 'oneDNN on (TF_ENABLE_ONEDNN_OPTS=1)'."""
    setting = os.environ.get(ONEDNN_VARIABLE)
    where = f"{ONEDNN_VARIABLE}={setting}" if setting is not None else "TensorFlow's default"
    return f"oneDNN {'on' if onednn_enabled() else 'off'} ({where})"
