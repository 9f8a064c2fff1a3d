"""The bridge between bertc's build options and the `rewrites` pass pipeline.

`rewrites` knows GraphDefs and nothing of bertc; this module turns build flags
(`--crude_gelu`, `--dtype`, `--aggressive_optimizations`, `--rewrites=a,b`,
`--target`) into an ordered pass list, runs it on a FrozenGraph with the serving
boundary protected, checks the sites, and says whether the result is still exact
and which verify bounds apply.  Every rule reads the facts each pass class
declares (rewrites/base.py: phase, default/required/unsupported targets, expected
sites, verify bounds, lowering): nothing here names a pass but the two that
flags ask for (crude_gelu, mixed_precision).
"""

import dataclasses
import logging
from typing import List, Sequence

from bertc.errors import BertcError
from bertc.model.freeze import FrozenGraph

#: --dtype values that add mixed_precision (float32 needs no pass).
HALF_DTYPES = ("float16", "bfloat16")
#: Heads that read only the last layer's [CLS] rows (what cls_only_tail cuts to).
CLS_ONLY_HEADS = ("pooled", "classifier")


def pass_classes():
    """{name: pass class} in canonical order: the facts every rule below reads."""
    from rewrites import registry
    return {cls.name: cls for cls in registry.CANONICAL_ORDER}


def default_passes(target: str = "cpu") -> List[str]:
    """The passes a target's default pipeline runs (before the LATE and FINAL sort)."""
    return [n for n, cls in pass_classes().items() if target in cls.default_targets]


#: The CPU target's default pipeline, in canonical order: exact passes only
#: (see BUILD_NOTES.md, BENCHMARKS.md).
CPU_DEFAULT = tuple(default_passes("cpu"))
#: The CPU default's passes that keep every shape of the graph (EARLY ones).
EXACT_FUSIONS = tuple(n for n in CPU_DEFAULT if pass_classes()[n].phase == 0)


def internal_ops(graph_def) -> List[str]:
    """Op types of `graph_def` outside TensorFlow's public op set (names with a
    leading underscore, such as oneDNN's _MklLayerNorm), sorted."""
    return sorted({n.op for n in graph_def.node if n.op.startswith("_")})


def resolve(rewrites: Sequence[str] = (), crude_gelu: bool = False, dtype: str = "float32",
            aggressive: bool = False, target: str = "cpu", use_default: bool = True,
            allow_internal_ops: bool = False) -> List[str]:
    """The ordered, de-duplicated pass names a build asks for: the target's
    defaults, --rewrites, crude_gelu, mixed_precision for a half --dtype, the
    lowering of internal ops unless allowed, the target's required passes; then
    sorted by phase (EARLY in the order asked, LATE and FINAL in canonical order)
    and without the passes the target cannot take."""
    if dtype not in ("float32",) + HALF_DTYPES:
        raise BertcError(f"`dtype` {dtype}: expected float32, float16 or bfloat16")
    classes = pass_classes()
    wanted = default_passes(target) if use_default else []
    wanted += [r for r in rewrites if r]
    _check_known(wanted)
    if crude_gelu or aggressive:
        wanted.append("crude_gelu")
    if dtype in HALF_DTYPES and target not in classes["mixed_precision"].unsupported_targets:
        wanted.append("mixed_precision")
    elif "mixed_precision" in wanted:
        raise BertcError("`rewrites` mixed_precision: expected `dtype` float16 or bfloat16 "
                         "(the pass takes its precision from --dtype)")
    wanted += [n for n, cls in classes.items() if target in cls.required_targets]
    skipped = [n for n in wanted if target in classes[n].unsupported_targets]
    for name in dict.fromkeys(skipped):
        logging.warning("rewrite %s is skipped on --target %s: %s", name, target,
                        classes[name].unsupported_targets[target])
    wanted = [n for n in wanted if n not in skipped]
    if not allow_internal_ops:
        wanted += [classes[n].lowered_by for n in list(wanted) if classes[n].lowered_by]
    canonical = list(classes)
    ordered = list(dict.fromkeys(wanted))
    return sorted(ordered, key=lambda n: (classes[n].phase,
                                          ordered.index(n) if classes[n].phase == 0
                                          else canonical.index(n)))


def _check_known(pass_names: Sequence[str]) -> None:
    known = list(pass_classes())
    unknown = [n for n in pass_names if n not in known]
    if unknown:
        raise BertcError(f"`rewrites`: unknown pass(es) {', '.join(unknown)}; expected some of "
                         f"{', '.join(known)}")


def for_head(pass_names: Sequence[str], head: str, requested: Sequence[str] = ()) -> List[str]:
    """Drops default passes that cannot apply to `head` (a `cls_only` pass needs a
    pooled or classifier head), so the default pipeline warns of nothing; a pass
    the user asked for by name stays and warns if it matches nothing."""
    classes = pass_classes()
    return [n for n in pass_names if not (classes[n].cls_only and head not in CLS_ONLY_HEADS
                                          and n not in requested)]


def expected_sites(config, head: str = None) -> dict:
    """Site counts each pass must reach on a bertc-built graph of `config` (and
    `head`); a pass whose count depends on the head is checked only given one."""
    layers = config.num_hidden_layers
    expected = {}
    for name, cls in pass_classes().items():
        if cls.cls_only and head is None:
            continue
        count = cls.expected_sites(layers, head in CLS_ONLY_HEADS)
        if count is not None:
            expected[name] = count
    return expected


def check_sites(reports, config, head: str = None) -> None:
    """The pipeline invariant 'one site per layer' (ONNX Runtime checks the same)."""
    expected = expected_sites(config, head)
    for report in reports:
        want = expected.get(report["name"])
        if want is not None and report["sites"] != want:
            raise BertcError(f"rewrite {report['name']}: rewrote {report['sites']} sites; "
                             f"expected {want} for {config.num_hidden_layers} layers")


def thresholds(pass_names: Sequence[str], exact: dict) -> dict:
    """The verify thresholds of a build: `exact` unless an approximate pass loosens
    them (its verify_bounds; the loosest of the pipeline applies)."""
    if is_exact(pass_names):
        return dict(exact)
    classes = pass_classes()
    chosen = {"max_abs": None, "min_cos": 1.0, "argmax": 1.0}
    for name in pass_names:
        bounds = classes[name].verify_bounds
        if bounds:
            chosen["min_cos"] = min(chosen["min_cos"], bounds["min_cos"])
            chosen["argmax"] = min(chosen["argmax"], bounds["argmax"])
    return chosen


def pass_options(dtype: str = "float32", aggressive: bool = False, target: str = "cpu") -> dict:
    """The options a build hands to its passes (each pass takes the keys it knows)."""
    return {"dtype": dtype, "aggressive": aggressive, "target": target}


def is_exact(pass_names: Sequence[str]) -> bool:
    """True when every pass is exact (fp32 re-association only)."""
    classes = pass_classes()
    return all(classes[n].exact for n in pass_names)


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
        raise BertcError(f"`strict`: {e}") from None
    reports = [dataclasses.asdict(r) if dataclasses.is_dataclass(r) else dict(r)
               for r in result.reports]
    return dataclasses.replace(frozen, graph_def=result.graph_def,
                               constants=result.constants), reports
