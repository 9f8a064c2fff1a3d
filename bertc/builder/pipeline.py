"""`bertc build`: checkpoint -> rewritten, verified, static-shape SavedModel artifact.

Stages, each logged with its time and peak memory:
  read     load and validate the checkpoint (Google, SavedModel)
  trace    build the BERT tf.function at [batch_size, seq_len] for the head
  freeze   the traced GraphDef, weights detached (kept as the checkpoint's arrays)
  rewrite  run the pass pipeline (rewrites/)
  export   write the SavedModel (and compile it for the target)
  verify   compare the written SavedModel with the unrewritten reference, and keep
           a probe of the rows it agreed on (bertc.artifact.probe)
Artifact layout (written to a temporary sibling and renamed into place):
  ARTIFACT/bertc.json          the manifest (with the sha256 of every other file)
  ARTIFACT/vocab.txt           the tokenizer's vocabulary
  ARTIFACT/seq_<S>/1/          one SavedModel per sequence length (TF Serving layout)
  ARTIFACT/neuron/seq_<S>/1/   the Neuron-compiled SavedModel (--target neuron)
  ARTIFACT/openvino/seq_<S>/   model.xml + model.bin, OpenVINO IR (--target openvino)
  ARTIFACT/probe/seq_<S>/      verify's probe: inputs and the reference's outputs (.npy)
"""

import dataclasses
import logging
import os
import shutil
from typing import List, Optional, Sequence

import numpy as np

from bertc import atomic
from bertc import passes as rewriting
from bertc.artifact import checksums
from bertc.artifact import manifest
from bertc.artifact import probe
from bertc.artifact import saved_model_writer as export
from bertc.builder.stages import StageLog
from bertc.errors import BertcError, CheckFailed
from bertc.model import freeze, modeling
from bertc.runtime import machine
from bertc.runtime import runner as runners
from bertc.sources import google_checkpoint as checkpoint
from bertc.sources import load
from bertc.text import features as features_lib
from bertc.verify import compare as verify_lib
from bertc.verify import reference
from bertc.verify import runs as verify_runs

TARGETS = ("cpu", "neuron", "openvino")
#: What says that an existing directory is an artifact (--overwrite may replace it).
ARTIFACT_MARKER = atomic.json_marker(manifest.FILE_NAME, "format", manifest.FORMAT)


@dataclasses.dataclass
class BuildOptions:
    """Everything a build depends on (recorded in the manifest).

    Without ckpt or saved_model the embedded default checkpoint is built; without
    output the artifact goes to artifacts/<source name>, as on the command line.
    """

    output: Optional[str] = None
    ckpt: Optional[str] = None
    saved_model: Optional[str] = None
    bert_config: Optional[str] = None
    vocab: Optional[str] = None
    head: Optional[str] = None
    batch_size: int = 4
    seq_lens: Sequence[int] = (128,)
    rewrites: Sequence[str] = ()
    default_rewrites: bool = True
    crude_gelu: bool = False
    dtype: Optional[str] = None  # None: the target's default (float32; openvino: by CPU)
    aggressive_optimizations: bool = False
    target: str = "cpu"
    compiler_args: Optional[Sequence[str]] = None
    dry_run: bool = False
    overwrite: bool = False
    strict: bool = False
    allow_internal_ops: bool = False
    verify: bool = True
    verify_data: Optional[str] = None
    verify_rows: Optional[int] = None
    do_lower_case: Optional[bool] = None
    # --dtype int8 (--target openvino): calibration text and the accuracy bound
    calibration_data: Optional[str] = None
    calibration_rows: Optional[int] = None
    max_cosine_loss: Optional[float] = None
    max_accuracy_drop: Optional[float] = None
    int8_rest_dtype: Optional[str] = None  # None: float32 (bfloat16: faster on AMX, opt-in)


@dataclasses.dataclass
class BuildResult:
    artifact: str
    manifest: dict
    verify_report: Optional[dict]
    stages: List[dict]


def check_options(options: BuildOptions) -> None:
    """Flag-level validation, before any file is read."""
    if options.ckpt and options.saved_model:
        raise BertcError("`ckpt` / `saved_model`: expected at most one checkpoint source")
    if options.batch_size < 1:
        raise BertcError(f"`batch_size` {options.batch_size}: expected a positive integer")
    if not options.seq_lens or any(s < 2 for s in options.seq_lens):
        raise BertcError(f"`seq_len` {','.join(map(str, options.seq_lens))}: expected "
                         "positive lengths >= 2")
    if len(set(options.seq_lens)) != len(options.seq_lens):
        raise BertcError(f"`seq_len` {','.join(map(str, options.seq_lens))}: repeated length")
    if options.target not in TARGETS:
        raise BertcError(f"`target` {options.target}: expected one of {', '.join(TARGETS)}")
    if options.dry_run and options.target != "neuron":
        raise BertcError(f"`dry_run`: only for a target that compiles (`target` neuron); "
                         f"got `target` {options.target}")
    features_lib.check_rows(options.verify_rows)
    if options.dtype == "int8":
        if options.target != "openvino":
            raise BertcError(f"`dtype` int8: only on `target` openvino; got `target` "
                             f"{options.target}")
        from bertc.builder.targets import openvino_int8
        openvino_int8.check_options(options.max_cosine_loss, options.max_accuracy_drop)
        from bertc.runtime import openvino_settings
        openvino_settings.inference_precision("int8", options.int8_rest_dtype)
    elif any(v is not None for v in (options.calibration_data, options.calibration_rows,
                                     options.max_cosine_loss, options.max_accuracy_drop,
                                     options.int8_rest_dtype)):
        raise BertcError("`calibration_data` / `calibration_rows` / `max_cosine_loss` / "
                         "`max_accuracy_drop` / `int8_rest_dtype`: only with `dtype` int8")
    head = modeling.canonical_head(options.head)
    if head is not None and head not in modeling.HEAD_OUTPUTS:
        raise BertcError(f"`head` {options.head}: expected one of "
                         f"{', '.join(modeling.HEAD_OUTPUTS)}")


def source_of(options: BuildOptions) -> dict:
    """load_source's keyword arguments for the build's checkpoint source."""
    return {"ckpt": options.ckpt, "saved_model": options.saved_model,
            "bert_config": options.bert_config, "vocab": options.vocab}


def with_defaults(options: BuildOptions) -> BuildOptions:
    """The embedded default checkpoint when no source is given, and the CLI's default
    output, artifacts/<source name>. The default is converted later, if need be."""
    from bertc.sources import embedded as defaults
    ckpt = options.ckpt
    if not ckpt and not options.saved_model:
        ckpt = defaults.default_checkpoint_dir()
    source = ckpt or options.saved_model
    output = options.output or os.path.join("artifacts",
                                            os.path.basename(os.path.normpath(source)))
    return dataclasses.replace(options, ckpt=ckpt, output=output, dtype=default_dtype(options))


def default_dtype(options: BuildOptions) -> str:
    """--dtype, else float32; on --target openvino the CPU's fastest native precision."""
    if options.dtype is not None:
        return options.dtype
    if options.target == "openvino":
        from bertc.builder.targets import openvino
        dtype = openvino.default_dtype()
        logging.info("--target openvino: --dtype %s (inference precision %s), the fastest "
                     "this CPU runs natively; --dtype float32 is exact", dtype,
                     openvino.precision(dtype))
        return dtype
    return "float32"


def graph_dtype(options: BuildOptions) -> str:
    """The dtype the graph is rewritten for: int8 quantizes the fp32 IR afterwards."""
    return "float32" if options.dtype == "int8" else options.dtype


def source_dirs(options: BuildOptions) -> List[str]:
    """The directories the build reads its checkpoint from (an output may not touch them)."""
    source = options.ckpt or options.saved_model
    if options.ckpt and os.path.isfile(source + ".index"):
        source = os.path.dirname(source) or "."  # a checkpoint prefix
    return [source]


def build(options: BuildOptions) -> BuildResult:
    """Builds, exports, compiles and verifies an artifact; see the module docstring."""
    check_options(options)
    dtype_source = "--dtype" if options.dtype else "the target's default for this CPU"
    options = with_defaults(options)
    neuron_args = None
    if options.target == "neuron":  # before anything else: a missing SDK is the first error
        from bertc.builder.targets import neuron
        neuron_args = (list(options.compiler_args) if options.compiler_args is not None
                       else list(neuron.DEFAULT_COMPILER_ARGS))
        if not options.dry_run:
            neuron.preflight()
    if options.target == "openvino":
        from bertc.builder.targets import openvino
        openvino.precision(options.dtype)
        openvino.load()
        emulated = openvino.emulated_bf16(options.dtype, options.int8_rest_dtype)
        if emulated:
            logging.warning("%s", emulated)
        if options.dtype == "int8":
            from bertc.builder.targets import openvino_int8
            openvino_int8.load_nncf()
    passes = rewriting.resolve(options.rewrites, options.crude_gelu, graph_dtype(options),
                               options.aggressive_optimizations, options.target,
                               options.default_rewrites, options.allow_internal_ops)
    log = StageLog()
    with atomic.output_directory(options.output, options.overwrite, marker=ARTIFACT_MARKER,
                                 sources=source_dirs(options)) as tmp:
        doc, verify_reports = _build_into(tmp, options, passes, neuron_args, log,
                                          dtype_source)
    logging.info("wrote %s in %.1f s", options.output, log.total_seconds())
    return BuildResult(artifact=os.path.abspath(options.output), manifest=doc,
                       verify_report=verify_reports or None, stages=log.stages)


def _build_into(tmp: str, options: BuildOptions, passes, neuron_args, log: StageLog,
                dtype_source: str = "--dtype"):
    """Every stage, writing the artifact into `tmp`; returns (manifest, verify reports)."""
    from bertc.sources import embedded as defaults
    if options.ckpt == defaults.default_checkpoint_dir():
        defaults.ensure_default_checkpoint()
    with log.stage("read"):
        ckpt = load.load_source(**source_of(options))
        config = ckpt.config
        head = (modeling.canonical_head(options.head)
                or modeling.default_head(ckpt.weights, ckpt.hints))
        passes = rewriting.for_head(passes, head, options.rewrites)
        if options.target == "openvino":
            from bertc.builder.targets import openvino
            openvino.check_passes(passes)
        modeling.check_head(head, ckpt.weights)
        too_long = [s for s in options.seq_lens if s > config.max_position_embeddings]
        if too_long:
            raise BertcError(f"`seq_len` {too_long[0]}: exceeds max_position_embeddings "
                             f"{config.max_position_embeddings} of the checkpoint's config")
        lower = features_lib.resolve_lower_case(ckpt.hints, ckpt.vocab_file,
                                                options.do_lower_case)
        model = modeling.BertModel(config, ckpt.weights)
        num_labels = ckpt.num_labels
        ckpt.weights = None  # the variables hold them now
    logging.info("model: %d layers, hidden %d, %d heads of %d; head %s; rewrites: %s",
                 config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
                 config.head_size, head, ", ".join(passes) or "none")
    exact = rewriting.is_exact(passes) and (options.target != "openvino"
                                            or options.dtype == "float32")
    thresholds = rewriting.thresholds(passes, verify_lib.EXACT)
    int8, inference = None, None
    if options.target == "openvino":
        from bertc.builder.targets import openvino as openvino_target
        inference = openvino_target.inference_precision(options.dtype, options.int8_rest_dtype)
        # OpenVINO's half inference precision is verified as mixed_precision is
        thresholds = rewriting.thresholds(
            list(passes) + (["mixed_precision"] if options.dtype != "float32" else []),
            verify_lib.EXACT)
        if options.dtype == "int8":
            int8 = _int8_plan(options, head, ckpt.vocab_file, lower, model.weights)
            thresholds = int8["thresholds"]
    pass_options = rewriting.pass_options(graph_dtype(options), options.aggressive_optimizations,
                                          options.target)
    models, rewrite_reports, compile_calls, verify_reports = [], {}, [], {}
    for seq_len in sorted(options.seq_lens):
        with log.stage("trace"):
            concrete = freeze.trace(model, head, options.batch_size, seq_len)
        with log.stage("freeze"):
            frozen = freeze.freeze(concrete, options.batch_size, seq_len, model.weights,
                                   detach=True)
            del concrete
            if seq_len == max(options.seq_lens):
                model.weights = None  # the last trace: `frozen` holds the weights now
        with log.stage("rewrite"):
            # The pipeline takes the frozen graph and its detached weights over (no
            # copy); verify rebuilds the unrewritten reference from the checkpoint.
            frozen, reports = rewriting.apply(frozen, passes, pass_options,
                                              options.strict, consume=True)
            rewriting.check_sites(reports, config, head)  # bertc built this graph
            internal = rewriting.internal_ops(frozen.graph_def)
            if internal and not options.allow_internal_ops:
                raise RuntimeError(f"the rewritten graph holds internal ops "
                                   f"{', '.join(internal)} although allow_internal_ops is off")
        rewrite_reports[str(seq_len)] = reports
        relative = os.path.join(f"seq_{seq_len}", "1")
        with log.stage("export"):
            export.write_saved_model(frozen, os.path.join(tmp, relative))
            if options.target == "openvino":  # from the frozen graph, its weights shared
                call = openvino_target.compile_bucket(tmp, frozen, relative, inference)
            del frozen
            entry = {"seq_len": seq_len, "path": relative}
            if options.target == "neuron":
                call = _neuron_compile(tmp, relative, seq_len, options, neuron_args, passes,
                                       reports)
                compile_calls.append(call)
                entry["neuron_path"] = call["new_model_dir_relative"]
            if options.target == "openvino":
                if int8:
                    with log.stage("quantize"):
                        call["int8"] = _int8_quantize(tmp, call, int8, options.batch_size,
                                                      seq_len, inference)
                compile_calls.append(call)
                entry["openvino_path"] = call["ir"]
            models.append(entry)
        if options.verify:
            with log.stage("verify"):
                if int8:  # the held-out split only
                    features, source = int8["tokenize"](int8["held_out"], seq_len), \
                        int8["split"]["held_out"]["path"]
                else:
                    features, source = features_lib.text_features(
                        options.verify_data, ckpt.vocab_file, lower, seq_len,
                        options.verify_rows)

                def keep_probe(batch, outputs, stats, text_source, seq_len=seq_len,
                               entry=entry):
                    entry["probe"] = probe.write(tmp, seq_len, batch.feeds, batch.real_rows,
                                                 outputs, text_source, stats)

                verify_reports[str(seq_len)] = verify_lib.verify_runners(
                    verify_runs.artifact_runs(tmp, entry, inference),
                    # read from disk again, alive only while it runs
                    lambda: runners.graph_def_runner(reference.reference_graph(
                        source_of(options), head, options.batch_size, seq_len)),
                    options.batch_size, seq_len, features,
                    config.vocab_size, config.type_vocab_size, thresholds,
                    text_source=source, checked_sets=("text",) if int8 else None,
                    on_probe=keep_probe)
    shutil.copyfile(ckpt.vocab_file, os.path.join(tmp, "vocab.txt"))
    doc = manifest.make_manifest(
        options=options, source=ckpt.source, config=config, head=head,
        num_labels=num_labels, do_lower_case=lower, passes=passes, exact=exact,
        rewrite_reports=rewrite_reports, models=models, thresholds=thresholds,
        compile_calls=compile_calls, verify_reports=verify_reports, stages=log.stages,
        hints=ckpt.hints, built_on=machine.describe())
    if options.target == "openvino":
        doc["target"]["openvino"] = openvino_target.target_record(
            options.dtype, dtype_source, inference, options.int8_rest_dtype)
        if int8:
            doc["target"]["openvino"]["int8"] = {
                "nncf": int8["nncf_version"], "bound": int8["bound"].__dict__,
                "splits": int8["split"], "thresholds": int8["thresholds"]}
    failed = [f"seq {s}: {'; '.join(r['failures'])}{verify_lib.other_runs(r)}"
              for s, r in verify_reports.items() if not r["passed"]]
    if failed:
        raise VerifyFailed(f"verify failed, artifact not written: {failed[0]}",
                           verify_reports)
    doc[checksums.KEY] = checksums.record(tmp)  # every file so far; serve/verify check them
    manifest.write(tmp, doc)
    from bertc.artifact import tfserving_config
    tfserving_config.write_tf_serving_configs(
        tmp, doc,
        artifact_name=os.path.basename(os.path.normpath(options.output)))
    return doc, verify_reports


def _int8_plan(options: BuildOptions, head: str, vocab_file: str, lower: bool,
               weights: dict) -> dict:
    """The int8 build's bound, verify thresholds, text splits (bertc/text/splits.py)
    and the weights' fingerprints that name the layers kept in f32."""
    from bertc.builder.targets import openvino_int8
    from bertc.text import splits
    from bertc.text import tokenization
    bound = openvino_int8.bound_for(head, modeling.HEAD_OUTPUTS[head], options.max_cosine_loss,
                                    options.max_accuracy_drop)
    calibration, held_out, record = splits.split(options.verify_data, options.calibration_data,
                                                 options.calibration_rows, options.verify_rows)
    tokenizer = tokenization.WordPieceTokenizer.from_vocab_file(vocab_file, lower)
    logging.info("int8: bound %s; calibrating on %d pairs of %s, verify on %d held-out pairs",
                 bound.describe(), len(calibration), record["calibration"]["path"],
                 len(held_out))
    return {"bound": bound, "thresholds": openvino_int8.thresholds(bound), "split": record,
            "calibration": calibration, "held_out": held_out,
            "nncf_version": openvino_int8.load_nncf().__version__,
            "fingerprints": openvino_int8.weight_fingerprints(weights),
            "tokenize": lambda pairs, seq_len: features_lib.pair_features(
                tokenizer, pairs, seq_len)}


def _int8_quantize(tmp: str, call: dict, int8: dict, batch_size: int, seq_len: int,
                   rest_precision: str) -> dict:
    from bertc.builder.targets import openvino_int8
    return openvino_int8.quantize_bucket(tmp, call, int8["tokenize"](int8["calibration"],
                                                                     seq_len),
                                         batch_size, int8["bound"], int8["fingerprints"],
                                         rest_precision)


class VerifyFailed(CheckFailed):
    """The built artifact differs from the reference beyond the build's thresholds."""

    def __init__(self, message, reports):
        super().__init__(message)
        self.reports = reports


def _neuron_compile(tmp: str, relative: str, seq_len: int, options: BuildOptions,
                    compiler_args: list, passes: Sequence[str], reports=()) -> dict:
    """Compiles (or, with --dry_run, only records) one SavedModel for Neuron, with
    the CPU/device partition that the cpu_embeddings rewrite of this sequence
    length reported (its no_fuse_ops / force_fuse_ops)."""
    from bertc.builder.targets import neuron
    new_relative = os.path.join("neuron", f"seq_{seq_len}", "1")
    partition = next((r["details"] for r in reports
                      if r["name"] == "cpu_embeddings" and r["sites"]), {})
    call = neuron.NeuronCompileCall(  # paths relative to the artifact: it may move
        model_dir=relative, new_model_dir=new_relative,
        batch_size=options.batch_size, compiler_args=compiler_args,
        no_fuse_ops=partition.get("no_fuse_ops"), force_fuse_ops=partition.get("force_fuse_ops"))
    record = {"seq_len": seq_len, "dry_run": options.dry_run, "call": call.render(),
              "summary": call.summary(), "kwargs": call.kwargs(),
              "new_model_dir_relative": new_relative, "relative_to": "the artifact"}
    if options.dry_run:
        logging.info("--dry_run: would run %s", call.summary())
        return record
    os.makedirs(os.path.join(tmp, "neuron", f"seq_{seq_len}"), exist_ok=True)
    real = dataclasses.replace(call, model_dir=os.path.join(tmp, relative),
                               new_model_dir=os.path.join(tmp, new_relative))
    record["result"] = neuron.compile_saved_model(real)
    return record
