"""Writing a frozen GraphDef as a SavedModel with a `serving_default` signature.

The SavedModel is TF1-style (a MetaGraphDef holding the GraphDef, no variables):
plain TensorFlow loads it with `tf.saved_model.load`, TensorFlow Serving serves
it, and `tensorflow.neuron.saved_model.compile` takes it as `model_dir`.
Signature: inputs input_ids, input_mask, segment_ids int32 [B, S]; outputs by
name (sequence_output, pooled_output, logits, probabilities, embedding).
"""

import os

import tensorflow as tf

from bertc.freeze import FrozenGraph


def signature_def(graph, frozen: FrozenGraph):
    """The serving_default SignatureDef of an imported frozen graph."""
    build_info = tf.compat.v1.saved_model.utils.build_tensor_info
    inputs = {name: build_info(graph.get_tensor_by_name(f"{node}:0"))
              for name, node in frozen.inputs.items()}
    outputs = {name: build_info(graph.get_tensor_by_name(f"{node}:0"))
               for name, node in frozen.outputs.items()}
    return tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
        inputs=inputs, outputs=outputs,
        method_name=tf.compat.v1.saved_model.signature_constants.PREDICT_METHOD_NAME)


def write_saved_model(frozen: FrozenGraph, export_dir: str) -> None:
    """Writes `frozen` as a SavedModel at `export_dir` (which must not exist)."""
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(frozen.graph_def, name="")
        with tf.compat.v1.Session(graph=graph) as session:
            builder = tf.compat.v1.saved_model.Builder(export_dir)
            builder.add_meta_graph_and_variables(
                session, [tf.compat.v1.saved_model.tag_constants.SERVING],
                signature_def_map={"serving_default": signature_def(graph, frozen)},
                strip_default_attrs=True)
            builder.save()


def load_signature(export_dir: str):
    """The `serving_default` function of a SavedModel; call it with int32 tensors."""
    loaded = tf.saved_model.load(export_dir)
    fn = loaded.signatures["serving_default"]
    fn._bertc_keepalive = loaded  # the signature needs its owner alive
    return fn


def saved_model_size(export_dir: str) -> int:
    total = 0
    for root, _, files in os.walk(export_dir):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total
