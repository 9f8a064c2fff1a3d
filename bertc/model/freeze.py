"""Tracing the serving function into a frozen, constant-only GraphDef.

The model traces its weights as shape-only Const nodes (`weights/<Google name>`);
freezing takes the traced graph's GraphDef and either writes each weight into its
node, or, detached (what `bertc build` does), leaves the values in
`FrozenGraph.constants`, the model's own arrays, so no weight is copied: the
rewrite pipeline, the exporter and the runners take both forms (see
rewrites.constants). The graph's boundary: inputs are the Placeholders
`input_ids`, `input_mask`, `segment_ids` (int32 [B, S]); each output is the
node named after it (`sequence_output`, `pooled_output`, `logits`,
`probabilities`, `embedding`), with its dtype and static shape recorded for the
serving signature.
"""

import dataclasses
from typing import Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

import rewrites
from bertc.model import modeling


@dataclasses.dataclass
class FrozenGraph:
    """A frozen serving graph and its boundary.

    Attributes:
      graph_def: tf.compat.v1.GraphDef with weights as Const nodes (shape-only
        where detached).
      inputs: input name -> node name (Placeholder, int32 [B, S]).
      outputs: output name -> node name.
      output_specs: output name -> (tf.DType, static shape list).
      batch_size, seq_len: the static input shape.
      constants: node name -> value of the detached Consts; None when the
        GraphDef holds every value.
    """

    graph_def: tf.compat.v1.GraphDef
    inputs: Dict[str, str]
    outputs: Dict[str, str]
    output_specs: Dict[str, Tuple[tf.DType, list]]
    batch_size: int
    seq_len: int
    constants: Optional[Dict[str, np.ndarray]] = None

    def attached_graph_def(self):
        """The GraphDef with every value in it (a copy if detached)."""
        if self.constants is None:
            return self.graph_def
        return rewrites.attach_constants(self.graph_def, self.constants)

    def tensor_names(self) -> Tuple[list, list]:
        return ([f"{n}:0" for n in self.inputs.values()],
                [f"{n}:0" for n in self.outputs.values()])


def trace(model: modeling.BertModel, head: str, batch_size: int, seq_len: int):
    """The concrete serving function of `model` for `head` at [batch_size, seq_len]."""
    return model.serving_function(head, batch_size, seq_len).get_concrete_function()


def weight_constants(graph_def, weights) -> Dict[str, np.ndarray]:
    """Node name -> value of each shape-only weight Const (the arrays themselves
    when they are contiguous float32, as checkpoints give them)."""
    constants = {}
    for node in graph_def.node:
        if node.op == "Const" and node.name.startswith(modeling.WEIGHT_SCOPE):
            constants[node.name] = np.ascontiguousarray(
                weights[node.name[len(modeling.WEIGHT_SCOPE):]], dtype=np.float32)
    if len(constants) != len(weights):
        raise RuntimeError(f"traced graph holds {len(constants)} of {len(weights)} weights")
    return constants


def take_weights(graph_def, weights, detach: bool) -> Optional[Dict[str, np.ndarray]]:
    """Empties each shape-only weight Const (in place) and either writes its weight
    into it (one copy each; returns None) or, with `detach`, returns the weights
    as `{node name: value}` (no copy)."""
    constants = weight_constants(graph_def, weights)
    for node in graph_def.node:
        if node.name in constants:
            tensor = node.attr["value"].tensor
            tensor.ClearField("float_val")
            if not detach:
                tensor.tensor_content = constants[node.name].tobytes()
    return constants if detach else None


def freeze(concrete_function, batch_size: int, seq_len: int, weights=None,
           detach: bool = False) -> FrozenGraph:
    """The GraphDef of a traced serving function, with its input/output boundary.

    Args:
      weights: Google name -> array for the model's shape-only weight nodes
        (BertModel.weights); None when the graph already holds its values.
      detach: leave the weights out of the GraphDef, in `constants` (no copy).
    """
    graph = concrete_function.graph
    graph_def = graph.as_graph_def()
    constants = None if weights is None else take_weights(graph_def, weights, detach)
    placeholders = {n.name for n in graph_def.node if n.op == "Placeholder"}
    inputs = {name: name for name in modeling.INPUT_NAMES if name in placeholders}
    outputs, specs = {}, {}
    for name in concrete_function.structured_outputs:
        tensor = graph.get_tensor_by_name(f"{name}:0")
        outputs[name] = name
        specs[name] = (tensor.dtype, tensor.shape.as_list())
    return FrozenGraph(graph_def=graph_def, inputs=inputs, outputs=outputs, output_specs=specs,
                       batch_size=batch_size, seq_len=seq_len, constants=constants)


def freeze_model(model: modeling.BertModel, head: str, batch_size: int,
                 seq_len: int, detach: bool = False) -> FrozenGraph:
    """trace + freeze in one call."""
    return freeze(trace(model, head, batch_size, seq_len), batch_size, seq_len, model.weights,
                  detach)


def graph_def_function(frozen: FrozenGraph):
    """A callable over a frozen GraphDef: f(input_ids, input_mask, segment_ids) -> tuple."""
    input_tensors, output_tensors = frozen.tensor_names()
    fn = tf.compat.v1.wrap_function(
        lambda: tf.compat.v1.import_graph_def(frozen.attached_graph_def(), name=""), [])
    return fn.prune([fn.graph.as_graph_element(t) for t in input_tensors],
                    [fn.graph.as_graph_element(t) for t in output_tensors])


def run_graph_def(frozen: FrozenGraph, feeds: dict) -> dict:
    """Runs a frozen GraphDef on numpy feeds; returns output name -> numpy array."""
    values = graph_def_function(frozen)(*[tf.constant(feeds[name], tf.int32)
                                          for name in frozen.inputs])
    return {name: v.numpy() for name, v in zip(frozen.outputs, values)}
