"""Training-time-test training of the head on captured features, with checkpoints and resume."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from eagle3_convert.reference import logits
from .features import read_shards
from .model import HeadModule


@dataclass
class TrainConfig:
    steps: int = 4                 # unrolled draft steps (the chain depth trained for)
    step_decay: float = 0.8        # loss weight of step k: decay**k
    soft_weight: float = 0.5       # step loss = (1 - w) CE(target's token) + w CE(target's top-k distribution)
    epochs: float = 3.0
    batch_tokens: int = 4096       # padded tokens per optimizer step
    lr: float = 1e-3
    warmup: int = 50
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    heldout_fraction: float = 0.05
    checkpoint_every: int = 100    # optimizer steps
    seed: int = 0
    threads: int = 2


@dataclass
class Batch:
    """feats [B, T, 3Ht], tokens [B, T]; per step k: targets[k] [B, T], the draft id of t[P+k+2]
    (-100: no loss: a prompt token or one outside the draft vocabulary), and, when the shards
    hold the target's top-k, soft[k] = (draft ids [B, T, K] (-1 outside the vocabulary), their
    probabilities renormalised over the draft vocabulary [B, T, K]): the target's distribution
    of that same token."""
    feats: torch.Tensor
    tokens: torch.Tensor
    targets: list[torch.Tensor]
    soft: Optional[list[tuple[torch.Tensor, torch.Tensor]]]

    def to(self, device: torch.device) -> "Batch":
        soft = None if self.soft is None else [(i.to(device), p.to(device)) for i, p in self.soft]
        return Batch(self.feats.to(device), self.tokens.to(device), [t.to(device) for t in self.targets], soft)


class Samples:
    """All samples of the feature shards in memory (features stay fp16 until batched)."""

    def __init__(self, feature_dir: Path, d2t: np.ndarray, n_vocab: int):
        self.tokens, self.loss, self.feats = [], [], []
        self.top_ids: list[np.ndarray] = []
        self.top_logp: list[np.ndarray] = []
        for shard in read_shards(feature_dir):
            s = shard["starts"]
            for a, b in zip(s[:-1], s[1:]):
                self.tokens.append(shard["tokens"][a:b])
                self.loss.append(shard["loss"][a:b])
                self.feats.append(shard["feats"][a:b])
                if "top_ids" in shard:
                    self.top_ids.append(shard["top_ids"][a:b])
                    self.top_logp.append(shard["top_logp"][a:b])
        self.has_top = len(self.top_ids) == len(self.tokens) > 0
        self.t2d = np.full(n_vocab, -1, np.int64)
        self.t2d[d2t] = np.arange(len(d2t))

    def __len__(self) -> int:
        return len(self.tokens)

    def select(self, keep: np.ndarray) -> None:
        """Keeps only the samples at indices `keep`, in that order."""
        for name in ("tokens", "loss", "feats", "top_ids", "top_logp"):
            values = getattr(self, name)
            if values:
                setattr(self, name, [values[i] for i in keep])

    def batches(self, idx: np.ndarray, batch_tokens: int, rng: Optional[np.random.Generator]):
        """Length-bucketed batches of sample indices, shuffled when rng is given."""
        order = idx[np.argsort([len(self.tokens[i]) for i in idx], kind="stable")]
        out, cur, longest = [], [], 0
        for i in order:
            longest2 = max(longest, len(self.tokens[i]))
            if cur and longest2 * (len(cur) + 1) > batch_tokens:
                out.append(cur)
                cur, longest2 = [], len(self.tokens[i])
            cur.append(i)
            longest = longest2
        if cur:
            out.append(cur)
        if rng is not None:
            rng.shuffle(out)
        return out

    def collate(self, batch: list[int], steps: int, soft: bool) -> Batch:
        T = max(len(self.tokens[i]) for i in batch)
        B, width = len(batch), self.feats[batch[0]].shape[1]
        feats = np.zeros((B, T, width), np.float32)
        tokens = np.zeros((B, T), np.int64)
        loss = np.zeros((B, T), bool)
        soft = soft and self.has_top
        K = self.top_ids[batch[0]].shape[1] if soft else 0
        top_ids = np.full((B, T, K), -1, np.int64)
        top_p = np.zeros((B, T, K), np.float32)
        for r, i in enumerate(batch):
            n = len(self.tokens[i])
            feats[r, :n] = self.feats[i]
            tokens[r, :n] = self.tokens[i]
            loss[r, :n] = self.loss[i] == 1
            if soft:
                ids = self.top_ids[i]
                top_ids[r, :n] = np.where(ids >= 0, self.t2d[np.maximum(ids, 0)], -1)
                top_p[r, :n] = np.where(top_ids[r, :n] >= 0, np.exp(self.top_logp[i].astype(np.float32)), 0.0)
        if soft:
            top_p /= np.maximum(top_p.sum(-1, keepdims=True), 1e-9)
        targets, dists = [], []
        for k in range(steps):
            shift = k + 2
            t = np.full((B, T), -100, np.int64)
            ids, p = np.full((B, T, K), -1, np.int64), np.zeros((B, T, K), np.float32)
            if shift < T:
                tgt = self.t2d[tokens[:, shift:]]
                ok = loss[:, shift:] & (tgt >= 0)
                t[:, : T - shift] = np.where(ok, tgt, -100)
                # row P + k + 1 holds the target's distribution of t[P+k+2]
                ids[:, : T - shift], p[:, : T - shift] = top_ids[:, shift - 1 : T - 1], top_p[:, shift - 1 : T - 1]
            targets.append(torch.from_numpy(t))
            dists.append((torch.from_numpy(ids), torch.from_numpy(p)))
        return Batch(torch.from_numpy(feats), torch.from_numpy(tokens), targets, dists if soft else None)


def _step_metrics(model: HeadModule, hs: list[torch.Tensor], batch: Batch, cfg: TrainConfig):
    """Weighted loss and (loss, top-1 accuracy, rows) per step; logits only where a target exists."""
    loss = torch.zeros((), device=model.lm_head.device)
    per_step = []
    for k, (h, t) in enumerate(zip(hs, batch.targets)):
        valid = t >= 0
        n = int(valid.sum())
        if n == 0:
            per_step.append((0.0, 0.0, 0))
            continue
        z = logits(model, model.config, h[valid])
        logq = torch.log_softmax(z, -1)                                               # [n, Vd]
        lk = torch.nn.functional.nll_loss(logq, t[valid])
        if batch.soft is not None and cfg.soft_weight > 0:
            ids, p = batch.soft[k][0][valid], batch.soft[k][1][valid]                 # [n, K]
            soft = -(p * logq.gather(-1, ids.clamp(min=0))).sum(-1).mean()
            lk = (1 - cfg.soft_weight) * lk + cfg.soft_weight * soft
        acc = (z.argmax(-1) == t[valid]).float().mean()
        loss = loss + cfg.step_decay ** k * lk
        per_step.append((float(lk.detach()), float(acc), n))
    return loss, per_step


def _device(model: HeadModule) -> torch.device:
    return model.lm_head.device


def evaluate(model: HeadModule, data: Samples, idx: np.ndarray, cfg: TrainConfig) -> list[float]:
    """Per-step top-1 accuracy on held-out samples."""
    hits = np.zeros(cfg.steps)
    counts = np.zeros(cfg.steps)
    with torch.no_grad():
        for batch in data.batches(idx, cfg.batch_tokens, None):
            b = data.collate(batch, cfg.steps, soft=False).to(_device(model))
            _, per_step = _step_metrics(model, model.ttt(b.feats, b.tokens, cfg.steps), b, cfg)
            for k, (_, acc, n) in enumerate(per_step):
                hits[k] += acc * n
                counts[k] += n
    return (hits / np.maximum(counts, 1)).tolist()


def train(model: HeadModule, data: Samples, out: Path, cfg: TrainConfig, log=print) -> dict:
    """Trains in place (on the GPU when torch sees one); resumes from out/checkpoints/last.pt.
    Ends with the weights of the evaluation with the best mean held-out accuracy
    (checkpoints/best.pt): later epochs that only memorise the training samples are dropped.
    Returns the training history."""
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    if torch.cuda.is_available():
        model.cuda()
    log(f"training on {_device(model)}")
    rng = np.random.default_rng(cfg.seed)
    idx = rng.permutation(len(data))
    n_held = max(1, int(len(idx) * cfg.heldout_fraction))
    held, train_idx = idx[:n_held], idx[n_held:]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    epoch_batches = data.batches(train_idx, cfg.batch_tokens, rng)
    total = max(1, int(len(epoch_batches) * cfg.epochs))

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        frac = (step - cfg.warmup) / max(1, total - cfg.warmup)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))

    ckpt_dir = out / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    ckpt, best_ckpt = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    history = {"step": [], "loss": [], "step_loss": [], "step_acc": [], "eval_step": [], "eval_acc": []}
    step = 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False, map_location=_device(model))
        model.load_state_dict(state["model"], strict=False)
        opt.load_state_dict(state["opt"])
        step, history = state["step"], state["history"]
        log(f"resumed from {ckpt} at step {step}/{total} (the epoch's order is drawn anew)")

    def save() -> None:
        tmp = ckpt_dir / "last.pt.tmp"
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "history": history,
                    "config": asdict(cfg)}, tmp)
        tmp.rename(ckpt)

    t0 = time.time()
    batches: list = []
    while step < total:
        if not batches:
            batches = data.batches(train_idx, cfg.batch_tokens, np.random.default_rng(cfg.seed + step))
        batch = batches.pop()
        b = data.collate(batch, cfg.steps, soft=cfg.soft_weight > 0).to(_device(model))
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss, per_step = _step_metrics(model, model.ttt(b.feats, b.tokens, cfg.steps), b, cfg)
        opt.zero_grad()
        loss.backward()
        loss_value = float(loss.detach())
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        history["step"].append(step)
        history["loss"].append(loss_value)
        history["step_loss"].append([p[0] for p in per_step])
        history["step_acc"].append([p[1] for p in per_step])
        if step % 10 == 0 or step == total:
            rate = step / max(time.time() - t0, 1e-9)
            accs = " ".join(f"{a:.2f}" for _, a, _ in per_step)
            log(f"step {step}/{total} loss {loss_value:.3f} acc/step [{accs}] lr {lr_at(step):.2e} "
                f"({rate:.2f} steps/s, ~{(total - step) / max(rate, 1e-9) / 60:.0f} min left)")
        if step % cfg.checkpoint_every == 0 or step == total:
            history["eval_step"].append(step)
            history["eval_acc"].append(evaluate(model, data, held, cfg))
            log(f"held-out acc/step {[round(a, 3) for a in history['eval_acc'][-1]]}")
            if np.mean(history["eval_acc"][-1]) >= max(np.mean(a) for a in history["eval_acc"]):
                torch.save({"model": model.state_dict(), "step": step}, best_ckpt)
            save()
    if best_ckpt.exists():
        best = torch.load(best_ckpt, weights_only=False, map_location=_device(model))
        model.load_state_dict(best["model"], strict=False)
        history["best_step"] = best["step"]
        log(f"keeping the weights of step {best['step']} (best held-out accuracy)")
    (out / "train_history.json").write_text(json.dumps(history))
    return history
