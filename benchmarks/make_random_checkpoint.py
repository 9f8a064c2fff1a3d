"""Writes a Google-format BERT checkpoint with random weights, of a published shape.

  python benchmarks/make_random_checkpoint.py --shape large --output /tmp/bert_large
Shapes: tiny, base, large (Google's uncased_L-2_H-128_A-2, L-12_H-768_A-12,
L-24_H-1024_A-16). The vocabulary is MiniLM's uncased 30,522-entry vocab.txt (the
same size as Google's uncased vocab), so text can be tokenized for it.
"""

import argparse
import os

import numpy as np

from bertc.sources import google_checkpoint as checkpoint
from bertc.sources import embedded as defaults
from bertc.model import names
from bertc.model.config import BertConfig

SHAPES = {
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512),
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}


def random_weights(config: BertConfig, seed: int = 0, num_labels=None, span=False) -> dict:
    """N(0, 0.02) kernels and embeddings, ones/zeros for LayerNorm, as at initialisation;
    span adds run_squad's head (cls/squad/output_weights [2, D], output_bias [2])."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in names.expected_shapes(config, num_labels=num_labels,
                                             span=span).items():
        if name.endswith("gamma"):
            weights[name] = np.ones(shape, np.float32)
        elif name.endswith(("beta", "bias")):
            weights[name] = np.zeros(shape, np.float32)
        else:
            weights[name] = (rng.standard_normal(shape, dtype=np.float32) * 0.02)
    return weights


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--num_labels", type=int, default=None)
    parser.add_argument("--span", action="store_true", help="add run_squad's span head")
    args = parser.parse_args()
    vocab = os.path.join(defaults.minilm_hf_dir(), "vocab.txt")
    config = BertConfig(vocab_size=30522, **SHAPES[args.shape])
    prefix = checkpoint.write_checkpoint(args.output, config,
                                         random_weights(config, num_labels=args.num_labels,
                                                        span=args.span),
                                         vocab, hints={"do_lower_case": True})
    print(f"wrote {prefix} ({args.shape}: {config.num_hidden_layers} layers, hidden "
          f"{config.hidden_size})")


if __name__ == "__main__":
    main()
