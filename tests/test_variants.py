"""Heads llama.cpp's eagle3 graph cannot run (issue 23): norm_output, 4-5 taps, fc_norm, q/k norms,
biases, and two speculators configurations (0.7.0.dev80 Mistral-Large, 0.8.0.dev0 Qwen3-235B) scaled
down with every key kept. Each converts to arch eagle3x; the checkpoint evaluated directly (NumPy,
straight from speculators' forward, independent of eagle3_convert.reference) matches the reference;
this runtime's own graph (csrc/head_graph.cpp) matches the reference at positions spread over the
context; greedy output with the head is plain decoding's."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tiny_models as tm
from eagle3_convert.gguf_header import read_gguf_header
from eagle3_convert.gguf_io import read_head_gguf
from eagle3_convert.reference import KVCache, decode, encode
from eagle3_convert.target import gguf_tensor, open_gguf
from head_check import rel
from test_quirks import LLAMA3, QUIRKS, YARN, Quirk, Shape, bias_tensors, fc_norm_tensors, qk_norm_tensors, run_convert

N_VOCAB = len(tm.tokenizer_keys()["tokenizer.ggml.tokens"])


def speculators_config(version: str, verifier: str, ids: list[int], s: Shape, n_vocab: int = N_VOCAB) -> dict:
    """config.json as speculators writes it (Eagle3SpeculatorConfig.to_dict): every key kept."""
    return {
        "architectures": ["Eagle3DraftModel"], "auto_map": {"": "eagle3.Eagle3DraftModel"},
        "speculators_model_type": "eagle3", "speculators_version": version, "dtype": "float32",
        "transformers_version": "4.57.1", "has_no_defaults_at_init": False, "embed_requires_grad": False,
        "draft_vocab_size": s.draft_vocab, "target_hidden_size": None,
        "norm_before_residual": True, "norm_before_fc": True, "fc_norm": False, "norm_output": True,
        "eagle_aux_hidden_state_layer_ids": ids,
        "speculators_config": {"algorithm": "eagle3", "default_proposal_method": "greedy",
                               "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": 3,
                                                     "verifier_accept_k": 1, "accept_tolerance": 0.0}],
                               "verifier": {"architectures": ["MistralForCausalLM"], "name_or_path": verifier}},
        "transformer_layer_config": {
            "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": s.hidden,
            "intermediate_size": s.ff, "num_attention_heads": s.n_head, "num_key_value_heads": s.n_kv,
            "head_dim": s.head_dim, "num_hidden_layers": 1, "hidden_act": "silu", "rms_norm_eps": 1e-5,
            "rope_theta": 1000000.0, "rope_scaling": None, "max_position_embeddings": tm.CTX,
            "vocab_size": n_vocab, "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False,
            "initializer_range": 0.02, "pretraining_tp": 1, "tie_word_embeddings": False, "use_cache": True,
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": None, "torch_dtype": "float32"},
    }


def speculators_quirk(version: str, verifier: str, ids: list[int], shape: Shape = Shape(), n_vocab: int = N_VOCAB) -> Quirk:
    s = Shape(**{**shape.__dict__, "taps": len(ids)})
    cfg = speculators_config(version, verifier, ids, s, n_vocab)
    norm = lambda t: np.full(len(ids) * s.target_hidden, 1.1, np.float32)  # noqa: E731
    return Quirk("speculators", shape=s, config=lambda c: (c.clear(), c.update(json.loads(json.dumps(cfg)))),
                 tensors=lambda t: t.__setitem__("input_norm.weight", norm(t)), layers=tuple(ids), variant=True)


VARIANTS: dict[str, Quirk] = {
    "norm_output": QUIRKS["norm_output"],
    "4 taps": QUIRKS["4 taps"],
    "5 taps": QUIRKS["5 taps"],
    "fc_norm": QUIRKS["fc_norm"],
    "q_norm / k_norm": QUIRKS["q_norm / k_norm"],
    "attention and mlp biases": Quirk(tensors=bias_tensors(("q", "k", "v", "o", "gate", "up", "down")), variant=True),
    "fc_norm, 4 taps, q/k norms, biases, norm_output": Quirk(
        "speculators", shape=Shape(taps=4),
        config=lambda c: c.update(fc_norm=True, norm_output=True, norm_before_residual=True,
                                  eagle_aux_hidden_state_layer_ids=[1, 3, 5, 7]),
        tensors=lambda t: (fc_norm_tensors(4)(t), qk_norm_tensors()(t), bias_tensors("qkv")(t)), layers=(1, 3, 5, 7), variant=True),
    # the issue's two heads at the tiny target's scale: 3 taps of 88 layers / 4 taps [2, 46, 91, 93] of 94
    "speculators 0.7.0.dev80 (Mistral-Large-123B head)": speculators_quirk(
        "0.7.0.dev80", "mistralai/Mistral-Large-Instruct-2411", [2, 4, 5]),
    "speculators 0.8.0.dev0 (Qwen3-235B head, 4 taps)": speculators_quirk(
        "0.8.0.dev0", "Qwen/Qwen3-235B-A22B", [2, 4, 6, 7]),
}


# ---- the checkpoint evaluated directly (speculators' Eagle3DraftModel.forward, one TTT step) ----

def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def direct_checkpoint(t: dict, cfg: dict, f: np.ndarray, emb: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits [n, Vd], the state fed to the next step [n, H]) for n rows attending causally, read
    from the canonical-name tensors ("L." = the layer) and config flags, row by row."""
    h = {**cfg, **cfg.get("transformer_layer_config", {})}
    eps, nh, nkv = h["rms_norm_eps"], h["num_attention_heads"], h["num_key_value_heads"]
    hd = t["L.self_attn.q_proj.weight"].shape[0] // nh
    get = lambda k: t.get(k, np.zeros(1))  # noqa: E731  absent bias = 0
    x = f.astype(np.float64)
    if h.get("norm_before_fc"):
        x = _rms(x, t["input_norm.weight"], eps)
    if h.get("fc_norm"):
        chunks = np.split(x, len([k for k in t if k.startswith("fc_norm.")]), axis=-1)
        x = np.concatenate([_rms(c, t[f"fc_norm.{i}.weight"], eps) for i, c in enumerate(chunks)], -1)
    hidden = x @ t["fc.weight"].T
    e, g = _rms(emb, t["L.input_layernorm.weight"], eps), _rms(hidden, t["L.hidden_norm.weight"], eps)
    residual = g if h.get("norm_before_residual") else hidden
    a = np.concatenate([e, g], -1)
    inv = 1.0 / h["rope_theta"] ** (np.arange(0, hd, 2) / hd)
    n = len(f)
    out = np.zeros((n, nh * hd))
    ks, vs, qs = [], [], []
    for i in range(n):
        q = (a[i] @ t["L.self_attn.q_proj.weight"].T + get("L.self_attn.q_proj.bias")).reshape(nh, hd)
        k = (a[i] @ t["L.self_attn.k_proj.weight"].T + get("L.self_attn.k_proj.bias")).reshape(nkv, hd)
        v = (a[i] @ t["L.self_attn.v_proj.weight"].T + get("L.self_attn.v_proj.bias")).reshape(nkv, hd)
        if "L.self_attn.q_norm.weight" in t:
            q, k = _rms(q, t["L.self_attn.q_norm.weight"], eps), _rms(k, t["L.self_attn.k_norm.weight"], eps)
        c, s = np.cos(pos[i] * inv), np.sin(pos[i] * inv)
        rot = lambda y: np.concatenate([y[:, :hd // 2] * c - y[:, hd // 2:] * s,  # noqa: E731
                                        y[:, hd // 2:] * c + y[:, :hd // 2] * s], -1)
        qs.append(rot(q)), ks.append(rot(k)), vs.append(v)
    for i in range(n):
        for j in range(nh):
            kv = j // (nh // nkv)
            sc = np.array([qs[i][j] @ ks[m][kv] for m in range(i + 1)]) / np.sqrt(hd)
            p = np.exp(sc - sc.max())
            out[i, j * hd:(j + 1) * hd] = (p / p.sum()) @ np.array([vs[m][kv] for m in range(i + 1)])
    h1 = out @ t["L.self_attn.o_proj.weight"].T + get("L.self_attn.o_proj.bias") + residual
    m = _rms(h1, t["L.post_attention_layernorm.weight"], eps)
    gate = m @ t["L.mlp.gate_proj.weight"].T + get("L.mlp.gate_proj.bias")
    up = m @ t["L.mlp.up_proj.weight"].T + get("L.mlp.up_proj.bias")
    hh = (gate / (1 + np.exp(-gate)) * up) @ t["L.mlp.down_proj.weight"].T + get("L.mlp.down_proj.bias") + h1
    normed = _rms(hh, t["norm.weight"], eps)
    return normed @ t["lm_head.weight"].T, (normed if h.get("norm_output") else hh)


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_reference_matches_checkpoint(name, tmp_path, targets):
    """The converted eagle3x file, read back and run by the reference, == the checkpoint run directly."""
    from test_quirks import head_config, head_tensors

    q = VARIANTS[name]
    out, _ = run_convert(q, tmp_path, targets["llama"], N_VOCAB)
    assert read_gguf_header(out).meta["general.architecture"] == "eagle3x"
    head = read_head_gguf(out)
    assert head.config.target_layers == q.layers
    t = head_tensors(q.shape, N_VOCAB)
    q.tensors and q.tensors(t)
    cfg = head_config(q.layout, q.shape, N_VOCAB)
    q.config and q.config(cfg)
    rng = np.random.default_rng(1)
    n = 12
    f = rng.standard_normal((n, head.config.n_taps * tm.H))
    emb = rng.standard_normal((n, tm.H))
    ref_logits, ref_state = decode(head, head.config, emb, encode(head, head.config, f), np.arange(n))
    logits, state = direct_checkpoint(t, cfg, f, emb, np.arange(n))
    assert rel(ref_state, state) < 1e-5
    assert rel(ref_logits, logits) < 1e-5


def check_graph_matches_reference(path, target, n_vocab: int = N_VOCAB, n: int = 24, far: int = 700) -> None:
    """This runtime's graph == the reference: n rows from position 0, a chain step, then rows at
    positions far..far+7 after a long extend (RoPE far from 0, attention over ~700 cells)."""
    from llama_eagle3 import Llama, _core

    head = read_head_gguf(path)
    reader = open_gguf(target)
    tok_embd = head.embed_tokens if head.embed_tokens is not None else gguf_tensor(reader, "token_embd.weight")
    llm = Llama(str(target), n_ctx=1024, verbose=False, eagle3_head=str(path), eagle3_draft_max=0)
    try:
        runner = llm._engine.drafter.runner
        assert isinstance(runner, _core.HeadGraph)
        rng = np.random.default_rng(0)
        f = rng.standard_normal((far, head.config.n_taps * head.config.target_hidden_size)).astype(np.float32)
        tokens = rng.integers(0, n_vocab, far + 8).astype(np.int32)
        g = runner.encode(f)
        ref_g = encode(head, head.config, f)
        assert rel(g, ref_g) <= 1e-4
        cache = KVCache()
        logits, h = runner.forward(tokens[:n], g[:n], 0)
        ref_logits, ref_h = decode(head, head.config, tok_embd[tokens[:n]], g[:n], np.arange(n), cache=cache)
        assert rel(h, ref_h) <= 1e-4 and rel(logits, ref_logits) <= 1e-4
        t2 = head.d2t[[int(np.argmax(ref_logits[-1]))]].astype(np.int32)
        logits2, h2 = runner.forward(t2, h[-1:], n)
        ref_logits2, ref_h2 = decode(head, head.config, tok_embd[t2], h[-1:], np.array([n]), cache=cache)
        assert rel(h2, ref_h2) <= 1e-4 and rel(logits2, ref_logits2) <= 1e-4
        runner.extend(tokens[:far], g[:far], 0)  # replaces everything from 0
        cache = KVCache()
        decode(head, head.config, tok_embd[tokens[:far]], g[:far], np.arange(far), cache=cache)
        rows = slice(far - 8, far)
        runner.truncate(far - 8)
        logits3, h3 = runner.forward(tokens[far:far + 8], g[rows], far - 8)
        cache.k, cache.v = cache.k[:far - 8], cache.v[:far - 8]
        ref3, ref_h3 = decode(head, head.config, tok_embd[tokens[far:far + 8]], g[rows], np.arange(far - 8, far),
                              cache=cache)
        assert rel(h3, ref_h3) <= 1e-4 and rel(logits3, ref3) <= 1e-4
        runner.truncate(0)  # empty: a sequence may start anywhere (the engine's skip / forget)
        logits4, h4 = runner.forward(tokens[:8], g[:8], 300)
        ref4, ref_h4 = decode(head, head.config, tok_embd[tokens[:8]], g[:8], np.arange(300, 308))
        assert rel(h4, ref_h4) <= 1e-4 and rel(logits4, ref4) <= 1e-4
        with pytest.raises(IndexError, match="do not continue its KV"):
            runner.extend(tokens[:1], g[:1], 400)
        with pytest.raises(ValueError, match="outside the vocabulary"):
            runner.extend(np.array([n_vocab], np.int32), g[:1], 308)
    finally:
        llm.close()


# RoPE scaling in this runtime's graph (rope_freqs for llama3; ggml's YaRN with attn_factor)
ROPE_VARIANTS = {f"norm_output, rope_scaling {k}": Quirk(config=lambda c, r=r: c.update(norm_output=True, rope_scaling=r),
                                                         variant=True)
                 for k, r in (("llama3", LLAMA3), ("yarn", YARN), ("linear", {"rope_type": "linear", "factor": 2.0}))}


@pytest.mark.parametrize("name", [*VARIANTS, *ROPE_VARIANTS])
def test_variant_graph_matches_reference(name, tmp_path, targets):
    out, _ = run_convert({**VARIANTS, **ROPE_VARIANTS}[name], tmp_path, targets["llama"], N_VOCAB)
    check_graph_matches_reference(out, targets["llama"])


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_greedy_identical(name, tmp_path, targets):
    from test_greedy import plain_llm, spec_llm

    out, _ = run_convert(VARIANTS[name], tmp_path, targets["llama"], N_VOCAB)
    plain = plain_llm(targets["llama"], n_threads=1)
    # the adaptive policy (for one head) also exercises forget / skip: the head's KV restarting past 0
    adaptive = name == "norm_output"
    spec = spec_llm(targets["llama"], out, eagle3_draft_max=3, n_threads=1, eagle3_adaptive=adaptive)
    prompt = "in the beginning of the"
    a = plain(prompt, max_tokens=32, temperature=0.0)["choices"][0]["text"]
    b = spec(prompt, max_tokens=32, temperature=0.0)["choices"][0]["text"]
    assert a == b
    assert adaptive or spec.speculative_stats()["drafted"] > 0  # adaptive: a random head may never pay off
    spec.close()
    plain.close()


def reference_tree(head, tok_embd, cache: KVCache, state: np.ndarray, logits: np.ndarray, pos: int, depth: int,
                   width: int) -> list[tuple[int, int, int, float]]:
    """HeadRunner::draft_tree's expansion in NumPy: (token, parent, depth, score) of every candidate,
    each expanded node decoded on a copy of the committed cache plus its own path."""
    def children(lg: np.ndarray, parent: int, d: int, base: float) -> list:
        lp = lg - (lg.max() + np.log(np.exp(lg - lg.max()).sum()))
        best = np.argsort(-lp, kind="stable")[:width]
        return [(int(head.d2t[i]), parent, d, base + float(lp[i])) for i in best]

    nodes = children(logits, -1, 1, 0.0)
    info = {}  # expanded node -> (cache after its path, its state)
    level = list(range(len(nodes)))
    for d in range(2, depth + 1):
        chosen = sorted(level, key=lambda i: -nodes[i][3])[:width]
        level = []
        for x in chosen:
            parent = nodes[x][1]
            c, g = (cache, state) if parent < 0 else info[parent]
            c = KVCache(list(c.k), list(c.v))
            t = np.array([nodes[x][0]])
            lg, st = decode(head, head.config, tok_embd[t], g, np.array([pos + d - 2]), cache=c)
            info[x] = (c, st)
            start = len(nodes)
            nodes += children(lg[0], x, d, nodes[x][3])
            level += range(start, len(nodes))
    return nodes


def test_variant_tree_matches_reference(tmp_path, targets):
    """Trees in this runtime's graph (width 2, depth 4, every candidate kept) == the NumPy expansion;
    a width-1 tree is the chain draft()."""
    from llama_eagle3 import Llama

    out, _ = run_convert(VARIANTS["fc_norm, 4 taps, q/k norms, biases, norm_output"], tmp_path, targets["llama"],
                         N_VOCAB)
    head = read_head_gguf(out)
    tok_embd = gguf_tensor(open_gguf(targets["llama"]), "token_embd.weight")
    llm = Llama(str(targets["llama"]), n_ctx=256, verbose=False, eagle3_head=str(out), eagle3_draft_max=4,
                eagle3_tree_width=2, eagle3_tree_nodes=16)
    try:
        runner = llm._engine.drafter.runner
        rng = np.random.default_rng(2)
        n = 10
        g = runner.encode(rng.standard_normal((n, 4 * tm.H)).astype(np.float32))
        tokens = rng.integers(0, N_VOCAB, n).astype(np.int32)
        tree = runner.draft_tree(tokens, g, 0, 4, 2, 100)
        cache = KVCache()
        logits, state = decode(head, head.config, tok_embd[tokens], g, np.arange(n), cache=cache)
        ref = reference_tree(head, tok_embd, cache, state[-1:], logits[-1], n, 4, 2)
        assert len(tree[0]) == len(ref) == 2 + 4 + 4 + 4
        got = sorted(zip(tree[2], tree[3], tree[0]), key=lambda r: (r[0], -r[1]))
        want = sorted(((d, s, t) for t, _, d, s in ref), key=lambda r: (r[0], -r[1]))
        assert [(d, t) for d, _, t in got] == [(d, t) for d, _, t in want]
        np.testing.assert_allclose([s for _, s, _ in got], [s for _, s, _ in want], rtol=1e-4, atol=1e-4)
        chain = runner.draft(tokens, g, 0, 4, 0.0)
        assert runner.draft_tree(tokens, g, 0, 4, 1, 4)[0] == chain
        assert chain == [t for t, _, _, _ in reference_tree(head, tok_embd, cache, state[-1:], logits[-1], n, 4, 1)]
    finally:
        llm.close()


@pytest.mark.parametrize("name", ["norm_output", "speculators 0.8.0.dev0 (Qwen3-235B head, 4 taps)"])
def test_variant_tree_greedy_identical(name, tmp_path, targets):
    from test_greedy import plain_llm, spec_llm

    out, _ = run_convert(VARIANTS[name], tmp_path, targets["llama"], N_VOCAB)
    plain = plain_llm(targets["llama"], n_threads=1)
    spec = spec_llm(targets["llama"], out, eagle3_draft_max=3, eagle3_tree_width=2, eagle3_tree_nodes=6, n_threads=1)
    prompt = "in the beginning of the"
    assert plain(prompt, max_tokens=32, temperature=0.0)["choices"][0]["text"] == \
        spec(prompt, max_tokens=32, temperature=0.0)["choices"][0]["text"]
    assert spec.speculative_stats()["drafted"] > 0
    spec.close()
    plain.close()


def test_upstream_llama_cpp_refuses_eagle3x(tmp_path, targets):
    """llama.cpp's own loader does not take an eagle3x file for an eagle3 head (no silent misuse)."""
    import llama_cpp

    out, _ = run_convert(VARIANTS["norm_output"], tmp_path, targets["llama"], N_VOCAB)
    params = llama_cpp.llama_model_default_params()
    model = llama_cpp.llama_model_load_from_file(str(out).encode(), params)
    assert not model


def test_five_taps_hook_equals_builtin(tmp_path, targets):
    """Both capture paths give 5 taps (llama.cpp's built-in extraction has a flag per layer, no
    count limit), bit-identical, in target_layers order."""
    from test_capture import captured, make

    out, _ = run_convert(VARIANTS["5 taps"], tmp_path, targets["llama"], N_VOCAB)
    hook, builtin = make(targets["llama"], out, "hook"), make(targets["llama"], out, "builtin")
    assert (hook._engine.capture.mode, builtin._engine.capture.mode) == ("hook", "builtin")
    tokens = list(range(5, 45))
    a, b = captured(hook, tokens, [40]), captured(builtin, tokens, [40])
    assert a.shape == (40, 5 * tm.H)
    assert np.array_equal(a, b)
    taps = np.split(a, 5, axis=1)
    assert all(not np.allclose(taps[i], taps[i + 1]) for i in range(4))
    hook.close()
    builtin.close()


def test_four_taps_hook_only_architecture(tmp_path, targets):
    """qwen2 has no built-in extraction: auto picks the graph hook, which captures 4 taps."""
    from test_capture import captured, make

    out, _ = run_convert(VARIANTS["4 taps"], tmp_path, targets["qwen2"], N_VOCAB)
    llm = make(targets["qwen2"], out, "auto")
    assert llm._engine.capture.mode == "hook"
    assert captured(llm, list(range(7, 37)), [30]).shape == (30, 4 * tm.H)
    llm.close()


@pytest.mark.realshape  # each about 5 minutes on a busy 2-core machine; 1.2 GB (Qwen3) / 4.8 GB (Mistral) heads
@pytest.mark.parametrize("preset", ["qwen3-235b-speculators", "mistral-large-123b-speculators"])
def test_issue_heads_convert_at_real_shape(preset, tmp_path):
    """The issue's two speculators heads (random bf16 weights at their real shapes, their flags) against
    metadata-only targets: no refusal, written as eagle3x, peak memory near the file size."""
    import resource
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, str(root / "examples" / "convert_memory.py"), str(tmp_path), "--preset", preset],
                   check=True)
    size = (tmp_path / "head" / "model.safetensors").stat().st_size
    r = subprocess.run([sys.executable, "-m", "eagle3_convert", str(tmp_path / "head"), "--target",
                        str(tmp_path / "target.gguf"), "--outfile", str(tmp_path / "head.gguf")],
                       capture_output=True, text=True)
    try:
        assert r.returncode == 0, r.stderr
        assert read_gguf_header(tmp_path / "head.gguf").meta["general.architecture"] == "eagle3x"
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux: KiB
        assert peak < 1.5 * size, f"peak {peak / 1e9:.2f} GB for a {size / 1e9:.2f} GB head"
    finally:  # pytest keeps the last runs' tmp_path: do not leave 2.4 / 9.6 GB behind
        for f in (tmp_path / "head" / "model.safetensors", tmp_path / "head.gguf"):
            f.unlink(missing_ok=True)
