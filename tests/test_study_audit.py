"""A study a reviewer can audit (issue 24): the pre-registration lock and its amendments, per-row interval
levels, the machine fingerprint and reproducible mode, divergence as an outcome, seeds.csv from which the
verdicts recompute, and --plan for the procedure that judges."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

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
    # the SESOI of claim `flat` changes after its result was seen: refused, with what changed and how to proceed
    suite.write_text(SUITE.replace("id: flat, paper_claim: 6, statement: flat is sparser, compare: arms, arms: "
                                   "[ref, flat],\n     metric: {probe: sparsity, metric: activation_sparsity, split: "
                                   "test}, direction: increase, sesoi: 0.02",
                                   "id: flat, paper_claim: 6, statement: flat is sparser, compare: arms, arms: "
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
                                         (0.00376, "99.25%"), (4.3e-5, "99.991%")])
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
    assert "| 99.25% |" in first and "| 95.76% |" in second and "100%" not in table
    assert early.reason.startswith("the 99.25% CI") or "99.25%" in early.reason
