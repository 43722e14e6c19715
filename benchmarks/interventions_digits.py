"""Vanilla vs the paper's interventions on the LN-MLP with the embedded digits (issue 5's table).

Runs three arms at the default steps for each seed, then prints the final test activation sparsity
per layer and its mean, and the final test accuracy, as mean +- std over seeds (and per seed):

    vanilla      (defaults)
    sparsified   modules=sparsified   (JSReLU + zeroth biases + restricted norm)
    noise        noise=on             (token-wise weight noise, rho 0.1, on the key)

    PYTHONPATH=. python benchmarks/interventions_digits.py --jobs 2        # from the repository root
    PYTHONPATH=. python benchmarks/interventions_digits.py --seeds 0 1 2 -- trainer.steps=3000

Run folders go to results/benchmarks/interventions_<time>/ (one per arm and seed).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ARMS = {"vanilla": [], "sparsified": ["modules=sparsified"], "noise": ["noise=on"]}


def run_one(arm: str, seed: int, extra: list[str], out: str) -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from hydra import compose, initialize_config_dir

    from sparsity_exp.config import conf_dir, register_resolvers
    from sparsity_exp.run import execute

    register_resolvers()
    overrides = [*ARMS[arm], f"seed={seed}", "trainer.progress=false", *extra]
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    summary = execute(cfg, Path(out) / f"{arm}_seed{seed}")
    return {"arm": arm, "seed": seed, "sparsity": summary["test"]["activation_sparsity"],
            "accuracy": summary["test"]["accuracy"], "wall_s": summary["wall_time_s"]}


def _fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f}±{statistics.stdev(values):.3f}"


def table(results: list[dict]) -> str:
    layers = sorted((k for k in results[0]["sparsity"] if k != "avg"), key=int)
    head = ["arm", "seeds"] + [f"L{k}" for k in layers] + ["mean", "test acc"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in ARMS:
        rs = [r for r in results if r["arm"] == arm]
        if not rs:
            continue
        cells = [arm, ",".join(str(r["seed"]) for r in rs)]
        cells += [_fmt([r["sparsity"][k] for r in rs]) for k in layers + ["avg"]]
        cells.append(_fmt([r["accuracy"] for r in rs]))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("per seed: " + "; ".join(f"{r['arm']}/{r['seed']}: mean {r['sparsity']['avg']:.3f} acc "
                                          f"{r['accuracy']:.3f} ({r['wall_s']:.0f} s)" for r in results))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (processes)")
    parser.add_argument("--out", default=None, help="folder for the run folders")
    parser.add_argument("extra", nargs="*", help="Hydra overrides for every run (after --)")
    args = parser.parse_args(argv)
    out = args.out or f"results/benchmarks/interventions_{time.strftime('%Y%m%d-%H%M%S')}"
    jobs = [(arm, seed, args.extra, out) for arm in args.arms for seed in args.seeds]
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(run_one, *zip(*jobs)))
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\nLN-MLP on digits, final test activation sparsity (fraction of zeros) per layer, mean over layers, "
          f"and test accuracy; mean±std over seeds. Overrides: {' '.join(args.extra) or '(defaults)'}")
    print(table(results))
    print(f"\n{len(jobs)} runs in {time.perf_counter() - started:.0f} s; run folders in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
