"""``study SUITE --plan`` for the procedure that will judge (issue 24).

The pilot is every completed seed of the suite's arms under the study folder (not only the suite's
seeds: a study grown to 10 seeds plans from 10). Each row's power is computed at the one-sided level it
will be judged at: the last look's level under ``--seeds auto`` (plan.stage_plan: the alpha that look
spends) or alpha with fixed seeds, divided by the family's size m under Holm or BH (the level Holm's
first step and Bonferroni give a row: the only one it is sure to get; controls are judged unadjusted).
What `supported` needs beyond the effect's own test is planned too, each joint power taken at its
Fréchet lower bound P(A and B) >= P(A) + P(B) - 1, valid whatever the dependence between the tests:

  * a claim with an accuracy non-inferiority margin m (claim 7): the accuracy difference's one-sided
    bound must clear -m, planned at a true accuracy difference of 0 ("equal accuracy", beside the
    2 x SESOI column) and at the pilot's own accuracy difference (beside the pilot column);
  * a bound claim over a window (``every_from_step``): every step's bound must clear it
    (intersection-union), each step with its own pilot mean and SD.
"""
from __future__ import annotations

import math

import numpy as np

from . import plan
from .plan import Comparison, PlanRow, Spread, power_beyond, seeds_needed


def level_for(alpha: float, correction: str, family: int, auto: bool, base: int = 3, max_seeds: int | None = None,
              stages: int = 3, spending: str = "obf", control: bool = False) -> float:
    """The one-sided level a row is sure to be judged at by the procedure."""
    last = plan.stage_plan(base, max_seeds, stages, alpha, spending).alphas[-1] if auto else alpha
    return last if control or correction == "none" else last / max(family, 1)


def comparison(v) -> Comparison:
    """The rule's inputs of a verdict as judge_suite judged them (pairs over shared seeds, diverged seeds
    at their worst value), the weakest step of a bound window standing for the window."""
    j = getattr(v, "judged", None)
    if not j:
        return plan.comparison(v)
    c = v.claim
    t, r = np.asarray(j["treatment"], float), np.asarray(j["reference"], float)
    if t.ndim == 2:
        t = t[:, -1] if t.shape[1] else np.full(len(t), np.nan)
    return Comparison(v.row, t, r, c.compare, c.direction, c.sesoi, c.sesoi_unit, bool(j["paired"]))


def _frechet(*powers: float) -> float:
    return max(0.0, sum(powers) - (len(powers) - 1))


def _acc_spread(acc_t: np.ndarray, acc_r: np.ndarray, paired: bool) -> tuple[Spread, float, int]:
    if paired:
        ok = ~(np.isnan(acc_t) | np.isnan(acc_r))
        d = acc_t[ok] - acc_r[ok]
        return Spread(True, sd=float(np.std(d, ddof=1)) if len(d) > 1 else math.nan), float(d.mean()), len(d)
    a, b = acc_t[~np.isnan(acc_t)], acc_r[~np.isnan(acc_r)]
    sd = lambda x: float(np.std(x, ddof=1)) if len(x) > 1 else math.nan  # noqa: E731
    return Spread(False, sd_t=sd(a), sd_r=sd(b)), float(a.mean() - b.mean()), min(len(a), len(b))


def plan_row(v, level: float, target: float = plan.POWER) -> PlanRow:
    """plan.plan_row at ``level``, then what `supported` also needs: accuracy non-inferiority (claims with a
    margin) and every step of a bound window."""
    cmp = comparison(v)
    row = plan.plan_row(cmp, level, target)
    c, j = v.claim, getattr(v, "judged", None) or {}
    table = np.asarray(j.get("treatment"), float) if j else None
    if c.compare == "bound" and table is not None and table.ndim == 2 and table.shape[1] > 1:
        table = table[~np.isnan(table).any(axis=1)]
        sign = 1.0 if c.direction == "increase" else -1.0
        effects = sign * (table.mean(axis=0) - c.bound)
        sds = table.std(axis=0, ddof=1) if len(table) > 1 else np.full(table.shape[1], np.nan)
        row.n_pilot, row.effect, row.sd = len(table), float(effects.min()), float(sds[int(np.argmin(effects))])
        if len(table) < 2 or not np.all(sds > 0):
            row.n_supported_pilot, row.note = None, "a step of the window has no pilot spread"
        elif np.all(effects > 0):
            spreads = [Spread(True, sd=float(s)) for s in sds]
            row.n_supported_pilot = seeds_needed(lambda k: _frechet(*(power_beyond(k, float(e), 0.0, s, level)
                                                                      for e, s in zip(effects, spreads))), target)
        else:
            row.n_supported_pilot = None
        row.note = (row.note + "; " if row.note else "") + (
            f"every one of {table.shape[1]} steps must clear the bound (joint power, Fréchet bound); weakest step "
            f"shown")
    acc = j.get("accuracy") if j else None
    if c.ni_margin is not None and acc is not None:
        spread, diff, n_acc = _acc_spread(np.asarray(acc[0], float), np.asarray(acc[1], float), cmp.paired)
        margin, base_sup, base_pilot = c.ni_margin, row.n_supported, row.n_supported_pilot
        ok = n_acc >= 2 and (spread.sd > 0 if spread.paired else spread.sd_t > 0 and spread.sd_r > 0)
        m, spread_x = row.margin, plan.spread_of(cmp)
        if not ok:
            row.note = (row.note + "; " if row.note else "") + "no pilot spread of the accuracy"
        else:
            if base_sup is not None:
                row.n_supported = seeds_needed(lambda k: _frechet(power_beyond(k, 2 * m, m, spread_x, level),
                                                                  power_beyond(k, 0.0, -margin, spread, level)), target)
            if base_pilot is not None:
                row.n_supported_pilot = seeds_needed(
                    lambda k: _frechet(power_beyond(k, row.effect, m, spread_x, level),
                                       power_beyond(k, diff, -margin, spread, level)), target)
            row.note = (row.note + "; " if row.note else "") + (
                f"with accuracy non-inferiority (margin {margin:g}; pilot accuracy difference {diff:+.3g}): joint "
                f"power, Fréchet bound")
    return row


def plan_rows(verdicts, alpha: float, correction: str, auto: bool, base: int, max_seeds: int | None, stages: int,
              spending: str, target: float = plan.POWER) -> tuple[list[PlanRow], str]:
    """Every verdict row's plan at the level the procedure will judge it at, and a line saying which."""
    # the family as judge_suite forms it: no controls (negative or planted), no claim that cannot fail as stated
    inside = lambda v: getattr(v, "in_family", not v.claim.control)  # noqa: E731
    family = sum(1 for v in verdicts if inside(v))
    rows = []
    for v in verdicts:
        level = level_for(alpha, correction, family, auto, base, max_seeds, stages, spending, not inside(v))
        row = plan_row(v, level, target)
        row.note = f"level {level:.3g}" + ("; " + row.note if row.note else "")
        rows.append(row)
    last = level_for(alpha, "none", family, auto, base, max_seeds, stages, spending)
    how = (f"the last look's level {last:.3g} (of {max_seeds} seeds, {spending} spending over {stages} looks)" if auto
           else f"alpha {alpha:g} (fixed seeds)")
    text = (f"Planned for the procedure that judges: {how}"
            + (f", / {family} rows for {correction} (its first step, Bonferroni: the level every row is sure to get; "
               f"controls unadjusted)" if correction != "none" else ", no correction") + ".")
    return rows, text
