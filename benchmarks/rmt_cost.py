"""Cost of an every-step RMT covariance update (probes/rmt.py, ``every: 1``) on the default LN-MLP
(width 256, depth 4, value-free blocks, 64 inputs, 10 classes, batch 32, plain SGD with weight decay).

Times --steps training steps (forward, backward, SGD step) without probes and with the rmt probe
observing every step, interleaved, --repeats times; prints the fastest of each and the update's share
of a plain step. The kept rows are folded into the covariances every --log-every steps (20, as
paper/mlp_rmt; what a log step's rows() does first), inside the timed loop; the rest of rows() (norms
per site) is timed apart. Random data already on the device.

    OMP_NUM_THREADS=1 python benchmarks/rmt_cost.py [--steps 200] [--repeats 5] [--width 256] [--device cpu]

Timings on a shared machine are noisy: the minimum over interleaved repeats is the number to quote (on
a CPU of this process's CPU time, which other jobs disturb far less than wall time).
"""
from __future__ import annotations

import argparse
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


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    # on a CPU the process's own CPU time (one thread): far less disturbed by other jobs than wall time
    clock = time.process_time if dev.type == "cpu" else time.perf_counter
    torch.manual_seed(0)
    model = LNMLP(in_features=64, num_classes=10, make_act=ReLU, width=args.width, depth=4).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, weight_decay=0.01)
    host = ProbeContext(sites=find_sites(model), optimizer=opt)  # what the ProbeSet hands its probes
    (rmt,) = build_probes({"rmt": {"every": 1}}, host.sites, host)
    x = torch.randn(args.steps, args.batch, 64, device=dev)
    y = torch.randint(0, 10, (args.steps, args.batch), device=dev)

    def run(probes) -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = clock()
        for i in range(args.steps):
            host.step += 1
            with observing(probes, "train"):
                F.cross_entropy(model(x[i]), y[i]).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if probes and (i + 1) % args.log_every == 0:
                getattr(rmt, "covariances", lambda: None)()  # the fold a log step's rows() starts with (older probes: none)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return (clock() - start) / args.steps

    run([])
    run([rmt])  # warm-up
    plain, with_rmt = [], []
    for _ in range(args.repeats):
        plain.append(run([]))
        with_rmt.append(run([rmt]))
    p, r = min(plain), min(with_rmt)
    rows_start = time.perf_counter()
    rmt.rows("train")
    rows_s = time.perf_counter() - rows_start
    print(f"device {dev}, width {args.width}, batch {args.batch}, {args.steps} steps x {args.repeats} repeats (min), "
          f"fold every {args.log_every} steps")
    print(f"plain step      {p * 1e3:8.3f} ms")
    print(f"with rmt update {r * 1e3:8.3f} ms   update = {(r - p) / p:+.1%} of a plain step")
    print(f"one rows() call {rows_s * 1e3:8.3f} ms   (at log steps only)")


if __name__ == "__main__":
    main()
