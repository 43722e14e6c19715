"""Kill and resume: run a configuration once without interruption, then N times SIGKILL a real
`sparsity-exp run` subprocess at a random moment and rerun the same command in the same folder
until it completes; report whether each final metrics table equals the uninterrupted one exactly.

    python benchmarks/kill_resume.py --kills 5 --seed 0 [extra overrides...]

Each trial draws a kill step uniformly from the run's log steps, waits until the run has flushed
that step's rows to metrics.csv and sends SIGKILL at once (it lands within a few steps after,
possibly mid-write); a kill before the first checkpoint restarts from step 0, a later one resumes.
Prints one line per trial and a final count.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
BASE = ["model.width=64", "model.depth=3", "trainer.steps=300", "trainer.batch_size=64", "trainer.log_every=5",
        "trainer.eval_every=25", "trainer.checkpoint_every=20", "trainer.progress=false"]


def command(run_dir: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "sparsity_exp", "run", *BASE, *extra, f"hydra.run.dir={run_dir}"]


def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg", OMP_NUM_THREADS="1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=5, help="number of trials (one kill each)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    parser.add_argument("--keep", action="store_true", help="keep the run folders")
    args, extra = parser.parse_known_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="kill_resume_"))
    started = time.time()
    subprocess.run(command(work / "whole", extra), env=env(), check=True, capture_output=True)
    wall = time.time() - started
    reference = pd.read_csv(work / "whole" / "metrics.csv")
    print(f"uninterrupted: {len(reference)} rows, {wall:.1f} s wall (startup included)")
    same = 0
    for trial in range(args.kills):
        run = work / f"trial{trial}"
        target = rng.choice(sorted(set(reference.step))[1:-1])
        proc = subprocess.Popen(command(run, extra), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        metrics = run / "metrics.csv"
        while proc.poll() is None and not (metrics.exists() and f"\n{target}," in metrics.read_text()):
            time.sleep(0.002)
        if proc.poll() is not None:
            killed_at = "never (it finished first)"
        else:
            proc.kill()
            proc.wait()
            ckpts = sorted((run / "checkpoints").glob("step_*.pt"))
            last = metrics.read_text().splitlines()[-1].split(",")[0]
            killed_at = (f"after step {target} (last row on disk: step {last}, newest checkpoint "
                         f"{ckpts[-1].name if ckpts else 'none'})")
        resumed = subprocess.run(command(run, extra), env=env(), capture_output=True, text=True)
        if resumed.returncode != 0:
            print(f"trial {trial}: killed {killed_at}; resume FAILED: {resumed.stderr.strip()[-300:]}")
            continue
        table = pd.read_csv(run / "metrics.csv")
        equal = table.equals(reference)
        same += equal
        status = json.loads((run / "summary.json").read_text())
        print(f"trial {trial}: killed {killed_at}; resumed from step {status.get('resumed_from_step', 0)}; "
              f"final metrics {'IDENTICAL' if equal else 'DIFFERENT'} ({len(table)} rows)")
    print(f"{same}/{args.kills} resumed runs ended with exactly the uninterrupted metrics table")
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"run folders in {work}")
    return 0 if same == args.kills else 1


if __name__ == "__main__":
    sys.exit(main())
