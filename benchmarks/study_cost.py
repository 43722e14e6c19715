"""Cost of one study arm run against a bare PyTorch loop of the same steps and evaluations.

The arm (default: `mlp` of conf/study/cpu.yaml, on the full Fashion-MNIST when --data-root holds it,
else the digits, as the study chooses) is timed three ways, alternating, --repeats times:

  own process   `sparsity-exp run <arm overrides>` as a subprocess, what a one-seed launch pays
                (process start, imports, Hydra, data decode, training, probes, writing);
  in process    the same run through run.execute() in a process that already ran it once: what
                each further seed costs when one process runs several (the study's `run -m` per arm);
  bare loop     the same model, optimizer settings, on-device batches, steps and test-set
                evaluations in a plain loop (forward, backward, SGD step; loss/accuracy read back at
                log and evaluation steps), no probes, nothing written, data already decoded.

and the in-process run is broken down by timers around the code (not a sampling profiler):
training steps, evaluations, each probe (its hooks, observe and measure calls), data (decode and
batches), writing (metrics, arrays, checkpoint, summary, quick-look figure) and the rest (building
model, optimizer and probes, composing the config); process start and imports = own-process wall
time minus the run's own wall time.

    OMP_NUM_THREADS=1 python benchmarks/study_cost.py [--arm mlp] [--suite cpu] [--repeats 3]
        [--data-root /usr/share/datasets/fashion-mnist] [--json out.json] [override ...]

Timings on a shared machine are noisy: the three alternate, medians are printed with the load
average, and CPU seconds (of the process, or of the child for the own-process run) beside wall time:
with one thread, CPU time is far less disturbed by other jobs. The breakdown is in wall seconds.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from sparsity_exp.config import conf_dir, register_resolvers  # noqa: E402


def arm_overrides(suite: str, arm: str, data_root: str, out: Path) -> list[str]:
    from sparsity_exp.study.execute import choose_dataset
    from sparsity_exp.study.suite import load_suite, suite_path

    s = load_suite(suite_path(suite, conf_dir()))
    chosen = next((a for a in s.used_arms() if a.name == arm), None)
    if chosen is None:
        raise SystemExit(f"suite {suite} has no arm {arm!r}; choose one of {[a.name for a in s.used_arms()]}")
    _, data, _ = choose_dataset(s, [f"data.root={data_root}"], out)
    return [*(data if chosen.data == "auto" else []), *chosen.overrides]


def _compose(overrides):
    register_resolvers()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


# ------------------------------------------------------------------ timers around the run's code

class Timers:
    def __init__(self):
        self.seconds = defaultdict(float)
        self.inner = 0.0  # probe time spent inside the currently timed step/evaluation
        self.attributed = None  # the probe whose hook is running (its tensor hooks are its own too)

    def add(self, key, dt):
        self.seconds[key] += dt


@contextlib.contextmanager
def instrumented(timers: Timers):
    """Patch the run's functions with timers; undone on exit."""
    from sparsity_exp import run as run_mod
    from sparsity_exp import assemble as assemble_mod
    from sparsity_exp.lifecycle import state
    from sparsity_exp.record import Recorder
    from sparsity_exp.train import Trainer

    patches = []

    def patch(obj, name, make):
        orig = getattr(obj, name)
        patches.append((obj, name, orig))
        setattr(obj, name, make(orig))

    active = set()  # keys being timed: a nested call of the same key (a flush in a checkpoint) counts once

    def timed(key, subtract_probes=False):
        def make(orig):
            def fn(*a, **k):
                if key in active:
                    return orig(*a, **k)
                active.add(key)
                start, inner = time.perf_counter(), timers.inner
                try:
                    return orig(*a, **k)
                finally:
                    active.discard(key)
                    dt = time.perf_counter() - start
                    if subtract_probes:
                        dt -= timers.inner - inner
                    timers.add(key, dt)
            return fn
        return make

    def probe_timer(probe, fn):
        def wrapped(*a, **k):
            previous, timers.attributed = timers.attributed, probe
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                dt = time.perf_counter() - start
                timers.attributed = previous
                if previous is None:
                    timers.add(f"probe {probe.name}", dt)
                    timers.inner += dt
        return wrapped

    def hook_patch(orig):  # hooks registered while a probe is attributed run under its timer
        def register(self, hook, *a, **k):
            if timers.attributed is not None:
                hook = probe_timer(timers.attributed, hook)
            return orig(self, hook, *a, **k)
        return register

    def wrap_probes(build):
        def fn(*a, **k):
            probes = build(*a, **k)
            for p in probes:
                observe, measure = p.observe, p.measure

                @contextlib.contextmanager
                def timed_observe(split, _p=p, _observe=observe):
                    cm = _observe(split)
                    probe_timer(_p, cm.__enter__)()
                    try:
                        yield
                    finally:
                        probe_timer(_p, cm.__exit__)(None, None, None)
                p.observe = timed_observe
                p.measure = probe_timer(p, measure)
            return probes
        return fn

    patch(torch.nn.Module, "register_forward_hook", hook_patch)
    patch(torch.nn.Module, "register_forward_pre_hook", hook_patch)
    patch(torch.Tensor, "register_hook", hook_patch)
    patch(run_mod, "build_probes", wrap_probes)
    patch(assemble_mod, "build_data", timed("data: decode"))
    patch(state.BatchStream, "__next__", timed("data: batches"))
    patch(Trainer, "train_step", timed("training steps", subtract_probes=True))
    patch(Trainer, "evaluate", timed("evaluations", subtract_probes=True))
    for name in ("add", "flush", "save_arrays"):
        patch(Recorder, name, timed("writing"))
    patch(Trainer, "save_checkpoint", timed("writing"))
    patch(run_mod, "sparsity_per_layer", timed("writing"))
    patch(run_mod, "write_json", timed("writing"))
    try:
        yield
    finally:
        for obj, name, orig in reversed(patches):
            setattr(obj, name, orig)


def in_process(overrides, timers: Timers | None = None) -> tuple[float, float]:
    """(wall, CPU seconds of this process) of one run through run.execute()."""
    from sparsity_exp.run import execute

    cfg = _compose([*overrides, "trainer.progress=false"])
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        start, cpu = time.perf_counter(), time.process_time()
        with instrumented(timers) if timers is not None else contextlib.nullcontext():
            execute(cfg, Path(tmp))
        return time.perf_counter() - start, time.process_time() - cpu


def own_process(overrides) -> tuple[float, float, float]:
    """(wall seconds of the subprocess, its CPU seconds, the run's own wall_time_s from its summary)."""
    import resource

    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-m", "sparsity_exp", "run", *overrides, "trainer.progress=false",
                        f"hydra.run.dir={tmp}/run"], check=True, env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        return wall, cpu, json.loads((Path(tmp) / "run" / "summary.json").read_text())["wall_time_s"]


def bare_loop(overrides) -> tuple[float, float]:
    """The same model, batches, steps and evaluations in a plain PyTorch loop."""
    from sparsity_exp.assemble import assemble

    cfg = _compose(overrides)
    run = assemble(cfg)
    model, t, o = run.model, cfg.trainer, cfg.optim
    opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.get("momentum", 0.0),
                          weight_decay=o.weight_decay)
    train = iter(run.train_batches)

    def evaluate():
        model.eval()
        loss, correct = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.int64)
        with torch.no_grad():
            for x, y in run.test_batches:
                logits = model(x)
                loss += F.cross_entropy(logits, y).double() * len(y)
                correct += (logits.argmax(-1) == y).sum()
        model.train()
        return loss.item(), correct.item()

    start, cpu = time.perf_counter(), time.process_time()
    evaluate()
    for step in range(run.total_steps):
        try:
            x, y = next(train)
        except StopIteration:
            train = iter(run.train_batches)
            x, y = next(train)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % t.log_every == 0:
            loss.item()
        if (step + 1) % t.eval_every == 0 or step + 1 == run.total_steps:
            evaluate()
    return time.perf_counter() - start, time.process_time() - cpu


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="cpu")
    ap.add_argument("--arm", default="mlp")
    ap.add_argument("--data-root", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None, help="write every figure to this file")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides added to the arm's")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    with tempfile.TemporaryDirectory() as stage:
        overrides = [*arm_overrides(args.suite, args.arm, args.data_root, Path(stage)), *args.overrides]
        in_process(overrides)  # imports, data cache and warm-up of this process
        own, own_cpu, own_inner, inproc, inproc_cpu, bare, bare_cpu, parts = ([] for _ in range(8))
        loads = [os.getloadavg()[0]]
        for _ in range(args.repeats):
            wall, cpu, inner = own_process(overrides)
            own.append(wall), own_cpu.append(cpu), own_inner.append(inner)
            timers = Timers()
            wall, cpu = in_process(overrides, timers)
            inproc.append(wall), inproc_cpu.append(cpu)
            parts.append(timers.seconds)
            wall, cpu = bare_loop(overrides)
            bare.append(wall), bare_cpu.append(cpu)
            loads.append(os.getloadavg()[0])
    med = statistics.median
    breakdown = {k: med(p.get(k, 0.0) for p in parts) for k in sorted({k for p in parts for k in p})}
    breakdown["process start, imports, Hydra (own process only)"] = med(w - i for w, i in zip(own, own_inner))
    breakdown["rest (building model, optimizer, probes; config)"] = med(inproc) - sum(
        v for k, v in breakdown.items() if not k.startswith("process"))
    figures = {
        "suite": args.suite, "arm": args.arm, "overrides": overrides, "repeats": args.repeats,
        "load_average": loads, "own_process_s": own, "in_process_s": inproc, "bare_loop_s": bare,
        "own_process_cpu_s": own_cpu, "in_process_cpu_s": inproc_cpu, "bare_loop_cpu_s": bare_cpu,
        "own_process_over_bare": med(own) / med(bare), "in_process_over_bare": med(inproc) / med(bare),
        "own_process_over_bare_cpu": med(own_cpu) / med(bare_cpu),
        "in_process_over_bare_cpu": med(inproc_cpu) / med(bare_cpu),
        "breakdown_s": breakdown,
    }
    print(f"arm {args.arm} of study {args.suite}: {' '.join(overrides)}")
    print(f"load average {', '.join(f'{v:.1f}' for v in loads)} (before and after each repeat); medians of "
          f"{args.repeats}")
    print(f"{'':14s}{'wall':>9s}{'':13s}{'CPU':>9s}")
    print(f"own process   {med(own):7.2f} s  {figures['own_process_over_bare']:5.2f}x bare  {med(own_cpu):7.2f} s  "
          f"{figures['own_process_over_bare_cpu']:5.2f}x bare")
    print(f"in process    {med(inproc):7.2f} s  {figures['in_process_over_bare']:5.2f}x bare  {med(inproc_cpu):7.2f} s  "
          f"{figures['in_process_over_bare_cpu']:5.2f}x bare   (a further seed in one process)")
    print(f"bare loop     {med(bare):7.2f} s  {'':11s}  {med(bare_cpu):7.2f} s")
    print("breakdown of the in-process run (s):")
    for k, v in breakdown.items():
        print(f"  {k:52s} {v:7.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
