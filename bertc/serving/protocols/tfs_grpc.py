"""TensorFlow Serving's gRPC `tensorflow.serving.PredictionService`: Predict, GetModelMetadata.

The messages and the service base class are tensorflow-serving-api's generated
modules (tensorflow_serving.apis), so any TF Serving client talks to bertc:

  Predict           model_spec {name, version?, signature_name "" | serving_default}
                    inputs {input_ids, input_mask?, segment_ids?: TensorProto
                            DT_INT32 | DT_INT64 [B, L]}   (defaults as REST :predict)
                    output_filter: outputs to answer (all when empty)
                 -> outputs {name: TensorProto DT_FLOAT [B, ...] in tensor_content}
  GetModelMetadata  metadata_field ["signature_def"]
                 -> metadata["signature_def"]: SignatureDefMap {serving_default}
Rows go through REST's checks and the one Batcher (tensors.py); refusals are
gRPC statuses (calls.py) whose message names the field, e.g.
  INVALID_ARGUMENT  inputs["input_mask"][0][3]: mask value 7 out of range; expected 0 or 1
"""

import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, predict_pb2,
                                     prediction_service_pb2_grpc)

from bertc.serving import predict
from bertc.serving.protocols import calls, tensors
from bertc.serving.validation import InputError

_DTYPES = {types_pb2.DT_INT32: np.dtype("<i4"), types_pb2.DT_INT64: np.dtype("<i8")}
METHOD = "tensorflow/serving/predict"


def _input_field(name: str) -> str:
    return f'inputs["{name}"]'


def tensor_to_array(proto: tensor_pb2.TensorProto, field: str) -> np.ndarray:
    """An integer TensorProto as a numpy array (tensor_content or int_val/int64_val)."""
    dtype = _DTYPES.get(proto.dtype)
    if dtype is None:
        raise InputError(f"{field}.dtype", f"{types_pb2.DataType.Name(proto.dtype)}; "
                         "expected DT_INT32 or DT_INT64 token ids")
    shape = [d.size for d in proto.tensor_shape.dim]
    if proto.tensor_shape.unknown_rank or any(s < 0 for s in shape):
        raise InputError(f"{field}.tensor_shape", f"{shape}; expected a known shape "
                         "[batch, tokens]")
    count = int(np.prod(shape)) if shape else 1
    if proto.tensor_content:
        if len(proto.tensor_content) != count * dtype.itemsize:
            raise InputError(f"{field}.tensor_content", f"{len(proto.tensor_content)} bytes; "
                             f"expected {count * dtype.itemsize} for shape {shape}")
        values = np.frombuffer(proto.tensor_content, dtype)
    else:
        values = np.asarray(proto.int_val if dtype.itemsize == 4 else proto.int64_val, dtype)
        if values.size != count:
            field_name = "int_val" if dtype.itemsize == 4 else "int64_val"
            raise InputError(f"{field}.{field_name}", f"{values.size} values; expected "
                             f"{count} for shape {shape}")
    return values.reshape(shape)


def array_to_tensor(array: np.ndarray) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT,
                                   tensor_content=np.ascontiguousarray(array, "<f4").tobytes())
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    return proto


def signature_def(art) -> meta_graph_pb2.SignatureDef:
    """serving_default as the artifact's SavedModels have it (-1 where it varies)."""
    signature = meta_graph_pb2.SignatureDef(method_name=METHOD)
    for name in art.inputs:
        info = signature.inputs[name]
        info.name, info.dtype = f"{name}:0", types_pb2.DT_INT32
        for _ in range(2):
            info.tensor_shape.dim.add(size=-1)
    for name in art.outputs:
        info = signature.outputs[name]
        info.name, info.dtype = f"{name}:0", types_pb2.DT_FLOAT
        for size in tensors.output_shape(art, name):
            info.tensor_shape.dim.add(size=size)
    return signature


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata over the server's Batcher; the rest UNIMPLEMENTED."""

    def __init__(self, server, infer):
        self._server = server
        self._infer = infer  # app.infer_or_refuse: QueueFull/closed/failed as InputError

    async def Predict(self, request, context):
        return await calls.serve(self._server, "grpc_predict", context,
                                 lambda: self._predict(request))

    async def GetModelMetadata(self, request, context):
        return await calls.serve(self._server, "grpc_metadata", context,
                                 lambda: self._metadata(request))

    def _check_spec(self, spec) -> None:
        version = str(spec.version.value) if spec.HasField("version") else None
        if spec.version_label:
            raise InputError("model_spec.version_label", f"{spec.version_label!r} not found; "
                             "expected none (version 1 only)", status=404)
        calls.check_model(self._server, spec.name, version, "model_spec.name",
                          "model_spec.version")
        if spec.signature_name not in ("", predict.SIGNATURE_KEY):
            raise InputError("model_spec.signature_name", f"{spec.signature_name!r} not "
                             f"found; expected {predict.SIGNATURE_KEY!r}")

    def _answer_spec(self, spec) -> None:
        spec.name = self._server.name
        spec.version.value = 1

    async def _predict(self, request):
        server, art = self._server, self._server.artifact
        self._check_spec(request.model_spec)
        names = tensors.check_outputs(list(request.output_filter), art, "output_filter")
        arrays = {name: tensor_to_array(proto, _input_field(name))
                  for name, proto in request.inputs.items()}
        rows = tensors.rows_from_tensors(arrays, art, server.config.max_instances, "inputs",
                                         _input_field)
        results = await self._infer(server, rows)
        stacked = tensors.stack_outputs(results, names, arrays["input_ids"].shape[1])
        response = predict_pb2.PredictResponse()
        self._answer_spec(response.model_spec)
        response.model_spec.signature_name = predict.SIGNATURE_KEY
        for name, array in stacked.items():
            response.outputs[name].CopyFrom(array_to_tensor(array))
        return response

    async def _metadata(self, request):
        self._check_spec(request.model_spec)
        fields = list(request.metadata_field)
        if not fields:
            raise InputError("metadata_field", "empty; expected ['signature_def']")
        for i, field in enumerate(fields):
            if field != "signature_def":
                raise InputError(f"metadata_field[{i}]", f"{field!r} not supported; expected "
                                 "'signature_def'")
        signatures = get_model_metadata_pb2.SignatureDefMap()
        signatures.signature_def[predict.SIGNATURE_KEY].CopyFrom(
            signature_def(self._server.artifact))
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        self._answer_spec(response.model_spec)
        response.metadata["signature_def"].Pack(signatures)
        return response


def add_to_server(grpc_server, server, infer) -> None:
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(server, infer), grpc_server)
