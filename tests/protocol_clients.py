"""One interface over the real clients of every protocol `bertc serve` speaks (no tests).

    client.infer({input name: int array [B, L]}, model=, version=, signature=, outputs=)
        -> {output name: float32 array}    or raises Refused(code, message)

  tfs_grpc     tensorflow-serving-api's PredictionServiceStub (TensorProtos, tf.make_tensor_proto)
  v2_http      tritonclient.http (binary tensor extension, as it sends by default)
  v2_grpc      tritonclient.grpc (raw_input_contents, as it sends by default)
  rest         TF Serving REST :predict, columnar, over http.client
Codes: the gRPC status name (INVALID_ARGUMENT, ...) or the HTTP status (400, ...).
"""

import http.client
import json

import numpy as np

PROTOCOLS = ("tfs_grpc", "v2_http", "v2_grpc", "rest")


class Refused(Exception):
    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


def make(protocol: str, url: str, grpc_target: str):
    return {"tfs_grpc": TfsGrpc, "v2_http": V2Http, "v2_grpc": V2Grpc,
            "rest": Rest}[protocol](url, grpc_target)


def tfs_predict_request(arrays, model="tiny", version=None, signature=None, outputs=None):
    """A TF Serving PredictRequest of {input name: array} (tf.make_tensor_proto)."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = int(version)
    if signature is not None:
        request.model_spec.signature_name = signature
    for name, array in arrays.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(array))
    request.output_filter.extend(outputs or [])
    return request


class TfsGrpc:
    def __init__(self, url, grpc_target):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc
        self._channel = grpc.insecure_channel(grpc_target)
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def infer(self, arrays, model="tiny", version=None, signature=None, outputs=None):
        import grpc
        import tensorflow as tf
        request = tfs_predict_request(arrays, model, version, signature, outputs)
        try:
            response = self._stub.Predict(request, timeout=60)
        except grpc.RpcError as e:
            raise Refused(e.code().name, e.details()) from None
        return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}

    def close(self):
        self._channel.close()


def triton_inputs(module, arrays):
    """tritonclient InferInputs (http or grpc `module`) of {input name: array}."""
    inputs = []
    for name, array in arrays.items():
        tensor = module.InferInput(name, list(array.shape),
                                   module.np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


class V2Http:
    def __init__(self, url, grpc_target):
        import tritonclient.http as module
        self._module = module
        self._client = module.InferenceServerClient(url[len("http://"):],
                                                    network_timeout=60.0)

    def infer(self, arrays, model="tiny", version=None, signature=None, outputs=None):
        from tritonclient.utils import InferenceServerException
        m = self._module
        requested = [m.InferRequestedOutput(n) for n in outputs] if outputs else None
        try:
            result = self._client.infer(model, triton_inputs(m, arrays),
                                        model_version=version or "", outputs=requested)
        except InferenceServerException as e:
            raise Refused(int(e.status()), e.message()) from None
        return {o["name"]: result.as_numpy(o["name"])
                for o in result.get_response()["outputs"]}

    def close(self):
        self._client.close()


class V2Grpc:
    def __init__(self, url, grpc_target):
        import tritonclient.grpc as module
        self._module = module
        self._client = module.InferenceServerClient(grpc_target)

    def infer(self, arrays, model="tiny", version=None, signature=None, outputs=None):
        from tritonclient.utils import InferenceServerException
        m = self._module
        requested = [m.InferRequestedOutput(n) for n in outputs] if outputs else None
        try:
            result = self._client.infer(model, triton_inputs(m, arrays),
                                        model_version=version or "", outputs=requested,
                                        client_timeout=60)
        except InferenceServerException as e:
            raise Refused(e.status().replace("StatusCode.", ""), e.message()) from None
        return {o.name: result.as_numpy(o.name) for o in result.get_response().outputs}

    def close(self):
        self._client.close()


class Rest:
    def __init__(self, url, grpc_target):
        self._host, port = url[len("http://"):].split(":")
        self._port = int(port)

    def infer(self, arrays, model="tiny", version=None, signature=None, outputs=None):
        body = {"inputs": {n: a.tolist() for n, a in arrays.items()}}
        if signature is not None:
            body["signature_name"] = signature
        path = (f"/v1/models/{model}:predict" if version is None
                else f"/v1/models/{model}/versions/{version}:predict")
        conn = http.client.HTTPConnection(self._host, self._port, timeout=60)
        try:
            conn.request("POST", path, body=json.dumps(body),
                         headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            doc = json.loads(response.read())
        finally:
            conn.close()
        if response.status != 200:
            raise Refused(response.status, doc["error"])
        values = doc["outputs"]
        if isinstance(values, dict):
            return {n: np.asarray(v, np.float32) for n, v in values.items()}
        return {"embedding": np.asarray(values, np.float32)}

    def close(self):
        pass
