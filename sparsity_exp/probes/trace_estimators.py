"""Randomized trace estimators of a symmetric matrix A known only through products A X, each with
its own error estimate and that estimate's degrees of freedom. Written from the papers; vectors are
rows: ``op(X)`` maps [m, n] to the rows of (A X^T)^T, ``draw(m)`` gives m Rademacher rows [m, n].
Every estimator returns (trace, error, df): an interval trace +- t_{df}(0.975) x error is the 95%
interval (a t quantile on df degrees of freedom, not 1.96; df = inf where the value is exact).

hutchinson  (Hutchinson 1989) m vectors x_j: t = mean_j x_j.A x_j; error = std_j / sqrt(m), the
            standard error of the mean of m independent terms; df = m - 1.
hutchpp     Hutch++ (Meyer, Musco, Musco & Woodruff 2021, "Hutch++: optimal stochastic trace
            estimation", Algorithm 1), m products: k = m // 3 sketch vectors S, Q an orthonormal
            basis of A S; t = tr(Q^T A Q) + the Hutchinson estimate of tr((I - QQ^T) A (I - QQ^T))
            from the remaining m - 2k vectors projected off Q. Given Q the first part is exact and
            the two parts add up to tr A exactly in expectation, so the error is the second part's
            alone: error = std / sqrt(m - 2k) of its per-vector terms (the standard error
            conditional on the sketch), df = m - 2k - 1. Unbiased for any symmetric A; the variance
            falls with the mass of A's spectrum outside its top k eigenvalues (the Hessian's few
            large outliers are taken exactly).
xtrace      XTrace (Epperly, Tropp & Webber 2024, "XTrace: making the most of every sample in
            stochastic trace estimation", SIAM J. Matrix Anal. Appl.), m products: s = m // 2
            vectors w_i, Y = A W = QR. For each i the basis of Y without column i,
            P_i = Q (I - u_i u_i^T) Q^T with u_i the normalised i-th column of R^{-T}, gives the
            leave-one-out estimate t_i = tr(P_i A) + w_i^T (I - P_i) A (I - P_i) w_i (unbiased: w_i
            is independent of P_i); t = mean_i t_i. The unnormalised variant (no sphere rescaling
            of the w_i). All of it from A Q, Q and R: s x s algebra, no product beyond the 2s.
            Error (issue 27): the jackknife over the s vectors, error^2 = (s - 1)/s sum_j (t_(-j) -
            mean_j t_(-j))^2, where t_(-j) is XTrace on the s - 1 vectors without w_j (its
            leave-two-out bases span Y without columns i and j: u_i, u_j orthonormalised, the same
            s x s algebra), df = s - 1. The paper's own estimate std_i(t_i) / sqrt(s)
            (``error="paper"``) treats the exchangeable, positively correlated t_i as independent:
            by simulation its 95% intervals covered 64-93% on fast, slow and flat spectra, outliers
            and low rank plus noise; the jackknife's covered 94-100% (docs/trace_coverage.md,
            benchmarks/trace_coverage.py): conservative, 1.3-3x the actual error. Where A W is
            numerically rank-deficient (s above the rank of A, e.g. a low-rank Hessian) the sketch
            holds A's range: t = tr(Q^T A Q) over an SVD basis Q of A W (exact; at most s further
            products), plus the mean over the w_i of w_i^T (I - QQ^T) A (I - QQ^T) w_i from the
            same products (0 up to rounding when the rank is exact) and that mean's standard error
            (df s - 1; 0 for A = 0).

The n-long vectors stay in the operator's precision (QR twice in single precision), the small
s x s algebra is float64. Memory: Hutch++ ~4 x m/3, XTrace ~4 x m/2 vectors of length n.
A budget m >= n (the dimension) gives the trace exactly from the n unit
vectors (what a full-rank sketch of either method would give), error 0, df inf.
"""
from __future__ import annotations

import math

import torch

ESTIMATORS = ("hutchinson", "hutchpp", "xtrace")
XTRACE_ERRORS = ("jackknife", "paper")
INF = float("inf")


def _mean_se(z: torch.Tensor) -> tuple[float, float, float]:
    n = z.numel()
    mean = float(z.mean()) if n else 0.0
    se = float(z.std(correction=1) / math.sqrt(n)) if n > 1 else float("nan")
    return mean, se, float(n - 1) if n > 1 else float("nan")


def _orthonormal_rows(Y: torch.Tensor) -> torch.Tensor:
    """Orthonormal rows spanning the rows of Y (Householder QR; twice in single precision)."""
    Q = torch.linalg.qr(Y.T).Q
    if Q.dtype != torch.float64:
        Q = torch.linalg.qr(Q).Q  # re-orthogonalise: float32 loses orthogonality on ill-conditioned Y
    return Q.T


def exact_trace(op, n: int, block: int, dtype, device) -> float:
    total = 0.0
    for start in range(0, n, block):
        rows = torch.eye(n, dtype=dtype, device=device)[start:start + block]
        total += float(torch.einsum("ij,ij->", rows.double(), op(rows).double()))
    return total


def hutchinson(op, draw, m: int) -> tuple[float, float, float]:
    X = draw(m)
    z = (X * op(X)).sum(1, dtype=torch.float64)
    return _mean_se(z)


def hutchpp(op, draw, m: int, n: int) -> tuple[float, float, float]:
    """Hutch++ with ``m`` products (k = m // 3 sketch, at most n; m - 2k residual vectors). A
    sketch of n vectors spans everything: the trace is then exact from it (error 0)."""
    if m < 3:
        raise ValueError(f"Hutch++ needs at least 3 products, got {m}")
    k = min(n, m // 3)
    Q = _orthonormal_rows(op(draw(k)))
    top = float((Q * op(Q)).sum(dtype=torch.float64))
    if k >= n:
        return top, 0.0, INF
    G = draw(m - 2 * k)
    W = G - (G @ Q.T) @ Q  # projected off the sketch's range
    z = (W * op(W)).sum(1, dtype=torch.float64)
    mean, se, df = _mean_se(z)
    return top + mean, se, df


def _low_rank(op, W, Y, s) -> tuple[float, float, float]:
    """A W rank-deficient: tr(Q^T A Q) over an SVD basis Q of A W's range (which holds A's range
    when s exceeds A's rank), plus the residual terms w_i^T (I - P) A (I - P) w_i from the same
    products (P = QQ^T; ~0 when the rank is exact), their mean's standard error, df s - 1."""
    U, S, _ = torch.linalg.svd(Y.T, full_matrices=False)
    keep = S > 10 * s * torch.finfo(Y.dtype).eps * S.max() if bool(S.max() > 0) else S > 0
    r = int(keep.sum())
    if r == 0:  # A W = 0: A = 0 (for a generic W), trace 0 exactly
        return 0.0, 0.0, INF
    Q = U[:, :r].T  # r x n, orthonormal rows
    Z = op(Q)
    T = (Q @ Z.T).double()
    T = (T + T.T) / 2
    top = float(torch.trace(T))
    C = (Q @ W.T).double()  # column i: Q^T w_i
    QY = (Q @ Y.T).double()  # column i: Q^T A w_i
    WY = (W * Y).sum(1).double()
    e = WY - 2 * (C * QY).sum(0) + (C * (T @ C)).sum(0)
    mean, se, df = _mean_se(e.cpu())
    return top + mean, se, df


def xtrace(op, draw, m: int, error: str = "jackknife") -> tuple[float, float, float]:
    """XTrace with ``m`` products (s = m // 2 vectors, each used twice: A W and A Q); the error by
    the jackknife over the vectors (default) or the paper's std_i(t_i) / sqrt(s)."""
    if error not in XTRACE_ERRORS:
        raise ValueError(f"xtrace error={error!r}; choose one of {list(XTRACE_ERRORS)}")
    s = m // 2
    if s < 2:
        raise ValueError(f"XTrace needs at least 4 products, got {m}")
    W = draw(s)
    Y = op(W)
    Qc, R = torch.linalg.qr(Y.T)  # Y^T = Q R, Q: n x s, R: s x s upper triangular
    if Qc.dtype != torch.float64:  # re-orthogonalise in single precision (Q = Q2 R2, so R <- R2 R)
        Qc, R2 = torch.linalg.qr(Qc)
        R = R2 @ R
    R = R.double()
    diag = R.diagonal().abs()
    if not bool(diag.min() > 10 * s * torch.finfo(Y.dtype).eps * diag.max()):
        # A W (numerically) rank-deficient, e.g. a Hessian of rank < s: the sketch holds A's range
        return _low_rank(op, W, Y, s)
    Q = Qc.T
    Z = op(Q)  # rows (A q_b)^T
    T = (Q @ Z.T).double()  # T_ab = q_a . A q_b; the n-long products in the vectors' precision, the s x s algebra in float64
    C = (Q @ W.T).double()  # column i: Q^T w_i
    WY = (W * Y).sum(1).double()  # w_i . A w_i
    WZ = (W @ Z.T).double()  # row i: w_i^T A Q
    eye = torch.eye(s, dtype=torch.float64, device=R.device)
    U = torch.linalg.solve_triangular(R.T, eye, upper=False)  # R^{-T}: column i is orthogonal to R's other columns
    norms = U.norm(dim=0)
    U = U / norms
    trT = torch.trace(T)
    t = torch.empty(s, dtype=torch.float64, device=R.device)
    for i in range(s):
        u, c, r = U[:, i], C[:, i], R[:, i]
        d = c - u * (u @ c)  # coordinates in Q of w_i's projection onto span(Y without column i)
        t[i] = (trT - u @ T @ u) + (WY[i] - WZ[i] @ d - d @ r + d @ T @ d)
    value = float(t.mean())
    if error == "paper":
        return value, float(t.std(correction=1) / math.sqrt(s)), float(s - 1)
    reps = _leave_two_out(T, C, R, U, norms, WY)
    se = math.sqrt((s - 1) / s * float(((reps - reps.mean()) ** 2).sum()))
    return value, se, float(s - 1)


def _leave_two_out(T, C, R, U, norms, WY) -> torch.Tensor:
    """The jackknife replicates: entry j is XTrace on the vectors without w_j, the mean over i != j
    of t_i^(-j) = tr(P_ij A) + w_i^T (I - P_ij) A (I - P_ij) w_i, P_ij = Q (I - V V^T) Q^T with V
    an orthonormal basis of (u_i, u_j): a = u_i, b = (u_j - beta u_i) / sqrt(1 - beta^2), beta =
    u_i.u_j. With d = c_i - gamma u_i - delta u_j the coordinates of P_ij w_i, every term is an
    entry of an s x s matrix (u_k.R_i = 0 for k != i, 1 / ||column i of R^{-T}|| for k = i)."""
    s = T.shape[0]
    T = (T + T.T) / 2
    M = U.T @ T @ U  # M_kl = u_k.T u_l
    K = U.T @ C  # K_ki = u_k.c_i
    CTC = (C * (T @ C)).sum(0)  # c_i.T c_i
    CTU = C.T @ T @ U  # [i, k] = c_i.T u_k
    rc = (R * C).sum(0)  # r_i.c_i
    ru = 1.0 / norms  # r_i.u_i
    beta = U.T @ U
    one_m = (1 - beta**2).clamp_min(torch.finfo(torch.float64).tiny)
    Mi, Mj = M.diagonal()[:, None], M.diagonal()[None, :]
    tr_vtv = Mi + (Mj - 2 * beta * M + beta**2 * Mi) / one_m
    a_c = K.diagonal()[:, None]  # a.c_i
    b_c = (K.T - beta * a_c) / one_m.sqrt()  # b.c_i
    delta = b_c / one_m.sqrt()
    gamma = a_c - delta * beta
    rd = rc[:, None] - gamma * ru[:, None]
    dtd = (CTC[:, None] - 2 * gamma * CTU.diagonal()[:, None] - 2 * delta * CTU + gamma**2 * Mi
           + 2 * gamma * delta * M + delta**2 * Mj)
    terms = torch.trace(T) - tr_vtv + WY[:, None] - 2 * rd + dtd  # [i, j]
    terms.fill_diagonal_(0)
    return terms.sum(0) / (s - 1)


def estimate_trace(method: str, op, draw, m: int, n: int, block: int, dtype, device) -> tuple[float, float, float]:
    """(trace, error, df) of the operator by ``method`` with ``m`` products (exact, error 0 and df
    inf, when m >= n)."""
    if method not in ESTIMATORS:
        raise ValueError(f"trace estimator {method!r}; choose one of {list(ESTIMATORS)}")
    if method != "hutchinson" and m >= n:
        return exact_trace(op, n, block, dtype, device), 0.0, INF
    if method == "hutchinson":
        return hutchinson(op, draw, m)
    if method == "hutchpp":
        return hutchpp(op, draw, m, n)
    return xtrace(op, draw, m)
