"""Calibrated controls: the suite's false-positive rate and the rule's power measured on its own runs,
not assumed.

For every negative-control claim (``control: true``) whose two arms have the same config (the reference
and its reseeded copy: same overrides, other seeds) three measurements, each with the verdict rule the
study uses (``plan.Rule``: the rule is a parameter, default today's):

  * **re-split false-positive rate**: the two arms' per-seed values pooled (exchangeable: one config)
    and split again into groups of the same sizes in every way (all of them when there are at most
    ``MAX_SPLITS``, else a seeded random sample); the share of splits the rule calls ``supported`` or
    ``contradicted``. No distribution assumed, but with 3 + 3 seeds there are only 20 splits and they
    overlap, so it is coarse;
  * **simulated false-positive rate**: normal draws with each arm's own SD and seed count and no
    difference, ``N_SIM`` of them (seeded), the share called ``supported`` or ``contradicted`` (must be
    <= 2 alpha: alpha per direction), and draws with a true effect of exactly the SESOI in the predicted
    direction, the share called ``supported`` (must be <= alpha: an effect at the SESOI is not one
    "beyond" it); both with a binomial Monte-Carlo error;
  * **planted positive**: the control's treatment values (real runs, distinct from the reference's)
    shifted by a known effect in the predicted direction, judged against the reference: it must come out
    ``supported``. The shift is ``planted_k`` x SESOI, by default the smallest multiple at which the plan
    (plan.power_beyond, real variance) gives 95% power, so a failure says the rule has less power than
    planned; the simulated power at that shift is shown beside it.

Every other control claim (a placebo arm: a change the theory says is irrelevant) is checked by its
verdict only. ``calibration_section`` returns the markdown the report inserts and the list of failures
the report opens with: a control `supported`, `contradicted` or `no data`, a false-positive rate above
its level beyond 2 Monte-Carlo standard errors, a planted positive not `supported`.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from . import plan
from .plan import ALPHA, Comparison, Rule, default_rule

N_SIM = 2000
MAX_SPLITS = 2000
PLANTED_POWER = 0.95
SUPPORTED, CONTRADICTED, NO_DATA = "supported", "contradicted", "no data"


@dataclass
class Rate:
    hits: int
    total: int
    limit: float        # the level it must not exceed
    independent: bool = True  # draws independent (binomial error) or overlapping splits

    @property
    def rate(self) -> float:
        return self.hits / self.total if self.total else math.nan

    @property
    def mc_se(self) -> float:
        """Monte-Carlo standard error at the limit (what a rule exactly at its level would show)."""
        return math.sqrt(self.limit * (1 - self.limit) / self.total) if self.total else math.nan

    @property
    def fails(self) -> bool:
        return self.total > 0 and self.rate > self.limit + 2 * self.mc_se

    def text(self) -> str:
        if not self.total:
            return "n/a"
        return f"{self.rate:.3f} ({self.hits}/{self.total}; limit {self.limit:g} + 2 MC s.e. {2 * self.mc_se:.3f})"


@dataclass
class ControlCalibration:
    row: str
    outcome: str
    same_config: bool
    n: tuple = (0, 0)
    resplit: Rate | None = None
    null: Rate | None = None
    boundary: Rate | None = None
    planted_k: float = math.nan
    planted_shift: float = math.nan
    planted_outcome: str = ""
    planted_power: Rate | None = None
    failures: list = field(default_factory=list)


def _clean(x: np.ndarray) -> np.ndarray:
    return x[~np.isnan(x)]


def _splits(pooled: np.ndarray, n_t: int, rng: np.random.Generator):
    n = len(pooled)
    if math.comb(n, n_t) <= MAX_SPLITS:
        for idx in itertools.combinations(range(n), n_t):
            mask = np.zeros(n, bool)
            mask[list(idx)] = True
            yield pooled[mask], pooled[~mask]
    else:
        for _ in range(MAX_SPLITS):
            perm = rng.permutation(n)
            yield pooled[perm[:n_t]], pooled[perm[n_t:]]


def _simulate(rule: Rule, cmp: Comparison, sd_t: float, sd_r: float, n_t: int, n_r: int, ref_mean: float,
              shift: float, count: Rate, want: tuple, alpha: float, rng: np.random.Generator) -> Rate:
    for _ in range(count.total):
        r = ref_mean + sd_r * rng.standard_normal(n_r)
        t = ref_mean + shift + sd_t * rng.standard_normal(n_t)
        count.hits += rule(t, r, "arms", cmp.direction, cmp.sesoi, cmp.sesoi_unit, alpha=alpha) in want
    return count


def calibrate_control(cmp: Comparison, outcome: str, same_config: bool, rule: Rule = default_rule,
                      alpha: float = ALPHA, n_sim: int = N_SIM, planted_k: float | None = None,
                      seed: int = 0) -> ControlCalibration:
    """The measurements of the module docstring for one control comparison (treatment vs reference)."""
    cal = ControlCalibration(cmp.row, outcome, same_config)
    if outcome in (SUPPORTED, CONTRADICTED):
        cal.failures.append(f"control {cmp.row} came out `{outcome}`")
    if outcome == NO_DATA:
        cal.failures.append(f"control {cmp.row} has no data (its runs are missing or failed): it tested nothing")
    t, r = _clean(cmp.treatment), _clean(cmp.reference)
    cal.n = (len(t), len(r))
    if not same_config or len(t) < 2 or len(r) < 2:
        return cal
    rng = np.random.default_rng(seed)
    sign = 1.0 if cmp.direction == "increase" else -1.0
    decisive = (SUPPORTED, CONTRADICTED)
    # re-split: the pooled runs of one config, relabelled
    pooled = np.concatenate([t, r])
    resplit = Rate(0, 0, 2 * alpha, independent=False)
    for a, b in _splits(pooled, len(t), rng):
        resplit.total += 1
        resplit.hits += rule(a, b, "arms", cmp.direction, cmp.sesoi, cmp.sesoi_unit, alpha=alpha) in decisive
    cal.resplit = resplit
    # simulation from the arms' own variance
    sd_t, sd_r = float(np.std(t, ddof=1)), float(np.std(r, ddof=1))
    sd_t = sd_t if sd_t > 0 else sd_r
    sd_r = sd_r if sd_r > 0 else sd_t
    if not (sd_t > 0 and sd_r > 0):
        cal.failures.append(f"control {cmp.row}: every seed gave the same value; the rule's error rates cannot be "
                            f"measured on it")
        return cal
    ref_mean = float(r.mean())
    margin = plan.margin_in_difference(cmp, ref_mean)
    cal.null = _simulate(rule, cmp, sd_t, sd_r, len(t), len(r), ref_mean, 0.0, Rate(0, n_sim, 2 * alpha),
                         decisive, alpha, rng)
    if margin > 0:
        cal.boundary = _simulate(rule, cmp, sd_t, sd_r, len(t), len(r), ref_mean, sign * margin,
                                 Rate(0, n_sim, alpha), (SUPPORTED,), alpha, rng)
    # planted positive: real treatment runs shifted by k x SESOI
    unit = margin if margin > 0 else float(np.hypot(sd_t, sd_r))  # SESOI 0: shift in SDs of the difference
    if planted_k is None:
        spread = plan.Spread(False, sd_t=sd_t, sd_r=sd_r)
        n = min(len(t), len(r))
        planted_k = next((k for k in np.arange(1.0, 101.0, 0.5)
                          if plan.power_beyond(n, k * unit, margin, spread, alpha) >= PLANTED_POWER), 100.0)
    cal.planted_k = float(planted_k)
    cal.planted_shift = sign * cal.planted_k * unit
    cal.planted_outcome = rule(t + cal.planted_shift, r, "arms", cmp.direction, cmp.sesoi, cmp.sesoi_unit, alpha=alpha)
    cal.planted_power = _simulate(rule, cmp, sd_t, sd_r, len(t), len(r), ref_mean, cal.planted_shift,
                                  Rate(0, n_sim, PLANTED_POWER), (SUPPORTED,), alpha, rng)
    for name, rate in (("re-split", cal.resplit), ("simulated (no effect)", cal.null),
                       ("simulated (effect = SESOI)", cal.boundary)):
        if rate is not None and rate.fails:
            cal.failures.append(f"control {cmp.row}: {name} false-positive rate {rate.rate:.3f} exceeds its level "
                                f"{rate.limit:g} beyond Monte-Carlo error")
    if cal.planted_outcome != SUPPORTED:
        cal.failures.append(f"control {cmp.row}: a planted effect of {cal.planted_k:g} x SESOI came out "
                            f"`{cal.planted_outcome}`, not `supported`")
    return cal


def calibrate(verdicts: list, suite, rule: Rule = default_rule, alpha: float = ALPHA, n_sim: int = N_SIM,
              planted_k: float | None = None) -> list[ControlCalibration]:
    """One ControlCalibration per control verdict row (``report.Verdict`` objects of ``main.judge_suite``)."""
    out = []
    for v in verdicts:
        if not v.claim.control:
            continue
        cmp = plan.comparison(v)
        # same config: two arms with equal overrides (other seeds), one metric read from both
        same = (v.claim.compare == "arms" and v.reference is not None
                and v.treatment.label == v.treatment.arm and v.reference.label == v.reference.arm
                and suite.arms[v.treatment.arm].overrides == suite.arms[v.reference.arm].overrides)
        out.append(calibrate_control(cmp, rule_outcome(v), bool(same), rule, alpha, n_sim, planted_k))
    return out


def rule_outcome(v) -> str:
    return v.effect.verdict


def failures(cals: list[ControlCalibration]) -> list[str]:
    return [f for c in cals for f in c.failures]


def calibration_section(cals: list[ControlCalibration], alpha: float = ALPHA) -> tuple[list[str], str]:
    """(the warning lines the report opens with, the calibration section in markdown)."""
    fails = failures(cals)
    warning = []
    if fails:
        warning = [f"> **WARNING: calibration failed** ({len(fails)}): " + "; ".join(fails) + ". Read the verdicts "
                   "below as untrusted until this is understood (too few seeds, a window too short, a rule that "
                   "is not at its level, or a bias in the pipeline).", ""]
    lines = ["## Calibration of the verdict rule", "",
             f"Measured on this suite's own runs (calibrate.py): a control must come out neither `supported` nor "
             f"`contradicted` nor `no data`; false positives = `supported` or `contradicted` where there is no "
             f"effect (level 2 x {alpha:g}: {alpha:g} per direction), `supported` where the true effect is exactly "
             f"the SESOI (level {alpha:g}); a planted effect must come out `supported`.", "",
             "| control | verdict | n | FP re-split (pooled runs) | FP simulated, no effect | FP simulated, effect = SESOI "
             "| planted shift | planted verdict | simulated power at the shift |",
             "|" + "---|" * 9]
    for c in cals:
        if not c.same_config:
            lines.append(f"| {c.row} (placebo) | {c.outcome} | {c.n[0]} vs {c.n[1]} | — | — | — | — | — | — |")
            continue
        rate = lambda x: x.text() if x is not None else "n/a"  # noqa: E731
        planted = "n/a" if math.isnan(c.planted_shift) else f"{c.planted_shift:+.3g} ({c.planted_k:g} x SESOI)"
        power = "n/a" if c.planted_power is None else f"{c.planted_power.rate:.3f} ({c.planted_power.total} draws)"
        lines.append(f"| {c.row} | {c.outcome} | {c.n[0]} vs {c.n[1]} | {rate(c.resplit)} | {rate(c.null)} | "
                     f"{rate(c.boundary)} | {planted} | {c.planted_outcome or 'n/a'} | {power} |")
    lines += ["", "Re-splits of one set of runs overlap (all of them up to 2000, at random beyond; 3 + 3 seeds give "
                  "only 20), so that rate is coarse; the simulated rates "
                  "draw normal values with each arm's own SD and seed count (seeded, "
                  f"{N_SIM} draws). " + ("All calibrations passed." if not fails else "Failed: " + "; ".join(fails)
                                         + "."), ""]
    return warning, "\n".join(lines)


def annotate(verdicts: list, cals: list[ControlCalibration]) -> None:
    """Put each control's measured rates beside its verdict (its reason: report section and verdicts.csv)."""
    by_row = {c.row: c for c in cals}
    for v in verdicts:
        c = by_row.get(v.row)
        if c is None or c.null is None:
            continue
        v.effect.reason += (f"; the rule's false-positive rate measured on these runs: {c.null.rate:.3f} simulated "
                            f"(no effect), {c.resplit.rate:.3f} re-split, {c.boundary.rate if c.boundary else math.nan:.3f} "
                            f"at an effect of exactly the SESOI; a planted {c.planted_k:g} x SESOI came out "
                            f"{c.planted_outcome}")
