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
from bertc.freeze import FrozenGraph

#: Passes that change shapes inside the graph: the Neuron compiler cannot take them.
CPU_ONLY_PASSES = ("remove_padding", "cls_only_tail")
#: The CPU target's default pipeline (exact passes only; see BUILD_NOTES.md).
CPU_DEFAULT: tuple = ()


def resolve(rewrites: Sequence[str] = (), crude_gelu: bool = False, dtype: str = "float32",
            aggressive: bool = False, target: str = "cpu", use_default: bool = True) -> List[str]:
    """The ordered, de-duplicated pass names a build asks for."""
    wanted = list(CPU_DEFAULT if (use_default and target == "cpu") else ())
    wanted += [r for r in rewrites if r]
    if crude_gelu or aggressive:
        wanted.append("crude_gelu")
    if dtype not in ("float32", "float16", "bfloat16"):
        raise BertcError(f"--dtype {dtype}: expected float32, float16 or bfloat16")
    if dtype != "float32":
        wanted.append("mixed_precision")
    if target == "neuron":
        wanted.append("cpu_embeddings")
    ordered = []
    for name in wanted:
        if name not in ordered:
            ordered.append(name)
    if target == "neuron":
        skipped = [n for n in ordered if n in CPU_ONLY_PASSES]
        for name in skipped:
            logging.warning("rewrite %s changes shapes inside the graph and is skipped on "
                            "--target neuron (use sequence buckets there)", name)
        ordered = [n for n in ordered if n not in CPU_ONLY_PASSES]
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


def is_exact(pass_names: Sequence[str]) -> bool:
    """True when every pass is exact (fp32 re-association only)."""
    if not pass_names:
        return True
    import rewrites
    return all(rewrites.describe(n)["exact"] for n in pass_names)


def apply(frozen: FrozenGraph, pass_names: Sequence[str], options: dict = None,
          strict: bool = False):
    """Runs the passes on `frozen`; returns (new FrozenGraph, list of report dicts)."""
    if not pass_names:
        return frozen, []
    import rewrites
    protected = list(frozen.inputs.values()) + list(frozen.outputs.values())
    try:
        result = rewrites.run(frozen.graph_def, list(pass_names), protected_nodes=protected,
                              strict=strict, options=options or {})
    except rewrites.NoMatchError as e:
        raise BertcError(f"--strict: {e}") from None
    reports = [dataclasses.asdict(r) if dataclasses.is_dataclass(r) else dict(r)
               for r in result.reports]
    return dataclasses.replace(frozen, graph_def=result.graph_def), reports
