"""Kill and resume: run a configuration once without interruption, then N times SIGKILL a real
`sparsity-exp run` subprocess and rerun the same command in the same folder until it completes;
report whether each final metrics table equals the uninterrupted one exactly, and whether the
folder is whole (no temporary files left, quicklook.png present, status completed).

    python benchmarks/kill_resume.py --kills 6 --seed 0 [--modes random,checkpoint_write,after_last] [overrides...]

Trials cycle through the kill moments of ``--modes``:
  * random: a kill step drawn uniformly from the run's log steps; SIGKILL as soon as that step's rows
    are in metrics.csv (it lands within a few steps after, possibly mid-write);
  * checkpoint_write: SIGKILL as soon as a checkpoint's temporary file (checkpoints/.step_*.tmp)
    appears, i.e. during torch.save (a larger model widens the window: model.width=512);
  * after_last: SIGKILL as soon as the final checkpoint exists, before the quick-look figure and
    the 'completed' summary.
A kill before the first checkpoint restarts from step 0, a later one resumes. Prints one line per
trial and a final count.
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


def wait_and_kill(proc, run: Path, mode: str, target: int, final_step: int) -> str:
    """SIGKILL ``proc`` at the moment ``mode`` names; say where it was killed."""
    metrics, ckpts = run / "metrics.csv", run / "checkpoints"
    last_ckpt = ckpts / f"step_{final_step:08d}.pt"

    def due() -> bool:
        if mode == "checkpoint_write":
            return ckpts.is_dir() and any(n.startswith(".step_") and n.endswith(".tmp") for n in os.listdir(ckpts))
        if mode == "after_last":
            return last_ckpt.exists()
        return metrics.exists() and f"\n{target}," in metrics.read_text()

    while proc.poll() is None and not due():
        if mode == "random":
            time.sleep(0.002)  # the others poll without pause: their windows are milliseconds
    if proc.poll() is not None:
        return "never (it finished first)"
    proc.kill()
    proc.wait()
    saved = sorted(ckpts.glob("step_*.pt"))
    tmp = sorted(p.name for p in ckpts.glob(".step_*.tmp"))
    last = metrics.read_text().splitlines()[-1].split(",")[0] if metrics.exists() else "none"
    where = {"random": f"after step {target}", "checkpoint_write": "while writing a checkpoint",
             "after_last": "after the final checkpoint"}[mode]
    return (f"{where} (last row on disk: step {last}, newest checkpoint {saved[-1].name if saved else 'none'}"
            f"{', left ' + ', '.join(tmp) if tmp else ''}{', no quicklook' if not (run / 'quicklook.png').exists() else ''})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=5, help="number of trials (one kill each)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    parser.add_argument("--keep", action="store_true", help="keep the run folders")
    parser.add_argument("--modes", default="random,checkpoint_write,after_last",
                        help="kill moments to cycle through (random, checkpoint_write, after_last)")
    args, extra = parser.parse_known_args()
    rng = random.Random(args.seed)
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - {"random", "checkpoint_write", "after_last"}
    if unknown:
        parser.error(f"unknown --modes {sorted(unknown)}")
    work = Path(tempfile.mkdtemp(prefix="kill_resume_"))
    started = time.time()
    subprocess.run(command(work / "whole", extra), env=env(), check=True, capture_output=True)
    wall = time.time() - started
    reference = pd.read_csv(work / "whole" / "metrics.csv")
    final_step = int(json.loads((work / "whole" / "summary.json").read_text())["steps"])
    print(f"uninterrupted: {len(reference)} rows, {final_step} steps, {wall:.1f} s wall (startup included)")
    same = 0
    for trial in range(args.kills):
        run = work / f"trial{trial}"
        mode = modes[trial % len(modes)]
        target = rng.choice(sorted(set(reference.step))[1:-1])
        proc = subprocess.Popen(command(run, extra), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        killed_at = wait_and_kill(proc, run, mode, target, final_step)
        resumed = subprocess.run(command(run, extra), env=env(), capture_output=True, text=True)
        if resumed.returncode != 0:
            print(f"trial {trial} [{mode}]: killed {killed_at}; resume FAILED: {resumed.stderr.strip()[-300:]}")
            continue
        table = pd.read_csv(run / "metrics.csv")
        equal = table.equals(reference)
        status = json.loads((run / "summary.json").read_text())
        leftovers = sorted(p.name for p in run.rglob("*.tmp"))
        whole = not leftovers and (run / "quicklook.png").is_file() and status.get("status") == "completed"
        same += equal and whole
        print(f"trial {trial} [{mode}]: killed {killed_at}; resumed from step {status.get('resumed_from_step', 0)}; "
              f"final metrics {'IDENTICAL' if equal else 'DIFFERENT'} ({len(table)} rows); folder "
              f"{'whole' if whole else f'NOT WHOLE (tmp files {leftovers}, quicklook ' + str((run / 'quicklook.png').is_file()) + ')'}")
    print(f"{same}/{args.kills} resumed runs ended with exactly the uninterrupted metrics table and a whole folder")
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"run folders in {work}")
    return 0 if same == args.kills else 1


if __name__ == "__main__":
    sys.exit(main())
