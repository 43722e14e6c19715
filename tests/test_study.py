"""`sparsity-exp study`: statistics against hand-computed cases, verdicts on synthetic studies with a
planted effect, and a rerun of a finished study that runs nothing."""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sparsity_exp.errors import ConfigError
from sparsity_exp.study import execute, stats
from sparsity_exp.study.main import judge_suite
from sparsity_exp.study.report import write_report
from sparsity_exp.study.suite import load_suite

T975_DF2 = 4.302652729911275  # Student t, 97.5% quantile, 2 degrees of freedom (printed tables: 4.303)


# ------------------------------------------------------------------------------ statistics by hand

def test_t_interval_matches_the_formula():
    lo, hi = stats.t_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, sem 1/sqrt(3)
    half = T975_DF2 / math.sqrt(3)
    assert lo == pytest.approx(2 - half, abs=1e-9) and hi == pytest.approx(2 + half, abs=1e-9)
    assert stats.t_interval([5.0, 5.0, 5.0]) == (5.0, 5.0)  # no spread: a zero-width interval


def test_welch_interval_matches_welch_satterthwaite():
    t, r = [2.0, 4.0, 6.0], [1.0, 2.0, 3.0]  # variances 4 and 1, n = 3 each
    se2 = 4 / 3 + 1 / 3
    df = se2 ** 2 / ((4 / 3) ** 2 / 2 + (1 / 3) ** 2 / 2)  # = 50/17
    assert df == pytest.approx(50 / 17)
    from scipy.stats import t as student

    half = student.ppf(0.975, df) * math.sqrt(se2)
    lo, hi = stats.welch_interval(t, r)
    assert (lo, hi) == (pytest.approx(2 - half), pytest.approx(2 + half))


def _enumerated_p(t, r, direction):
    """Share of all splits of the pooled values into groups of len(t), len(r) whose mean difference is
    at least as extreme (in the predicted direction) as the observed one."""
    pooled = list(t) + list(r)
    observed = np.mean(t) - np.mean(r)
    hits = total = 0
    for idx in itertools.combinations(range(len(pooled)), len(t)):
        a = [pooled[i] for i in idx]
        b = [pooled[i] for i in range(len(pooled)) if i not in idx]
        d = np.mean(a) - np.mean(b)
        hits += d >= observed - 1e-12 if direction == "increase" else d <= observed + 1e-12
        total += 1
    return hits / total


@pytest.mark.parametrize("t, r", [([3.0, 4.0, 5.0], [0.0, 1.0, 2.0]), ([2.0, 4.0, 5.0], [0.0, 1.0, 3.0]),
                                  ([1.0, 0.5, 2.0], [1.5, 0.2, 1.1])])
@pytest.mark.parametrize("direction", ["increase", "decrease"])
def test_permutation_p_matches_enumeration(t, r, direction):
    assert stats.permutation_p(t, r, direction) == pytest.approx(_enumerated_p(t, r, direction))
    assert _enumerated_p([3.0, 4.0, 5.0], [0.0, 1.0, 2.0], "increase") == pytest.approx(1 / 20)


def test_paired_permutation_p_is_the_sign_flip_test():
    d = np.array([1.0, 2.0, -0.5])
    flips = [np.mean(d * s) for s in itertools.product([1, -1], repeat=3)]
    expected = np.mean([f >= d.mean() - 1e-12 for f in flips])  # 2 of 8
    assert expected == pytest.approx(2 / 8)
    assert stats.permutation_p(d, np.zeros(3), "increase", paired=True) == pytest.approx(expected)


def test_nonzero_relative_change_is_the_papers_unit():
    e = stats.judge([0.80, 0.81, 0.79], [0.60, 0.61, 0.59], "arms", "increase", 0.1, "nonzero_relative")
    assert e.nonzero_rel == pytest.approx(0.2 / 0.4 - 1)  # non-zeros 0.4 -> 0.2: -50%
    assert e.aligned == pytest.approx(0.5)  # theta: fewer non-zeros is the predicted direction
    assert e.verdict == stats.SUPPORTED


# ------------------------------------------------------------------------------ verdict rules
# (each outcome from a constructed input, the intervals and p-values: tests/test_study_stats.py)

@pytest.mark.parametrize("p_sup, p_con, p_tost, expected", [
    (0.01, 0.99, 0.99, stats.SUPPORTED),
    (0.99, 0.01, 0.99, stats.CONTRADICTED),
    (0.6, 0.6, 0.01, stats.NO_EFFECT),
    (0.2, 0.9, 0.8, stats.INCONCLUSIVE),
    (0.025, 0.99, 0.99, stats.INCONCLUSIVE),  # alpha itself is not below alpha
])
def test_outcome_rules(p_sup, p_con, p_tost, expected):
    assert stats.outcome(p_sup, p_con, p_tost) == expected


# ------------------------------------------------------------------------------ synthetic studies

SUITE = """
seeds: [0, 1, 2, 3, 4]
arms:
  ref: {overrides: [model.width=16]}
  ref_reseeded: {base: ref, seed_offset: 100}
  treat: {overrides: [model.width=32]}
claims:
  - {id: effect, paper_claim: 7, statement: treat is sparser, why: w, compare: arms, arms: [ref, treat],
     metric: {probe: sparsity, metric: activation_sparsity, split: test}, direction: increase, sesoi: 0.02}
  - {id: emerge, paper_claim: 3, statement: sparsity rises, why: w, compare: step0, arms: [ref],
     metric: {probe: sparsity, metric: activation_sparsity, split: test}, window: {mean_last: 2},
     direction: increase, sesoi: 0.02}
  - {id: bounded, paper_claim: 4, statement: ratio stays below 100, why: w, compare: bound, bound: 100, arms: [ref],
     window: {every_from_step: 100}, metric: {probe: spectrum, metric: ratio80, split: train}, direction: decrease}
  - {id: control, paper_claim: null, control: true, statement: nothing, why: w, compare: arms, arms: [ref, ref_reseeded],
     metric: {probe: sparsity, metric: activation_sparsity, split: test}, direction: increase, sesoi: 0.01}
"""


def _fake_run(folder: Path, start: float, end: float, ratio: float, noise: np.random.Generator) -> Path:
    """A completed run folder whose test sparsity goes start -> end over 5 evaluations."""
    folder.mkdir(parents=True)
    rows = []
    for i, step in enumerate(range(0, 500, 100)):
        value = start + (end - start) * i / 4 + (noise.normal(0, 0.005) if i else 0.0)
        for layer in ("0", "avg"):
            rows.append((step, 0.0, "test", "sparsity", "activation_sparsity", layer, value))
            rows.append((step, 0.0, "test", "eval", "accuracy", layer, 0.9))
            rows.append((step, 0.0, "train", "spectrum", "ratio80", layer, ratio + noise.normal(0, 1)))
    pd.DataFrame(rows, columns=["step", "epoch", "split", "probe", "metric", "layer", "value"]).to_csv(
        folder / "metrics.csv", index=False)
    (folder / "summary.json").write_text(json.dumps({"status": "completed"}))
    return folder


def synthetic_jobs(tmp_path, planted: float, ratio: float = 20.0, diverge=(), crash=()):
    """The synthetic suite (SUITE: 5 seeds, treat sparser by ``planted``) as finished jobs, where the
    (arm, seed) runs in ``diverge`` ended with a non-finite loss and those in ``crash`` failed for
    another reason (what run.py writes in each case)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "synthetic.yaml"
    path.write_text(SUITE)
    suite = load_suite(path)
    noise = np.random.default_rng(1)
    jobs = []
    for arm in suite.used_arms():
        for seed in suite.seeds:
            end = 0.6 + (planted if arm.name == "treat" else 0.0)
            folder = _fake_run(tmp_path / "runs" / f"{arm.name}_{seed}", 0.5, end, ratio, noise)
            status = "completed"
            for which, error in ((diverge, "NonFiniteLoss: loss is nan at step 826"), (crash, "RuntimeError: killed")):
                if (arm.name, seed) in which:
                    (folder / "summary.json").write_text(json.dumps({"status": "failed", "error": error}))
                    status = "failed"
            jobs.append(execute.Job(arm, seed + arm.seed_offset, arm.overrides, folder, status))
    return suite, jobs


def _synthetic(tmp_path, planted: float, ratio: float = 20.0, diverge: tuple | None = None):
    suite, jobs = synthetic_jobs(tmp_path, planted, ratio, diverge={diverge} if diverge else ())
    verdicts, sides = judge_suite(suite, jobs)
    return suite, {v.row: v for v in verdicts}, sides


@pytest.mark.parametrize("planted, expected", [(0.1, "supported"), (-0.1, "contradicted"),
                                               (0.0, "no effect of interest")])
def test_planted_effect_is_found(tmp_path, planted, expected):
    _, verdicts, _ = _synthetic(tmp_path, planted)
    assert verdicts["effect"].effect.verdict == expected
    assert verdicts["effect"].effect.diff == pytest.approx(planted, abs=0.02)
    assert verdicts["effect"].effect.test_name == "paired t"  # ref and treat share seeds
    control = verdicts["control"].effect
    assert control.test_name == "Welch t" and control.verdict in ("inconclusive", "no effect of interest")
    assert not np.array_equal(control.treatment, control.reference)  # distinct runs, not an arm with itself
    assert verdicts["control"].treatment.seeds == [100, 101, 102, 103, 104]  # distinct runs of one config
    # the same runs: sparsity rose 0.5 -> ~0.6 (step0, paired) and ratio80 ~20 < 100 (bound)
    assert verdicts["emerge"].effect.verdict == "supported"
    assert verdicts["emerge"].effect.diff == pytest.approx(0.1 * (1 + 0.75) / 2, abs=0.01)  # mean of the last 2
    assert verdicts["bounded"].effect.verdict == "supported"
    assert verdicts["bounded"].effect.window_steps == [100, 200, 300, 400]  # every step of the window judged


def test_a_diverged_seed_is_reported_not_dropped(tmp_path):
    """A treatment seed that diverged: its row says so, and the seed is counted (issue 24: at the worst
    value observed in the comparison, not left out as if missing)."""
    suite, verdicts, _ = _synthetic(tmp_path, 0.1, diverge=("treat", 2))
    v = verdicts["effect"]
    assert v.effect.n_treatment == 5 and v.effect.n_failed_treatment == 0
    assert v.treatment.failures() == "seed 2 diverged"
    from sparsity_exp.study.report import verdict_table

    row = next(line for line in verdict_table(list(verdicts.values())).splitlines() if line.startswith("| effect "))
    assert "5 / 5 (seed 2 diverged)" in row and "diverged seed(s) counted" in v.effect.reason


def test_bound_exceeded_is_contradicted(tmp_path):
    _, verdicts, _ = _synthetic(tmp_path, 0.0, ratio=300.0)
    assert verdicts["bounded"].effect.verdict == "contradicted"


def test_report_files(tmp_path):
    suite, verdicts, sides = _synthetic(tmp_path, 0.1)
    out = tmp_path / "study"
    report = write_report(out, suite, list(verdicts.values()), sides, {"data": "synthetic"})
    text = report.read_text()
    assert text.index("| claim |") < text.index("## effect")  # the verdict table comes before the claims
    assert text.index("alpha = 0.025") < text.index("| claim |")  # the rule and its alpha at the top
    # `bounded` (ratio80 ~20 against the cap 100) already holds at step 0: it cannot fail and leaves the family
    assert "Holm's step-down over the family of 2 claim row(s)" in text
    assert "left out as they cannot fail as stated (null check): bounded" in text
    assert "| control | control |" in text and "exploratory" not in text.split("| claim |")[1].split("\n")[2]
    assert "](forest.png)" in text and "/" not in text.split("](forest.png)")[0].split("(")[-1]
    table = pd.read_csv(out / "verdicts.csv")
    assert list(table.claim) == ["effect", "emerge", "bounded", "control"]
    assert table.set_index("claim").loc["effect", "verdict"] == "supported"
    assert (out / "forest.png").stat().st_size > 0


def test_suite_errors(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(SUITE.replace("control: true, ", ""))
    with pytest.raises(ConfigError, match="negative-control"):
        load_suite(path)
    path.write_text(SUITE.replace("direction: decrease", "direction: down"))
    with pytest.raises(ConfigError, match="direction"):
        load_suite(path)


def test_shipped_suites_load():
    from sparsity_exp.config import conf_dir

    paths = sorted((conf_dir() / "study").glob("*.yaml"))  # every shipped suite, a new one included
    assert {p.stem for p in paths} >= {"cpu", "gpu", "paper", "gated"}
    for path in paths:
        suite = load_suite(path)
        assert len(suite.seeds) >= 3
        assert any(c.control for c in suite.claims)


# ------------------------------------------------------------------------------ running

TINY_SUITE = """
seeds: [0, 1]
arms:
  base: {overrides: [trainer.steps=2, trainer.log_every=1, trainer.eval_every=1, model.width=8, model.depth=1,
                     probes=cheap, trainer.checkpoint_every=0]}
claims:
  - {id: emerge, paper_claim: 3, statement: sparsity rises, why: w, compare: step0, arms: [base],
     metric: {probe: sparsity, metric: activation_sparsity, split: test}, direction: increase, sesoi: 0}
  - {id: control, paper_claim: 0, control: true, statement: nothing, why: w, compare: arms, arms: [base, base],
     metric: {probe: sparsity, metric: activation_sparsity, split: test}, direction: increase, sesoi: 0.01}
"""


def test_rerunning_a_finished_study_runs_nothing(tmp_path, monkeypatch, capsys):
    """The study in-process (the runs themselves go through `sparsity-exp run -m` in a subprocess)."""
    from sparsity_exp.study.main import cli as study

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(TINY_SUITE)
    launches = []
    real = execute.run_pending
    monkeypatch.setattr(execute, "run_pending", lambda jobs, *a, **k: launches.append(
        [j.seed for j in jobs if j.status != "completed"]) or real(jobs, *a, **k))
    assert study(["tiny.yaml"]) == 0
    assert "2 run(s) launched" in capsys.readouterr().out and launches == [[0, 1]]
    runs = sorted(p.parent for p in (tmp_path / "study" / "tiny" / "runs").rglob("summary.json"))
    assert len(runs) == 2
    assert study(["tiny.yaml"]) == 0
    out = capsys.readouterr().out
    assert "0 run(s) launched" in out and "2 already completed" in out and launches[1] == []
    assert sorted(p.parent for p in (tmp_path / "study" / "tiny" / "runs").rglob("summary.json")) == runs
    assert (tmp_path / "study" / "tiny" / "report.md").is_file()


@pytest.mark.slow
def test_arms_launch_in_one_process_and_a_failing_arm_stops_none(tmp_path):
    """run_pending runs every arm's `run -m` in one process (study/launch.py), one after the other: a
    launch whose jobs fail (bad input: the sweep exits 1) is logged with its code, the next arm still runs, each job
    in its own folder."""
    from sparsity_exp.study.suite import Arm

    tiny = ["trainer.steps=2", "trainer.log_every=1", "trainer.eval_every=1", "model.width=8", "model.depth=1",
            "probes=none", "trainer.checkpoint_every=0"]
    arms = {"bad": Arm("bad", [*tiny, "model.depth=-1"]), "good": Arm("good", tiny)}
    jobs = [execute.Job(arm, seed, arm.overrides) for arm in arms.values() for seed in (0, 1)]
    runs, logged = tmp_path / "runs", []
    assert execute.run_pending(jobs, runs, log=logged.append, logfile=tmp_path / "runs.log") == 4
    exits = {line.split()[2].rstrip(":"): line.split()[4] for line in logged if line.startswith("[study]   arm")}
    assert exits == {"bad": "1", "good": "0"}, logged
    log = (tmp_path / "runs.log").read_text()
    assert log.count("$ run -m") == 2 and "LAUNCHED good exit 0" in log
    execute.locate(jobs, runs)
    assert [j.status for j in jobs] == ["missing", "missing", "completed", "completed"]
    assert len({j.folder for j in jobs[2:]}) == 2


def test_study_refuses_the_keys_it_sets(tmp_path, monkeypatch, capsys):
    from sparsity_exp.study.main import cli as study

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(TINY_SUITE)
    assert study(["tiny.yaml", "seed=3"]) == 2
    assert "error: seed= is set by the study" in capsys.readouterr().err


def test_debian_fashion_mnist_folder_is_linked(tmp_path):
    deb = tmp_path / "fashion-mnist"
    deb.mkdir()
    for name in execute._FASHION_FILES:
        (deb / f"{name}.gz").write_bytes(b"x")
    root = execute.find_fashion_mnist(deb, tmp_path / "stage")
    assert root == tmp_path / "stage"
    assert (root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte.gz").resolve() == \
        (deb / "train-images-idx3-ubyte.gz").resolve()
    assert execute.find_fashion_mnist(tmp_path / "nothing", tmp_path / "stage2") is None


def test_a_claim_without_runs_is_no_data_not_a_verdict():
    """Too few seeds with a value (runs missing or failed) is said as such, never as `inconclusive`."""
    e = stats.judge([0.5], [0.4, 0.41, 0.42], "arms", "increase", 0.01)
    assert e.verdict == stats.NO_DATA and "too few seeds" in e.reason
    e = stats.judge([], [], "step0", "increase", 0.01)
    assert e.verdict == stats.NO_DATA


def test_planning_the_same_stage_twice_keeps_the_chosen_dataset(tmp_path):
    """--seeds auto plans jobs once per look: a `data: auto` arm must get the dataset overrides every time
    (an arm that forgot them after the first look would silently train later seeds on the fallback data)."""
    root = tmp_path / "fmnist"
    root.mkdir()
    for name in execute._FASHION_FILES:  # the Debian layout: the IDX files themselves under data.root
        (root / f"{name}.gz").write_bytes(b"")
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text("""
seeds: [0, 1, 2]
datasets:
  - {name: fashion_mnist, needs: fashion_mnist, overrides: [data=fashion_mnist]}
  - {name: digits, overrides: [data=digits]}
arms:
  ref: {data: auto, overrides: [model.width=16]}
  other: {data: auto, overrides: [model.width=32]}
  ref_reseeded: {base: ref, seed_offset: 100}
claims:
  - {id: effect, paper_claim: null, statement: s, why: w, compare: arms, arms: [ref, other],
     metric: {probe: sparsity, metric: activation_sparsity, split: test}, direction: increase, sesoi: 0.02}
  - {id: control, paper_claim: null, control: true, statement: c, why: w, compare: arms, arms: [ref, ref_reseeded],
     metric: {probe: sparsity, metric: activation_sparsity, split: test}, direction: increase, sesoi: 0.02}
""")
    suite = load_suite(suite_file)
    first, ds = execute.plan_jobs(suite, [f"data.root={root}"], tmp_path / "out")
    again, _ = execute.plan_jobs(suite, [f"data.root={root}"], tmp_path / "out", seeds=[0, 1, 2, 3])
    assert ds.name == "fashion_mnist"
    assert all("data=fashion_mnist" in j.overrides for j in first + again)
    assert [j.overrides for j in again[:3]] == [j.overrides for j in first[:3]]
    assert suite.arms["ref"].data == "auto" and suite.arms["ref"].dataset == "fashion_mnist"
