"""Google BERT, reimplemented in TensorFlow for static-shape, Neuron-friendly graphs.

Semantics are google-research/bert's `modeling.py`: exact erf GELU, LayerNorm with
eps 1e-12, an additive attention mask -10000 * (1 - mask), the pooler a tanh
dense layer on the [CLS] row. Every dimension comes from the BertConfig (nothing
is hard-coded: not the layer count, not the 1/sqrt(head size) query scale).
The encoder stays 2-D ([B*S, D]) between layers, so every dense layer is one
MatMul + BiasAdd: the form that graph rewrites, Grappler's remapper and the
Neuron compiler all expect. No Keras: free functions and one `tf.Module`.

Shape legend:
  B  batch size               S  sequence length        T  B * S tokens
  N  attention heads          H  head size (D / N)      D  hidden size
  I  intermediate size        L  classifier labels      V  vocabulary size
"""

import math
from typing import Dict, Mapping

import tensorflow as tf

from bertc.model import names
from bertc.errors import BertcError

LAYER_NORM_EPSILON = 1e-12
MASK_ADDER = -10000.0

HEAD_OUTPUTS = {
    "sequence": ("sequence_output",),
    "pooled": ("pooled_output",),
    "classifier": ("logits", "probabilities"),
    "embedding": ("embedding",),
    "span": ("start_logits", "end_logits"),
}
#: Other spellings of a head (run_squad's name for the span head).
HEAD_ALIASES = {"squad": "span"}
INPUT_NAMES = ("input_ids", "input_mask", "segment_ids")


def dense(x, kernel, bias):
    """x @ kernel + bias as MatMul + BiasAdd.  x: [T, in] -> [T, out]."""
    return tf.nn.bias_add(tf.matmul(x, kernel), bias)


def gelu(x):
    """Exact GELU: x * Phi(x) = x * 0.5 * (1 + erf(x / sqrt(2)))."""
    cdf = 0.5 * (1.0 + tf.math.erf(x / math.sqrt(2.0)))
    return x * cdf


def layer_norm(x, gamma, beta, epsilon=LAYER_NORM_EPSILON):
    """(x - mean) / sqrt(var + eps) * gamma + beta over the last axis.  x: [T, D]."""
    mean = tf.reduce_mean(x, axis=-1, keepdims=True)                       # [T, 1]
    variance = tf.reduce_mean(tf.math.squared_difference(x, mean),
                              axis=-1, keepdims=True)                      # [T, 1]
    return (x - mean) * tf.math.rsqrt(variance + epsilon) * gamma + beta   # [T, D]


def embeddings(w: Mapping, config, input_ids, segment_ids):
    """Word + token-type + position embeddings, then LayerNorm.

    Token types are a one-hot matmul and positions a slice, as Google's
    `embedding_postprocessor` does.
    Args:
      input_ids, segment_ids: int32 [B, S].
    Returns:
      [T, D] float32.
    """
    batch, seq = input_ids.shape
    if seq > config.max_position_embeddings:
        raise BertcError(f"`seq_len` {seq} exceeds max_position_embeddings "
                         f"{config.max_position_embeddings} of bert_config.json")
    ids = tf.reshape(input_ids, [-1])                                      # [T]
    word = tf.gather(w[names.WORD_EMBEDDINGS], ids)                        # [T, D]
    one_hot = tf.one_hot(tf.reshape(segment_ids, [-1]),
                         depth=config.type_vocab_size)                     # [T, 2]
    token_type = tf.matmul(one_hot, w[names.TOKEN_TYPE_EMBEDDINGS])        # [T, D]
    position = tf.slice(w[names.POSITION_EMBEDDINGS], [0, 0], [seq, -1])  # [S, D]
    summed = tf.reshape(word + token_type, [batch, seq, config.hidden_size])
    summed = summed + position                                             # [B, S, D]
    summed = tf.reshape(summed, [batch * seq, config.hidden_size])         # [T, D]
    return layer_norm(summed, w[names.EMBEDDINGS_LN_GAMMA], w[names.EMBEDDINGS_LN_BETA])


def attention_mask_bias(input_mask):
    """Additive attention bias: 0 where mask is 1, -10000 where it is 0.

    Args:
      input_mask: int32 [B, S].
    Returns:
      [B, 1, 1, S] float32, broadcast over heads and query positions.
    """
    batch, seq = input_mask.shape
    mask = tf.cast(tf.reshape(input_mask, [batch, 1, 1, seq]), tf.float32)  # [B, 1, 1, S]
    return (1.0 - mask) * MASK_ADDER


def attention(w: Mapping, layer: int, config, x, mask_bias, batch, seq):
    """Multi-head self-attention of one layer, before its output projection.

    Args:
      x: [T, D] layer input.  mask_bias: [B, 1, 1, S].
    Returns:
      [T, D] context (heads concatenated).
    """
    n, h = config.num_attention_heads, config.head_size

    def project(kind):                                                     # -> [B, N, S, H]
        t = dense(x, w[names.layer(layer, f"attention/self/{kind}/kernel")],
                  w[names.layer(layer, f"attention/self/{kind}/bias")])   # [T, D]
        t = tf.reshape(t, [batch, seq, n, h])                              # [B, S, N, H]
        return tf.transpose(t, [0, 2, 1, 3])                               # [B, N, S, H]

    query, key, value = project("query"), project("key"), project("value")
    scores = tf.matmul(query, key, transpose_b=True)                       # [B, N, S, S]
    scores = scores * (1.0 / math.sqrt(float(h)))
    scores = scores + mask_bias                                            # [B, N, S, S]
    probs = tf.nn.softmax(scores)                                          # [B, N, S, S]
    context = tf.matmul(probs, value)                                      # [B, N, S, H]
    context = tf.transpose(context, [0, 2, 1, 3])                          # [B, S, N, H]
    return tf.reshape(context, [batch * seq, n * h])                       # [T, D]


def transformer_layer(w: Mapping, layer: int, config, x, mask_bias, batch, seq):
    """One encoder layer: attention, add & norm, GELU feed-forward, add & norm.

    Args:
      x: [T, D].  mask_bias: [B, 1, 1, S].
    Returns:
      [T, D].
    """
    def p(suffix):
        return w[names.layer(layer, suffix)]

    context = attention(w, layer, config, x, mask_bias, batch, seq)        # [T, D]
    attention_output = dense(context, p("attention/output/dense/kernel"),
                             p("attention/output/dense/bias"))             # [T, D]
    x = layer_norm(attention_output + x, p("attention/output/LayerNorm/gamma"),
                   p("attention/output/LayerNorm/beta"))                   # [T, D]
    intermediate = gelu(dense(x, p("intermediate/dense/kernel"),
                              p("intermediate/dense/bias")))               # [T, I]
    output = dense(intermediate, p("output/dense/kernel"), p("output/dense/bias"))  # [T, D]
    return layer_norm(output + x, p("output/LayerNorm/gamma"), p("output/LayerNorm/beta"))


def pooler(w: Mapping, sequence_output):
    """tanh(dense) on the [CLS] row.  sequence_output: [B, S, D] -> [B, D]."""
    first = tf.squeeze(sequence_output[:, 0:1, :], axis=1)                 # [B, D]
    return tf.tanh(dense(first, w[names.POOLER_KERNEL], w[names.POOLER_BIAS]))


def classifier(w: Mapping, pooled):
    """run_classifier's head.  pooled: [B, D] -> logits, probabilities [B, L]."""
    logits = tf.matmul(pooled, w[names.CLASSIFIER_WEIGHTS], transpose_b=True)
    logits = tf.nn.bias_add(logits, w[names.CLASSIFIER_BIAS])              # [B, L]
    return logits, tf.nn.softmax(logits)


def span_logits(w: Mapping, sequence_output):
    """run_squad's head: logits = h . W^T + b, unstacked into start and end.

    sequence_output: [B, S, D];  W: cls/squad/output_weights [2, D], b [2].
    Returns start_logits, end_logits [B, S].
    """
    batch, seq, hidden = sequence_output.shape
    rows = tf.reshape(sequence_output, [batch * seq, hidden])             # [T, D]
    logits = tf.matmul(rows, w[names.SPAN_WEIGHTS], transpose_b=True)
    logits = tf.nn.bias_add(logits, w[names.SPAN_BIAS])                   # [T, 2]
    logits = tf.transpose(tf.reshape(logits, [batch, seq, 2]), [2, 0, 1])  # [2, B, S]
    start, end = tf.unstack(logits, axis=0)
    return start, end


def mean_pool_normalize(sequence_output, input_mask):
    """sentence-transformers' mean pooling over real tokens, then L2 normalisation.

    e = sum_s(mask_s * x_s) / max(sum_s mask_s, 1e-9);  e / max(|e|, 1e-12).
    Args:
      sequence_output: [B, S, D].  input_mask: int32 [B, S].
    Returns:
      [B, D]; all-padding rows give zeros.
    """
    mask = tf.cast(input_mask, tf.float32)[:, :, tf.newaxis]               # [B, S, 1]
    summed = tf.reduce_sum(sequence_output * mask, axis=1)                 # [B, D]
    count = tf.maximum(tf.reduce_sum(mask, axis=1), 1e-9)                  # [B, 1]
    return tf.math.l2_normalize(summed / count, axis=-1, epsilon=1e-24)    # [B, D]


def encoder_outputs(w: Mapping, config, head: str, input_ids, input_mask, segment_ids
                    ) -> Dict[str, tf.Tensor]:
    """The whole network for one head.

    Args:
      w: Google name -> tensor (variables or constants).
      head: one of HEAD_OUTPUTS.
      input_ids, input_mask, segment_ids: int32 [B, S].
    Returns:
      output name -> tensor, the names of HEAD_OUTPUTS[head].
    """
    batch, seq = input_ids.shape
    x = embeddings(w, config, input_ids, segment_ids)                      # [T, D]
    mask_bias = attention_mask_bias(input_mask)                            # [B, 1, 1, S]
    for layer in range(config.num_hidden_layers):
        x = transformer_layer(w, layer, config, x, mask_bias, batch, seq)  # [T, D]
    sequence_output = tf.reshape(x, [batch, seq, config.hidden_size])      # [B, S, D]
    if head == "sequence":
        return {"sequence_output": sequence_output}
    if head == "embedding":
        return {"embedding": mean_pool_normalize(sequence_output, input_mask)}
    if head == "span":
        start, end = span_logits(w, sequence_output)
        return {"start_logits": start, "end_logits": end}
    pooled = pooler(w, sequence_output)                                    # [B, D]
    if head == "pooled":
        return {"pooled_output": pooled}
    logits, probabilities = classifier(w, pooled)
    return {"logits": logits, "probabilities": probabilities}


class BertModel(tf.Module):
    """A BERT encoder over numpy weights keyed by Google's checkpoint names.

    Tracing puts a shape-only placeholder Const (a broadcast scalar, a few bytes)
    for every weight into the graph, named after its checkpoint variable; `freeze`
    then writes the real values into those nodes' tensor_content, one copy. Tracing
    BERT-Large this way takes about a second instead of copying 1.3 GB of weights
    through TensorFlow's Python constant machinery several times.
    """

    def __init__(self, config, weights: Mapping, name: str = "bertc_model"):
        super().__init__(name=name)
        self.config = config
        self.weights = dict(weights)

    def serving_function(self, head: str, batch_size: int, seq_len: int):
        """A tf.function with the static serving signature for `head`.

        Inputs int32 [batch_size, seq_len] named input_ids, input_mask,
        segment_ids; outputs a dict of HEAD_OUTPUTS[head], each also given a
        graph node of that name (the export boundary). Weight nodes are
        shape-only until frozen (see bertc.model.freeze).
        """
        check_head(head, self.weights)
        spec = [tf.TensorSpec([batch_size, seq_len], tf.int32, name=n) for n in INPUT_NAMES]

        @tf.function(input_signature=spec, autograph=False)
        def serve(input_ids, input_mask, segment_ids):
            w = {n: tf.constant(0.0, dtype=tf.float32, shape=v.shape, name=WEIGHT_SCOPE + n)
                 for n, v in self.weights.items()}
            outputs = encoder_outputs(w, self.config, head, input_ids, input_mask, segment_ids)
            return {k: tf.identity(v, name=k) for k, v in outputs.items()}

        return serve


#: Name prefix of the weight Const nodes in a traced graph (see BertModel).
WEIGHT_SCOPE = "weights/"


def available_heads(weights: Mapping):
    """Heads the weights support: pooler, classifier and span need their tensors."""
    heads = ["sequence", "embedding"]
    if names.SPAN_WEIGHTS in weights:
        heads.append("span")
    if names.POOLER_KERNEL in weights:
        heads.append("pooled")
        if names.CLASSIFIER_WEIGHTS in weights:
            heads.append("classifier")
    return heads


def canonical_head(head):
    """The head's own name (`squad` -> `span`); None stays None."""
    return HEAD_ALIASES.get(head, head)


def check_head(head: str, weights: Mapping) -> None:
    if head not in HEAD_OUTPUTS:
        raise BertcError(f"`head` {head!r}: expected one of {', '.join(HEAD_OUTPUTS)}")
    if head not in available_heads(weights):
        needed = {"classifier": names.CLASSIFIER_WEIGHTS,
                  "span": names.SPAN_WEIGHTS}.get(head, names.POOLER_KERNEL)
        raise BertcError(f"`head` {head}: the checkpoint has no '{needed}'; expected one of "
                         f"{', '.join(available_heads(weights))} for this checkpoint")


def default_head(weights: Mapping, hints: Mapping = None) -> str:
    """classifier or span (run_squad) if the checkpoint has one, else what
    bertc_hints.json says, else pooled (Google's pre-trained checkpoints), else sequence."""
    heads = available_heads(weights)
    if "classifier" in heads:
        return "classifier"
    if "span" in heads:
        return "span"
    hinted = (hints or {}).get("head")
    if hinted in heads:
        return hinted
    return "pooled" if "pooled" in heads else "sequence"
