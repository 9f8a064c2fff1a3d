"""Tests of the rewrite framework: graph view, validation, patterns, pipeline."""

import logging

import numpy as np
import pytest
import tensorflow as tf

import rewrites
from rewrites import base, graph as graph_lib, pattern as P, pipeline, registry
from rewrites.graph import Graph, GraphValidationError, parse_input, validate


def _const(gd, name, value, dtype=tf.float32):
    node = gd.node.add(op="Const", name=name)
    proto = tf.make_tensor_proto(np.asarray(value), dtype=dtype)
    node.attr["dtype"].type = proto.dtype
    node.attr["value"].tensor.CopyFrom(proto)
    return node


def _op(gd, op, name, inputs, dtype=tf.float32):
    node = gd.node.add(op=op, name=name)
    node.input.extend(inputs)
    node.attr["T"].type = dtype.as_datatype_enum
    return node


def _small_graph():
    """x (Placeholder) * Identity(Identity(c)) + 0.5 -> out; plus a dead Const."""
    gd = tf.compat.v1.GraphDef()
    x = gd.node.add(op="Placeholder", name="x")
    x.attr["dtype"].type = tf.float32.as_datatype_enum
    x.attr["shape"].shape.CopyFrom(tf.TensorShape([2, 3]).as_proto())
    _const(gd, "c", np.full([3], 2.0, np.float32))
    _op(gd, "Identity", "c/read", ["c"])
    _op(gd, "Identity", "c/read2", ["c/read"])
    _op(gd, "Mul", "mul", ["x", "c/read2"])
    _const(gd, "half", 0.5)
    _op(gd, "AddV2", "out", ["mul", "half"])
    _const(gd, "dead", 1.0)
    return gd


def test_parse_input_ports_and_control():
    assert parse_input("a") == ("a", 0, False)
    assert parse_input("a/b:1") == ("a/b", 1, False)
    assert parse_input("^a/b") == ("a/b", -1, True)
    assert graph_lib.canonical("a:0") == "a"


def test_validate_reports_duplicates_dangling_inputs_and_cycles():
    validate(_small_graph())
    duplicate = _small_graph()
    _const(duplicate, "c", 1.0)
    with pytest.raises(GraphValidationError, match="duplicate node names: c"):
        validate(duplicate)
    dangling = _small_graph()
    _op(dangling, "Neg", "neg", ["missing:1"])
    with pytest.raises(GraphValidationError, match="'neg'.*'missing:1'"):
        validate(dangling)
    cyclic = _small_graph()
    _op(cyclic, "Neg", "a", ["b"])
    _op(cyclic, "Neg", "b", ["^a"])
    with pytest.raises(GraphValidationError, match="cycle"):
        validate(cyclic)


def test_graph_consumers_consts_shapes_and_edits():
    gd = _small_graph()
    g = Graph(gd, protected=["out"])
    assert g.consumers("c/read2") == [("mul", 1)]
    assert g.resolve_identity("c/read2") == "c"
    np.testing.assert_array_equal(g.const_value("c/read2"), [2.0, 2.0, 2.0])
    assert g.const_value("mul") is None
    assert g.shape("x") == (2, 3) and g.shape("out") == (2, 3)
    assert g.dtype("out") == tf.float32
    g.set_const("half", np.float32(0.25))
    assert float(g.const_value("half")) == 0.25
    new = g.add_const("half", np.float32(1.0))
    assert new == "half_1"
    assert g.replace_uses({"half": new}) == 1
    assert g.remove_unused(["half", "dead", "out"]) == ["dead", "half"]
    out = g.to_graph_def()
    validate(out)
    assert [n.name for n in gd.node][-1] == "dead"  # the input graph is untouched


def test_graph_outputs_and_one_port_convention():
    gd = _small_graph()
    axis = _const(gd, "axis", np.int32(1), tf.int32)
    split = _op(gd, "Split", "split", [axis.name, "x"])
    split.attr["num_split"].i = 3
    pair = _op(gd, "IdentityN", "pair", ["x", "mul"])
    pair.attr["T"].list.type.extend([tf.float32.as_datatype_enum] * 2)
    _op(gd, "AddV2", "sum", ["split", "split:2"])
    _op(gd, "MyCustomOp", "custom", ["x"])
    _op(gd, "Mul", "uses_custom", ["custom:4", "pair:1"])
    _op(gd, "NoOp", "after", ["^split"])
    g = Graph(gd)
    assert g.num_outputs("split") == 3 and g.num_outputs(g.node("pair")) == 2
    assert g.num_outputs("mul") == 1 and g.num_outputs("custom") == 5  # unknown op: ports read
    assert g.output_tensors("split") == ["split", "split:1", "split:2"]
    assert g.consumers("split") == g.consumers("split:0") == [("sum", 0)]
    assert g.consumers("split:2") == [("sum", 1)] and g.consumers("split:1") == []
    assert g.consumer_names("split") == {"sum", "after"}
    assert g.consumer_names("pair") == {"uses_custom"}


def test_pattern_alternatives_wildcards_bindings_and_commutativity():
    g = Graph(_small_graph())
    pattern = P.OpTypePattern("Add|AddV2", name="root", inputs=[
        P.ConstPattern(0.5, tol=1e-6, name="half"),
        P.OpTypePattern("Mul", inputs=[P.OpTypePattern("*", name="x"),
                                       P.ConstPattern(2.0, name="scale")])])
    match = P.Matcher(pattern).match(g, "out")
    assert match is not None  # AddV2's inputs tried both ways, Mul's too
    assert match.tensor("x") == "x" and match.tensor("scale") == "c"  # Identities seen through
    assert {"c/read", "c/read2", "c", "half"} <= match.nodes and "x" not in match.nodes
    assert match.interior() == {"mul", "c/read", "c/read2"} - match.consts
    near_miss = P.OpTypePattern("AddV2", inputs=[P.ConstPattern(0.6, tol=1e-4), "*"])
    assert P.Matcher(near_miss).match(g, "out") is None
    same_twice = P.OpTypePattern("Mul", inputs=[P.OpTypePattern("*", name="v"),
                                                P.OpTypePattern("*", name="v")])
    assert P.Matcher(same_twice).match(g, "mul") is None
    no_see_through = P.Matcher(pattern, see_through=())
    assert no_see_through.match(g, "out") is None  # the 2.0 is behind Identity nodes
    strict_order = P.OpTypePattern("AddV2", commutative=False, inputs=[P.ConstPattern(), "*"])
    assert P.Matcher(strict_order).match(g, "out") is None


def test_products_covers_every_association():
    gd = tf.compat.v1.GraphDef()
    for name in ("a", "b", "c"):
        p = gd.node.add(op="Placeholder", name=name)
        p.attr["dtype"].type = tf.float32.as_datatype_enum
    _op(gd, "Mul", "ab", ["a", "b"])
    _op(gd, "Mul", "abc", ["c", "ab"])
    g = Graph(gd)
    factors = [P.OpTypePattern("Placeholder", name=n, predicate=lambda node, _, n=n: node.name == n)
               for n in ("b", "c", "a")]
    assert P.Matcher(P.products(factors, name="root")).match(g, "abc") is not None


def test_rewrite_pass_is_pure(caplog):
    gd = _small_graph()
    before = gd.SerializeToString(deterministic=True)
    out, sites = registry.get("strip_unused")().apply(gd, protected_nodes=["out"])
    assert sites > 0 and gd.SerializeToString(deterministic=True) == before
    assert "dead" not in {n.name for n in out.node}


def test_public_api_lists_and_describes_passes():
    names = rewrites.available_passes()
    assert names == ["strip_unused", "fold_constants", "fused_attention", "fused_layernorm",
                     "crude_gelu", "tanh_gelu", "cls_only_tail", "remove_padding",
                     "mixed_precision", "public_layernorm", "cpu_embeddings"]
    for name in names:
        info = rewrites.describe(name)
        assert info["name"] == name and isinstance(info["exact"], bool) and info["bound"]
    assert rewrites.describe("crude_gelu")["exact"] is False
    assert rewrites.describe("fused_attention")["exact"] is True
    assert registry.canonical_order(["tanh_gelu", "strip_unused", "tanh_gelu"]) == [
        "strip_unused", "tanh_gelu"]


def test_pipeline_unknown_pass_lists_known_names():
    with pytest.raises(ValueError, match="unknown rewrite pass 'fuse_everything'.*strip_unused"):
        rewrites.run(_small_graph(), ["fuse_everything"])


def test_pipeline_rejects_exclusive_passes_and_missing_protected_nodes():
    with pytest.raises(ValueError, match="crude_gelu and tanh_gelu"):
        rewrites.run(_small_graph(), ["crude_gelu", "tanh_gelu"])
    with pytest.raises(ValueError, match="protected node 'nope'"):
        rewrites.run(_small_graph(), ["strip_unused"], protected_nodes=["nope"])


def test_pipeline_warns_when_a_pass_matches_nothing(caplog):
    with caplog.at_level(logging.WARNING, logger="rewrites"):
        result = rewrites.run(_small_graph(), ["strip_unused", "crude_gelu"],
                              protected_nodes=["x", "out"])
    strip, gelu = result.reports
    assert strip.name == "strip_unused" and strip.sites >= 1 and strip.warning is None
    assert gelu.sites == 0 and gelu.warning == "rewrite pass crude_gelu matched nothing"
    assert "crude_gelu matched nothing" in caplog.text
    assert strip.seconds >= 0.0


def test_pipeline_strict_raises_one_line_no_match_error():
    with pytest.raises(rewrites.NoMatchError) as info:
        rewrites.run(_small_graph(), ["fused_attention"], strict=True)
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value) and "fused_attention" in str(info.value)


def test_pipeline_validates_after_each_pass(monkeypatch):
    class Breaks(base.RewritePass):
        name = "breaks"

        def rewrite(self, graph):
            graph.add_node("Neg", "broken", ["no_such_node"], {"T": tf.float32})
            return 1

    monkeypatch.setitem(registry.PASSES, "breaks", Breaks)
    with pytest.raises(GraphValidationError, match="after pass breaks: .*no_such_node"):
        rewrites.run(_small_graph(), ["strip_unused", "breaks"], protected_nodes=["out"])

    class DropsOutput(base.RewritePass):
        name = "drops_output"

        def rewrite(self, graph):
            graph.remove(["out"])
            return 1

    monkeypatch.setitem(registry.PASSES, "drops_output", DropsOutput)
    with pytest.raises(GraphValidationError, match="protected node 'out' is gone"):
        rewrites.run(_small_graph(), ["drops_output"], protected_nodes=["out"])


def test_pipeline_validates_its_input():
    gd = _small_graph()
    _op(gd, "Neg", "neg", ["ghost"])
    with pytest.raises(GraphValidationError, match="input graph"):
        rewrites.run(gd, ["strip_unused"])


def test_pipeline_passes_known_options_only():
    result = rewrites.run(_small_graph(), ["strip_unused"], protected_nodes=["out"],
                          options={"dtype": "float32", "aggressive": False})
    assert result.reports[0].sites > 0
    assert isinstance(result, pipeline.PipelineResult)


class _AddsThenGivesUp(base.FusionPass):
    """Matches Mul(x, c); adds two Consts and a node, then fuses only if `fuses`."""

    name = "adds_then_gives_up"
    pattern = P.OpTypePattern("Mul", name="mul", inputs=[P.OpTypePattern("*"), P.ConstPattern()])
    root_ops = ("Mul",)
    fuses = False

    def fuse(self, graph, match, edit):
        first = edit.add_const("k", np.float32(3.0))
        second = edit.add_const("k", np.float32(4.0))
        self.names = (first, second)
        assert "k" not in graph and "k_1" not in graph  # buffered, not yet added
        edit.add_node("Mul", "mul", [match.tensor("mul"), second], {"T": tf.float32})
        return self.fuses


def test_a_fuse_that_gives_up_leaves_the_graph_byte_identical():
    gd = _small_graph()
    untouched = Graph(gd).to_graph_def().SerializeToString(deterministic=True)
    rewritten, sites = _AddsThenGivesUp().apply(gd)
    assert sites == 0
    assert rewritten.SerializeToString(deterministic=True) == untouched


def test_edit_reserves_names_and_adds_them_at_apply():
    fusion = _AddsThenGivesUp()
    fusion.fuses = True
    rewritten, sites = fusion.apply(_small_graph())
    assert sites == 1 and fusion.names == ("k", "k_1")
    nodes = {n.name: n for n in rewritten.node}
    assert nodes["mul_1"].input == ["mul", "k_1"] and nodes["k"].op == "Const"
