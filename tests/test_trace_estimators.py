"""Hutchinson, Hutch++ and XTrace (probes/trace_estimators.py) on exact matrices: the exact
Hessian of the tiny model and a matrix with a Hessian-like spectrum (a few large outliers over a
bulk). Exactness at full budget, unbiasedness, the error estimates' coverage over repeated draws,
and the variance reduction that is their point."""
import math

import numpy as np
import pytest
import torch

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
    return np.array([t for t, _ in out]), np.array([e for _, e in out])


@pytest.mark.parametrize("method", ["hutchpp", "xtrace"])
def test_a_budget_of_the_dimension_gives_the_exact_trace(method):
    A = _tiny_hessian()
    t, e = _runs(A, method, len(A), 1)
    assert t[0] == pytest.approx(float(torch.trace(A)), rel=1e-12) and e[0] == 0.0


def test_hutchpp_with_a_full_sketch_is_exact():
    """Hutch++ itself (no shortcut): a sketch of n vectors spans the space, tr(Q^T A Q) = tr A."""
    A = _tiny_hessian()
    n = len(A)
    g = torch.Generator().manual_seed(3)
    t, e = te.hutchpp(lambda X: X @ A, lambda k: (torch.randint(0, 2, (k, n), generator=g) * 2 - 1).double(), 3 * n, n)
    assert t == pytest.approx(float(torch.trace(A)), rel=1e-10) and e == 0.0


@pytest.mark.parametrize("matrix", ["tiny_hessian", "outliers"])
@pytest.mark.parametrize("method", ["hutchinson", "hutchpp", "xtrace"])
def test_unbiased_and_error_estimates_cover(method, matrix):
    """Over 300 draws: the mean within 4 standard errors of the mean of the exact trace, the first
    draw within 4 of its own error estimate, and |error| <= 2 x the estimate in 80-100% of draws
    (a t interval on ~10 degrees of freedom covers ~92%; XTrace's terms are only exchangeable)."""
    A = _tiny_hessian() if matrix == "tiny_hessian" else _outliers()
    exact = float(torch.trace(A))
    t, e = _runs(A, method, 30, 300)
    assert abs(t.mean() - exact) < 4 * t.std(ddof=1) / math.sqrt(len(t))
    assert abs(t[0] - exact) < 4 * e[0]
    cover = np.mean(np.abs(t - exact) <= 2 * e)
    assert 0.8 <= cover <= 1.0, cover
    # the error estimate is the spread's size: its root mean square within 35% of the true RMSE
    assert np.sqrt(np.mean(e**2)) == pytest.approx(np.sqrt(np.mean((t - exact) ** 2)), rel=0.35)


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


def test_xtrace_on_a_low_rank_matrix_falls_back_to_hutchinson():
    """More vectors than A's rank: no leave-one-out bases; the same products' Hutchinson estimate."""
    g = np.random.default_rng(1)
    u = torch.tensor(g.standard_normal((40, 3)))
    A = u @ u.T  # rank 3
    gen = torch.Generator().manual_seed(0)
    W = []

    def draw(k):
        W.append((torch.randint(0, 2, (k, 40), generator=gen) * 2 - 1).double())
        return W[-1]

    t, e = te.xtrace(lambda X: X @ A, draw, 20)
    z = ((W[0] @ A) * W[0]).sum(1)
    assert t == pytest.approx(float(z.mean()), rel=1e-12) and e == pytest.approx(float(z.std() / math.sqrt(10)))
    assert te.xtrace(lambda X: X * 0, draw, 8) == (0.0, 0.0)  # a zero Hessian: 0, not nan
