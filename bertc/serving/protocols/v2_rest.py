"""Open Inference Protocol v2 over HTTP/REST, on the server's aiohttp app.

  GET  /v2                                   server metadata
  GET  /v2/health/live                       200 while the process serves
  GET  /v2/health/ready                      200; 503 while draining
  GET  /v2/models/<name>[/versions/1]        model metadata (v2.py)
  GET  /v2/models/<name>[/versions/1]/ready  200; 404 unknown model; 503 draining
  POST /v2/models/<name>[/versions/1]/infer  {"inputs": [...], "outputs": [...]}
Data is JSON (`data`: flat or nested, row-major) or the binary tensor extension
tritonclient uses by default: the JSON header's length in
`Inference-Header-Content-Length`, then each input's raw little-endian bytes
(`parameters.binary_data_size`) in input order; outputs come back binary when the
request says `parameters.binary_data_output` or an output's `parameters.binary_data`.
Errors are the app's `{"error": "<field>: <what was expected>"}` with its statuses
(400, 404, 503 queue full or draining, 500), as the v2 spec asks.
"""

import json

import numpy as np
from aiohttp import web

from bertc.serving.protocols import v2
from bertc.serving.validation import (InputError, parse_json, refuse_unknown_keys,
                                      require_object, type_name)
from bertc.version import __version__

HEADER_LENGTH = "Inference-Header-Content-Length"
_REQUEST_KEYS = ("id", "parameters", "inputs", "outputs")
_INPUT_KEYS = ("name", "shape", "datatype", "parameters", "data")


def routes(server_key, route_key, read_body, infer_fn):
    """The v2 routes; `read_body` and `infer_fn` are the app's (body limits and timeout;
    queue full / draining / failure as InputError), server_key/route_key its keys."""

    def model(request):
        server = request.app[server_key]
        v2.check_model(server, request.match_info["name"], request.match_info.get("version"))
        return server

    async def server_metadata(request):
        request[route_key] = "v2_metadata"
        return web.json_response({"name": v2.SERVER_NAME, "version": __version__,
                                  "extensions": list(v2.EXTENSIONS)})

    async def live(request):
        request[route_key] = "v2_health"
        return web.Response(status=200)

    async def ready(request):
        request[route_key] = "v2_health"
        return web.Response(status=503 if request.app[server_key].draining else 200)

    async def model_metadata(request):
        request[route_key] = "v2_metadata"
        return web.json_response(v2.metadata(model(request)))

    async def model_ready(request):
        request[route_key] = "v2_health"
        return web.Response(status=503 if model(request).draining else 200)

    async def infer(request):
        request[route_key] = "v2_infer"
        server = model(request)
        body = await read_body(request, server)
        doc, binary = _split(body, request.headers.get(HEADER_LENGTH))
        doc = require_object(doc, "body")
        refuse_unknown_keys(doc, _REQUEST_KEYS, "")
        arrays = _inputs(doc, binary)
        requested, binary_out = _outputs(doc)
        names, stacked = await v2.infer(server, infer_fn, arrays, requested)
        return _response(server, doc.get("id"), names, stacked, binary_out)

    paths = ("/v2/models/{name}", "/v2/models/{name}/versions/{version}")
    table = [web.get("/v2", server_metadata), web.get("/v2/health/live", live),
             web.get("/v2/health/ready", ready)]
    for path in paths:
        table += [web.get(path, model_metadata), web.get(path + "/ready", model_ready),
                  web.post(path + "/infer", infer)]
    return table


def _split(body: bytes, header_length):
    """(JSON document, binary tail) of a request body."""
    if header_length is None:
        return parse_json(body), b""
    try:
        length = int(header_length)
    except ValueError:
        length = -1
    if not 0 < length <= len(body):
        raise InputError(HEADER_LENGTH, f"{header_length!r}; expected the JSON header's "
                         f"length in bytes, at most the body's {len(body)}")
    return parse_json(body[:length]), body[length:]


def _inputs(doc: dict, binary: bytes) -> dict:
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InputError("inputs", f"expected a non-empty JSON array of tensors, got "
                         f"{type_name(inputs)}")
    arrays, offset = {}, 0
    for i, tensor in enumerate(inputs):
        tensor = require_object(tensor, f"inputs[{i}]")
        refuse_unknown_keys(tensor, _INPUT_KEYS, f"inputs[{i}]")
        name = tensor.get("name")
        if not isinstance(name, str):
            raise InputError(f"inputs[{i}].name", f"expected a string, got {type_name(name)}")
        field = v2.input_field(name)
        if name in arrays:
            raise InputError(field, "given twice; expected each input once")
        dtype = v2.dtype_of(tensor.get("datatype"), field)
        shape = v2.check_shape(tensor.get("shape"), field)
        parameters = tensor.get("parameters") or {}
        size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        if size is not None:
            if type(size) is not int or size < 0 or offset + size > len(binary):
                raise InputError(f"{field}.parameters.binary_data_size", f"{size!r}; "
                                 f"expected at most the {len(binary) - offset} bytes left "
                                 "after the JSON header")
            arrays[name] = v2.from_bytes(binary[offset:offset + size], dtype, shape,
                                         f"{field}.binary data")
            offset += size
            continue
        if "data" not in tensor:
            raise InputError(f"{field}.data", "missing; expected the tensor's values")
        arrays[name] = v2.from_values(_flat_ints(tensor["data"], f"{field}.data"), dtype,
                                      shape, f"{field}.data")
    if offset != len(binary):
        raise InputError("body", f"{len(binary) - offset} bytes after the inputs' binary "
                         "data; expected none")
    return arrays


def _flat_ints(data, field: str) -> list:
    """Row-major integers of a flat or nested JSON array (booleans and floats refused)."""
    if not isinstance(data, list):
        raise InputError(field, f"expected a JSON array of integers, got {type_name(data)}")
    flat, stack = [], [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            if type(value) is not int:
                raise InputError(f"{field}[{len(flat)}]", f"expected an integer, got "
                                 f"{type_name(value)}")
            flat.append(value)
        else:
            stack.pop()
    return flat


def _outputs(doc: dict):
    """(requested output names, names to answer in binary)."""
    parameters = doc.get("parameters") or {}
    all_binary = isinstance(parameters, dict) and parameters.get("binary_data_output") is True
    outputs = doc.get("outputs", [])
    if not isinstance(outputs, list):
        raise InputError("outputs", f"expected a JSON array, got {type_name(outputs)}")
    names, binary = [], set()
    for i, output in enumerate(outputs):
        output = require_object(output, f"outputs[{i}]")
        refuse_unknown_keys(output, ("name", "parameters"), f"outputs[{i}]")
        if not isinstance(output.get("name"), str):
            raise InputError(f"outputs[{i}].name", f"expected a string, got "
                             f"{type_name(output.get('name'))}")
        names.append(output["name"])
        params = output.get("parameters") or {}
        if isinstance(params, dict) and params.get("binary_data") is True:
            binary.add(output["name"])
    return names, (None if all_binary else binary)


def _response(server, request_id, names, stacked, binary) -> web.Response:
    """JSON, or JSON header + raw float32 bytes for the binary outputs (binary None: all)."""
    outputs, tail = [], []
    for name in names:
        array = stacked[name]
        entry = {"name": name, "datatype": v2.OUTPUT_DATATYPE, "shape": list(array.shape)}
        if binary is None or name in binary:
            raw = np.ascontiguousarray(array, "<f4").tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        else:
            entry["data"] = array.ravel().tolist()
        outputs.append(entry)
    doc = {"model_name": server.name, "model_version": "1", "outputs": outputs}
    if isinstance(request_id, str) and request_id:
        doc["id"] = request_id
    header = json.dumps(doc).encode()
    if not tail:
        return web.Response(body=header, content_type="application/json")
    return web.Response(body=header + b"".join(tail), content_type="application/octet-stream",
                        headers={HEADER_LENGTH: str(len(header))})
