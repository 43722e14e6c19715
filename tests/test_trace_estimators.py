"""Hutchinson, Hutch++ and XTrace (probes/trace_estimators.py) on exact matrices: the exact
Hessian of the tiny model and a matrix with a Hessian-like spectrum (a few large outliers over a
bulk). Exactness at full budget, unbiasedness, the error estimates' coverage over repeated draws,
and the variance reduction that is their point."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from sparsity_exp.probes import trace_estimators as te

from .tiny import exact_hessian, tiny_batch, tiny_mlp


def _tiny_hessian():
    model = tiny_mlp(1, depth=2)
    model.eval()
    names = [n for n, _ in model.named_parameters() if ".key." in n or ".value." in n]
    return torch.tensor(exact_hessian(model, tiny_batch(), names))


def _outliers(n=200, seed=0):
    """Symmetric, 10 eigenvalues in [20, 60] over a bulk of n - 10 in [-0.5, 1] (random basis)."""
    g = np.random.default_rng(seed)
    lam = np.concatenate([g.uniform(20, 60, 10), g.uniform(-0.5, 1.0, n - 10)])
    q, _ = np.linalg.qr(g.standard_normal((n, n)))
    return torch.tensor((q * lam) @ q.T)


def _runs(A, method, m, draws, seed=0):
    n = len(A)
    g = torch.Generator().manual_seed(seed)

    def draw(k):
        return (torch.randint(0, 2, (k, n), generator=g) * 2 - 1).double()

    out = [te.estimate_trace(method, lambda X: X @ A, draw, m, n, 16, torch.float64, "cpu") for _ in range(draws)]
    return np.array([t for t, _, _ in out]), np.array([e for _, e, _ in out]), np.array([d for _, _, d in out])


@pytest.mark.parametrize("method", ["hutchpp", "xtrace"])
def test_a_budget_of_the_dimension_gives_the_exact_trace(method):
    A = _tiny_hessian()
    t, e, df = _runs(A, method, len(A), 1)
    assert t[0] == pytest.approx(float(torch.trace(A)), rel=1e-12) and e[0] == 0.0 and df[0] == math.inf


def test_hutchpp_with_a_full_sketch_is_exact():
    """Hutch++ itself (no shortcut): a sketch of n vectors spans the space, tr(Q^T A Q) = tr A."""
    A = _tiny_hessian()
    n = len(A)
    g = torch.Generator().manual_seed(3)
    t, e, df = te.hutchpp(lambda X: X @ A, lambda k: (torch.randint(0, 2, (k, n), generator=g) * 2 - 1).double(),
                          3 * n, n)
    assert t == pytest.approx(float(torch.trace(A)), rel=1e-10) and e == 0.0 and df == math.inf


@pytest.mark.parametrize("matrix", ["tiny_hessian", "outliers"])
@pytest.mark.parametrize("method", ["hutchinson", "hutchpp", "xtrace"])
def test_unbiased_and_error_estimates_cover(method, matrix):
    """Over 300 draws: the mean within 4 standard errors of the mean of the exact trace, the first
    draw within 4 of its own error estimate, the 95% t interval on the reported df covers >= 90%
    (>= 93% expected; 300 draws leave ~1.3% Monte-Carlo error), and the error estimate's root mean
    square is the spread's size (within 35%; XTrace's jackknife is conservative: 0.9-3.5x)."""
    A = _tiny_hessian() if matrix == "tiny_hessian" else _outliers()
    exact = float(torch.trace(A))
    t, e, df = _runs(A, method, 30, 300)
    assert abs(t.mean() - exact) < 4 * t.std(ddof=1) / math.sqrt(len(t))
    assert abs(t[0] - exact) < 4 * e[0]
    cover = np.mean(np.abs(t - exact) <= stats.t.ppf(0.975, df) * e)
    assert cover >= 0.90, cover
    ratio = np.sqrt(np.mean(e**2)) / np.sqrt(np.mean((t - exact) ** 2))
    if method == "xtrace":
        assert 0.9 <= ratio <= 3.5, ratio
    else:
        assert ratio == pytest.approx(1.0, abs=0.35)


def _spectrum(kind, n=200, seed=0):
    g = np.random.default_rng(seed)
    i = np.arange(1, n + 1)
    lam = {"fast": i**-2.0, "slow": i**-0.5, "lowrank_noise": np.r_[np.full(5, 10.0), np.full(n - 5, 1e-3)]}[kind]
    q, _ = np.linalg.qr(g.standard_normal((n, n)))
    return torch.tensor((q * lam) @ q.T)


def test_xtrace_error_is_calibrated_where_the_papers_is_not():
    """Issue 27: on the outlier spectrum at 20 products (a sketch of 10 against 10 outliers) the
    paper's std_i(t_i)/sqrt(s) covered ~69% with a t interval, the jackknife >= 93%. 300 draws
    (Monte-Carlo error ~1.3%): fails on the paper's estimate, passes on the calibrated one."""
    A = _outliers()
    exact = float(torch.trace(A))
    g = torch.Generator().manual_seed(7)
    jack, paper = [], []
    for _ in range(300):
        W = (torch.randint(0, 2, (10, len(A)), generator=g) * 2 - 1).double()
        jack.append(te.xtrace(lambda X: X @ A, lambda k: W[:k], 20))
        paper.append(te.xtrace(lambda X: X @ A, lambda k: W[:k], 20, error="paper"))
    for name, runs, lo, hi in (("jackknife", jack, 0.93, 1.0), ("paper", paper, 0.0, 0.85)):
        t, e, df = map(np.array, zip(*runs))
        assert (df == 9).all()
        cover = np.mean(np.abs(t - exact) <= stats.t.ppf(0.975, df) * e)
        assert lo <= cover <= hi, (name, cover)
    assert np.array(jack)[:, 0] == pytest.approx(np.array(paper)[:, 0], rel=1e-12)  # the same estimate


def test_xtrace_jackknife_replicates_are_xtrace_without_one_vector():
    """The leave-two-out algebra against XTrace run on the s - 1 remaining vectors."""
    A = _outliers(60, seed=2)
    g = torch.Generator().manual_seed(0)
    W = (torch.randint(0, 2, (8, 60), generator=g) * 2 - 1).double()
    t, e, df = te.xtrace(lambda X: X @ A, lambda k: W[:k], 16)
    reps = []
    for j in range(8):
        rest = torch.cat([W[:j], W[j + 1:]])
        reps.append(te.xtrace(lambda X: X @ A, lambda k: rest[:k], 14, error="paper")[0])
    reps = np.array(reps)
    assert e == pytest.approx(math.sqrt(7 / 8 * ((reps - reps.mean()) ** 2).sum()), rel=1e-9) and df == 7


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fast", "slow", "lowrank_noise"])
@pytest.mark.parametrize("method", ["xtrace"])
def test_coverage_on_decaying_spectra(method, kind):
    """Monte-Carlo (1000 draws at 10, 20 and 40 products): XTrace's 95% t interval covers >= 93% on
    fast (i^-2) and slow (i^-0.5) decay and rank 5 plus noise (issue 27; the paper's estimate covered
    64-93%). Hutchinson and Hutch++ are not held to it at 10 products: their t intervals on 9 and 3
    df covered 0.89-0.92 on fast decay and rank 5 plus noise, where the per-vector terms are skewed
    (docs/trace_coverage.md)."""
    A = _spectrum(kind)
    exact = float(torch.trace(A))
    for m in (10, 20, 40):
        t, e, df = _runs(A, method, m, 1000, seed=m)
        cover = np.mean(np.abs(t - exact) <= stats.t.ppf(0.975, df) * e)
        assert cover >= 0.93, (m, cover)


def test_variance_reduction_on_an_outlier_spectrum():
    """With the trace carried by a few large eigenvalues (the Hessian's shape), Hutch++ and XTrace
    at 30 products are more accurate than Hutchinson at 30 (Hutch++'s sketch of 10 only partly
    catches the 10 outliers: ~2.7x; XTrace's leave-one-out sketches of 14 catch them: ~12x)."""
    A = _outliers()
    exact = float(torch.trace(A))
    rmse = {m: float(np.sqrt(np.mean((_runs(A, m, 30, 200)[0] - exact) ** 2))) for m in te.ESTIMATORS}
    assert rmse["hutchpp"] < rmse["hutchinson"] / 2, rmse
    assert rmse["xtrace"] < rmse["hutchinson"] / 6, rmse


@pytest.mark.parametrize("method", ["hutchpp", "xtrace"])
def test_single_precision_vectors_give_the_double_precision_estimate(method):
    """The n-long vectors in float32 (the probe on a float32 model), the small algebra in float64:
    the same draws give the float64 estimate to single precision."""
    A = _outliers()
    n = len(A)
    got = {}
    for dtype in (torch.float64, torch.float32):
        g = torch.Generator().manual_seed(5)
        A_d = A.to(dtype)
        got[dtype] = te.estimate_trace(method, lambda X: X @ A_d,
                                       lambda k: (torch.randint(0, 2, (k, n), generator=g) * 2 - 1).to(dtype),
                                       30, n, 16, dtype, "cpu")
    assert got[torch.float32][0] == pytest.approx(got[torch.float64][0], rel=1e-4)
    assert got[torch.float32][1] == pytest.approx(got[torch.float64][1], rel=1e-2)


def test_xtrace_is_exact_on_a_low_rank_matrix():
    """More vectors than A's rank: the sketch holds A's range, the trace is exact (as Hutch++'s and
    curvlinops' XTrace), its error the rounding-level residual; a zero matrix gives 0 exactly."""
    g = np.random.default_rng(1)
    u = torch.tensor(g.standard_normal((40, 3)))
    A = u @ u.T  # rank 3
    gen = torch.Generator().manual_seed(0)

    def draw(k):
        return (torch.randint(0, 2, (k, 40), generator=gen) * 2 - 1).double()

    t, e, df = te.xtrace(lambda X: X @ A, draw, 20)
    assert t == pytest.approx(float(torch.trace(A)), rel=1e-12) and e < 1e-10 * t and df == 9
    A32 = A.float()
    t32, e32, _ = te.xtrace(lambda X: X @ A32, lambda k: draw(k).float(), 20)
    assert t32 == pytest.approx(float(torch.trace(A)), rel=1e-5) and e32 < 1e-4 * t32
    assert te.xtrace(lambda X: X * 0, draw, 8) == (0.0, 0.0, math.inf)  # a zero Hessian: 0, not nan
