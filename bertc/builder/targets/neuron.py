"""Compile a BERT SavedModel for AWS Inferentia (inf1) with the Neuron SDK.

The Neuron SDK's `tensorflow-neuron` package comes from Neuron's own pip
repository (PyPI's `tensorflow-neuron` and `neuron-cc` are placeholders) and
exists only for TensorFlow 1.15 and 2.1-2.10 on Python <= 3.10. This module

* checks, before anything touches disk, that the running interpreter and
  TensorFlow can use the SDK and that `tensorflow.neuron` imports (`preflight`);
* describes one `tensorflow.neuron.saved_model.compile` call as data
  (`NeuronCompileCall`), which can be rendered as the exact Python call text or
  recorded in a manifest;
* runs that call (`compile_saved_model`) and reports the SDK's `OnNeuronRatio`.

In TF 2.x Neuron the SDK recommends `tensorflow.neuron.trace(func, inputs)` with
compiler flags in the NEURON_CC_FLAGS environment variable; this target uses the
SavedModel compile API. Inf2/Trn1 use `tensorflow_neuronx`, a different product
that this target does not drive.
"""

import dataclasses
import importlib
import logging
import os
import re
import shlex
import sys
from typing import Callable, Optional

from bertc.errors import BertcError

logger = logging.getLogger(__name__)

#: TensorFlow (major, minor) versions that tensorflow-neuron is published for.
SUPPORTED_TF_VERSIONS = ((1, 15),) + tuple((2, minor) for minor in range(1, 11))
#: Human-readable form of SUPPORTED_TF_VERSIONS for messages.
SUPPORTED_TF_TEXT = "TF 1.15 and 2.1-2.10"
#: Newest Python (major, minor) that tensorflow-neuron supports.
MAX_PYTHON_VERSION = (3, 10)
#: The newest TensorFlow line with a tensorflow-neuron release.
RECOMMENDED_TF_PIN = "tensorflow==2.10.*"
#: Where the real SDK comes from.
NEURON_PIP_INDEX = "https://pip.repos.neuron.amazonaws.com"
#: The install command for the SDK (inside a supported environment).
INSTALL_COMMAND = f"pip install tensorflow-neuron[cc] --extra-index-url={NEURON_PIP_INDEX}"
#: Full hint: which environment to create and what to install into it.
INSTALL_HINT = (
    f"create a Python <= {MAX_PYTHON_VERSION[0]}.{MAX_PYTHON_VERSION[1]} environment "
    f"with {RECOMMENDED_TF_PIN} and run: {INSTALL_COMMAND}"
)
#: Note appended where a user may be after the newer chips.
NEURONX_NOTE = "(Inf2/Trn1 use tensorflow-neuronx, a different product)"

#: The SDK entry point that NeuronCompileCall describes.
COMPILE_API = "tensorflow.neuron.saved_model.compile"
#: Compiler flags used by the AWS BERT demo: cast fp32 matmuls to bf16.
DEFAULT_COMPILER_ARGS = ("--fp32-cast", "matmult")

#: Keyword arguments that list node names (summarised by NeuronCompileCall.summary).
_OP_LISTS = ("no_fuse_ops", "force_fuse_ops")

_VERSION_RE = re.compile(r"^\s*(\d+)\.(\d+)")


def _parse_tf_version(text: str) -> tuple:
    """Return (major, minor) from a version like '2.10.1', '1.15.5' or '2.16.0rc1'."""
    match = _VERSION_RE.match(str(text))
    if not match:
        raise BertcError(
            f"`target` neuron: cannot read TensorFlow version {text!r}; expected 'X.Y.Z' such as '2.10.1'"
        )
    return int(match.group(1)), int(match.group(2))


def _running_tf_version() -> str:
    try:
        tf = importlib.import_module("tensorflow")
    except ImportError as exc:
        raise BertcError(
            f"`target` neuron: TensorFlow is not importable ({exc}); {INSTALL_HINT}"
        ) from exc
    return str(getattr(tf, "__version__", ""))


def preflight(
    tf_version: Optional[str] = None,
    python_version: Optional[tuple] = None,
    importer: Callable[[str], object] = importlib.import_module,
) -> None:
    """Check that the Neuron SDK can run here; raise BertcError saying what to do if not.

    Checks, in order: the Python version, the TensorFlow version and whether
    `tensorflow.neuron` imports. The import is attempted (through `importer`)
    only when both versions are supported. `None` arguments mean the running
    interpreter's and TensorFlow's versions.
    """
    if python_version is None:
        python_version = tuple(sys.version_info[:2])
    py = tuple(int(part) for part in tuple(python_version)[:2])
    py_text = ".".join(str(part) for part in py)
    max_py_text = f"{MAX_PYTHON_VERSION[0]}.{MAX_PYTHON_VERSION[1]}"
    if py > MAX_PYTHON_VERSION:
        raise BertcError(
            f"`target` neuron: Python {py_text} is not supported by tensorflow-neuron "
            f"(supports Python <= {max_py_text}); {INSTALL_HINT}"
        )

    if tf_version is None:
        tf_version = _running_tf_version()
    tf = _parse_tf_version(tf_version)
    if tf not in SUPPORTED_TF_VERSIONS:
        raise BertcError(
            f"`target` neuron: TensorFlow {tf_version} is not supported by tensorflow-neuron "
            f"(supports {SUPPORTED_TF_TEXT}); {INSTALL_HINT} {NEURONX_NOTE}"
        )

    try:
        importer("tensorflow.neuron")
    except ImportError as exc:
        raise BertcError(
            f"`target` neuron: the Neuron SDK is not installed (import tensorflow.neuron failed: "
            f"{_first_line(exc)}); run: {INSTALL_COMMAND}"
        ) from exc
    except Exception as exc:  # the SDK's import can fail loading its native ops
        raise BertcError(
            f"`target` neuron: import tensorflow.neuron failed: {_first_line(exc)}; reinstall with: "
            f"{INSTALL_COMMAND}"
        ) from exc
    logger.debug("neuron preflight ok: Python %s, TensorFlow %s", py_text, tf_version)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def _check_str_list(flag: str, value) -> Optional[list]:
    if value is None:
        return None
    if isinstance(value, str) or not all(isinstance(item, str) for item in value):
        raise BertcError(f"`{flag}`: expected a list of strings, got {value!r}")
    return list(value)


@dataclasses.dataclass
class NeuronCompileCall:
    """One `tensorflow.neuron.saved_model.compile(model_dir, new_model_dir, **kwargs)` call."""

    model_dir: str
    new_model_dir: str
    batch_size: int = 1
    compiler_args: list = dataclasses.field(default_factory=lambda: list(DEFAULT_COMPILER_ARGS))
    no_fuse_ops: Optional[list] = None
    force_fuse_ops: Optional[list] = None
    minimum_segment_size: Optional[int] = None
    compiler_workdir: Optional[str] = None
    signature_def_key: str = "serving_default"

    def __post_init__(self):
        self.model_dir = os.fspath(self.model_dir)
        self.new_model_dir = os.fspath(self.new_model_dir)
        if not self.model_dir:
            raise BertcError("`target` neuron: model_dir is empty; expected a SavedModel directory")
        if not self.new_model_dir:
            raise BertcError("`target` neuron: new_model_dir is empty; expected an output directory path")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise BertcError(f"`batch_size`: expected a positive integer, got {self.batch_size!r}")
        self.compiler_args = _check_str_list("compiler_args", self.compiler_args) or []
        self.no_fuse_ops = _check_str_list("no_fuse_ops", self.no_fuse_ops)
        self.force_fuse_ops = _check_str_list("force_fuse_ops", self.force_fuse_ops)
        if self.minimum_segment_size is not None and (
            isinstance(self.minimum_segment_size, bool)
            or not isinstance(self.minimum_segment_size, int)
            or self.minimum_segment_size < 1
        ):
            raise BertcError(
                f"`minimum_segment_size`: expected a positive integer, got {self.minimum_segment_size!r}"
            )
        if self.compiler_workdir is not None:
            self.compiler_workdir = os.fspath(self.compiler_workdir)
        if not isinstance(self.signature_def_key, str) or not self.signature_def_key:
            raise BertcError(
                f"`signature_def_key`: expected a non-empty signature name, got {self.signature_def_key!r}"
            )

    def kwargs(self) -> dict:
        """Exactly the keyword arguments passed to compile; None-valued optional ones are left out."""
        kwargs = {
            "batch_size": self.batch_size,
            "signature_def_key": self.signature_def_key,
            "compiler_args": list(self.compiler_args),
        }
        optional = {
            "no_fuse_ops": None if self.no_fuse_ops is None else list(self.no_fuse_ops),
            "force_fuse_ops": None if self.force_fuse_ops is None else list(self.force_fuse_ops),
            "minimum_segment_size": self.minimum_segment_size,
            "compiler_workdir": self.compiler_workdir,
        }
        kwargs.update({key: value for key, value in optional.items() if value is not None})
        return kwargs

    def render(self) -> str:
        """The exact Python call as text (every value as its repr, lists in full)."""
        args = [repr(self.model_dir), repr(self.new_model_dir)]
        args += [f"{key}={value!r}" for key, value in self.kwargs().items()]
        return f"{COMPILE_API}({', '.join(args)})"

    def summary(self) -> str:
        """The call for a log line: as `render`, but the op lists (which name
        every node of a partition, thousands for BERT-Large) as counts:
        `no_fuse_ops=<57 ops>`.  Not valid Python; the manifest holds `render`."""
        args = [repr(self.model_dir), repr(self.new_model_dir)]
        for key, value in self.kwargs().items():
            if key in _OP_LISTS:
                args.append(f"{key}=<{len(value)} ops>")
            else:
                args.append(f"{key}={value!r}")
        return f"{COMPILE_API}({', '.join(args)})"

    def to_json(self) -> dict:
        """A JSON-serializable record of the call for a build manifest."""
        return {
            "api": COMPILE_API,
            "model_dir": self.model_dir,
            "new_model_dir": self.new_model_dir,
            "kwargs": self.kwargs(),
            "call": self.render(),
        }


def parse_compiler_args(text: str) -> list:
    """Split a flag value like "--fp32-cast matmult" into compiler arguments (shell quoting)."""
    try:
        return shlex.split(text or "")
    except ValueError as exc:
        raise BertcError(
            f"`compiler_args`: cannot split {text!r} ({exc}); expected shell-style words such as "
            f"'--fp32-cast matmult'"
        ) from exc


def _refuse_existing_output(new_model_dir: str) -> None:
    if os.path.lexists(new_model_dir):
        raise BertcError(
            f"`target` neuron: new_model_dir {new_model_dir} already exists; expected a path that "
            f"does not exist yet ({COMPILE_API} refuses to overwrite)"
        )


def compile_saved_model(call: NeuronCompileCall) -> dict:
    """Run preflight, then `tensorflow.neuron.saved_model.compile`; return {'OnNeuronRatio': float}."""
    preflight()
    _refuse_existing_output(call.new_model_dir)
    if not os.path.isdir(call.model_dir):
        raise BertcError(
            f"`target` neuron: model_dir {call.model_dir} is not a directory; expected an exported SavedModel"
        )

    import tensorflow.neuron as tfn  # noqa: E402  (lazy: only exists inside the Neuron SDK)

    compile_fn = getattr(getattr(tfn, "saved_model", None), "compile", None)
    if compile_fn is None:
        raise BertcError(
            f"`target` neuron: this tensorflow-neuron has no {COMPILE_API}; use TF 1.15 Neuron "
            f"(TF 2.x Neuron recommends tensorflow.neuron.trace with NEURON_CC_FLAGS) {NEURONX_NOTE}"
        )

    logger.info("running %s", call.summary())
    try:
        result = compile_fn(call.model_dir, call.new_model_dir, **call.kwargs())
    except Exception as exc:
        where = f"; compiler logs in {call.compiler_workdir}" if call.compiler_workdir else ""
        raise BertcError(f"`target` neuron: {COMPILE_API} failed: {_first_line(exc)}{where}") from exc

    try:
        ratio = float(result["OnNeuronRatio"])
    except (TypeError, KeyError, ValueError) as exc:
        raise BertcError(
            f"`target` neuron: {COMPILE_API} returned {result!r}; expected a dict with 'OnNeuronRatio'"
        ) from exc
    logger.info("neuron compile wrote %s, OnNeuronRatio=%.3f", call.new_model_dir, ratio)
    if ratio == 0.0:
        logger.warning("no operators were placed on Neuron (OnNeuronRatio=0); the model will run on CPU")
    return {"OnNeuronRatio": ratio}
