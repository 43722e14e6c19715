"""Device check (needs CUDA): a run on the GPU checkpoints the CUDA random state, and a run stopped
by SIGUSR1 and resumed ends with the same metrics table as an uninterrupted one. Exactness on a GPU
depends on its kernels being deterministic; the script prints the largest difference otherwise.

    PYTHONPATH=. python benchmarks/gpu_resume_check.py
"""
from __future__ import annotations

import os
import signal
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch
from hydra import compose, initialize_config_dir

from sparsity_exp.lifecycle.checkpoint import list_checkpoints, load_checkpoint
from sparsity_exp.config import conf_dir, register_resolvers
from sparsity_exp.lifecycle.preempt import Preempted
from sparsity_exp.run import execute
from sparsity_exp.train import Trainer

OVERRIDES = ["model.width=64", "model.depth=3", "trainer.steps=60", "trainer.batch_size=64", "trainer.log_every=5",
             "trainer.eval_every=25", "trainer.checkpoint_every=20", "trainer.progress=false", "trainer.device=cuda"]
STOP_AT = 33


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 0
    register_resolvers()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=OVERRIDES)
    work = Path(tempfile.mkdtemp(prefix="gpu_resume_"))
    execute(cfg, work / "whole")
    state = load_checkpoint(list_checkpoints(work / "whole")[-1][1])
    print(f"checkpoint rng: {sorted(state['rng'])}, CUDA generator states: {len(state['rng'].get('cuda', []))}")

    original = Trainer.train_step

    def stopping_step(self, batch):
        original(self, batch)
        if self.step == STOP_AT:
            os.kill(os.getpid(), signal.SIGUSR1)

    Trainer.train_step = stopping_step
    try:
        execute(cfg, work / "cut")
    except Preempted as exc:
        print(f"preempted: {exc}")
    finally:
        Trainer.train_step = original
    summary = execute(cfg, work / "cut")
    whole, cut = (pd.read_csv(work / d / "metrics.csv") for d in ("whole", "cut"))
    same = whole.equals(cut)
    print(f"resumed on {summary['device']} from step {summary.get('resumed_from_step')}: metrics table "
          f"{'IDENTICAL' if same else 'DIFFERENT'} ({len(whole)} vs {len(cut)} rows)")
    if not same and len(whole) == len(cut):
        print(f"largest |difference| of a value: {(whole.value - cut.value).abs().max():.3g}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
