"""Seed planning for a study: how many seeds a claim needs (``study SUITE --plan``) and adding seeds in
stages only where a claim is still undecided (``--seeds auto --max-seeds N``) without inflating the
false-positive rate.

**The verdict rule is a parameter.** Everything here takes ``rule(treatment, reference, kind, direction,
sesoi, sesoi_unit, alpha=...) -> outcome`` (per-seed values in seed order, NaN for a failed seed; ``alpha``
the one-sided level of each direction, 0.025 for a 95% two-sided interval) and only asks of the outcome
whether it is *decisive* (anything but ``inconclusive`` / ``no data``). ``default_rule`` is the
report's ``stats.judge(...).verdict`` at a chosen alpha (without the permutation p-value, which the
verdict does not use).

**Power** (``--plan``) is computed in closed form with scipy's noncentral t for the four-outcome rule
of issue 18 (docs/paper.md is silent on statistics; the rule is the README's): ``supported`` when the
one-sided (1 - alpha) bound on the effect lies beyond the SESOI on the predicted side, ``no effect of
interest`` when two one-sided tests (TOST) put the effect within +-SESOI. The standard deviation is the
pilot's: of the per-seed differences where the two sides share seeds (same init and batch order:
step 0 and bound claims, arms with one seed list), Welch-Satterthwaite otherwise. A pilot SD from three
seeds is itself uncertain (its 80% upper limit is ~2x), so the numbers are a floor, not a promise.

**Sequential rule** (``--seeds auto``): the stages are planned up front (``stage_sizes``: base seeds,
then evenly up to ``max_seeds``); stage k is judged at the nominal one-sided level ``alpha_k`` = the
alpha a Lan-DeMets spending function (O'Brien-Fleming-like by default, Pocock-like as an option) spends
between information fractions n_{k-1} / n_max and n_k / n_max. The levels sum to alpha, so by the union
bound a false verdict of each kind has probability at most alpha over all looks for the exact t tests
at any degrees of freedom, under any dependence between looks or rows, and with Holm over the family at
every look. The textbook group-sequential levels (z boundaries by numerical integration of the
canonical joint law, ``boundaries``, which match gsDesign's published values) are exact only for
normal statistics: mapped to t tests they give 0.0259 at looks 3/6/10 and 0.0287 at 3/4/5, 0.0262 for
11 rows under Holm (tests/test_study_sequential_rate.py, 200,000 null studies), so they are shown, not
used. The spending increments cost a little power at the last look (O'Brien-Fleming at 3/6/10: 0.0212
instead of 0.0238) and more where looks are close (3/4/5: 0.0128 instead of 0.0211). A claim stops at
its first decisive outcome; its verdict is the one of that stage, over the first n_k seeds of its arms.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy import integrate, optimize, stats as sps

from . import stats

ALPHA = 0.025          # one-sided level per direction (the 95% two-sided interval of the report)
POWER = 0.80
UNDECIDED = (stats.INCONCLUSIVE, stats.NO_DATA)  # outcomes after which a claim may get more seeds
SPENDING = ("obf", "pocock")

Rule = Callable[..., str]


# ------------------------------------------------------------------------------ the verdict rule

def default_rule(treatment, reference, kind: str, direction: str, sesoi: float, sesoi_unit: str = "difference",
                 alpha: float = ALPHA, paired: bool | None = None, min_seeds: int = stats.MIN_SEEDS) -> str:
    """The report's verdict, ``stats.judge(...).verdict`` (the four-outcome rule, ``stats.RULE``), at a
    one-sided level ``alpha``, without the permutation p-value (shown in the report, not used by the rule,
    and costly in the thousands of calls a calibration makes)."""
    return stats.judge(treatment, reference, kind, direction, sesoi, sesoi_unit, paired=paired, alpha=alpha,
                       min_seeds=min_seeds, permutation=False).verdict


def decisive(outcome: str) -> bool:
    return outcome not in UNDECIDED


# ------------------------------------------------------------------------------ one comparison's numbers

@dataclass
class Comparison:
    """What a verdict row compares, per seed (seed order): the rule's inputs."""

    row: str
    treatment: np.ndarray
    reference: np.ndarray
    kind: str
    direction: str
    sesoi: float
    sesoi_unit: str
    paired: bool          # the two sides share seeds (same init and batch order)

    def judge(self, rule: Rule, alpha: float = ALPHA, n: int | None = None) -> str:
        t, r = (self.treatment, self.reference) if n is None else (self.treatment[:n], self.reference[:n])
        shared = {"paired": self.paired} if self.kind == "arms" else {}  # step0 and bound are paired anyway
        return rule(t, r, self.kind, self.direction, self.sesoi, self.sesoi_unit, alpha=alpha, **shared)


def comparison(v) -> Comparison:
    """The rule's inputs of one ``report.Verdict`` (its per-seed values, as ``main.judge_suite`` reads them)."""
    c = v.claim
    t = np.asarray(v.treatment.values, float)
    if c.compare == "arms":
        r = np.asarray(v.reference.values, float)
        paired = list(v.treatment.seeds) == list(v.reference.seeds)
    elif c.compare == "step0":
        r, paired = np.asarray(v.treatment.step0, float), True
    else:
        r, paired = np.full(len(t), float(c.bound)), True
    return Comparison(v.row, t, r, c.compare, c.direction, c.sesoi, c.sesoi_unit, paired)


def margin_in_difference(cmp: Comparison, reference_mean: float) -> float:
    """The SESOI in units of the metric's difference (what the t test sees), from the reference mean."""
    if cmp.sesoi_unit == "relative":
        return cmp.sesoi * abs(reference_mean)
    if cmp.sesoi_unit == "nonzero_relative":
        return cmp.sesoi * abs(1 - reference_mean)
    return cmp.sesoi


# ------------------------------------------------------------------------------ power

@dataclass
class Spread:
    """The pilot's spread: sd of the per-seed differences (paired) or of each side (Welch)."""

    paired: bool
    sd: float = math.nan      # paired
    sd_t: float = math.nan    # Welch
    sd_r: float = math.nan

    def se_df(self, n: int) -> tuple[float, float]:
        """Standard error of the mean difference with n seeds per arm, and the t test's degrees of freedom."""
        if self.paired:
            return self.sd / math.sqrt(n), n - 1
        vt, vr = self.sd_t ** 2, self.sd_r ** 2
        se2 = (vt + vr) / n
        df = (vt + vr) ** 2 * (n - 1) / (vt ** 2 + vr ** 2) if vt + vr > 0 else 2 * (n - 1)
        return math.sqrt(se2), df


def spread_of(cmp: Comparison, paired: bool | None = None) -> Spread:
    paired = cmp.paired if paired is None else paired
    t, r = cmp.treatment, cmp.reference
    if paired:
        d = (t - r)[~(np.isnan(t) | np.isnan(r))]
        return Spread(True, sd=float(np.std(d, ddof=1)) if len(d) > 1 else math.nan)
    t, r = t[~np.isnan(t)], r[~np.isnan(r)]
    sd = lambda x: float(np.std(x, ddof=1)) if len(x) > 1 else math.nan  # noqa: E731
    return Spread(False, sd_t=sd(t), sd_r=sd(r))


def power_beyond(n: int, delta: float, margin: float, spread: Spread, alpha: float = ALPHA) -> float:
    """P(the one-sided (1 - alpha) t bound on the difference exceeds ``margin``) when the true difference
    is ``delta`` (both in the predicted orientation), n seeds per arm: the noncentral t's tail
    (``supported`` of the four-outcome rule; with margin 0 the textbook power of a one-sided t test)."""
    se, df = spread.se_df(n)
    if not se > 0 or df < 1:
        return math.nan
    return float(sps.nct.sf(sps.t.ppf(1 - alpha, df), df, (delta - margin) / se))


def power_equivalence(n: int, delta: float, margin: float, spread: Spread, alpha: float = ALPHA) -> float:
    """P(TOST at level alpha puts the difference within +-margin) when the true difference is ``delta``:
    exact for the t test (integrates over the chi-square law of the estimated standard error)."""
    se, df = spread.se_df(n)
    if not se > 0 or df < 1 or margin <= 0:
        return 0.0 if margin <= 0 else math.nan
    tc = sps.t.ppf(1 - alpha, df)
    v_max = df * (margin / (tc * se)) ** 2  # beyond it the interval of +-margin is empty

    def inside(v):
        s = se * math.sqrt(v / df)
        hi, lo = (margin - tc * s - delta) / se, (-margin + tc * s - delta) / se
        return max(0.0, sps.norm.cdf(hi) - sps.norm.cdf(lo)) * sps.chi2.pdf(v, df)

    # integrate where the chi-square law has its mass (quad over [0, v_max] misses it when v_max >> df)
    lo, hi = sps.chi2.ppf(1e-12, df), min(v_max, sps.chi2.isf(1e-12, df))
    if hi <= lo:
        return 0.0
    return float(integrate.quad(inside, lo, hi, limit=200, points=[min(max(df, lo), hi)])[0])


def seeds_needed(power: Callable[[int], float], target: float = POWER, start: int = 3, cap: int = 10_000) -> int | None:
    """The smallest n >= start with power(n) >= target (None beyond ``cap``); power rises with n."""
    if power(cap) < target:
        return None
    lo, hi = start, cap
    if power(lo) >= target:
        return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if power(mid) >= target else (mid, hi)
    return hi


@dataclass
class PlanRow:
    row: str
    n_pilot: int
    paired: bool
    sd: float             # paired: sd of differences; Welch: sqrt((sd_t^2 + sd_r^2) / 2)
    effect: float         # pilot's difference, predicted orientation
    margin: float         # SESOI in difference units
    n_supported: int | None       # true effect = 2 x SESOI (exceeds the SESOI by one SESOI)
    n_supported_pilot: int | None  # true effect = the pilot's estimate (when above the SESOI)
    n_no_effect: int | None        # true effect 0: TOST within +-SESOI
    note: str = ""


def plan_row(cmp: Comparison, alpha: float = ALPHA, target: float = POWER, paired: bool | None = None) -> PlanRow:
    sign = 1.0 if cmp.direction == "increase" else -1.0
    t, r = cmp.treatment, cmp.reference
    ok_t, ok_r = t[~np.isnan(t)], r[~np.isnan(r)]
    n = int(min(len(ok_t), len(ok_r)))
    spread = spread_of(cmp, paired)
    sd = spread.sd if spread.paired else math.sqrt((spread.sd_t ** 2 + spread.sd_r ** 2) / 2)
    row = PlanRow(cmp.row, n, spread.paired, sd, math.nan, math.nan, None, None, None)
    if n < 2 or not sd > 0:
        row.note = "no pilot spread (fewer than 2 seeds with a value, or identical values)"
        return row
    row.effect = sign * float(ok_t.mean() - ok_r.mean())
    row.margin = margin_in_difference(cmp, float(ok_r.mean()))
    m = row.margin
    if m > 0:
        row.n_supported = seeds_needed(lambda k: power_beyond(k, 2 * m, m, spread, alpha), target)
        row.n_no_effect = seeds_needed(lambda k: power_equivalence(k, 0.0, m, spread, alpha), target)
    else:  # SESOI 0: supported = the bound excludes zero; "twice the SESOI" means nothing, use the pilot
        row.note = "SESOI 0: only the pilot effect gives a power target"
    if row.effect > m:
        row.n_supported_pilot = seeds_needed(lambda k: power_beyond(k, row.effect, m, spread, alpha), target)
    return row


def _n(x: int | None, cap: int = 10_000) -> str:
    return f"> {cap}" if x is None else str(x)


def plan_table(rows: list[PlanRow], alpha: float = ALPHA, target: float = POWER, header: str | None = None) -> str:
    lines = [f"Seeds per arm for {target:.0%} power ({header or f'one-sided alpha {alpha:g} per test'}; pilot SD taken as the "
             f"true SD, so a floor: a 3-seed SD is uncertain by ~2x):",
             "| claim | pilot n | test | SD | pilot effect | SESOI (diff.) | `supported` if true = 2 SESOI "
             "| `supported` if true = pilot | `no effect of interest` if true = 0 |",
             "|" + "---|" * 9]
    for p in rows:
        pilot = "—" if not p.effect > p.margin else _n(p.n_supported_pilot)
        lines.append(f"| {p.row} | {p.n_pilot} | {'paired' if p.paired else 'Welch'} | {p.sd:.3g} | "
                     f"{p.effect:+.3g} | {p.margin:.3g} | "
                     f"{'—' if p.margin <= 0 or math.isnan(p.margin) else _n(p.n_supported)} | {pilot} | "
                     f"{'—' if p.margin <= 0 or math.isnan(p.margin) else _n(p.n_no_effect)} |"
                     + (f" {p.note}" if p.note else ""))
    return "\n".join(lines)


# ------------------------------------------------------------------------------ group-sequential boundaries

def spent(t: float, alpha: float, spending: str = "obf") -> float:
    """Lan-DeMets spending function: the share of the one-sided alpha spent by information fraction t."""
    if t <= 0:
        return 0.0
    t = min(t, 1.0)
    if spending == "obf":
        return float(2 * sps.norm.sf(sps.norm.isf(alpha / 2) / math.sqrt(t)))
    if spending == "pocock":
        return float(alpha * math.log(1 + (math.e - 1) * t))
    raise ValueError(f"spending {spending!r}: choose one of {SPENDING}")


def _grid(lo: float, hi: float, points: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and Simpson weights on [lo, hi] (points odd)."""
    x = np.linspace(lo, hi, points)
    w = np.ones(points)
    w[1:-1:2], w[2:-1:2] = 4, 2
    return x, w * (x[1] - x[0]) / 3


def boundaries(info: list[float], alpha: float = ALPHA, spending: str = "obf", points: int = 801) -> list[float]:
    """z boundaries c_1..c_K of a one-sided group-sequential test with information ``info`` (increasing,
    any scale): P0(Z_1 < c_1, ..., Z_{k-1} < c_{k-1}, Z_k >= c_k) = spent(t_k) - spent(t_{k-1}) with
    t_k = info_k / info_K, under the canonical joint law (the score S_k = Z_k sqrt(I_k) has independent
    N(0, I_k - I_{k-1}) increments). The continuation density of S_k is carried on a grid and each
    stage's crossing probability integrated with Simpson's rule."""
    info = [float(i) for i in info]
    if any(b <= a for a, b in zip(info, info[1:])) or info[0] <= 0:
        raise ValueError(f"information {info} must be positive and increasing")
    total = info[-1]
    bounds, previous = [], 0.0
    density = None  # (nodes, weights * density) of S_k on the continuation region
    for k, ik in enumerate(info):
        target = spent(ik / total, alpha, spending) - previous
        previous += target
        if k == 0:
            def cross(c, ik=ik):
                return float(sps.norm.sf(c))
        else:
            x, wf = density
            step = math.sqrt(ik - info[k - 1])

            def cross(c, ik=ik, x=x, wf=wf, step=step):
                return float(np.sum(wf * sps.norm.sf((c * math.sqrt(ik) - x) / step)))
        if target <= 1e-15:
            c = math.inf
        else:
            c = optimize.brentq(lambda z: cross(z) - target, -10, 40, xtol=1e-12)
        bounds.append(c)
        # the density of S_k where the trial continues (S_k < c sqrt(I_k)), on a fresh grid
        top = min(c, 12.0) * math.sqrt(ik)
        nodes, w = _grid(-12 * math.sqrt(ik), top, points)
        if k == 0:
            dens = sps.norm.pdf(nodes / math.sqrt(ik)) / math.sqrt(ik)
        else:
            x, wf = density
            step = math.sqrt(ik - info[k - 1])
            dens = (wf[None, :] * sps.norm.pdf((nodes[:, None] - x[None, :]) / step) / step).sum(axis=1)
        density = (nodes, w * dens)
    return bounds


@dataclass
class StagePlan:
    """Seeds per arm at each stage and the nominal one-sided level each stage is judged at.

    ``alphas`` are the levels the rule uses: the alpha-spending function's increments
    spent(t_k) - spent(t_{k-1}), which sum to ``alpha``. A false verdict of one kind needs the test of
    some look to reject at that look's level, so by the union bound its rate over all looks is at most
    the sum, ``alpha``, for the exact t tests at any degrees of freedom and under any dependence between
    looks, and with Holm over the family at every look (Holm holds the family-wise rate of one look at
    that look's level under any dependence). ``z_alphas`` are the textbook group-sequential levels
    (Phi(-c_k) of the z boundaries c_k, ``boundaries``): exact for normal statistics with known variance,
    they over-run alpha for t statistics (0.026 at looks 3/6/10, 0.028 at 3/4/5) and for Holm over a
    family, so they are shown, not used."""

    sizes: list[int]
    alphas: list[float]
    alpha: float = ALPHA
    spending: str = "obf"
    z_alphas: list[float] = field(default_factory=list)

    def describe(self) -> str:
        name = {"obf": "O'Brien-Fleming-like", "pocock": "Pocock-like"}[self.spending]
        parts = ", ".join(f"{n} seeds at {a:.3g}" for n, a in zip(self.sizes, self.alphas))
        text = (f"Lan-DeMets {name} alpha spending of one-sided {self.alpha:g} per direction over information "
                f"n_k / {self.sizes[-1]}; each look is judged at the alpha it spends (the levels sum to "
                f"{self.alpha:g}, so the rate of a false verdict is at most {self.alpha:g} for t statistics and "
                f"with the correction at every look): {parts}")
        if self.z_alphas and len(self.sizes) > 1:
            text += (" (the textbook z boundaries' nominal levels, " + ", ".join(f"{a:.3g}" for a in self.z_alphas)
                     + ", over-run the level for t statistics and are not used)")
        return text


def stage_sizes(base: int, max_seeds: int, stages: int = 3) -> list[int]:
    """base, then evenly spaced up to max_seeds (at most ``stages`` looks, each adding at least one seed)."""
    if max_seeds < base:
        raise ValueError(f"--max-seeds {max_seeds} is below the suite's {base} base seeds")
    sizes = sorted({int(round(x)) for x in np.linspace(base, max_seeds, max(stages, 1))} | {base, max_seeds})
    return sizes


def spent_levels(sizes: list[int], alpha: float = ALPHA, spending: str = "obf") -> list[float]:
    """The alpha each look spends, spent(n_k / n_K) - spent(n_{k-1} / n_K): the nominal levels the rule uses."""
    total = sizes[-1]
    cumulative = [spent(n / total, alpha, spending) for n in sizes]
    cumulative[-1] = alpha  # spent(1) = alpha up to rounding
    return [float(b - a) for a, b in zip([0.0] + cumulative[:-1], cumulative)]


def z_levels(sizes: list[int], alpha: float = ALPHA, spending: str = "obf") -> list[float]:
    """The textbook group-sequential nominal levels Phi(-c_k) of the z boundaries (not used by the rule)."""
    return [float(sps.norm.sf(c)) for c in boundaries(sizes, alpha, spending)]


def stage_plan(base: int, max_seeds: int, stages: int = 3, alpha: float = ALPHA, spending: str = "obf") -> StagePlan:
    sizes = stage_sizes(base, max_seeds, stages)
    return StagePlan(sizes, spent_levels(sizes, alpha, spending), alpha, spending, z_levels(sizes, alpha, spending))


def naive_plan(base: int, max_seeds: int, stages: int = 3, alpha: float = ALPHA) -> StagePlan:
    """Every stage at the full alpha: the rule that a sequential design must not be (for the tests)."""
    sizes = stage_sizes(base, max_seeds, stages)
    return StagePlan(sizes, [alpha] * len(sizes), alpha, "obf")


@dataclass
class Sequential:
    """Where one comparison stopped."""

    outcome: str
    stage: int          # 1-based
    n: int              # seeds per arm used
    alpha: float        # the nominal one-sided level of that stage
    history: list = field(default_factory=list)  # (n, outcome) per stage looked at


def sequential_outcome(cmp: Comparison, plan: StagePlan, rule: Rule = default_rule) -> Sequential:
    """The rule at each stage over the first n_k seeds, stopping at the first decisive outcome."""
    history = []
    for k, (n, a) in enumerate(zip(plan.sizes, plan.alphas)):
        outcome = cmp.judge(rule, a, n)
        history.append((n, outcome))
        if decisive(outcome) or k == len(plan.sizes) - 1:
            return Sequential(outcome, k + 1, n, a, history)
    raise AssertionError("unreachable")


def seeds_section(verdicts: list, splan: StagePlan | None, stages: dict | None, records: dict | None) -> tuple[str, dict]:
    """The report's "Seeds" section (markdown) and the verdicts.csv columns: seeds each row used and, under
    --seeds auto, the stage it stopped at and the outcome at every look."""
    columns = {"seeds_per_arm": {}, "stage": {}, "stage_alpha": {}, "looks": {}}
    lines = ["## Seeds", ""]
    if splan is None:
        lines += ["Fixed seeds (no sequential stages): every row is judged once, on the seeds listed per arm.", ""]
    else:
        lines += [f"`--seeds auto`: {splan.describe()}. A row stops at its first decisive outcome (anything but "
                  f"{' / '.join(UNDECIDED)}); only arms of rows still undecided get the next stage's seeds, and a "
                  f"row's verdict is that of its stopping stage, over the first n seeds of its arms.", ""]
    lines += ["| claim | seeds per arm (treatment / reference) | stopped at | outcome at each look |", "|---|---|---|---|"]
    for v in verdicts:
        n_t = int(np.sum(~np.isnan(np.asarray(v.treatment.values, float))))
        n_r = int(np.sum(~np.isnan(np.asarray(v.reference.values, float)))) if v.reference is not None else n_t
        used = f"{n_t} / {n_r}" + (f" of {len(v.treatment.seeds)}" if n_t < len(v.treatment.seeds) else "")
        if splan is None:
            stop, looks = "fixed", v.effect.verdict
            columns["stage"][v.row], columns["stage_alpha"][v.row] = "fixed", math.nan
        else:
            stage, _ = stages[v.row]
            stop = f"stage {stage} of {len(splan.sizes)} (level {splan.alphas[stage - 1]:.3g})"
            looks = "; ".join(f"{n}: {o}" for n, o in records.get(v.row, []))
            columns["stage"][v.row], columns["stage_alpha"][v.row] = stage, splan.alphas[stage - 1]
        columns["seeds_per_arm"][v.row] = len(v.treatment.seeds)
        columns["looks"][v.row] = looks
        lines.append(f"| {v.row} | {used} | {stop} | {looks} |")
    return "\n".join(lines + [""]), columns
