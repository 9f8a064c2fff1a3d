"""Tracing the serving function into a frozen, constant-only GraphDef.

The model embeds its weights as Const nodes while tracing, so "freezing" is
taking the traced graph's GraphDef. The rewrite passes and the exporter work on
it: inputs are the Placeholders `input_ids`, `input_mask`, `segment_ids` (int32
[B, S]); each output is the node named after it (`sequence_output`,
`pooled_output`, `logits`, `probabilities`, `embedding`), with its dtype and
static shape recorded for the serving signature.
"""

import dataclasses
from typing import Dict, Tuple

import numpy as np
import tensorflow as tf

from bertc import modeling


@dataclasses.dataclass
class FrozenGraph:
    """A frozen serving graph and its boundary.

    Attributes:
      graph_def: tf.compat.v1.GraphDef with weights as Const nodes.
      inputs: input name -> node name (Placeholder, int32 [B, S]).
      outputs: output name -> node name.
      output_specs: output name -> (tf.DType, static shape list).
      batch_size, seq_len: the static input shape.
    """

    graph_def: tf.compat.v1.GraphDef
    inputs: Dict[str, str]
    outputs: Dict[str, str]
    output_specs: Dict[str, Tuple[tf.DType, list]]
    batch_size: int
    seq_len: int

    def tensor_names(self) -> Tuple[list, list]:
        return ([f"{n}:0" for n in self.inputs.values()],
                [f"{n}:0" for n in self.outputs.values()])


def trace(model: modeling.BertModel, head: str, batch_size: int, seq_len: int):
    """The concrete serving function of `model` for `head` at [batch_size, seq_len]."""
    return model.serving_function(head, batch_size, seq_len).get_concrete_function()


def fill_weights(graph_def, weights) -> None:
    """Writes each weight into its shape-only Const node (in place), one copy each."""
    filled = 0
    for node in graph_def.node:
        if node.op == "Const" and node.name.startswith(modeling.WEIGHT_SCOPE):
            value = np.ascontiguousarray(weights[node.name[len(modeling.WEIGHT_SCOPE):]],
                                         dtype=np.float32)
            tensor = node.attr["value"].tensor
            tensor.ClearField("float_val")
            tensor.tensor_content = value.tobytes()
            filled += 1
    if filled != len(weights):
        raise RuntimeError(f"traced graph holds {filled} of {len(weights)} weights")


def freeze(concrete_function, batch_size: int, seq_len: int, weights=None) -> FrozenGraph:
    """The GraphDef of a traced serving function, with its input/output boundary.

    Args:
      weights: Google name -> array for the model's shape-only weight nodes
        (BertModel.weights); None when the graph already holds its values.
    """
    graph = concrete_function.graph
    graph_def = graph.as_graph_def()
    if weights is not None:
        fill_weights(graph_def, weights)
    placeholders = {n.name for n in graph_def.node if n.op == "Placeholder"}
    inputs = {name: name for name in modeling.INPUT_NAMES if name in placeholders}
    outputs, specs = {}, {}
    for name in concrete_function.structured_outputs:
        tensor = graph.get_tensor_by_name(f"{name}:0")
        outputs[name] = name
        specs[name] = (tensor.dtype, tensor.shape.as_list())
    return FrozenGraph(graph_def=graph_def, inputs=inputs, outputs=outputs, output_specs=specs,
                       batch_size=batch_size, seq_len=seq_len)


def freeze_model(model: modeling.BertModel, head: str, batch_size: int,
                 seq_len: int) -> FrozenGraph:
    """trace + freeze in one call."""
    return freeze(trace(model, head, batch_size, seq_len), batch_size, seq_len, model.weights)


def graph_def_function(frozen: FrozenGraph):
    """A callable over a frozen GraphDef: f(input_ids, input_mask, segment_ids) -> tuple."""
    input_tensors, output_tensors = frozen.tensor_names()
    fn = tf.compat.v1.wrap_function(
        lambda: tf.compat.v1.import_graph_def(frozen.graph_def, name=""), [])
    return fn.prune([fn.graph.as_graph_element(t) for t in input_tensors],
                    [fn.graph.as_graph_element(t) for t in output_tensors])


def run_graph_def(frozen: FrozenGraph, feeds: dict) -> dict:
    """Runs a frozen GraphDef on numpy feeds; returns output name -> numpy array."""
    values = graph_def_function(frozen)(*[tf.constant(feeds[name], tf.int32)
                                          for name in frozen.inputs])
    return {name: v.numpy() for name, v in zip(frozen.outputs, values)}
