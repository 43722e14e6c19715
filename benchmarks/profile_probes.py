"""Where a probe preset's training steps spend their time: the trainer wired as a real run
(throughput.build_trainer), a few log periods under torch.profiler (CPU, and CUDA when present), the
operators sorted by self time, a Chrome trace, and the Python functions by cProfile (CPU).

    OMP_NUM_THREADS=1 python benchmarks/profile_probes.py [--preset default] [--periods 5] [--out DIR]
        [Hydra overrides ...]

On a GPU (benchmarks/gpu_probes.sh) it answers what `probes=default` adds to a step there: the
kernels of the log steps' statistics and any host synchronisation (cudaStreamSynchronize /
aten::item / aten::_local_scalar_dense rows) outside them.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import pstats
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from sparsity_exp.batches import to_device  # noqa: E402
from throughput import build_trainer, compose, sync  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--periods", type=int, default=5, help="log periods profiled (trainer.log_every steps each)")
    ap.add_argument("--out", type=Path, default=None, help="folder for trace.json (Chrome trace)")
    ap.add_argument("--rows", type=int, default=25)
    args, overrides = ap.parse_known_args(argv)
    cfg = compose([*overrides, f"probes={args.preset}", "trainer.progress=false"])
    with tempfile.TemporaryDirectory(prefix="sx-prof-") as tmp:
        trainer = build_trainer(cfg, Path(tmp))
        source = iter(trainer.train_batches)
        batches = itertools.cycle([to_device(next(source), trainer.device) for _ in range(8)])
        n = args.periods * int(trainer.log_every)

        def loop(steps: int) -> None:
            for _ in range(steps):
                logged = trainer.step % trainer.log_every == 0
                trainer.train_step(next(batches))
                if logged:
                    trainer.recorder.flush()

        loop(2 * int(trainer.log_every))  # warm-up
        sync(trainer.device)
        activities = [torch.profiler.ProfilerActivity.CPU]
        if trainer.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as prof:
            loop(n)
            sync(trainer.device)
        key = "self_cuda_time_total" if trainer.device.type == "cuda" else "self_cpu_time_total"
        print(f"probes={args.preset}, {n} steps ({args.periods} log periods), device {trainer.device}")
        print(prof.key_averages().table(sort_by=key, row_limit=args.rows))
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            prof.export_chrome_trace(str(args.out / f"trace_{args.preset}.json"))
        profiler = cProfile.Profile()
        profiler.enable()
        loop(n)
        sync(trainer.device)
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(args.rows)
        print(text.getvalue())
        trainer.recorder.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
