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
from ..dotted import flatten
from ..errors import ConfigError, UserError
from . import calibrate, divergence, execute, lock, machine, plan, procedure, seedscsv
from .report import ArmNumbers, Verdict, claim_plot, control_failures, verdict_table, write_report
from .nullcheck import null_check
from .stats import (CORRECTIONS, NO_DATA, adjust, first_finite_value, judge, series, step0_value, window_value,
                    window_values)
from .suite import Side, Suite, load_suite, suite_path

USAGE = ("sparsity-exp study SUITE [overrides] [--out DIR] [--seeds 0,1,2 | --seeds auto --max-seeds N] "
         "[--correction holm|bh|by|none] [--judge-only] [--plan] [--dry-run] [--amend WHY] [--reproducible]")

# The verdict rule the sequential stages, the plan's replay and the calibration apply (plan.Rule): the
# four-outcome rule of stats.judge at a given one-sided level.
VERDICT_RULE: plan.Rule = plan.default_rule


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sparsity-exp study", usage=USAGE, description=(
        "Run every arm x seed of a validation suite (conf/study/SUITE.yaml) through `run -m` with "
        "trainer.resume=auto (completed runs are skipped), then judge each claim: effect, 95% CI, verdict "
        "supported / no effect of interest / contradicted / inconclusive / no data (the rule: report.md, top). "
        "Writes DIR/report.md, verdicts.csv and figures, with a calibration of the rule on the suite's negative "
        "controls (false-positive rate measured on its runs, planted positive)."))
    p.add_argument("suite", help="a suite under conf/study/ (cpu, gpu, paper) or a path to a suite YAML")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every run (trainer.device=cuda, "
                                                "hydra/launcher=local, data.root=...)")
    p.add_argument("--out", type=Path, default=None, help="the study folder (default: study/SUITE)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds instead of the suite's; `auto`: the "
                   "suite's seeds first, then more seeds in stages (up to --max-seeds) only for the arms of claims "
                   "still undecided, judged by a group-sequential alpha-spending rule")
    p.add_argument("--max-seeds", type=int, default=None, help="with --seeds auto: the most seeds per arm (needed)")
    p.add_argument("--stages", type=int, default=3, help="with --seeds auto: looks at the data, the first at the "
                   "suite's seeds, evenly spaced up to --max-seeds (default 3)")
    p.add_argument("--spending", choices=plan.SPENDING, default="obf", help="with --seeds auto: Lan-DeMets "
                   "alpha-spending function, O'Brien-Fleming-like (obf: little alpha at early looks) or pocock")
    p.add_argument("--alpha", type=float, default=None, help="one-sided level per direction of the verdicts, the "
                   "sequential stages, the plan and the calibration (default 0.025 = the report's 95%% CI)")
    p.add_argument("--planted", type=float, default=None, help="the bias, in SESOI units, a negative control must "
                   "catch in the calibration's simulated studies (planted as through a dead-units arm; default 1.5)")
    p.add_argument("--judge-only", action="store_true", help="run nothing; judge the runs already there "
                   "(refused when none are found and a report would be overwritten: give --out DIR)")
    p.add_argument("--plan", action="store_true", help="run and write nothing; print per claim the seeds per "
                   "arm needed for 80%% power, from the runs already there (a pilot)")
    p.add_argument("--dry-run", action="store_true", help="run and write nothing; print each arm's composed "
                   "config (what differs from the defaults), its `sparsity-exp run` command and each seed's status")
    p.add_argument("--arm-jobs", type=int, default=1, help="launch processes at once, the arms dealt among them "
                   "(default 1: one arm after another); e.g. 2 on a 2-core machine with OMP_NUM_THREADS=1, or several "
                   "on one GPU so that arms share it (each arm's seeds also share it under hydra/launcher=local)")
    p.add_argument("--amend", default=None, metavar="WHY", help="accept a suite or rule that differs from the "
                   "study folder's lock.json (written before the first run) and record the change with this reason; "
                   "the report lists every amendment and marks the verdicts it touched")
    p.add_argument("--reproducible", action="store_true", help="run the runs with kernels pinned for numbers "
                   "reproducible across machines (portable ATen kernels, MKL_CBWR=COMPATIBLE, oneDNN off, one thread, "
                   "deterministic algorithms; study/machine.py), at a speed cost (README)")
    p.add_argument("--correction", choices=sorted(CORRECTIONS), default="holm",
                   help="multiplicity adjustment over the suite's claims (negative controls excluded): Holm's "
                        "step-down (default, family-wise error, valid under any dependence such as a shared "
                        "reference arm), Benjamini-Hochberg (false discovery rate; independence or positive "
                        "dependence), Benjamini-Yekutieli (by: false discovery rate under any dependence) or none")
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
        nums.step0.append(first_finite_value(values) if claim.baseline == "first_finite" else step0_value(values))
        # non-inferiority on the suite's accuracy or the claim's own metric; a lower-is-better metric (a loss)
        # is negated, so "treatment - reference > -margin" reads "not worse by more than the margin" for both
        sign = -1.0 if claim.ni_direction == "decrease" else 1.0
        ni_metric = claim.ni_metric or suite.accuracy
        nums.accuracy.append(sign * window_value(series(frame, ni_metric), type(claim.window)(claim.window.last)))
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


def judge_suite(suite: Suite, jobs: list[execute.Job], correction: str = "holm",
                alpha: float | None = None) -> tuple[list[Verdict], dict]:
    """Every claim's verdicts (stats.judge per comparison at the one-sided level ``alpha``, the suite's by
    default), each beside its null check (nullcheck.py), then re-decided under ``correction`` over the
    family: the suite's claims that are not controls and whose null check does not read the theory's
    outcome (a claim that cannot fail as stated is judged unadjusted, like a control; stats.adjust)."""
    alpha = suite.alpha if alpha is None else alpha
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
            accuracy = (t.accuracy, r.accuracy) if r is not None else None
            paired = claim.paired(treat, ref, suite.arms)
            step0s = (t.step0, r.step0 if r is not None else None)
            div_t = [st == divergence.DIVERGED for st in t.status]
            seeds_t, seeds_r, div_r = list(t.seeds), list(t.seeds), list(div_t)
            if claim.compare == "arms":
                reference, seeds_r = r.values, list(r.seeds)
                div_r = [st == divergence.DIVERGED for st in r.status]
                if paired and t.seeds != r.seeds:  # pairs over the seeds both arms have (stages add seeds per arm)
                    common = [s for s in t.seeds if s in r.seeds]
                    pick = lambda nums, xs: [xs[nums.seeds.index(s)] for s in common]  # noqa: E731
                    treatment, reference = pick(t, t.values), pick(r, r.values)
                    accuracy = (pick(t, t.accuracy), pick(r, r.accuracy))
                    step0s = (pick(t, t.step0), pick(r, r.step0))
                    div_t, div_r = pick(t, div_t), pick(r, div_r)
                    seeds_t = seeds_r = common
            elif claim.compare == "step0":
                reference = t.step0
            else:
                reference = [claim.bound] * len(t.values)
                div_r = [False] * len(t.values)
                if claim.window.from_step is not None:
                    treatment, steps = _window_table(t)
            # a diverged seed is an outcome of its arm: counted at the worst value observed (divergence.py)
            worst = (math.nan, math.nan)
            if any(div_t) or any(div_r):
                worst = divergence.worst_values(claim.direction, treatment,
                                                reference if claim.compare != "bound" else None)
                treatment = divergence.fill(treatment, div_t, worst[0])
                if claim.compare != "bound":
                    reference = divergence.fill(reference, div_r, worst[1])
                if accuracy is not None:
                    acc_worst = divergence.worst_values("increase", *accuracy)
                    accuracy = (divergence.fill(accuracy[0], div_t, acc_worst[0]),
                                divergence.fill(accuracy[1], div_r, acc_worst[1]))
            effect = judge(treatment, reference, claim.compare, claim.direction, claim.sesoi, claim.sesoi_unit,
                           paired=paired, alpha=alpha,
                           accuracy=accuracy, ni_margin=claim.ni_margin, steps=steps)
            judged = {"treatment": np.asarray(treatment, float), "reference": np.asarray(reference, float),
                      "seeds_t": seeds_t, "seeds_r": seeds_r, "diverged_t": list(map(bool, div_t)),
                      "diverged_r": list(map(bool, div_r)), "worst": worst, "paired": bool(paired) or
                      claim.compare != "arms", "steps": steps, "alpha": alpha,
                      "accuracy": None if accuracy is None else tuple(np.asarray(a, float) for a in accuracy)}
            check = null_check(claim, treatment, reference, *step0s, paired=paired, alpha=suite.alpha)
            verdicts.append(Verdict(row, claim, t, r, effect, judged, null=check))
    # the family: claims that are neither controls (negative or planted) nor flagged by their null check
    adjust([v.effect for v in verdicts], correction, alpha, [not v.in_family for v in verdicts])
    for v in verdicts:  # after the adjustment (which rewrites the reasons): say what divergence did
        n_t, n_r = sum(v.judged["diverged_t"]), sum(v.judged["diverged_r"]) if v.claim.compare != "bound" else 0
        if (n_t or n_r) and v.effect.verdict != NO_DATA:
            w_t, w_r = v.judged["worst"]
            v.effect.reason += (f"; {n_t + n_r} diverged seed(s) counted as outcomes of their arm at the worst value "
                                f"observed (treatment {w_t:.4g}" + (f", reference {w_r:.4g}" if n_r else "") + ")")
    return verdicts, sides


def _seed_lists(args, suite_seeds: list[int]) -> tuple[list[int] | None, list[int] | None]:
    """(--seeds as given or None, the --seeds auto list: the suite's seeds then the next free integers)."""
    if args.alpha is not None and not 0 < args.alpha < 0.5:
        raise ConfigError(f"--alpha {args.alpha}: the one-sided level per direction, between 0 and 0.5 (e.g. 0.025)")
    if args.stages < 1:
        raise ConfigError(f"--stages {args.stages}: give 1 or more looks (1 = judge once at --max-seeds)")
    if args.seeds == "auto":
        if args.max_seeds is None:
            raise ConfigError("--seeds auto needs --max-seeds N (the most seeds per arm), e.g. --max-seeds 10")
        if args.max_seeds < len(suite_seeds):
            raise ConfigError(f"--max-seeds {args.max_seeds} is below the suite's {len(suite_seeds)} seeds "
                              f"{suite_seeds}; give at least {len(suite_seeds)}")
        extra = [s for s in range(max(suite_seeds) + 1, max(suite_seeds) + 1 + args.max_seeds)]
        return None, (list(suite_seeds) + extra)[:args.max_seeds]
    if args.max_seeds is not None:
        raise ConfigError("--max-seeds goes with --seeds auto")
    if not args.seeds:
        return None, None
    try:
        return [int(s) for s in args.seeds.split(",")], None
    except ValueError:
        raise ConfigError(f"--seeds {args.seeds!r}: give comma-separated integers (--seeds 0,1,2) or "
                          f"`auto` with --max-seeds N") from None


def _refuse_blind(jobs: list[execute.Job], runs: Path, out: Path, what: str) -> None:
    """Judging without a single run would write `no data` everywhere: refuse where a report would be lost."""
    if any(j.folder is not None for j in jobs):
        return
    if what == "--plan":
        raise ConfigError(f"--plan reads the runs already there (a pilot) and found none of this suite under {runs}: "
                          f"run the study first (sparsity-exp study SUITE), or give --out DIR where its runs are")
    if (out / "report.md").exists():
        raise ConfigError(f"--judge-only found no run of this suite under {runs}, so it would overwrite "
                          f"{out / 'report.md'} with `no data`: run the study first, point --out at the study "
                          f"folder that holds the runs, or give --out NEW_DIR to write an empty report elsewhere")


def _dry_run(suite: Suite, args, out: Path, runs: Path, seeds: list[int]) -> int:
    """Each arm's composed config (the keys that differ from a default `sparsity-exp run`), its command and
    each seed's status; nothing is run or written."""
    from omegaconf import OmegaConf

    jobs, dataset = execute.plan_jobs(suite, args.overrides, out, seeds=seeds, link=False)
    execute.locate(jobs, runs)
    default = OmegaConf.to_container(execute.compose([]), resolve=False)

    base = flatten(default)
    print(f"[study] dry run of {suite.name}: {len(jobs)} arm x seed runs under {runs} (nothing is run or written)"
          + ("; --seeds auto: the most there can be, stages add seeds only where a claim is undecided"
             if args.seeds == "auto" else ""))
    if dataset is not None:
        print(f"[study] data: {dataset.name} for the arms marked `data: auto`")
    for overrides, group in execute.pending_groups(jobs, everything=True).items():
        cfg = flatten(OmegaConf.to_container(execute.compose(list(overrides)), resolve=False))
        differ = {k: v for k, v in cfg.items() if base.get(k, "<absent>") != v and k != "seed"}
        names = ", ".join(dict.fromkeys(j.arm.name for j in group))  # arms of one config share their runs
        print(f"\n## arm {names}")
        print("  overrides: " + (" ".join(overrides) or "(none)"))
        print("  composed config, keys that differ from the defaults:")
        for k in sorted(differ):
            print(f"    {k}: {differ[k]}")
        print("  command: sparsity-exp " + " ".join(execute.run_command(group, runs)))
        print("  seeds: " + ", ".join(f"{j.seed} ({j.status})" for j in group))
    return 0


def _plan(suite: Suite, args, jobs: list[execute.Job], runs: Path, out: Path) -> int:
    """Seeds needed per row, from every completed seed there (a pilot), for the procedure that will judge
    (study/procedure.py: the last look's level, the correction, non-inferiority, every step of a window)."""
    execute.locate(jobs, runs)
    _refuse_blind(jobs, runs, out, "--plan")
    found = [j for j in jobs if j.status in ("completed", "failed")]  # seeds that ran (failed: diverged or not)
    verdicts, _ = judge_suite(suite, found or jobs, args.correction, args.alpha)
    auto = args.seeds == "auto"
    rows, how = procedure.plan_rows(verdicts, args.alpha, args.correction, auto, len(suite.seeds),
                                    args.max_seeds, args.stages, args.spending)
    done = sum(j.status == "completed" for j in jobs)
    per_arm = {}
    for j in found:
        per_arm[j.arm.name] = per_arm.get(j.arm.name, 0) + (j.status == "completed")
    print(f"[study] plan for {suite.name} from {done} completed run(s) under {runs}, every seed there "
          f"({', '.join(f'{a} {n}' for a, n in per_arm.items())}); nothing run or written")
    print(how)
    print(plan.plan_table(rows, args.alpha, header="one-sided level per row: its note"))
    return 0


def _sequential(suite: Suite, args, all_seeds: list[int], out: Path, runs: Path, rule: plan.Rule,
                on_start=lambda jobs: None):
    """--seeds auto: stage by stage, only the arms of rows still undecided get the stage's seeds."""
    splan = plan.stage_plan(len(suite.seeds), len(all_seeds), args.stages, args.alpha, args.spending)
    print(f"[study] --seeds auto: stages of {splan.sizes} seeds per arm; {splan.describe()}")
    rows = [row for claim in suite.claims for row, _, _ in claim.comparisons()]
    arms_of = {row: {s.arm for s in claim.sides} for claim in suite.claims for row, _, _ in claim.comparisons()}
    final: dict = {}
    records: dict = {}
    every_job: dict = {}
    looks: list = []  # (look, the whole family's verdicts at it): seeds.csv
    launched, dataset = 0, None
    for k, n in enumerate(splan.sizes):
        active = [r for r in rows if r not in final]
        if not active:
            break
        needed = set().union(*(arms_of[r] for r in active))
        jobs, dataset = execute.plan_jobs(suite, args.overrides, out, arms=needed, seeds=all_seeds[:n],
                                          link=not args.judge_only)
        execute.locate(jobs, runs)
        if k == 0 and args.judge_only:
            _refuse_blind(jobs, runs, out, "--judge-only")
        if k == 0:
            on_start(jobs)  # the lock: written (or compared) before the first run
        print(f"[study] stage {k + 1}/{len(splan.sizes)}: {len(active)} undecided row(s), arms {sorted(needed)}, "
              f"{n} seeds each ({sum(j.status == 'completed' for j in jobs)}/{len(jobs)} already completed)")
        if not args.judge_only:
            started = execute.run_pending(jobs, runs, logfile=out / "runs.log", arm_jobs=args.arm_jobs)
            launched += started
            if started:
                execute.locate(jobs, runs)
        every_job.update({(j.arm.name, j.seed): j for j in jobs})
        # the whole family judged on every run so far (each arm with the seeds it has), at this look's nominal
        # level: the multiplicity correction applies at every look, the spending function across looks
        verdicts, _ = judge_suite(suite, list(every_job.values()), args.correction, alpha=splan.alphas[k])
        looks.append((k + 1, verdicts))
        last = k == len(splan.sizes) - 1
        for v in verdicts:
            if v.row not in active:
                continue
            outcome = v.effect.verdict
            records.setdefault(v.row, []).append((n, outcome))
            if plan.decisive(outcome) or last:
                v.effect.reason = (f"{outcome} at look {k + 1} of {len(splan.sizes)} ({n} seeds per arm, nominal "
                                   f"one-sided level {splan.alphas[k]:.3g} of the {args.spending} spending function, "
                                   f"interval at that level). " + v.effect.reason)
                final[v.row] = (v, k + 1, n)
    verdicts = [final[r][0] for r in rows]
    stages = {r: final[r][1:] for r in rows}
    jobs = list(every_job.values())
    _, sides = judge_suite(suite, jobs, args.correction)
    return verdicts, sides, jobs, launched, dataset, splan, stages, records, looks


def machine_section(the_lock: dict | None, mode: str) -> str:
    """Which machine and mode produced the numbers: the lock's fingerprint and every launch since."""
    lines = ["## Machine and mode", ""]
    if not the_lock:
        return "\n".join(lines + ["No lock: the machine is not recorded.", ""])
    locked = the_lock.get("machine", {})
    lines += [f"Locked on: {machine.describe(locked)} (mode {the_lock.get('mode', 'default')}).", ""]
    launches = the_lock.get("launches", [])
    if the_lock.get("runs_before_lock"):
        lines += [f"{the_lock['runs_before_lock']} run(s) predate the lock: their machine and mode are not "
                  f"recorded.", ""]
    if launches:
        lines += ["| launched | mode | runs | machine differs from the locked one in |", "|---|---|---|---|"]
        for item in launches:
            diff = machine.differences(locked, item.get("machine", {}))
            lines.append(f"| {item['when']} | {item['mode']} | {item['runs']} | {'; '.join(diff) or 'nothing (the same fingerprint)'} |")
        modes = sorted({item["mode"] for item in launches})
        lines += ["", f"The numbers come from runs made in mode(s): {', '.join(modes)}"
                  + (" (mixed: runs of different modes may differ in the last digits, and through training "
                     "by more)" if len(modes) > 1 else "")
                  + ("; reproducible mode pins the kernels so that another machine with the same torch build and "
                     "architecture gives the same numbers (study/machine.py)" if "reproducible" in modes else
                     "; default mode: another machine's CPU kernels may give other numbers (`--reproducible` pins "
                     "them, README)") + f". This invocation's mode: {mode}.", ""]
    else:
        lines += [f"No run was launched under this lock by this version of the study (this invocation's mode: "
                  f"{mode}).", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = _parser().parse_intermixed_args(argv)
    started = time.perf_counter()
    path = suite_path(args.suite, conf_dir())
    suite = load_suite(path)
    fixed, auto = _seed_lists(args, suite.seeds)
    if fixed is not None:
        suite = load_suite(path, fixed)
    if args.alpha is None:
        args.alpha = suite.alpha
    execute.check_user_overrides(args.overrides)
    out = (args.out or Path("study") / suite.name).resolve()
    runs = out / "runs"
    if args.dry_run:
        return _dry_run(suite, args, out, runs, auto or suite.seeds)
    if args.plan:  # every seed the runs folder has, not only the suite's (a study grown by --seeds auto)
        offsets = {a.seed_offset for a in suite.used_arms()}
        present = {s - o for s in execute.seeds_present(runs) for o in offsets if s - o >= 0}
        jobs, _ = execute.plan_jobs(suite, args.overrides, out, seeds=sorted(present | set(auto or suite.seeds)),
                                    link=False)
        return _plan(suite, args, jobs, runs, out)
    rule = VERDICT_RULE
    stages = records = splan = None
    execute.REPRODUCIBLE = bool(args.reproducible)
    mode = "reproducible" if args.reproducible else "default"
    device = next((o.split("=", 1)[1] for o in reversed(args.overrides) if o.startswith("trainer.device=")), "cpu")
    locked: dict = {}

    def on_start(jobs_now):
        """Before the first run: write the lock, or compare with it (refused when changed, unless --amend)."""
        locked["lock"] = lock.check(out, path.read_text(), path, lock.rule_settings(args, auto, suite.seeds),
                                    args.amend, machine=lambda: machine.runs_fingerprint(args.reproducible, device),
                                    mode=mode, runs_before=sum(j.folder is not None for j in jobs_now))

    if auto:
        out.mkdir(parents=True, exist_ok=True)
        verdicts, sides, jobs, launched, dataset, splan, stages, records, looks = _sequential(
            suite, args, auto, out, runs, rule, on_start)
    else:
        jobs, dataset = execute.plan_jobs(suite, args.overrides, out, link=not args.judge_only)
        execute.locate(jobs, runs)
        if args.judge_only:
            _refuse_blind(jobs, runs, out, "--judge-only")
        out.mkdir(parents=True, exist_ok=True)
        on_start(jobs)
        done = sum(j.status == "completed" for j in jobs)
        print(f"[study] {suite.name}: {len(suite.claims)} claims, {len({tuple(j.overrides) for j in jobs})} distinct "
              f"arms, {len(jobs)} arm x seed runs ({done} already completed) under {runs}")
        launched = 0
        if not args.judge_only:
            launched = execute.run_pending(jobs, runs, logfile=out / "runs.log", arm_jobs=args.arm_jobs)
            if launched:
                execute.locate(jobs, runs)
        verdicts, sides = judge_suite(suite, jobs, args.correction, args.alpha)
        looks = [(1, verdicts)]
    the_lock = locked.get("lock")
    if launched:
        lock.record_launch(out, the_lock, mode, machine.runs_fingerprint(args.reproducible, device), launched)
    missing = [f"{j.arm.name} seed {j.seed} ({j.status})" for j in jobs if j.status != "completed"]
    if missing:
        print(f"[study] {len(missing)} run(s) not completed, judged without them: " + "; ".join(missing[:8]))
    for claim in suite.claims:  # each panel shows the seeds its verdict used (a stage's, under --seeds auto)
        claim_plot(claim, sides[claim.id], out / f"claim_{claim.id}.png", [v for v in verdicts if v.claim is claim])
    cals = calibrate.calibrate(verdicts, suite, rule, args.alpha, planted_k=args.planted, splan=splan)
    family = calibrate.family_calibration(verdicts, args.correction, args.alpha, splan=splan)
    calibrate.annotate(verdicts, cals)
    opening, calibration = calibrate.calibration_section(cals, args.alpha, family)
    seeds_md, columns = plan.seeds_section(verdicts, splan, stages, records)
    wall = time.perf_counter() - started
    data = (f"{dataset.name} (chosen from {[d.name for d in suite.datasets]}; arms marked `data: auto`)"
            if dataset else "as each arm's overrides say")
    info = {"data": data, "correction": args.correction, "alpha": args.alpha,
            "runs": f"{launched} run(s) launched this time, {len(jobs) - len(missing)} of "
                    f"{len(jobs)} completed; this invocation took {wall:.0f} s wall.",
            "opening": opening, "sections": [seeds_md, calibration, divergence.section(jobs, seed_status),
                                             machine_section(the_lock, mode),
                                             lock.amendments_section(the_lock)],
            "columns": columns, "header": lock.header_lines(the_lock),
            "amended": lock.amended_rows(the_lock, verdicts)}
    report = write_report(out, suite, verdicts, sides, info)
    seedscsv.write(out, looks, args.correction)  # every number behind the verdicts, full precision
    print(verdict_table(verdicts, info["amended"]))
    print(seeds_md)
    print(calibration)
    failures = control_failures(verdicts)
    if failures:
        print(f"[study] WARNING: control {'; '.join(failures)}: see {report}")
    for line in calibrate.failures(cals, family):
        print(f"[study] WARNING: calibration: {line}")
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
