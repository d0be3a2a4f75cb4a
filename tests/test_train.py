"""`llama-eagle3 train` end to end: a smoke configuration on a tiny target and on SmolLM2."""

from __future__ import annotations

import json
import subprocess
import sys

import llama_cpp
import pytest

pytest.importorskip("torch")

from llama_eagle3 import Llama  # noqa: E402


def train_cmd(model, out, *extra) -> list[str]:
    return [sys.executable, "-m", "llama_eagle3.cli", "train", "--model", str(model), "--out", str(out),
            "--n-prompts", "16", "--max-new-tokens", "24", "--epochs", "2", "--batch-tokens", "512",
            "--draft-vocab", "64", "--outtype", "f32", *extra]


def check_soft_labels(out, n_vocab: int) -> None:
    """Each step's soft label is the target's distribution of the very token the hard label names
    (greedy answers: that token is its most likely one), in draft ids, summing to 1."""
    import numpy as np

    from llama_eagle3.train.trainer import Samples

    data = Samples(out / "features", np.load(out / "vocab.npz")["d2t"], n_vocab)
    assert data.has_top
    batch = data.collate(list(range(len(data))), steps=4, soft=True)
    for t, (ids, p) in zip(batch.targets, batch.soft):
        valid = t >= 0
        assert valid.sum() > 0
        best = ids[valid].gather(-1, p[valid].argmax(-1, keepdim=True)).squeeze(-1)
        assert (best == t[valid]).float().mean() > 0.98
        assert np.allclose(p[valid].sum(-1).numpy(), 1.0, atol=1e-4)


def test_train_tiny_target_end_to_end(tmp_path, targets):
    out = tmp_path / "head"
    r = subprocess.run(train_cmd(targets["llama"], out), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    for f in ("prompts.jsonl", "samples.jsonl", "vocab.npz", "config.json", "model.safetensors", "head.gguf",
              "report.json", "report.png", "checkpoints/last.pt"):
        assert (out / f).exists(), f
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLMEagle3"] and cfg["draft_vocab_size"] == 64
    assert cfg["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [1, 3, 4]  # SpecForge: output of layer i
    report = json.loads((out / "report.json").read_text())
    assert len(report["final_heldout_accuracy_per_step"]) == 4
    check_soft_labels(out, llama_cpp.Llama(str(targets["llama"]), n_ctx=64, verbose=False).n_vocab())

    # the trained head runs and stays lossless
    plain = llama_cpp.Llama(str(targets["llama"]), n_ctx=256, verbose=False, flash_attn=True)
    spec = Llama(str(targets["llama"]), n_ctx=256, verbose=False, eagle3_head=str(out / "head.gguf"), eagle3_p_min=0.0,
                 eagle3_adaptive=False)
    for p in ("the cat", "in the beginning"):
        assert spec(p, max_tokens=30, temperature=0.0)["choices"][0]["text"] == \
            plain(p, max_tokens=30, temperature=0.0)["choices"][0]["text"]

    # a second run resumes from every stage's files instead of redoing them
    r2 = subprocess.run(train_cmd(targets["llama"], out), capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert "resumed from" in r2.stdout and "answers" not in r2.stdout


@pytest.mark.slow
def test_train_smoke_configuration_on_smollm2(tmp_path, smollm2):
    """The smoke configuration of the shipped head's command (same code, tiny sizes)."""
    out = tmp_path / "smol"
    cmd = [sys.executable, "-m", "llama_eagle3.cli", "train", "--model", str(smollm2), "--out", str(out),
           "--n-prompts", "24", "--max-new-tokens", "48", "--epochs", "1", "--draft-vocab", "1024",
           "--batch-tokens", "2048"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["samples"] > 0 and (out / "head.gguf").stat().st_size < 16 * 2**20
