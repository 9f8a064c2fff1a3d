"""cpu_embeddings: the Neuron CPU/device partition of a BERT graph, as data.

Changes nothing in the graph.  It finds, by structure (`input_regions`), the
part AWS's BERT demo keeps on the CPU and the part it compiles for Inferentia::

    input_ids, segment_ids, input_mask (Placeholders: in neither list)
       |                                  |
    [ Gather(word table), token-type one-hot MatMul | Gather,   [ Reshape -> Cast -> Sub(1, .)
      position Slice, the sums, embedding LayerNorm,              -> Mul(., -10000) ]
      their weights ]                                                    |
       |              no_fuse_ops (CPU)                                  |
    ---+------------------------------------------------------------------+-----------
       v              force_fuse_ops (Neuron)                            v
    [ every encoder layer (from the first MatMul that reads the embedding output,
      and any Cast before it), the pooler, the head: logits, softmax,
      masked mean ... ]
       |
    outputs (protected boundary nodes: in neither list)

and reports them as `details = {'no_fuse_ops': [...], 'force_fuse_ops': [...]}`,
node names in topological order: the arguments of
`tensorflow.neuron.saved_model.compile`.  no_fuse_ops are the ancestors of the
embedding output (the first encoder layer's input) and of the attention-mask
bias; force_fuse_ops are every other node except the Placeholders and the
protected output nodes.  AWS's bert_no_model.py gets the same partition from
name scopes (`bert/encoder`, `bert/pooler`); matching structure instead, a
TF-Hub BERT or any other scope gives the same lists (issue aws-neuron-sdk#381).
Run it last: the names are those of the final graph.

Error bound: 0 (the graph is returned unchanged).
Sites: 1 when the partition is found, else 0.
"""

from rewrites.base import FINAL, RewritePass
from rewrites.graph import Graph
from rewrites.input_regions import find_input_regions


class CpuEmbeddings(RewritePass):
    """Reports the Neuron partition: embeddings and mask on CPU, the rest on Neuron."""

    name = "cpu_embeddings"
    exact = True
    phase = FINAL  # it reports the final graph's node names
    required_targets = ("neuron",)

    @classmethod
    def expected_sites(cls, layers, cls_only_outputs):
        return 1
    max_abs_error = "0 (the graph is not changed; reports no_fuse_ops / force_fuse_ops)"

    def rewrite(self, graph: Graph) -> int:
        regions = find_input_regions(graph)
        if regions is None:
            return 0
        cpu = regions.embedding_nodes | regions.mask_nodes
        boundary = set(graph.protected)
        order = [n for n in graph.topological() if n.op != "Placeholder"]
        self.details = {
            "no_fuse_ops": [n.name for n in order if n.name in cpu],
            "force_fuse_ops": [n.name for n in order
                               if n.name not in cpu and n.name not in boundary]}
        return 1
