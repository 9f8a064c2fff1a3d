"""The `bertc` command line: a thin absl layer over the library.

  bertc build     [--ckpt DIR | --saved_model DIR] [--crude_gelu] [--output DIR] ...
  bertc verify    ARTIFACT [--verify_data TSV] [--json]
  bertc inspect   ARTIFACT_OR_CKPT [--tensorboard DIR] [--json]
  bertc convert   [--hf_dir DIR --output DIR] [--overwrite]
  bertc serve     --model ARTIFACT [--port 8501] [--parallel N] [--max_batch_delay_ms 5]
  bertc client    --pair "sentence a" "sentence b" | [--tsv TSV] [--clients 48 --cycle 128]
  bertc tfserving ARTIFACT [--base_dir DIR]
  bertc help [COMMAND] | COMMAND --help | --helpfull | --version

COMMANDS is the one table of which command owns which flag; a flag of another
command is a usage error. Every command prints its result; errors are one line
on stderr. Exit codes: 0 ok, 1 a check failed (verify outside its thresholds,
no request answered), 2 bad input or usage, 70 internal error (a bug: one line,
the traceback with --verbosity=1), 130 interrupted (Ctrl-C, at any moment).
"""

import os
import re
import signal
import sys

INTERRUPTED = "bertc: interrupted; nothing was written"


def _interrupted_at_start_up(signum, frame):
    """SIGINT while this module is imported: nothing can have been written yet."""
    os.write(2, (INTERRUPTED + "\n").encode())
    os._exit(130)


def _catch_start_up_interrupts():
    """The start-up handler, where SIGINT still has Python's default."""
    try:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _interrupted_at_start_up)
    except ValueError:  # imported off the main thread
        pass


_catch_start_up_interrupts()

import dataclasses  # noqa: E402  (after the start-up handler)
import json  # noqa: E402
import logging  # noqa: E402
import traceback  # noqa: E402
from typing import Tuple  # noqa: E402

from absl import app, flags  # noqa: E402

from bertc import cli_help  # noqa: E402
from bertc.errors import BertcError, CheckFailed  # noqa: E402
from bertc.serving import defaults as serving_defaults  # noqa: E402

FLAGS = flags.FLAGS

# Sources.
flags.DEFINE_string("ckpt", None, "Google BERT checkpoint directory (bert_config.json, "
                    "vocab.txt, bert_model.ckpt.*) or checkpoint prefix. Default: the "
                    "embedded all-MiniLM-L6-v2.")
flags.DEFINE_string("saved_model", None, "A BERT SavedModel to read the weights from "
                    "(as the Neuron demo's --input_saved_model).")
flags.DEFINE_string("bert_config", None, "bert_config.json for --saved_model.")
flags.DEFINE_string("vocab", None, "vocab.txt, when the source has none. client: the served "
                    "artifact's vocab.txt, to send token ids (--protocol rest, grpc, v2, "
                    "v2_grpc).")
flags.DEFINE_string("hf_dir", None, "convert: a Hugging Face BERT directory "
                    "(config.json, model.safetensors, vocab.txt). Default: the MiniLM package.")
# Output.
flags.DEFINE_string("output", None, "build/convert: the directory to write (refused if it "
                    "exists, unless --overwrite). Default for build: artifacts/<checkpoint name>.")
flags.DEFINE_bool("overwrite", False, "Replace an existing --output directory.")
# Model.
flags.DEFINE_enum("head", None, ["sequence", "pooled", "classifier", "embedding", "span",
                                 "squad"],
                  "Outputs to export (span, alias squad: run_squad's start_logits and "
                  "end_logits). Default: classifier or span if the checkpoint has one, the "
                  "checkpoint's own (embedding for sentence-transformers), else pooled.")
flags.DEFINE_integer("batch_size", 4, "Static batch size of the artifact.", lower_bound=1)
flags.DEFINE_list("seq_len", ["128"], "Static sequence length(s); several make buckets.")
flags.DEFINE_enum("do_lower_case", "auto", ["auto", "true", "false"],
                  "Tokenizer lower-casing (auto: from the checkpoint).")
# Rewrites.
flags.DEFINE_list("rewrites", [], "Extra graph rewrite passes, in order.")
flags.DEFINE_bool("default_rewrites", True, "Start from the target's default passes.")
flags.DEFINE_bool("crude_gelu", False, "GELU as x*sigmoid(1.702x) (the Neuron demo's flag).")
flags.DEFINE_enum("dtype", "float32", ["float32", "float16", "bfloat16", "int8"],
                  "Matmul/attention precision (mixed_precision pass; --target openvino: "
                  "OpenVINO's inference precision, by default bfloat16 where the CPU has "
                  "AMX-BF16 or is an AMD with AVX512-BF16, else float32; int8: NNCF "
                  "post-training "
                  "quantization, calibrated and bounded).")
flags.DEFINE_string("calibration_data", None, "--dtype int8: MRPC TSV or text file to "
                    "calibrate on. Default: the first --calibration_rows pairs of the "
                    "verify text (verify uses the rest).")
flags.DEFINE_integer("calibration_rows", None, "--dtype int8: calibration pairs (default "
                     "100).", lower_bound=1)
flags.DEFINE_float("max_cosine_loss", None, "--dtype int8: the int8 model's min cosine vs "
                   "fp32 must be >= 1 - this (default 0.01).")
flags.DEFINE_float("max_accuracy_drop", None, "--dtype int8: argmax agreement with fp32 "
                   "must be >= 100 - this, in percent (classifier heads; default 1.0).")
flags.DEFINE_enum("int8_rest_dtype", None, ["float32", "bfloat16"], "--dtype int8: the "
                  "precision of what stays float (LayerNorm, Softmax, GELU, layers kept out "
                  "of int8), checked by the bound and verify, recorded and served. Default: "
                  "float32; bfloat16 is faster on AMX-BF16 CPUs.")
flags.DEFINE_bool("aggressive_optimizations", False, "Crude GELU and half-precision "
                  "LayerNorm too, as the Neuron demo.")
flags.DEFINE_bool("strict", False, "A requested pass that matches nothing is an error.")
flags.DEFINE_bool("allow_internal_ops", False, "Keep internal TensorFlow ops (oneDNN's "
                  "_MklLayerNorm) in the SavedModel instead of public ops that TensorFlow "
                  "fuses at load; only x86 oneDNN builds of TensorFlow can run the result.")
# Target.
flags.DEFINE_enum("target", "cpu", ["cpu", "neuron", "openvino"], "Compile target "
                  "(openvino: OpenVINO IR per bucket beside the SavedModels).")
flags.DEFINE_string("compiler_args", "--fp32-cast matmult", "Neuron compiler arguments.")
flags.DEFINE_bool("dry_run", False, "With --target neuron: record and print the compile "
                  "call only.")
# Verify.
flags.DEFINE_bool("verify", True, "build: verify the artifact against the reference.")
flags.DEFINE_string("verify_data", None, "MRPC-format TSV or text file (one sentence or "
                    "tab-separated pair per line). Default: ../shared/data/glue_mrpc_dev.tsv.")
flags.DEFINE_integer("verify_rows", None, "Use only the first N text rows (default: all).",
                     lower_bound=1)
flags.DEFINE_bool("json", False, "Print a machine-readable JSON report.")
flags.DEFINE_string("tensorboard", None, "inspect: write the graphs before and after the "
                    "rewrites (weights stripped) for TensorBoard into this directory.")
flags.DEFINE_bool("skip_checksums", False, "serve/verify: use the artifact without checking "
                  "its files against the sha256 recorded at build (logged as a warning).")
flags.DEFINE_bool("skip_probe", False, "serve: answer without first running the probe the "
                  "build kept (verify's rows and the fp32 reference's outputs on them) and "
                  "holding the outputs on this CPU to verify's bounds (logged as a warning).")
flags.DEFINE_bool("per_pass", False, "verify: also apply the artifact's rewrites one at a "
                  "time and print the error after each.")
# Serve.
flags.DEFINE_string("model", None, "serve: the artifact directory written by bertc build.")
flags.DEFINE_string("model_name", None, "serve: the name in /v1/models/<name> (default: the "
                    "artifact's directory name). client: the model to call (default: asked "
                    "of the server's /ping).")
flags.DEFINE_string("host", serving_defaults.HOST, "serve: address to bind; 0.0.0.0 (all "
                    "interfaces) must be asked for.")
flags.DEFINE_integer("port", serving_defaults.PORT, "serve: TCP port (TF Serving's REST "
                     "port; 0: any free port, logged).", lower_bound=0, upper_bound=65535)
flags.DEFINE_integer("grpc_port", None, "serve: also serve gRPC on this port (TF Serving's "
                     "PredictionService and KServe v2's GRPCInferenceService; TF Serving "
                     "uses 8500; 0: any free port, logged). Default: no gRPC.",
                     lower_bound=0, upper_bound=65535)
flags.DEFINE_integer("parallel", serving_defaults.PARALLEL, "serve: replicas, each a worker "
                     "thread with its own Session over every bucket (2 x 1 thread was "
                     "fastest on 2 cores).", lower_bound=1)
flags.DEFINE_integer("intra_op_threads", None, "serve/verify: intra-op threads per replica "
                     "(default: CPU cores / --parallel; OpenVINO: threads per stream).",
                     lower_bound=1)
flags.DEFINE_integer("inter_op_threads", None, "serve/verify: TensorFlow inter-op threads "
                     "per Session (default 1, as Intel's BF16 guide; verify on OpenVINO: "
                     "its streams).", lower_bound=1)
flags.DEFINE_float("max_batch_delay_ms", serving_defaults.MAX_BATCH_DELAY_MS, "serve: how "
                   "long the oldest request of a partial batch waits before the batch is "
                   "padded and run.", lower_bound=0.0)
flags.DEFINE_integer("max_queue", serving_defaults.MAX_QUEUE, "serve: rows (model inputs) "
                     "that may wait for a batch; beyond it requests get 503 + Retry-After.",
                     lower_bound=1)
flags.DEFINE_integer("max_instances", serving_defaults.MAX_INSTANCES, "serve: instances "
                     "allowed in one request.", lower_bound=1)
flags.DEFINE_integer("max_body_bytes", serving_defaults.MAX_BODY_BYTES, "serve: largest "
                     "request body (413 beyond).", lower_bound=1)
flags.DEFINE_float("body_timeout_s", serving_defaults.BODY_TIMEOUT_S, "serve: seconds "
                   "a request body may take to arrive (408 beyond).")
flags.DEFINE_float("keepalive_timeout_s", serving_defaults.KEEPALIVE_TIMEOUT_S, "serve: "
                   "seconds an idle keep-alive connection stays open.")
flags.DEFINE_float("header_timeout_s", serving_defaults.HEADER_TIMEOUT_S, "serve: seconds "
                   "a request's headers may take to arrive (the connection is closed beyond).")
flags.DEFINE_enum("engine", "bertc", ["bertc", "ray"], "serve: bertc's own HTTP server, or "
                  "a Ray Serve application over a Ray cluster (pip install 'bertc[ray]').")
flags.DEFINE_integer("num_replicas", 1, "serve --engine ray: BertcModel replicas (processes, "
                     "spread over the cluster's nodes).", lower_bound=1)
flags.DEFINE_string("ray_address", None, "serve --engine ray: the Ray cluster to deploy to "
                    "(e.g. 10.0.0.5:6379 or auto); default: start a local Ray.")
flags.DEFINE_float("paraphrase_threshold", None, "serve: cosine threshold for embedding "
                   "heads (default: the manifest's, else 0.68, calibrated for MiniLM on "
                   "MRPC dev).")
# Client.
flags.DEFINE_string("url", f"http://127.0.0.1:{serving_defaults.PORT}", "client: the "
                    "server's base URL.")
flags.DEFINE_integer("clients", 48, "client: concurrent clients of the load test.",
                     lower_bound=1)
flags.DEFINE_integer("cycle", 128, "client: requests each client of the load test sends, "
                     "one at a time.", lower_bound=1)
flags.DEFINE_string("tsv", None, "client: MRPC-format TSV to draw pairs from (default: "
                    "../shared/data/glue_mrpc_dev.tsv).")
flags.DEFINE_string("pair", None, "client: send one request instead of a load test and "
                    "print its answer: --pair \"sentence a\" \"sentence b\".")
flags.DEFINE_bool("progress", False, "client: draw a progress bar on stderr even when it is "
                  "not a terminal.")
flags.DEFINE_string("plot", None, "client: write a latency histogram PNG (needs "
                    "matplotlib).")
flags.DEFINE_integer("seed", 0, "client: seed of the pair order.")
flags.DEFINE_string("squad", None, "client: a SQuAD v1.1 JSON file; every question goes to "
                    ":answer once (--clients at a time) and exact match / F1 are reported.")
flags.DEFINE_enum("protocol", "classify", ["classify", "rest", "grpc", "v2", "v2_grpc"],
                  "client: classify: text to :classify; rest: token ids to :predict; grpc: "
                  "TF Serving gRPC Predict; v2: KServe v2 REST infer; v2_grpc: v2 gRPC "
                  "ModelInfer (token-id protocols need --vocab).")
flags.DEFINE_string("grpc_target", f"127.0.0.1:{serving_defaults.GRPC_PORT}", "client: the "
                    "server's gRPC host:port (--protocol grpc, v2_grpc).")
flags.DEFINE_string("squad_predictions", None, "client --squad: also write the answers "
                    "there as {question id: answer} (what SQuAD's evaluate-v1.1.py reads).")
flags.DEFINE_float("request_timeout_s", 60.0, "client: per-request timeout in seconds.")
flags.register_validator("request_timeout_s", lambda seconds: seconds > 0,
                         "expected a positive number of seconds")
# TF Serving.
flags.DEFINE_string("base_dir", None, "tfserving: the absolute directory the artifact is "
                    "served from (default: where it is now).")



@dataclasses.dataclass(frozen=True)
class Command:
    """One command: its help, and the flags it owns, by group."""

    summary: str
    usage: str
    groups: Tuple[Tuple[str, Tuple[str, ...]], ...]
    examples: Tuple[str, ...]
    tensorflow: bool = True         # imported (quietly) before the flags are parsed
    log_level: int = logging.WARNING  # below --verbosity=1: serve's log is its output

    @property
    def flags(self) -> frozenset:
        return frozenset(name for _, names in self.groups for name in names)


# The one place that says which command owns which flag.
COMMANDS = {
    "build": Command(
        "compile a checkpoint into a verified SavedModel artifact",
        "bertc build [--ckpt DIR | --saved_model DIR] [--output DIR] [flags]",
        (("source", ("ckpt", "saved_model", "bert_config", "vocab")),
         ("output", ("output", "overwrite", "json")),
         ("model", ("head", "batch_size", "seq_len", "do_lower_case")),
         ("rewrites", ("rewrites", "default_rewrites", "crude_gelu", "dtype",
                       "aggressive_optimizations", "strict", "allow_internal_ops")),
         ("target", ("target", "compiler_args", "dry_run")),
         ("int8", ("calibration_data", "calibration_rows", "max_cosine_loss",
                   "max_accuracy_drop", "int8_rest_dtype")),
         ("verify", ("verify", "verify_data", "verify_rows"))),
        ("bertc build --ckpt uncased_L-12_H-768_A-12 --crude_gelu --output artifacts/base",
         "bertc build --target neuron --dry_run --output artifacts/minilm_neuron",
         "bertc build --target openvino --seq_len 32,64,128 --output artifacts/minilm_ov")),
    "verify": Command(
        "compare an artifact with the unrewritten model of its checkpoint",
        "bertc verify ARTIFACT [flags]",
        (("verify", ("verify_data", "verify_rows", "per_pass", "skip_checksums", "json")),
         ("threads", ("intra_op_threads", "inter_op_threads"))),
        ("bertc verify artifacts/minilm --per_pass",)),
    "inspect": Command(
        "show what the rewrites changed (artifact) or what a checkpoint holds",
        "bertc inspect ARTIFACT_OR_CKPT [flags]",
        (("inspect", ("tensorboard", "json")),
         ("checkpoint graph", ("batch_size", "seq_len"))),
        ("bertc inspect artifacts/minilm --tensorboard /tmp/tb",)),
    "convert": Command(
        "write a Hugging Face BERT directory as a Google checkpoint",
        "bertc convert [--hf_dir DIR --output DIR] [--overwrite]",
        (("convert", ("hf_dir", "output", "overwrite")),),
        ("bertc convert --hf_dir my_hf_bert --output checkpoints/my_bert",)),
    "serve": Command(
        "serve an artifact over HTTP (TF Serving's REST API, KServe v2, :classify for "
        "text) and, with --grpc_port, gRPC (TF Serving's PredictionService, KServe v2)",
        "bertc serve --model ARTIFACT [flags]",
        (("model", ("model", "model_name", "paraphrase_threshold", "skip_checksums",
                    "skip_probe")),
         ("network", ("host", "port", "grpc_port", "max_body_bytes", "max_instances",
                      "header_timeout_s",
                      "body_timeout_s", "keepalive_timeout_s")),
         ("batching", ("parallel", "intra_op_threads", "inter_op_threads",
                       "max_batch_delay_ms", "max_queue")),
         ("ray serve", ("engine", "num_replicas", "ray_address"))),
        ("bertc serve --model artifacts/minilm --port 8501",
         "bertc serve --model artifacts/minilm --port 8501 --grpc_port 8500",
         "bertc serve --model artifacts/minilm --engine ray --num_replicas 2"),
        log_level=logging.INFO),
    "client": Command(
        "ask a server about one sentence pair, or load-test it",
        "bertc client [--url URL] (--pair \"sentence a\" \"sentence b\" | [--tsv TSV] "
        "[--clients N --cycle N] | --squad FILE.json)",
        (("server", ("url", "model_name", "request_timeout_s")),
         ("one request", ("pair",)),
         ("question answering", ("squad", "squad_predictions")),
         ("load test", ("tsv", "clients", "cycle", "seed", "progress", "plot")),
         ("protocol", ("protocol", "grpc_target", "vocab")),
         ("output", ("json",))),
        ("bertc client --pair \"The cat sat.\" \"A cat was sitting.\"",
         "bertc client --clients 48 --cycle 16 --plot latency.png",
         "bertc client --protocol grpc --vocab artifacts/minilm/vocab.txt --clients 48 "
         "--cycle 16"),
        tensorflow=False),
    "tfserving": Command(
        "print the artifact's TensorFlow Serving models.config for where it is served",
        "bertc tfserving ARTIFACT [--base_dir DIR]",
        (("tfserving", ("base_dir",)),),
        ("bertc tfserving artifacts/minilm --base_dir /models/minilm > models.config",),
        tensorflow=False),
}
HELP_WORDS = ("-h", "--help", "-help", "--helpshort", "-?")
LOAD_TEST_FLAGS = ("tsv", "clients", "cycle", "seed", "progress", "plot", "protocol")


def _lower_case():
    return {"auto": None, "true": True, "false": False}[FLAGS.do_lower_case]


def _seq_lens():
    try:
        return [int(s) for s in FLAGS.seq_len]
    except ValueError:
        raise BertcError(f"--seq_len {','.join(FLAGS.seq_len)}: expected integers such as "
                         "128 or 64,128") from None


def _no_arguments(command, args, expected="only flags"):
    if args:
        raise BertcError(f"{command}: unexpected argument {args[0]!r}; expected {expected}")


def _one_argument(command, args, what):
    if len(args) != 1:
        raise BertcError(f"{command}: expected one {what} argument, got {len(args)}")
    return args[0]


def cmd_build(args):
    from bertc.builder import pipeline as builder
    from bertc.verify import compare as verify
    from bertc.builder.targets import neuron
    _no_arguments("build", args)
    options = builder.BuildOptions(
        output=FLAGS.output, ckpt=FLAGS.ckpt, saved_model=FLAGS.saved_model,
        bert_config=FLAGS.bert_config,
        vocab=FLAGS.vocab, head=FLAGS.head, batch_size=FLAGS.batch_size, seq_lens=_seq_lens(),
        rewrites=FLAGS.rewrites, default_rewrites=FLAGS.default_rewrites,
        crude_gelu=FLAGS.crude_gelu, dtype=FLAGS.dtype if FLAGS["dtype"].present else None,
        aggressive_optimizations=FLAGS.aggressive_optimizations, target=FLAGS.target,
        compiler_args=neuron.parse_compiler_args(FLAGS.compiler_args), dry_run=FLAGS.dry_run,
        overwrite=FLAGS.overwrite, strict=FLAGS.strict,
        allow_internal_ops=FLAGS.allow_internal_ops, verify=FLAGS.verify,
        verify_data=FLAGS.verify_data, verify_rows=FLAGS.verify_rows,
        do_lower_case=_lower_case(), calibration_data=FLAGS.calibration_data,
        calibration_rows=FLAGS.calibration_rows, max_cosine_loss=FLAGS.max_cosine_loss,
        max_accuracy_drop=FLAGS.max_accuracy_drop, int8_rest_dtype=FLAGS.int8_rest_dtype)
    try:
        result = builder.build(options)
    except builder.VerifyFailed as e:
        for report in e.reports.values():
            print(verify.format_report(report))
        raise
    if FLAGS.json:
        print(json.dumps(result.manifest, indent=2))
        return
    for call in result.manifest["target"]["compile"]:
        print(("would run: " if call["dry_run"] else "ran: ") + call.get("summary", call["call"]))
    for report in (result.verify_report or {}).values():
        print(verify.format_report(report))
    print(f"wrote {result.artifact} (head {result.manifest['head']}, batch "
          f"{options.batch_size}, seq {','.join(map(str, result.manifest['seq_lens']))}, "
          f"target {options.target})")


def cmd_verify(args):
    from bertc.verify import compare as verify
    from bertc.verify import artifact as verify_artifact
    artifact = _one_argument("verify", args, "ARTIFACT directory")
    report = verify_artifact.verify_artifact(artifact, data=FLAGS.verify_data,
                                             rows=FLAGS.verify_rows, per_pass=FLAGS.per_pass,
                                             intra_op_threads=FLAGS.intra_op_threads,
                                             inter_op_threads=FLAGS.inter_op_threads,
                                             skip_checksums=FLAGS.skip_checksums)
    if FLAGS.json:
        print(json.dumps(report, indent=2))
    else:
        from bertc.verify import per_pass
        for seq_len, seq_report in report["per_seq_len"].items():
            print(verify.format_report(seq_report))
            if seq_report.get("task"):
                from bertc.verify import task_metric
                print(task_metric.format_task(seq_report["task"]))
            if seq_len in report["per_pass"]:
                print(per_pass.format_per_pass(report["per_pass"][seq_len], seq_len))
    if not report["passed"]:
        raise CheckFailed(f"verify: {artifact} differs from its reference beyond the "
                          "thresholds")


def cmd_inspect(args):
    from bertc.verify import inspection
    path = _one_argument("inspect", args, "ARTIFACT or checkpoint directory")
    report = inspection.inspect_path(path, tensorboard=FLAGS.tensorboard,
                                     batch_size=FLAGS.batch_size, seq_len=_seq_lens()[0])
    print(json.dumps(report, indent=2) if FLAGS.json else inspection.format_inspection(report))


def cmd_convert(args):
    from bertc.sources import embedded as defaults
    from bertc.sources import hf_convert
    _no_arguments("convert", args)
    hf_dir = FLAGS.hf_dir or defaults.minilm_hf_dir()
    output = FLAGS.output or (defaults.default_checkpoint_dir() if not FLAGS.hf_dir else None)
    if not output:
        raise BertcError("convert: --output is required with --hf_dir")
    prefix = hf_convert.convert(hf_dir, output, overwrite=FLAGS.overwrite)
    print(f"wrote Google-format checkpoint {prefix}")


def cmd_serve(args):
    from bertc.serving import server
    _no_arguments("serve", args, "--model ARTIFACT")
    if not FLAGS.model:
        raise BertcError("serve: --model is required; expected an artifact directory written "
                         "by bertc build")
    engine_only = {"ray": ("num_replicas", "ray_address"),
                   "bertc": ("parallel", "inter_op_threads", "body_timeout_s",
                             "keepalive_timeout_s", "header_timeout_s", "grpc_port")}
    for engine, names in engine_only.items():
        for name in names:
            if FLAGS[name].present and FLAGS.engine != engine:
                raise BertcError(f"--{name}: only with --engine {engine} (got --engine "
                                 f"{FLAGS.engine})")
    if FLAGS.engine == "ray":
        from bertc.serving import ray_engine
        return ray_engine.run(ray_engine.RayServeOptions(
            model=FLAGS.model, model_name=FLAGS.model_name, num_replicas=FLAGS.num_replicas,
            ray_address=FLAGS.ray_address, host=FLAGS.host, port=FLAGS.port,
            intra_op_threads=FLAGS.intra_op_threads or 1,
            max_batch_delay_ms=FLAGS.max_batch_delay_ms, max_queue=FLAGS.max_queue,
            max_instances=FLAGS.max_instances, max_body_bytes=FLAGS.max_body_bytes,
            paraphrase_threshold=FLAGS.paraphrase_threshold,
            skip_checksums=FLAGS.skip_checksums, skip_probe=FLAGS.skip_probe))
    server.run(server.ServerConfig(
        model=FLAGS.model, model_name=FLAGS.model_name, host=FLAGS.host, port=FLAGS.port,
        grpc_port=FLAGS.grpc_port, parallel=FLAGS.parallel, intra_op_threads=FLAGS.intra_op_threads,
        inter_op_threads=FLAGS.inter_op_threads or 1,
        max_batch_delay_ms=FLAGS.max_batch_delay_ms,
        max_queue=FLAGS.max_queue, max_instances=FLAGS.max_instances,
        max_body_bytes=FLAGS.max_body_bytes, body_timeout_s=FLAGS.body_timeout_s,
        keepalive_timeout_s=FLAGS.keepalive_timeout_s, header_timeout_s=FLAGS.header_timeout_s,
        paraphrase_threshold=FLAGS.paraphrase_threshold, skip_checksums=FLAGS.skip_checksums,
        skip_probe=FLAGS.skip_probe))


def cmd_client(args):
    from bertc.client import command
    if FLAGS.squad:
        _squad(args)
        return
    if FLAGS.squad_predictions:
        raise BertcError("--squad_predictions: only with --squad FILE.json")
    pairs = command.pairs_from_flags(FLAGS.tsv, FLAGS.pair, args)
    if FLAGS.pair is not None:
        _ask_one_pair(command, pairs[0])
        return
    summary, text = command.run_client(
        url=FLAGS.url, model_name=FLAGS.model_name, pairs=pairs, clients=FLAGS.clients,
        cycle=FLAGS.cycle, timeout_s=FLAGS.request_timeout_s, seed=FLAGS.seed,
        progress=FLAGS.progress, plot=FLAGS.plot, protocol=FLAGS.protocol,
        grpc_target=FLAGS.grpc_target, vocab=FLAGS.vocab)
    print(json.dumps(summary, indent=2) if FLAGS.json else text)
    if not summary["ok"]:
        raise CheckFailed(f"client: none of {summary['requests']} requests succeeded")


def _squad(args):
    """`client --squad FILE`: SQuAD v1.1 exact match and F1 of a span-head server."""
    from bertc.client import squad
    _no_arguments("client", args, "--squad FILE.json")
    for name in ("pair", "tsv", "cycle", "plot"):
        if FLAGS[name].present:
            raise BertcError(f"--{name}: not with --squad (which sends every question once)")
    summary = squad.run(FLAGS.url, squad.read_squad(FLAGS.squad), clients=FLAGS.clients,
                        model_name=FLAGS.model_name, timeout_s=FLAGS.request_timeout_s,
                        predictions_path=FLAGS.squad_predictions)
    print(json.dumps(summary, indent=2) if FLAGS.json else squad.format_text(summary))
    if not summary["ok"]:
        raise CheckFailed(f"client: none of {summary['questions']} questions was answered")


def _ask_one_pair(command, pair):
    """`client --pair A B`: one request, its answer printed; load-test flags refused."""
    given = [name for name in LOAD_TEST_FLAGS if FLAGS[name].present]
    if given:
        raise BertcError(f"--{given[0]}: a load-test flag; --pair sends one request "
                         "(for a load test leave out --pair)")
    asked = command.ask_pair(url=FLAGS.url, model_name=FLAGS.model_name, pair=pair,
                             timeout_s=FLAGS.request_timeout_s)
    print(json.dumps(asked, indent=2) if FLAGS.json else command.format_answer(asked))


def cmd_tfserving(args):
    from bertc.artifact import tfserving_config
    artifact = _one_argument("tfserving", args, "ARTIFACT directory")
    print(tfserving_config.models_config_for(artifact, FLAGS.base_dir), end="")


#: Command name -> the function that runs it (COMMANDS says which flags each owns).
HANDLERS = {"build": cmd_build, "verify": cmd_verify, "inspect": cmd_inspect,
            "convert": cmd_convert, "serve": cmd_serve, "client": cmd_client,
            "tfserving": cmd_tfserving}


def check_flag_owners(command: str) -> None:
    """A bertc flag given on the command line must belong to `command`."""
    owned = COMMANDS[command].flags
    for name in sorted(set().union(*(c.flags for c in COMMANDS.values())) - owned):
        if FLAGS[name].present:
            owners = [f"bertc {c}" for c, spec in COMMANDS.items() if name in spec.flags]
            raise BertcError(f"--{name}: not a flag of bertc {command} (it belongs to "
                             f"{', '.join(owners)}); see bertc {command} --help")


def _configure_logging(command: str) -> None:
    """Below --verbosity=1 only warnings, and the build's stage lines; 1: INFO; 2: DEBUG."""
    verbosity = FLAGS.verbosity
    level = (COMMANDS[command].log_level if verbosity < 1
             else logging.INFO if verbosity == 1 else logging.DEBUG)
    logging.getLogger().setLevel(level)
    if level > logging.INFO:
        from bertc.builder import stages
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        for name in stages.SHOWN_LOGGERS:
            shown = logging.getLogger(name)
            shown.addHandler(handler)
            shown.setLevel(logging.INFO)
            shown.propagate = False


def as_flags(message: str) -> str:
    """A library message in the command line's words: the library names options
    in backquotes, as BuildOptions and ServerConfig spell them (`batch_size` 0:
    expected a positive integer); the CLI names the flags (--batch_size 0: ...)."""
    return re.sub(r"`([a-z_]+)`",
                  lambda m: f"--{m.group(1)}" if m.group(1) in FLAGS else m.group(0),
                  str(message))


def _error(message) -> None:
    print(f"bertc: error: {as_flags(message)}", file=sys.stderr)


def _internal_error(e: Exception) -> None:
    """A bug, not bad input: one line; the traceback too with --verbosity=1."""
    if FLAGS.verbosity >= 1:
        traceback.print_exc()
        hint = "the traceback is above"
    else:
        hint = "run with --verbosity=1 for the traceback"
    message = " ".join(str(e).split())
    print(f"bertc: internal error: {type(e).__name__}: {message} ({hint})", file=sys.stderr)


def main(argv):
    """Runs argv[1], the command, with the parsed flags; returns the exit code."""
    command, args = argv[1], argv[2:]
    _configure_logging(command)
    try:
        check_flag_owners(command)
        HANDLERS[command](args)
    except CheckFailed as e:
        _error(e)
        return 1
    except BertcError as e:
        _error(e)
        return 2
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - a bug: reported in one line, exit 70
        _internal_error(e)
        return 70
    return 0


def _import_tensorflow_quietly():
    """Imports TensorFlow with its C++ start-up banner (oneDNN, CPU features) hidden.

    TF 2.21 prints it before absl logging is initialised, whatever
    TF_CPP_MIN_LOG_LEVEL says, so stderr (fd 2) is pointed at /dev/null meanwhile.
    """
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        pass  # reported where it is first needed
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _tensorflow_version() -> str:
    _import_tensorflow_quietly()
    tf = sys.modules.get("tensorflow")
    return getattr(tf, "__version__", "not installed")


def _expand_v(args):
    """A bare `-v` (no number after it) means --verbosity=1."""
    expanded = []
    for i, arg in enumerate(args):
        following = args[i + 1] if i + 1 < len(args) else ""
        bare = arg == "-v" and not following.lstrip("-").isdigit()
        expanded.append("--verbosity=1" if bare else arg)
    return expanded


def _before_flags(args):
    """Help, --version and unknown commands, answered before absl parses anything.

    Returns the exit code, or None when args[0] is a command to run.
    """
    words = args[:args.index("--")] if "--" in args else args
    if not args or args[0] in ("help",) + HELP_WORDS:
        topic = args[1] if args[:1] == ["help"] and len(args) > 1 else None
        if topic is None:
            print(cli_help.overview(COMMANDS))
            return 0
        if topic not in COMMANDS:
            return _unknown_command(topic)
        print(cli_help.command_help(topic, COMMANDS[topic], FLAGS))
        return 0
    if "--helpfull" in words:
        print(FLAGS.get_help(include_special_flags=True))
        return 0
    if args[0] == "--version":
        print(cli_help.versions(_tensorflow_version()))
        return 0
    if args[0] not in COMMANDS:
        return _unknown_command(args[0])
    if any(word in HELP_WORDS for word in words[1:]):
        print(cli_help.command_help(args[0], COMMANDS[args[0]], FLAGS))
        return 0
    return None


def _unknown_command(word: str) -> int:
    where = ("expected the command first: bertc COMMAND [flags]" if word.startswith("-")
             else "unknown command")
    _error(f"{word}: {where}; expected one of {', '.join(COMMANDS)} (bertc help)")
    return 2


def _run(argv) -> int:
    args = _expand_v(argv[1:])
    code = _before_flags(args)
    if code is not None:
        return code
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if COMMANDS[args[0]].tensorflow:
        _import_tensorflow_quietly()
    command = args[0]
    app.run(lambda parsed: sys.exit(main(parsed)), argv=[argv[0]] + args,
            flags_parser=lambda a: _parse_flags(a, command))
    return 0


def run():
    """Console-script entry point: `bertc COMMAND [flags]`."""
    try:
        sys.exit(_run(sys.argv))
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        sys.exit(130)


def _parse_flags(argv, command: str):
    """absl's parsing, with a bad flag reported on one line (absl prints two, 'FATAL ...')."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        _error(f"{str(e).removeprefix('flag ')}; see bertc {command} --help")
        sys.exit(2)


def _end_of_start_up():
    """Importing is over: SIGINT raises KeyboardInterrupt again (run() reports it)."""
    try:
        if signal.getsignal(signal.SIGINT) is _interrupted_at_start_up:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:
        pass


_end_of_start_up()

if __name__ == "__main__":
    run()
