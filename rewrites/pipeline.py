"""Runs passes in order, validating the graph before the first and after each.

    result = rewrites.run(graph_def, ["strip_unused", "fused_attention"],
                          protected_nodes=["input_ids", ..., "sequence_output"])
    result.graph_def, result.reports  # [PassReport(name, sites, seconds, warning)]

A requested pass that matches nothing is worth a warning (logged and put in its
report): the graph is not what the pass expects.  With `strict=True` it is an
error (`NoMatchError`).
"""

import dataclasses
import logging
import time
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

from rewrites import registry
from rewrites.graph import GraphDef, GraphValidationError, validate

logger = logging.getLogger(__name__)


class NoMatchError(ValueError):
    """A pass requested under strict=True matched nothing."""


@dataclasses.dataclass
class PassReport:
    """What one pass did: `sites` rewritten in `seconds`; `warning` if none."""

    name: str
    sites: int
    seconds: float
    warning: Optional[str] = None
    details: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class PipelineResult:
    graph_def: GraphDef
    reports: List[PassReport]
    constants: Optional[Dict[str, np.ndarray]] = None  # the detached values, if detached


def run(graph_def: GraphDef, pass_names: Sequence[str], protected_nodes: Iterable[str] = (),
        strict: bool = False, options: Optional[Mapping] = None,
        consume: bool = False, constants: Optional[Dict[str, np.ndarray]] = None
        ) -> PipelineResult:
    """Runs `pass_names` in the given order on a copy of `graph_def`.

    Args:
      graph_def: the frozen graph (not modified, unless `consume`).
      pass_names: registry names; see `rewrites.available_passes()`.
      protected_nodes: node names no pass may remove or replace (the serving
        boundary: inputs and outputs).
      strict: raise NoMatchError when a pass matches nothing.
      options: build options; each pass takes the keys in its `option_names`.
      consume: the caller hands `graph_def` over and will not use it again, so the
        first pass edits it in place instead of copying it (one weight-sized copy
        less; BERT-Large's weights are 1.3 GB).
      constants: the values of `graph_def`'s detached Consts (rewrites.graph):
        the pipeline then works detached, each weight held once, and returns
        the values of its result in `constants`.  Handed over with `consume`.
    Raises:
      ValueError: an unknown pass, exclusive passes together, a protected node
        missing from the graph.
      GraphValidationError: the input, or the output of a pass, is malformed.
      NoMatchError: under strict, a pass matched nothing.
    """
    pass_names = list(pass_names)
    classes = [registry.get(name) for name in pass_names]
    for group in registry.EXCLUSIVE:
        both = [n for n in pass_names if n in group]
        if len(set(both)) > 1:
            raise ValueError(f"rewrite passes {' and '.join(sorted(set(both)))} rewrite the "
                             "same sites; request at most one of them")
    protected = list(dict.fromkeys(protected_nodes))
    present = {n.name for n in graph_def.node}
    missing = [n for n in protected if n not in present]
    if missing:
        raise ValueError(f"protected node {missing[0]!r} is not in the graph")
    try:
        validate(graph_def)
    except GraphValidationError as e:
        raise GraphValidationError(f"input graph: {e}") from None
    options = dict(options or {})
    reports = []
    for index, (name, cls) in enumerate(zip(pass_names, classes)):
        rewrite = cls(**{k: v for k, v in options.items() if k in cls.option_names})
        start = time.perf_counter()
        # The caller's graph is copied by the first pass; later passes take over the
        # previous pass's output, which nothing else holds.
        owned = consume or index > 0
        if constants is None:
            graph_def, sites = rewrite.apply(graph_def, protected, owned=owned)
        else:
            graph_def, constants, sites = rewrite.apply_detached(graph_def, constants, protected,
                                                                 owned=owned)
        seconds = time.perf_counter() - start
        try:
            validate(graph_def)
        except GraphValidationError as e:
            raise GraphValidationError(f"after pass {name}: {e}") from None
        present = {n.name for n in graph_def.node}
        lost = [n for n in protected if n not in present]
        if lost:
            raise GraphValidationError(f"after pass {name}: protected node {lost[0]!r} is gone")
        warning = None
        if sites == 0:
            warning = f"rewrite pass {name} matched nothing"
            if strict:
                raise NoMatchError(f"{warning} (strict)")
            logger.warning("%s", warning)
        reports.append(PassReport(name=name, sites=sites, seconds=round(seconds, 4),
                                  warning=warning, details=dict(rewrite.details)))
    return PipelineResult(graph_def=graph_def, reports=reports, constants=constants)
