"""``seeds.csv``: every number a study's verdicts were computed from, at full precision.

One row per look x verdict row x side x seed x step used: ``look`` (1 for a fixed-seed study; under
``--seeds auto`` every look's whole family, since the correction at a look adjusts over every row judged
there), ``claim`` (the verdict row), ``side`` (treatment / reference), ``arm``, ``seed``, ``step``, ``role``
(``value``: the metric at a step of the claim's window, whose mean over the window's steps is the seed's
value; ``step0``: the step-0 value a `step0` claim compares with; ``accuracy``: the accuracy behind a
non-inferiority test), ``value`` (float64 written with Python's repr, so it reads back bit for bit),
``status`` (completed, diverged, failed, missing, no value) and ``imputed`` (a diverged seed counted at
the worst value, study/divergence.py), plus the rule's inputs per row (kind, direction, SESOI and unit,
bound, paired, the look's one-sided level, the non-inferiority margin, the correction, control). From this
file alone the verdicts recompute (tests/test_study_audit.py does it with stats.judge and stats.adjust).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

NAME = "seeds.csv"


def _status(nums, seed) -> str:
    return nums.status[nums.seeds.index(seed)] if seed in nums.seeds else "missing"


def _window_steps(nums, seed, claim) -> pd.Series | None:
    """The metric at the steps of the window that gave this seed's value (None: the run has no value)."""
    curve = nums.curves.get(seed)
    if curve is None or not len(curve):
        return None
    if claim.window.from_step is not None:
        return curve[curve.index >= claim.window.from_step]
    return curve.iloc[-claim.window.last:]


def verdict_rows(v, look: int, correction: str) -> list[dict]:
    c, j = v.claim, v.judged
    base = {"look": look, "claim": v.row, "kind": c.compare, "direction": c.direction, "sesoi": c.sesoi,
            "sesoi_unit": c.sesoi_unit, "bound": c.bound, "paired": j["paired"], "alpha": j["alpha"],
            "ni_margin": c.ni_margin, "correction": correction, "control": c.control,
            "metric": c.metric.label}
    out = []

    def add(side, nums, seed, step, role, value, status, imputed=False):
        out.append({**base, "side": side, "arm": nums.arm, "label": nums.label, "seed": seed,
                    "step": step, "role": role, "value": value, "status": status, "imputed": imputed})

    sides = [("treatment", v.treatment, j["seeds_t"], j["treatment"], j["diverged_t"])]
    if c.compare == "arms":
        sides.append(("reference", v.reference, j["seeds_r"], j["reference"], j["diverged_r"]))
    acc = j.get("accuracy")
    for k, (side, nums, seeds, values, diverged) in enumerate(sides):
        for i, seed in enumerate(seeds):
            status = _status(nums, seed)
            window = None if diverged[i] else _window_steps(nums, seed, c)
            if c.compare == "bound" and j["steps"] is not None:  # seeds x steps, judged step by step
                for s, step in enumerate(j["steps"]):
                    add(side, nums, seed, step, "value", float(values[i, s]), status, diverged[i])
            elif window is None or not np.isfinite(values[i]):
                add(side, nums, seed, math.nan, "value", float(values[i]), status, diverged[i])
            else:
                for step, x in window.items():
                    add(side, nums, seed, int(step), "value", float(x), status)
            if c.compare == "step0":
                add(side, nums, seed, 0, "step0", float(j["reference"][i]), status, diverged[i])
            if acc is not None:
                add(side, nums, seed, math.nan, "accuracy", float(acc[k][i]), status, diverged[i])
    return out


def write(out: Path, looks: list[tuple[int, list]], correction: str) -> Path:
    """seeds.csv from every look's verdicts: [(look, verdicts judged at that look), ...]."""
    rows = [r for look, verdicts in looks for v in verdicts for r in verdict_rows(v, look, correction)]
    table = pd.DataFrame(rows)
    if len(table):
        table["step"] = table["step"].astype("Int64")  # an integer step, empty where a seed has none
    path = out / NAME
    table.to_csv(path, index=False, float_format=None)
    return path
