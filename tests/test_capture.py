"""Hidden-state capture: the graph hook equals llama.cpp's built-in extraction, on every backend path
it can take here, and works on architectures the built-in path cannot capture."""

from __future__ import annotations

import numpy as np
import pytest

import tiny_models as tm
from llama_eagle3 import Llama


def captured(llm: Llama, tokens: list[int], chunks: list[int]) -> np.ndarray:
    """Features the proposer receives while the target evaluates tokens in the given chunk sizes."""
    rows: list[np.ndarray] = []
    observe = llm._engine.drafter.observe
    llm._engine.drafter.observe = lambda f, ids: (rows.append(f.copy()), observe(f, ids))
    i = 0
    for c in chunks:
        llm.eval(tokens[i : i + c])
        i += c
    llm._engine.drafter.observe = observe
    return np.concatenate(rows)


def make(target, head, mode, **kw) -> Llama:
    return Llama(str(target), n_ctx=256, n_batch=16, verbose=False, eagle3_head=str(head), eagle3_capture=mode, **kw)


def test_hook_equals_builtin(targets, heads):
    tokens = list(range(5, 45))
    hook, builtin = make(targets["llama"], heads["llama"], "hook"), make(targets["llama"], heads["llama"], "builtin")
    assert (hook._engine.capture.mode, builtin._engine.capture.mode) == ("hook", "builtin")
    a = captured(hook, tokens, [40])  # 40 tokens with n_batch 16: three ubatches
    b = captured(builtin, tokens, [40])
    assert a.shape == (40, 3 * tm.H)
    assert np.array_equal(a, b)  # bit-identical
    assert np.abs(a).max() > 0


@pytest.mark.parametrize("arch", ["qwen2", "gemma3"])
def test_hook_on_architectures_without_builtin(arch, targets, heads):
    llm = make(targets[arch], heads[arch], "auto")
    assert llm._engine.capture.mode == "hook"
    tokens = list(range(7, 37))
    batched = captured(llm, tokens, [30])
    llm.reset()
    stepwise = captured(llm, tokens, [1] * 30)
    assert batched.shape == (30, 3 * tm.H)
    # each third is one layer's residual stream; the three layers differ
    low, mid, high = np.split(batched, 3, axis=1)
    assert not np.allclose(low, mid) and not np.allclose(mid, high)
    # the same positions decoded one at a time give the same states, up to the f32 matmul kernels
    # llama.cpp picks by batch size (the rows are in order: a shifted row would differ by O(1))
    np.testing.assert_allclose(batched, stepwise, rtol=0, atol=5e-3)


def test_builtin_refused_where_unsupported(targets, heads):
    with pytest.raises(ValueError, match="does not support architecture 'gemma3'"):
        make(targets["gemma3"], heads["gemma3"], "builtin")


@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # built-in extraction, graph hook
def test_batched_generation_captures_each_sequences_states_in_order(arch, targets, heads):
    """The trainer's features come from the batched generator's own decodes (several sequences
    per decode): every sample's rows equal the states the runtime captures for the same tokens."""
    import llama_cpp

    from llama_eagle3.capture import FeatureCapture
    from llama_eagle3.train.distill import BatchedGenerator

    ref = make(targets[arch], heads[arch], "auto")
    base = llama_cpp.Llama(str(targets[arch]), n_ctx=256, verbose=False)
    capture = FeatureCapture(arch, ref._engine.capture.layer_ids, tm.H, tm.N_LAYER)
    gen = BatchedGenerator(base, n_seq=3, max_len=64, capture=capture)
    prompts = [[1, *range(5 + 3 * i, 9 + 5 * i)] for i in range(5)]  # unequal lengths, 5 prompts on 3 slots
    got: dict[int, tuple] = {}
    gen.generate(prompts, max_new=12, on_done=lambda i, *rec: got.__setitem__(i, rec), keep_top=4)
    gen.close()
    assert sorted(got) == list(range(5))
    for i, (resp, feats, (top_ids, top_logp)) in got.items():
        tokens = prompts[i] + resp
        assert feats.shape == (len(tokens), 3 * tm.H) and feats.dtype == np.float16
        # the target's distribution of token P+1 sits at row P, from the last prompt row on (greedy:
        # its most likely token is the one generated); rows without logits hold id -1
        n_prompt = len(prompts[i])
        assert top_ids.shape == top_logp.shape == (len(tokens), 4)
        assert (top_ids[: n_prompt - 1] == -1).all()
        rows = np.arange(n_prompt - 1, len(tokens) - 1)
        assert (top_ids[rows, top_logp[rows].argmax(1)] == np.asarray(tokens)[rows + 1]).all()
        assert (top_logp[rows] <= 0).all() and (np.exp(top_logp[rows].astype(np.float32)).sum(1) <= 1.001).all()
        ref.reset()
        want = captured(ref, tokens, [len(tokens)])
        # the last token is never decoded (its row is unused by the head) unless the sequence ended
        # on an end-of-generation token. The generator's decodes mix sequences and batch sizes, so
        # llama.cpp's kernels differ a little (measured: <= 1.5% per row); a row of another
        # position or sequence is off by O(1) (the prompt rows).
        got_rows, want_rows = feats[:-1].astype(np.float32), want[:-1]
        err = np.linalg.norm(got_rows - want_rows, axis=1) / np.linalg.norm(want_rows, axis=1)
        assert err.max() < 0.05, (i, err.round(3))


def test_batched_generation_with_logits_rows_across_a_chunk_boundary(targets):
    """513 prompt rows with n_batch 512: the rows that want logits must all land in the last
    chunk (a decode split 512 + 1 lost three sequences' logits and spun forever)."""
    import threading

    import llama_cpp

    from llama_eagle3.train.distill import BatchedGenerator

    base = llama_cpp.Llama(str(targets["llama"]), n_ctx=256, verbose=False)
    gen = BatchedGenerator(base, n_seq=4, max_len=160)
    assert gen.n_batch == 512
    prompts = [[1, *(5 + (7 * i + j) % 90 for j in range(n - 1))] for i, n in enumerate([128, 128, 128, 129])]
    out: list = []
    worker = threading.Thread(target=lambda: out.append(gen.generate(prompts, max_new=8)), daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "batched generation made no progress"
    assert len(out[0]) == 4 and all(1 <= len(r) <= 8 for r in out[0])
    gen.close()
