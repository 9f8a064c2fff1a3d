"""The gRPC port: TF Serving's PredictionService and v2's GRPCInferenceService on
one grpc.aio server, in the event loop of the HTTP server.

Both services hand rows to the same Batcher as REST (through the app's
`infer_or_refuse`), so one queue, one --max_queue and one dynamic batch serve
every protocol. Messages are bounded by --max_body_bytes as HTTP bodies are
(RESOURCE_EXHAUSTED beyond). Drain: `stop()` refuses new calls at once
(UNAVAILABLE) and gives calls in flight up to --shutdown_timeout_s, while the
Batcher runs what is queued without waiting for the delay.
"""

import logging

import grpc

from bertc.errors import BertcError

logger = logging.getLogger(__name__)


async def start(server, host: str, port: int, infer):
    """(grpc.aio.Server, bound port) serving both services on host:port."""
    from bertc.serving.protocols import tfs_grpc, v2_grpc  # TF Serving's and Triton's stubs
    limit = server.config.max_body_bytes
    grpc_server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", -1),
        ("grpc.so_reuseport", 0)])
    tfs_grpc.add_to_server(grpc_server, server, infer)
    v2_grpc.add_to_server(grpc_server, server, infer)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = grpc_server.add_insecure_port(address)
    except RuntimeError as e:
        raise BertcError(f"`host` {host} `grpc_port` {port}: cannot listen ({e}); expected "
                         "a free port") from None
    if not bound:
        raise BertcError(f"`host` {host} `grpc_port` {port}: cannot listen; expected a free "
                         "port")
    await grpc_server.start()
    logger.info("serving %r over gRPC on %s:%d: tensorflow.serving.PredictionService "
                "(Predict, GetModelMetadata), inference.GRPCInferenceService (v2)",
                server.name, host, bound)
    return grpc_server, bound
