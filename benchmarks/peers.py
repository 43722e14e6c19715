"""The project's Hessian and spectrum probes against their peers, on the same model, batch and vectors.

    OMP_NUM_THREADS=1 python benchmarks/peers.py [--samples 10,50] [--repeats 5] [--key-shape 3072x768]
                                                 [--authors-repeats 1] [--device cpu|cuda] [--json PATH]
                                                 [--rse-target 0.02] [--rse-repeats 5] [--pilot 50]
                                                 [--train-steps 300] [--trace-rse-only]
                                                 [Hydra overrides ...]

Model and batch: the run's own (`sparsity-exp run` config plus the overrides; default the LN-MLP on
digits with trainer.batch_size=128), model in eval mode, the first training batch. Comparisons:

  hessian_trace_<n>        vs pyhessian       Hutchinson trace with n Rademacher vectors over the
                           trainable parameters: the probe's route (one gradient graph, products
                           from it) against PyHessian 0.1's `hessian(...).trace(maxIter=n)` with the
                           same vectors (the global torch RNG seeded as the probe's generator) and a
                           tolerance that cannot stop it early (its test divides by a signed running
                           mean); .grad is cleared before and after each PyHessian call. Both times
                           include building the gradient graph. The probe's default block of vectors
                           per product (one on the CPU; what 1/4 of the free memory holds on CUDA).
                           On CUDA PyHessian draws its vectors on the device, so max_rel_diff
                           compares the two estimates instead of the per-vector terms.
  hessian_top_eigenvalue   vs pyhessian       the probe's top_abs_eigenvalue (Lanczos, tol 1e-3,
                           50 restarts) against PyHessian's power iteration (maxIter 100, tol 1e-3)
  trace_to_<t>_rse         vs pyhessian_hutchinson, curvlinops_{hutchinson,hutchpp,xtrace},
                           project_hutchinson: wall time to a trace of the trainable parameters'
                           Hessian with relative standard error t (--rse-target, 2%) on the model
                           after --train-steps steps of `sparsity-exp run` (probes=none, same
                           overrides), its first training batch. Every standard error is
                           calibrated (issue 27): the project's XTrace by its jackknife, and each
                           error x t_{df}(0.975) / 1.96 so errors on few degrees of freedom count
                           at their interval's width (`calibrated`). project_s is the project's best
                           estimator (probes.hessian.trace_estimator) at its budget. Budgets:
                           Hutchinson (project, PyHessian, curvlinops: the same estimator) from a
                           --pilot run's per-vector spread; the project's Hutch++/XTrace the smallest
                           on a x1.2 grid whose own error estimate (median of 5 draws) reaches t;
                           curvlinops' Hutch++/XTrace (no error estimate of their own) at the budget
                           of the project's same method rounded up to a multiple of 3 / 2. Then
                           --rse-repeats alternating timed runs of every method (medians; graph or
                           operator building included). max_rel_diff: |project - peer| / |peer| of
                           the median estimates (noise of ~t). The JSON's "trace_rse" lists every
                           method: matvecs, median seconds, estimate, own_rse (its error estimate
                           / |estimate|; PyHessian's from its per-vector values; none for
                           curvlinops), spread_rse (std over the repeats / |mean|)
  spectrum                 vs gram_eigvalsh   eigenvalues of K K^T for a random --key-shape key
                           (float32, N(0, 1/in)): the probe's key_eigenvalues against a bare
                           torch eigvalsh of the smaller Gram in float64
  spectrum                 vs svdvals         ... against the previous route (squared svdvals)
  spectrum                 vs authors_eigvals ... against the authors' route: torch eigvals of the
                           d_ff x d_ff K K^T (float64), real part clamped at 0 (--authors-repeats)
  spectrum                 vs weightwatcher   ... against WeightWatcher 0.7.7's get_ESD of a Linear
                           holding K (its eigenvalues of the smaller Gram)

Peers are the optional extra `peers` (pip install 'sparsity-exp[peers]'); a peer that is not
installed is skipped with a note. ratio = project_s / peer_s (the minimum over --repeats interleaved
repeats of each); max_rel_diff = max_i |project_i - peer_i| / max_i |peer_i| over the compared
values (per-vector Hutchinson terms for the trace; the min(d_ff, d) non-trivial eigenvalues for the
spectra). `--json PATH` writes {"comparisons": [{name, peer, project_s, peer_s, ratio,
max_rel_diff}, ...], "trace_rse": [{library, method, matvecs, seconds, estimate, own_rse,
spread_rse}, ...]}. Timings on a shared machine are noisy: run with one thread and read minima.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SEED = 1234


def _compose(overrides):
    from hydra import compose, initialize_config_dir

    from sparsity_exp.config import conf_dir, register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def model_and_batch(overrides, device: torch.device):
    from sparsity_exp.batches import make_batches
    from sparsity_exp.data import build_data
    from sparsity_exp.models import build_model, find_sites
    from sparsity_exp.run import seed_everything

    cfg = _compose(["trainer.batch_size=128", "trainer.device=cpu", *overrides])
    seed_everything(cfg.seed)
    data = build_data(cfg.data)
    model = build_model(cfg.model, data.info, cfg.activation).to(device).eval()
    batch = next(iter(make_batches(data.train, cfg.trainer.batch_size, True, True, cfg.seed, device)))
    batch = tuple(t.to(device) for t in batch)
    return model, find_sites(model), batch


def timed(fns: dict, repeats: dict) -> tuple[dict, dict]:
    """Interleaved repeats after one warm-up call of each function repeated more than once;
    (minimum seconds, last value) per function."""
    best, value = {}, {}
    for name, fn in fns.items():
        if repeats[name] > 1:
            fn()
    for r in range(max(repeats.values())):
        for name, fn in fns.items():
            if r >= repeats[name]:
                continue
            t = time.perf_counter()
            value[name] = fn()
            t = time.perf_counter() - t
            best[name] = min(best.get(name, float("inf")), t)
    return best, value


def max_rel_diff(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def entry(name, peer, project_s, peer_s, diff) -> dict:
    return {"name": name, "peer": peer, "project_s": project_s, "peer_s": peer_s,
            "ratio": project_s / peer_s if peer_s > 0 else float("nan"), "max_rel_diff": diff}


def _pyhessian():
    try:
        from pyhessian import hessian
    except ImportError:
        return None
    return hessian


def hessian_comparisons(model, sites, batch, samples: list[int], repeats: int, device) -> list[dict]:
    from sparsity_exp.probes.hessian import (HessianProducts, _graph_bytes, block_size, extreme_eigenvalues,
                                             hutchinson, parameter_variables)
    from sparsity_exp.train import ClassificationTask

    peer_cls = _pyhessian()
    if peer_cls is None:
        print("pyhessian not installed: Hessian comparisons skipped (pip install 'sparsity-exp[peers]')")
        return []
    task = ClassificationTask()
    x, y = batch

    def project_graph(variables):
        return HessianProducts(task(model, batch, train=True)[0], variables)

    def project_trace(n):  # the probe's default block: one vector at a time on the CPU, from memory on CUDA
        with parameter_variables(model, sites, "trainable") as (variables, _):
            products, saved = _graph_bytes(lambda: project_graph(variables))
            block = block_size(None, None, saved, n, device)
            z = hutchinson(products, variables, n, block, torch.Generator().manual_seed(SEED))
        return z.sum(1).numpy()

    def project_top():
        with parameter_variables(model, sites, "trainable") as (variables, _):
            return extreme_eigenvalues(project_graph(variables), 50, 1e-3, torch.Generator().manual_seed(SEED))[1]

    def peer(call):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(SEED)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its loss.backward(create_graph=True) warns of a reference cycle
            h = peer_cls(model, torch.nn.functional.cross_entropy, data=(x, y), cuda=device.type == "cuda")
            out = call(h)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        model.zero_grad(set_to_none=True)
        model.eval()
        return out

    out = []
    for n in samples:
        best, value = timed({"project": lambda: project_trace(n),
                             "peer": lambda: np.asarray(peer(lambda h: h.trace(maxIter=n, tol=float("-inf"))))},
                            {"project": repeats, "peer": repeats})
        if device.type == "cuda":  # PyHessian draws its vectors on the device: compare the estimates
            diff = max_rel_diff([value["project"].mean()], [value["peer"].mean()])
        else:  # the same vectors: compare term by term
            diff = max_rel_diff(value["project"], value["peer"])
        out.append(entry(f"hessian_trace_{n}", "pyhessian", best["project"], best["peer"], diff))
        print(f"  trace, {n} vectors: project {value['project'].mean():.6g}, pyhessian {value['peer'].mean():.6g}")
    best, value = timed({"project": project_top,
                         "peer": lambda: peer(lambda h: h.eigenvalues(maxIter=100, tol=1e-3)[0][0])},
                        {"project": repeats, "peer": repeats})
    out.append(entry("hessian_top_eigenvalue", "pyhessian", best["project"], best["peer"],
                     max_rel_diff([value["project"]], [value["peer"]])))
    print(f"  top eigenvalue: project {value['project']:.6g}, pyhessian {value['peer']:.6g}")
    return out


def _curvlinops():
    try:
        from curvlinops import HessianLinearOperator
        from curvlinops.trace.epperly2024xtrace import xtrace
        from curvlinops.trace.hutchinson import hutchinson_trace
        from curvlinops.trace.meyer2020hutch import hutchpp_trace
    except ImportError:
        return None
    return HessianLinearOperator, {"hutchinson": hutchinson_trace, "hutchpp": hutchpp_trace, "xtrace": xtrace}


def trained_model(overrides, steps: int, device, work: Path):
    """The benchmark's model after ``steps`` training steps of `sparsity-exp run` (probes=none), and
    its first training batch (as ``model_and_batch``)."""
    from sparsity_exp.assemble import load_weights
    from sparsity_exp.lifecycle.checkpoint import list_checkpoints
    from sparsity_exp.run import execute

    cfg = _compose(["trainer.batch_size=128", "trainer.device=cpu", "probes=none", "trainer.progress=false",
                    f"trainer.steps={steps}", "trainer.eval_every=100000", *overrides])
    with contextlib.redirect_stdout(io.StringIO()):
        execute(cfg, work)
    model, sites, batch = model_and_batch(overrides, device)
    load_weights(model, list_checkpoints(work)[-1][1], device)
    return model.eval(), sites, batch


def calibrated(se: float, df: float) -> float:
    """The standard error an interval of +-1.96 would need: se x t_{df}(0.975) / 1.96, so errors on
    different degrees of freedom compare (the 95% interval's half-width / 1.96; issue 27)."""
    from scipy import stats

    if not se > 0:
        return float(se)
    return float(se * (stats.t.ppf(0.975, df) if np.isfinite(df) else stats.norm.ppf(0.975)) / stats.norm.ppf(0.975))


def trace_rse_comparisons(model, sites, batch, target: float, repeats: int, pilot: int, device) -> tuple[list, list]:
    """Wall time to a trace whose relative standard error is ``target``: the matvec budget each
    method needs (Hutchinson: from a pilot's per-vector spread, m = (sd / (target |trace|))^2, the
    same for the project and PyHessian, which run the same estimator; the project's Hutch++ and
    XTrace: the smallest budget on a x1.2 grid whose own error estimate, median over five draws,
    is <= target |trace|; curvlinops' three at the budget of the project's same method, rounded up
    to what it accepts), then ``repeats`` alternating timed runs of each at its budget (medians)."""
    from sparsity_exp.probes.hessian import (HessianProducts, _graph_bytes, block_size, parameter_variables,
                                             trace_estimate)
    from sparsity_exp.train import ClassificationTask

    task = ClassificationTask()
    gen = torch.Generator().manual_seed(SEED)

    def project(method, m):
        with parameter_variables(model, sites, "trainable") as (variables, _):
            products, saved = _graph_bytes(lambda: HessianProducts(task(model, batch, train=True)[0], variables))
            block = block_size(None, None, saved, m, device)
            t, se, df = trace_estimate(method, products, variables, m, block, gen)
            return t, calibrated(se, df)

    runs = {}  # (library, method) -> callable(m) -> (estimate, own error or nan)
    for method in ("hutchinson", "hutchpp", "xtrace"):
        runs[("project", method)] = lambda m, method=method: project(method, m)
    peer_cls = _pyhessian()
    if peer_cls is not None:
        x, y = batch

        def pyhessian(m):
            model.zero_grad(set_to_none=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                h = peer_cls(model, torch.nn.functional.cross_entropy, data=(x, y), cuda=device.type == "cuda")
                z = np.asarray(h.trace(maxIter=m, tol=float("-inf")))
            model.zero_grad(set_to_none=True)
            model.eval()
            return float(z.mean()), calibrated(float(z.std(ddof=1) / np.sqrt(len(z))), len(z) - 1)

        runs[("pyhessian", "hutchinson")] = pyhessian
    else:
        print("pyhessian not installed: its trace-to-RSE run skipped (pip install 'sparsity-exp[peers]')")
    found = _curvlinops()
    if found is not None:
        op_cls, fns = found
        params = [p for p in model.parameters() if p.requires_grad]

        def curv(method, m):
            A = op_cls(model, torch.nn.CrossEntropyLoss(), params, [batch], check_deterministic=False)
            if method == "hutchinson":  # chunks of <= 64 vectors (one [n, m] block otherwise): the same estimator
                chunks = [min(64, m - i) for i in range(0, m, 64)]
                return float(sum(c * float(fns[method](A, c)) for c in chunks) / m), float("nan")
            return float(fns[method](A, m)), float("nan")

        for method in fns:
            runs[("curvlinops", method)] = lambda m, method=method: curv(method, m)
    else:
        print("curvlinops not installed: its trace-to-RSE runs skipped (pip install 'sparsity-exp[peers]')")

    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    t, se = runs[("project", "hutchinson")](pilot)
    sd = se * np.sqrt(pilot) / calibrated(1.0, pilot - 1)  # the per-vector spread
    m = max(2, int(np.ceil((sd / (target * abs(t))) ** 2)))
    while calibrated(sd / np.sqrt(m), m - 1) > target * abs(t):  # the t quantile on m - 1 df
        m += 1
    budgets = {"hutchinson": m}
    print(f"  pilot: trace {t:.4g}, Hutchinson sd {sd:.4g} -> {budgets['hutchinson']} vectors "
          f"for {target:.0%}")
    for method in ("hutchpp", "xtrace"):
        m = 12
        while True:
            draws = [runs[("project", method)](m) for _ in range(5)]
            rse = float(np.median([e / abs(v) for v, e in draws]))
            if rse <= target or m >= min(n, 4 * budgets["hutchinson"]):
                break
            m = int(np.ceil(m * 1.2))
        budgets[method] = m
        print(f"  {method}: {m} products for a median own RSE of {rse:.2%}")

    def budget(library, method):
        m = budgets[method]
        if library == "curvlinops":
            m = {"hutchpp": -(-m // 3) * 3, "xtrace": -(-m // 2) * 2}.get(method, m)
        return m

    times = {k: [] for k in runs}
    values = {k: [] for k in runs}
    for _ in range(repeats):  # alternate: every method once per round
        for key, fn in runs.items():
            start = time.perf_counter()
            v, e = fn(budget(*key))
            times[key].append(time.perf_counter() - start)
            values[key].append((v, e))
    detail = []
    for key in runs:
        est = np.array([v for v, _ in values[key]])
        own = np.array([e for _, e in values[key]])
        detail.append({"library": key[0], "method": key[1], "matvecs": budget(*key),
                       "seconds": float(np.median(times[key])), "estimate": float(np.median(est)),
                       "own_rse": float(np.median(own / np.abs(est))) if np.isfinite(own).all() else None,
                       "spread_rse": float(est.std(ddof=1) / abs(est.mean())) if len(est) > 1 else None})
    best = min((d for d in detail if d["library"] == "project"), key=lambda d: d["seconds"])
    out = []
    for d in detail:
        if d["library"] != "project" or d["method"] == "hutchinson":
            name = f"trace_to_{target:g}_rse"
            out.append(entry(name, f"{d['library']}_{d['method']}", best["seconds"], d["seconds"],
                             abs(best["estimate"] - d["estimate"]) / max(abs(d["estimate"]), 1e-300)))
    print(f"  best project estimator: {best['method']} ({best['matvecs']} products, {best['seconds']:.3f} s)")
    return out, detail


def spectrum_comparisons(shape: tuple[int, int], repeats: int, authors_repeats: int, device) -> list[dict]:
    from sparsity_exp.probes.spectrum import key_eigenvalues

    g = torch.Generator().manual_seed(SEED)
    key = (torch.randn(shape, generator=g) / shape[1] ** 0.5).to(device)
    rank = min(shape)

    def gram():
        w = key.double()
        small = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
        return torch.linalg.eigvalsh(small).flip(0).cpu().numpy()

    def svdvals():
        return torch.linalg.svdvals(key.double()).cpu().numpy() ** 2

    def authors():
        w = key.double()
        lam = torch.linalg.eigvals(w @ w.T).real.clamp(min=0).cpu().numpy()
        return np.sort(lam)[::-1]

    refs = {"gram_eigvalsh": (gram, repeats), "svdvals": (svdvals, repeats), "authors_eigvals": (authors, authors_repeats)}
    try:
        import weightwatcher

        logging.getLogger("weightwatcher").setLevel(logging.ERROR)
        layer = torch.nn.Linear(shape[1], shape[0], bias=False)
        with torch.no_grad():
            layer.weight.copy_(key.cpu())
        holder = torch.nn.Sequential(layer)
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            layer_id = int(weightwatcher.WeightWatcher().describe(model=holder)["layer_id"].iloc[0])

        def ww():
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                esd = weightwatcher.WeightWatcher().get_ESD(model=holder, layer=layer_id)
            return np.sort(np.asarray(esd))[::-1]

        refs["weightwatcher"] = (ww, repeats)
    except Exception as exc:  # not installed, or its import failed
        print(f"weightwatcher unavailable ({type(exc).__name__}: {exc}): its comparison skipped")
    fns = {"project": lambda: key_eigenvalues(key), **{k: f for k, (f, _) in refs.items()}}
    reps = {"project": repeats, **{k: r for k, (_, r) in refs.items()}}
    best, value = timed(fns, reps)
    out = []
    for name in refs:
        diff = max_rel_diff(value["project"][:rank], np.asarray(value[name])[:rank])
        out.append(entry("spectrum", name, best["project"], best[name], diff))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", default="10,50", help="Hutchinson vector counts, comma-separated")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--authors-repeats", type=int, default=1, help="repeats of the slow d_ff x d_ff eigvals")
    ap.add_argument("--key-shape", default="3072x768", help="d_ff x d of the key for the spectra (ViT-B/16)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (PyHessian then draws its vectors there)")
    ap.add_argument("--rse-target", type=float, default=0.02, help="relative standard error of the trace to reach")
    ap.add_argument("--rse-repeats", type=int, default=5, help="alternating timed runs per method at its budget")
    ap.add_argument("--pilot", type=int, default=50, help="Hutchinson vectors of the pilot that sizes its budget")
    ap.add_argument("--train-steps", type=int, default=300, help="training steps before the trace-to-RSE runs")
    ap.add_argument("--trace-rse-only", action="store_true", help="only the trace-to-RSE runs (no per-product "
                    "timings against PyHessian, no spectra)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the run config (model, data, batch)")
    args = ap.parse_args(argv)
    try:
        samples = [int(s) for s in args.samples.split(",") if s]
        shape = tuple(int(s) for s in args.key_shape.lower().split("x"))
        if len(shape) != 2 or min(shape) < 1 or not samples or min(samples) < 1 or args.repeats < 1 \
                or args.rse_repeats < 2 or not 0 < args.rse_target < 1 or args.pilot < 2 or args.train_steps < 1:
            raise ValueError
    except ValueError:
        print("error: --samples wants positive integers like 10,50, --key-shape one like 3072x768, "
              "--repeats a positive integer, --rse-repeats >= 2, --rse-target in (0, 1), --pilot >= 2, "
              "--train-steps >= 1", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available; use --device cpu", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    print(f"one thread; minimum of {args.repeats} interleaved repeats; device {device}")
    comparisons = []
    if not args.trace_rse_only:
        model, sites, batch = model_and_batch(args.overrides, device)
        comparisons += hessian_comparisons(model, sites, batch, samples, args.repeats, device)
        comparisons += spectrum_comparisons(shape, args.repeats, args.authors_repeats, device)
    import tempfile

    with tempfile.TemporaryDirectory() as work:
        print(f"trace to {args.rse_target:.0%} relative standard error, after {args.train_steps} training steps:")
        trained, tsites, tbatch = trained_model(args.overrides, args.train_steps, device, Path(work) / "run")
        rse, detail = trace_rse_comparisons(trained, tsites, tbatch, args.rse_target, args.rse_repeats,
                                            args.pilot, device)
    comparisons += rse
    print(f"{'library':12s} {'method':11s} {'matvecs':>8s} {'median_s':>9s} {'estimate':>10s} {'own_rse':>8s} "
          f"{'spread_rse':>10s}")
    for d in detail:
        own = "-" if d["own_rse"] is None else f"{d['own_rse']:.2%}"
        spread = "-" if d["spread_rse"] is None else f"{d['spread_rse']:.2%}"
        print(f"{d['library']:12s} {d['method']:11s} {d['matvecs']:8d} {d['seconds']:9.3f} {d['estimate']:10.4g} "
              f"{own:>8s} {spread:>10s}")
    print(f"{'name':24s} {'peer':16s} {'project_s':>10s} {'peer_s':>10s} {'ratio':>7s} {'max_rel_diff':>12s}")
    for c in comparisons:
        print(f"{c['name']:24s} {c['peer']:16s} {c['project_s']:10.4f} {c['peer_s']:10.4f} {c['ratio']:7.3f} "
              f"{c['max_rel_diff']:12.2e}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"comparisons": comparisons, "trace_rse": detail}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
