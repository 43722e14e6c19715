"""What the sparsity probe's statistics cost on a compiled model: armed only at log steps (a second
graph, compiled once) vs in every step (one graph that always computes them).

    python benchmarks/compiled_stats_cost.py [--seconds 10] [--rounds 3] [Hydra overrides ...]

e.g. `python benchmarks/compiled_stats_cost.py model=mlp` (trainer.compile=true and probes=cheap are
added). The run is wired as run.py does (its fit replaced by this measurement). Printed: the compile
time of the graph without statistics and of the one with them, the steady time per training step
(forward, backward, optimizer step) of each (fastest of --rounds interleaved rounds), and the break
even: how many steps of computing the statistics always cost as much as the extra compilation.
The per-step cost of `every_step` is taken as that of the log steps' graph run on every step (the
same reductions; it overwrites where that one adds).
"""
from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.throughput import compose, sync  # noqa: E402
from sparsity_exp.batches import to_device  # noqa: E402
from sparsity_exp.probes.sparsity import SparsityProbe  # noqa: E402
from sparsity_exp.train import Trainer  # noqa: E402


def measure(cfg, seconds: float, rounds: int) -> dict:
    from sparsity_exp import run

    out = {}

    def bench_fit(trainer: Trainer) -> None:
        probe = next(p for p in trainer.probes if isinstance(p, SparsityProbe))
        device = trainer.device
        source = iter(trainer.train_batches)
        batches = itertools.cycle([to_device(next(source), device) for _ in range(8)])

        def steps(n: int, armed: bool) -> float:
            probe._armed = armed
            sync(device)
            start = time.perf_counter()
            for _ in range(n):
                trainer._forward_backward(next(batches), trainer.forward_model)
                trainer.optimizer.step()
                trainer.optimizer.zero_grad(set_to_none=True)
            sync(device)
            probe._armed = False
            return time.perf_counter() - start

        out["compile_plain_s"] = steps(1, False)  # first call: compiles the graph without statistics
        out["compile_stats_s"] = steps(1, True)  # the second graph (a recompile guarded on the flag)
        steps(5, False), steps(5, True)
        n = max(20, int(seconds / max(1e-4, steps(20, False) / 20)))
        for _ in range(rounds):
            for name, armed in (("plain", False), ("stats", True)):
                ms = 1e3 * steps(n, armed) / n
                out[f"{name}_ms"] = min(out.get(f"{name}_ms", float("inf")), ms)
        out["steps_per_round"] = n

    with tempfile.TemporaryDirectory(prefix="sx-bench-") as tmp, mock.patch.object(Trainer, "fit", bench_fit):
        run._train(cfg, Path(tmp))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per loop and round")
    parser.add_argument("--rounds", type=int, default=3)
    args, overrides = parser.parse_known_args(argv)
    cfg = compose([*overrides, "probes=cheap", "trainer.compile=true", "trainer.progress=false"])
    r = measure(cfg, args.seconds, args.rounds)
    delta = r["stats_ms"] - r["plain_ms"]
    print(f"overrides: {' '.join(overrides) or '(none)'}; threads {torch.get_num_threads()}")
    print(f"compile: graph without statistics {r['compile_plain_s']:.1f} s, with them {r['compile_stats_s']:.1f} s")
    print(f"per step: without statistics {r['plain_ms']:.3f} ms, with them {r['stats_ms']:.3f} ms "
          f"(+{delta:.3f} ms, {100 * delta / r['plain_ms']:+.1f}%); {r['steps_per_round']} steps per loop")
    if delta > 0:
        print(f"break even: the statistics in every step cost the extra compilation after "
              f"{r['compile_stats_s'] / (delta / 1e3):.0f} steps")
    else:
        print("break even: none (the statistics cost nothing measurable per step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
