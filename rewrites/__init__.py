"""Graph rewrites for frozen BERT GraphDefs.

Knows GraphDefs and nothing of bertc: passes match op types, shapes and constant
values, never node names, so they work on BERT graphs built by other code.

    import rewrites
    rewrites.available_passes()        # ['strip_unused', 'fold_constants', ...]
    rewrites.describe("crude_gelu")    # {'name':..., 'exact': False, 'bound': ...}
    result = rewrites.run(graph_def, ["strip_unused", "fused_attention"],
                          protected_nodes=[...], strict=False)

    light, values = rewrites.detach_constants(graph_def)   # weights held once
    result = rewrites.run(light, passes, constants=values, consume=True)
    rewrites.attach_constants(result.graph_def, result.constants)
"""

from typing import List

from rewrites import registry
from rewrites.constants import attach_constants, detach_constants
from rewrites.graph import GraphValidationError, validate
from rewrites.pipeline import NoMatchError, PassReport, PipelineResult, run

__all__ = ["run", "available_passes", "describe", "validate", "NoMatchError",
           "GraphValidationError", "PassReport", "PipelineResult", "detach_constants",
           "attach_constants"]


def available_passes() -> List[str]:
    """Pass names in canonical pipeline order."""
    return registry.names()


def describe(name: str) -> dict:
    """{'name', 'exact', 'bound', 'summary'} of one pass; ValueError if unknown."""
    cls = registry.get(name)
    summary = (cls.__doc__ or "").strip().splitlines()
    return {"name": cls.name, "exact": cls.exact, "bound": cls.max_abs_error,
            "summary": summary[0] if summary else ""}
