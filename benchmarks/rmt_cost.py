"""Cost of an every-step RMT covariance update (probes/rmt.py, ``every: 1``) on the default LN-MLP
(width 256, depth 4, value-free blocks, 64 inputs, 10 classes, batch 32, plain SGD with weight decay).

Times --steps training steps (forward, backward, SGD step) without probes and with the rmt probe
observing every step, in --rounds alternating rounds (benchmarks/rounds.py); prints per-step times and
the update's share of a plain step as the median over rounds of each round's ratio, with its
order-statistic interval, for this process's CPU time and for wall time, and the load. The kept rows are folded into the covariances every --log-every steps (20, as
paper/mlp_rmt; what a log step's rows() does first), inside the timed loop; the rest of rows() (norms
per site) is timed apart. Random data already on the device.

    OMP_NUM_THREADS=1 python benchmarks/rmt_cost.py [--steps 200] [--rounds 15] [--width 256] [--device cpu] [--breakdown]

On a CPU quote the CPU-time ratio (other jobs disturb it far less than wall time).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sparsity_exp.activations import ReLU  # noqa: E402
from sparsity_exp.models import find_sites  # noqa: E402
from sparsity_exp.models.mlp import LNMLP  # noqa: E402
from sparsity_exp.probes import build_probes, observing  # noqa: E402
from sparsity_exp.probes.base import ProbeContext  # noqa: E402
from sparsity_exp.probes.rmt import RMTProbe  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rounds import fmt_load, fmt_ratio, load_summary, ratio_summary, run_rounds  # noqa: E402


class _NoFold(RMTProbe):
    """The update without its folds: kept rows are dropped at every fold (no Gram product)."""

    def _fold(self) -> None:
        self._pending, self._filled, self._pending_rows, self._since_fold = {}, {}, 0, 1.0


class _KeptByReference(_NoFold):
    """... and every row kept by reference instead of copied into the buffer, the gradients' too (not
    safe for gradients in general: the lower bound of keeping them at all)."""

    def _add(self, name: str, i: int, u: torch.Tensor) -> None:
        self._pending.setdefault((name, i), []).append(u)


class _RowsNotKept(_NoFold):
    def _add(self, name: str, i: int, u: torch.Tensor) -> None:
        pass


class _HooksOnly(_NoFold):
    def _observed(self, site, x: torch.Tensor, output: torch.Tensor) -> None:
        pass


# the update cut down step by step (--breakdown): each adds one part of the capture to the one before
CUT_DOWN = {"module hooks only": _HooksOnly, "rows taken, not kept": _RowsNotKept,
            "all kept by reference": _KeptByReference, "copied, never folded": _NoFold}


def matmul_work(model, sites) -> tuple[int, int]:
    """Multiply-adds per row (sample) of the plain training step's linear maps (forward; backward: the
    weight gradients and, except for the first layer, the input gradients) and of the update's Gram
    products (a symmetric rank-k update: p (p + 1) / 2 per row for each input and gradient covariance)."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    forward = sum(m.in_features * m.out_features for m in linears)
    step = 3 * forward - linears[0].in_features * linears[0].out_features
    gram = sum(p * (p + 1) // 2 for s in sites for p in (s.key.in_features, s.key.out_features))
    return step, gram


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", "--repeats", type=int, default=15, dest="rounds")
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--breakdown", action="store_true",
                    help="also time the update cut down, in the same rounds: the module hooks alone; the rows taken "
                         "(gradient hooks too) but not kept; all kept by reference (no copy); copied into the kept "
                         "buffer but never folded")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = LNMLP(in_features=64, num_classes=10, make_act=ReLU, width=args.width, depth=4).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, weight_decay=0.01)
    host = ProbeContext(sites=find_sites(model), optimizer=opt)  # what the ProbeSet hands its probes
    (rmt,) = build_probes({"rmt": {"every": 1}}, host.sites, host)
    cut_down = {name: cls(host.sites, every=1) for name, cls in CUT_DOWN.items()} if args.breakdown else {}
    for probe in cut_down.values():
        probe.ctx = host
    x = torch.randn(args.steps, args.batch, 64, device=dev)
    y = torch.randint(0, 10, (args.steps, args.batch), device=dev)

    fold_cpu = [0.0]  # CPU time of the folds (the Gram products) inside the rmt blocks

    def run(probes) -> None:
        for i in range(args.steps):
            host.step += 1
            with observing(probes, "train"):
                F.cross_entropy(model(x[i]), y[i]).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if probes and (i + 1) % args.log_every == 0:
                start = time.process_time()
                getattr(probes[0], "covariances", lambda: None)()  # the fold a log step's rows() starts with (older probes: none)
                if probes[0] is rmt:
                    fold_cpu[0] += time.process_time() - start

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    run([])
    run([rmt])  # warm-up
    fold_cpu[0] = 0.0
    for probe in cut_down.values():
        run([probe])  # warm-up
    variants = {"plain": lambda: run([]), "rmt": lambda: run([rmt])}
    variants.update({name: (lambda probe=probe: run([probe])) for name, probe in cut_down.items()})
    t = run_rounds(variants, args.rounds, sync=sync)
    clock = "cpu" if dev.type == "cpu" else "wall"
    p = statistics.median(t[clock]["plain"]) / args.steps
    r = statistics.median(t[clock]["rmt"]) / args.steps
    share = {k: ratio_summary(t[k]["rmt"], t[k]["plain"]) for k in ("cpu", "wall")}
    rows_start = time.perf_counter()
    rmt.rows("train")
    rows_s = time.perf_counter() - rows_start
    print(f"device {dev}, width {args.width}, batch {args.batch}, {args.steps} steps per block, {args.rounds} rounds, "
          f"fold every {args.log_every} steps; {fmt_load(load_summary(t))}")
    print(f"plain step      {p * 1e3:8.3f} ms ({clock} time, median)")
    print(f"with rmt update {r * 1e3:8.3f} ms")
    for k in (clock, "wall" if clock == "cpu" else "cpu"):
        s = share[k]
        print(f"rmt / plain ({k:4s}) {fmt_ratio(s)}  (coverage {100 * s['coverage']:.1f}%; rounds for +-2%: "
              f"{s['rounds_needed']})")
    print(f"one rows() call {rows_s * 1e3:8.3f} ms   (at log steps only)")
    if dev.type == "cpu":
        fold = fold_cpu[0] / (args.rounds * args.steps)
        print(f"of the update:  folds (Gram products) {fold * 1e3:.3f} ms a step ({100 * fold / p:.0f}% of a plain step), "
              f"capture of the rows {(r - p - fold) * 1e3:.3f} ms ({100 * (r - p - fold) / p:.0f}%)")
    for name in cut_down:
        print(f"{name:>22s} / plain (cpu) {fmt_ratio(ratio_summary(t['cpu'][name], t['cpu']['plain']))}")
    step_macs, gram_macs = matmul_work(model, host.sites)
    print(f"matmul work per row: training step {step_macs / 1e6:.3f} M MAC, Gram products {gram_macs / 1e6:.3f} M MAC "
          f"({100 * gram_macs / step_macs:.0f}% of the step's): the update's floor at equal BLAS speed, before any "
          "cost of capturing the rows")
    return share


if __name__ == "__main__":
    main()
