"""Speed cost of `sparsity-exp study --reproducible` (study/machine.py) on one study arm run.

The arm (default `mlp` of conf/study/cpu.yaml, on the full Fashion-MNIST when --data-root holds it,
else the digits) runs as `python -m sparsity_exp run <arm overrides> trainer.steps=S` in a child process,
alternating the default environment and the reproducible one (ATEN_CPU_CAPABILITY=default,
MKL_CBWR=COMPATIBLE, oneDNN off, one thread, deterministic algorithms), --repeats times each. Printed:
median wall and CPU seconds of the child per mode, their ratio, the load average, each mode's CPU
capability as the run saw it, and whether the two modes' final metrics differ (they may: other kernels
sum in another order; the point of the mode is that another machine in the same mode gives its numbers).

    python benchmarks/reproducible_cost.py [--steps 300] [--repeats 3] [--threads 1]
        [--data-root /usr/share/datasets/fashion-mnist] [--json out.json]

--threads sets OMP_NUM_THREADS for the default mode (1: the same thread count as the reproducible mode,
so the ratio is the kernels' cost alone; 0: torch's default, the study's default mode).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def arm_overrides(suite: str, arm: str, data_root: str, out: Path) -> list[str]:
    from sparsity_exp.config import conf_dir
    from sparsity_exp.study.execute import choose_dataset
    from sparsity_exp.study.suite import load_suite, suite_path

    s = load_suite(suite_path(suite, conf_dir()))
    chosen = next(a for a in s.used_arms() if a.name == arm)
    _, data, _ = choose_dataset(s, [f"data.root={data_root}"], out)
    return [*(data if chosen.data == "auto" else []), *chosen.overrides]


def one_run(overrides: list[str], env: dict, out: Path) -> tuple[float, float, dict]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sparsity_exp", "run", *overrides, f"results_dir={out}",
                           "trainer.progress=false"], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"run failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    import pandas as pd

    metrics = next(out.glob("*/metrics.csv"))
    table = pd.read_csv(metrics)
    last = table[table.step == table.step.max()]
    final = {f"{r.probe}.{r.metric}.{r.split}.{r.layer}": float(r.value) for r in last.itertuples()}
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), final


def main() -> int:
    from sparsity_exp.study.machine import mode_env, runs_fingerprint

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", default="cpu")
    p.add_argument("--arm", default="mlp")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-root", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        overrides = arm_overrides(args.suite, args.arm, args.data_root, tmp / "data") + [f"trainer.steps={args.steps}"]
        envs = {"default": mode_env(False), "reproducible": mode_env(True)}
        if args.threads:
            envs["default"]["OMP_NUM_THREADS"] = str(args.threads)
        for env in envs.values():
            env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        times = {m: [] for m in envs}
        finals = {}
        for k in range(args.repeats):
            for mode, env in envs.items():
                wall, cpu, final = one_run(overrides, env, tmp / f"{mode}_{k}")
                times[mode].append((wall, cpu))
                finals.setdefault(mode, final)
        load = os.getloadavg()
        result = {"arm": args.arm, "steps": args.steps, "repeats": args.repeats, "load_average": load,
                  "capability": {"default": runs_fingerprint(False)["cpu_capability"],
                                 "reproducible": runs_fingerprint(True)["cpu_capability"]}}
        for mode in envs:
            result[mode] = {"wall_s": statistics.median(w for w, _ in times[mode]),
                            "cpu_s": statistics.median(c for _, c in times[mode])}
        result["cpu_ratio"] = result["reproducible"]["cpu_s"] / result["default"]["cpu_s"]
        result["wall_ratio"] = result["reproducible"]["wall_s"] / result["default"]["wall_s"]
        keys = set(finals["default"]) & set(finals["reproducible"])
        result["max_abs_metric_difference"] = max(abs(finals["default"][k] - finals["reproducible"][k]) for k in keys)
        print(json.dumps(result, indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
