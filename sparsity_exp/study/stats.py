"""From metric rows to verdicts, with scipy.stats.

Per arm: the mean over seeds with a 95% **t** confidence interval (``scipy.stats.t``).
Effect (treatment - reference):
  * arms:  Welch's t interval of the difference of means (``ttest_ind(equal_var=False)``);
  * step0: the paired t interval of the per-seed differences window - step 0 (``ttest_rel``);
  * bound: the one-sample t interval of window - bound (``ttest_1samp``).
Relative change (difference / reference) and, for fractions, the relative change of the non-zero
fraction 1 - metric come with a **bootstrap** percentile interval over seeds (``scipy.stats.bootstrap``;
coarse with 3 seeds, shown for scale, not used for the verdict).
Direction test: the one-sided t test above and an exact permutation test (``permutation_test``: all
relabellings for arms, all sign flips of the per-seed differences for step0/bound; with 3 vs 3 seeds
the smallest attainable p is 1/20 = 0.05, with 3 sign flips 1/8).
Verdict: ``supported`` when the difference's 95% CI lies wholly on the predicted side of zero AND the
point estimate of the effect, in the claim's unit, exceeds the smallest effect of interest in the
predicted direction; ``contradicted`` when the CI lies wholly on the other side; ``not shown``
otherwise (including too few seeds).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from .suite import Metric, Window

CONFIDENCE = 0.95
SUPPORTED, CONTRADICTED, NOT_SHOWN = "supported", "contradicted", "not shown"
NO_DATA = "no data"  # too few seeds with a value: the claim was not tested (runs missing or failed)


# ------------------------------------------------------------------------------ values from rows

def series(rows: pd.DataFrame, metric: Metric) -> pd.Series:
    """value by step of one metric in one run's rows (``divide_by``: the ratio of two metrics, step by step)."""
    def pick(name):
        sel = rows[(rows["probe"] == metric.probe) & (rows["metric"] == name) & (rows["split"] == metric.split)
                   & (rows["layer"].astype(str) == metric.layer)]
        return sel.groupby("step")["value"].last().sort_index()

    values = pick(metric.metric)
    if metric.divide_by:
        values = (values / pick(metric.divide_by)).dropna()
    return values


def window_value(values: pd.Series, window: Window) -> float:
    """Mean of the last ``window.last`` evaluations (nan when the run has none)."""
    return float(values.iloc[-window.last:].mean()) if len(values) else math.nan


def step0_value(values: pd.Series) -> float:
    return float(values.loc[0]) if 0 in values.index else math.nan


# ------------------------------------------------------------------------------ statistics

def t_interval(x) -> tuple[float, float]:
    """95% t interval of the mean of ``x`` (a zero-width one when all values are equal)."""
    x = np.asarray(x, dtype=float)
    if len(x) < 2:
        return (math.nan, math.nan)
    if np.ptp(x) == 0:  # identical values (exactly: a variance of 1e-33 from rounding would mislead scipy)
        return (float(x[0]), float(x[0]))
    lo, hi = stats.t.interval(CONFIDENCE, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    return (float(lo), float(hi))


def welch_interval(t, r) -> tuple[float, float]:
    t, r = np.asarray(t, float), np.asarray(r, float)
    if len(t) < 2 or len(r) < 2:
        return (math.nan, math.nan)
    if np.ptp(t) == 0 and np.ptp(r) == 0:
        d = float(t.mean() - r.mean())
        return (d, d)
    ci = stats.ttest_ind(t, r, equal_var=False).confidence_interval(CONFIDENCE)
    return (float(ci.low), float(ci.high))


def _alternative(direction: str) -> str:
    return "greater" if direction == "increase" else "less"


def welch_p(t, r, direction: str) -> float:
    t, r = np.asarray(t, float), np.asarray(r, float)
    if len(t) < 2 or len(r) < 2 or (np.ptp(t) == 0 and np.ptp(r) == 0):
        return math.nan
    return float(stats.ttest_ind(t, r, equal_var=False, alternative=_alternative(direction)).pvalue)


def paired_p(d, direction: str) -> float:
    d = np.asarray(d, float)
    if len(d) < 2 or np.ptp(d) == 0:
        return math.nan
    return float(stats.ttest_1samp(d, 0.0, alternative=_alternative(direction)).pvalue)


def _mean_difference(a, b, axis=-1):
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def permutation_p(t, r, direction: str, paired: bool = False) -> float:
    """Exact permutation p-value of the predicted direction: every relabelling of the pooled seeds
    (independent arms) or every within-seed swap, i.e. sign flip of the differences (paired)."""
    t, r = np.asarray(t, float), np.asarray(r, float)
    if len(t) < 2 or len(r) < 2:
        return math.nan
    res = stats.permutation_test((t, r), _mean_difference, vectorized=True, n_resamples=np.inf,
                                 permutation_type="samples" if paired else "independent",
                                 alternative=_alternative(direction))
    return float(res.pvalue)


def bootstrap_interval(statistic, samples: tuple, paired: bool) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(*samples)`` over seeds (nan when degenerate)."""
    if any(len(s) < 2 for s in samples):
        return (math.nan, math.nan)
    with np.errstate(all="ignore"):
        try:
            res = stats.bootstrap(samples, statistic, paired=paired, vectorized=True, n_resamples=2000,
                                  method="percentile", confidence_level=CONFIDENCE, rng=np.random.default_rng(0))
        except ValueError:
            return (math.nan, math.nan)
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


# ------------------------------------------------------------------------------ verdicts

@dataclass
class Effect:
    """One comparison: treatment vs reference (another arm, its own step 0, or a constant)."""

    treatment: np.ndarray          # per-seed window values of the treatment
    reference: np.ndarray          # per-seed reference values (another arm; step 0 of the same seeds; the bound)
    kind: str                      # arms | step0 | bound
    direction: str
    sesoi: float
    sesoi_unit: str
    diff: float = math.nan
    diff_ci: tuple = (math.nan, math.nan)
    rel: float = math.nan
    rel_ci: tuple = (math.nan, math.nan)
    nonzero_rel: float = math.nan
    nonzero_rel_ci: tuple = (math.nan, math.nan)
    p_t: float = math.nan
    p_perm: float = math.nan
    verdict: str = NOT_SHOWN
    reason: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def test_name(self) -> str:
        return {"arms": "Welch t", "step0": "paired t", "bound": "one-sample t"}[self.kind]


def _rel(t, r, axis=-1):
    return np.mean(t, axis=axis) / np.abs(np.mean(r, axis=axis)) - np.sign(np.mean(r, axis=axis))


def _nonzero_rel(t, r, axis=-1):
    return (1 - np.mean(t, axis=axis)) / (1 - np.mean(r, axis=axis)) - 1


def judge(treatment, reference, kind: str, direction: str, sesoi: float, sesoi_unit: str = "difference",
          min_seeds: int = 2) -> Effect:
    """The effect of ``treatment`` over ``reference`` and its verdict (module docstring)."""
    t = np.asarray(treatment, float)
    r = np.asarray(reference, float)
    if kind in ("step0", "bound"):  # paired by seed: keep the seeds where both values exist
        ok = ~(np.isnan(t) | np.isnan(r))
        t, r = t[ok], r[ok]
    else:
        t, r = t[~np.isnan(t)], r[~np.isnan(r)]
    e = Effect(t, r, kind, direction, sesoi, sesoi_unit)
    if len(t) < min_seeds or len(r) < min_seeds:
        e.verdict = NO_DATA
        e.reason = f"too few seeds with values ({len(t)} vs {len(r)}; need {min_seeds}): run the study (not --judge-only) or see the failed runs"
        return e
    paired = kind != "arms"
    e.diff = float(t.mean() - r.mean())
    e.diff_ci = t_interval(t - r) if paired else welch_interval(t, r)
    e.p_t = paired_p(t - r, direction) if paired else welch_p(t, r, direction)
    e.p_perm = permutation_p(t, r, direction, paired=paired)
    if abs(r.mean()) > 1e-6:  # a relative change of a (near) zero reference says nothing
        e.rel = float(_rel(t, r))
        e.rel_ci = bootstrap_interval(_rel, (t, r), paired) if kind != "bound" else \
            tuple(float(v) / abs(r.mean()) for v in e.diff_ci)
    if r.mean() != 1:
        e.nonzero_rel = float(_nonzero_rel(t, r))
        e.nonzero_rel_ci = bootstrap_interval(_nonzero_rel, (t, r), paired) if kind != "bound" else \
            tuple(-float(v) / (1 - r.mean()) for v in e.diff_ci[::-1])
    e.verdict, e.reason = verdict(e.diff_ci, direction, aligned_effect(e), sesoi, sesoi_unit)
    return e


def aligned_effect(e: Effect) -> float:
    """The effect in the claim's unit, signed so that positive is the predicted direction."""
    sign = 1.0 if e.direction == "increase" else -1.0
    if e.sesoi_unit == "difference":
        return sign * e.diff
    if e.sesoi_unit == "relative":
        return sign * e.rel
    return sign * -e.nonzero_rel  # more sparsity = fewer non-zeros


def verdict(ci: tuple, direction: str, aligned: float, sesoi: float, unit: str) -> tuple[str, str]:
    lo, hi = ci
    if any(map(math.isnan, (lo, hi))):
        return NOT_SHOWN, "no confidence interval"
    sign = 1.0 if direction == "increase" else -1.0
    near, far = sorted((sign * lo, sign * hi))  # the interval in the predicted orientation
    if near > 0:
        if not math.isnan(aligned) and aligned > sesoi:
            return SUPPORTED, "CI excludes zero in the predicted direction and the effect exceeds the SESOI"
        return NOT_SHOWN, f"CI excludes zero in the predicted direction, but the effect ({aligned:.3g} {unit}) " \
                          f"is below the smallest effect of interest ({sesoi:g})"
    if far < 0:
        return CONTRADICTED, "CI excludes zero against the predicted direction"
    return NOT_SHOWN, "CI includes zero"
