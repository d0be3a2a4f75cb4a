"""The training report: curves (PNG) and measured acceptance on held-out prompts (JSON)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np


def plot(history: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    steps = np.asarray(history["step"])
    w = max(1, len(steps) // 50)
    smooth = lambda y: np.convolve(y, np.ones(w) / w, mode="valid")  # noqa: E731
    a.plot(steps[w - 1:], smooth(np.asarray(history["loss"])), label="weighted total")
    for k, ys in enumerate(np.asarray(history["step_loss"]).T):
        a.plot(steps[w - 1:], smooth(ys), label=f"step {k}", alpha=0.7)
    a.set_xlabel("optimizer step")
    a.set_ylabel("training loss")
    a.legend()
    for k, ys in enumerate(np.asarray(history["step_acc"]).T):
        b.plot(steps[w - 1:], smooth(ys), alpha=0.5, label=f"step {k} (train)")
    if history["eval_step"]:
        for k, ys in enumerate(np.asarray(history["eval_acc"]).T):
            b.plot(history["eval_step"], ys, "o-", label=f"step {k} (held-out)")
    b.set_xlabel("optimizer step")
    b.set_ylabel("top-1 accuracy")
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_report(out: Path, model: str, head: str, history: dict, heldout: Optional[Path], extra: dict,
                 n_gpu_layers: int = 0, log=print) -> dict:
    report = dict(extra)
    report["final_heldout_accuracy_per_step"] = history["eval_acc"][-1] if history["eval_acc"] else None
    if "best_step" in history:
        best = history["eval_step"].index(history["best_step"])
        report["kept_step"] = history["best_step"]
        report["kept_heldout_accuracy_per_step"] = history["eval_acc"][best]
    if heldout is not None:
        from ..bench import bench, print_table

        s = bench(model, head, heldout, max_tokens=128, draft_max=4, p_min=0.0, methods=("plain", "eagle3"),
                  n_gpu_layers=n_gpu_layers, log=log)
        print_table(s, log=log)
        report["heldout_bench"] = {k: v for k, v in s.items() if k != "rows"}
    plot(history, out / "report.png")
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return report
