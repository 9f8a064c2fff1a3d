"""Writing a frozen GraphDef as a SavedModel with a `serving_default` signature.

The SavedModel is TF1-style: one MetaGraphDef (tag `serve`) holding the GraphDef
with its weights as constants, no variables. Plain TensorFlow loads it with
`tf.saved_model.load`, TensorFlow Serving serves it, and
`tensorflow.neuron.saved_model.compile` takes it as `model_dir`.
Signature: inputs input_ids, input_mask, segment_ids int32 [B, S]; outputs by name
(sequence_output, pooled_output, logits, probabilities, embedding).

The file is assembled from its parts instead of through a Session and
SavedModelBuilder, which would import the graph and copy every weight twice more:
protobuf messages concatenate, so `saved_model.pb` is written as the serialized
SavedModel header followed by the GraphDef's own bytes, tagged as field
`meta_graphs[0].graph_def`, node by node; a detached graph's weights are put
into their nodes one at a time as they are written.
"""

import os

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow.python.framework import meta_graph, op_def_registry

from bertc.model.freeze import FrozenGraph
from bertc.artifact.protowire import (ATTR_VALUE_TENSOR, GRAPH_DEF_NODE, MAP_KEY, MAP_VALUE,
                             META_GRAPH_GRAPH_DEF, NODE_ATTR, SAVED_MODEL_META_GRAPHS,
                             TENSOR_CONTENT, field_header)


def strip_default_attrs(graph_def) -> None:
    """Drops attributes equal to their op's default (in place), so older TF loads the graph."""
    for node in graph_def.node:
        op_def = op_def_registry.get(node.op)
        if op_def is None:
            continue
        for attr_def in op_def.attr:
            if (attr_def.HasField("default_value") and attr_def.name in node.attr
                    and node.attr[attr_def.name] == attr_def.default_value):
                del node.attr[attr_def.name]


def signature_def(frozen: FrozenGraph) -> meta_graph_pb2.SignatureDef:
    """The serving_default SignatureDef from the FrozenGraph's boundary."""
    sig = meta_graph_pb2.SignatureDef(
        method_name=tf.compat.v1.saved_model.signature_constants.PREDICT_METHOD_NAME)
    for name, node in frozen.inputs.items():
        info = sig.inputs[name]
        info.name, info.dtype = f"{node}:0", tf.int32.as_datatype_enum
        info.tensor_shape.CopyFrom(
            tf.TensorShape([frozen.batch_size, frozen.seq_len]).as_proto())
    for name, node in frozen.outputs.items():
        dtype, shape = frozen.output_specs[name]
        info = sig.outputs[name]
        info.name, info.dtype = f"{node}:0", tf.as_dtype(dtype).as_datatype_enum
        info.tensor_shape.CopyFrom(tf.TensorShape(shape).as_proto())
    return sig


def write_saved_model(frozen: FrozenGraph, export_dir: str) -> None:
    """Writes `frozen` as a SavedModel at `export_dir` (created; must not exist)."""
    strip_default_attrs(frozen.graph_def)
    meta = meta_graph_pb2.MetaGraphDef()
    meta.meta_info_def.tags.append(tf.compat.v1.saved_model.tag_constants.SERVING)
    meta.meta_info_def.tensorflow_version = tf.__version__
    meta.meta_info_def.tensorflow_git_version = tf.version.GIT_VERSION
    meta.meta_info_def.stripped_default_attrs = True
    meta.meta_info_def.stripped_op_list.CopyFrom(
        meta_graph.stripped_op_list_for_graph(frozen.graph_def))
    meta.signature_def["serving_default"].CopyFrom(signature_def(frozen))
    graph_def = frozen.graph_def
    meta_bytes = meta.SerializeToString()
    constants = frozen.constants or {}
    graph_length = _graph_def_length(graph_def, constants)
    meta_length = (len(meta_bytes) + len(field_header(META_GRAPH_GRAPH_DEF, graph_length))
                   + graph_length)
    header = saved_model_pb2.SavedModel(saved_model_schema_version=1).SerializeToString()
    os.makedirs(export_dir)
    with open(os.path.join(export_dir, "saved_model.pb"), "wb") as f:
        f.write(header)
        f.write(field_header(SAVED_MODEL_META_GRAPHS, meta_length))
        f.write(meta_bytes)
        f.write(field_header(META_GRAPH_GRAPH_DEF, graph_length))
        _write_graph_def(f, graph_def, constants)


def _non_node_fields(graph_def):
    """A GraphDef with every field of `graph_def` but its nodes (versions, library)."""
    rest = type(graph_def)()
    for field, value in graph_def.ListFields():
        if field.name == "node":
            continue
        if field.message_type is not None:
            getattr(rest, field.name).CopyFrom(value)
        else:
            setattr(rest, field.name, value)
    return rest


def _node_chunks(node, constants) -> list:
    """The serialized NodeDef as byte chunks.  A detached Const is written as its
    shape-only node without the `value` attr, then that attr as one more map
    entry (protobuf merges repeated fields in any order) whose tensor ends in
    `tensor_content` = the array's own buffer, so its bytes are never copied:

        NodeDef    name op input ... attr{key: "value", value: AttrValue}
        AttrValue  tensor: TensorProto
        TensorProto dtype tensor_shape tensor_content
    """
    value = constants.get(node.name)
    if value is None or node.op != "Const":
        return [node.SerializeToString()]
    content = tensor_bytes_view(value)
    light = type(node)()
    light.CopyFrom(node)
    tensor_bytes = light.attr["value"].tensor.SerializeToString()
    del light.attr["value"]
    content_header = field_header(TENSOR_CONTENT, len(content))
    tensor_length = len(tensor_bytes) + len(content_header) + len(content)
    tensor_header = field_header(ATTR_VALUE_TENSOR, tensor_length)
    attr_length = len(tensor_header) + tensor_length
    key = field_header(MAP_KEY, len(b"value")) + b"value"
    value_header = field_header(MAP_VALUE, attr_length)
    entry_length = len(key) + len(value_header) + attr_length
    head = b"".join([light.SerializeToString(), field_header(NODE_ATTR, entry_length), key,
                     value_header, tensor_header, tensor_bytes, content_header])
    return [head, content]


def tensor_bytes_view(value: np.ndarray) -> memoryview:
    """The array's buffer as bytes, in TensorProto.tensor_content's layout (C order,
    little-endian), without a copy for contiguous arrays.  Viewing as uint8 first
    covers every dtype TensorFlow holds in numpy, including those the buffer
    protocol cannot name (ml_dtypes' bfloat16 'E', TF's quantized structured
    dtypes such as qint8 [('qint8', 'i1')])."""
    array = np.ascontiguousarray(value).reshape(-1)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return memoryview(array.view(np.uint8))


def _graph_def_length(graph_def, constants) -> int:
    """Serialized size of a GraphDef with its detached `constants` attached, node
    by node (GraphDef.ByteSize() would serialize the whole graph into a temporary
    buffer as large as the weights)."""
    total = _non_node_fields(graph_def).ByteSize()
    for node in graph_def.node:
        size = sum(len(c) for c in _node_chunks(node, constants))
        total += len(field_header(GRAPH_DEF_NODE, size)) + size
    return total


def _write_graph_def(f, graph_def, constants) -> None:
    """Serializes a GraphDef field by field, so no whole-graph byte copy exists."""
    rest = _non_node_fields(graph_def)
    for node in graph_def.node:
        chunks = _node_chunks(node, constants)
        f.write(field_header(GRAPH_DEF_NODE, sum(len(c) for c in chunks)))
        for chunk in chunks:
            f.write(chunk)
    f.write(rest.SerializeToString())


def load_signature(export_dir: str):
    """The `serving_default` function of a SavedModel; call it with int32 tensors."""
    loaded = tf.saved_model.load(export_dir)
    fn = loaded.signatures["serving_default"]
    fn._bertc_keepalive = loaded  # the signature needs its owner alive
    return fn
