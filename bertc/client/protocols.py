"""`bertc client --protocol`: the same sentence pairs over each protocol the server speaks.

  classify  POST /v1/models/<name>:classify, text (the server tokenizes; loadgen.py)
  rest      POST /v1/models/<name>:predict, token ids, TF Serving REST columnar JSON
  grpc      tensorflow.serving.PredictionService/Predict, TensorProtos (--grpc_target)
  v2        POST /v2/models/<name>/infer, KServe v2 REST JSON
  v2_grpc   inference.GRPCInferenceService/ModelInfer, raw_input_contents (--grpc_target)
The token-id protocols carry one pair per request, tokenized here before the clock
starts (--vocab, lower-casing and buckets as the server's GET /v1/models/<name>
reports): an embedding head gets two rows (each sentence alone; the answer is
their cosine against the server's threshold), other heads one `[CLS] a [SEP] b
[SEP]` row (the answer is the argmax of `probabilities`). So the protocols are
timed on the same rows and the same model work, and only the wire differs.
"""

import asyncio
import dataclasses
import json
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from bertc.errors import BertcError
from bertc.text.tokenization import WordPieceTokenizer

TOKEN_PROTOCOLS = ("rest", "grpc", "v2", "v2_grpc")
PROTOCOLS = ("classify",) + TOKEN_PROTOCOLS
INPUTS = ("input_ids", "input_mask", "segment_ids")


@dataclasses.dataclass
class ModelInfo:
    """What the client needs of the served model (from GET /v1/models/<name>)."""

    head: str
    do_lower_case: bool
    max_seq_len: int
    threshold: Optional[float]
    outputs: List[str]


async def model_info(session, url: str, model_name: str) -> ModelInfo:
    endpoint = f"{url.rstrip('/')}/v1/models/{model_name}"
    try:
        async with session.get(endpoint) as response:
            doc = await response.json(content_type=None)
        bertc = doc["bertc"]
        return ModelInfo(head=bertc["head"], do_lower_case=bool(bertc["do_lower_case"]),
                         max_seq_len=max(bertc["seq_lens"]),
                         threshold=bertc.get("paraphrase_threshold"),
                         outputs=list(bertc["signature"]["outputs"]))
    except Exception as e:  # noqa: BLE001 - any failure means: not a bertc server
        raise BertcError(f"--url {url}: GET /v1/models/{model_name} did not describe the "
                         f"model ({e.__class__.__name__}: {e}); expected a running bertc "
                         "serve") from None


def encode_pairs(pairs, vocab: str, info: ModelInfo) -> List[Dict[str, np.ndarray]]:
    """Per pair: {input name: int32 [R, L]} (R = 2 rows for an embedding head, else 1;
    L = the longer row's tokens, the shorter padded with mask 0)."""
    tokenizer = WordPieceTokenizer.from_vocab_file(vocab, info.do_lower_case)
    encoded = []
    for pair in pairs:
        if info.head == "embedding" and pair.text_b is not None:
            rows = [tokenizer.encode(pair.text_a, None, info.max_seq_len),
                    tokenizer.encode(pair.text_b, None, info.max_seq_len)]
        else:
            rows = [tokenizer.encode(pair.text_a, pair.text_b, info.max_seq_len)]
        length = max(r.num_tokens for r in rows)
        encoded.append({n: np.asarray([getattr(r, n)[:length] for r in rows], np.int32)
                        for n in INPUTS})
    return encoded


def decide(outputs: Dict[str, np.ndarray], info: ModelInfo) -> dict:
    """The pair's answer from the output tensors, as :classify would give it."""
    if "embedding" in outputs and outputs["embedding"].shape[0] == 2:
        a, b = outputs["embedding"].astype(np.float64)
        similarity = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
        label = int(info.threshold is not None and similarity >= info.threshold)
        return {"label": label, "similarity": similarity, "threshold": info.threshold}
    if "probabilities" in outputs:
        probabilities = outputs["probabilities"][0]
        label = int(np.argmax(probabilities))
        return {"label": label, "score": float(probabilities[label])}
    return {"label": None, "outputs": sorted(outputs)}


class Refused(Exception):
    """The server answered with an error: its status (HTTP code or gRPC code name)."""

    def __init__(self, status, message: str):
        super().__init__(message)
        self.status = status


async def make_sender(protocol: str, session, url: str, grpc_target: Optional[str],
                      model_name: str):
    """An async send({input: array}) -> {output: float32 array}, raising Refused."""
    base = url.rstrip("/")
    if protocol == "rest":
        return _RestSender(session, f"{base}/v1/models/{model_name}:predict").send
    if protocol == "v2":
        return _V2RestSender(session, f"{base}/v2/models/{model_name}/infer").send
    if not grpc_target:
        raise BertcError(f"--protocol {protocol}: --grpc_target is empty; expected the "
                         "server's gRPC host:port (bertc serve --grpc_port)")
    import grpc
    channel = grpc.aio.insecure_channel(grpc_target)
    if protocol == "grpc":
        return _TfsGrpcSender(channel, model_name).send
    return _V2GrpcSender(channel, model_name).send


async def _json_call(session, endpoint: str, body: dict):
    async with session.post(endpoint, data=json.dumps(body),
                            headers={"Content-Type": "application/json"}) as response:
        raw = await response.read()
        status = response.status
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise Refused(status, f"HTTP {status}: body is not JSON") from None
    if status != 200:
        message = doc.get("error") if isinstance(doc, dict) else None
        raise Refused(status, f"HTTP {status}: {message or 'no error message'}")
    return doc


class _RestSender:
    def __init__(self, session, endpoint):
        self._session, self._endpoint = session, endpoint

    async def send(self, arrays):
        doc = await _json_call(self._session, self._endpoint,
                               {"inputs": {n: a.tolist() for n, a in arrays.items()}})
        outputs = doc["outputs"]
        if not isinstance(outputs, dict):  # one output: TF Serving leaves out its name
            return {"_": np.asarray(outputs, np.float32)}
        return {n: np.asarray(v, np.float32) for n, v in outputs.items()}


class _V2RestSender(_RestSender):
    async def send(self, arrays):
        body = {"inputs": [{"name": n, "datatype": "INT32", "shape": list(a.shape),
                            "data": a.ravel().tolist()} for n, a in arrays.items()]}
        doc = await _json_call(self._session, self._endpoint, body)
        return {o["name"]: np.asarray(o["data"], np.float32).reshape(o["shape"])
                for o in doc["outputs"]}


def _grpc_refused(e) -> Refused:
    return Refused(e.code().name, f"{e.code().name}: {e.details()}")


class _TfsGrpcSender:
    def __init__(self, channel, model_name):
        from tensorflow_serving.apis import prediction_service_pb2_grpc
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        self._model_name = model_name

    async def send(self, arrays):
        import grpc
        from tensorflow.core.framework import types_pb2
        from tensorflow_serving.apis import predict_pb2
        request = predict_pb2.PredictRequest()
        request.model_spec.name = self._model_name
        for name, array in arrays.items():
            proto = request.inputs[name]
            proto.dtype = types_pb2.DT_INT32
            proto.tensor_content = np.ascontiguousarray(array, "<i4").tobytes()
            for size in array.shape:
                proto.tensor_shape.dim.add(size=size)
        try:
            response = await self._stub.Predict(request)
        except grpc.RpcError as e:
            raise _grpc_refused(e) from None
        return {name: np.frombuffer(p.tensor_content, "<f4").reshape(
                    [d.size for d in p.tensor_shape.dim]) for name, p in response.outputs.items()}


class _V2GrpcSender:
    def __init__(self, channel, model_name):
        from tritonclient.grpc import service_pb2_grpc
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        self._model_name = model_name

    async def send(self, arrays):
        import grpc
        from tritonclient.grpc import service_pb2
        request = service_pb2.ModelInferRequest(model_name=self._model_name)
        for name, array in arrays.items():
            request.inputs.add(name=name, datatype="INT32", shape=array.shape)
            request.raw_input_contents.append(np.ascontiguousarray(array, "<i4").tobytes())
        try:
            response = await self._stub.ModelInfer(request)
        except grpc.RpcError as e:
            raise _grpc_refused(e) from None
        return {o.name: np.frombuffer(raw, "<f4").reshape(list(o.shape))
                for o, raw in zip(response.outputs, response.raw_output_contents)}


async def timed(send, arrays, info: ModelInfo, timeout_s: float):
    """(seconds, answer dict or None, status, error) of one request."""
    start = time.perf_counter()
    try:
        outputs = await asyncio.wait_for(send(arrays), timeout_s)
    except Refused as e:
        return time.perf_counter() - start, None, e.status, str(e)
    except asyncio.TimeoutError:
        return time.perf_counter() - start, None, 0, "timeout"
    except Exception as e:  # noqa: BLE001 - connection failures: no answer
        return time.perf_counter() - start, None, 0, f"{e.__class__.__name__}: {e}"
    seconds = time.perf_counter() - start
    if "_" in outputs and len(info.outputs) == 1:
        outputs = {info.outputs[0]: outputs.pop("_")}
    return seconds, decide(outputs, info), 200, None
