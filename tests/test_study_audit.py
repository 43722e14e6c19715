"""A study a reviewer can audit (issue 24): the pre-registration lock and its amendments, per-row interval
levels, the machine fingerprint and reproducible mode, divergence as an outcome, seeds.csv from which the
verdicts recompute, and --plan for the procedure that judges."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from sparsity_exp.study import lock, machine, plan, stats
from tests.test_study_plan import SUITE, _fake_execution


@pytest.fixture(autouse=True)
def _fast_calibration(monkeypatch):
    """The command's calibration with 100 simulated draws instead of 2000 (its own tests use the full count)."""
    from sparsity_exp.study import calibrate

    full = calibrate.calibrate
    monkeypatch.setattr(calibrate, "calibrate", lambda *a, **k: full(*a, **{**k, "n_sim": 100}))


def _run(cli_args, capsys):
    from sparsity_exp.study.main import cli

    code = cli(cli_args)
    return code, capsys.readouterr()


# ------------------------------------------------------------------------------ pre-registration lock

def test_a_changed_suite_is_refused_without_amend_and_recorded_with_it(tmp_path, monkeypatch, capsys):
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    _fake_execution(monkeypatch, tmp_path, [])
    out = tmp_path / "study"
    code, _ = _run([str(suite), "--out", str(out)], capsys)
    assert code == 0
    locked = json.loads((out / "lock.json").read_text())
    assert locked["suite_text"] == SUITE and locked["suite_sha256"] == lock.sha256(SUITE)
    assert locked["rule"] == {"alpha": 0.025, "correction": "holm", "seeds": [0, 1, 2], "max_seeds": None,
                              "stages": None, "spending": None}
    assert locked["runs_before_lock"] == 0 and locked["package"]["version"]
    assert locked["machine"]["torch"] and locked["machine"]["cpu_capability"]
    assert locked["lock_hash"] == lock.lock_hash(locked)
    report = (out / "report.md").read_text()
    assert f"Pre-registration lock `{locked['lock_hash'][:16]}`" in report and "before any run" in report
    # the machine and mode that produced the numbers
    assert locked["mode"] == "default" and locked["launches"][0]["mode"] == "default"
    assert locked["launches"][0]["runs"] == 15 and "## Machine and mode" in report
    assert "The numbers come from runs made in mode(s): default" in report
    assert f"CPU capability {locked['machine']['cpu_capability']}" in report
    # the SESOI of claim `flat` changes after its result was seen: refused, with what changed and how to proceed
    suite.write_text(SUITE.replace("id: flat, paper_claim: 6, statement: flat is sparser, why: w, compare: arms, arms: "
                                   "[ref, flat],\n     metric: {probe: sparsity, metric: activation_sparsity, split: "
                                   "test}, direction: increase, sesoi: 0.02",
                                   "id: flat, paper_claim: 6, statement: flat is sparser, why: w, compare: arms, arms: "
                                   "[ref, flat],\n     metric: {probe: sparsity, metric: activation_sparsity, split: "
                                   "test}, direction: increase, sesoi: 0.03"))
    assert suite.read_text() != SUITE
    code, printed = _run([str(suite), "--out", str(out)], capsys)
    first = printed.err.splitlines()[0]
    assert code == 2 and first.startswith("error: this study was locked") and "claims touched: flat" in first
    assert "--amend" in first
    assert json.loads((out / "lock.json").read_text())["amendments"] == []
    # a changed rule is refused the same way
    code, printed = _run([str(suite), "--out", str(out), "--correction", "bh"], capsys)
    assert code == 2 and "correction 'holm' -> 'bh'" in printed.err.splitlines()[0]
    # with --amend: accepted, recorded, listed, and the verdict it touched is marked
    code, _ = _run([str(suite), "--out", str(out), "--amend", "SESOI of flat from the paper's figure"], capsys)
    assert code == 0
    locked = json.loads((out / "lock.json").read_text())
    (amendment,) = locked["amendments"]
    assert amendment["why"] == "SESOI of flat from the paper's figure" and amendment["claims"] == ["flat"]
    assert amendment["suite_text_before"] == SUITE and locked["current"]["suite_sha256"] == lock.sha256(suite.read_text())
    assert locked["lock_hash"] == lock.lock_hash(locked)  # the original lock's hash is kept
    report = (out / "report.md").read_text()
    assert "## Amendments" in report and "SESOI of flat from the paper's figure" in report
    assert "amendments since: 1" in report
    rows = [line for line in report.splitlines() if line.startswith("| flat | 6 |")]
    assert len(rows) == 1 and "after amendment 1" in rows[0]
    assert not any("after amendment" in line for line in report.splitlines() if line.startswith("| big |"))
    table = pd.read_csv(out / "verdicts.csv", keep_default_na=False).set_index("claim")
    assert str(table.loc["flat", "amendments"]) == "1" and table.loc["big", "amendments"] == ""
    # the amended suite is now the one in force: no refusal, and --amend with nothing changed is refused
    rule = locked["current"]["rule"]
    assert lock.check(out, suite.read_text(), suite, rule, None, machine=dict, mode="default", runs_before=0) == locked
    code, printed = _run([str(suite), "--out", str(out), "--amend", "again"], capsys)
    assert code == 2 and "nothing to amend" in printed.err.splitlines()[0]


def test_changed_claims_follow_arms_and_suite_wide_keys():
    base = SUITE
    assert lock.changed_claims(base, base) == []
    # an arm's overrides change: every claim on it (ref is the reference of all four)
    assert set(lock.changed_claims(base, base.replace("model.width=32", "model.width=48"))) == {"big"}
    assert set(lock.changed_claims(base, base.replace("ref: {overrides: [model.width=16]}",
                                                      "ref: {overrides: [model.width=17]}"))) == {
        "big", "flat", "control", "placebo"}
    assert lock.changed_claims(base, base.replace("seeds: [0, 1, 2]", "seeds: [0, 1, 2, 3]")) == [lock.EVERY_CLAIM]
    assert lock.changed_claims(base, base + "\n# a comment\n") == []


# ------------------------------------------------------------------------------ per-row interval levels

@pytest.mark.parametrize("alpha, text", [(0.025, "95%"), (0.05, "90%"), (0.0038, "99.24%"), (4.5e-5, "99.991%"),
                                         (0.00376, "99.25%"), (4.3e-5, "99.9914%")])
def test_level_text_never_rounds_to_100(alpha, text):
    assert stats.level_text(alpha) == text


def test_level_text_for_every_small_alpha_is_below_100():
    for alpha in np.logspace(-9, np.log10(0.4), 200):
        text = stats.level_text(float(alpha))
        assert text != "100%" and float(text.rstrip("%")) < 100
        assert float(text.rstrip("%")) == pytest.approx(100 * (1 - 2 * alpha), rel=0, abs=0.1 * 200 * alpha)


def test_each_row_carries_its_own_interval_level():
    """Rows stopped at different looks: each row is labelled with its own level, which is the level its
    interval really has (scipy's t interval at 1 - 2 alpha), and the header claims no single level."""
    from sparsity_exp.study.report import verdict_table
    from tests.test_study_stats import REF, _verdict

    rng = np.random.default_rng(3)
    t = REF + 0.05 + 0.01 * rng.standard_normal(len(REF))
    early = stats.judge(t, REF, "arms", "increase", 0.0, paired=True, alpha=0.00376)
    late = stats.judge(t, REF, "arms", "increase", 0.0, paired=True, alpha=0.0212)
    for e, a in ((early, 0.00376), (late, 0.0212)):
        ci = sps.ttest_1samp(t - REF, 0.0).confidence_interval(1 - 2 * a)
        assert (e.diff_ci.low, e.diff_ci.high) == pytest.approx((ci.low, ci.high), rel=1e-9)
    table = verdict_table([_verdict(early, compare="step0"), _verdict(late, compare="step0")])
    head, _, first, second = table.splitlines()
    assert "95%" not in head and "| level |" in head
    assert "| 99.25% |" in first and "| 95.8% |" in second and "100%" not in table
    assert early.reason.startswith("the 99.25% CI") or "99.25%" in early.reason


# ------------------------------------------------------------------------------ divergence as an outcome

def _jobs_with(tmp_path, planted: float, diverge=(), crash=(), ratio: float = 20.0):
    """tests/test_study.py's synthetic suite as finished jobs, some diverged or crashed."""
    from tests.test_study import synthetic_jobs

    return synthetic_jobs(tmp_path, planted, ratio, diverge=diverge, crash=crash)


def test_a_diverged_seed_counts_at_the_worst_value_and_a_crashed_one_is_missing(tmp_path):
    from sparsity_exp.study import divergence
    from sparsity_exp.study.main import judge_suite, seed_status

    suite, jobs = _jobs_with(tmp_path, 0.04, diverge={("treat", 2), ("ref", 4)})
    verdicts = {v.row: v for v in judge_suite(suite, jobs)[0]}
    v = verdicts["effect"]
    t_raw, r_raw = np.array(v.treatment.values), np.array(v.reference.values)
    assert np.isnan(t_raw[2]) and np.isnan(r_raw[4])  # no value of their own
    worst_t, worst_r = np.nanmin(np.r_[t_raw, r_raw]), np.nanmax(np.r_[t_raw, r_raw])  # direction: increase
    want_t, want_r = t_raw.copy(), r_raw.copy()
    want_t[2], want_r[4] = worst_t, worst_r
    assert v.effect.n_treatment == 5 and v.effect.n_failed_treatment == 0 and v.effect.n_failed_reference == 0
    np.testing.assert_array_equal(v.judged["treatment"], want_t)
    np.testing.assert_array_equal(v.judged["reference"], want_r)
    by_hand = stats.judge(want_t, want_r, "arms", "increase", 0.02, paired=True, permutation=False)
    assert v.effect.p_sup == pytest.approx(by_hand.p_sup, rel=1e-12)
    dropped = stats.judge(t_raw, r_raw, "arms", "increase", 0.02, paired=True, permutation=False)
    assert v.effect.p_sup > dropped.p_sup  # the diverging arm cannot look better than its survivors
    assert "2 diverged seed(s) counted as outcomes of their arm" in v.effect.reason
    # the emergence claim on ref (step 0 of the same runs): ref's diverged seed 4 at the worst of both sides
    emerge = verdicts["emerge"]
    assert emerge.effect.n_treatment == 5 and emerge.judged["diverged_t"] == [False] * 4 + [True]
    # the bound claim on ref (ratio80 below 100, a decrease): seed 4 at the largest value seen in the window
    bounded = verdicts["bounded"]
    table = bounded.judged["treatment"]
    assert table.shape == (5, 4) and np.all(table[4] == np.nanmax(table[:4]))
    section = divergence.section(jobs, seed_status)
    assert "| treat | 1 | 5 | 0.20 |" in section and "| ref | 1 | 5 | 0.20 |" in section
    # a crash is not an outcome of the arm: missing, left out, said as such
    suite, jobs = _jobs_with(tmp_path / "crash", 0.04, crash={("treat", 2)})
    v = {v.row: v for v in judge_suite(suite, jobs)[0]}["effect"]
    assert v.effect.n_treatment == 4 and v.effect.n_failed_treatment == 1 and "diverged seed" not in v.effect.reason
    assert divergence.worst_values("decrease", [1.0, 3.0], [2.0]) == (3.0, 1.0)


# ------------------------------------------------------------------------------ seeds.csv

AUDIT_SUITE = SUITE.replace("""  - {id: big, paper_claim: 7, statement: big is sparser, why: w, compare: arms, arms: [ref, big],
     metric: {probe: sparsity, metric: activation_sparsity, split: test}, direction: increase, sesoi: 0.02}""",
                            """  - {id: big, paper_claim: 7, statement: big is sparser, why: w, compare: arms, arms: [ref, big],
     metric: {probe: sparsity, metric: activation_sparsity, split: test}, direction: increase, sesoi: 0.02,
     noninferiority: {margin: 0.01}}
  - {id: emerge, paper_claim: 3, statement: sparsity rises, why: w, compare: step0, arms: [ref], window: {mean_last: 2},
     metric: {probe: sparsity, metric: activation_sparsity, split: test}, direction: increase, sesoi: 0.02}
  - {id: bounded, paper_claim: 4, statement: stays below 0.95, why: w, compare: bound, bound: 0.95, arms: [flat],
     window: {every_from_step: 0}, metric: {probe: sparsity, metric: activation_sparsity, split: test},
     direction: decrease}""")


def recompute(seeds: pd.DataFrame) -> dict:
    """look -> row -> stats.Effect, from seeds.csv alone: each row's per-seed values (the mean over its
    window's steps; a bound window seed by step), judged with stats.judge, then the look's family adjusted."""
    out = {}
    for look, family in seeds.groupby("look"):
        effects, controls = {}, []
        for row, g in family.groupby("claim", sort=False):
            first = g.iloc[0]
            kind, paired = first["kind"], bool(first["paired"])
            values = g[g.role == "value"]

            def side(name):
                h = values[values.side == name]
                if kind == "bound":
                    return h.pivot(index="seed", columns="step", values="value").sort_index(axis=1)
                return h.groupby("seed", sort=False)["value"].mean()

            t = side("treatment")
            steps = None
            if kind == "arms":
                r = side("reference").to_numpy()
            elif kind == "step0":
                r = g[g.role == "step0"].groupby("seed", sort=False)["value"].first().to_numpy()
            else:
                steps, r = list(t.columns), np.full(len(t), first["bound"])
            accuracy, margin = None, None
            if not pd.isna(first["ni_margin"]):
                acc = g[g.role == "accuracy"]
                accuracy = tuple(acc[acc.side == s].groupby("seed", sort=False)["value"].first().to_numpy()
                                 for s in ("treatment", "reference"))
                margin = float(first["ni_margin"])
            effects[row] = stats.judge(t.to_numpy(), r, kind, first["direction"], float(first["sesoi"]),
                                       first["sesoi_unit"], paired=paired, alpha=float(first["alpha"]),
                                       accuracy=accuracy, ni_margin=margin, steps=steps, permutation=False)
            controls.append(bool(first["control"]))
        stats.adjust(list(effects.values()), family["correction"].iloc[0], float(family["alpha"].iloc[0]), controls)
        out[look] = effects
    return out


def test_the_verdicts_recompute_from_seeds_csv_alone(tmp_path, monkeypatch, capsys):
    suite = tmp_path / "suite.yaml"
    suite.write_text(AUDIT_SUITE)
    _fake_execution(monkeypatch, tmp_path, [])
    out = tmp_path / "study"
    code, _ = _run([str(suite), "--seeds", "auto", "--max-seeds", "6", "--stages", "2", "--out", str(out)], capsys)
    assert code == 0
    seeds = pd.read_csv(out / "seeds.csv")
    verdicts = pd.read_csv(out / "verdicts.csv").set_index("claim")
    assert set(seeds.look) == {1, 2} and {"value", "step0", "accuracy"} <= set(seeds.role)
    assert set(seeds[seeds.claim == "bounded"].step) == {0, 100}  # every step of a bound window, not the weakest
    redone = recompute(seeds)
    assert set(verdicts.stage) == {1, 2}  # rows stopped at both looks
    for row, v in verdicts.iterrows():
        e = redone[int(v["stage"])][row]
        assert e.verdict == v["verdict"], row
        for mine, theirs in (("p_sup_adj", "p_sup_adjusted"), ("p_con_adj", "p_con_adjusted"), ("aligned", "theta"),
                             ("p_sup_joint", "p_sup_joint")):
            if not (math.isnan(getattr(e, mine)) and math.isnan(v[theirs])):
                assert getattr(e, mine) == pytest.approx(v[theirs], rel=1e-9, abs=1e-300), (row, mine)
        assert (e.alpha, len(e.treatment)) == (pytest.approx(v["stage_alpha"]), v["n_treatment"])
    # full precision: a value read back is the float the run wrote
    raw = pd.read_csv(next((tmp_path / "fake").glob("big_0")) / "metrics.csv")
    want = raw[(raw.step == 100) & (raw.layer.astype(str) == "avg") & (raw.probe == "sparsity")]["value"].iloc[0]
    got = seeds[(seeds.claim == "big") & (seeds.arm == "big") & (seeds.seed == 0) & (seeds.role == "value")]
    assert got["value"].iloc[0] == want


# ------------------------------------------------------------------------------ --plan for the procedure

PLAN_SUITE = """
seeds: [0, 1, 2]
arms:
  ref: {overrides: [model.width=16]}
  ref_reseeded: {base: ref, seed_offset: 100}
  mod: {overrides: [model.width=24]}
claims:
  - {id: mod, paper_claim: 7, statement: mod is sparser at equal accuracy, why: w, compare: arms, arms: [ref, mod],
     metric: {probe: sparsity, metric: activation_sparsity, split: test}, direction: increase, sesoi: 0.02,
     noninferiority: {margin: 0.01}}
  - {id: bounded, paper_claim: 4, statement: stays below 0.62, why: w, compare: bound, bound: 0.62, arms: [ref],
     window: {every_from_step: 50}, metric: {probe: sparsity, metric: activation_sparsity, split: test},
     direction: decrease}
  - {id: control, paper_claim: null, control: true, statement: nothing, why: w, compare: arms, arms: [ref, ref_reseeded],
     metric: {probe: sparsity, metric: activation_sparsity, split: test}, direction: increase, sesoi: 0.01}
"""


def _plan_run(folder, arm: str, seed: int):
    """Sparsity 0.5 at step 0, ~0.55 at 50, ~0.6 at 100 (mod: +0.03 at the end); accuracy ~0.8 (mod 0.004 lower)."""
    rng = np.random.default_rng([seed, sum(map(ord, arm))])
    shift = 0.03 if arm == "mod" else 0.0
    values = {0: 0.5, 50: 0.55 + shift / 2 + rng.normal(0, 0.01), 100: 0.6 + shift + rng.normal(0, 0.01)}
    acc = 0.8 - (0.004 if arm == "mod" else 0.0) + rng.normal(0, 0.003)
    rows = [(step, 0.0, "test", "sparsity", "activation_sparsity", "avg", v) for step, v in values.items()]
    rows += [(step, 0.0, "test", "eval", "accuracy", "avg", acc) for step in values]
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["step", "epoch", "split", "probe", "metric", "layer", "value"]).to_csv(
        folder / "metrics.csv", index=False)
    (folder / "summary.json").write_text(json.dumps({"status": "completed"}))
    return folder


def test_plan_reads_every_seed_and_plans_for_the_procedure(tmp_path, monkeypatch, capsys):
    """Ten seeds are there (the suite says three): --plan uses all ten, at the level the procedure judges at
    (alpha or the last look's, / the family's size for Holm), with claim `mod`'s accuracy non-inferiority and
    every step of `bounded`'s window: checked against statsmodels' power of the t test, combined by hand."""
    statsmodels = pytest.importorskip("statsmodels.stats.power")
    from sparsity_exp.study import execute

    suite = tmp_path / "suite.yaml"
    suite.write_text(PLAN_SUITE)
    written = {}
    for arm, offset in (("ref", 0), ("mod", 0), ("ref_reseeded", 100)):
        for seed in range(10):
            written[(arm, seed + offset)] = _plan_run(tmp_path / "fake" / f"{arm}_{seed + offset}", arm, seed + offset)

    def locate(jobs, runs):
        for j in jobs:
            j.folder = written.get((j.arm.name, j.seed))
            j.status = "completed" if j.folder else "missing"

    monkeypatch.setattr(execute, "locate", locate)
    monkeypatch.setattr(execute, "seeds_present", lambda runs: {s for _, s in written})
    monkeypatch.setattr(execute, "plan_jobs", lambda suite, user, out, arms=None, seeds=None, link=True: (
        [execute.Job(a, s + a.seed_offset, a.overrides) for a in suite.used_arms()
         for s in (seeds or suite.seeds)], None))

    def read(arm, seed, metric, step):
        t = pd.read_csv(written[(arm, seed)] / "metrics.csv")
        return float(t[(t.metric == metric) & (t.step == step)].value.iloc[0])

    seeds = range(10)
    d = np.array([read("mod", s, "activation_sparsity", 100) - read("ref", s, "activation_sparsity", 100) for s in seeds])
    acc = np.array([read("mod", s, "accuracy", 100) - read("ref", s, "accuracy", 100) for s in seeds])
    steps = np.array([[read("ref", s, "activation_sparsity", k) for k in (50, 100)] for s in seeds])
    power = statsmodels.TTestPower()

    def smallest(f):
        return next(n for n in range(3, 5000) if f(n) >= 0.8)

    for extra, level in (([], 0.025 / 2), (["--seeds", "auto", "--max-seeds", "10"],
                                            plan.stage_plan(3, 10, 3, 0.025).alphas[-1] / 2)):
        code, printed = _run([str(suite), "--plan", "--out", str(tmp_path / "study"), *extra], capsys)
        assert code == 0, printed.err
        out = printed.out
        assert "ref 10" in out and "mod 10" in out and "ref_reseeded 10" in out
        row = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:]] for line in out.splitlines()
               if line.startswith("| ") and not line.startswith("| claim")}
        assert row["mod"][1] == "10" and row["bounded"][1] == "10" and row["control"][1] == "10"
        assert f"level {level:.3g}" in row["mod"][-1] and f"level {0.025 if not extra else level * 2:.3g}" in row["control"][-1]
        m, sd, sd_acc = 0.02, d.std(ddof=1), acc.std(ddof=1)
        both = lambda n, a, b: power.power(a, n, level, alternative="larger") + power.power(b, n, level, alternative="larger") - 1  # noqa: E731
        want = smallest(lambda n: both(n, (2 * m - m) / sd, 0.01 / sd_acc))
        want_pilot = smallest(lambda n: both(n, (d.mean() - m) / sd, (acc.mean() + 0.01) / sd_acc))
        without_ni = smallest(lambda n: power.power((d.mean() - m) / sd, n, level, alternative="larger"))
        assert int(row["mod"][6]) == want and int(row["mod"][7]) == want_pilot and want_pilot > without_ni
        effects, sds = 0.62 - steps.mean(axis=0), steps.std(axis=0, ddof=1)
        want_bound = smallest(lambda n: sum(power.power(e / s, n, level, alternative="larger")
                                            for e, s in zip(effects, sds)) - 1)
        assert int(row["bounded"][7]) == want_bound
        weakest = smallest(lambda n: power.power(effects.min() / sds[np.argmin(effects)], n, level, alternative="larger"))
        assert want_bound >= weakest


def test_seeds_present_reads_the_run_configs(tmp_path):
    from sparsity_exp.study import execute

    for name, seed in (("a", 0), ("b", 7), ("c", 107)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(f"seed: {seed}\nmodel: {{width: 8}}\n")
    assert execute.seeds_present(tmp_path) == {0, 7, 107}


# ------------------------------------------------------------------------------ machine fingerprint, reproducible mode

def test_reproducible_mode_pins_the_runs_kernels():
    """The runs' processes (study/launch.py, and this fingerprint's child) get the pinned environment before
    torch is imported: ATen's portable kernels, one thread, deterministic algorithms, MKL's CNR mode."""
    from sparsity_exp.study import execute

    import torch

    here = machine.fingerprint()
    assert here["cpu_capability"] == str(torch.backends.cpu.get_cpu_capability()) and here["torch"] == torch.__version__
    pinned = machine.runs_fingerprint(True)
    assert pinned["cpu_capability"] == "DEFAULT" and pinned["threads"] == 1 and pinned["deterministic"]
    assert pinned["env"]["MKL_CBWR"] == "COMPATIBLE" and "(disabled)" in pinned["onednn"]
    assert "cpu_capability" in " ".join(machine.differences(here, pinned)) or here["cpu_capability"] == "DEFAULT"
    try:
        execute.REPRODUCIBLE = True
        env = execute._child_env()
        assert env["ATEN_CPU_CAPABILITY"] == "default" and env[machine.REPRODUCIBLE_FLAG] == "1"
        execute.REPRODUCIBLE = False
        assert machine.REPRODUCIBLE_FLAG not in execute._child_env()
    finally:
        execute.REPRODUCIBLE = False
