"""From metric rows to verdicts, with scipy.stats (and statsmodels' multiple-testing adjustment).

One entry point turns per-seed arrays into an outcome: ``judge(treatment, reference, kind, direction,
sesoi, sesoi_unit, paired=..., alpha=..., accuracy=..., ni_margin=...) -> Effect`` (``.verdict``), at
the claim's own level; ``adjust(effects, correction)`` then re-decides a suite's claims under a
multiplicity correction. The rule is ``RULE`` (printed at the top of every report; README points to it).

Every test is a t test of a linear contrast of the two arms' means, so the intervals and p-values of
all units come from one computation. With N = s·(mean_t - mean_r) (s = +1 when the claim predicts an
increase, -1 for a decrease) and D the claim unit's denominator (1 for ``difference``, |mean_r| for
``relative``, 1 - mean_r for ``nonzero_relative``), the aligned effect is theta = N / D, positive in the
predicted direction. "theta > theta0" is tested by the t test of N - theta0·D > 0: a one-sample t over
seeds of the per-seed contrasts (paired designs: the arms share seeds, init and batch order; step 0 of
the same runs; a constant bound) or Welch's t with Satterthwaite's degrees of freedom (independent
arms). The interval for theta is Fieller's: the theta0 no two one-sided test rejects. It is an exact t
interval for ``difference`` and for a constant denominator (a bound); for a ratio it is bounded only
when D itself is told apart from 0 at the same level, and is labelled ``unbounded`` otherwise (never a
CI then). Coverage is checked by simulation in tests/test_study_stats.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from .suite import Metric, Window

ALPHA = 0.025  # one-sided level of each test; the interval shown is the two-sided (1 - 2·ALPHA) = 95% one
MIN_SEEDS = 3  # fewer seeds with a value (per arm; pairs for a paired test) is `no data`
SUPPORTED, NO_EFFECT, CONTRADICTED, INCONCLUSIVE = "supported", "no effect of interest", "contradicted", "inconclusive"
NO_DATA = "no data"  # too few seeds with a value: the claim was not tested (runs missing, failed or diverged)
OUTCOMES = (SUPPORTED, NO_EFFECT, CONTRADICTED, INCONCLUSIVE, NO_DATA)
# --correction -> statsmodels' method. Holm and Benjamini-Yekutieli hold under any dependence between the rows
# (rows that share a reference arm are correlated); Benjamini-Hochberg needs independence or positive dependence
CORRECTIONS = {"holm": "holm", "bh": "fdr_bh", "by": "fdr_by", "none": None}

RULE = """\
How to read a verdict. theta is the claim's effect in its SESOI unit (difference, relative change, or
relative change of the non-zero fraction 1 - s), signed so that positive is the predicted direction;
delta is the smallest effect of interest (SESOI). Each claim gets three one-sided t tests at
alpha = {alpha:g} and the two-sided {level} interval for theta (Fieller's; the same tests inverted):
  supported             theta > +delta: the interval lies wholly above +delta (p_sup < alpha);
  contradicted          theta < -delta: the interval lies wholly below -delta (p_con < alpha);
  no effect of interest |theta| < delta: TOST equivalence, the interval lies within (-delta, +delta)
                        (p_tost = the larger of the two one-sided p-values < alpha; impossible when delta = 0);
  inconclusive          anything else: the seeds cannot tell (more seeds may; `sparsity-exp study --plan`);
  no data               fewer than {min_seeds} seeds with a value in an arm (runs missing, failed or diverged).
A seed whose loss diverged (non-finite) is an outcome of its arm: it is counted at the worst value seen
in the comparison for the claim's direction (study/divergence.py), so a diverging arm cannot look better;
seeds missing for reasons outside the arm (crash, refused, not run) are left out, and a verdict that left
some out says how many.
A bound claim ("stays below/above B") is judged at every measured step of its window (intersection-union:
supported only when every step's interval lies beyond B; contradicted when some step's lies wholly on the
other side, Bonferroni over the steps); its margin is B itself (no SESOI on top).
Paired t over seeds where the arms share seeds (same init and batch order; step 0 of the same runs; a
bound), Welch's t otherwise or where the claim says `test: welch`; the table says which.
A claim with an accuracy non-inferiority margin m ("at equal accuracy") is `supported` only when the
accuracy difference's interval also lies above -m (intersection-union; p_sup is then the larger of the
two); sparser but not shown non-inferior reads `inconclusive`, with the reason.
Multiplicity: each of the three p-values is adjusted over the family (the suite's claims that are not
negative controls) by {correction}; the verdict uses the adjusted p-values, so a {level} interval beyond
the SESOI can still read `inconclusive` after the adjustment (the reason says so). Holm controls the
family-wise rate of each kind of wrong verdict (a false `supported`, a false `contradicted`, a false
`no effect of interest`) at alpha under any dependence between rows (rows sharing a reference arm are
correlated); BH controls the false discovery rate instead (under independence or positive dependence), BY
under any dependence. Controls (negative and planted) and claims whose null check reads their predicted
outcome ("cannot fail as stated") are judged unadjusted, outside the family. A negative control passes
only as `no effect of interest` at its SESOI (equivalence); a planted positive only as `supported`.
Zero variance (identical values over seeds) gives no interval and no test: `inconclusive`, said as such.
"""

CORRECTION_NAMES = {"holm": "Holm's step-down", "bh": "Benjamini-Hochberg", "by": "Benjamini-Yekutieli",
                    "none": "no correction"}


def level_text(alpha: float) -> str:
    """The two-sided level 1 - 2 alpha of an interval, with enough digits that it never rounds to 100%:
    two significant digits of what lies outside it (0.025 -> '95%', 0.0038 -> '99.24%', 4.5e-5 -> '99.991%')."""
    if not 0 < alpha < 0.5 or not math.isfinite(alpha):
        return "n/a"
    outside = 200 * alpha  # percent outside the interval
    decimals = max(0, 1 - math.floor(math.log10(outside)))
    text = f"{100 - outside:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text + "%"


def rule_text(alpha: float = ALPHA, correction: str = "holm") -> str:
    return RULE.format(alpha=alpha, level=level_text(alpha), min_seeds=MIN_SEEDS,
                       correction=CORRECTION_NAMES.get(correction, correction))


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
    if window.from_step is not None:  # a bound window: the last value (the per-step values: window_values)
        return float(values.iloc[-1]) if len(values) else math.nan
    return float(values.iloc[-window.last:].mean()) if len(values) else math.nan


def window_values(values: pd.Series, window: Window) -> pd.Series:
    """Every measured step of a bound window (``every_from_step``), by step."""
    return values[values.index >= window.from_step]


def step0_value(values: pd.Series) -> float:
    return float(values.loc[0]) if 0 in values.index else math.nan


def first_finite_value(values: pd.Series) -> float:
    """The value at the first measured step where it is finite (a claim's ``baseline: first_finite``): for a
    ratio that is 0/0 or x/0 at initialisation, e.g. AS_K / coef_L0 on torchvision's ViT, whose zero-initialised
    head passes no gradient to the blocks at step 0 (so AS_K = coef_L0 = 0 there)."""
    finite = values[np.isfinite(values.to_numpy(dtype=float))]
    return float(finite.iloc[0]) if len(finite) else math.nan


# ------------------------------------------------------------------------------ t machinery (vectorised)

def t_interval(x, confidence: float = 1 - 2 * ALPHA) -> tuple[float, float]:
    """t interval of the mean of ``x`` (descriptive, per arm; a zero-width one when all values are equal)."""
    x = np.asarray(x, dtype=float)
    if len(x) < 2:
        return (math.nan, math.nan)
    if np.ptp(x) == 0:  # identical values (exactly: a variance of 1e-33 from rounding would mislead scipy)
        return (float(x[0]), float(x[0]))
    lo, hi = stats.t.interval(confidence, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    return (float(lo), float(hi))


def welch_interval(t, r, confidence: float = 1 - 2 * ALPHA) -> tuple[float, float]:
    t, r = np.asarray(t, float), np.asarray(r, float)
    if len(t) < 2 or len(r) < 2:
        return (math.nan, math.nan)
    if np.ptp(t) == 0 and np.ptp(r) == 0:
        d = float(t.mean() - r.mean())
        return (d, d)
    ci = stats.ttest_ind(t, r, equal_var=False).confidence_interval(confidence)
    return (float(ci.low), float(ci.high))


def _var(x):
    return np.var(x, axis=-1, ddof=1)


def contrast(t, r, a, b, c=0.0, paired: bool = False):
    """Estimate, standard error and degrees of freedom of a·mean(t) + b·mean(r) + c over the last axis
    (any leading axes are independent data sets: the simulations in the tests draw thousands at once).
    Paired: the one-sample t of the per-seed a·t_i + b·r_i; else Welch-Satterthwaite."""
    t, r = np.asarray(t, float), np.asarray(r, float)
    if paired:
        d = a * t + b * r
        n = d.shape[-1]
        return d.mean(-1) + c, np.sqrt(_var(d) / n), np.full(np.shape(d.mean(-1)), n - 1.0)
    nt, nr = t.shape[-1], r.shape[-1]
    vt = np.asarray(a, float) ** 2 * _var(t) / nt
    vr = np.asarray(b, float) ** 2 * _var(r) / nr
    se2 = vt + vr
    with np.errstate(all="ignore"):
        df = se2 ** 2 / (vt ** 2 / (nt - 1) + vr ** 2 / (nr - 1))
    return a * t.mean(-1) + b * r.mean(-1) + c, np.sqrt(se2), df


def _p_greater(est, se, df):
    """One-sided p of 'the contrast > 0' (nan where se = 0: no test)."""
    with np.errstate(all="ignore"):
        return np.where(se > 0, stats.t.sf(est / np.where(se > 0, se, 1), df), np.nan)


@dataclass
class Unit:
    """theta = s·(mean_t - mean_r) / (dr·mean_r + d0): the claim's unit as a ratio of linear contrasts."""

    s: float
    dr: float
    d0: float

    @classmethod
    def of(cls, unit: str, direction: str, ref_mean: float = 1.0) -> "Unit":
        s = 1.0 if direction == "increase" else -1.0
        if unit == "difference":
            return cls(s, 0.0, 1.0)
        if unit == "relative":
            return cls(s, 1.0 if ref_mean >= 0 else -1.0, 0.0)  # divided by |mean_r|
        if unit == "nonzero_relative":  # fewer non-zeros 1 - s is the predicted direction of more sparsity
            return cls(s, -1.0, 1.0)
        raise ValueError(unit)

    def margin_p(self, t, r, theta0, paired: bool, greater: bool = True):
        """p of 'theta > theta0' (greater) or 'theta < theta0': the t test of N - theta0·D."""
        with np.errstate(all="ignore"):
            est, se, df = contrast(t, r, self.s, -self.s - theta0 * self.dr, -theta0 * self.d0, paired)
            return _p_greater(est if greater else -est, se, df)


def fieller(t, r, unit: Unit, paired: bool, alpha: float = ALPHA):
    """theta-hat and Fieller's two-sided (1 - 2·alpha) interval for theta = N / D (vectorised over
    leading axes). Returns (theta, low, high, bounded): where D is not told apart from 0 (the quadratic's
    leading coefficient <= 0) the confidence set is unbounded, low = -inf, high = +inf, bounded False.
    For a constant D (difference units, a bound) it is the plain t interval of N / D. Each end is where
    the one-sided margin test (``Unit.margin_p``) sits at alpha, so interval and p-values agree."""
    with np.errstate(all="ignore"):  # a zero or non-finite denominator ends as an unbounded set, not a warning
        return _fieller(t, r, unit, paired, alpha)


def _fieller(t, r, unit: Unit, paired: bool, alpha: float):
    t, r = np.asarray(t, float), np.asarray(r, float)
    s, dr, d0 = unit.s, unit.dr, unit.d0
    if paired:
        n_i = s * (t - r)
        d_i = dr * r + d0 + 0 * t
        n = n_i.shape[-1]
        N, D = n_i.mean(-1), d_i.mean(-1)
        vNN, vDD = _var(n_i) / n, _var(d_i) / n
        vND = np.sum((n_i - N[..., None]) * (d_i - D[..., None]), axis=-1) / (n - 1) / n
        df = np.full(np.shape(N), n - 1.0)
    else:
        nt, nr = t.shape[-1], r.shape[-1]
        vt, vr = _var(t) / nt, _var(r) / nr
        N, D = s * (t.mean(-1) - r.mean(-1)), dr * r.mean(-1) + d0
        vNN, vDD, vND = vt + vr, dr ** 2 * vr, -s * dr * vr

        def welch_df(theta0):  # Satterthwaite's df of the contrast N - theta0·D (it depends on theta0)
            vb = (s + theta0 * dr) ** 2 * vr
            with np.errstate(all="ignore"):
                df = (vt + vb) ** 2 / (vt ** 2 / (nt - 1) + vb ** 2 / (nr - 1))
            # 0/0 where the contrast has no variance at theta0 (a constant treatment exactly at the unit's
            # zero: theta0 = theta = +-100%); any finite df then gives the same (double) root
            return np.where(vt + vb > 0, df, nt + nr - 2.0)

    def roots(df):
        q = stats.t.ppf(1 - alpha, df)
        A = D ** 2 - q ** 2 * vDD
        B = N * D - q ** 2 * vND
        C = N ** 2 - q ** 2 * vNN
        with np.errstate(all="ignore"):
            root = np.sqrt(np.maximum(B ** 2 - A * C, 0.0))
            ok = A > 0
            safe = np.where(ok, A, 1)
            return np.where(ok, (B - root) / safe, -np.inf), np.where(ok, (B + root) / safe, np.inf), ok

    with np.errstate(all="ignore"):
        theta = N / D
    if paired:
        low, high, bounded = roots(df)
    else:
        # Welch: each end is where its own one-sided test sits at alpha, with the df of the contrast at that
        # end (fixed-point steps from the df at theta-hat), so the interval agrees with the margin tests
        low, high, bounded = roots(welch_df(theta))
        for _ in range(6):
            lo_fin, hi_fin = np.where(np.isfinite(low), low, theta), np.where(np.isfinite(high), high, theta)
            low, _, ok_lo = roots(welch_df(lo_fin))
            _, high, ok_hi = roots(welch_df(hi_fin))
            bounded = ok_lo & ok_hi
        low, high = np.where(bounded, low, -np.inf), np.where(bounded, high, np.inf)
    return theta, low, high, bounded


# ------------------------------------------------------------------------------ permutation p (shown, not decisive)

def _alternative(direction: str) -> str:
    return "greater" if direction == "increase" else "less"


def _mean_difference(a, b, axis=-1):
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def permutation_p(t, r, direction: str, paired: bool = False) -> float:
    """Exact permutation p-value of the predicted direction of the difference (margin 0): every
    relabelling of the pooled seeds (independent arms) or every within-seed swap, i.e. sign flip of the
    differences (paired). Its floor is 1/C(n_t + n_r, n_t) (0.05 for 3 vs 3) or 1/2^n (0.125 for 3 pairs)."""
    t, r = np.asarray(t, float), np.asarray(r, float)
    if len(t) < 2 or len(r) < 2:
        return math.nan
    res = stats.permutation_test((t, r), _mean_difference, vectorized=True, n_resamples=np.inf,
                                 permutation_type="samples" if paired else "independent",
                                 alternative=_alternative(direction))
    return float(res.pvalue)


# ------------------------------------------------------------------------------ verdicts

@dataclass
class Interval:
    """An interval for one quantity: ``kind`` is ``CI`` (a confidence interval that holds), ``unbounded``
    (Fieller's set is not bounded: the reference cannot be told from 0), ``zero variance`` or ``n/a``."""

    low: float = math.nan
    high: float = math.nan
    kind: str = "n/a"

    def __iter__(self):  # (low, high), as the tuples of old
        return iter((self.low, self.high))

    def __getitem__(self, i):
        return (self.low, self.high)[i]


@dataclass
class NonInferiority:
    """Accuracy non-inferiority: treatment accuracy - reference accuracy > -margin."""

    margin: float
    diff: float = math.nan
    ci: Interval = field(default_factory=Interval)
    p: float = math.nan
    outcome: str = "n/a"  # non-inferior | inferior | not shown | no data

    @property
    def shown(self) -> bool:
        return self.outcome == "non-inferior"


@dataclass
class Effect:
    """One comparison: treatment vs reference (another arm, its own step 0, or a constant bound)."""

    treatment: np.ndarray          # per-seed values used (failed seeds dropped; pairs kept whole)
    reference: np.ndarray
    kind: str                      # arms | step0 | bound
    direction: str
    sesoi: float
    sesoi_unit: str
    paired: bool = False
    alpha: float = ALPHA
    n_failed_treatment: int = 0    # seeds without a value (failed, diverged, missing)
    n_failed_reference: int = 0
    diff: float = math.nan
    diff_ci: Interval = field(default_factory=Interval)
    rel: float = math.nan
    rel_ci: Interval = field(default_factory=Interval)
    nonzero_rel: float = math.nan
    nonzero_rel_ci: Interval = field(default_factory=Interval)
    aligned: float = math.nan      # theta: the effect in the SESOI unit, positive = predicted direction
    aligned_ci: Interval = field(default_factory=Interval)
    p_sup: float = math.nan        # theta > +sesoi (intersection-union with non-inferiority where given)
    p_con: float = math.nan        # theta < -sesoi
    p_tost: float = math.nan       # |theta| < sesoi
    p_perm: float = math.nan       # exact permutation p of the difference's direction (margin 0; shown only)
    p_sup_adj: float = math.nan
    p_con_adj: float = math.nan
    p_tost_adj: float = math.nan
    correction: str = "none"
    family_size: int = 1
    noninferiority: NonInferiority | None = None
    window_steps: list = field(default_factory=list)  # bound windows: the steps judged
    worst_step: int | None = None                     # bound windows: the step shown (the weakest)
    zero_variance: bool = False
    verdict: str = INCONCLUSIVE
    reason: str = ""

    @property
    def n_treatment(self) -> int:
        return len(self.treatment)

    @property
    def n_reference(self) -> int:
        return len(self.reference) if self.kind == "arms" else len(self.treatment)

    @property
    def test_name(self) -> str:
        if self.kind == "bound":
            return "one-sample t"
        return "paired t" if self.paired else "Welch t"

    @property
    def p_sup_joint(self) -> float:
        """p_sup of the claim as stated: with a non-inferiority margin, the intersection-union p (the larger)."""
        if self.noninferiority is None or math.isnan(self.p_sup):
            return self.p_sup
        p_ni = self.noninferiority.p if not math.isnan(self.noninferiority.p) else 1.0
        return max(self.p_sup, p_ni)

    @property
    def p_t(self) -> float:  # the decisive p of the verdict's kind (raw), for the old column
        return {SUPPORTED: self.p_sup, CONTRADICTED: self.p_con, NO_EFFECT: self.p_tost}.get(
            self.verdict, min((p for p in (self.p_sup, self.p_con, self.p_tost) if not math.isnan(p)), default=math.nan))


def outcome(p_sup: float, p_con: float, p_tost: float, alpha: float = ALPHA) -> str:
    """The four outcomes from the three one-sided p-values (raw or adjusted); at most one can be below
    0.5 for a given data set, so the order of the checks does not matter."""
    if p_sup < alpha:
        return SUPPORTED
    if p_con < alpha:
        return CONTRADICTED
    if p_tost < alpha:
        return NO_EFFECT
    return INCONCLUSIVE


def _is_fraction(*arrays) -> bool:
    return all(np.all((a >= 0) & (a <= 1)) for a in arrays) and float(np.mean(arrays[-1])) < 1


def _interval(unit: Unit, t, r, paired, alpha, sign: float = 1.0) -> tuple[float, Interval]:
    theta, lo, hi, bounded = (float(np.asarray(v)) for v in fieller(t, r, unit, paired, alpha))
    lo, hi = sorted((sign * lo, sign * hi))
    return sign * theta, Interval(lo, hi, "CI" if bounded else "unbounded")


def _missing_if_non_finite(values) -> np.ndarray:
    """Per-seed values as floats, +-inf as nan: an infinite value (a ratio over a zero, a blown-up probe)
    is a seed without a value, like a failed or diverged one (main.py filters only the window values)."""
    x = np.array(values, dtype=float)
    x[np.isinf(x)] = np.nan
    return x


def noninferiority(acc_t, acc_r, margin: float, paired: bool, alpha: float = ALPHA,
                   min_seeds: int = MIN_SEEDS) -> NonInferiority:
    """Treatment accuracy not worse than the reference's by more than ``margin`` (one-sided t at alpha)."""
    t, r = _missing_if_non_finite(acc_t), _missing_if_non_finite(acc_r)
    if paired:
        ok = ~(np.isnan(t) | np.isnan(r))
        t, r = t[ok], r[ok]
    else:
        t, r = t[~np.isnan(t)], r[~np.isnan(r)]
    ni = NonInferiority(margin)
    if len(t) < min_seeds or len(r) < min_seeds:
        ni.outcome = "no data"
        return ni
    unit = Unit(1.0, 0.0, 1.0)
    ni.diff, ni.ci = _interval(unit, t, r, paired, alpha)
    ni.p = float(unit.margin_p(t, r, -margin, paired, greater=True))
    p_inferior = float(unit.margin_p(t, r, -margin, paired, greater=False))
    if math.isnan(ni.p):
        ni.outcome, ni.ci.kind = ("non-inferior" if ni.diff > -margin else "inferior"), "zero variance"
        ni.p = 0.0 if ni.diff > -margin else 1.0  # identical accuracies over seeds: the difference is exact
    else:
        ni.outcome = "non-inferior" if ni.p < alpha else "inferior" if p_inferior < alpha else "not shown"
    return ni


def judge(treatment, reference, kind: str, direction: str, sesoi: float, sesoi_unit: str = "difference",
          *, paired: bool | None = None, alpha: float = ALPHA, min_seeds: int = MIN_SEEDS,
          accuracy: tuple | None = None, ni_margin: float | None = None, steps=None,
          permutation: bool = True) -> Effect:
    """The effect of ``treatment`` over ``reference`` and its verdict at the claim's own level (``RULE``).

    treatment, reference: per-seed values (nan = a seed without a value: failed, diverged, missing),
    index by index the same seed where ``paired``. kind: ``arms`` (reference: another arm), ``step0``
    (reference: the same runs at step 0; always paired) or ``bound`` (reference: the constant bound,
    repeated; the treatment may be seeds x steps of the window, judged step by step). paired: for
    ``arms``, whether the arms share seeds (None: Welch). accuracy = (acc_t, acc_r) with ``ni_margin``:
    the claim also needs accuracy non-inferiority. permutation: also the exact permutation p-value (shown
    beside the t tests, not used by the rule)."""
    t_all = _missing_if_non_finite(treatment)
    r_all = _missing_if_non_finite(reference)
    paired = True if kind in ("step0", "bound") else bool(paired)
    if kind == "bound" and t_all.ndim == 2:
        return _judge_window(t_all, float(np.asarray(r_all).flat[0]) if r_all.size else math.nan, direction,
                             sesoi_unit, alpha=alpha, min_seeds=min_seeds, steps=steps)
    if paired:
        ok = ~(np.isnan(t_all) | np.isnan(r_all))  # a pair is used whole or not at all
        t, r = t_all[ok], r_all[ok]
        failed_t, failed_r = int(np.isnan(t_all).sum()), int(np.isnan(r_all).sum()) if kind == "arms" else 0
    else:
        t, r = t_all[~np.isnan(t_all)], r_all[~np.isnan(r_all)]
        failed_t, failed_r = int(np.isnan(t_all).sum()), int(np.isnan(r_all).sum())
    e = Effect(t, r, kind, direction, sesoi, sesoi_unit, paired, alpha, failed_t, failed_r)
    if len(t) < min_seeds or len(r) < min_seeds:
        e.verdict = NO_DATA
        e.reason = (f"too few seeds with values ({len(t)} vs {len(r)}{' pairs' if paired else ''}; need {min_seeds}): "
                    f"run the study (not --judge-only), add seeds or see the failed runs")
        no_step0 = int((np.isnan(r_all) & ~np.isnan(t_all)).sum()) if kind == "step0" else 0
        if no_step0:  # the runs are there but the probe has no step-0 value: not a failed seed, say so
            e.reason += f"; {no_step0} seed(s) have a value but none at step 0 (does the probe measure at step 0?)"
        return e
    diff_unit = Unit(1.0, 0.0, 1.0)
    e.diff, e.diff_ci = _interval(diff_unit, t, r, paired, alpha)
    e.p_perm = permutation_p(t, r, direction, paired=paired) if permutation else math.nan
    if abs(r.mean()) > 0:
        e.rel, e.rel_ci = _interval(Unit.of("relative", "increase", r.mean()), t, r, paired, alpha)
    if _is_fraction(t, r):  # the relative change of the non-zero fraction 1 - s: only for fractions in [0, 1]
        e.nonzero_rel, e.nonzero_rel_ci = _interval(Unit(1.0, -1.0, 1.0), t, r, paired, alpha, sign=-1.0)
    if sesoi_unit == "nonzero_relative" and not _is_fraction(t, r):
        e.reason = "sesoi_unit nonzero_relative needs a fraction in [0, 1) (a sparsity); the values are not"
        return e
    unit = Unit.of(sesoi_unit, direction, float(r.mean()))
    e.aligned, e.aligned_ci = _interval(unit, t, r, paired, alpha)
    spread = np.ptp(t - r) if paired else max(np.ptp(t), np.ptp(r))
    scale = max(float(np.max(np.abs(t))), float(np.max(np.abs(r))), 1e-300)
    if spread <= 1e-12 * scale:  # identical values (or differences) over seeds, up to rounding: no interval, no test
        e.zero_variance = True
        e.aligned_ci = e.diff_ci = Interval(e.aligned if paired else math.nan, e.aligned if paired else math.nan,
                                            "zero variance")
        e.reason = (f"zero variance: every seed gives the same {'difference' if paired else 'value'} "
                    f"({e.diff:.4g}), so there is no interval and no test; check that the seeds vary what they should")
        _decide(e, ni_margin, accuracy)
        return e
    if e.aligned_ci.kind == "unbounded":
        denominator = (f"the reference's non-zero fraction (1 - {r.mean():.3g})" if sesoi_unit == "nonzero_relative"
                       else f"the reference mean ({r.mean():.3g})")
        e.reason = (f"{denominator} cannot be told apart from 0 at this level, so the {sesoi_unit} change has no "
                    f"bounded interval (Fieller's set is unbounded)")
        _decide(e, ni_margin, accuracy)
        return e
    e.p_sup = float(unit.margin_p(t, r, sesoi, paired, greater=True))
    e.p_con = float(unit.margin_p(t, r, -sesoi, paired, greater=False))
    if sesoi > 0:
        e.p_tost = max(float(unit.margin_p(t, r, -sesoi, paired, greater=True)),
                       float(unit.margin_p(t, r, sesoi, paired, greater=False)))
    _decide(e, ni_margin, accuracy)
    return e


def _decide(e: Effect, ni_margin, accuracy) -> None:
    """The verdict from the raw p-values (``adjust`` redoes it from the adjusted ones)."""
    if ni_margin is not None and accuracy is not None:
        e.noninferiority = noninferiority(*accuracy, ni_margin, e.paired, e.alpha)
    e.p_sup_adj, e.p_con_adj, e.p_tost_adj = e.p_sup_joint, e.p_con, e.p_tost
    redecide(e)


def redecide(e: Effect) -> None:
    """Verdict and reason from ``e.p_*_adj`` (equal to the raw ones without a correction)."""
    if e.verdict == NO_DATA:
        return
    if e.zero_variance or e.aligned_ci.kind == "unbounded" or (math.isnan(e.p_sup) and math.isnan(e.p_con)):
        e.verdict = INCONCLUSIVE
        return
    nan1 = lambda p: 1.0 if math.isnan(p) else p  # noqa: E731
    ni = e.noninferiority
    raw = outcome(nan1(e.p_sup_adj), nan1(e.p_con_adj), nan1(e.p_tost_adj), e.alpha)
    adj = e.correction != "none"
    lo, hi, d = e.aligned_ci.low, e.aligned_ci.high, e.sesoi
    ci = f"[{lo:.3g}, {hi:.3g}]"
    if raw == SUPPORTED:
        e.verdict, e.reason = SUPPORTED, f"the {level_text(e.alpha)} CI of theta {ci} lies above +SESOI {d:g}"
        if ni is not None:
            e.reason += f" and accuracy is non-inferior (margin {ni.margin:g})"
    elif raw == CONTRADICTED:
        e.verdict, e.reason = CONTRADICTED, f"the {level_text(e.alpha)} CI of theta {ci} lies below -SESOI {-d:g}"
    elif raw == NO_EFFECT:
        e.verdict = NO_EFFECT
        e.reason = f"equivalence (TOST): the {level_text(e.alpha)} CI of theta {ci} lies within ±{d:g}"
    else:
        e.verdict = INCONCLUSIVE
        if ni is not None and nan1(e.p_sup) < e.alpha and not ni.shown:
            e.reason = (f"sparser beyond the SESOI (CI {ci}), but accuracy non-inferiority at margin {ni.margin:g} "
                        f"is {ni.outcome} (accuracy difference {ni.diff:+.3g}, CI [{ni.ci.low:.3g}, {ni.ci.high:.3g}])")
        elif min(nan1(e.p_sup_joint), nan1(e.p_con), nan1(e.p_tost)) < e.alpha:
            e.reason = (f"the {level_text(e.alpha)} CI of theta {ci} alone would decide, but not after the "
                        f"{e.correction} adjustment over "
                        f"{e.family_size} claims")
        else:
            e.reason = (f"the {level_text(e.alpha)} CI of theta ({e.sesoi_unit}) {ci} reaches across ±SESOI {d:g}"
                        if d > 0 else f"the {level_text(e.alpha)} CI of theta ({e.sesoi_unit}) {ci} includes 0")
    if e.kind == "bound" and not (ni is not None or (e.verdict == INCONCLUSIVE and "adjustment" in e.reason)):
        e.reason = _bound_reason(e)
    if adj and e.verdict != INCONCLUSIVE:
        e.reason += f", and holds after the {e.correction} adjustment over {e.family_size} claims"
    failed = e.n_failed_treatment + e.n_failed_reference
    if failed and e.verdict != INCONCLUSIVE:  # the test sees only the survivors: a verdict must say so
        e.reason += (f" (judged without {failed} run(s) that failed, diverged or have no value: valid only if "
                     f"they did not fail because of the arm)")


def _judge_window(t: np.ndarray, bound: float, direction: str, sesoi_unit: str, *, alpha: float,
                  min_seeds: int, steps) -> Effect:
    """A bound claim over the window's steps (rows: seeds, columns: steps): intersection-union for
    `supported` (every step beyond the bound: p = the largest), Bonferroni over the steps for
    `contradicted` (some step wholly on the other side); shown: the weakest step."""
    steps = list(steps) if steps is not None else list(range(t.shape[1]))
    failed = int(np.isnan(t).any(axis=1).sum())  # a seed missing any step of the window is a failed seed
    t = t[~np.isnan(t).any(axis=1)]
    per_step = [judge(t[:, k], np.full(len(t), bound), "bound", direction, 0.0, sesoi_unit, alpha=alpha,
                      min_seeds=min_seeds) for k in range(t.shape[1])]
    if not per_step:
        e = Effect(np.array([]), np.array([]), "bound", direction, 0.0, sesoi_unit, True, alpha, failed)
        e.verdict, e.reason = NO_DATA, "no measured step in the window"
        return e
    nan1 = lambda p: 1.0 if math.isnan(p) else p  # noqa: E731
    worst = max(range(len(per_step)), key=lambda k: (nan1(per_step[k].p_sup), -per_step[k].aligned))
    e = per_step[worst]
    e.n_failed_treatment = failed
    e.window_steps, e.worst_step = steps, steps[worst]
    if e.verdict == NO_DATA:
        return e
    if any(s.zero_variance for s in per_step):
        e.zero_variance = True
        e.verdict = INCONCLUSIVE
        zs = [steps[k] for k, s in enumerate(per_step) if s.zero_variance]
        e.reason = f"zero variance at step(s) {zs}: every seed gives the same value, no test"
        return e
    e.p_sup = max(nan1(s.p_sup) for s in per_step)
    e.p_con = min(1.0, len(per_step) * min(nan1(s.p_con) for s in per_step))
    e.p_tost = math.nan
    e.p_sup_adj, e.p_con_adj, e.p_tost_adj = e.p_sup, e.p_con, e.p_tost
    redecide(e)
    return e


def _bound_reason(e: Effect) -> str:
    steps = e.window_steps or ["the last"]
    where = f"every measured step of {steps}" if len(steps) > 1 else f"step {steps[0]}"
    ci = f"[{e.aligned_ci.low:.3g}, {e.aligned_ci.high:.3g}]"
    level = f"{level_text(e.alpha)}"
    if e.verdict == SUPPORTED:
        return f"at {where} the {level} CI lies beyond the bound (weakest step {e.worst_step}: theta {ci})" \
            if e.worst_step is not None else f"the {level} CI of theta {ci} lies beyond the bound"
    if e.verdict == CONTRADICTED:
        return (f"at some step the {level} CI lies wholly on the wrong side of the bound"
                + (f" (Bonferroni over {len(steps)} steps)" if len(steps) > 1 else ""))
    return f"not every step's {level} CI lies beyond the bound (weakest step {e.worst_step}: theta {ci})" \
        if e.worst_step is not None else f"the {level} CI of theta {ci} reaches the bound"


# ------------------------------------------------------------------------------ multiplicity

def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values along the last axis (any leading axes: simulated studies).
    Written here rather than taken from statsmodels' ``multipletests``, whose Holm branch runs a full
    ``gc.collect()`` on every call (~0.2 s in a process holding torch); tests check it against statsmodels."""
    m = p.shape[-1]
    order = np.argsort(p, axis=-1, kind="stable")
    ranked = np.take_along_axis(p, order, axis=-1) * (m - np.arange(m))
    ranked = np.minimum(np.maximum.accumulate(ranked, axis=-1), 1.0)
    out = np.empty_like(ranked)
    np.put_along_axis(out, order, ranked, axis=-1)
    return out


def adjust_p(p, correction: str) -> np.ndarray:
    """Adjusted p-values (Holm's step-down, or statsmodels' ``multipletests`` for Benjamini-Hochberg and
    -Yekutieli; a p of nan, a test that could not run, counts as 1 so that it still takes its place in
    the family)."""
    p = np.where(np.isnan(np.asarray(p, float)), 1.0, np.asarray(p, float))
    method = CORRECTIONS[correction]
    if method is None or len(p) == 0:
        return p
    if method == "holm":
        return holm(p)
    from statsmodels.stats.multitest import multipletests

    return multipletests(p, method=method)[1]


def adjust(effects: list[Effect], correction: str = "holm", alpha: float = ALPHA,
           controls: list[bool] | None = None) -> None:
    """Re-decide a suite's verdicts under ``correction`` (in place). The family: every effect that is not
    a negative control and has data; each of p_sup (joint with non-inferiority), p_con and p_tost is
    adjusted within the family, and the verdict follows ``outcome`` of the adjusted p-values."""
    if correction not in CORRECTIONS:
        raise ValueError(f"correction {correction!r}: choose one of {list(CORRECTIONS)}")
    controls = controls or [False] * len(effects)
    family = [e for e, c in zip(effects, controls) if not c and e.verdict != NO_DATA]
    for e in effects:
        e.alpha = alpha
    for attr, raw in (("p_sup_adj", "p_sup_joint"), ("p_con_adj", "p_con"), ("p_tost_adj", "p_tost")):
        values = adjust_p([getattr(e, raw) for e in family], correction)
        for e, v in zip(family, values):
            setattr(e, attr, float(v) if not math.isnan(getattr(e, raw)) else math.nan)
    for e in family:
        e.correction, e.family_size = correction, len(family)
        redecide(e)
