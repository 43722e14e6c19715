"""Randomized trace estimators of a symmetric matrix A known only through products A X, each with
its own error estimate. Written from the papers; vectors are rows: ``op(X)`` maps [m, n] to the
rows of (A X^T)^T, ``draw(m)`` gives m Rademacher rows [m, n].

hutchinson  (Hutchinson 1989) m vectors x_j: t = mean_j x_j.A x_j; error = std_j / sqrt(m), the
            standard error of the mean of m independent terms.
hutchpp     Hutch++ (Meyer, Musco, Musco & Woodruff 2021, "Hutch++: optimal stochastic trace
            estimation", Algorithm 1), m products: k = m // 3 sketch vectors S, Q an orthonormal
            basis of A S; t = tr(Q^T A Q) + the Hutchinson estimate of tr((I - QQ^T) A (I - QQ^T))
            from the remaining m - 2k vectors projected off Q. Given Q the first part is exact and
            the two parts add up to tr A exactly in expectation, so the error is the second part's
            alone: error = std / sqrt(m - 2k) of its per-vector terms (the standard error
            conditional on the sketch). Unbiased for any symmetric A; the variance falls with the
            mass of A's spectrum outside its top k eigenvalues (the Hessian's few large outliers
            are taken exactly).
xtrace      XTrace (Epperly, Tropp & Webber 2024, "XTrace: making the most of every sample in
            stochastic trace estimation", SIAM J. Matrix Anal. Appl.), m products: s = m // 2
            vectors w_i, Y = A W = QR. For each i the basis of Y without column i,
            P_i = Q (I - u_i u_i^T) Q^T with u_i the normalised i-th column of R^{-T}, gives the
            leave-one-out estimate t_i = tr(P_i A) + w_i^T (I - P_i) A (I - P_i) w_i (unbiased: w_i
            is independent of P_i); t = mean_i t_i and, as the paper proposes, error =
            std_i(t_i) / sqrt(s) (the t_i are exchangeable, not independent: an estimate whose
            coverage the tests check empirically). All of it from A Q, Q and R: s x s algebra, no
            product beyond the 2s. The unnormalised variant (no sphere rescaling of the w_i). Where
            A W is numerically rank-deficient (s above the rank of A) it returns the Hutchinson
            estimate of the same products, mean_i w_i.A w_i, and its standard error.

The n-long vectors stay in the operator's precision (QR twice in single precision), the small
s x s algebra is float64. Memory: Hutch++ ~4 x m/3, XTrace ~4 x m/2 vectors of length n.
A budget m >= n (the dimension) gives the trace exactly from the n unit
vectors (what a full-rank sketch of either method would give), error 0.
"""
from __future__ import annotations

import math

import torch

ESTIMATORS = ("hutchinson", "hutchpp", "xtrace")


def _mean_se(z: torch.Tensor) -> tuple[float, float]:
    n = z.numel()
    mean = float(z.mean()) if n else 0.0
    se = float(z.std(correction=1) / math.sqrt(n)) if n > 1 else float("nan")
    return mean, se


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


def hutchinson(op, draw, m: int) -> tuple[float, float]:
    X = draw(m)
    z = (X * op(X)).sum(1, dtype=torch.float64)
    return _mean_se(z)


def hutchpp(op, draw, m: int, n: int) -> tuple[float, float]:
    """Hutch++ with ``m`` products (k = m // 3 sketch, at most n; m - 2k residual vectors). A
    sketch of n vectors spans everything: the trace is then exact from it (error 0)."""
    if m < 3:
        raise ValueError(f"Hutch++ needs at least 3 products, got {m}")
    k = min(n, m // 3)
    Q = _orthonormal_rows(op(draw(k)))
    top = float((Q * op(Q)).sum(dtype=torch.float64))
    if k >= n:
        return top, 0.0
    G = draw(m - 2 * k)
    W = G - (G @ Q.T) @ Q  # projected off the sketch's range
    z = (W * op(W)).sum(1, dtype=torch.float64)
    mean, se = _mean_se(z)
    return top + mean, se


def xtrace(op, draw, m: int) -> tuple[float, float]:
    """XTrace with ``m`` products (s = m // 2 vectors, each used twice: A W and A Q)."""
    s = m // 2
    if s < 2:
        raise ValueError(f"XTrace needs at least 4 products, got {m}")
    W = draw(s)
    Y = op(W)
    Qc, R = torch.linalg.qr(Y.T)  # Y^T = Q R, Q: n x s, R: s x s upper triangular
    if Qc.dtype != torch.float64:  # re-orthogonalise in single precision (Q = Q2 R2, so R <- R2 R)
        Qc, R2 = torch.linalg.qr(Qc)
        R = R2 @ R
    Q, R = Qc.T, R.double()
    Z = op(Q)  # rows (A q_b)^T
    T = (Q @ Z.T).double()  # T_ab = q_a . A q_b; the n-long products in the vectors' precision, the s x s algebra in float64
    C = (Q @ W.T).double()  # column i: Q^T w_i
    WY = (W * Y).sum(1).double()  # w_i . A w_i
    WZ = (W @ Z.T).double()  # row i: w_i^T A Q
    diag = R.diagonal().abs()
    if not bool(diag.min() > 10 * s * torch.finfo(Y.dtype).eps * diag.max()):
        # A W (numerically) rank-deficient, e.g. a Hessian of rank < s: no leave-one-out bases; the
        # Hutchinson estimate from the same products is still unbiased
        return _mean_se(WY.cpu())
    eye = torch.eye(s, dtype=torch.float64, device=R.device)
    U = torch.linalg.solve_triangular(R.T, eye, upper=False)  # R^{-T}: column i is orthogonal to R's other columns
    U = U / U.norm(dim=0, keepdim=True)
    trT = torch.trace(T)
    t = torch.empty(s, dtype=torch.float64, device=R.device)
    for i in range(s):
        u, c, r = U[:, i], C[:, i], R[:, i]
        d = c - u * (u @ c)  # coordinates in Q of w_i's projection onto span(Y without column i)
        t[i] = (trT - u @ T @ u) + (WY[i] - WZ[i] @ d - d @ r + d @ T @ d)
    return _mean_se(t.cpu())


def estimate_trace(method: str, op, draw, m: int, n: int, block: int, dtype, device) -> tuple[float, float]:
    """(trace, error) of the operator by ``method`` with ``m`` products (exact when m >= n)."""
    if method not in ESTIMATORS:
        raise ValueError(f"trace estimator {method!r}; choose one of {list(ESTIMATORS)}")
    if method != "hutchinson" and m >= n:
        return exact_trace(op, n, block, dtype, device), 0.0
    if method == "hutchinson":
        return hutchinson(op, draw, m)
    if method == "hutchpp":
        return hutchpp(op, draw, m, n)
    return xtrace(op, draw, m)
