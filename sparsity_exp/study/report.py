"""study/<suite>/: report.md (verdict table first), verdicts.csv (one row per verdict), values.csv (the
per-seed numbers the verdicts come from), forest.png (every effect with its CI) and claim_<id>.png (the
metric vs step, mean and seed band per arm). Paths in report.md are relative to its folder."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .stats import CONTRADICTED, NO_DATA, NOT_SHOWN, SUPPORTED, Effect, t_interval
from .suite import Claim, Suite

COLORS = {SUPPORTED: "tab:green", CONTRADICTED: "tab:red", NOT_SHOWN: "tab:gray", NO_DATA: "tab:olive"}


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

    def mean_ci(self, which="values"):
        x = np.array([v for v in getattr(self, which) if not math.isnan(v)])
        return (float(x.mean()) if len(x) else math.nan, *t_interval(x))


@dataclass
class Verdict:
    row: str
    claim: Claim
    treatment: ArmNumbers
    reference: ArmNumbers | None
    effect: Effect


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
        rows.append({
            "claim": v.row, "paper_claim": c.paper_claim, "control": c.control, "statement": c.statement,
            "compare": c.compare, "treatment": v.treatment.label, "reference": reference_label(v),
            "metric": c.metric.label if v.treatment.label == v.treatment.arm else
            f"{v.treatment.label} vs {reference_label(v)}", "window": c.window.label,
            "direction": c.direction, "sesoi": c.sesoi, "sesoi_unit": c.sesoi_unit,
            "n_treatment": len(e.treatment), "n_reference": len(e.reference),
            "treatment_mean": t_mean, "treatment_ci_low": t_lo, "treatment_ci_high": t_hi,
            "reference_mean": r_mean, "reference_ci_low": r_lo, "reference_ci_high": r_hi,
            "difference": e.diff, "difference_ci_low": e.diff_ci[0], "difference_ci_high": e.diff_ci[1],
            "relative": e.rel, "relative_ci_low": e.rel_ci[0], "relative_ci_high": e.rel_ci[1],
            "nonzero_relative": e.nonzero_rel, "nonzero_relative_ci_low": e.nonzero_rel_ci[0],
            "nonzero_relative_ci_high": e.nonzero_rel_ci[1],
            "test": e.test_name, "p_t": e.p_t, "p_permutation": e.p_perm,
            "accuracy_treatment": acc_t[0], "accuracy_reference": acc_r[0],
            "verdict": e.verdict, "reason": e.reason,
        })
    return pd.DataFrame(rows)


def verdict_table(verdicts: list[Verdict]) -> str:
    """The verdict table (markdown), as the command prints it and report.md starts with it."""
    head = ("| claim | §2 | compared | effect (diff, 95% CI) | relative | non-zero rel. | p (t / perm.) "
            "| accuracy (treat. / ref.) | verdict |")
    lines = [head, "|" + "---|" * 9]
    for v in verdicts:
        e, c = v.effect, v.claim
        acc_t = v.treatment.mean_ci("accuracy")[0]
        acc_r = v.reference.mean_ci("accuracy")[0] if v.reference is not None else math.nan
        nz = _pct(e.nonzero_rel) if c.metric.probe == "sparsity" else "—"
        compared = f"{v.treatment.label} vs {reference_label(v)} ({'↑' if c.direction == 'increase' else '↓'})"
        mark = " (control)" if c.control else ""
        lines.append(f"| {v.row}{mark} | {c.paper_claim} | {compared} | {_f(e.diff)} {_ci(e.diff_ci)} | "
                     f"{_pct(e.rel)} | {nz} | {_f(e.p_t, 2)} / {_f(e.p_perm, 2)} | {_f(acc_t)} / {_f(acc_r)} | "
                     f"**{e.verdict}** |")
    return "\n".join(lines)


def control_failures(verdicts: list[Verdict]) -> list[str]:
    return [v.row for v in verdicts if v.claim.control and v.effect.verdict not in (NOT_SHOWN, NO_DATA)]


# ------------------------------------------------------------------------------ figures

def forest_plot(verdicts: list[Verdict], path: Path) -> None:
    """Every effect on one relative scale: difference / |reference mean|, with the verdict's t CI
    on the same scale, so a bar crossing 0 is exactly a CI that includes zero."""
    n = len(verdicts)
    fig = Figure(figsize=(8, 0.45 * n + 1.4))
    ax = fig.subplots()
    for i, v in enumerate(verdicts):
        e = v.effect
        scale = abs(e.reference.mean()) if len(e.reference) and e.reference.mean() != 0 else 1.0
        y = n - 1 - i
        color = COLORS[e.verdict]
        if not math.isnan(e.diff):
            lo, hi = (x / scale for x in e.diff_ci)
            if not (math.isnan(lo) or math.isnan(hi)):
                ax.plot([lo, hi], [y, y], color=color, lw=2)
            ax.plot([e.diff / scale], [y], "o", color=color)
            ax.annotate("→" if v.claim.direction == "increase" else "←", (e.diff / scale, y),
                        textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8, color="black")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(n))
    ax.set_yticklabels([f"{v.row} ({'negative control' if v.claim.control else f'§2.{v.claim.paper_claim}'})"
                        for v in reversed(verdicts)], fontsize=8)
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlabel("effect / |reference mean| (95% t CI; arrow: predicted direction)")
    handles = [ax.plot([], [], "o-", color=c, label=k)[0] for k, c in COLORS.items()]
    ax.legend(handles=handles, fontsize=8, loc="best")
    ax.set_title("All effects")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def claim_plot(claim: Claim, sides: list[ArmNumbers], path: Path) -> None:
    """The claim's metric vs step: per side the mean over seeds and the band from min to max."""
    fig = Figure(figsize=(6.5, 3.8))
    ax = fig.subplots()
    for k, nums in enumerate(sides):
        curves = [s for s in nums.curves.values() if len(s)]
        if not curves:
            continue
        table = pd.concat(curves, axis=1).sort_index()
        color = f"C{k}"
        ax.plot(table.index, table.mean(axis=1), color=color, label=f"{nums.label} (n={table.shape[1]})")
        ax.fill_between(table.index, table.min(axis=1), table.max(axis=1), color=color, alpha=0.2, lw=0)
    if claim.compare == "bound":
        ax.axhline(claim.bound, color="black", ls="--", lw=0.8, label=f"bound {claim.bound:g}")
    ax.set_xlabel("step")
    ax.set_ylabel(claim.metric.label, fontsize=8)
    ax.set_title(f"{claim.id}: {claim.statement}"[:90], fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no completed runs", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# ------------------------------------------------------------------------------ report.md

def write_report(out: Path, suite: Suite, verdicts: list[Verdict], sides: dict, info: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    table = verdict_rows(verdicts)
    for name, by_row in info.get("columns", {}).items():  # plan.seeds_section: seeds used, stage stopped at
        table[name] = [by_row.get(row) for row in table["claim"]]
    table.to_csv(out / "verdicts.csv", index=False)
    forest_plot(verdicts, out / "forest.png")
    lines = [f"# Study `{suite.name}`", "", *info.get("opening", [])]  # calibrate.py's warning, if any
    failures = control_failures(verdicts)
    if failures:
        lines += [f"> **WARNING: the negative control {', '.join(failures)} did not come out `not shown`**: the "
                  f"arms differ in nothing that matters, so this suite's verdicts are not to be trusted "
                  f"(too few seeds, a window too short, or a bias in the pipeline).", ""]
    lines += [verdict_table(verdicts), "",
              f"Suite `{suite.path.name}`; seeds {suite.seeds}; data: {info.get('data', 'as each arm says')}; "
              f"{info.get('runs', '')}", "",
              "How to read it: the effect is treatment − reference of the claim's metric (reference: another arm, "
              "the same runs at step 0, or a constant bound); the CI is a 95% t interval (Welch for two arms, "
              "paired over seeds against step 0, one-sample against a bound). `supported`: the CI lies on the "
              "predicted side of zero and the effect exceeds the smallest effect of interest; `contradicted`: "
              "the CI lies on the other side; `not shown`: neither; `no data`: fewer than two seeds with a value "
              "(runs missing or failed), so the claim was not tested. Relative changes carry a percentile "
              "bootstrap CI over seeds in verdicts.csv (coarse with 3 seeds). The permutation p-value is exact "
              "(all relabellings); with 3 vs 3 seeds it cannot go below 0.05.", "",
              "![forest plot](forest.png)", "", *info.get("sections", [])]  # seeds/stages, calibration
    for v in verdicts:
        c, e = v.claim, v.effect
        lines += [f"## {v.row}: {c.statement}", "",
                  f"PAPER.md §2 claim {c.paper_claim}{' — negative control' if c.control else ''}. "
                  f"Metric {c.metric.label}, {c.window.label}; predicted: {c.direction}; smallest effect of "
                  f"interest {c.sesoi:g} ({c.sesoi_unit})." + (f" {c.note}" if c.note else ""), ""]
        shown = [v.treatment] + ([v.reference] if v.reference is not None else [])
        lines += ["| arm | overrides | seeds | per-seed values | mean [95% t CI] | accuracy mean [CI] |",
                  "|---|---|---|---|---|---|"]
        for nums in shown:
            arm = suite.arms[nums.arm]
            over = " ".join(f"`{o}`" for o in arm.overrides) or "(defaults)"
            if arm.data:
                over = f"data: {arm.data}; " + over
            lines.append(f"| {nums.label} | {over} | {nums.seeds} | "
                         f"{', '.join(_f(x, 4) for x in nums.values)} | {_mean_ci_text(nums)} | "
                         f"{_mean_ci_text(nums, 'accuracy')} |")
        if c.compare == "step0":
            lines.append(f"| {v.treatment.label} @ step 0 | | {v.treatment.seeds} | "
                         f"{', '.join(_f(x, 4) for x in v.treatment.step0)} | {_mean_ci_text(v.treatment, 'step0')} | |")
        lines += ["",
                  f"Effect: {_f(e.diff)} {_ci(e.diff_ci)} ({e.test_name} 95% CI); relative {_pct(e.rel)} "
                  f"{_pct_ci(e.rel_ci)}" + (f"; non-zero fraction {_pct(e.nonzero_rel)} {_pct_ci(e.nonzero_rel_ci)}"
                                             if c.metric.probe == "sparsity" else "") +
                  f"; one-sided p {_f(e.p_t, 2)} ({e.test_name}), {_f(e.p_perm, 2)} (exact permutation).", "",
                  f"**Verdict: {e.verdict}** — {e.reason}.", ""]
        fig = f"claim_{c.id}.png"
        if (out / fig).exists():
            lines += [f"![{c.id}]({fig})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
