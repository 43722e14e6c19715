"""A diverged seed is an outcome of its arm, not a missing value.

A run whose loss went non-finite (``NonFiniteLoss``: status ``diverged`` in the report) failed because
of what its arm does to training; leaving it out judges the arm on its survivors and flatters it (an
intervention that diverges on one seed in three would read as if it always trained). So each comparison
counts a diverged seed at the **worst value observed in that comparison** for the claim's direction:
for the treatment side the least favourable value to the prediction (the smallest value seen in either
side for an `increase`, the largest for a `decrease`), for the reference side the most favourable to it
(the other end), for a step-0 reference and a bound window likewise; its accuracy (claims with a
non-inferiority margin) at the lowest accuracy observed for a treatment, the highest for a reference.
A diverging arm can then only look worse than its survivors do. Runs that failed for reasons outside the
arm (a crash, a refused config, not run: ``failed`` / ``missing``) stay missing and are left out, as
before; the report gives every arm's divergence rate.
"""
from __future__ import annotations

import math

import numpy as np

DIVERGED = "diverged"


def _finite(*arrays) -> np.ndarray:
    vals = np.concatenate([np.asarray(a, float).ravel() for a in arrays if a is not None and np.size(a)] or [np.array([])])
    return vals[np.isfinite(vals)]


def worst_values(direction: str, *observed) -> tuple[float, float]:
    """(treatment's worst, reference's worst) over the finite observed values: least favourable to the
    prediction for the treatment (min for `increase`), most favourable to the reference (max)."""
    vals = _finite(*observed)
    if not len(vals):
        return math.nan, math.nan
    lo, hi = float(vals.min()), float(vals.max())
    return (lo, hi) if direction == "increase" else (hi, lo)


def fill(values, diverged, value: float) -> np.ndarray:
    """``values`` (per seed, or seeds x steps) with the rows of diverged seeds set to ``value``."""
    out = np.array(values, dtype=float, copy=True)
    mask = np.asarray(diverged, bool)
    if mask.any() and math.isfinite(value):
        out[mask] = value
    return out


def rates(jobs, status_of) -> dict:
    """arm -> (diverged seeds, seeds with a run outcome) over ``jobs`` (``status_of(job)``: main.seed_status)."""
    out: dict = {}
    for job in jobs:
        status = status_of(job)
        d, n = out.get(job.arm.name, (0, 0))
        out[job.arm.name] = (d + (status == DIVERGED), n + (status in ("completed", DIVERGED)))
    return out


def section(jobs, status_of) -> str:
    """The report's divergence table: per arm, seeds diverged of those that ran to an outcome."""
    table = rates(jobs, status_of)
    lines = ["## Divergence", "",
             "A seed whose loss went non-finite is an outcome of its arm (study/divergence.py): each comparison "
             "counts it at the worst value observed in that comparison for the claim's direction, so a diverging "
             "intervention cannot look better than its survivors; runs that failed for other reasons (crash, "
             "refused, not run) are missing and left out.", "",
             "| arm | diverged | of seeds run | rate |", "|---|---|---|---|"]
    for arm, (d, n) in table.items():
        lines.append(f"| {arm} | {d} | {n} | {d / n:.2f} |" if n else f"| {arm} | {d} | 0 | n/a |")
    return "\n".join(lines + [""])
