"""Trains this head's recipe on a fraction of an existing training run's answers and benches it
(the data-scaling table of README.md).

    python heads/smollm2-135m-instruct/data_scaling.py RUN_DIR FRACTION EPOCHS [CHECKPOINT_EVERY]

RUN_DIR: the output directory of a finished `llama-eagle3 train` (its features/, prompts.jsonl,
samples.jsonl and vocab.npz are reused through symlinks); the result goes to
RUN_DIR-FRACTION/ (report.json holds the held-out benchmark)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

import llama_eagle3.train.trainer as trainer
from llama_eagle3.defaults import smollm2_path
from llama_eagle3.train.pipeline import DataConfig, run

REUSED = ("features", "prompts.jsonl", "samples.jsonl", "vocab.npz")


def subset_samples(fraction: float, seed: int = 1) -> type:
    """trainer.Samples keeping a random `fraction` of the samples (the held-out split is drawn after)."""
    class Subset(trainer.Samples):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            n = len(self)
            self.select(np.sort(np.random.default_rng(seed).permutation(n)[: round(fraction * n)]))
    return Subset


def main() -> None:
    src, fraction, epochs = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    every = int(sys.argv[4]) if len(sys.argv) > 4 else 50
    out = Path(f"{src}-{fraction}")
    out.mkdir(parents=True, exist_ok=True)
    for name in REUSED:
        if not (out / name).exists():
            os.symlink((src / name).resolve(), out / name)
    # pipeline.run imports trainer.Samples when it is called, so the subset class takes its place
    trainer.Samples = subset_samples(fraction)
    data_cfg = DataConfig(**json.loads((src / "data_config.json").read_text()))
    train_cfg = trainer.TrainConfig(epochs=epochs, batch_tokens=2048, lr=2e-3, checkpoint_every=every)
    heldout = Path(__file__).resolve().parents[2] / "examples" / "prompts" / "heldout.jsonl"
    report = run(str(smollm2_path()), out, data_cfg, train_cfg, heldout=heldout)
    spec = report["heldout_bench"]["speculative"]["eagle3"]
    print(f"{fraction}: {report['tokens']} tokens, trained {report['train_seconds'] / 60:.1f} min, held-out "
          f"accuracy {report['kept_heldout_accuracy_per_step']}, mean accepted length "
          f"{spec['mean_accepted_length']:.2f}, acceptance {spec['acceptance_at']}")


if __name__ == "__main__":
    main()
