"""Spectra of the key matrices (docs/paper.md §1.5): eigenvalues of K K^T for every site.

K is d_ff x d, so K K^T (d_ff x d_ff) has rank <= min(d_ff, d): its eigenvalues are those of the
smaller Gram matrix (K^T K, d x d, for d_ff >= d), padded with exact zeros up to d_ff. They come
from ``eigvalsh`` of that Gram matrix in float64 on the weight's device (the squared singular
values of K to ~1e-12 relative of lambda_max), never from an eig of the d_ff x d_ff matrix. Per site:
  ratio_minmax    lambda_max / smallest 'non-zero' lambda, non-zero meaning
                  lambda > ratio_threshold x mean(lambda) (SpectralObservationPlugin, 0.1)
  ratio80         the figure notebook's ratio: over log10 lambda of the eigenvalues above
                  ``nonzero_above`` (0.1), a histogram of ``bins`` (100) equal bins on
                  [log10 nonzero_above, log10 lambda_max]; the narrowest run of contiguous bins
                  holding >= ``mass`` (80%) of them; ratio80 = 10^(its width)
  near_zero_rate  fraction of the d_ff eigenvalues <= nonzero_above
Arrays ``spectrum``: ``layer_<i>`` = all d_ff eigenvalues of site i, descending.
``part`` picks the matrix: ``key`` (default; in a gated block the gate W_g, whose rows the activation
acts on, the K of the theory), ``up`` (a gated block's up projection W_u; refused on plain blocks) or
``inputs`` (the block's input projections stacked, [W_g; W_u] of a gated block, 2 d_ff x d; K itself
on a plain block), docs/paper.md §1.7.
A standalone measurement (``measure_every``, ``at_end``, post hoc); reads weights only.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .base import Probe, layer_rows


def key_eigenvalues(weight: torch.Tensor) -> np.ndarray:
    """Eigenvalues of W W^T (W: out x in), descending, as float64 numpy: ``eigvalsh`` of the smaller
    Gram matrix (W^T W when out >= in, else W W^T) in float64 on W's device; the two Gram matrices
    share their non-zero eigenvalues, and the larger side's remaining out - in are exact zeros.
    Rounding can leave a zero eigenvalue of a rank-deficient W slightly negative: clamped at 0."""
    w = weight.detach().double()
    gram = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
    small = torch.linalg.eigvalsh(gram).clamp_(min=0).flip(0).cpu().numpy()
    lam = np.zeros(w.shape[0])
    lam[: len(small)] = small
    return lam


def ratio_minmax(lam: np.ndarray, ratio_threshold: float) -> float:
    nonzero = lam[lam > ratio_threshold * lam.mean()]
    return float(nonzero.max() / nonzero.min()) if len(nonzero) else float("nan")


def ratio80(lam: np.ndarray, nonzero_above: float, bins: int, mass: float) -> float:
    """10^(width of the narrowest contiguous run of histogram bins holding >= mass of the
    eigenvalues above nonzero_above), the histogram spanning [log10 nonzero_above, log10 max]."""
    logs = np.log10(lam[lam > nonzero_above])
    if len(logs) == 0:
        return float("nan")
    lo, hi = math.log10(nonzero_above), float(logs.max())
    if hi <= lo:
        return 1.0
    counts, edges = np.histogram(logs, bins=bins, range=(lo, hi))
    need = mass * len(logs)
    csum = np.concatenate([[0], np.cumsum(counts)])
    best = None
    for width in range(1, bins + 1):  # smallest number of bins first: the first hit is the narrowest
        window = csum[width:] - csum[:-width]
        if (window >= need - 1e-9).any():
            best = width
            break
    return float(10 ** (best * (edges[1] - edges[0])))


class SpectrumProbe(Probe):
    name = "spectrum"
    metrics = ("ratio_minmax", "ratio80", "near_zero_rate")

    def __init__(self, sites, ratio_threshold: float = 0.1, nonzero_above: float = 0.1, bins: int = 100,
                 mass: float = 0.8, save: bool = True, part: str = "key", **kw):
        super().__init__(sites, **kw)
        if part not in ("key", "up", "inputs"):
            raise TypeError(f"part={part!r}; choose key, up or inputs")
        if part == "up" and not all(s.gated for s in sites):
            raise TypeError("part=up needs gated blocks (an up projection); this model's are plain")
        self.part = part
        self.ratio_threshold, self.nonzero_above = float(ratio_threshold), float(nonzero_above)
        self.bins, self.mass, self.save = int(bins), float(mass), bool(save)

    def matrix(self, site):
        if self.part == "inputs":
            return torch.cat([site.weight(p) for p in site.inputs()], dim=0)
        return site.weight(self.part)

    def measure(self, ctx):
        spectra = [key_eigenvalues(self.matrix(site)) for site in self.sites]
        if self.save:
            ctx.recorder.save_arrays(self.name, ctx.step, **{f"layer_{s.index}": lam
                                                            for s, lam in zip(self.sites, spectra)})
        out = list(layer_rows("train", "ratio_minmax", [ratio_minmax(l, self.ratio_threshold) for l in spectra]))
        out += layer_rows("train", "ratio80", [ratio80(l, self.nonzero_above, self.bins, self.mass) for l in spectra])
        out += layer_rows("train", "near_zero_rate", [float(np.mean(l <= self.nonzero_above)) for l in spectra])
        return out
