"""Reading a constants-only SavedModel with its weights detached.

`SavedModel.ParseFromString` would hold the whole file in one protobuf arena
(BERT-Large: 1.3 GB) and every weight taken out of it would be a second copy.
This reader walks the protobuf wire format instead and parses one NodeDef at a
time, so a weight exists once, as a numpy array:

    SavedModel     meta_graphs[0]: MetaGraphDef       (field 2)
    MetaGraphDef   graph_def: GraphDef                (field 2)  other fields parsed whole
    GraphDef       node: NodeDef                      (field 1)  other fields parsed whole

Returns what `export.write_saved_model` wrote: the GraphDef with its large Consts
detached (see rewrites.graph), their values, and the `serving_default` signature.
"""

import io
import os
from typing import BinaryIO, Dict

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import meta_graph_pb2

import rewrites.constants
from bertc.errors import BertcError
from bertc.artifact.protowire import (GRAPH_DEF_NODE, LENGTH_DELIMITED, META_GRAPH_GRAPH_DEF,
                             SAVED_MODEL_META_GRAPHS, fields)


def read_detached(export_dir: str, min_bytes: int = rewrites.constants.DETACH_MIN_BYTES,
                  with_values: bool = True):
    """(GraphDef with large Consts detached, {node name: value}, serving_default
    SignatureDef) of the first MetaGraphDef of `export_dir`/saved_model.pb.
    with_values=False reads the structure only: the map stays empty and no
    weight is allocated (for inspection).

    Raises BertcError (one line, naming the file) for a missing, truncated or
    corrupt file."""
    path = os.path.join(export_dir, "saved_model.pb")
    try:
        with open(path, "rb") as f:
            f.seek(0, io.SEEK_END)
            end = f.tell()
            f.seek(0)
            for number, wire, length, _ in fields(f, end):
                if number == SAVED_MODEL_META_GRAPHS and wire == LENGTH_DELIMITED:
                    if f.tell() + length > end:
                        raise EOFError(f"a MetaGraphDef of {length} bytes at offset "
                                       f"{f.tell()} runs past the end ({end} bytes)")
                    graph_def, constants, signature = _read_meta_graph(
                        f, f.tell() + length, min_bytes, with_values)
                    break
                f.seek(length, io.SEEK_CUR)
            else:
                raise ValueError("no MetaGraphDef")
    except OSError as e:
        raise BertcError(f"{path}: cannot read ({e.strerror or e}); expected the "
                         "SavedModel of a bertc artifact") from None
    except (EOFError, ValueError, DecodeError) as e:
        raise BertcError(f"{path}: truncated or corrupt SavedModel ({str(e).splitlines()[0]}); "
                         "rebuild the artifact") from None
    if not signature.outputs:
        raise BertcError(f"{path}: no 'serving_default' signature; expected a SavedModel "
                         "written by bertc build")
    return graph_def, constants, signature


def _read_meta_graph(f: BinaryIO, end: int, min_bytes: int, with_values: bool):
    meta = meta_graph_pb2.MetaGraphDef()
    graph_def = tf.compat.v1.GraphDef()
    constants: Dict[str, np.ndarray] = {}
    rest = bytearray()  # every field but graph_def, re-parsed in one go
    for number, wire, length, tag in fields(f, end):
        if number == META_GRAPH_GRAPH_DEF and wire == LENGTH_DELIMITED:
            _read_graph_def(f, f.tell() + length, graph_def, constants, min_bytes,
                            with_values)
        else:
            rest += tag + (f.read(length) if wire == LENGTH_DELIMITED else b"")
    meta.ParseFromString(bytes(rest))
    return graph_def, constants, meta.signature_def["serving_default"]


def _read_graph_def(f: BinaryIO, end: int, graph_def, constants, min_bytes: int,
                    with_values: bool) -> None:
    rest = bytearray()
    for number, wire, length, tag in fields(f, end):
        if number == GRAPH_DEF_NODE and wire == LENGTH_DELIMITED:
            node = tf.compat.v1.NodeDef.FromString(f.read(length))
            if rewrites.constants.detachable(node, min_bytes):
                tensor = node.attr["value"].tensor
                if with_values:
                    constants[node.name] = rewrites.constants.tensor_value(tensor)
                tensor.CopyFrom(rewrites.constants.shape_only_tensor(tensor))
            graph_def.node.add().CopyFrom(node)
        else:
            rest += tag + (f.read(length) if wire == LENGTH_DELIMITED else b"")
    graph_def.MergeFromString(bytes(rest))
