"""``sparsity-exp study SUITE [overrides] [--out DIR] [--seeds 0,1,2] [--judge-only]``."""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..collect import read_run
from ..config import conf_dir
from ..errors import ConfigError, UserError
from . import execute
from .report import ArmNumbers, Verdict, claim_plot, control_failures, verdict_table, write_report
from .stats import CORRECTIONS, adjust, judge, series, step0_value, window_value, window_values
from .suite import Side, Suite, load_suite, suite_path

USAGE = "sparsity-exp study SUITE [overrides] [--out DIR] [--seeds 0,1,2] [--judge-only] [--correction holm|bh|none]"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sparsity-exp study", usage=USAGE, description=(
        "Run every arm x seed of a validation suite (conf/study/SUITE.yaml) through `run -m` with "
        "trainer.resume=auto (completed runs are skipped), then judge each claim: effect, 95% CI, verdict "
        "supported / no effect of interest / contradicted / inconclusive / no data (the rule: report.md, top). "
        "Writes DIR/report.md, verdicts.csv and figures."))
    p.add_argument("suite", help="a suite under conf/study/ (cpu, gpu, paper) or a path to a suite YAML")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every run (trainer.device=cuda, "
                                                "hydra/launcher=local, data.root=...)")
    p.add_argument("--out", type=Path, default=None, help="the study folder (default: study/SUITE)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds instead of the suite's")
    p.add_argument("--judge-only", action="store_true", help="run nothing; judge the runs already there")
    p.add_argument("--correction", choices=sorted(CORRECTIONS), default="holm",
                   help="multiplicity adjustment over the suite's claims (negative controls excluded): Holm's "
                        "step-down (default, family-wise error), Benjamini-Hochberg (false discovery rate) or none")
    return p


def seed_status(job: execute.Job) -> str:
    """completed, diverged (a non-finite loss stopped it), failed, missing, or the run's own status."""
    if job.status == "failed" and job.folder is not None:
        from ..lifecycle.folders import read_status

        if "NonFiniteLoss" in str(read_status(job.folder).get("error", "")):
            return "diverged"
    return job.status


def _numbers(side: Side, jobs: list[execute.Job], rows: dict, suite: Suite, claim) -> ArmNumbers:
    nums = ArmNumbers(label=side.label, arm=side.arm, seeds=[], values=[], step0=[], accuracy=[])
    for job in jobs:
        if job.arm.name != side.arm:
            continue
        nums.seeds.append(job.seed)
        frame = rows.get(job.folder) if job.status == "completed" else None
        status = seed_status(job)
        if frame is None:
            nums.values.append(math.nan), nums.step0.append(math.nan), nums.accuracy.append(math.nan)
            nums.status.append(status)
            continue
        values = series(frame, side.metric)
        nums.curves[job.seed] = values
        value = window_value(values, claim.window)
        # a completed run without a finite value of the metric counts as a failed seed, said as such
        nums.status.append(status if math.isfinite(value) else "no value")
        nums.values.append(value if math.isfinite(value) else math.nan)
        if claim.window.from_step is not None:
            nums.window[job.seed] = window_values(values, claim.window)
        nums.step0.append(step0_value(values))
        nums.accuracy.append(window_value(series(frame, suite.accuracy), type(claim.window)(claim.window.last)))
    return nums


def _window_table(nums: ArmNumbers) -> tuple[np.ndarray, list[int]]:
    """Seeds x steps of a bound window (nan where a seed lacks a step or has no run)."""
    steps = sorted({int(s) for w in nums.window.values() for s in w.index})
    table = np.full((len(nums.seeds), len(steps)), np.nan)
    for i, seed in enumerate(nums.seeds):
        w = nums.window.get(seed)
        if w is not None:
            for j, step in enumerate(steps):
                if step in w.index:
                    table[i, j] = float(w.loc[step])
    return table, steps


def _rows(folder: Path) -> pd.DataFrame | None:
    run = read_run(folder)
    if not run.frames:
        return None
    # metrics.csv and posthoc_metrics.csv (`sparsity-exp probe` over checkpoints) together: a claim's metric
    # may come from either; where both have a step, the post-hoc row (read last) wins
    return pd.concat(run.frames, ignore_index=True)


def judge_suite(suite: Suite, jobs: list[execute.Job], correction: str = "holm") -> tuple[list[Verdict], dict]:
    """Every claim's verdicts (stats.judge per comparison), then re-decided under ``correction`` over the
    suite's non-control claims (stats.adjust)."""
    rows = {job.folder: _rows(job.folder) for job in jobs if job.status == "completed"}
    verdicts, sides = [], {}
    for claim in suite.claims:
        claim_sides = [_numbers(s, jobs, rows, suite, claim) for s in claim.sides]
        sides[claim.id] = claim_sides
        by_label = {s.label: n for s, n in zip(claim.sides, claim_sides)}
        for row, treat, ref in claim.comparisons():
            t = by_label[treat.label]
            r = by_label[ref.label] if ref is not None else None
            treatment, steps = t.values, None
            if claim.compare == "arms":
                reference = r.values
            elif claim.compare == "step0":
                reference = t.step0
            else:
                reference = [claim.bound] * len(t.values)
                if claim.window.from_step is not None:
                    treatment, steps = _window_table(t)
            accuracy = (t.accuracy, r.accuracy) if r is not None else None
            effect = judge(treatment, reference, claim.compare, claim.direction, claim.sesoi, claim.sesoi_unit,
                           paired=claim.paired(treat, ref, suite.arms), alpha=suite.alpha,
                           accuracy=accuracy, ni_margin=claim.ni_margin, steps=steps)
            verdicts.append(Verdict(row, claim, t, r, effect))
    adjust([v.effect for v in verdicts], correction, suite.alpha, [v.claim.control for v in verdicts])
    return verdicts, sides


def main(argv: list[str]) -> int:
    args = _parser().parse_intermixed_args(argv)
    started = time.perf_counter()
    try:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    except ValueError:
        raise ConfigError(f"--seeds {args.seeds!r}: give comma-separated integers, e.g. --seeds 0,1,2") from None
    suite = load_suite(suite_path(args.suite, conf_dir()), seeds)
    execute.check_user_overrides(args.overrides)
    out = (args.out or Path("study") / suite.name).resolve()
    runs = out / "runs"
    out.mkdir(parents=True, exist_ok=True)
    jobs, dataset = execute.plan_jobs(suite, args.overrides, out)
    execute.locate(jobs, runs)
    done = sum(j.status == "completed" for j in jobs)
    print(f"[study] {suite.name}: {len(suite.claims)} claims, {len({tuple(j.overrides) for j in jobs})} distinct "
          f"arms, {len(jobs)} arm x seed runs ({done} already completed) under {runs}")
    launched = 0
    if not args.judge_only:
        launched = execute.run_pending(jobs, runs, logfile=out / "runs.log")
        if launched:
            execute.locate(jobs, runs)
    missing = [f"{j.arm.name} seed {j.seed} ({j.status})" for j in jobs if j.status != "completed"]
    if missing:
        print(f"[study] {len(missing)} run(s) not completed, judged without them: " + "; ".join(missing[:8]))
    verdicts, sides = judge_suite(suite, jobs, args.correction)
    for claim in suite.claims:
        claim_plot(claim, sides[claim.id], out / f"claim_{claim.id}.png")
    wall = time.perf_counter() - started
    data = (f"{dataset.name} (chosen from {[d.name for d in suite.datasets]}; arms marked `data: auto`)"
            if dataset else "as each arm's overrides say")
    info = {"data": data, "correction": args.correction,
            "runs": f"{launched} run(s) launched this time, {len(jobs) - len(missing)} of "
                                  f"{len(jobs)} completed; this invocation took {wall:.0f} s wall."}
    report = write_report(out, suite, verdicts, sides, info)
    print(verdict_table(verdicts))
    failures = control_failures(verdicts)
    if failures:
        print(f"[study] WARNING: negative control {'; '.join(failures)}: see {report}")
    print(f"[study] data: {data}")
    print(f"[study] {launched} run(s) launched; {wall:.0f} s wall; report: {report}")
    return 0


def cli(argv: list[str]) -> int:
    try:
        return main(argv)
    except UserError as exc:
        import sys

        print(f"error: {exc}", file=sys.stderr)
        return 2
