"""`bertc client`: a load generator for `bertc serve` (or any server of its HTTP API).

It knows only the wire (HTTP, gRPC) and text: `loadgen` sends sentence pairs to
`POST /v1/models/<name>:classify` from concurrent clients (or, tokenized here, as token
ids over TF Serving REST/gRPC and KServe v2: `protocols`), `report` turns the
outcomes into throughput, latency percentiles, errors and accuracy against the
TSV labels, `progress` draws a bar on stderr, `plot` a latency histogram.
"""
