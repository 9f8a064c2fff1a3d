"""A pass's facts live on the pass: adding one is its class and one registry line.

A toy pass (it renames nothing and counts the MatMuls it sees) is registered the
way rewrites/registry.py registers every pass, with facts of its own; bertc's
pipeline rules (bertc/passes.py) then pick it up with no other edit: the CPU
default runs it in its phase, neuron skips it and says why, its site count is
checked per layer, its verify bound loosens the build's thresholds, and the
pipeline runs it.
"""

import logging

import pytest

import rewrites
import bertc_testing as bt
from bertc import passes
from bertc.errors import BertcError
from bertc.model.config import BertConfig
from bertc.verify import compare
from rewrites import registry
from rewrites.base import LATE, RewritePass


class CountMatMuls(RewritePass):
    """A toy: counts MatMuls, changes nothing."""

    name = "count_matmuls"
    exact = False  # pretend it approximates, to see its verify bound applied
    phase = LATE
    default_targets = ("cpu",)
    unsupported_targets = {"neuron": "the toy is not for Inferentia"}
    verify_bounds = {"min_cos": 0.95, "argmax": 0.9}

    @classmethod
    def expected_sites(cls, layers, cls_only_outputs):
        return 6 * layers  # Q, K, V, attention output, intermediate, output

    def rewrite(self, graph):
        return sum(node.op == "MatMul" for node in graph.nodes())


@pytest.fixture
def toy_registered(monkeypatch):
    """The one registry line: the class in CANONICAL_ORDER (and its name map)."""
    order = registry.CANONICAL_ORDER + [CountMatMuls]
    monkeypatch.setattr(registry, "CANONICAL_ORDER", order)
    monkeypatch.setattr(registry, "PASSES", {cls.name: cls for cls in order})


def test_the_cpu_default_runs_a_new_pass_in_its_phase(toy_registered):
    resolved = passes.resolve()
    assert "count_matmuls" in resolved
    # LATE: after the EARLY fusions, in canonical order among the LATE passes,
    # before the FINAL lowering
    assert resolved.index("count_matmuls") > resolved.index("fused_layernorm")
    assert resolved.index("count_matmuls") > resolved.index("remove_padding")
    assert resolved[-1] == "public_layernorm"
    assert "count_matmuls" not in passes.resolve(use_default=False)


def test_a_target_that_cannot_take_it_skips_it_and_says_why(toy_registered, caplog):
    with caplog.at_level(logging.WARNING):
        resolved = passes.resolve(["count_matmuls"], target="neuron")
    assert "count_matmuls" not in resolved
    assert "the toy is not for Inferentia" in caplog.text


def test_its_bound_and_site_count_apply(toy_registered):
    chosen = passes.resolve()
    assert not passes.is_exact(chosen)
    bounds = passes.thresholds(chosen, compare.EXACT)
    assert bounds["min_cos"] == 0.95 and bounds["argmax"] == 0.9
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64)
    assert passes.expected_sites(config)["count_matmuls"] == 12
    passes.check_sites([{"name": "count_matmuls", "sites": 12}], config)
    with pytest.raises(BertcError, match="count_matmuls: rewrote 11 sites; expected 12"):
        passes.check_sites([{"name": "count_matmuls", "sites": 11}], config)


def test_the_pipeline_runs_it(toy_registered):
    frozen = bt.tiny_frozen("pooled")
    result = rewrites.run(frozen.graph_def, ["count_matmuls"], bt.protected(frozen))
    assert result.reports[0].sites == sum(n.op == "MatMul" for n in frozen.graph_def.node) > 0
