"""The bridge between bertc's build options and the `rewrites` pass pipeline.

`rewrites` knows GraphDefs and nothing of bertc; this module turns build flags
(`--crude_gelu`, `--dtype`, `--aggressive_optimizations`, `--rewrites=a,b`) into
an ordered pass list, runs it on a FrozenGraph with the serving boundary
protected, and says whether the result is still exact.
"""

import dataclasses
import logging
from typing import List, Sequence

from bertc.errors import BertcError
from bertc.model.freeze import FrozenGraph

#: Passes the Neuron compiler cannot take, and why (logged when they are skipped).
CPU_ONLY_PASSES = {
    "remove_padding": "it changes shapes inside the graph; use sequence buckets there",
    "cls_only_tail": "it changes shapes inside the graph",
    "fused_layernorm": "_MklLayerNorm is an x86 TensorFlow op",
}


def internal_ops(graph_def) -> List[str]:
    """Op types of `graph_def` outside TensorFlow's public op set (names with a
    leading underscore, such as oneDNN's _MklLayerNorm), sorted."""
    return sorted({n.op for n in graph_def.node if n.op.startswith("_")})
#: The exact passes that keep every shape of the graph.
EXACT_FUSIONS = ("strip_unused", "fold_constants", "fused_attention", "fused_layernorm")
#: Shape-changing passes run after every other pass, in this order (the other
#: passes match the unpacked graph; remove_padding packs what cls_only_tail left).
RUN_LAST = ("cls_only_tail", "remove_padding")
#: The CPU target's default pipeline: exact passes only (see BUILD_NOTES.md, BENCHMARKS.md).
#: remove_padding: 2.3x on BERT-Base MRPC traffic at [4, 128], 1.00x at full length;
#: cls_only_tail cuts only pooled/classifier heads (benchmarks/padding_free.py).
CPU_DEFAULT = EXACT_FUSIONS + RUN_LAST
#: Then these, in this order: half precision hides the float32 patterns the other
#: passes match; public_layernorm writes the internal ops before it in public ones;
#: cpu_embeddings reports the final graph's node names for Neuron.
RUN_FINAL = ("mixed_precision", "public_layernorm", "cpu_embeddings")
#: Passes that emit internal (underscore) TensorFlow ops -> the pass that writes them
#: in public ops at the end, unless the build allows internal ops (--allow_internal_ops).
INTERNAL_OP_LOWERING = {"fused_layernorm": "public_layernorm"}
#: --dtype values that add mixed_precision (float32 needs no pass).
HALF_DTYPES = ("float16", "bfloat16")
#: --target openvino: the passes whose forms OpenVINO's own fusions (MHA, LayerNorm,
#: GELU) do not undo, measured per pass (BENCHMARKS.md, benchmarks/openvino_target.py);
#: the precision is OpenVINO's inference precision, not mixed_precision.
OPENVINO_DEFAULT = ("strip_unused",)


def resolve(rewrites: Sequence[str] = (), crude_gelu: bool = False, dtype: str = "float32",
            aggressive: bool = False, target: str = "cpu", use_default: bool = True,
            allow_internal_ops: bool = False) -> List[str]:
    """The ordered, de-duplicated pass names a build asks for: the target's
    defaults, --rewrites, crude_gelu, mixed_precision for a half --dtype, the
    lowering of internal ops unless allowed and, on --target neuron, cpu_embeddings."""
    defaults = {"cpu": CPU_DEFAULT, "openvino": OPENVINO_DEFAULT}.get(target, ())
    wanted = list(defaults if use_default else ())
    wanted += [r for r in rewrites if r]
    if crude_gelu or aggressive:
        wanted.append("crude_gelu")
    if dtype not in ("float32", "float16", "bfloat16"):
        raise BertcError(f"--dtype {dtype}: expected float32, float16 or bfloat16")
    if dtype in HALF_DTYPES and target != "openvino":
        wanted.append("mixed_precision")
    elif "mixed_precision" in wanted:
        raise BertcError("--rewrites mixed_precision: expected --dtype float16 or bfloat16 "
                         "(the pass takes its precision from --dtype)")
    if not allow_internal_ops:
        wanted += [INTERNAL_OP_LOWERING[n] for n in list(wanted) if n in INTERNAL_OP_LOWERING]
    if target == "neuron":
        wanted.append("cpu_embeddings")
    ordered = []
    for name in wanted:
        if name not in ordered:
            ordered.append(name)
    late = RUN_LAST + RUN_FINAL
    ordered = [n for n in ordered if n not in late] + [n for n in late if n in ordered]
    if target == "neuron":
        skipped = [n for n in ordered if n in CPU_ONLY_PASSES]
        for name in skipped:
            logging.warning("rewrite %s is CPU-only (%s) and is skipped on --target neuron",
                            name, CPU_ONLY_PASSES[name])
        ordered = [n for n in ordered if n not in CPU_ONLY_PASSES]
    emitters = {lowering: emitter for emitter, lowering in INTERNAL_OP_LOWERING.items()}
    ordered = [n for n in ordered if n not in emitters or emitters[n] in ordered]
    _check_known(ordered)
    return ordered


def _check_known(pass_names: Sequence[str]) -> None:
    if not pass_names:
        return
    import rewrites
    known = rewrites.available_passes()
    unknown = [n for n in pass_names if n not in known]
    if unknown:
        raise BertcError(f"--rewrites: unknown pass(es) {', '.join(unknown)}; expected some of "
                         f"{', '.join(known)}")


#: Heads that read only the last layer's [CLS] rows (what cls_only_tail cuts to).
CLS_ONLY_HEADS = ("pooled", "classifier")


def for_head(pass_names: Sequence[str], head: str, requested: Sequence[str] = ()) -> List[str]:
    """Drops default passes that cannot apply to `head` (cls_only_tail needs a
    pooled or classifier head), so the default pipeline warns of nothing; a pass
    the user asked for by name stays and warns if it matches nothing."""
    return [n for n in pass_names
            if not (n == "cls_only_tail" and head not in CLS_ONLY_HEADS and n not in requested)]


def expected_sites(config, head: str = None) -> dict:
    """Site counts a pass must reach on a bertc-built graph of `config` (and
    `head`: cls_only_tail cuts pooled/classifier heads, leaves the others)."""
    layers = config.num_hidden_layers
    expected = {"fused_attention": layers, "fused_layernorm": 2 * layers + 1,
                "crude_gelu": layers, "tanh_gelu": layers, "remove_padding": layers,
                "cpu_embeddings": 1}
    if head is not None:
        expected["cls_only_tail"] = 1 if head in CLS_ONLY_HEADS else 0
    return expected


def check_sites(reports, config, head: str = None) -> None:
    """The pipeline invariant 'one site per layer' (ONNX Runtime checks the same)."""
    expected = expected_sites(config, head)
    for report in reports:
        want = expected.get(report["name"])
        if want is not None and report["sites"] != want:
            raise BertcError(f"rewrite {report['name']}: rewrote {report['sites']} sites; "
                             f"expected {want} for {config.num_hidden_layers} layers")


#: Verify thresholds per approximate pass: the loosest applies to a build.
#: crude_gelu's bound is measured, not chosen: on MiniLM the embedding cosine of
#: x*sigmoid(1.702x) is 0.9955 on MRPC text and 0.9886 on random ids (HF's
#: quick_gelu, the same function, gives the same), so 0.999 cannot hold.
APPROXIMATE_THRESHOLDS = {
    "crude_gelu": {"max_abs": None, "min_cos": 0.98, "argmax": 0.99},
    "tanh_gelu": {"max_abs": None, "min_cos": 0.999, "argmax": 0.995},
    "mixed_precision": {"max_abs": None, "min_cos": 0.999, "argmax": 0.995},
}


def thresholds(pass_names: Sequence[str], exact: dict) -> dict:
    """The verify thresholds of a build: `exact` unless an approximate pass loosens them."""
    if is_exact(pass_names):
        return dict(exact)
    chosen = {"max_abs": None, "min_cos": 1.0, "argmax": 1.0}
    for name in pass_names:
        bound = APPROXIMATE_THRESHOLDS.get(name)
        if bound:
            chosen["min_cos"] = min(chosen["min_cos"], bound["min_cos"])
            chosen["argmax"] = min(chosen["argmax"], bound["argmax"])
    return chosen


def pass_options(dtype: str = "float32", aggressive: bool = False, target: str = "cpu") -> dict:
    """The options a build hands to its passes (each pass takes the keys it knows)."""
    return {"dtype": dtype, "aggressive": aggressive, "target": target}


def is_exact(pass_names: Sequence[str]) -> bool:
    """True when every pass is exact (fp32 re-association only)."""
    if not pass_names:
        return True
    import rewrites
    return all(rewrites.describe(n)["exact"] for n in pass_names)


def apply(frozen: FrozenGraph, pass_names: Sequence[str], options: dict = None,
          strict: bool = False, consume: bool = False):
    """Runs the passes on `frozen`; returns (new FrozenGraph, list of report dicts).

    consume=True hands frozen.graph_def (and its detached constants) to the
    pipeline to edit in place (the caller must not use `frozen` afterwards).
    A detached FrozenGraph gives a detached result.
    """
    if not pass_names:
        return frozen, []
    import rewrites
    protected = list(frozen.inputs.values()) + list(frozen.outputs.values())
    try:
        result = rewrites.run(frozen.graph_def, list(pass_names), protected_nodes=protected,
                              strict=strict, options=options or {}, consume=consume,
                              constants=frozen.constants)
    except rewrites.NoMatchError as e:
        raise BertcError(f"--strict: {e}") from None
    reports = [dataclasses.asdict(r) if dataclasses.is_dataclass(r) else dict(r)
               for r in result.reports]
    return dataclasses.replace(frozen, graph_def=result.graph_def,
                               constants=result.constants), reports
