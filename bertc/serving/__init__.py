"""`bertc serve`: an HTTP server for a built artifact, with dynamic batching.

    HTTP (app.py: TF Serving REST :predict, text :classify, status, ping, metrics)
    + protocols/ (KServe v2 REST; with --grpc_port, TF Serving gRPC and v2 gRPC)
      |  parse + tokenize (predict.py, classify.py, validation.py; protocols/tensors.py)
      v
    Batcher (batcher.py): one bounded queue per sequence bucket; static batches,
      |  cut when full or when the oldest row waited max_batch_delay
      v
    Replicas (replica.py): N worker threads, each its own Session over every
       bucket's SavedModel with its own intra-op threads
Metrics (metrics.py), the artifact as seen by the server (artifact.py), defaults
(defaults.py), paraphrase
thresholds (paraphrase.py) and TF Serving scale-out files (tfserving_config.py)
sit beside them; server.py ties them together and owns start-up and drain.
ray_engine.py is the other engine (`--engine ray`): the same parsing and batching as a
Ray Serve application (an HTTP ingress and N model replicas), Ray imported lazily.
Serving stands on the artifact (SavedModel + bertc.json + vocab.txt) and never
imports the model-building code.
"""
