"""Diagonality (PAPER.md §1.5, the authors' DiagonalityPlugin): is eta^T K K^T eta dominated by its
diagonal, as the theory needs to turn flatness into sparsity?

For p in ``powers`` (1, 2), per site, each as log10( sum of diagonal / sum of off-diagonal ):
  kkT_p<p>       entries |K K^T|_ij^p
  M_p<p>         entries of M_p = mean_t |g_t|^p (|g_t|^p)^T, g = dL/da on training batches
  hadamard_p<p>  entries of M_p (.) |K K^T|^p  (the per-token products |g_i|^p |g_j|^p |KK^T|_ij^p)
On training batches at the ``every`` cadence; M is accumulated over the observed tokens. The
ratios do not depend on the gradient's scale (batch-mean or per-sample give the same numbers).
Costs O(tokens x d_ff^2) per observation and a d_ff x d_ff matrix per site and power: a slow-cadence
probe for wide models.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch

from .base import Probe, layer_rows
from .capture import capture


def log_diag_ratio(m: torch.Tensor) -> float:
    """log10( sum_i m_ii / sum_{i != j} m_ij ) of a non-negative square matrix."""
    diag = m.diagonal().sum()
    off = m.sum() - diag
    return float(torch.log10(diag / off)) if off > 0 else math.inf


class DiagonalityProbe(Probe):
    name = "diagonality"

    def __init__(self, sites, every: int = 0, powers=(1, 2), **kw):
        super().__init__(sites, every, **kw)
        self.powers = [int(p) for p in powers]
        self._m = None  # per site: dict p -> sum_t |g_t|^p |g_t|^p^T (float64), and the token count
        self._tokens = None

    def on_record(self, site, rec):
        g = rec.g.double().abs()
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
        if split != "train" or self._m is None:
            return []
        ms, tokens = self._m, self._tokens
        self._m = self._tokens = None
        out = []
        for p in self.powers:
            kk, mm, hh = [], [], []
            for site in self.sites:
                w = site.weight("key").detach().double()
                kkp = (w @ w.T).abs().pow(p)
                m = ms[site.index][p] / max(1, tokens[site.index])
                kk.append(log_diag_ratio(kkp))
                mm.append(log_diag_ratio(m))
                hh.append(log_diag_ratio(m * kkp))
            out += layer_rows(split, f"kkT_p{p}", kk)
            out += layer_rows(split, f"M_p{p}", mm)
            out += layer_rows(split, f"hadamard_p{p}", hh)
        return out
