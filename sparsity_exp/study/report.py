"""study/<suite>/: report.md (the rule, then the verdict table), verdicts.csv (one row per verdict),
forest.png (every effect in SESOI units with its interval) and claim_<id>.png (the metric vs step, mean
and seed band per arm). Paths in report.md are relative to its folder."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .stats import (ALPHA, CONTRADICTED, CORRECTION_NAMES, INCONCLUSIVE, NO_DATA, NO_EFFECT, SUPPORTED, Effect,
                    level_text, rule_text, t_interval)
from .nullcheck import CANNOT_FAIL
from .suite import Claim, Suite

COLORS = {SUPPORTED: "tab:green", NO_EFFECT: "tab:blue", CONTRADICTED: "tab:red", INCONCLUSIVE: "tab:gray",
          NO_DATA: "tab:olive"}
# a negative control must show equivalence at its SESOI (the claims' own): `inconclusive` does not pass, since
# a control that cannot rule out a bias of the claims' size cannot vouch for their verdicts
CONTROL_PASSES = (NO_EFFECT,)


@dataclass
class ArmNumbers:
    """One side of a comparison over seeds: window values, step-0 values, accuracy, curves."""

    label: str
    arm: str
    seeds: list[int]
    values: list[float]
    step0: list[float]
    accuracy: list[float]
    curves: dict = field(default_factory=dict)  # seed -> pd.Series (value by step)
    status: list = field(default_factory=list)  # per seed: completed, diverged, failed, missing, no value
    window: dict = field(default_factory=dict)  # seed -> pd.Series: a bound window's steps

    def failures(self) -> str:
        """'seed 1 diverged, seed 2 missing' for the seeds without a value ('' when none)."""
        return ", ".join(f"seed {seed} {st}" for seed, st in zip(self.seeds, self.status) if st != "completed")

    def mean_ci(self, which="values"):
        x = np.array([v for v in getattr(self, which) if math.isfinite(v)])  # inf: no value, as in stats.judge
        return (float(x.mean()) if len(x) else math.nan, *t_interval(x))


@dataclass
class Verdict:
    row: str
    claim: Claim
    treatment: ArmNumbers
    reference: ArmNumbers | None
    effect: Effect
    judged: dict = field(default_factory=dict)  # main.judge_suite: the per-seed arrays judged (seeds.csv)
    null: object = None  # nullcheck.NullCheck: the same test on a null version of the data

    @property
    def cannot_fail(self) -> bool:
        """The null check reads the theory's outcome: the claim cannot fail as stated."""
        return bool(self.null is not None and self.null.cannot_fail)

    @property
    def in_family(self) -> bool:
        """In the multiplicity family: a claim (not a negative control or planted positive) that can fail."""
        return self.claim.family_member and not self.cannot_fail


def _f(x, digits=3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}g}"


def _ci(ci, digits=3) -> str:
    return f"[{_f(ci[0], digits)}, {_f(ci[1], digits)}]"


def _pct(x) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:+.1f}%"


def _pct_ci(ci) -> str:
    return f"[{_pct(ci[0])}, {_pct(ci[1])}]"


def _mean_ci_text(nums: ArmNumbers, which="values") -> str:
    m, lo, hi = nums.mean_ci(which)
    return f"{_f(m)} {_ci((lo, hi))}"


def reference_label(v: Verdict) -> str:
    c = v.claim
    if c.compare == "step0":
        return f"{v.treatment.label} @ step 0"
    if c.compare == "bound":
        return f"bound {c.bound:g}"
    return v.reference.label


def _unit_value(e: Effect):
    """(value, interval, formatter) of the effect in the claim's own unit, natural sign (not aligned)."""
    if e.sesoi_unit == "relative":
        return e.rel, e.rel_ci, _pct
    if e.sesoi_unit == "nonzero_relative":
        return e.nonzero_rel, e.nonzero_rel_ci, _pct
    return e.diff, e.diff_ci, _f


def _interval_text(ci, fmt=_f) -> str:
    kind = getattr(ci, "kind", "CI")
    if kind == "unbounded":
        return "(unbounded: reference ~ 0)"
    if kind == "zero variance":
        return "(zero variance: no CI)"
    if kind == "n/a" and math.isnan(ci[0]):
        return ""
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def _sesoi_text(c: Claim) -> str:
    if c.compare == "bound":
        return f"bound {c.bound:g}"
    if c.sesoi == 0:
        return "0"
    if c.sesoi_unit == "difference":
        return f"±{c.sesoi:g}"
    return f"±{100 * c.sesoi:g}%" + (" non-zeros" if c.sesoi_unit == "nonzero_relative" else "")


def decisive_p(e: Effect) -> tuple[str, float, float]:
    """(which, raw, adjusted) p of the verdict's kind; for inconclusive the smallest of the three."""
    table = {"sup": (e.p_sup_joint, e.p_sup_adj), "con": (e.p_con, e.p_con_adj), "tost": (e.p_tost, e.p_tost_adj)}
    key = {SUPPORTED: "sup", CONTRADICTED: "con", NO_EFFECT: "tost"}.get(e.verdict)
    if key is None:
        ranked = [(k, v) for k, v in table.items() if not math.isnan(v[0])]
        if not ranked:
            return ("", math.nan, math.nan)
        key = min(ranked, key=lambda kv: kv[1][0])[0]
    return (key, *table[key])


def _n_text(v: Verdict) -> str:
    e = v.effect
    text = f"{e.n_treatment} / {e.n_reference if v.claim.compare == 'arms' else '—'}"
    failed = "; ".join(f for f in (v.treatment.failures(), v.reference.failures() if v.reference is not None else "") if f)
    return text + (f" ({failed})" if failed else "")


def _ni_text(e: Effect) -> str:
    ni = e.noninferiority
    if ni is None:
        return ""
    return f"; NI (margin {ni.margin:g}): **{ni.outcome}**"


def claim_label(c: Claim) -> str:
    if c.control:
        return "control"
    if c.planted:
        return "planted"
    return "exploratory" if c.paper_claim is None else str(c.paper_claim)


def verdict_rows(verdicts: list[Verdict]) -> pd.DataFrame:
    rows = []
    for v in verdicts:
        e, c = v.effect, v.claim
        t_mean, t_lo, t_hi = v.treatment.mean_ci()
        if c.compare == "step0":
            r_mean, r_lo, r_hi = v.treatment.mean_ci("step0")
        elif c.compare == "bound":
            r_mean, r_lo, r_hi = c.bound, c.bound, c.bound
        else:
            r_mean, r_lo, r_hi = v.reference.mean_ci()
        acc_t = v.treatment.mean_ci("accuracy")
        acc_r = v.reference.mean_ci("accuracy") if v.reference is not None else (math.nan,) * 3
        ni = e.noninferiority
        which, p_raw, p_adj = decisive_p(e)
        rows.append({
            "claim": v.row, "paper_claim": c.paper_claim, "exploratory": c.exploratory, "control": c.control,
            "statement": c.statement,
            "compare": c.compare, "treatment": v.treatment.label, "reference": reference_label(v),
            "metric": c.metric.label if v.treatment.label == v.treatment.arm else
            f"{v.treatment.label} vs {reference_label(v)}", "window": c.window.label,
            "window_step_shown": e.worst_step,
            "direction": c.direction, "sesoi": c.sesoi, "sesoi_unit": c.sesoi_unit, "bound": c.bound,
            "test": e.test_name, "alpha_one_sided": e.alpha, "correction": e.correction, "family_size": e.family_size,
            "n_treatment": e.n_treatment, "n_reference": e.n_reference,
            "failed_treatment": v.treatment.failures(),
            "failed_reference": v.reference.failures() if v.reference is not None else "",
            "treatment_mean": t_mean, "treatment_ci_low": t_lo, "treatment_ci_high": t_hi,
            "reference_mean": r_mean, "reference_ci_low": r_lo, "reference_ci_high": r_hi,
            "difference": e.diff, "difference_ci_low": e.diff_ci[0], "difference_ci_high": e.diff_ci[1],
            "difference_ci_kind": e.diff_ci.kind,
            "relative": e.rel, "relative_ci_low": e.rel_ci[0], "relative_ci_high": e.rel_ci[1],
            "relative_ci_kind": e.rel_ci.kind,
            "nonzero_relative": e.nonzero_rel, "nonzero_relative_ci_low": e.nonzero_rel_ci[0],
            "nonzero_relative_ci_high": e.nonzero_rel_ci[1], "nonzero_relative_ci_kind": e.nonzero_rel_ci.kind,
            "theta": e.aligned, "theta_ci_low": e.aligned_ci[0], "theta_ci_high": e.aligned_ci[1],
            "theta_ci_kind": e.aligned_ci.kind,
            "p_sup": e.p_sup, "p_sup_joint": e.p_sup_joint, "p_con": e.p_con, "p_tost": e.p_tost,
            "p_sup_adjusted": e.p_sup_adj, "p_con_adjusted": e.p_con_adj, "p_tost_adjusted": e.p_tost_adj,
            "p_decisive": which, "p_permutation": e.p_perm,
            "accuracy_treatment": acc_t[0], "accuracy_reference": acc_r[0],
            "noninferiority_margin": ni.margin if ni else math.nan,
            "accuracy_difference": ni.diff if ni else math.nan,
            "accuracy_difference_ci_low": ni.ci[0] if ni else math.nan,
            "accuracy_difference_ci_high": ni.ci[1] if ni else math.nan,
            "p_noninferiority": ni.p if ni else math.nan, "noninferiority": ni.outcome if ni else "",
            "interval_level": 1 - 2 * e.alpha, "interval_level_text": level_text(e.alpha),
            "zero_variance": e.zero_variance, "verdict": e.verdict, "reason": e.reason,
            "predict": c.predict, "why": c.why, "planted": c.planted, "known_effect": c.known_effect,
            "null_check": v.null.kind if v.null is not None else "",
            "null_check_verdict": v.null.verdict if v.null is not None else "",
            "null_check_theta": v.null.effect.aligned if v.null is not None and v.null.effect is not None else math.nan,
            "cannot_fail": v.cannot_fail, "in_family": v.in_family,
            "shared_reference": shared_reference_text(v, verdicts),
        })
    return pd.DataFrame(rows)


def _level(verdicts: list[Verdict]) -> str:
    """'95%': the two-sided level of the effect intervals (1 - 2 alpha) when every row has the same one;
    'each row's own' when rows were judged at different levels (sequential looks stop rows at levels of
    their own, e.g. 99.24% at an early look): never one level claimed for all rows that is not theirs."""
    levels = {v.effect.alpha for v in verdicts} or {ALPHA}
    return level_text(levels.pop()) if len(levels) == 1 else "each row's own level (column `level`)"


def verdict_table(verdicts: list[Verdict], amended: dict | None = None) -> str:
    """The verdict table (markdown), as the command prints it and report.md shows it under the rule;
    ``amended``: row -> the amendments (lock.py) that touched its claim, marked beside the verdict."""
    amended = amended or {}
    head = ("| claim | §2 | compared | test | n (treat. / ref.) | effect in SESOI unit "
            "[CI, unadjusted] | level | SESOI | p (raw → adj.) | accuracy (treat. / ref.) | verdict | null check |")
    lines = [head, "|" + "---|" * 12]
    for v in verdicts:
        e, c = v.effect, v.claim
        acc_t = v.treatment.mean_ci("accuracy")[0]
        acc_r = v.reference.mean_ci("accuracy")[0] if v.reference is not None else math.nan
        compared = f"{v.treatment.label} vs {reference_label(v)} ({'↑' if c.direction == 'increase' else '↓'})"
        if e.worst_step is not None:
            compared += f", weakest step {e.worst_step}"
        value, ci, fmt = _unit_value(e)
        which, p_raw, p_adj = decisive_p(e)
        p_text = "n/a" if not which else f"{which} {_f(p_raw, 2)}" + (
            f" → {_f(p_adj, 2)}" if e.correction != "none" and v.in_family else "")
        lines.append(f"| {v.row} | {claim_label(c)} | {compared} | {e.test_name} | {_n_text(v)} | "
                     f"{fmt(value)} {_interval_text(ci, fmt)} | {level_text(e.alpha)} | {_sesoi_text(c)} | {p_text} | "
                     f"{_f(acc_t)} / {_f(acc_r)}{_ni_text(e)} | **{e.verdict}**{_theory_mark(c, e)}"
                     + (f" (after amendment {', '.join(map(str, amended[v.row]))})" if v.row in amended else "")
                     + f" | {v.null.text() if v.null is not None else 'n/a'} |")
    return "\n".join(lines)


def _theory_mark(c: Claim, e: Effect) -> str:
    """' (predicted)' where a claim predicting no effect reads `no effect of interest`: its theory's outcome."""
    return " (predicted)" if c.predict == "no_effect" and e.verdict == NO_EFFECT else ""


def control_failures(verdicts: list[Verdict]) -> list[str]:
    """Controls that fail. A negative control passes only as `no effect of interest` at its SESOI (the
    claims' own): `supported` / `contradicted` is a bias, `inconclusive` a bias of the claims' size not ruled
    out, `no data` an unchecked suite. A planted positive fails unless `supported`, and is flagged when its
    interval misses the effect known in advance (the pipeline measures something else than it planted)."""
    out = []
    for v in verdicts:
        e = v.effect
        if v.claim.control and e.verdict not in CONTROL_PASSES:
            why = {NO_DATA: " (not run: the suite is unchecked)",
                   INCONCLUSIVE: " (a bias as large as the SESOI is not ruled out: equivalence not shown)"}
            out.append(f"{v.row} came out `{e.verdict}`" + why.get(e.verdict, ""))
        if v.claim.planted:
            if e.verdict != SUPPORTED:
                out.append(f"planted positive {v.row} came out `{e.verdict}`, not `supported`")
            known = v.claim.known_effect
            lo, hi = e.aligned_ci.low, e.aligned_ci.high
            if known is not None and e.aligned_ci.kind == "CI" and not lo <= known <= hi:
                out.append(f"planted positive {v.row}: its interval [{lo:.3g}, {hi:.3g}] misses the effect known in "
                           f"advance ({known:g})")
    return out


def shared_references(verdicts: list[Verdict]) -> dict[str, list[str]]:
    """Reference arm -> the family rows (arm comparisons) that use it, where two or more do: their errors are
    correlated (one unlucky draw of the reference moves every one of those verdicts the same way)."""
    uses: dict[str, list[str]] = {}
    for v in verdicts:
        if v.claim.compare == "arms" and v.reference is not None and not v.claim.control and not v.claim.planted:
            uses.setdefault(v.reference.arm, []).append(v.row)
    return {arm: rows for arm, rows in uses.items() if len(rows) > 1}


def shared_reference_text(v: Verdict, verdicts: list[Verdict]) -> str:
    if v.claim.compare != "arms" or v.reference is None:
        return ""
    rows = shared_references(verdicts).get(v.reference.arm, [])
    return ", ".join(r for r in rows if r != v.row) if v.row in rows else ""


def shared_reference_section(verdicts: list[Verdict], correction: str) -> str:
    """The report's note on comparisons that share a reference arm, and whether the correction is valid."""
    shared = shared_references(verdicts)
    lines = ["## Shared reference arms", ""]
    if not shared:
        return "\n".join(lines + ["No two claim rows share a reference arm: their errors are independent.", ""])
    for arm, rows in shared.items():
        lines.append(f"- `{arm}` is the reference of {', '.join(rows)}: their errors are **correlated** (the same "
                     f"reference seeds enter every one; a reference that reads low makes all of them look like "
                     f"effects at once).")
    valid = {"holm": "Holm's step-down controls the family-wise error under arbitrary dependence (it rests on "
                     "Bonferroni's inequality, not on independence), so the family's stated rate holds with this "
                     "dependence.",
             "by": "Benjamini-Yekutieli controls the false discovery rate under arbitrary dependence, so the "
                   "stated rate holds with this dependence.",
             "bh": "**Benjamini-Hochberg is proved only under independence or positive regression dependence**; "
                   "with a shared reference use --correction by (Benjamini-Yekutieli, any dependence) or holm, or "
                   "give each comparison its own reference seeds (an arm `{base: REF, seed_offset: K}` per "
                   "comparison; then the test is Welch's).",
             "none": "No correction: each row's error rate is its own, and rows sharing a reference err together."}
    lines += ["", valid.get(correction, ""), ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ figures

FOREST_LIMIT = 4.0  # |x| beyond this (in SESOI units) is drawn at the edge with an arrow and its value


def forest_scale(v: Verdict) -> tuple[float, str]:
    """theta is divided by the SESOI; a bound claim (margin: the bound itself, threshold theta = 0) by
    |bound| for a difference; a claim with SESOI 0 by |reference mean| (or 1)."""
    e, c = v.effect, v.claim
    if c.compare != "bound" and c.sesoi > 0:
        return c.sesoi, "SESOI"
    if c.compare == "bound" and c.bound:
        return (abs(c.bound), "|bound|") if c.sesoi_unit == "difference" else (1.0, c.sesoi_unit)
    ref = abs(float(np.mean(e.reference))) if len(e.reference) else 0.0
    return (ref, "|ref.|") if ref > 0 and c.sesoi_unit == "difference" else (1.0, c.sesoi_unit)


def forest_plot(verdicts: list[Verdict], path: Path) -> None:
    """Every effect as theta / SESOI (positive = the predicted direction) with its interval on the same
    scale. Each row's decision thresholds are drawn on it: ±1 (the SESOI) for claims with a SESOI, so a
    bar wholly right of +1 is `supported`, wholly within ±1 `no effect of interest`, wholly left of -1
    `contradicted` (before any multiplicity adjustment); 0 for bound claims (theta / |bound|: the bound
    is the margin). Values beyond ±FOREST_LIMIT sit at the edge with an arrow and the value."""
    n = len(verdicts)
    fig = Figure(figsize=(9.5, 0.45 * n + 1.6))
    ax = fig.subplots()
    lim = FOREST_LIMIT
    clip = lambda x: max(-lim, min(lim, x))  # noqa: E731
    for i, v in enumerate(verdicts):
        e = v.effect
        y = n - 1 - i
        color = COLORS.get(e.verdict, "black")
        scale, _ = forest_scale(v)
        ticks = (0.0,) if v.claim.compare == "bound" or v.claim.sesoi == 0 else (-1.0, 1.0)
        for x in ticks:
            ax.plot([x, x], [y - 0.35, y + 0.35], color="black", lw=1.2, ls="--" if x else "-")
        if math.isnan(e.aligned) or not scale:
            continue
        x = e.aligned / scale
        lo, hi = (c / scale for c in e.aligned_ci)
        if not (math.isnan(lo) or math.isnan(hi)):
            lo_c, hi_c = (clip(c) if math.isfinite(c) else math.copysign(lim, c) for c in (lo, hi))
            ax.plot([lo_c, hi_c], [y, y], color=color, lw=2, ls=":" if e.aligned_ci.kind != "CI" else "-")
            for end in (lo, hi):
                if abs(end) > lim:
                    at = clip(end) if math.isfinite(end) else math.copysign(lim, end)
                    ax.annotate("▶" if end > 0 else "◀", (at, y), ha="center", va="center", color=color, fontsize=9)
        ax.plot([clip(x)], [y], "o", color=color)
        if abs(x) > lim:
            ax.annotate(f"{x:.3g}", (clip(x), y), textcoords="offset points", xytext=(-6 if x > 0 else 6, 5),
                        ha="right" if x > 0 else "left", fontsize=7)
    ax.axvline(0, color="black", lw=0.5)
    ax.set_xlim(-lim * 1.1, lim * 1.1)
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_yticks(range(n))
    origin = lambda c: ("negative control" if c.control else "exploratory" if c.paper_claim is None  # noqa: E731
                        else f"§2.{c.paper_claim}")
    ax.set_yticklabels([f"{v.row} ({origin(v.claim)}; /{forest_scale(v)[1]})" for v in reversed(verdicts)], fontsize=8)
    ax.set_xlabel(f"effect toward the prediction / SESOI, interval at {_level(verdicts)} (row ticks: the thresholds; "
                  "dotted: unbounded)", fontsize=8)
    handles = [ax.plot([], [], "o-", color=c, label=k)[0] for k, c in COLORS.items()]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("All effects in SESOI units")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _seed_ranges(seeds) -> str:
    """[0, 1, 2, 5, 100, 101] -> '0-2, 5, 100-101'."""
    seeds, out = sorted(int(s) for s in seeds), []
    for s in seeds:
        if out and s == out[-1][1] + 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in out)


def verdict_seeds(v: Verdict) -> tuple[list[int], list[int]]:
    """The seeds each side of verdict ``v`` was judged on: seeds with a finite value (and, for a step0 claim,
    a finite reference step); where the test is paired over two arms, the seeds both sides have."""
    def finite(nums: ArmNumbers, extra=None):
        out = []
        for i, seed in enumerate(nums.seeds):
            ok = math.isfinite(nums.values[i]) if i < len(nums.values) else False
            if extra is not None:
                ok = ok and math.isfinite(extra[i])
            if ok:
                out.append(seed)
        return out

    c = v.claim
    if c.compare == "step0":
        t = finite(v.treatment, v.treatment.step0)
        return t, t
    if c.compare == "bound" or v.reference is None:
        t = [s for s in finite(v.treatment) if c.window.from_step is None or s in v.treatment.window]
        return t, []
    t, r = finite(v.treatment), finite(v.reference)
    if v.effect.paired:
        common = [s for s in t if s in r]
        return common, common
    return t, r


STYLES = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D")]  # (line style, marker) per side of a panel


def _curve(ax, nums: ArmNumbers, seeds: list[int], k: int, label: str) -> bool:
    curves = [nums.curves[s] for s in seeds if s in nums.curves and len(nums.curves[s])]
    if not curves:
        return False
    table = pd.concat(curves, axis=1).sort_index()
    ls, marker = STYLES[k % len(STYLES)]
    color = f"C{k}"
    # markers and line styles differ per side and the later side is drawn thinner on top, so two arms whose
    # curves coincide both stay visible (a solid line with circles under a dashed one with squares)
    ax.plot(table.index, table.mean(axis=1), color=color, ls=ls, marker=marker, ms=6 - 1.5 * k, lw=2.2 - 0.5 * k,
            mfc="none" if k else color, label=label, zorder=3 + k)
    ax.fill_between(table.index, table.min(axis=1), table.max(axis=1), color=color, alpha=0.15, lw=0)
    return True


def claim_plot(claim: Claim, sides: list[ArmNumbers], path: Path, verdicts: list[Verdict] | None = None,
               width: int = 60) -> Figure:
    """The claim's metric vs step, one panel per verdict row (a reference and one treatment, or one arm for a
    step0 / bound claim): per side the mean over the seeds that row's verdict used and the band from min to
    max, each side with its own line style and marker (coinciding curves stay visible), labelled with those
    seeds; titles wrapped at ``width`` characters. Without ``verdicts``: one panel of every side's seeds."""
    import textwrap

    if verdicts:
        panels = []
        for v in verdicts:
            t_seeds, r_seeds = verdict_seeds(v)
            if claim.compare == "arms" and v.reference is not None:
                panels.append((v.row, [(v.reference, r_seeds), (v.treatment, t_seeds)]))
            else:
                panels.append((v.row, [(v.treatment, t_seeds)]))
    else:
        panels = [(claim.id, [(n, list(n.curves)) for n in sides])]
    n = len(panels)
    fig = Figure(figsize=(5.2 * n if n > 1 else 6.5, 4.4), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, (row, panel) in zip(axes, panels):
        drawn = False
        for k, (nums, seeds) in enumerate(panel):
            label = f"{nums.label}: n={len(seeds)}" + (f" (seeds {_seed_ranges(seeds)})" if seeds else "")
            drawn |= _curve(ax, nums, seeds, k, label)
        if claim.compare == "bound":
            ax.axhline(claim.bound, color="black", ls="--", lw=0.8, label=f"bound {claim.bound:g}")
        ax.set_xlabel("step")
        ax.set_ylabel(claim.metric.label, fontsize=7)
        title = row if n > 1 else f"{row}: {claim.statement}"
        ax.set_title(textwrap.fill(title, max(28, width // n), break_long_words=False), fontsize=8)
        if drawn:
            ax.legend(fontsize=7, title="n: seeds its verdict used" if verdicts else None, title_fontsize=7)
        else:
            ax.text(0.5, 0.5, "no completed runs", ha="center", va="center", transform=ax.transAxes)
    if n > 1:
        fig.suptitle(textwrap.fill(f"{claim.id}: {claim.statement}", int(width * 1.6), break_long_words=False),
                     fontsize=9)
    fig.savefig(path, dpi=120)
    return fig


# ------------------------------------------------------------------------------ report.md

def write_report(out: Path, suite: Suite, verdicts: list[Verdict], sides: dict, info: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    table = verdict_rows(verdicts)
    for name, by_row in info.get("columns", {}).items():  # plan.seeds_section: seeds used, stage stopped at
        table[name] = [by_row.get(row) for row in table["claim"]]
    amended = info.get("amended", {})
    table["amendments"] = [" ".join(map(str, amended.get(row, []))) for row in table["claim"]]
    table.to_csv(out / "verdicts.csv", index=False)
    forest_plot(verdicts, out / "forest.png")
    correction = info.get("correction", verdicts[0].effect.correction if verdicts else "holm")
    family = [v.row for v in verdicts if v.in_family and v.effect.verdict != NO_DATA]
    flagged = [v.row for v in verdicts if v.cannot_fail and v.claim.family_member]
    lines = [f"# Study `{suite.name}`", "", *info.get("header", []),  # lock.py: the lock's hash and state
             *info.get("opening", [])]  # calibrate.py's warnings, if any
    alpha = info.get("alpha", suite.alpha)
    failures = control_failures(verdicts)
    if failures:
        lines += [f"> **WARNING: control {'; '.join(failures)}**: a negative control's arms differ in nothing "
                  f"that matters, so it must come out `no effect of interest` at the claims' SESOI; a planted "
                  f"positive must come out `supported`; until they do, this suite's verdicts are not to be trusted "
                  f"(too few seeds, a window too short, or a bias in the pipeline).", ""]
    levels = sorted({v.effect.alpha for v in verdicts})
    level = (f"two-sided {level_text(alpha)} intervals" if levels in ([], [alpha]) else
             f"each row at the level of the look it stopped at (column `level`: "
             f"{', '.join(level_text(a) for a in levels)}; one-sided levels {', '.join(f'{a:.4g}' for a in levels)})")
    lines += [f"Level: one-sided alpha = {alpha:g} per test and direction over the whole study, {level}; "
              f"multiplicity: {CORRECTION_NAMES[correction]} over the family of {len(family)} claim row(s) "
              f"({', '.join(family) or 'none'}; controls judged unadjusted"
              + (f"; left out as they cannot fail as stated (null check): {', '.join(flagged)}" if flagged else "")
              + ").", "",
              "```", rule_text(alpha, correction).rstrip(), "```", "",
              verdict_table(verdicts, amended), "",
              f"Suite `{suite.path.name}`; seeds {suite.seeds}; data: {info.get('data', 'as each arm says')}; "
              f"{info.get('runs', '')}", "",
              "Columns: effect in the claim's SESOI unit (difference; relative change; relative change of the "
              f"non-zero fraction 1 − s), natural sign, with its interval (level: the `level` column, {_level(verdicts)}) "
              "before any multiplicity "
              "adjustment "
              "(the verdict uses the adjusted p-values; Fieller's for ratios; "
              "`unbounded` where the reference cannot be told from 0); p: the one-sided p-value of the "
              "verdict's test (sup: theta > SESOI, con: theta < −SESOI, tost: equivalence; for `inconclusive` "
              "the smallest), raw and after the adjustment; n: seeds with a value per arm, and the seeds that "
              "failed, diverged or are missing. verdicts.csv has every number (all three p-values raw and "
              "adjusted, theta in SESOI units, the exact permutation p of the direction, whose floor is 0.05 "
              "for 3 vs 3 seeds and 0.125 for 3 pairs).", "",
              "Null check (nullcheck.py): the claim's own test on a null version of its data (step-0 values for "
              "arm and bound claims, step 0 of another seed for emergence claims, shuffled arm labels where there "
              "is no step 0, the treatment moved 2 x SESOI for a claim predicting no effect); a null check that "
              f"reads the claim's predicted outcome marks it **{CANNOT_FAIL}**, and it leaves the family.", "",
              "![forest plot](forest.png)", "", shared_reference_section(verdicts, correction),
              *info.get("sections", [])]  # seeds/looks, calibration
    for v in verdicts:
        c, e = v.claim, v.effect
        origin = ("negative control" if c.control else "planted positive (effect known in advance)" if c.planted
                  else "exploratory claim (no numbered claim of the paper)"
                  if c.paper_claim is None else f"docs/paper.md §2 claim {c.paper_claim}")
        predicted = (f"predicted: no effect of interest (|theta| < SESOI; direction of theta: {c.direction})"
                     if c.predict == "no_effect" else f"predicted: {c.direction}")
        lines += [f"## {v.row}: {c.statement}", "",
                  f"{origin}. Metric {c.metric.label}, {c.window.label}; {predicted}; "
                  + (f"bound {c.bound:g} (the margin)" if c.compare == "bound" else
                     f"smallest effect of interest {c.sesoi:g} ({c.sesoi_unit})")
                  + (f"; accuracy non-inferiority margin {c.ni_margin:g}" if c.ni_margin is not None else "")
                  + (f" on {c.ni_metric.label}" if c.ni_metric is not None else "")
                  + (" (lower is better: its 'accuracy' columns show the value negated, so a treatment is "
                     "non-inferior when its difference lies above -margin)" if c.ni_direction == "decrease" else "")
                  + f"; {e.test_name}." + (f" {c.note}" if c.note else ""), ""]
        if c.why:
            lines += [f"Why this {c.margin_kind or 'size'}: {c.why}", ""]
        if c.known_effect is not None:
            lines += [f"Effect known in advance: theta = {c.known_effect:g} ({c.sesoi_unit}).", ""]
        sharing = shared_reference_text(v, verdicts)
        if sharing:
            lines += [f"Shares its reference arm `{v.reference.arm}` with {sharing}: correlated errors (section "
                      f"\"Shared reference arms\").", ""]
        shown = [v.treatment] + ([v.reference] if v.reference is not None else [])
        lines += ["| arm | overrides | seeds | per-seed values | mean [95% t CI] | accuracy mean [CI] |",
                  "|---|---|---|---|---|---|"]
        for nums in shown:
            arm = suite.arms[nums.arm]
            over = " ".join(f"`{o}`" for o in arm.overrides) or "(defaults)"
            if arm.data:
                over = f"data: {arm.dataset or arm.data}; " + over
            failed = nums.failures()
            lines.append(f"| {nums.label} | {over} | {nums.seeds}" + (f" ({failed})" if failed else "") + " | "
                         f"{', '.join(_f(x, 4) for x in nums.values)} | {_mean_ci_text(nums)} | "
                         f"{_mean_ci_text(nums, 'accuracy')} |")
        if c.compare == "step0":
            lines.append(f"| {v.treatment.label} @ step 0 | | {v.treatment.seeds} | "
                         f"{', '.join(_f(x, 4) for x in v.treatment.step0)} | {_mean_ci_text(v.treatment, 'step0')} | |")
        if e.worst_step is not None and len(e.treatment):  # a bound window: the values at its weakest step
            lines.append(f"| {v.treatment.label} @ step {e.worst_step} (weakest of the window) | | | "
                         f"{', '.join(_f(x, 4) for x in e.treatment)} | {_f(float(np.mean(e.treatment)))} "
                         f"{_ci(t_interval(e.treatment))} | |")
        ni = e.noninferiority
        effect = (f"Effect{f' at the weakest step {e.worst_step} of {e.window_steps}' if e.worst_step is not None else ''}: "
                  f"difference {_f(e.diff)} {_interval_text(e.diff_ci)}; relative {_pct(e.rel)} "
                  f"{_interval_text(e.rel_ci, _pct)}")
        if not math.isnan(e.nonzero_rel) and (c.metric.probe == "sparsity" or c.sesoi_unit == "nonzero_relative"):
            effect += f"; non-zero fraction {_pct(e.nonzero_rel)} {_interval_text(e.nonzero_rel_ci, _pct)}"
        effect += (f" ({e.test_name}, {level_text(e.alpha)} intervals). theta (toward the prediction, {c.sesoi_unit}) "
                   f"{_f(e.aligned)} "
                   f"{_interval_text(e.aligned_ci)}; one-sided p: sup {_f(e.p_sup_joint, 2)}, con {_f(e.p_con, 2)}, "
                   f"tost {_f(e.p_tost, 2)}")
        if e.correction != "none" and v.in_family and e.verdict != NO_DATA:
            effect += (f"; adjusted ({e.correction}, family of {e.family_size}): sup {_f(e.p_sup_adj, 2)}, "
                       f"con {_f(e.p_con_adj, 2)}, tost {_f(e.p_tost_adj, 2)}")
        effect += f"; exact permutation p of the direction {_f(e.p_perm, 2)}."
        lines += ["", effect, ""]
        if ni is not None:
            lines += [f"Accuracy non-inferiority (margin {ni.margin:g}): difference {_f(ni.diff)} "
                      f"{_interval_text(ni.ci)}, p {_f(ni.p, 2)}: **{ni.outcome}**.", ""]
        lines += [f"**Verdict: {e.verdict}**{_theory_mark(c, e)} — {e.reason}.", ""]
        if v.null is not None:
            ne = v.null.effect
            detail = "" if ne is None else (f" (theta {_f(ne.aligned)} {_interval_text(ne.aligned_ci)}"
                                             + (f"; {ne.reason}" if ne.reason and ne.verdict != SUPPORTED else "") + ")")
            lines += [f"Null check ({v.null.kind}): **{v.null.verdict}**{detail}"
                      + (f". **{CANNOT_FAIL}**: the claim reads its predicted outcome where its cause is absent, "
                         f"so it is left out of the family (judged unadjusted)" if v.cannot_fail else "") + ".", ""]
        fig = f"claim_{c.id}.png"
        if (out / fig).exists():
            lines += [f"![{c.id}]({fig})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
