"""Tracing the serving function and freezing it into a constant-only GraphDef.

The rewrite passes and the exporter work on this GraphDef: inputs are the
Placeholders `input_ids`, `input_mask`, `segment_ids` (int32 [B, S]); each output
is the node named after it (`sequence_output`, `pooled_output`, `logits`,
`probabilities`, `embedding`); every weight is a Const.
"""

import dataclasses
from typing import Tuple

import tensorflow as tf
from tensorflow.python.framework import convert_to_constants

from bertc import modeling


@dataclasses.dataclass
class FrozenGraph:
    """A frozen serving graph and its boundary.

    Attributes:
      graph_def: tf.compat.v1.GraphDef with weights as Const nodes.
      inputs: input name -> node name (Placeholder).
      outputs: output name -> node name.
      batch_size, seq_len: the static input shape.
    """

    graph_def: tf.compat.v1.GraphDef
    inputs: dict
    outputs: dict
    batch_size: int
    seq_len: int

    def tensor_names(self) -> Tuple[list, list]:
        return ([f"{n}:0" for n in self.inputs.values()],
                [f"{n}:0" for n in self.outputs.values()])


def trace(model: modeling.BertModel, head: str, batch_size: int, seq_len: int):
    """The concrete serving function of `model` for `head` at [batch_size, seq_len]."""
    return model.serving_function(head, batch_size, seq_len).get_concrete_function()


def freeze(concrete_function, batch_size: int, seq_len: int) -> FrozenGraph:
    """Inlines variables as constants and returns the function's GraphDef."""
    frozen = convert_to_constants.convert_variables_to_constants_v2(concrete_function)
    graph_def = frozen.graph.as_graph_def()
    placeholders = {n.name for n in graph_def.node if n.op == "Placeholder"}
    inputs = {name: name for name in modeling.INPUT_NAMES if name in placeholders}
    node_names = {n.name for n in graph_def.node}
    outputs = {}
    for name in concrete_function.structured_outputs:
        if name not in node_names:
            raise RuntimeError(f"frozen graph lost its output node {name!r}")
        outputs[name] = name
    return FrozenGraph(graph_def=graph_def, inputs=inputs, outputs=outputs,
                       batch_size=batch_size, seq_len=seq_len)


def freeze_model(model: modeling.BertModel, head: str, batch_size: int,
                 seq_len: int) -> FrozenGraph:
    """trace + freeze in one call."""
    return freeze(trace(model, head, batch_size, seq_len), batch_size, seq_len)


def run_graph_def(frozen: FrozenGraph, feeds: dict) -> dict:
    """Runs a frozen GraphDef on numpy feeds; returns output name -> numpy array."""
    input_tensors, output_tensors = frozen.tensor_names()
    fn = tf.compat.v1.wrap_function(
        lambda: tf.compat.v1.import_graph_def(frozen.graph_def, name=""), [])
    pruned = fn.prune([fn.graph.as_graph_element(t) for t in input_tensors],
                      [fn.graph.as_graph_element(t) for t in output_tensors])
    values = pruned(*[tf.constant(feeds[name], tf.int32) for name in frozen.inputs])
    return {name: v.numpy() for name, v in zip(frozen.outputs, values)}
