"""The sequential rule's error rate for t statistics (issue 24): a row judged at looks of 3/6/10 or
3/4/5 seeds, and a family of 11 rows with Holm at every look, must not call a true null `supported`
more often than alpha plus its Monte-Carlo error. Simulated with numpy, vectorised over 200,000
studies (the t tests by hand, scipy's t law for the p-values; nothing from study/stats.py), at the
levels plan.stage_plan gives; the textbook z levels the rule used before run over alpha here, so the
test can fail."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from sparsity_exp.study import plan

ALPHA = 0.025
STUDIES = 200_000


def _one_sample_p(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """One-sided p of 'mean > 0' and 'mean < 0' over the first n values of the last axis."""
    head = x[..., :n]
    t = head.mean(-1) / (head.std(-1, ddof=1) / math.sqrt(n))
    return sps.t.sf(t, n - 1), sps.t.cdf(t, n - 1)


def _holm(p: np.ndarray) -> np.ndarray:
    """Holm's adjusted p-values along the last axis (by hand: sorted, (m - j) p_(j), running max)."""
    m = p.shape[-1]
    order = np.argsort(p, axis=-1)
    ranked = np.take_along_axis(p, order, -1) * (m - np.arange(m))
    ranked = np.minimum(np.maximum.accumulate(ranked, axis=-1), 1.0)
    out = np.empty_like(p)
    np.put_along_axis(out, order, ranked, -1)
    return out


def sequential_false_supported(levels: list[float], sizes: list[int], rows: int = 1, shared: bool = False,
                               studies: int = STUDIES, seed: int = 0, chunk: int = 50_000) -> float:
    """Share of null studies in which some row ends `supported`: each row is the paired t of its per-seed
    differences (true mean 0, SESOI 0), judged at every look over the seeds so far at that look's level,
    Holm over the rows at every look (rows that stopped keep their p-values and their place in the
    family); a row stops at its first decisive outcome (`supported` or `contradicted`). ``shared``: the
    rows' differences share one reference arm (t_i - r per seed: correlated rows, as claims on one arm)."""
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, studies, chunk):
        n_here = min(chunk, studies - start)
        draws = rng.standard_normal((n_here, rows + (1 if shared else 0), sizes[-1]))
        x = draws[:, 1:] - draws[:, :1] if shared else draws
        outcome = np.zeros((n_here, rows), dtype=np.int8)  # 0 undecided, 1 supported, -1 contradicted
        p_sup = np.ones((n_here, rows))
        p_con = np.ones((n_here, rows))
        for n, level in zip(sizes, levels):
            active = outcome == 0
            new_sup, new_con = _one_sample_p(x, n)
            p_sup = np.where(active, new_sup, p_sup)
            p_con = np.where(active, new_con, p_con)
            adj_sup, adj_con = (_holm(p_sup), _holm(p_con)) if rows > 1 else (p_sup, p_con)
            outcome = np.where(active & (adj_sup < level), 1, outcome)
            outcome = np.where(active & (outcome == 0) & (adj_con < level), -1, outcome)
        hits += int((outcome == 1).any(axis=1).sum())
    return hits / studies


def _limit(studies: int = STUDIES) -> float:
    return ALPHA + 2 * math.sqrt(ALPHA * (1 - ALPHA) / studies)


@pytest.mark.slow
@pytest.mark.parametrize("spending", plan.SPENDING)
@pytest.mark.parametrize("sizes", [(3, 10), (3, 5)])
def test_one_rows_false_supported_rate_is_at_most_alpha_for_t_statistics(sizes, spending):
    splan = plan.stage_plan(sizes[0], sizes[1], 3, ALPHA, spending)
    assert sum(splan.alphas) == pytest.approx(ALPHA, abs=1e-12)
    rate = sequential_false_supported(splan.alphas, splan.sizes)
    assert rate <= _limit(), (splan.sizes, spending, rate)


@pytest.mark.slow
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("sizes", [(3, 10), (3, 5)])
def test_a_family_of_eleven_with_holm_at_every_look_keeps_alpha(sizes, shared):
    splan = plan.stage_plan(sizes[0], sizes[1], 3, ALPHA, "obf")
    rate = sequential_false_supported(splan.alphas, splan.sizes, rows=11, shared=shared, studies=100_000, seed=1)
    assert rate <= _limit(100_000), (splan.sizes, shared, rate)


@pytest.mark.slow
def test_the_textbook_z_levels_over_run_alpha_for_t_statistics():
    """What the rule used before (z boundaries mapped to nominal t levels): above alpha beyond 3 Monte-Carlo
    errors at looks 3/4/5 (issue 24 measured 0.0284), so the checks above can tell a rule off its level."""
    splan = plan.stage_plan(3, 5, 3, ALPHA, "obf")
    rate = sequential_false_supported(splan.z_alphas, splan.sizes, seed=2)
    assert rate > ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / STUDIES), rate
