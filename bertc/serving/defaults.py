"""Serving defaults, in one place: `bertc serve` flags and ServerConfig read them here.

Imports only two constants (the artifact's TF Serving batching delay, TensorFlow's
replica default), neither module importing TensorFlow, so the CLI reads them cheaply.
"""

from bertc.artifact.tfserving_config import BATCH_DELAY_MS
from bertc.runtime.tf_settings import DEFAULT_REPLICAS

# Replicas. On the 2-core development machine two replicas of one intra-op thread
# each beat one replica of two threads: MiniLM batch 4 served 66 vs 55
# inferences/s at seq 128 and 125 vs 106 with buckets 64,128 (benchmarks/serving.py);
# one replica has the lower latency at light load. Threads per replica default to
# cores // PARALLEL.
PARALLEL = DEFAULT_REPLICAS  # verify's served run uses the same (bertc/runtime/tf_settings.py)
PORT = 8501              # TF Serving's REST port: this server speaks its REST API
GRPC_PORT = 8500         # TF Serving's gRPC port (bertc serve --grpc_port; off by default)
HOST = "127.0.0.1"       # binding all interfaces (0.0.0.0) must be asked for
MAX_BATCH_DELAY_MS = BATCH_DELAY_MS  # = TF Serving's batch_timeout_micros in the artifact
MAX_QUEUE = 512          # rows waiting for a batch, all buckets together
MAX_INSTANCES = 64       # instances in one request
MAX_BODY_BYTES = 1 << 20
HEADER_TIMEOUT_S = 60.0   # headers not received in this time: closed (nginx client_header_timeout)
BODY_TIMEOUT_S = 60.0     # a body not received in this time: 408 (nginx client_body_timeout)
DRAIN_IDLE_S = 2.0        # at shutdown, idle keep-alive connections stay open this long
KEEPALIVE_TIMEOUT_S = 75.0  # an idle keep-alive connection is closed (nginx keepalive_timeout)
