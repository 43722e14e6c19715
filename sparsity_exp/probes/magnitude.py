"""Magnitude criteria of activation sparsity (docs/paper.md §1.8), beside the paper's exact zeros.

Gates without exact zeros (SiLU in SwiGLU, GELU in T5 v1.1) read about 0 under the paper's
|a| <= 1e-6 (probe ``sparsity``). The gated-LLM literature measures them by magnitude instead; per
MLP site, on the entries V reads (v: the product act(K x~) * U x~ of a gated block, the activation
of a plain one, after dropout, as V multiplies them; a for a value-free block), with each entry's
*neuron output magnitude* m_tj = |v_tj| ||V[:, j]||_2 (|a_tj| without V):

  product_sparsity  fraction of V's input entries with |v| <= 1e-6 (exact zeros of the product;
                    gated sites only: a zero of the gate or of u)
  cett_sparsity     fraction of entries dropped by the CETT threshold tau*: the largest tau such that
                    CETT(tau) = mean_t ||sum_{j: m_tj <= tau} v_tj V[:, j]|| / ||V v_t|| <= ``cett``
                    (ProSparse; "Sparsing Law"'s CETT). One tau per site and observed batch, found by
                    bisection over the batch's sorted magnitudes (CETT need not be monotone in tau;
                    the bisection, like the literature's binary search, assumes it is), tau = 0 (only
                    exact zeros dropped) when even the smallest magnitude exceeds the bound
  cett_threshold    tau*, the mean over observed batches
  topp_sparsity     1 - (the fewest entries per token whose magnitudes sum to >= ``top_p`` of the
                    token's total) / d_ff, the mean over tokens (the top-p mass rule)
  topk_mass         the share of the token's total magnitude carried by its ceil(``top_k`` d_ff)
                    largest entries, the mean over tokens (the top-k rule)

Token masks apply as for every token-level probe. Observes training batches every ``every`` steps and
the test set at every evaluation (``test: true``). Accumulators are sums over entries, tokens and
batches (summed over ranks under data parallel training; each rank chooses its own tau on its shard).
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch

from ..activations import ZERO_TOL
from .base import Probe
from .capture import rows_of
from .hooks import forward_hooks

_ZEROS, _ENTRIES, _DROPPED, _TAU, _BATCHES, _KEPT, _TOKENS, _TOPK = range(8)


def neuron_magnitudes(v: torch.Tensor, value_weight: torch.Tensor | None) -> torch.Tensor:
    """m_tj = |v_tj| ||V[:, j]|| ([rows, d_ff]); |v| without V."""
    if value_weight is None:
        return v.abs()
    return v.abs() * value_weight.norm(dim=0)


def cett(v: torch.Tensor, value_weight: torch.Tensor | None, dropped: torch.Tensor) -> float:
    """Mean over rows of ||sum_{j dropped} v_j V[:, j]|| / ||V v|| (V = identity without V; rows whose
    output is 0 count 0)."""
    part = v * dropped
    if value_weight is not None:
        full, part = v @ value_weight.T, part @ value_weight.T
    else:
        full = v
    num, den = part.norm(dim=-1), full.norm(dim=-1)
    return float(torch.where(den > 0, num / den.clamp(min=1e-300), torch.zeros_like(num)).mean())


def cett_threshold(v: torch.Tensor, value_weight: torch.Tensor | None, bound: float) -> tuple[float, torch.Tensor]:
    """(tau*, dropped mask): the largest candidate tau (0 or one of the magnitudes) with CETT(tau) <= bound,
    by bisection over the sorted magnitudes."""
    m = neuron_magnitudes(v, value_weight)
    ms = m.flatten().sort().values
    lo, hi = -1, ms.numel() - 1  # index -1 stands for tau = 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cett(v, value_weight, m <= ms[mid]) <= bound:
            lo = mid
        else:
            hi = mid - 1
    tau = 0.0 if lo < 0 else float(ms[lo])
    return tau, m <= tau


def topp_kept(m: torch.Tensor, p: float) -> torch.Tensor:
    """Per row, the fewest entries whose magnitudes sum to >= p of the row's total (0 for an all-zero row)."""
    s = m.sort(dim=-1, descending=True).values
    total = s.sum(-1, keepdim=True)
    reach = s.cumsum(-1) >= p * total - 1e-12 * total
    kept = (~reach).sum(-1) + 1
    return torch.where(total.squeeze(-1) > 0, kept, torch.zeros_like(kept)).double()


def topk_mass(m: torch.Tensor, k: int) -> torch.Tensor:
    """Per row, the share of the total magnitude in the k largest entries (0 for an all-zero row)."""
    total = m.sum(-1)
    top = m.topk(k, dim=-1).values.sum(-1)
    return torch.where(total > 0, top / total.clamp(min=1e-300), torch.zeros_like(total)).double()


class MagnitudeProbe(Probe):
    name = "magnitude"
    metrics = ("product_sparsity", "cett_sparsity", "cett_threshold", "topp_sparsity", "topk_mass")
    gated_metrics = ("product_sparsity",)  # written on gated sites only

    def __init__(self, sites, every: int = 0, test: bool = True, cett: float = 0.2, top_p: float = 0.9,
                 top_k: float = 0.1, **kw):
        super().__init__(sites, every, **kw)
        if not 0 <= float(cett) <= 1 or not 0 < float(top_p) <= 1 or not 0 < float(top_k) <= 1:
            raise TypeError(f"cett={cett}, top_p={top_p}, top_k={top_k}: cett in [0, 1], top_p and top_k in (0, 1]")
        self.test, self.cett, self.top_p, self.top_k = bool(test), float(cett), float(top_p), float(top_k)
        self._stats = {}  # split -> float64 [n_sites, 8], sums (summed over ranks)

    @torch.no_grad()
    def _measure(self, split, site, v_full: torch.Tensor) -> None:
        v = rows_of(v_full, self.ctx.token_mask(site, v_full)).double()
        if v.numel() == 0:
            return
        w = site.weight("value").detach().double() if site.value is not None else None
        stats = self._stats.get(split)
        if stats is None:
            stats = self._stats[split] = torch.zeros(len(self.sites), 8, dtype=torch.float64, device=v.device)
        tau, dropped = cett_threshold(v, w, self.cett)
        m = neuron_magnitudes(v, w)
        k = max(1, math.ceil(self.top_k * v.shape[-1]))
        stats[site.index] += torch.stack([
            (v.abs() <= ZERO_TOL).sum().double(), torch.tensor(float(v.numel()), dtype=torch.float64, device=v.device),
            dropped.sum().double(), torch.tensor(tau, dtype=torch.float64, device=v.device),
            torch.ones((), dtype=torch.float64, device=v.device), topp_kept(m, self.top_p).sum(),
            torch.tensor(float(v.shape[0]), dtype=torch.float64, device=v.device), topk_mass(m, k).sum()])

    def _hooks(self, split):
        for site in self.sites:
            if site.value is not None:
                yield site.value, (lambda mod, args, out, s=site: self._measure(split, s, args[0].detach()))
            else:
                yield site.act, (lambda mod, args, out, s=site: self._measure(split, s, out.detach()))

    @contextmanager
    def observe(self, split: str):
        if split == "test" and not self.test:
            yield
            return
        with forward_hooks(self._hooks(split)):
            yield

    def rows(self, split: str):
        stats = self._stats.pop(split, None)
        if stats is None:
            return []
        s = stats.cpu()
        entries, tokens, batches = s[:, _ENTRIES].clamp(min=1), s[:, _TOKENS].clamp(min=1), s[:, _BATCHES].clamp(min=1)
        width = entries / tokens  # d_ff
        out = []
        gated = [site.index for site in self.sites if site.gated]
        if gated:
            vals = {i: float(s[i, _ZEROS] / entries[i]) for i in gated}
            out += [(split, "product_sparsity", i, v) for i, v in vals.items()]
            out.append((split, "product_sparsity", "avg", sum(vals.values()) / len(vals)))
        for metric, values in (("cett_sparsity", s[:, _DROPPED] / entries), ("cett_threshold", s[:, _TAU] / batches),
                               ("topp_sparsity", 1 - s[:, _KEPT] / (tokens * width)),
                               ("topk_mass", s[:, _TOPK] / tokens)):
            values = values.tolist()
            out += [(split, metric, i, float(v)) for i, v in enumerate(values)]
            out.append((split, metric, "avg", float(sum(values) / len(values))))
        return out
