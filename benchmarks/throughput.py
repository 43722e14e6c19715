"""Training throughput of `sparsity-exp run` against a bare PyTorch loop of the same model.

    python benchmarks/throughput.py [--budget-s 60] [--presets none,cheap,default] [--json out.json]
                                    [--peak-tflops T] [Hydra overrides ...]

e.g. `python benchmarks/throughput.py model=mlp trainer.batch_size=256 --budget-s 30`, or after the
transformer models land `model=vit ...` / `model=t5 ...`: every Hydra override of `run` passes
through, and the run is wired by run.py exactly as a real run (data, model, sites, modules, probes,
optimizer, task, DDP/compile/TF32 options).

For each probe preset (`conf/probes/<preset>.yaml`; missing presets are skipped with a note):
  * the trainer: `Trainer.train_step` on every step, probes observing at their cadence (log steps
    every trainer.log_every), the metrics file flushed at log steps as `fit` does; evaluation and
    standalone measurements are left out (they have their own cadence);
  * the bare loop: a model and optimizer built as the first preset's run builds them (its own copy,
    the same DDP/compiled forward), the same batches already on the device, the task's loss,
    backward, optimizer step, zero_grad; nothing else.
The loops cycle over the same few batches prefetched to the device, so data loading is not timed.
Printed: steps/s, samples/s (tokens/s where a batch holds token ids), the trainer/bare ratio, FLOPs
per step counted by torch.utils.flop_counter on one step, and MFU on CUDA (achieved FLOP/s over the
card's dense peak from the table below, or --peak-tflops). On CUDA it also checks that steps which
do not log make no host synchronisation (torch.cuda.set_sync_debug_mode).

Timing (benchmarks/rounds.py): the bare loop and every preset's trainer run in alternating rounds in
this one process, each round one block of the same steps (whole log periods, about --block-s of wall
time) of every loop, the order reversed every other round. Each round gives a trainer/bare ratio
per preset (and a cost ratio against the first preset, e.g. cheap/none) on wall time and on this
process's CPU time; printed are their medians over the rounds with the order-statistic interval
(95%; [min, max] below 6 rounds), the load average, and the rounds a +-2% interval would need at
the spread seen. --rounds, or as many as --budget-s holds; building, warmup and compilation come
on top.

    OMP_NUM_THREADS=1 python benchmarks/throughput.py --rounds 30 --presets none,cheap,default
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sparsity_exp.batches import to_device  # noqa: E402
from sparsity_exp.config import conf_dir, register_resolvers  # noqa: E402
from sparsity_exp.train import Trainer  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from rounds import fmt_load, fmt_ratio, load_summary, ratio_summary, run_rounds  # noqa: E402

# Dense peak TFLOP/s (no sparsity) by the first name fragment found in torch.cuda.get_device_name().
# Vendor data sheets; SXM parts. Order matters: more specific names first.
PEAK_TFLOPS = {
    "H200": {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0},
    "H100 PCIe": {"bf16": 756.0, "tf32": 378.0, "fp32": 51.0},
    "H100": {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L40S": {"bf16": 362.0, "tf32": 183.0, "fp32": 91.6},
    "L4": {"bf16": 121.0, "tf32": 60.0, "fp32": 30.3},
    "A10": {"bf16": 125.0, "tf32": 62.5, "fp32": 31.2},
    "V100": {"bf16": 125.0, "tf32": 15.7, "fp32": 15.7},  # no bf16/tf32: fp16 tensor cores, fp32
    "RTX 4090": {"bf16": 165.0, "tf32": 82.6, "fp32": 82.6},
}


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def numeric_precision(cfg, device: torch.device) -> str:
    precision = str(cfg.trainer.get("precision", "fp32"))  # trainer.precision comes with bf16 autocast
    if "bf16" in precision or "16" in precision:
        return "bf16"
    if device.type == "cuda" and cfg.trainer.get("tf32", True):
        return "tf32"
    return "fp32"


def peak_flops(device: torch.device, precision: str, override_tflops: float | None):
    if override_tflops:
        return override_tflops * 1e12, "--peak-tflops"
    if device.type != "cuda":
        return None, "no peak table for CPUs (give --peak-tflops)"
    name = torch.cuda.get_device_name(device)
    for fragment, peaks in PEAK_TFLOPS.items():
        if fragment in name:
            return peaks[precision] * 1e12, f"{name}, {precision} dense peak {peaks[precision]:g} TFLOP/s"
    return None, f"{name} is not in the peak table (give --peak-tflops)"


def batch_sizes(trainer: Trainer, batch) -> tuple[int, int | None]:
    """(samples, tokens) in one batch; tokens from the task when it counts them, else from an
    integer [batch, tokens] tensor (token ids), else None."""
    samples = len(batch[0]) if isinstance(batch, (tuple, list)) else len(next(iter(batch.values())))
    counter = getattr(trainer.task, "tokens", None)
    if callable(counter):
        return samples, int(counter(batch))
    tensors = batch if isinstance(batch, (tuple, list)) else list(batch.values())
    for t in tensors:
        if torch.is_tensor(t) and t.dim() >= 2 and not t.is_floating_point():
            return samples, t.numel()
    return samples, None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run_steps, chunk: int, seconds: float, device: torch.device) -> tuple[int, float]:
    """Run ``chunk`` steps at a time until ``seconds`` passed; (steps, wall seconds)."""
    sync(device)
    start = time.perf_counter()
    steps = 0
    while steps == 0 or time.perf_counter() - start < seconds:
        run_steps(chunk)
        steps += chunk
    sync(device)
    return steps, time.perf_counter() - start


def count_flops(trainer: Trainer, batch) -> float | None:
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with FlopCounterMode(display=False) as counter:
            loss, _ = trainer.task(trainer.model, batch, train=True)
            loss.backward()
    except Exception as exc:  # a model the counter cannot trace: report, do not fail the benchmark
        print(f"note: FLOP counting failed ({type(exc).__name__}: {exc})", file=sys.stderr)
        return None
    finally:
        trainer.model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def host_syncs_in_quiet_steps(trainer: Trainer, batches) -> str:
    """On CUDA: run the steps up to the next log step with sync debug mode 'error'."""
    if trainer.device.type != "cuda":
        return "not checked (CPU)"
    while trainer.step % trainer.log_every != 1 % trainer.log_every:
        trainer.train_step(next(batches))
    quiet = trainer.log_every - 1
    if quiet < 1:
        return "not checked (trainer.log_every=1: every step logs)"
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(quiet):
            trainer.train_step(next(batches))
    except RuntimeError as exc:
        return f"HOST SYNC in a non-log step at step {trainer.step}: {str(exc).splitlines()[0]}"
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return f"none in {quiet} non-log steps"


def build_trainer(cfg, run_dir: Path) -> Trainer:
    """The run's Trainer, wired by run.py exactly as a real run (its fit replaced by returning it),
    with a metrics recorder of its own in ``run_dir`` that stays open for the benchmark."""
    from sparsity_exp import run
    from sparsity_exp.record import Recorder

    built: list = []
    run_dir.mkdir(parents=True, exist_ok=True)
    with mock.patch.object(Trainer, "fit", lambda trainer: built.append(trainer)):
        run._train(cfg, run_dir)
    trainer = built[0]
    trainer.recorder = trainer.probes.context.recorder = Recorder(run_dir)  # _train closed its own
    return trainer


def measure(cfgs: dict, run_root: Path, rounds: int | None, budget_s: float, block_s: float,
            block_steps: int | None, prefetch: int, warmup: int) -> dict:
    """Build one trainer per preset, one bare loop, and time them in alternating rounds (rounds.py):
    per round one block of the same steps for every loop, so each ratio compares loops that ran
    seconds apart under the same load."""
    trainers = {}
    for p, cfg in cfgs.items():
        (run_root / p).mkdir(parents=True, exist_ok=True)
        trainers[p] = build_trainer(cfg, run_root / p)
    first = next(iter(trainers.values()))
    device = first.device
    source = iter(first.train_batches)
    prefetched = [to_device(next(source), device) for _ in range(min(prefetch, len(first.train_batches)))]
    samples, tokens = batch_sizes(first, prefetched[0])
    out: dict = {"flops_per_step": count_flops(first, prefetched[0]), "device": str(device),
                 "samples_per_batch": samples, "tokens_per_batch": tokens}
    streams = {p: itertools.cycle(prefetched) for p in [*trainers, "bare"]}

    # the bare loop trains a model of its own, built as the first preset's (same initial weights, same
    # batches, same optimizer settings), so it follows the trainers' trajectory: a loop sharing a
    # trainer's model would push it on twice as fast, towards tiny gradients (denormal floats on a CPU
    # slow both loops on that model down, which showed as a 10% gap in an A/A test)
    own = build_trainer(next(iter(cfgs.values())), run_root / "_bare")
    own.recorder.close()
    net = own.model if own.forward_model is None else own.forward_model
    optimizer = own.optimizer
    # the same numerics as the trainer: bf16 autocast when trainer.precision=bf16 (the whole batch
    # at once: with trainer.grad_accum > 1 the bare loop does not split it)
    bf16 = getattr(first, "precision", "fp32") == "bf16"

    def bare(n: int) -> None:
        batches = streams["bare"]
        for _ in range(n):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss, _ = own.task(net, next(batches), train=True)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    def loop_of(trainer: Trainer, batches):
        def loop(n: int) -> None:
            for _ in range(n):
                logged = trainer.step % trainer.log_every == 0
                trainer.train_step(next(batches))
                if logged:
                    trainer.recorder.flush()
        return loop

    loops = {"bare": bare, **{p: loop_of(t, streams[p]) for p, t in trainers.items()}}
    log_every = max(int(t.log_every) for t in trainers.values())
    # warm up every loop (one log step each: probe hooks, the eager path under compile), and size the
    # block: a whole number of log periods (every trainer block holds the same log steps) lasting
    # about block_s of wall time in the bare loop
    bare(warmup)
    for p, t in trainers.items():
        loops[p](max(warmup, log_every))
        while t.step % log_every:
            loops[p](1)
    sync(device)
    start = time.perf_counter()
    bare(log_every)
    sync(device)
    per_step = max(1e-6, (time.perf_counter() - start) / log_every)
    if block_steps is None:
        block_steps = log_every * max(1, round(block_s / (per_step * log_every)))
    block_steps = max(log_every, log_every * math.ceil(block_steps / log_every))
    if rounds is None:
        rounds = max(6, int(budget_s / (len(loops) * block_steps * per_step)))
    timings = run_rounds({name: (lambda fn=fn: fn(block_steps)) for name, fn in loops.items()}, rounds,
                         sync=lambda: sync(device))
    out.update(block_steps=block_steps, rounds=rounds, load=load_summary(timings),
               timings={k: v for k, v in timings.items()})
    for name in loops:
        wall, cpu = statistics.median(timings["wall"][name]), statistics.median(timings["cpu"][name])
        rate = block_steps / wall
        out[name] = {"steps": block_steps * rounds, "seconds": round(sum(timings["wall"][name]), 3),
                     "steps_per_s": rate, "cpu_steps_per_s": block_steps / cpu if cpu > 0 else None,
                     "samples_per_s": rate * samples, "tokens_per_s": rate * tokens if tokens else None}
    presets = list(trainers)
    out["presets"] = {}
    for p in presets:
        # throughput ratio trainer/bare = bare time / trainer time, per round
        res = {"bare": out["bare"], "trainer": out[p],
               "vs_bare_wall": ratio_summary(timings["wall"]["bare"], timings["wall"][p]),
               "vs_bare_cpu": ratio_summary(timings["cpu"]["bare"], timings["cpu"][p])}
        if p != presets[0]:  # cost ratio against the first preset (e.g. cheap / none): time over time
            res["cost_vs_first_wall"] = ratio_summary(timings["wall"][p], timings["wall"][presets[0]])
            res["cost_vs_first_cpu"] = ratio_summary(timings["cpu"][p], timings["cpu"][presets[0]])
        res["host_syncs"] = host_syncs_in_quiet_steps(trainers[p], streams[p])
        out["presets"][p] = res
    for t in trainers.values():
        t.recorder.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Any other argument is a Hydra override of `sparsity-exp run`.")
    parser.add_argument("--budget-s", type=float, default=60.0,
                        help="timed seconds in all when --rounds is not given (default 60)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds; each runs one block of every loop (default: as many as --budget-s holds, >= 6)")
    parser.add_argument("--block-s", type=float, default=0.5, help="wall seconds of one block (bare loop; default 0.5)")
    parser.add_argument("--block-steps", type=int, default=None,
                        help="steps per block (rounded up to whole log periods; default from --block-s)")
    parser.add_argument("--presets", default="none,cheap,default", help="probe presets to compare (first = reference)")
    parser.add_argument("--prefetch", type=int, default=8, help="batches kept on the device and cycled")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before the rounds")
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak TFLOP/s for MFU (overrides the table)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args, overrides = parser.parse_known_args(argv)
    bad = [o for o in overrides if o.startswith("-")]
    if bad:
        parser.error(f"unknown option(s) {bad}; Hydra overrides look like key=value")

    presets, skipped = [], []
    for p in [p.strip() for p in args.presets.split(",") if p.strip()]:
        (presets if (conf_dir() / "probes" / f"{p}.yaml").is_file() else skipped).append(p)
    for p in skipped:
        print(f"note: probe preset {p!r} does not exist (conf/probes/{p}.yaml); skipped")
    if not presets:
        print("error: no probe preset to measure", file=sys.stderr)
        return 2

    base = [*overrides, "trainer.progress=false"]
    cfgs = {p: compose([*base, f"probes={p}"]) for p in presets}
    print(f"measuring bare + probes={','.join(presets)} in alternating rounds ...", flush=True)
    with tempfile.TemporaryDirectory(prefix="sx-bench-") as tmp:
        results = measure(cfgs, Path(tmp), args.rounds, args.budget_s, args.block_s, args.block_steps,
                          args.prefetch, args.warmup)

    cfg = compose([*base, "probes=none"])
    device = torch.device(results["device"])
    precision = numeric_precision(cfg, device)
    peak, peak_note = peak_flops(device, precision, args.peak_tflops)
    report = {"overrides": overrides, "model": cfg.model.name, "batch_size": int(cfg.trainer.batch_size),
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "precision": precision, "peak_flops": peak, "peak_source": peak_note,
              "torch_threads": torch.get_num_threads(), "skipped_presets": skipped,
              "rounds": results["rounds"], "block_steps": results["block_steps"], "load": results["load"],
              "flops_per_step": results["flops_per_step"], "samples_per_batch": results["samples_per_batch"],
              "tokens_per_batch": results["tokens_per_batch"], "presets": results["presets"],
              "timings": results["timings"]}
    for res in report["presets"].values():  # per preset, for readers of older reports
        res.update(flops_per_step=results["flops_per_step"], samples_per_batch=results["samples_per_batch"],
                   tokens_per_batch=results["tokens_per_batch"], device=results["device"])
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def print_report(r: dict) -> None:
    flops = r["flops_per_step"]
    tokens = r["tokens_per_batch"] is not None
    print(f"\nmodel={r['model']} batch={r['batch_size']} device={r['device']} precision={r['precision']} "
          f"threads={r['torch_threads']} overrides={' '.join(r['overrides']) or '(none)'}")
    print(f"{r['rounds']} rounds of {r['block_steps']} steps per loop; {fmt_load(r['load'])}")
    print(f"FLOPs per training step (forward+backward, counted): {flops / 1e9:.3f} GFLOP" if flops else
          "FLOPs per training step: not counted")
    print(f"MFU peak: {r['peak_source']}")
    rate_col = "tokens/s" if tokens else "samples/s"
    print(f"\n{'loop':10s} {'steps/s':>9s} {'cpu st/s':>9s} {rate_col:>11s} {'GFLOP/s':>9s} {'MFU':>7s}   "
          f"(medians over rounds)")
    first = next(iter(r["presets"].values()))
    rows = [("bare", first["bare"])] + [(f"{p}", res["trainer"]) for p, res in r["presets"].items()]
    for name, m in rows:
        rate = m["tokens_per_s"] if tokens else m["samples_per_s"]
        achieved = flops * m["steps_per_s"] if flops else None
        mfu = f"{100 * achieved / r['peak_flops']:6.2f}%" if achieved and r["peak_flops"] else "    n/a"
        gflops = f"{achieved / 1e9:9.2f}" if achieved else "      n/a"
        cpu = f"{m['cpu_steps_per_s']:9.2f}" if m.get("cpu_steps_per_s") else "      n/a"
        print(f"{name:10s} {m['steps_per_s']:9.2f} {cpu} {rate:11.1f} {gflops} {mfu}")
    conf = 100 * first["vs_bare_wall"]["coverage"]
    print(f"\ntrainer/bare throughput ratio, median over rounds [order-statistic interval, {conf:.1f}% coverage]:")
    print(f"{'probes':10s} {'wall':>24s} {'cpu':>24s} {'rounds for +-2% (wall/cpu)':>28s}")
    for p, res in r["presets"].items():
        w, c = res["vs_bare_wall"], res["vs_bare_cpu"]
        print(f"{p:10s} {fmt_ratio(w):>24s} {fmt_ratio(c):>24s} {str(w['rounds_needed']) + ' / ' + str(c['rounds_needed']):>28s}")
    names = list(r["presets"])
    if len(names) > 1:
        print(f"\ncost against probes={names[0]} (time ratio, median [interval]):")
        for p in names[1:]:
            res = r["presets"][p]
            w, c = res["cost_vs_first_wall"], res["cost_vs_first_cpu"]
            print(f"{p + '/' + names[0]:16s} wall {fmt_ratio(w)}  cpu {fmt_ratio(c)}  rounds for +-2%: "
                  f"{w['rounds_needed']} / {c['rounds_needed']}")
    print("host synchronisation in non-log steps: " + "; ".join(
        f"{p}: {res['host_syncs']}" for p, res in r["presets"].items()))


if __name__ == "__main__":
    sys.exit(main())
