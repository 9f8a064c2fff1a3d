"""The `bertc` command line: a thin absl layer over the library.

  bertc build   [--ckpt DIR | --saved_model DIR] [--crude_gelu] [--output DIR] ...
  bertc verify  ARTIFACT [--verify_data TSV] [--json]
  bertc convert --hf_dir DIR --output DIR
  bertc inspect ARTIFACT_OR_CKPT [--tensorboard DIR] [--json]
  bertc serve   --model ARTIFACT [--port 8501] [--parallel N] [--max_batch_delay_ms 5]
  bertc client  --url http://127.0.0.1:8501 [--clients 48 --cycle 128] [--tsv TSV |
                --pair "sentence a" "sentence b"] [--json] [--plot FILE.png]
Every command prints its result; errors are one line on stderr and exit 1.
"""

import json
import logging
import os
import sys

from absl import app, flags

from bertc.errors import BertcError
from bertc.serving import defaults as serving_defaults

FLAGS = flags.FLAGS

# Sources.
flags.DEFINE_string("ckpt", None, "Google BERT checkpoint directory (bert_config.json, "
                    "vocab.txt, bert_model.ckpt.*) or checkpoint prefix. Default: the "
                    "embedded all-MiniLM-L6-v2.")
flags.DEFINE_string("saved_model", None, "A BERT SavedModel to read the weights from "
                    "(as the Neuron demo's --input_saved_model).")
flags.DEFINE_string("bert_config", None, "bert_config.json for --saved_model.")
flags.DEFINE_string("vocab", None, "vocab.txt, when the source has none.")
flags.DEFINE_string("hf_dir", None, "convert: a Hugging Face BERT directory "
                    "(config.json, model.safetensors, vocab.txt). Default: the MiniLM package.")
# Output.
flags.DEFINE_string("output", None, "build/convert: the directory to write (refused if it "
                    "exists, unless --overwrite). Default for build: artifacts/<checkpoint name>.")
flags.DEFINE_bool("overwrite", False, "Replace an existing --output directory.")
# Model.
flags.DEFINE_enum("head", None, ["sequence", "pooled", "classifier", "embedding"],
                  "Outputs to export. Default: classifier if the checkpoint has one, the "
                  "checkpoint's own (embedding for sentence-transformers), else pooled.")
flags.DEFINE_integer("batch_size", 4, "Static batch size of the artifact.")
flags.DEFINE_list("seq_len", ["128"], "Static sequence length(s); several make buckets.")
flags.DEFINE_enum("do_lower_case", "auto", ["auto", "true", "false"],
                  "Tokenizer lower-casing (auto: from the checkpoint).")
# Rewrites.
flags.DEFINE_list("rewrites", [], "Extra graph rewrite passes, in order.")
flags.DEFINE_bool("default_rewrites", True, "Start from the target's default passes.")
flags.DEFINE_bool("crude_gelu", False, "GELU as x*sigmoid(1.702x) (the Neuron demo's flag).")
flags.DEFINE_enum("dtype", "float32", ["float32", "float16", "bfloat16"],
                  "Matmul/attention precision (mixed_precision pass).")
flags.DEFINE_bool("aggressive_optimizations", False, "Crude GELU and half-precision "
                  "LayerNorm too, as the Neuron demo.")
flags.DEFINE_bool("strict", False, "A requested pass that matches nothing is an error.")
flags.DEFINE_bool("allow_internal_ops", False, "Keep internal TensorFlow ops (oneDNN's "
                  "_MklLayerNorm) in the SavedModel instead of public ops that TensorFlow "
                  "fuses at load; only x86 oneDNN builds of TensorFlow can run the result.")
# Target.
flags.DEFINE_enum("target", "cpu", ["cpu", "neuron"], "Compile target.")
flags.DEFINE_string("compiler_args", "--fp32-cast matmult", "Neuron compiler arguments.")
flags.DEFINE_bool("dry_run", False, "--target neuron: record and print the compile call only.")
# Verify.
flags.DEFINE_bool("verify", True, "build: verify the artifact against the reference.")
flags.DEFINE_string("verify_data", None, "MRPC-format TSV or text file (one sentence or "
                    "tab-separated pair per line). Default: ../shared/data/glue_mrpc_dev.tsv.")
flags.DEFINE_integer("verify_rows", None, "Use only the first N text rows.")
flags.DEFINE_bool("json", False, "Print a machine-readable JSON report.")
flags.DEFINE_string("tensorboard", None, "inspect: write the graphs before and after the "
                    "rewrites (weights stripped) for TensorBoard into this directory.")
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
                     "port; 0: any free port, logged).")
flags.DEFINE_integer("parallel", serving_defaults.PARALLEL, "serve: replicas, each a worker "
                     "thread with its own Session over every bucket (2 x 1 thread was "
                     "fastest on 2 cores).")
flags.DEFINE_integer("intra_op_threads", None, "serve: intra-op threads per replica "
                     "(default: CPU cores / --parallel).")
flags.DEFINE_float("max_batch_delay_ms", serving_defaults.MAX_BATCH_DELAY_MS, "serve: how "
                   "long the oldest request of a partial batch waits before the batch is "
                   "padded and run.")
flags.DEFINE_integer("max_queue", serving_defaults.MAX_QUEUE, "serve: rows (model inputs) "
                     "that may wait for a batch; beyond it requests get 503 + Retry-After.")
flags.DEFINE_integer("max_instances", serving_defaults.MAX_INSTANCES, "serve: instances "
                     "allowed in one request.")
flags.DEFINE_integer("max_body_bytes", serving_defaults.MAX_BODY_BYTES, "serve: largest "
                     "request body (413 beyond).")
flags.DEFINE_float("paraphrase_threshold", None, "serve: cosine threshold for embedding "
                   "heads (default: the manifest's, else 0.68, calibrated for MiniLM on "
                   "MRPC dev).")
# Client.
flags.DEFINE_string("url", f"http://127.0.0.1:{serving_defaults.PORT}", "client: the "
                    "server's base URL.")
flags.DEFINE_integer("clients", 48, "client: concurrent clients.")
flags.DEFINE_integer("cycle", 128, "client: requests each client sends, one at a time.")
flags.DEFINE_string("tsv", None, "client: MRPC-format TSV to draw pairs from (default: "
                    "../shared/data/glue_mrpc_dev.tsv).")
flags.DEFINE_string("pair", None, "client: send one pair instead: --pair \"sentence a\" "
                    "\"sentence b\".")
flags.DEFINE_bool("progress", False, "client: draw a progress bar on stderr even when it is "
                  "not a terminal.")
flags.DEFINE_string("plot", None, "client: write a latency histogram PNG (needs "
                    "matplotlib).")
flags.DEFINE_integer("seed", 0, "client: seed of the pair order.")
flags.DEFINE_float("request_timeout_s", 60.0, "client: per-request timeout.")

COMMANDS = ("build", "verify", "convert", "inspect", "serve", "client")


def _lower_case():
    return {"auto": None, "true": True, "false": False}[FLAGS.do_lower_case]


def _seq_lens():
    try:
        return [int(s) for s in FLAGS.seq_len]
    except ValueError:
        raise BertcError(f"--seq_len {','.join(FLAGS.seq_len)}: expected integers such as "
                         "128 or 64,128") from None


def cmd_build(args):
    from bertc import builder, defaults, verify
    if args:
        raise BertcError(f"build: unexpected argument {args[0]!r}; expected only flags")
    ckpt = FLAGS.ckpt
    if not ckpt and not FLAGS.saved_model:
        ckpt = defaults.ensure_default_checkpoint()
    source = ckpt or FLAGS.saved_model
    output = FLAGS.output or os.path.join("artifacts", os.path.basename(os.path.normpath(source)))
    from bertc.targets import neuron
    options = builder.BuildOptions(
        output=output, ckpt=ckpt, saved_model=FLAGS.saved_model, bert_config=FLAGS.bert_config,
        vocab=FLAGS.vocab, head=FLAGS.head, batch_size=FLAGS.batch_size, seq_lens=_seq_lens(),
        rewrites=FLAGS.rewrites, default_rewrites=FLAGS.default_rewrites,
        crude_gelu=FLAGS.crude_gelu, dtype=FLAGS.dtype,
        aggressive_optimizations=FLAGS.aggressive_optimizations, target=FLAGS.target,
        compiler_args=neuron.parse_compiler_args(FLAGS.compiler_args), dry_run=FLAGS.dry_run,
        overwrite=FLAGS.overwrite, strict=FLAGS.strict,
        allow_internal_ops=FLAGS.allow_internal_ops, verify=FLAGS.verify,
        verify_data=FLAGS.verify_data, verify_rows=FLAGS.verify_rows,
        do_lower_case=_lower_case())
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
    from bertc import verify, verify_artifact
    if len(args) != 1:
        raise BertcError("verify: expected one ARTIFACT directory argument")
    report = verify_artifact.verify_artifact(args[0], data=FLAGS.verify_data,
                                             rows=FLAGS.verify_rows, per_pass=FLAGS.per_pass)
    if FLAGS.json:
        print(json.dumps(report, indent=2))
    else:
        from bertc import per_pass
        for seq_len, seq_report in report["per_seq_len"].items():
            print(verify.format_report(seq_report))
            if seq_len in report["per_pass"]:
                print(per_pass.format_per_pass(report["per_pass"][seq_len], seq_len))
    if not report["passed"]:
        raise BertcError(f"verify: {args[0]} differs from its reference beyond the thresholds")


def cmd_inspect(args):
    from bertc import inspection
    if len(args) != 1:
        raise BertcError("inspect: expected one ARTIFACT or checkpoint directory argument")
    report = inspection.inspect_path(args[0], tensorboard=FLAGS.tensorboard,
                                     batch_size=FLAGS.batch_size, seq_len=_seq_lens()[0])
    print(json.dumps(report, indent=2) if FLAGS.json else inspection.format_inspection(report))


def cmd_convert(args):
    from bertc import defaults, hf_convert
    if args:
        raise BertcError(f"convert: unexpected argument {args[0]!r}; expected only flags")
    hf_dir = FLAGS.hf_dir or defaults.minilm_hf_dir()
    output = FLAGS.output or (defaults.default_checkpoint_dir() if not FLAGS.hf_dir else None)
    if not output:
        raise BertcError("convert: --output is required with --hf_dir")
    prefix = hf_convert.convert(hf_dir, output, overwrite=FLAGS.overwrite)
    print(f"wrote Google-format checkpoint {prefix}")


def cmd_serve(args):
    from bertc.serving import server
    if args:
        raise BertcError(f"serve: unexpected argument {args[0]!r}; expected --model ARTIFACT")
    if not FLAGS.model:
        raise BertcError("serve: --model is required; expected an artifact directory written "
                         "by bertc build")
    server.run(server.ServerConfig(
        model=FLAGS.model, model_name=FLAGS.model_name, host=FLAGS.host, port=FLAGS.port,
        parallel=FLAGS.parallel, intra_op_threads=FLAGS.intra_op_threads,
        max_batch_delay_ms=FLAGS.max_batch_delay_ms,
        max_queue=FLAGS.max_queue, max_instances=FLAGS.max_instances,
        max_body_bytes=FLAGS.max_body_bytes, paraphrase_threshold=FLAGS.paraphrase_threshold))


def cmd_client(args):
    from bertc.client import command
    pairs = command.pairs_from_flags(FLAGS.tsv, FLAGS.pair, args)
    summary, text = command.run_client(
        url=FLAGS.url, model_name=FLAGS.model_name, pairs=pairs, clients=FLAGS.clients,
        cycle=FLAGS.cycle, timeout_s=FLAGS.request_timeout_s, seed=FLAGS.seed,
        progress=FLAGS.progress, plot=FLAGS.plot)
    print(json.dumps(summary, indent=2) if FLAGS.json else text)
    if not summary["ok"]:
        raise BertcError(f"client: none of {summary['requests']} requests succeeded")


def main(argv):
    args = argv[1:]
    if not args or args[0] not in COMMANDS:
        got = f" {args[0]!r}" if args else ""
        print(f"bertc: error: unknown command{got}; expected one of {', '.join(COMMANDS)} "
              "(bertc --helpfull lists every flag)", file=sys.stderr)
        return 2
    logging.getLogger().setLevel(logging.INFO)
    try:
        globals()[f"cmd_{args[0]}"](args[1:])
    except BertcError as e:
        print(f"bertc: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bertc: interrupted; nothing was written", file=sys.stderr)
        return 130
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


def run():
    """Console-script entry point."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "client" not in sys.argv[1:2]:  # the client speaks HTTP only
        _import_tensorflow_quietly()
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=_parse_flags)


def _parse_flags(argv):
    """absl's parsing, with a bad flag reported on one line (absl prints two, 'FATAL ...')."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        print(f"bertc: error: {e}; see bertc --helpfull", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    run()
