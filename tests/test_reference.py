"""The converted head run by llama.cpp matches the NumPy reference (eagle3_convert.reference)."""

from __future__ import annotations

import numpy as np
import pytest

import tiny_models as tm
from eagle3_convert.cli import convert
from eagle3_convert.gguf_io import read_head_gguf
from head_check import check_llama_cpp_matches_reference
from llama_eagle3 import Llama

SPECS = [
    tm.HeadSpec("specforge"),
    tm.HeadSpec("speculators", norm_before_fc=True, norm_before_residual=True),
    tm.HeadSpec("eagle", own_embeddings=True),
    tm.HeadSpec("angelslim", full_vocab=True, own_lm_head=False),
]


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.layout}{'-nbfc' if s.norm_before_fc else ''}"
                                                      f"{'-emb' if s.own_embeddings else ''}{'-shared-lm' if not s.own_lm_head else ''}")
def test_llama_cpp_head_matches_reference(spec, arch, tmp_path, targets, n_vocab):
    hf = tm.build_hf_head(tmp_path / "hf", spec, n_vocab, seed=3)
    path = tmp_path / "head.gguf"
    convert(hf, str(targets[arch]), path, "f32", log=lambda *a: None)
    # f32 head: 1e-3. A shared lm_head is the target's Q8_0 matrix, whose matmul quantizes the
    # activations to 8 bits as well: 1e-2 for those logits. Then a chain step continues the KV:
    # (draft token, previous pre-norm state) at position n.
    logits = check_llama_cpp_matches_reference(path, targets[arch], n_vocab, n=12)
    assert logits.shape == (12, read_head_gguf(path).config.draft_vocab_size)


def test_draft_reads_the_last_pair_of_a_multi_pair_decode(targets, heads):
    """draft() over n pairs proposes from the LAST pair. llama.cpp's eagle3 graph computes every
    row whatever the output mask says, so reading the last row needs every row marked (a decode
    that marked only the last row handed back row 0's logits)."""
    llm = Llama(str(targets["llama"]), n_ctx=256, verbose=False, eagle3_head=str(heads["llama"]), eagle3_draft_max=0)
    runner = llm._engine.drafter.runner
    d2t = read_head_gguf(heads["llama"]).d2t
    rng = np.random.default_rng(1)
    for n in (1, 2, 5, 12):
        f = rng.standard_normal((n, 3 * tm.H)).astype(np.float32)
        tokens = rng.integers(0, 200, n).astype(np.int32)
        g = runner.encode(f)
        drafts = runner.draft(tokens, g, 0, 2, 0.0)
        logits, h = runner.forward(tokens, g, 0)
        assert drafts[0] == d2t[int(np.argmax(logits[-1]))], f"{n} pairs"
        logits2, _ = runner.forward(np.array(drafts[:1], np.int32), h[-1:], n)
        assert drafts[1] == d2t[int(np.argmax(logits2[0]))], f"{n} pairs, chain step"
    llm.close()
