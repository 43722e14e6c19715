"""Cost of the probes on the default LN-MLP run (digits, 1500 SGD steps).

Prints
  1. per probe: seconds per call (an observed training step's extra time for train-batch probes,
     an evaluation's extra time for test-set probes, one measure() for standalone ones) and its
     share of the `none` run's wall time at the cadence of conf/probes/full.yaml;
  2. wall and CPU time of whole runs with probes=none|cheap|default|full and the ratios against none
     (targets: cheap <= 1.05, default <= 1.25).

    OMP_NUM_THREADS=1 python benchmarks/probe_cost.py [--rounds 7] [--presets none,cheap] [--skip-per-probe]
        [override ...]

Timings on a shared machine are noisy. The presets' whole runs alternate in rounds in this one process
(benchmarks/rounds.py: one run of each preset per round, the order reversed every other round); each
round gives one ratio per preset against the none run of the same round, and the figure is the median
of those ratios with its order-statistic interval (95%, or [min, max] below 6 rounds), for wall and
for this process's CPU time, with the load average over the rounds and the rounds that an interval of
+-2% would need at the spread seen. Shorter runs (trainer.steps=300) give more rounds for the time.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hydra import compose, initialize_config_dir  # noqa: E402

from sparsity_exp.config import conf_dir, register_resolvers  # noqa: E402
from sparsity_exp.probes import Probe, build_probes, observing  # noqa: E402
from sparsity_exp.probes.base import ProbeContext  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rounds import fmt_load, fmt_ratio, load_summary, ratio_summary, run_rounds  # noqa: E402

PRESETS = ("none", "cheap", "default", "full")


def _compose(overrides):
    register_resolvers()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def run_wall(preset: str, overrides) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one whole run as `sparsity-exp run` makes it
    (execute: training, evaluations, measurements, checkpoints, summary and figure); CPU time is
    less disturbed by other processes on a shared machine."""
    import contextlib
    import io

    from sparsity_exp.run import execute

    cfg = _compose([f"probes={preset}", "trainer.progress=false", *overrides])
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        cpu = time.process_time()
        summary = execute(cfg, Path(tmp))
        cpu = time.process_time() - cpu
    return float(summary["wall_time_s"]), cpu


def per_probe(overrides, calls: int = 30):
    """Seconds per call of each probe of the full preset, on the default model and data."""
    from sparsity_exp.batches import make_batches
    from sparsity_exp.data import build_data
    from sparsity_exp.models import build_model, find_sites
    from sparsity_exp.optim import build_optimizer
    from sparsity_exp.record import Recorder
    from sparsity_exp.run import resolve_device, seed_everything
    from sparsity_exp.train import ClassificationTask

    cfg = _compose(["probes=full", *overrides])
    seed_everything(cfg.seed)
    data = build_data(cfg.data)
    device = resolve_device(cfg.trainer.device)
    model = build_model(cfg.model, data.info, cfg.activation).to(device)
    sites = find_sites(model)
    opt = build_optimizer(cfg.optim, model.parameters())
    task = ClassificationTask()
    train = make_batches(data.train, cfg.trainer.batch_size, True, True, cfg.seed, device)
    test = make_batches(data.test, cfg.trainer.eval_batch_size, False, False, cfg.seed, device)
    batch = next(iter(train))

    def step(probes):
        with observing(probes, "train"):
            loss, _ = task(model, batch, train=True)
            loss.backward()
        for p in probes:
            p.rows("train")
        opt.zero_grad(set_to_none=True)

    def evaluate(probes):
        with torch.no_grad(), observing(probes, "test"):
            for b in test:
                task(model, b, train=False)
        for p in probes:
            p.rows("test")

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def timed(fn, n):
        fn()  # warm-up
        sync()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        return (time.perf_counter() - t) / n

    base_step = timed(lambda: step([]), calls * 3)
    base_eval = timed(lambda: evaluate([]), 5)
    out = {}
    with tempfile.TemporaryDirectory() as tmp, Recorder(Path(tmp)) as rec:
        ctx = ProbeContext(model=model, sites=sites, task=task, train_batches=train, test_batches=test,
                           device=device, step=0, seed=cfg.seed, recorder=rec, optimizer=opt)
        for probe in build_probes(cfg.probes, sites, ctx):
            if type(probe).measure is not Probe.measure and (probe.measure_every or probe.at_end):
                out[probe.name] = ("measure", timed(lambda: probe.measure(ctx), 2), probe)
            else:
                if probe.every:
                    out[probe.name] = ("train step", timed(lambda: step([probe]), calls) - base_step, probe)
                with torch.no_grad(), observing([probe], "test"):
                    task(model, next(iter(test)), train=False)
                if probe.rows("test"):  # the probe reads the test set too
                    out[probe.name + " (test)"] = ("evaluation", timed(lambda: evaluate([probe]), 5) - base_eval,
                                                   probe)
    return out, cfg


def whole_runs(presets, overrides, rounds: int) -> dict:
    """Alternating rounds of whole runs, one per preset per round (rounds.run_rounds clocks each)."""
    for p in presets:  # untimed: first imports, first figure, allocator warm-up, for every preset
        run_wall(p, [*overrides, "trainer.steps=100"])
    variants = {p: (lambda p=p: run_wall(p, overrides)) for p in presets}

    def progress(r: int) -> None:
        print(f"  round {r + 1}/{rounds} done", file=sys.stderr, flush=True)

    return run_rounds(variants, rounds, on_round=progress)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", "--repeats", type=int, default=7, dest="rounds",
                    help="rounds of whole runs (one run of each preset per round)")
    ap.add_argument("--skip-runs", action="store_true")
    ap.add_argument("--presets", default=",".join(PRESETS), help="whole runs of these presets (the first is the reference)")
    ap.add_argument("--skip-per-probe", action="store_true", help="whole runs only")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    if torch.get_num_threads() > 1 and "OMP_NUM_THREADS" not in __import__("os").environ:
        torch.set_num_threads(1)

    presets = [p for p in args.presets.split(",") if p]
    timings = None
    if not args.skip_runs:
        timings = whole_runs(presets, args.overrides, args.rounds)
    costs, cfg = ({}, _compose(args.overrides)) if args.skip_per_probe else per_probe(args.overrides)
    steps, log_every, eval_every = cfg.trainer.steps, cfg.trainer.log_every, cfg.trainer.eval_every
    evals = steps // eval_every + 2
    base = None
    if timings is not None and "none" in timings["wall"]:
        base = statistics.median(timings["wall"]["none"])
    if costs:
        print(f"per probe (cadence of conf/probes/full.yaml; {steps} steps, log every {log_every}, "
              f"eval every {eval_every})")
        print(f"{'probe':28s} {'kind':11s} {'s/call':>10s} {'calls':>6s} {'share of none':>14s}")
    for name, (kind, sec, probe) in costs.items():
        if kind == "measure":
            n = (steps // probe.measure_every + 1 if probe.measure_every else 0) + int(probe.at_end)
        elif kind == "train step":
            n = steps // probe.every
        else:
            n = evals
        share = f"{100 * sec * n / base:13.1f}%" if base else "-"
        print(f"{name:28s} {kind:11s} {sec:10.5f} {n:6d} {share:>14s}")
    if timings is not None:
        ref = presets[0]
        print(f"\nwhole runs: {args.rounds} rounds; {fmt_load(load_summary(timings))}")
        print(f"{'preset':10s} {'wall s (median)':>16s} {'cpu s (median)':>15s}   ratio vs {ref}: median [interval] "
              f"wall | cpu   rounds for +-2% wall/cpu")
        for p in presets:
            w, c = statistics.median(timings["wall"][p]), statistics.median(timings["cpu"][p])
            line = f"{p:10s} {w:16.2f} {c:15.2f}"
            if p != ref:
                rw = ratio_summary(timings["wall"][p], timings["wall"][ref])
                rc = ratio_summary(timings["cpu"][p], timings["cpu"][ref])
                line += (f"   {fmt_ratio(rw)} | {fmt_ratio(rc)}   {rw['rounds_needed']}/{rc['rounds_needed']}"
                         f"   (coverage {100 * rw['coverage']:.1f}%)")
            print(line)
    return timings


if __name__ == "__main__":
    main()
