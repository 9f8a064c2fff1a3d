"""Pass name -> pass class, and the canonical order of the pipeline.

The canonical order is the order a build should run passes in: clean the graph
up (strip, fold), fuse the big structures (attention, LayerNorm), then the
approximations (one GELU form), half precision last of the rewrites, then
public_layernorm, which writes the internal ops the others made in public ones,
and cpu_embeddings, which only reports the final graph's Neuron partition.
"""

from typing import Dict, List, Sequence, Type

from rewrites.base import RewritePass
from rewrites.cls_only_tail import ClsOnlyTail
from rewrites.cpu_embeddings import CpuEmbeddings
from rewrites.crude_gelu import CrudeGelu
from rewrites.fold_constants import FoldConstants
from rewrites.fused_attention import FusedAttention
from rewrites.fused_layernorm import FusedLayerNorm
from rewrites.mixed_precision import MixedPrecision
from rewrites.public_layernorm import PublicLayerNorm
from rewrites.remove_padding import RemovePadding
from rewrites.strip_unused import StripUnused
from rewrites.tanh_gelu import TanhGelu

#: Every pass, in canonical pipeline order.
CANONICAL_ORDER: List[Type[RewritePass]] = [
    StripUnused, FoldConstants, FusedAttention, FusedLayerNorm, CrudeGelu, TanhGelu,
    ClsOnlyTail, RemovePadding, MixedPrecision, PublicLayerNorm, CpuEmbeddings]

PASSES: Dict[str, Type[RewritePass]] = {cls.name: cls for cls in CANONICAL_ORDER}

#: Passes that rewrite the same sites: at most one of each group per pipeline.
EXCLUSIVE = (frozenset({"crude_gelu", "tanh_gelu"}),)


def names() -> List[str]:
    """Registered pass names in canonical order."""
    return [cls.name for cls in CANONICAL_ORDER]


def get(name: str) -> Type[RewritePass]:
    """The pass class called `name`; ValueError naming the known ones otherwise."""
    try:
        return PASSES[name]
    except KeyError:
        raise ValueError(f"unknown rewrite pass {name!r}; expected one of "
                         f"{', '.join(names())}") from None


def canonical_order(pass_names: Sequence[str]) -> List[str]:
    """`pass_names` de-duplicated and sorted into canonical order."""
    for name in pass_names:
        get(name)
    wanted = set(pass_names)
    return [n for n in names() if n in wanted]
