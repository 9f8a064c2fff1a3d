"""Detached constants: a GraphDef's large Const values kept beside it, not in it.

A detached Const keeps its dtype and shape (a value-less TensorProto); its value
is an ndarray in a `{node name: value}` map that travels with the GraphDef.  A
detached pipeline holds each weight once, as the caller's own array, where a
GraphDef per pass would copy BERT-Large's 1.3 GB every time:

    light, values = detach_constants(graph_def)      # split (values copied once)
    full = attach_constants(light, values)           # join (a new GraphDef)
    attached_node(node, values)                      # one node with its value in it
    consts_as_placeholders(light, values)            # to feed the values to a Session

Values made here are TF_ALIGNMENT-aligned (TensorFlow feeds them without a copy).
"""

from typing import Dict, Iterable, Optional, Tuple

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2

GraphDef = tf.compat.v1.GraphDef
NodeDef = tf.compat.v1.NodeDef

#: Constants of at least this many bytes are detached (weights, not shapes or axes).
DETACH_MIN_BYTES = 1 << 16


def shape_only_proto(array: np.ndarray):
    """A TensorProto with the dtype and shape of `array` and no value."""
    proto = tensor_pb2.TensorProto(dtype=tf.as_dtype(array.dtype).as_datatype_enum)
    proto.tensor_shape.CopyFrom(tf.TensorShape(array.shape).as_proto())
    return proto


def shape_only_tensor(proto):
    """A TensorProto with the dtype and shape of `proto` and no value."""
    out = type(proto)(dtype=proto.dtype)
    out.tensor_shape.CopyFrom(proto.tensor_shape)
    return out


#: TensorFlow uses a fed array's memory in place only at this alignment (else copies).
TF_ALIGNMENT = 64


def tensor_value(proto) -> np.ndarray:
    """tf.make_ndarray, but a packed value lands in a TF_ALIGNMENT-aligned array,
    so feeding it to a Session or wrapping it in a tf.Tensor copies nothing."""
    if not proto.tensor_content:
        return tf.make_ndarray(proto)
    dtype = tf.as_dtype(proto.dtype).as_numpy_dtype
    shape = [d.size for d in proto.tensor_shape.dim]
    content = proto.tensor_content  # one transient bytes copy out of the protobuf
    out = aligned_empty(shape, dtype)
    out.reshape(-1).view(np.uint8)[:] = np.frombuffer(content, np.uint8)
    return out


def aligned_empty(shape, dtype) -> np.ndarray:
    """An uninitialised array whose data is TF_ALIGNMENT-aligned, in memory numpy
    owns (not TensorFlow's allocator, which keeps what it frees)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + TF_ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % TF_ALIGNMENT
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def without_nodes(graph_def: GraphDef) -> GraphDef:
    """A new GraphDef with the versions and function library of `graph_def`, no nodes."""
    out = GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    if graph_def.HasField("library"):
        out.library.CopyFrom(graph_def.library)
    return out


def detachable(node: NodeDef, min_bytes: int = DETACH_MIN_BYTES) -> bool:
    """True for a Const whose packed value has at least `min_bytes` bytes."""
    return node.op == "Const" and len(node.attr["value"].tensor.tensor_content) >= min_bytes


def detach_constants(graph_def: GraphDef, min_bytes: int = DETACH_MIN_BYTES
                     ) -> Tuple[GraphDef, Dict[str, np.ndarray]]:
    """(copy of `graph_def` with its large Consts detached, {name: value}).
    The input is not modified."""
    light = without_nodes(graph_def)
    values = {}
    for node in graph_def.node:
        copy = light.node.add()
        if detachable(node, min_bytes):
            values[node.name] = tensor_value(node.attr["value"].tensor)
            copy.name, copy.op = node.name, node.op
            copy.input.extend(node.input)
            for key in node.attr:
                if key != "value":
                    copy.attr[key].CopyFrom(node.attr[key])
            copy.attr["value"].tensor.CopyFrom(shape_only_tensor(node.attr["value"].tensor))
        else:
            copy.CopyFrom(node)
    return light, values


def attached_node(node: NodeDef, constants: Dict[str, np.ndarray]) -> NodeDef:
    """`node` itself, or for a detached Const a copy holding its value."""
    value = constants.get(node.name)
    if value is None or node.op != "Const":
        return node
    full = NodeDef()
    full.CopyFrom(node)
    tensor = full.attr["value"].tensor
    tensor.tensor_content = np.ascontiguousarray(value).tobytes()
    return full


def attach_constants(graph_def: GraphDef, constants: Dict[str, np.ndarray]) -> GraphDef:
    """A copy of a detached `graph_def` with every value in place again."""
    full = without_nodes(graph_def)
    for node in graph_def.node:
        full.node.add().CopyFrom(attached_node(node, constants))
    return full


def consts_as_placeholders(graph_def: GraphDef, names: Iterable[str],
                           nodes: Optional[Iterable[NodeDef]] = None) -> GraphDef:
    """A copy of `graph_def` (or of its versions and library with `nodes`) in which
    the Consts `names` are Placeholders of the same dtype and shape (to be fed
    their values, or for shape inference)."""
    names = set(names)
    light = without_nodes(graph_def)
    for node in graph_def.node if nodes is None else nodes:
        if node.name in names and node.op == "Const":
            proto = node.attr["value"].tensor
            stub = light.node.add(op="Placeholder", name=node.name)
            stub.attr["dtype"].type = proto.dtype
            stub.attr["shape"].shape.CopyFrom(proto.tensor_shape)
        else:
            light.node.add().CopyFrom(node)
    return light
