"""Open Inference Protocol v2 over gRPC: `inference.GRPCInferenceService`.

The messages and the service base class are the generated modules tritonclient
ships (tritonclient.grpc.service_pb2, service_pb2_grpc), the same ones
tritonclient.grpc sends:

  ServerLive, ServerReady (false while draining), ServerMetadata
  ModelReady                    false for another model or version, or while draining
  ModelMetadata                 model_name, model_version "" | "1"
  ModelInfer                    inputs [{name, datatype INT32 | INT64, shape [B, L],
                                contents.int_contents | int64_contents}] or, as
                                tritonclient sends them, raw_input_contents (one
                                little-endian buffer per input, in input order);
                                outputs [{name}] optional
                             -> outputs [{name, FP32, shape}] + raw_output_contents
Other methods answer UNIMPLEMENTED (the base class). Refusals: calls.py.
"""

import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from bertc.serving.protocols import calls, v2
from bertc.serving.validation import InputError
from bertc.version import __version__


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):

    def __init__(self, server, infer):
        self._server = server
        self._infer = infer

    async def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=not self._server.draining)

    async def ServerMetadata(self, request, context):
        return service_pb2.ServerMetadataResponse(name=v2.SERVER_NAME, version=__version__,
                                                  extensions=list(v2.EXTENSIONS))

    async def ModelReady(self, request, context):
        """ready false for a model or version not served, as Triton answers."""
        served = request.name == self._server.name and request.version in ("", "1")
        return service_pb2.ModelReadyResponse(ready=served and not self._server.draining)

    async def ModelMetadata(self, request, context):
        async def metadata():
            v2.check_model(self._server, request.name, request.version)
            doc = v2.metadata(self._server)
            response = service_pb2.ModelMetadataResponse(
                name=doc["name"], versions=doc["versions"], platform=doc["platform"])
            for key in ("inputs", "outputs"):
                for t in doc[key]:
                    getattr(response, key).add(name=t["name"], datatype=t["datatype"],
                                               shape=t["shape"])
            return response
        return await calls.serve(self._server, "v2_grpc_metadata", context, metadata)

    async def ModelInfer(self, request, context):
        return await calls.serve(self._server, "v2_grpc_infer", context,
                                 lambda: self._model_infer(request))

    async def _model_infer(self, request):
        server = self._server
        v2.check_model(server, request.model_name, request.model_version)
        arrays = _inputs(request)
        names, stacked = await v2.infer(server, self._infer, arrays,
                                        [o.name for o in request.outputs])
        response = service_pb2.ModelInferResponse(model_name=server.name, model_version="1",
                                                  id=request.id)
        for name in names:
            array = stacked[name]
            response.outputs.add(name=name, datatype=v2.OUTPUT_DATATYPE, shape=array.shape)
            response.raw_output_contents.append(np.ascontiguousarray(array, "<f4").tobytes())
        return response


def _inputs(request) -> dict:
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InputError("raw_input_contents", f"{len(raw)} buffers; expected one per input "
                         f"({len(request.inputs)})")
    arrays = {}
    for i, tensor in enumerate(request.inputs):
        field = v2.input_field(tensor.name)
        if tensor.name in arrays:
            raise InputError(field, "given twice; expected each input once")
        dtype = v2.dtype_of(tensor.datatype, field)
        shape = v2.check_shape(list(tensor.shape), field)
        if raw:
            arrays[tensor.name] = v2.from_bytes(raw[i], dtype, shape,
                                                f"raw_input_contents[{i}]")
            continue
        values = (tensor.contents.int_contents if dtype.itemsize == 4
                  else tensor.contents.int64_contents)
        which = "int_contents" if dtype.itemsize == 4 else "int64_contents"
        arrays[tensor.name] = v2.from_values(list(values), dtype, shape,
                                             f"{field}.contents.{which}")
    return arrays


def add_to_server(grpc_server, server, infer) -> None:
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceService(server, infer), grpc_server)
