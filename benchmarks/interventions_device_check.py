"""Device check of the interventions on CUDA (or whatever `trainer.device=auto` finds): a sparsified
run with weight noise on every MLP linear, a vanilla run, and a LoRA sparsity finetune from it; then
the bounds read back from the checkpoints, and the injected noise variance measured on the device.

    PYTHONPATH=. python benchmarks/interventions_device_check.py [--out DIR]

Prints one line per check and exits non-zero if one fails.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch


def _cfg(*overrides):
    from hydra import compose, initialize_config_dir

    from sparsity_exp.config import conf_dir, register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="config", overrides=["trainer.progress=false", *overrides])


def main(argv=None) -> int:
    from sparsity_exp.lifecycle.checkpoint import list_checkpoints, load_checkpoint
    from sparsity_exp.modules.weight_noise import WeightNoise
    from sparsity_exp.run import execute

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="results/device_check")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    out = Path(args.out)
    failures = []

    def check(name, ok, detail=""):
        print(f"{'ok  ' if ok else 'FAIL'} {name} {detail}", flush=True)
        if not ok:
            failures.append(name)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device {device}: {torch.cuda.get_device_name() if device == 'cuda' else 'no CUDA'}; torch {torch.__version__}")
    # lr 0.02: at the default 0.05 JSReLU in the value-free LN-MLP diverges (see the digits benchmark)
    common = [f"trainer.device={device}", f"trainer.steps={args.steps}", "trainer.eval_every=100", "optim.lr=0.02"]

    t = time.perf_counter()
    s = execute(_cfg(*common, "modules=sparsified", "noise=on", "noise.targets=all", "model.value=true"), out / "sparsified")
    check("sparsified+noise run", s["status"] == "completed" and s["device"].startswith(device),
          f"{time.perf_counter() - t:.1f} s, test acc {s['test']['accuracy']:.3f}, "
          f"sparsity {s['test']['activation_sparsity']['avg']:.3f}")
    state = load_checkpoint(list_checkpoints(out / "sparsified")[-1][1])["model"]
    gammas = [v for k, v in state.items() if k.endswith("norm.weight")]
    biases = [state[f"zeroth_biases.{i}.bias"] for i in range(len(gammas))]
    check("gamma >= 1", all((g >= 1).all() for g in gammas))
    check("|B| <= 0.1 |gamma|", all((b.abs() <= 0.1 * g + 1e-6).all() for b, g in zip(biases, gammas)),
          f"max |B| {max(b.abs().max().item() for b in biases):.4f}")

    t = time.perf_counter()
    v = execute(_cfg(*common), out / "vanilla")
    ft = execute(_cfg(*common, "protocol=sparsity_finetune", f"protocol.init={out / 'vanilla'}", "modules=sparsified",
                      f"protocol.mixing_steps={args.steps // 2}", f"protocol.uplift_steps={args.steps // 2}",
                      "protocol.lora.rank=16"), out / "finetune")
    check("vanilla -> LoRA sparsity finetune", ft["status"] == "completed",
          f"{time.perf_counter() - t:.1f} s; sparsity {v['test']['activation_sparsity']['avg']:.3f} -> "
          f"{ft['test']['activation_sparsity']['avg']:.3f}, acc {v['test']['accuracy']:.3f} -> {ft['test']['accuracy']:.3f}")
    fstate = load_checkpoint(list_checkpoints(out / "finetune")[-1][1])["model"]
    check("uplift reached |gamma| >= 1", all((w.abs() >= 1).all() for k, w in fstate.items() if k.endswith("norm.weight")))

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 128, device=device)
    WeightNoise(0.1).install([lin])
    x = torch.randn(20000, 64, device=device)
    with torch.no_grad():
        clean = torch.nn.functional.linear(x, lin.weight, lin.bias)
        z = (lin(x) - clean) / (0.1 * lin.weight.pow(2).mean().sqrt() * x.norm(dim=1, keepdim=True))
        lin.eval()
        same = torch.equal(lin(x), clean)
    n = z.numel()
    check("noise variance on the device", abs(z.var().item() - 1) < 5 * (2 / n) ** 0.5 and same,
          f"var {z.var().item():.4f} (n {n}), eval exact {same}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
