"""Null checks: every claim's own test on a null version of its data, shown beside its verdict.

A claim that reads its theory's outcome on data where the claimed cause is absent cannot fail as stated:
it is flagged, shown as such, and left out of the multiplicity family (judged like a control, unadjusted).
The null version depends on the claim's kind (what the claim says training or an intervention does):

  * ``arms`` (an intervention's effect, which acts through training): the same comparison on both sides'
    **step-0 values** (the untrained models; arms that share seeds share the init). A claim comparing two
    metrics of the same runs that differ by construction (activation vs derivative sparsity of a flat
    region that outputs 1.6) reads `supported` here and is flagged. Where a side has no step-0 value the
    null is **shuffled arm labels** (paired: each pair swapped with probability 1/2; independent arms: the
    pooled values split again at random; seeded), which destroys any real difference between the arms.
  * ``step0`` ("rises in training"): the untrained values against the untrained values of **another
    seed** (step 0 of seed i+1 against step 0 of seed i, paired as the claim is): no training in between.
  * ``bound`` ("stays below/above B" in training): **step-0 values** against B. A bound the random init
    already satisfies (the authors' plot cap 100 for a ratio80 of ~7) reads `supported` and is flagged.
  * a planted positive (``planted: true``): shown, never flagged (its effect is there by construction);
  * ``predict: no_effect`` (the theory predicts |theta| < SESOI): the treatment **shifted by 2 x SESOI**
    (in the metric's difference units, from the reference mean): a claim made false by one SESOI beyond
    the margin; if the test still reads `no effect of interest`, it cannot fail.

Each null is judged with the claim's own rule at the suite's one-sided alpha without any multiplicity
adjustment (the most liberal reading, so the flag errs towards flagging), without the accuracy
non-inferiority part (a step-0 accuracy means nothing) and without the permutation p-value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import stats

CANNOT_FAIL = "cannot fail as stated"
NULL_SEED = 20241  # the shuffles' seed (a null check must give the same answer on every rerun)


@dataclass
class NullCheck:
    kind: str                 # step-0 values | step 0 of another seed | step 0 vs bound | shuffled labels | SESOI shift
    effect: stats.Effect | None
    theory_outcome: str       # the outcome the claim's theory predicts (supported / no effect of interest)

    @property
    def verdict(self) -> str:
        return self.effect.verdict if self.effect is not None else stats.NO_DATA

    @property
    def cannot_fail(self) -> bool:
        return bool(self.theory_outcome) and self.verdict == self.theory_outcome

    def text(self) -> str:
        flag = f" → **{CANNOT_FAIL}**" if self.cannot_fail else "" if self.theory_outcome else " (planted: expected)"
        return f"{self.kind}: {self.verdict}{flag}"


def theory_outcome(claim) -> str:
    """The outcome the claim's theory predicts ('' for a planted positive: its effect is there by construction,
    often from step 0 on, which is what makes it known in advance; its null check is shown, never flagged)."""
    if getattr(claim, "planted", False):
        return ""
    return stats.NO_EFFECT if getattr(claim, "predict", "effect") == "no_effect" else stats.SUPPORTED


def _finite(x) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    return x[np.isfinite(x)]


def _shuffled(t: np.ndarray, r: np.ndarray, paired: bool, rng: np.random.Generator):
    if paired:
        swap = rng.random(len(t)) < 0.5
        return np.where(swap, r, t), np.where(swap, t, r)
    t_ok, r_ok = _finite(t), _finite(r)
    pooled = rng.permutation(np.concatenate([t_ok, r_ok]))
    return pooled[:len(t_ok)], pooled[len(t_ok):]


def _margin(claim, reference: np.ndarray) -> float:
    """The SESOI in the metric's difference units at the reference mean (as plan.margin_in_difference)."""
    ref = float(np.nanmean(reference)) if np.isfinite(reference).any() else math.nan
    if claim.sesoi_unit == "relative":
        return claim.sesoi * abs(ref)
    if claim.sesoi_unit == "nonzero_relative":
        return claim.sesoi * abs(1 - ref)
    return claim.sesoi


def null_check(claim, treatment, reference, treatment_step0, reference_step0, paired: bool,
               alpha: float = stats.ALPHA) -> NullCheck:
    """The claim's test on the null version of its data (module docstring). ``treatment`` and
    ``reference`` are the per-seed values the verdict used (reference: the other arm, the step-0 values
    or the repeated bound, as ``main.judge_suite`` passes them; a bound window's seeds x steps is fine),
    ``*_step0`` the two sides' step-0 values (None where a side has none: a bound's constant)."""
    rng = np.random.default_rng(NULL_SEED)
    want = theory_outcome(claim)
    kind = claim.compare
    t0 = np.asarray(treatment_step0, float) if treatment_step0 is not None else None

    def run(t, r, judge_kind, is_paired):
        return stats.judge(t, r, judge_kind, claim.direction, claim.sesoi, claim.sesoi_unit, paired=is_paired,
                           alpha=alpha, permutation=False)

    if getattr(claim, "predict", "effect") == "no_effect":
        t = np.asarray(treatment, float)
        r = np.asarray(reference, float)
        shift = (1.0 if claim.direction == "increase" else -1.0) * 2 * _margin(claim, r)
        return NullCheck("treatment + 2 x SESOI", run(t + shift, r, kind, paired), want)
    if kind == "arms":
        r0 = np.asarray(reference_step0, float) if reference_step0 is not None else None
        if t0 is not None and r0 is not None and np.isfinite(t0).sum() >= stats.MIN_SEEDS \
                and np.isfinite(r0).sum() >= stats.MIN_SEEDS:
            return NullCheck("step-0 values", run(t0, r0, "arms", paired), want)
        t, r = _shuffled(np.asarray(treatment, float), np.asarray(reference, float), paired, rng)
        return NullCheck("shuffled arm labels", run(t, r, "arms", paired), want)
    if kind == "step0":
        if t0 is None or np.isfinite(t0).sum() < stats.MIN_SEEDS:
            return NullCheck("step 0 of another seed", None, want)
        return NullCheck("step 0 of another seed", run(np.roll(t0, -1), t0, "step0", True), want)
    # bound: the untrained values against the bound
    bound = float(np.asarray(reference, float).flat[0]) if np.size(reference) else math.nan
    if t0 is None or np.isfinite(t0).sum() < stats.MIN_SEEDS:
        return NullCheck("step 0 vs the bound", None, want)
    return NullCheck("step 0 vs the bound", run(t0, np.full(len(t0), bound), "bound", True), want)
