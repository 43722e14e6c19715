"""Training steps per second of the tiny ViT and tiny T5 presets with probes off and on.

    OMP_NUM_THREADS=1 python benchmarks/transformers_steps.py [--steps 60] [--models vit,t5] [overrides...]

For each model: steps/s with probes=none and probes=default, at the preset's cadence
(trainer.log_every, train-batch probes every 20 steps) and with the probes on every step
(log_every=1, the worst case), and the ratio default/none. Evaluation is left out: only train_step
is timed, after a few warm-up steps; none and default alternate ``--repeats`` times and the medians
are shown (a shared machine drifts). Figures are printed, never asserted.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from sparsity_exp.batches import forever, make_batches
from sparsity_exp.config import conf_dir, register_resolvers
from sparsity_exp.data import build_data
from sparsity_exp.models import build_model, find_sites
from sparsity_exp.optim import build_optimizer, build_schedule, param_groups
from sparsity_exp.probes import build_probes
from sparsity_exp.record import Recorder
from sparsity_exp.run import make_task, precision_and_accumulation, seed_everything
from sparsity_exp.train import Trainer


def steps_per_second(overrides: list[str], steps: int, warmup: int = 3) -> float:
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    seed_everything(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.trainer.device != "cpu" else "cpu")
    data = build_data(cfg.data)
    model = build_model(cfg.model, data.info, cfg.activation).to(device)
    sites = find_sites(model)
    t = cfg.trainer
    batches = make_batches(data.train, t.batch_size, True, True, cfg.seed, device, t.num_workers, data.train_repeats)
    optimizer = build_optimizer(cfg.optim, param_groups(model, cfg.optim))
    with tempfile.TemporaryDirectory() as tmp, Recorder(Path(tmp)) as recorder:
        trainer = Trainer(model=model, task=make_task(cfg, data), optimizer=optimizer,
                          schedule=build_schedule(cfg.optim.schedule, optimizer, steps + warmup),
                          train_batches=batches, test_batches=[], probes=build_probes(cfg.probes, sites),
                          recorder=recorder, total_steps=steps + warmup, steps_per_epoch=len(batches),
                          log_every=t.log_every, eval_every=10**9, device=device, progress=False,
                          **precision_and_accumulation(t))
        source = forever(batches)
        for i in range(steps + warmup):
            if i == warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
            trainer.train_step(tuple(b.to(device) for b in next(source)))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--models", default="vit,t5")
    parser.add_argument("--repeats", type=int, default=3, help="alternate none/default this often; medians shown")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    register_resolvers()
    print(f"torch threads {torch.get_num_threads()}, {args.steps} timed steps each")
    print(f"{'model':6s} {'cadence':22s} {'none steps/s':>13s} {'default steps/s':>16s} {'ratio':>6s}")
    for model in args.models.split(","):
        for cadence, extra in (("preset (log_every=20)", []), ("every step", ["trainer.log_every=1"])):
            base = [f"model={model}", *extra, *args.overrides]
            offs, ons = [], []
            for _ in range(args.repeats):  # alternating, so drifting machine load hits both alike
                offs.append(steps_per_second(base + ["probes=none"], args.steps))
                ons.append(steps_per_second(base + ["probes=default"], args.steps))
            off, on = statistics.median(offs), statistics.median(ons)
            print(f"{model:6s} {cadence:22s} {off:13.2f} {on:16.2f} {on / off:6.3f}", flush=True)


if __name__ == "__main__":
    main()
