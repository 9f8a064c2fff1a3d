"""The OpenVINO runner: a bucket's IR compiled for the CPU plugin, run as it is served.

`compile_ir(xml, properties)` is the only place bertc compiles an IR; verify,
`bertc serve` and the benchmarks call it with the properties of
bertc.runtime.openvino_settings.served_properties, so what is verified is what is
served.  A compiled model runs NUM_STREAMS infer requests at once; each
`OpenVINORunner` holds one request, and a call releases the GIL while it runs.
A runner is called with {input name: int32 [B, S]} and returns {output name:
array} (copies: a request reuses its output tensors).
"""

import os
from typing import Dict, Optional

import numpy as np

from bertc.runtime import openvino_settings as target
from bertc.errors import BertcError


def compile_ir(xml_path: str, properties: dict):
    """openvino.Core().compile_model(xml, 'CPU', properties); BertcError naming a
    missing or unreadable IR."""
    ov = target.load()
    if not os.path.isfile(xml_path):
        raise BertcError(f"{xml_path}: file not found; expected the OpenVINO IR written by "
                         "bertc build --target openvino")
    try:
        return ov.Core().compile_model(xml_path, "CPU", properties)
    except RuntimeError as exc:
        first = next((ln for ln in str(exc).splitlines() if ln.strip()), "")
        raise BertcError(f"{xml_path}: OpenVINO cannot compile it ({first.strip()})") from None


def effective_properties(compiled) -> Dict[str, str]:
    """Every readable property of a compiled model, as text (what the report records)."""
    values = {}
    for name in compiled.get_property("SUPPORTED_PROPERTIES"):
        if name == "SUPPORTED_PROPERTIES":
            continue
        try:
            values[name] = str(compiled.get_property(name))
        except RuntimeError:
            pass
    return values


class OpenVINORunner:
    """One infer request of a compiled model: runner({name: array}) -> {name: array}."""

    def __init__(self, compiled):
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self.output_names = [o.get_any_name() for o in compiled.outputs]

    def __call__(self, feeds: dict) -> dict:
        result = self._request.infer({k: np.asarray(v, np.int32) for k, v in feeds.items()})
        return {port.get_any_name(): np.array(value) for port, value in result.items()}

    def close(self) -> None:
        self._request = self._compiled = None


def ir_runner(xml_path: str, properties: dict) -> OpenVINORunner:
    return OpenVINORunner(compile_ir(xml_path, properties))


def openvino_runs(xml_path: str, inference_precision: str,
                  properties: Optional[dict] = None) -> dict:
    """{'openvino': (runner factory, description)} for verify: the IR compiled with
    serve's default properties (or `properties`)."""
    properties = properties or target.served_properties(inference_precision)
    description = {"mode": "openvino", "ir": os.path.basename(os.path.dirname(xml_path)),
                   "properties": dict(properties)}

    def factory():
        compiled = compile_ir(xml_path, properties)
        description["effective_properties"] = effective_properties(compiled)
        return OpenVINORunner(compiled)

    return {"openvino": (factory, description)}
