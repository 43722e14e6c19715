"""Diagonality (docs/paper.md §1.5, the authors' DiagonalityPlugin): is eta^T K K^T eta dominated by its
diagonal, as the theory needs to turn flatness into sparsity?

For p in ``powers`` (1, 2), per site, with x_t = |g_t|^p (g = dL/da on training batches, one row per
token) and Kp = |K K^T|^p:
  kkT_p<p>       log10( sum_i Kp_ii / sum_{i != j} Kp_ij )
  M_p<p>         the matrix x_t x_t^T:           diag_t = sum_i x_ti^2,        all_t = (sum_i x_ti)^2
  hadamard_p<p>  the matrix (x_t x_t^T) (.) Kp:  diag_t = sum_i x_ti^2 Kp_ii,  all_t = x_t^T Kp x_t
``aggregation``:
  per_token (default, the authors'): mean over the observed tokens of log10( diag_t / (all_t - diag_t) )
            (DiagonalityPlugin's ``(sum_diagonals / (sum_nondiagonals + eps)).log10().mean()``; their
            eps = 1e-5 is left out here, since with batch-mean gradients it can outweigh the off-diagonal
            mass: tokens whose off-diagonal mass is 0 are skipped instead)
  token_sum: log10 of the token-summed masses, sum_t diag_t / sum_t (all_t - diag_t), i.e. of the
            diagonal of M_p = mean_t x_t x_t^T (and of M_p (.) Kp) against its off-diagonal
The two differ when tokens of large gradient have another diagonality than the rest. Ratios do not
depend on the gradient's scale (batch-mean or per-sample give the same numbers). Costs O(tokens x
d_ff^2) per observation (token_sum also keeps a d_ff x d_ff matrix per site and power): a slow-
cadence probe for wide models.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch

from .base import Probe, layer_rows
from .capture import capture

AGGREGATIONS = ("per_token", "token_sum")


def log_diag_ratio(m: torch.Tensor) -> float:
    """log10( sum_i m_ii / sum_{i != j} m_ij ) of a non-negative square matrix."""
    diag = m.diagonal().sum()
    off = m.sum() - diag
    return float(torch.log10(diag / off)) if off > 0 else math.inf


def per_token_masses(x: torch.Tensor, kp: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(diag_t, off_t) of x_t x_t^T, or of (x_t x_t^T) (.) kp, for every row x_t of x."""
    if kp is None:
        diag, total = x.pow(2).sum(-1), x.sum(-1).pow(2)
    else:
        diag, total = (x.pow(2) * kp.diagonal()).sum(-1), ((x @ kp) * x).sum(-1)
    return diag, total - diag


class DiagonalityProbe(Probe):
    name = "diagonality"
    metrics = ("kkT_p1", "kkT_p2", "M_p1", "M_p2", "hadamard_p1", "hadamard_p2")

    def __init__(self, sites, every: int = 0, powers=(1, 2), aggregation: str = "per_token", **kw):
        super().__init__(sites, every, **kw)
        if aggregation not in AGGREGATIONS:
            raise TypeError(f"aggregation={aggregation!r}: choose one of {list(AGGREGATIONS)}")
        self.powers = [int(p) for p in powers]
        self.aggregation = aggregation
        self._m = None  # token_sum, per site: dict p -> sum_t |g_t|^p |g_t|^p^T (float64), and the token count
        self._tokens = None
        self._logs = None  # per_token: [n_sites, powers, 2 (M, hadamard), 2 (sum of log10 ratios, tokens)]

    def _kp(self, site, p: int) -> torch.Tensor:
        w = site.weight("key").detach().double()
        return (w @ w.T).abs().pow(p)

    def on_record(self, site, rec):
        g = rec.g.double().abs()
        if self.aggregation == "per_token":
            if self._logs is None:
                self._logs = torch.zeros(len(self.sites), len(self.powers), 2, 2, dtype=torch.float64, device=g.device)
            for j, p in enumerate(self.powers):
                x = g.pow(p)
                for k, kp in enumerate((None, self._kp(site, p))):
                    diag, off = per_token_masses(x, kp)
                    ok = off > 0
                    logs = torch.where(ok, torch.log10(diag / torch.where(ok, off, torch.ones_like(off))), 0.0)
                    self._logs[site.index, j, k] += torch.stack([logs.sum(), ok.sum().double()])
            return
        if self._m is None:
            self._m = [dict() for _ in self.sites]
            self._tokens = [0] * len(self.sites)
        for p in self.powers:
            gp = g.pow(p)
            prev = self._m[site.index].get(p)
            self._m[site.index][p] = gp.T @ gp if prev is None else prev + gp.T @ gp
        self._tokens[site.index] += g.shape[0]

    @contextmanager
    def observe(self, split: str):
        if split != "train":
            yield
            return
        with capture(self.sites, self.on_record, grads=("g",), with_activation=False, masks=self.ctx):
            yield

    def rows(self, split: str):
        if split != "train" or (self._m is None and self._logs is None):
            return []
        ms, tokens, logs = self._m, self._tokens, self._logs
        self._m = self._tokens = self._logs = None
        logs = None if logs is None else logs.cpu()
        out = []
        for j, p in enumerate(self.powers):
            kk, mm, hh = [], [], []
            for site in self.sites:
                kkp = self._kp(site, p)
                kk.append(log_diag_ratio(kkp))
                if logs is not None:
                    (m_sum, m_n), (h_sum, h_n) = logs[site.index, j].tolist()
                    mm.append(m_sum / m_n if m_n else math.nan)
                    hh.append(h_sum / h_n if h_n else math.nan)
                else:
                    m = ms[site.index][p] / max(1, tokens[site.index])
                    mm.append(log_diag_ratio(m))
                    hh.append(log_diag_ratio(m * kkp))
            out += layer_rows(split, f"kkT_p{p}", kk)
            out += layer_rows(split, f"M_p{p}", mm)
            out += layer_rows(split, f"hadamard_p{p}", hh)
        return out
