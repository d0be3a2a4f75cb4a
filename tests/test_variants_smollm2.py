"""Issue 23's variants at SmolLM2-135M's shape (hidden 576, 9 heads, 3 KV heads, head_dim 64, 4096
draft tokens) on the real SmolLM2-135M-Instruct Q4_1 target: each converts to eagle3x, this runtime's
graph matches the reference at positions spread over the context, greedy output (one thread) is
plain decoding's."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_quirks import Quirk, Shape, bias_tensors, build, fc_norm_tensors, qk_norm_tensors
from test_variants import check_graph_matches_reference, speculators_quirk

pytestmark = pytest.mark.slow  # about 10 s per variant

SMOL_VOCAB = 49152
SMOL = Shape(hidden=576, n_head=9, n_kv=3, head_dim=64, ff=1536, target_hidden=576, draft_vocab=4096)


def _ids(ids: list[int]):
    return lambda c: c["eagle_config"].__setitem__("eagle_aux_hidden_state_layer_ids", ids)


VARIANTS: dict[str, Quirk] = {
    "norm_output": Quirk(shape=SMOL, config=lambda c: c.update(norm_output=True)),
    "4 taps": Quirk(shape=Shape(**{**SMOL.__dict__, "taps": 4}), config=_ids([1, 9, 19, 28])),
    "5 taps": Quirk(shape=Shape(**{**SMOL.__dict__, "taps": 5}), config=_ids([1, 7, 14, 21, 28])),
    "fc_norm": Quirk("speculators", shape=SMOL, config=lambda c: c.update(fc_norm=True),
                     tensors=fc_norm_tensors(3, 576)),
    "q_norm / k_norm": Quirk(shape=SMOL, tensors=qk_norm_tensors(64)),
    "biases": Quirk(shape=SMOL, tensors=bias_tensors(("q", "k", "v", "o", "gate", "up", "down"))),
    "speculators 0.7.0.dev80 (Mistral-Large head)": speculators_quirk(
        "0.7.0.dev80", "mistralai/Mistral-Large-Instruct-2411", [2, 15, 27], SMOL, SMOL_VOCAB),
    "speculators 0.8.0.dev0 (Qwen3-235B head, 4 taps)": speculators_quirk(
        "0.8.0.dev0", "Qwen/Qwen3-235B-A22B", [2, 15, 27, 29], SMOL, SMOL_VOCAB),
}


def convert_variant(q: Quirk, d: Path, target: Path) -> Path:
    from eagle3_convert.cli import convert

    convert(build(q, d / "hf", SMOL_VOCAB), str(target), d / "head.gguf", "f32", log=lambda *a: None)
    return d / "head.gguf"


@pytest.mark.parametrize("name", VARIANTS)
def test_smollm2_variant(name, tmp_path, smollm2):
    from test_greedy import plain_llm, spec_llm

    out = convert_variant(VARIANTS[name], tmp_path, smollm2)
    check_graph_matches_reference(out, smollm2, n_vocab=SMOL_VOCAB)
    plain = plain_llm(smollm2, n_threads=1)
    spec = spec_llm(smollm2, out, eagle3_draft_max=3, n_threads=1)
    prompt = "The three most important things about the sea are"
    a = plain(prompt, max_tokens=32, temperature=0.0)["choices"][0]["text"]
    b = spec(prompt, max_tokens=32, temperature=0.0)["choices"][0]["text"]
    assert a == b
    assert spec.speculative_stats()["drafted"] > 0
    spec.close()
    plain.close()
