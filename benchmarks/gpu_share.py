"""Many small runs sharing one GPU: aggregate steps/s of a grid under the local launcher with
``trainer.jobs_per_gpu=N`` against one run alone (the ``mlp_rmt`` preset's model: the value-free
LN-MLP, batch 32, a width x weight-decay grid).

    python benchmarks/gpu_share.py [--jobs 8] [--steps 3000] [--widths 64,128,256,512] [--wds 0,0.01]
                                   [--json out.json] [Hydra overrides ...]

Both sides are timed by the wall clock around the whole command (process start, data and model
building included), so the ratio is what a user sees; with a few thousand steps per run start-up is
a small share. Each run's own ``wall_time_s`` (summary.json) is printed too. Needs CUDA for the
point of it (without a GPU the launcher runs one job per core and this measures CPU sharing).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(args: list[str], cwd: Path) -> float:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "sparsity_exp", "run", *args], cwd=cwd, env=env,
                         capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"command failed ({out.returncode}): {' '.join(args)}\n{out.stderr[-3000:]}")
    return elapsed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=8, help="jobs sharing each GPU (trainer.jobs_per_gpu)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--widths", default="64,128,256,512")
    parser.add_argument("--wds", default="0,0.01")
    parser.add_argument("--json", type=Path, default=None)
    args, overrides = parser.parse_known_args(argv)
    widths, wds = args.widths.split(","), args.wds.split(",")
    grid = len(widths) * len(wds)
    common = ["model=mlp", "model.value=false", "model.norm_affine=false", "probes=none",
              f"trainer.steps={args.steps}", "trainer.batch_size=32", "trainer.progress=false",
              "trainer.checkpoint_every=0", *overrides]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        single = _run([*common, f"model.width={widths[-1]}", "results_dir=single"], tmp)
        sweep = _run(["-m", "hydra/launcher=local", f"trainer.jobs_per_gpu={args.jobs}", *common,
                      f"model.width={args.widths}", f"optim.weight_decay={args.wds}", "results_dir=grid"], tmp)
        summaries = [json.loads(p.read_text()) for p in (tmp / "grid").glob("multirun/*/*/summary.json")]
        single_summary = json.loads(next((tmp / "single").glob("*/summary.json")).read_text())
    assert len(summaries) == grid, f"{len(summaries)} of {grid} grid runs wrote a summary"
    one = args.steps / single
    aggregate = grid * args.steps / sweep
    devices = sorted({s["device"] for s in summaries})
    print(f"one run (width {widths[-1]}): {one:8.1f} steps/s  ({single:.1f} s wall, "
          f"{single_summary['wall_time_s']:.1f} s in the run, {single_summary['device']})")
    print(f"{grid} runs, {args.jobs} per GPU: {aggregate:8.1f} steps/s aggregate  ({sweep:.1f} s wall; "
          f"per-run wall {min(s['wall_time_s'] for s in summaries):.1f}-{max(s['wall_time_s'] for s in summaries):.1f} s; "
          f"devices {devices})")
    print(f"aggregate / one run: {aggregate / one:.2f}x  (goal >= 6x with 8 runs on one GPU)")
    if args.json:
        args.json.write_text(json.dumps({"one_run_steps_per_s": one, "aggregate_steps_per_s": aggregate,
                                         "ratio": aggregate / one, "runs": grid, "jobs_per_gpu": args.jobs,
                                         "devices": devices}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
