"""The verdict statistics of `sparsity-exp study` (sparsity_exp/study/stats.py): interval coverage by
simulation, TOST and the margin tests against hand computation, Holm and Benjamini-Hochberg against a
hand-ordered example, each outcome from a constructed input, zero variance, failed seeds, paired vs
Welch as documented, bound windows, and the suite's checks (metric names, exploratory claims)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from sparsity_exp.errors import ConfigError
from sparsity_exp.study import stats
from sparsity_exp.study.suite import load_suite

ALPHA = stats.ALPHA
Q = lambda df: sps.t.ppf(1 - ALPHA, df)  # noqa: E731


# ------------------------------------------------------------------------------ coverage by simulation

def _coverage(draws: int, n: int, paired: bool, unit: str, mu_t: float, mu_r: float, sd_t: float, sd_r: float,
              rho: float = 0.0, seed: int = 0):
    """Share of ``draws`` synthetic studies (n seeds per arm, normal per-seed values; paired: correlated
    rho within a seed) whose interval for theta holds the true theta, and the share of unbounded sets."""
    rng = np.random.default_rng(seed)
    z1, z2 = rng.standard_normal((2, draws, n))
    r = mu_r + sd_r * z1
    t = mu_t + sd_t * (rho * z1 + math.sqrt(1 - rho ** 2) * z2)
    u = stats.Unit.of(unit, "increase", mu_r)
    true = (mu_t - mu_r) / {"difference": 1.0, "relative": abs(mu_r), "nonzero_relative": 1 - mu_r}[unit]
    _, lo, hi, bounded = stats.fieller(t, r, u, paired)
    covered = (lo <= true) & (true <= hi)
    return covered.mean(), 1 - bounded.mean()


CASES = [  # (n, paired, unit, mu_t, mu_r, sd_t, sd_r, rho)
    (3, True, "difference", 0.86, 0.85, 0.01, 0.01, 0.9),
    (3, False, "difference", 0.86, 0.85, 0.02, 0.005, 0.0),   # Welch with unequal variances
    (3, True, "relative", 40.0, 130.0, 4.0, 5.0, 0.5),        # claim 2's scale: AS_K/coef_L0, step 0 -> end
    (3, False, "relative", 0.86, 0.85, 0.02, 0.01, 0.0),
    (3, True, "nonzero_relative", 0.95, 0.85, 0.02, 0.005, 0.7),
    (3, False, "nonzero_relative", 0.95, 0.85, 0.02, 0.005, 0.0),
    (5, False, "relative", 0.5, 0.4, 0.05, 0.05, 0.0),
]


@pytest.mark.parametrize("n, paired, unit, mu_t, mu_r, sd_t, sd_r, rho", CASES)
def test_interval_coverage_is_nominal(n, paired, unit, mu_t, mu_r, sd_t, sd_r, rho):
    """Within 2 points of 95% over 40,000 draws (Monte Carlo SE 0.11 points); the old percentile
    bootstrap over 3 seeds covered 75-81%."""
    cov, unbounded = _coverage(40_000, n, paired, unit, mu_t, mu_r, sd_t, sd_r, rho)
    assert abs(cov - (1 - 2 * ALPHA)) < 0.02, (cov, unbounded)
    assert unbounded < 0.01


@pytest.mark.slow
@pytest.mark.parametrize("n", [3, 4, 6, 10])
@pytest.mark.parametrize("paired", [True, False])
@pytest.mark.parametrize("unit, mu_r, sd_r", [("relative", 1.0, 0.1), ("relative", 1.0, 0.25),
                                                ("nonzero_relative", 0.8, 0.02)])
def test_interval_coverage_sweep(n, paired, unit, mu_r, sd_r):
    """A wider sweep (noisier references, more seeds); unbounded sets count as covering (they hold every
    theta outside a bounded gap, and the verdict never decides on them), so coverage may only exceed."""
    cov, unbounded = _coverage(200_000, n, paired, unit, mu_r * 1.1, mu_r, sd_r, sd_r, 0.5 if paired else 0.0)
    cov_bounded_or_not = cov + unbounded
    assert cov_bounded_or_not > (1 - 2 * ALPHA) - 0.02
    assert cov < (1 - 2 * ALPHA) + 0.02


def test_a_ratio_to_a_reference_near_zero_is_unbounded_not_a_ci():
    """Fieller's set is unbounded when the reference mean cannot be told from 0: labelled, never a CI,
    and never a definitive verdict (claim 8's activation sparsity of ~3e-7)."""
    t, r = [0.47, 0.46, 0.48], [1.6e-7, 4.8e-7, -1.0e-7]
    e = stats.judge(t, r, "arms", "increase", 0.1, "relative", paired=True)
    assert e.rel_ci.kind == "unbounded" and e.aligned_ci.kind == "unbounded"
    assert e.verdict == stats.INCONCLUSIVE and "cannot be told apart from 0" in e.reason
    e = stats.judge(t, r, "arms", "increase", 0.1, "difference", paired=True)  # the difference is fine
    assert e.diff_ci.kind == "CI" and e.verdict == stats.SUPPORTED


def test_fieller_endpoints_invert_the_margin_tests():
    """At each end of the paired interval the one-sided margin test sits exactly at alpha."""
    t, r = np.array([38.3, 32.9, 39.4]), np.array([127.1, 136.4, 130.3])
    u = stats.Unit.of("relative", "decrease", r.mean())
    theta, lo, hi, bounded = (float(np.asarray(v)) for v in stats.fieller(t, r, u, paired=True))
    assert bounded and lo < theta < hi
    assert float(u.margin_p(t, r, lo, True, greater=True)) == pytest.approx(ALPHA, abs=1e-9)
    assert float(u.margin_p(t, r, hi, True, greater=False)) == pytest.approx(ALPHA, abs=1e-9)


@pytest.mark.parametrize("unit", ["difference", "relative", "nonzero_relative"])
@pytest.mark.parametrize("paired", [True, False])
def test_interval_and_margin_tests_agree(unit, paired):
    """The verdict is read from the interval or from the p-values: the same answer on 20,000 draws (for
    Welch each end uses the df of its own contrast, so it holds there too)."""
    rng = np.random.default_rng(5)
    t = 0.86 + 0.02 * rng.standard_normal((20_000, 3))
    r = 0.85 + 0.01 * rng.standard_normal((20_000, 3))
    u = stats.Unit.of(unit, "increase", 0.85)
    _, lo, hi, _ = stats.fieller(t, r, u, paired)
    for delta in (0.0, 0.01, 0.05):
        assert np.mean((lo > delta) != (u.margin_p(t, r, delta, paired) < ALPHA)) == 0
        assert np.mean((hi < -delta) != (u.margin_p(t, r, -delta, paired, greater=False) < ALPHA)) == 0


def test_difference_interval_is_the_t_interval():
    t, r = [2.0, 4.0, 6.0], [1.0, 2.0, 3.0]
    e = stats.judge(t, r, "arms", "increase", 0.0, paired=False)
    assert tuple(e.diff_ci) == pytest.approx(stats.welch_interval(t, r))
    e = stats.judge(t, r, "arms", "increase", 0.0, paired=True)
    assert tuple(e.diff_ci) == pytest.approx(stats.t_interval(np.subtract(t, r)))


# ------------------------------------------------------------------------------ TOST and margin tests by hand

def test_tost_paired_by_hand():
    d = np.array([0.004, -0.006, 0.002, 0.001])  # per-seed differences; SESOI 0.02
    m, se, df = d.mean(), d.std(ddof=1) / 2.0, 3
    p_lower = 1 - sps.t.cdf((m + 0.02) / se, df)  # H0: theta <= -0.02
    p_upper = sps.t.cdf((m - 0.02) / se, df)      # H0: theta >= +0.02
    e = stats.judge(0.5 + d, np.full(4, 0.5), "step0", "increase", 0.02)
    assert e.p_tost == pytest.approx(max(p_lower, p_upper), rel=1e-9)
    assert e.p_sup == pytest.approx(1 - sps.t.cdf((m - 0.02) / se, df), rel=1e-9)
    assert e.p_con == pytest.approx(sps.t.cdf((m + 0.02) / se, df), rel=1e-9)
    assert e.verdict == stats.NO_EFFECT  # the 95% CI lies within +-0.02


def test_tost_welch_by_hand():
    t, r = np.array([0.8467, 0.8477, 0.8488]), np.array([0.8453, 0.8480, 0.8531])  # 7.zeroth_bias, study/cpu
    vt, vr = t.var(ddof=1) / 3, r.var(ddof=1) / 3
    se = math.sqrt(vt + vr)
    df = (vt + vr) ** 2 / (vt ** 2 / 2 + vr ** 2 / 2)
    diff, delta = t.mean() - r.mean(), 0.01
    p = max(1 - sps.t.cdf((diff + delta) / se, df), sps.t.cdf((diff - delta) / se, df))
    e = stats.judge(t, r, "arms", "increase", delta, "difference", paired=False)
    assert e.p_tost == pytest.approx(p, rel=1e-9)
    assert e.verdict == (stats.NO_EFFECT if p < ALPHA else stats.INCONCLUSIVE)


def test_relative_margin_test_is_the_t_test_of_the_linear_contrast():
    """theta > 5% relative <=> mean_t - 1.05 mean_r > 0: Welch's t on (t, 1.05 r)."""
    t, r = np.array([1.2, 1.3, 1.25]), np.array([1.0, 1.05, 0.98])
    e = stats.judge(t, r, "arms", "increase", 0.05, "relative", paired=False)
    expected = sps.ttest_ind(t, 1.05 * r, equal_var=False, alternative="greater").pvalue
    assert e.p_sup == pytest.approx(expected, rel=1e-9)
    e = stats.judge(t, r, "arms", "increase", 0.05, "relative", paired=True)
    assert e.p_sup == pytest.approx(sps.ttest_1samp(t - 1.05 * r, 0, alternative="greater").pvalue, rel=1e-9)


# ------------------------------------------------------------------------------ each outcome from a constructed input

REF = np.array([0.60, 0.61, 0.59, 0.605, 0.595])


@pytest.mark.parametrize("shift, direction, expected", [
    (0.10, "increase", stats.SUPPORTED),        # CI ~ [0.09, 0.11], SESOI 0.02
    (0.00, "increase", stats.NO_EFFECT),        # CI within +-0.02
    (-0.10, "increase", stats.CONTRADICTED),
    (-0.10, "decrease", stats.SUPPORTED),
    (0.021, "increase", stats.INCONCLUSIVE),    # real but its CI reaches below the SESOI
])
def test_each_outcome(shift, direction, expected):
    noise = np.array([0.002, -0.001, 0.0, 0.001, -0.002])
    e = stats.judge(REF + shift + noise, REF, "arms", direction, 0.02, paired=True)
    assert e.verdict == expected, e.reason


def test_no_data_below_three_seeds_and_failed_seeds_counted():
    e = stats.judge([0.7, np.nan, 0.71], [0.6, 0.61, 0.59], "arms", "increase", 0.02, paired=True)
    assert e.verdict == stats.NO_DATA and e.n_failed_treatment == 1 and "too few seeds" in e.reason
    e = stats.judge([0.7, np.nan, 0.71, 0.72], [0.6, 0.61, 0.59, 0.6], "arms", "increase", 0.02, paired=True)
    assert e.verdict == stats.SUPPORTED and e.n_treatment == 3 and e.n_failed_treatment == 1  # the pair dropped


def test_zero_variance_is_said_not_supported():
    e = stats.judge([0.8, 0.8, 0.8], [0.6, 0.6, 0.6], "arms", "increase", 0.1, "nonzero_relative")
    assert e.zero_variance and e.verdict == stats.INCONCLUSIVE and "zero variance" in e.reason
    assert math.isnan(e.p_sup) and e.aligned_ci.kind == "zero variance"
    e = stats.judge([0.9, 0.8, 0.7], [0.7, 0.6, 0.5], "arms", "increase", 0.01, paired=True)  # equal differences
    assert e.zero_variance and e.verdict == stats.INCONCLUSIVE


def test_a_sparser_claim_without_accuracy_non_inferiority_is_not_supported():
    ref = np.array([0.85, 0.848, 0.853])
    treat = ref + np.array([0.10, 0.098, 0.101])
    good = (np.array([0.815, 0.816, 0.817]), np.array([0.816, 0.815, 0.818]))
    bad = (np.array([0.70, 0.75, 0.80]), np.array([0.816, 0.815, 0.818]))   # much noisier, lower accuracy
    e = stats.judge(treat, ref, "arms", "increase", 0.1, "nonzero_relative", paired=True, accuracy=good, ni_margin=0.01)
    assert e.verdict == stats.SUPPORTED and e.noninferiority.outcome == "non-inferior"
    e = stats.judge(treat, ref, "arms", "increase", 0.1, "nonzero_relative", paired=True, accuracy=bad, ni_margin=0.01)
    assert e.verdict == stats.INCONCLUSIVE and "non-inferiority" in e.reason
    assert e.p_sup < ALPHA <= e.p_sup_joint  # the intersection-union p is the larger of the two


# ------------------------------------------------------------------------------ paired vs Welch

def test_paired_and_welch_p_values_are_scipys():
    t, r = np.array([0.86, 0.87, 0.88]), np.array([0.85, 0.853, 0.869])
    paired = stats.judge(t, r, "arms", "increase", 0.0, paired=True)
    welch = stats.judge(t, r, "arms", "increase", 0.0, paired=False)
    assert paired.test_name == "paired t" and welch.test_name == "Welch t"
    assert paired.p_sup == pytest.approx(sps.ttest_rel(t, r, alternative="greater").pvalue, rel=1e-9)
    assert welch.p_sup == pytest.approx(sps.ttest_ind(t, r, equal_var=False, alternative="greater").pvalue, rel=1e-9)


SUITE = """
seeds: [0, 1, 2]
arms:
  a: {overrides: [model.width=16]}
  b: {base: a, overrides: [model.depth=2]}
  a_reseeded: {base: a, seed_offset: 100}
claims:
  - {id: shared, paper_claim: 7, statement: b sparser, why: w, compare: arms, arms: [a, b],
     metric: {probe: sparsity, metric: activation_sparsity}, direction: increase, sesoi: 0.02}
  - {id: shared_welch, paper_claim: null, statement: b sparser (Welch), why: w, compare: arms, arms: [a, b], test: welch,
     metric: {probe: sparsity, metric: activation_sparsity}, direction: increase, sesoi: 0.02}
  - {id: control, paper_claim: null, control: true, statement: nothing, why: w, compare: arms, arms: [a, a_reseeded],
     metric: {probe: sparsity, metric: activation_sparsity}, direction: increase, sesoi: 0.01}
  - {id: stays, paper_claim: 4, statement: ratio80 stays below 100, why: w, compare: bound, bound: 100, arms: [a],
     window: {every_from_step: 200}, metric: {probe: spectrum, metric: ratio80, split: train}, direction: decrease}
"""


def _suite(tmp_path, text=SUITE):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return load_suite(path)


def test_paired_where_arms_share_seeds_welch_otherwise(tmp_path):
    suite = _suite(tmp_path)
    claims = {c.id: c for c in suite.claims}
    pair = lambda c: c.paired(c.sides[1], c.sides[0], suite.arms)  # noqa: E731
    assert pair(claims["shared"]) is True
    assert pair(claims["shared_welch"]) is False
    assert pair(claims["control"]) is False  # seed_offset 100: other seeds, nothing to pair
    assert claims["shared_welch"].exploratory and not claims["control"].exploratory
    assert claims["stays"].window.from_step == 200 and claims["stays"].sesoi == 0
    with pytest.raises(ConfigError, match="share seeds"):
        _suite(tmp_path, SUITE.replace("arms: [a, a_reseeded],", "arms: [a, a_reseeded], test: paired,"))


# ------------------------------------------------------------------------------ suite checks

def test_metric_names_are_checked_against_the_probe_registry(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'activation_sparsity'"):
        _suite(tmp_path, SUITE.replace("metric: activation_sparsity}, direction: increase, sesoi: 0.02}\n  - {id: shared_w",
                                       "metric: activation_sparsty}, direction: increase, sesoi: 0.02}\n  - {id: shared_w"))
    with pytest.raises(ConfigError, match="did you mean 'sparsity'"):
        _suite(tmp_path, SUITE.replace("{probe: sparsity, metric: activation_sparsity}, direction: increase, sesoi: 0.01",
                                       "{probe: sparsty, metric: activation_sparsity}, direction: increase, sesoi: 0.01"))
    with pytest.raises(ConfigError, match="ratio80"):
        _suite(tmp_path, SUITE.replace("metric: ratio80", "metric: ratio_80"))


def test_a_bound_claim_takes_no_sesoi_on_top(tmp_path):
    with pytest.raises(ConfigError, match="margin is its bound"):
        _suite(tmp_path, SUITE.replace("direction: decrease}", "direction: decrease, sesoi: 5}"))
    with pytest.raises(ConfigError, match="every_from_step is for bound claims"):
        _suite(tmp_path, SUITE.replace("test: welch,", "test: welch, window: {every_from_step: 1},"))


# ------------------------------------------------------------------------------ bound windows

def test_bound_window_is_intersection_union():
    rng = np.random.default_rng(0)
    below = 7 + rng.normal(0, 0.1, (3, 5))  # ratio80 ~ 7 at every step, bound 100
    e = stats.judge(below, [100.0] * 3, "bound", "decrease", 0.0, steps=[200, 400, 600, 800, 1000])
    assert e.verdict == stats.SUPPORTED and e.window_steps == [200, 400, 600, 800, 1000]
    spiky = below.copy()
    spiky[:, 2] = [99.0, 101.0, 100.5]  # one step straddles the bound: "stays below" not shown
    e = stats.judge(spiky, [100.0] * 3, "bound", "decrease", 0.0, steps=[200, 400, 600, 800, 1000])
    assert e.verdict == stats.INCONCLUSIVE and e.worst_step == 600
    over = below.copy()
    over[:, 3] = [150.0, 151.0, 149.0]  # clearly above at one step: contradicted (Bonferroni over 5 steps)
    e = stats.judge(over, [100.0] * 3, "bound", "decrease", 0.0, steps=[200, 400, 600, 800, 1000])
    assert e.verdict == stats.CONTRADICTED


def test_bound_window_false_positive_rate_at_the_bound():
    """Every step's true mean exactly at the bound: P(supported) <= alpha (intersection-union needs no
    correction), over 20,000 simulated 3-seed, 4-step windows."""
    rng = np.random.default_rng(3)
    draws, n, k = 20_000, 3, 4
    x = 100 + rng.standard_normal((draws, n, k))
    u = stats.Unit(-1.0, 0.0, 1.0)
    p = np.stack([u.margin_p(x[:, :, j], np.full((draws, n), 100.0), 0.0, True) for j in range(k)], 1)
    rate = np.mean(p.max(1) < ALPHA)
    assert rate <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / draws)


def test_nonzero_fraction_interval_only_for_fractions_and_ordered():
    e = stats.judge([7.0, 7.1, 6.9], [100.0] * 3, "bound", "decrease", 0.0)  # ratio80 vs 100: no non-zero fraction
    assert math.isnan(e.nonzero_rel) and e.nonzero_rel_ci.kind == "n/a"
    e = stats.judge([0.95, 0.94, 0.96], [0.85, 0.849, 0.853], "arms", "increase", 0.1, "nonzero_relative", paired=True)
    assert e.nonzero_rel_ci.low <= e.nonzero_rel <= e.nonzero_rel_ci.high < 0


# ------------------------------------------------------------------------------ multiplicity

P = [0.01, 0.04, 0.03, 0.005]


def test_holm_by_hand():
    # ordered: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> running max 0.06
    assert stats.adjust_p(P, "holm") == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_bh_by_hand():
    # ordered: 0.005 x 4/1 = 0.02, 0.01 x 4/2 = 0.02, 0.03 x 4/3 = 0.04, 0.04 x 4/4 = 0.04 -> running min from the top
    assert stats.adjust_p(P, "bh") == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert stats.adjust_p(P, "none") == pytest.approx(P)


def test_adjustment_decides_the_verdicts_and_skips_controls():
    """Three claims supported at their own level; after Holm over the family of three only the strongest
    stays supported; the control (raw p below alpha, supported) is neither adjusted nor counted."""
    ref = np.array([0.60, 0.61, 0.59, 0.605])
    noise = np.array([0.004, -0.004, 0.0, 0.001])
    strong = stats.judge(ref + 0.2 + noise / 4, ref, "arms", "increase", 0.02, paired=True)
    weak1 = stats.judge(ref + 0.026 + noise, ref, "arms", "increase", 0.02, paired=True)
    weak2 = stats.judge(ref + 0.0265 + noise, ref, "arms", "increase", 0.02, paired=True)
    control = stats.judge(ref + 0.2 + noise, ref, "arms", "increase", 0.02, paired=True)
    effects = [strong, weak1, weak2, control]
    assert all(e.verdict == stats.SUPPORTED for e in effects)
    assert 3 * weak1.p_sup > ALPHA and 2 * weak2.p_sup > ALPHA  # so Holm must stop them
    stats.adjust(effects, "holm", controls=[False, False, False, True])
    assert [e.verdict for e in effects] == [stats.SUPPORTED, stats.INCONCLUSIVE, stats.INCONCLUSIVE, stats.SUPPORTED]
    assert "holm adjustment over 3 claims" in weak1.reason
    assert control.correction == "none" and strong.family_size == 3
    assert strong.p_sup_adj == pytest.approx(min(1.0, 3 * strong.p_sup))


def test_rule_names_alpha_and_correction():
    text = stats.rule_text(0.025, "bh")
    assert "alpha = 0.025" in text and "95%" in text and "Benjamini-Hochberg" in text
    for outcome in stats.OUTCOMES:
        assert outcome in text


# ------------------------------------------------------------------------------ report: controls, rule, forest scale

def _verdict(effect, control=False, paper_claim=7, sesoi=0.02, compare="arms", bound=None):
    from sparsity_exp.study.report import ArmNumbers, Verdict
    from sparsity_exp.study.suite import Claim, Metric, Side, Window

    metric = Metric("sparsity", "activation_sparsity")
    claim = Claim("c", paper_claim, "s", compare, [Side("a", metric)], metric, Window(), "increase", sesoi,
                  control=control, bound=bound)
    return Verdict("c", claim, ArmNumbers("a", "a", [0, 1, 2], [], [], []), None, effect)


@pytest.mark.parametrize("verdict, fails", [(stats.INCONCLUSIVE, True), (stats.NO_EFFECT, False),
                                            (stats.SUPPORTED, True), (stats.CONTRADICTED, True),
                                            (stats.NO_DATA, True)])
def test_negative_control_passes_only_as_no_effect_of_interest(verdict, fails):
    """Equivalence at the SESOI, not just 'not decided': an inconclusive control has not ruled out a bias of the
    claims' size (issue 24)."""
    from sparsity_exp.study.report import control_failures

    e = stats.judge(REF + 0.1, REF, "arms", "increase", 0.02, paired=True)
    e.verdict = verdict
    failures = control_failures([_verdict(e, control=True)])
    assert bool(failures) == fails
    if verdict == stats.NO_DATA:
        assert "unchecked" in failures[0]  # a control that was not run is a failure to report, not a pass


def test_forest_plot_is_in_sesoi_units(tmp_path):
    from sparsity_exp.study.report import forest_plot, forest_scale

    e = stats.judge(REF + 0.1, REF, "arms", "increase", 0.02, paired=True)
    v = _verdict(e)
    assert forest_scale(v) == (0.02, "SESOI")  # theta 0.1 is drawn at 5 SESOI
    tiny = stats.judge([0.47, 0.46, 0.48], [1.6e-7, 4.8e-7, 1.0e-7], "arms", "increase", 0.1, paired=True)
    assert forest_scale(_verdict(tiny, sesoi=0.1))[0] == 0.1  # not /|reference| = 1e-7 (the old 1.8e6)
    forest_plot([v, _verdict(tiny, sesoi=0.1, paper_claim=None)], tmp_path / "forest.png")
    assert (tmp_path / "forest.png").stat().st_size > 0


def test_study_takes_a_correction_flag():
    from sparsity_exp.study.main import _parser

    assert _parser().parse_args(["cpu"]).correction == "holm"
    assert _parser().parse_args(["cpu", "--correction", "bh"]).correction == "bh"
    with pytest.raises(SystemExit):
        _parser().parse_args(["cpu", "--correction", "bonferroni"])


@pytest.mark.parametrize("unit, paired", [("difference", True), ("difference", False), ("relative", True),
                                          ("nonzero_relative", False)])
def test_an_effect_exactly_at_the_sesoi_is_supported_at_most_alpha_of_the_time(unit, paired):
    """The old rule (CI excludes 0, point estimate beyond the SESOI) said `supported` 9-24% of the time
    for a true effect exactly at the SESOI; the margin test says it at most alpha of the time."""
    rng = np.random.default_rng(11)
    draws, n, delta, mu_r = 40_000, 3, 0.05, 0.85
    mu_t = mu_r + delta * {"difference": 1.0, "relative": mu_r, "nonzero_relative": 1 - mu_r}[unit]
    z1, z2 = rng.standard_normal((2, draws, n))
    r = mu_r + 0.01 * z1
    t = mu_t + 0.01 * (0.6 * z1 + 0.8 * z2) if paired else mu_t + 0.01 * z2
    u = stats.Unit.of(unit, "increase", mu_r)
    rate = np.mean(u.margin_p(t, r, delta, paired) < ALPHA)
    assert rate <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / draws)
    assert rate > ALPHA / 2  # and not far below it (the test is not vacuous)
