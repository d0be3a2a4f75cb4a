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
    observe = llm._spec.observe
    llm._spec.observe = lambda f, ids: (rows.append(f.copy()), observe(f, ids))
    i = 0
    for c in chunks:
        llm.eval(tokens[i : i + c])
        i += c
    llm._spec.observe = observe
    return np.concatenate(rows)


def make(target, head, mode, **kw) -> Llama:
    return Llama(str(target), n_ctx=256, n_batch=16, verbose=False, eagle3_head=str(head), eagle3_capture=mode, **kw)


def test_hook_equals_builtin(targets, heads):
    tokens = list(range(5, 45))
    hook, builtin = make(targets["llama"], heads["llama"], "hook"), make(targets["llama"], heads["llama"], "builtin")
    assert (hook._capture.mode, builtin._capture.mode) == ("hook", "builtin")
    a = captured(hook, tokens, [40])  # 40 tokens with n_batch 16: three ubatches
    b = captured(builtin, tokens, [40])
    assert a.shape == (40, 3 * tm.H)
    assert np.array_equal(a, b)  # bit-identical
    assert np.abs(a).max() > 0


@pytest.mark.parametrize("arch", ["qwen2", "gemma3"])
def test_hook_on_architectures_without_builtin(arch, targets, heads):
    llm = make(targets[arch], heads[arch], "auto")
    assert llm._capture.mode == "hook"
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
