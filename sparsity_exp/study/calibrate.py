"""Calibrated controls: the procedure that produced the verdicts (the suite's looks, their nominal levels
and the multiplicity correction), measured on the suite's own spread, not assumed.

**Negative controls** (``control: true``) pass only as `no effect of interest` at their SESOI, the
claims' own (equivalence; ``report.CONTROL_PASSES``). For each one whose two arms have the same config
(the reference and its reseeded copy) or share the init (a placebo), with the sequential plan the study
used (``plan.StagePlan``: looks and nominal levels; one look for fixed seeds) and the control's own
per-seed spread (paired: SD of the differences; Welch: each arm's SD):

  * **true null passes**: simulated studies with no effect, the share the procedure ends in `no effect of
    interest` (the control's pass). Must be >= ``NULL_PASS`` (95%): a control that fails a true null
    often cannot tell a bias from bad luck. Below it, the report says how many seeds per arm would do;
  * **bias detected**: simulated studies where the treatment arm carries a bias of ``BIAS_K`` x SESOI
    (default 1.5) *planted as through a trained arm*: for a sparsity in the non-zero unit, each treatment
    value s becomes f + (1 - f) s with f = 1.5 x SESOI (a dead-units mask killing that share of units,
    modules/dead_units.py, the planted arm of conf/study/cpu.yaml); other units, a shift of 1.5 x SESOI.
    The share that does *not* end in `no effect of interest` (the control catches it) must be >= 50%;
  * **false decisions**: at no effect, the share ending `supported` or `contradicted` (<= 2 alpha), and
    at an effect of exactly the SESOI, the share ending `supported` (<= alpha);
  * **re-split within each arm**: each arm's own seeds split in two halves every way (when an arm has at
    least 2 x MIN_SEEDS seeds), judged by the rule: the share decisive (<= 2 alpha). The halves come from
    one arm, so they are exchangeable; pooling the two arms (as before) would hide a bias between them,
    which is the control verdict's to find.

**The family** (``family_calibration``): every family row simulated at once with its own spread, looks
and nominal levels as the study ran them, the correction applied at each look (a stopped row's p-values
stay in the family), rows stopping at their first decisive outcome: the family-wise rate of a false
`supported` when every row's true effect is exactly its SESOI (<= alpha) and of a false `supported` or
`contradicted` when every row's true effect is 0 (<= 2 alpha). Bound rows are simulated at one step
(intersection-union over steps only makes `supported` rarer), ratio units at the reference mean.

**Planted positives** (``planted: true``) are claims of the suite with an arm whose effect is known in
advance (report.control_failures: they must come out `supported` and their interval should cover the
known effect); they test training and probes, where a constant added to finished numbers tested
arithmetic. Simulations are normal draws (seeded); ``N_SIM`` studies each, with binomial Monte-Carlo error.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from . import plan, stats
from .plan import ALPHA, Comparison, Rule, default_rule

N_SIM = 2000
MAX_SPLITS = 256
NULL_PASS = 0.95     # a control must pass a true null at least this often
BIAS_DETECT = 0.50   # ... and catch a planted bias of BIAS_K x SESOI at least this often
BIAS_K = 1.5
SUPPORTED, CONTRADICTED, NO_EFFECT, INCONCLUSIVE, NO_DATA = (stats.SUPPORTED, stats.CONTRADICTED, stats.NO_EFFECT,
                                                            stats.INCONCLUSIVE, stats.NO_DATA)


@dataclass
class Rate:
    hits: int
    total: int
    limit: float               # the level it must not exceed (or, ``lower``, must reach)
    independent: bool = True   # draws independent (binomial error) or overlapping splits
    lower: bool = False        # the limit is a floor (a pass rate, a detection rate)

    @property
    def rate(self) -> float:
        return self.hits / self.total if self.total else math.nan

    @property
    def mc_se(self) -> float:
        """Monte-Carlo standard error at the limit (what a procedure exactly at its level would show)."""
        return math.sqrt(self.limit * (1 - self.limit) / self.total) if self.total else math.nan

    @property
    def fails(self) -> bool:
        if not self.total:
            return False
        if self.lower:
            return self.rate < self.limit - 2 * self.mc_se
        return self.rate > self.limit + 2 * self.mc_se

    def text(self) -> str:
        if not self.total:
            return "n/a"
        side = "floor" if self.lower else "limit"
        sign = "-" if self.lower else "+"
        return f"{self.rate:.3f} ({self.hits}/{self.total}; {side} {self.limit:g} {sign} 2 MC s.e. {2 * self.mc_se:.3f})"


@dataclass
class ControlCalibration:
    row: str
    outcome: str
    same_config: bool
    n: tuple = (0, 0)
    looks: tuple = ()
    resplit: Rate | None = None
    null_pass: Rate | None = None     # true null ends `no effect of interest`
    null: Rate | None = None          # true null ends supported / contradicted
    boundary: Rate | None = None      # effect = SESOI ends supported
    bias: Rate | None = None          # bias of BIAS_K x SESOI is caught (not `no effect of interest`)
    bias_k: float = BIAS_K
    seeds_for_null_pass: int | None = None
    spread: str = ""
    failures: list = field(default_factory=list)


# ------------------------------------------------------------------------------ the verdict rule, vectorised

def _adjust(p: np.ndarray, correction: str) -> np.ndarray:
    if correction in (None, "none") or p.shape[-1] <= 1:
        return p
    if correction == "holm":
        return stats.holm(p)
    from statsmodels.stats.multitest import multipletests  # BH / BY: row by row (calibration only)

    method = stats.CORRECTIONS[correction]
    return np.apply_along_axis(lambda x: multipletests(x, method=method)[1], -1, p)


def _pvalues(t: np.ndarray, r: np.ndarray, cmp: Comparison, ref_mean: float) -> tuple[np.ndarray, ...]:
    """(p_sup, p_con, p_tost) of stats.judge for every simulated study (rows of t and r)."""
    unit = stats.Unit.of(cmp.sesoi_unit, cmp.direction, ref_mean)
    paired = cmp.paired or cmp.kind != "arms"
    d = cmp.sesoi
    p_sup = unit.margin_p(t, r, d, paired, greater=True)
    p_con = unit.margin_p(t, r, -d, paired, greater=False)
    if d > 0:
        p_tost = np.maximum(unit.margin_p(t, r, -d, paired, greater=True), unit.margin_p(t, r, d, paired, greater=False))
    else:
        p_tost = np.ones_like(p_sup)
    return tuple(np.where(np.isnan(p), 1.0, p) for p in (p_sup, p_con, p_tost))


def _outcomes(p_sup, p_con, p_tost, alpha: float) -> np.ndarray:
    out = np.full(np.shape(p_sup), INCONCLUSIVE, dtype=object)
    out[p_tost < alpha] = NO_EFFECT
    out[p_con < alpha] = CONTRADICTED
    out[p_sup < alpha] = SUPPORTED
    return out


def _looks(splan, n_max: int, alpha: float) -> tuple[list[int], list[float]]:
    """(seeds per arm, nominal one-sided level) of each look the study made (one look at n_max without one)."""
    if splan is None:
        return [n_max], [alpha]
    return list(splan.sizes), list(splan.alphas)


# ------------------------------------------------------------------------------ simulated studies

def _spread(cmp: Comparison):
    t, r = cmp.treatment[~np.isnan(cmp.treatment)], cmp.reference[~np.isnan(cmp.reference)]
    if cmp.paired or cmp.kind != "arms":
        ok = ~(np.isnan(cmp.treatment) | np.isnan(cmp.reference))
        d = (cmp.treatment - cmp.reference)[ok]
        sd = float(np.std(d, ddof=1)) if len(d) > 1 else math.nan
        return True, sd, sd, f"paired SD of the differences {sd:.3g}"
    sd_t = float(np.std(t, ddof=1)) if len(t) > 1 else math.nan
    sd_r = float(np.std(r, ddof=1)) if len(r) > 1 else math.nan
    sd_t = sd_t if sd_t > 0 else sd_r
    sd_r = sd_r if sd_r > 0 else sd_t
    return False, sd_t, sd_r, f"Welch, SDs {sd_t:.3g} (treatment) and {sd_r:.3g} (reference)"


def _draw(cmp: Comparison, n_sim: int, n: int, ref_mean: float, rng, shift: float = 0.0, dead: float = 0.0):
    """n_sim studies of n seeds per arm: reference ~ N(ref_mean, sd_r), treatment = the reference (paired) or
    an independent draw, plus ``shift``; ``dead`` > 0 puts a dead-units bias on the treatment (f + (1 - f) s)."""
    paired, sd_t, sd_r, _ = _spread(cmp)
    if cmp.kind == "bound":
        r = np.full((n_sim, n), ref_mean)
        t = ref_mean + shift + sd_t * rng.standard_normal((n_sim, n))
        return t, r
    if paired:  # the differences t - r have the pilot's SD; r varies a little around the reference mean
        r = ref_mean + sd_r / math.sqrt(2) * rng.standard_normal((n_sim, n))
        t = r + shift + sd_t * rng.standard_normal((n_sim, n))
    else:
        r = ref_mean + sd_r * rng.standard_normal((n_sim, n))
        t = ref_mean + shift + sd_t * rng.standard_normal((n_sim, n))
    if dead > 0:
        t = dead + (1 - dead) * t
    return t, r


def sequential_outcomes(draws: list[tuple[np.ndarray, np.ndarray]], cmps: list[Comparison], ref_means: list[float],
                        sizes: list[int], alphas: list[float], correction: str = "none") -> np.ndarray:
    """Final outcome (n_sim x rows) of the study's procedure: at each look every row's three p-values over the
    first n_k seeds, adjusted over the rows by ``correction`` and read at that look's nominal level; a row
    stops at its first decisive outcome (its verdict is that look's), else it takes the last look's."""
    n_sim = draws[0][0].shape[0]
    final = np.full((n_sim, len(cmps)), "", dtype=object)
    for k, (n, a) in enumerate(zip(sizes, alphas)):
        ps = [_pvalues(t[:, :n], r[:, :n], cmp, m) for (t, r), cmp, m in zip(draws, cmps, ref_means)]
        adj = [_adjust(np.stack([p[i] for p in ps], axis=-1), correction) for i in range(3)]
        now = _outcomes(adj[0], adj[1], adj[2], a)
        open_ = final == ""
        decisive = (now != INCONCLUSIVE) | (k == len(sizes) - 1)
        final[open_ & decisive] = now[open_ & decisive]
    return final


def _looped_outcomes(rule: Rule, cmp: Comparison, t, r, sizes, alphas) -> np.ndarray:
    """The same as sequential_outcomes for one row, with any rule (slow: one call per study and look)."""
    out = np.full(t.shape[0], "", dtype=object)
    for i in range(t.shape[0]):
        for k, (n, a) in enumerate(zip(sizes, alphas)):
            o = rule(t[i, :n], r[i, :n], cmp.kind, cmp.direction, cmp.sesoi, cmp.sesoi_unit, alpha=a)
            if o not in (INCONCLUSIVE, NO_DATA) or k == len(sizes) - 1:
                out[i] = o
                break
    return out


def _rate(outcomes: np.ndarray, want: tuple, limit: float, lower: bool = False) -> Rate:
    return Rate(int(np.isin(outcomes, want).sum()), int(outcomes.size), limit, lower=lower)


def _splits(values: np.ndarray, rng):
    n = len(values)
    half = n // 2
    combos = math.comb(n, half)
    if combos <= MAX_SPLITS:
        for idx in itertools.combinations(range(n), half):
            mask = np.zeros(n, bool)
            mask[list(idx)] = True
            yield values[mask], values[~mask]
    else:
        for _ in range(MAX_SPLITS):
            perm = rng.permutation(n)
            yield values[perm[:half]], values[perm[half:]]


def calibrate_control(cmp: Comparison, outcome: str, same_config: bool, rule: Rule = default_rule,
                      alpha: float = ALPHA, n_sim: int = N_SIM, planted_k: float | None = None,
                      seed: int = 0, splan=None) -> ControlCalibration:
    """The measurements of the module docstring for one control comparison (treatment vs reference)."""
    cal = ControlCalibration(cmp.row, outcome, same_config)
    cal.bias_k = BIAS_K if planted_k is None else float(planted_k)
    if outcome in (SUPPORTED, CONTRADICTED):
        cal.failures.append(f"control {cmp.row} came out `{outcome}`")
    if outcome == NO_DATA:
        cal.failures.append(f"control {cmp.row} has no data (its runs are missing or failed): it tested nothing")
    t, r = cmp.treatment[~np.isnan(cmp.treatment)], cmp.reference[~np.isnan(cmp.reference)]
    cal.n = (len(t), len(r))
    if not same_config or len(t) < 2 or len(r) < 2:
        return cal
    rng = np.random.default_rng(seed)
    paired, sd_t, sd_r, cal.spread = _spread(cmp)
    if not (sd_t > 0 and sd_r > 0):
        cal.failures.append(f"control {cmp.row}: every seed gave the same value; the procedure's error rates cannot "
                            f"be measured on it")
        return cal
    # re-split within each arm (exchangeable halves of one arm; a bias between the arms is not pooled away)
    resplit = Rate(0, 0, 2 * alpha, independent=False)
    halves = dataclasses.replace(cmp, paired=False)  # two halves of one arm: other seeds, Welch
    for values in (t, r):
        if len(values) >= 2 * stats.MIN_SEEDS:
            pairs = list(_splits(values, rng))
            resplit.total += len(pairs)
            if rule is default_rule:  # vectorised: the same three t tests for every split at once
                a, b = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
                decided = _outcomes(*_pvalues(a, b, halves, float(b.mean())), alpha)
                resplit.hits += int(np.isin(decided, (SUPPORTED, CONTRADICTED)).sum())
            else:
                resplit.hits += sum(rule(a, b, "arms", cmp.direction, cmp.sesoi, cmp.sesoi_unit, alpha=alpha) in (
                    SUPPORTED, CONTRADICTED) for a, b in pairs)
    cal.resplit = resplit if resplit.total else None
    # simulated studies of the procedure the study used (looks, nominal levels), the control unadjusted
    ref_mean = float(r.mean())
    sizes, alphas = _looks(splan, min(len(t), len(r)), alpha)
    sizes = [min(s, max(sizes)) for s in sizes]
    cal.looks = tuple(zip(sizes, alphas))
    margin = plan.margin_in_difference(cmp, ref_mean)
    sign = 1.0 if cmp.direction == "increase" else -1.0
    vector = rule is default_rule

    def run(shift=0.0, dead=0.0):  # n_sim studies of the procedure (vectorised for the default rule)
        tt, rr = _draw(cmp, n_sim, max(sizes), ref_mean, rng, shift, dead)
        if vector:
            return sequential_outcomes([(tt, rr)], [cmp], [ref_mean], sizes, alphas)[:, 0]
        return _looped_outcomes(rule, cmp, tt, rr, sizes, alphas)

    null = run()
    cal.null_pass = _rate(null, (NO_EFFECT,), NULL_PASS, lower=True)
    cal.null = _rate(null, (SUPPORTED, CONTRADICTED), 2 * alpha)
    if margin > 0:
        cal.boundary = _rate(run(shift=sign * margin), (SUPPORTED,), alpha)
        if cmp.sesoi_unit == "nonzero_relative" and cmp.direction == "increase":
            biased = run(dead=cal.bias_k * cmp.sesoi)  # as a dead-units arm: the non-zeros fall by k x SESOI
        else:
            biased = run(shift=sign * cal.bias_k * margin)
        cal.bias = _rate(biased, (SUPPORTED, CONTRADICTED, INCONCLUSIVE, NO_DATA), BIAS_DETECT, lower=True)
        spread = plan.Spread(paired, sd=sd_t, sd_t=sd_t, sd_r=sd_r)
        cal.seeds_for_null_pass = plan.seeds_needed(
            lambda k: plan.power_equivalence(k, 0.0, margin, spread, alphas[-1]), NULL_PASS, cap=100_000)
    for name, rate in (("re-split (within arms)", cal.resplit), ("simulated, no effect", cal.null),
                       ("simulated, effect = SESOI", cal.boundary)):
        if rate is not None and rate.fails:
            cal.failures.append(f"control {cmp.row}: {name} false-positive rate {rate.rate:.3f} exceeds its level "
                                f"{rate.limit:g} beyond Monte-Carlo error")
    if cal.null_pass.fails:
        need = (f"; about {cal.seeds_for_null_pass} seeds per arm would pass it {NULL_PASS:.0%} of the time"
                if cal.seeds_for_null_pass else "")
        cal.failures.append(f"control {cmp.row}: passes a true null in only {cal.null_pass.rate:.1%} of simulated "
                            f"studies ({cal.spread}, SESOI {margin:.3g} in the metric){need}")
    if cal.bias is not None and cal.bias.fails:
        cal.failures.append(f"control {cmp.row}: catches a bias of {cal.bias_k:g} x SESOI in only {cal.bias.rate:.1%} "
                            f"of simulated studies")
    return cal


def calibrate(verdicts: list, suite, rule: Rule = default_rule, alpha: float = ALPHA, n_sim: int = N_SIM,
              planted_k: float | None = None, splan=None) -> list[ControlCalibration]:
    """One ControlCalibration per negative-control verdict row (``report.Verdict`` objects of ``main.judge_suite``):
    arms with the same config (other seeds) or the same init (a placebo: another data order) are simulated."""
    out = []
    for v in verdicts:
        if not v.claim.control:
            continue
        cmp = plan.comparison(v)
        one_metric = v.treatment.label == v.treatment.arm and v.reference is not None \
            and v.reference.label == v.reference.arm
        same = (v.claim.compare == "arms" and v.reference is not None and one_metric
                and suite.arms[v.treatment.arm].overrides == suite.arms[v.reference.arm].overrides)
        placebo = v.claim.compare == "arms" and one_metric and not same and cmp.paired
        out.append(calibrate_control(cmp, v.effect.verdict, bool(same or placebo), rule, alpha, n_sim, planted_k,
                                     splan=splan))
    return out


# ------------------------------------------------------------------------------ the family

@dataclass
class FamilyCalibration:
    rows: list
    looks: tuple
    correction: str
    at_sesoi: Rate | None = None   # every row's effect exactly its SESOI: any `supported`
    at_null: Rate | None = None    # every row's effect 0: any `supported` or `contradicted`
    skipped: list = field(default_factory=list)
    failures: list = field(default_factory=list)


def family_calibration(verdicts: list, correction: str = "holm", alpha: float = ALPHA, n_sim: int = N_SIM,
                       splan=None, seed: int = 1) -> FamilyCalibration:
    """The family-wise error of the procedure the study used (module docstring), on the rows' own spread."""
    rng = np.random.default_rng(seed)
    cmps, means, skipped = [], [], []
    for v in verdicts:
        if not v.in_family:
            continue
        cmp = plan.comparison(v)
        paired, sd_t, sd_r, _ = _spread(cmp)
        ref = cmp.reference[~np.isnan(cmp.reference)]
        if not (sd_t > 0 and sd_r > 0) or not len(ref):
            skipped.append(v.row)
            continue
        cmps.append(cmp)
        means.append(float(ref.mean()))
    n_max = max((int(np.sum(~np.isnan(c.treatment))) for c in cmps), default=0)
    sizes, alphas = _looks(splan, n_max, alpha)
    cal = FamilyCalibration([c.row for c in cmps], tuple(zip(sizes, alphas)), correction, skipped=skipped)
    if not cmps or min(sizes) < 2:
        return cal

    def run(at_sesoi: bool):
        draws = []
        for cmp, m in zip(cmps, means):
            sign = 1.0 if cmp.direction == "increase" else -1.0
            shift = sign * plan.margin_in_difference(cmp, m) if at_sesoi else 0.0
            draws.append(_draw(cmp, n_sim, max(sizes), m, rng, shift))
        return sequential_outcomes(draws, cmps, means, sizes, alphas, correction)

    cal.at_sesoi = Rate(int((run(True) == SUPPORTED).any(axis=1).sum()), n_sim, alpha)
    cal.at_null = Rate(int(np.isin(run(False), (SUPPORTED, CONTRADICTED)).any(axis=1).sum()), n_sim, 2 * alpha)
    for name, rate in (("every row at its SESOI, any `supported`", cal.at_sesoi),
                       ("every row at 0, any `supported` or `contradicted`", cal.at_null)):
        if rate.fails:
            cal.failures.append(f"family: {name}: {rate.rate:.3f} exceeds {rate.limit:g} beyond Monte-Carlo error")
    return cal


# ------------------------------------------------------------------------------ report

def failures(cals: list[ControlCalibration], family: FamilyCalibration | None = None) -> list[str]:
    return [f for c in cals for f in c.failures] + (family.failures if family is not None else [])


def calibration_section(cals: list[ControlCalibration], alpha: float = ALPHA,
                        family: FamilyCalibration | None = None) -> tuple[list[str], str]:
    """(the warning lines the report opens with, the calibration section in markdown)."""
    fails = failures(cals, family)
    warning = []
    if fails:
        warning = [f"> **WARNING: calibration failed** ({len(fails)}): " + "; ".join(fails) + ". Read the verdicts "
                   "below as untrusted until this is understood (too few seeds for the controls' SESOI, a window "
                   "too short, a procedure off its level, or a bias in the pipeline).", ""]
    looks = ", ".join(f"{n} seeds at {a:.3g}" for n, a in (cals[0].looks if cals and cals[0].looks else
                                                            family.looks if family else ()))
    lines = ["## Calibration of the procedure", "",
             f"Measured on this suite's own spread with the procedure that judged it (looks: {looks or 'n/a'}; "
             f"calibrate.py, {N_SIM} simulated studies each). A negative control passes only as `no effect of "
             f"interest` at its SESOI (the claims' own): it must pass a true null in >= {NULL_PASS:.0%} of studies "
             f"and catch a bias planted as through a trained arm (a dead-units mask, {BIAS_K:g} x SESOI) in >= "
             f"{BIAS_DETECT:.0%}; false positives: `supported` or `contradicted` at no effect (level 2 x {alpha:g}), "
             f"`supported` at an effect of exactly the SESOI (level {alpha:g}); re-splits use halves of one arm "
             f"(>= {2 * stats.MIN_SEEDS} seeds), never the two arms pooled.", "",
             "| control | verdict | n | spread | passes a true null | catches a planted bias | FP, no effect "
             "| FP, effect = SESOI | FP re-split within arms | seeds per arm for a 95% null pass |",
             "|" + "---|" * 10]
    rate = lambda x: x.text() if x is not None else "n/a"  # noqa: E731
    for c in cals:
        if not c.same_config:
            lines.append(f"| {c.row} | {c.outcome} | {c.n[0]} vs {c.n[1]} | (other config: verdict only) "
                         "| — | — | — | — | — | — |")
            continue
        need = "n/a" if c.seeds_for_null_pass is None else str(c.seeds_for_null_pass)
        lines.append(f"| {c.row} | {c.outcome} | {c.n[0]} vs {c.n[1]} | {c.spread or 'n/a'} | {rate(c.null_pass)} | "
                     f"{rate(c.bias)} ({c.bias_k:g} x SESOI) | {rate(c.null)} | {rate(c.boundary)} | "
                     f"{rate(c.resplit)} | {need} |")
    if family is not None:
        lines += ["", f"The family ({', '.join(family.rows) or 'none'}; correction {family.correction}, applied at "
                      f"every look): any false `supported` with every row's effect exactly at its SESOI "
                      f"{rate(family.at_sesoi)}; any false `supported` or `contradicted` with every effect 0 "
                      f"{rate(family.at_null)}."
                  + (f" Not simulated (no spread): {', '.join(family.skipped)}." if family.skipped else "")]
    lines += ["", "Planted positives (claims marked planted, e.g. a dead-units arm) are judged in the verdict table "
                  "like any claim: they must read `supported`, with an interval that covers the effect known in "
                  "advance. " + ("All calibrations passed." if not fails else "Failed: " + "; ".join(fails) + "."), ""]
    return warning, "\n".join(lines)


def annotate(verdicts: list, cals: list[ControlCalibration]) -> None:
    """Put each control's measured rates beside its verdict (its reason: report section and verdicts.csv)."""
    by_row = {c.row: c for c in cals}
    for v in verdicts:
        c = by_row.get(v.row)
        if c is None or c.null_pass is None:
            continue
        v.effect.reason += (f"; the procedure on this control's spread passes a true null in {c.null_pass.rate:.1%} "
                            f"of simulated studies and catches a {c.bias_k:g} x SESOI bias in "
                            f"{c.bias.rate if c.bias else math.nan:.1%}")
