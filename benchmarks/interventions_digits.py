"""Vanilla vs the paper's interventions on the LN-MLP with the embedded digits (issue 5's table).

Runs three arms at the default steps for each seed, then prints the final test activation sparsity
per layer and its mean, and the final test accuracy, as mean +- std over seeds (and per seed):

    vanilla      (defaults)
    sparsified   modules=sparsified   (JSReLU + zeroth biases + restricted norm)
    noise        noise=on             (token-wise weight noise, rho 0.1, on the key)

    PYTHONPATH=. python benchmarks/interventions_digits.py --jobs 2        # from the repository root
    PYTHONPATH=. python benchmarks/interventions_digits.py --jobs 2 --arms vanilla sparsified noise jsrelu zb_rn \
        -- trainer.grad_clip=1                     # the ablations; overrides after --
    PYTHONPATH=. python benchmarks/interventions_digits.py --table-only results/benchmarks/interventions_<time>

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

ARMS = {"vanilla": [], "sparsified": ["modules=sparsified"], "noise": ["noise=on"],
        # ablations (not run unless named with --arms): JSReLU alone; zeroth biases + restricted norm with ReLU
        "jsrelu": ["activation=jsrelu"], "zb_rn": ["modules=sparsified", "modules.activation=null"]}
DEFAULT_ARMS = ["vanilla", "sparsified", "noise"]


def run_one(arm: str, seed: int, extra: list[str], out: str) -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from hydra import compose, initialize_config_dir

    from sparsity_exp.config import conf_dir, register_resolvers
    from sparsity_exp.run import execute

    register_resolvers()
    overrides = [*ARMS[arm], f"seed={seed}", "trainer.progress=false", *extra]
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    try:
        execute(cfg, Path(out) / f"{arm}_seed{seed}")
    except Exception:  # a diverged run keeps its folder (summary.json says why); the grid goes on
        pass
    return read_result(Path(out) / f"{arm}_seed{seed}", arm, seed)


def read_result(run: Path, arm: str, seed: int) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    if summary.get("status") != "completed":
        return {"arm": arm, "seed": seed, "failed": summary.get("error", summary.get("status"))}
    return {"arm": arm, "seed": seed, "sparsity": summary["test"]["activation_sparsity"],
            "accuracy": summary["test"]["accuracy"], "wall_s": summary["wall_time_s"]}


def _fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f}±{statistics.stdev(values):.3f}"


def table(results: list[dict]) -> str:
    done = [r for r in results if "failed" not in r]
    layers = sorted((k for k in done[0]["sparsity"] if k != "avg"), key=int) if done else []
    head = ["arm", "seeds"] + [f"L{k}" for k in layers] + ["mean", "test acc"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in ARMS:
        rs = [r for r in done if r["arm"] == arm]
        failed = [r for r in results if r["arm"] == arm and "failed" in r]
        if failed:
            lines.append(f"| {arm} | {','.join(str(r['seed']) for r in failed)} | failed: {failed[0]['failed'][:70]} |")
        if not rs:
            continue
        cells = [arm, ",".join(str(r["seed"]) for r in rs)]
        cells += [_fmt([r["sparsity"][k] for r in rs]) for k in layers + ["avg"]]
        cells.append(_fmt([r["accuracy"] for r in rs]))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("per seed: " + "; ".join(f"{r['arm']}/{r['seed']}: mean {r['sparsity']['avg']:.3f} acc "
                                          f"{r['accuracy']:.3f} ({r['wall_s']:.0f} s)" for r in done))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=DEFAULT_ARMS, choices=list(ARMS))
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (processes)")
    parser.add_argument("--out", default=None, help="folder for the run folders")
    parser.add_argument("--table-only", metavar="DIR", help="print the table of an earlier grid's folder, run nothing")
    parser.add_argument("extra", nargs="*", help="Hydra overrides for every run (after --)")
    args = parser.parse_args(argv)
    if args.table_only:
        runs = sorted(p for p in Path(args.table_only).iterdir() if (p / "summary.json").exists())
        print(table([read_result(p, p.name.rsplit("_seed", 1)[0], int(p.name.rsplit("_seed", 1)[1])) for p in runs]))
        return 0
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
