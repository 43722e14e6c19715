"""Per-neuron statistics (Li et al. 2022, 'lazy neurons'): how often each hidden unit fires.

On every evaluation of the test set (split 'test'), per site:
  mean_firing       mean over units of the firing frequency (fraction of tokens with a != 0)
  dead_units        number of units with frequency <= ``dead_at_most`` (0: never fired)
  always_on_units   number of units with frequency >= ``always_on_at_least`` (1: fired on every token)
Arrays ``neurons``: ``layer_<i>`` = firing frequency of each unit of site i (saved when the probe
is bound to a run, i.e. at every evaluation). 'Fires' means the activation's declared nonzero
output (|a| > 1e-6). Padding tokens are left out. ``train: true`` also counts training batches
(split 'train') at the ``every`` cadence.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from .base import Probe, layer_rows
from .hooks import forward_hooks


class NeuronsProbe(Probe):
    name = "neurons"
    metrics = ("dead_units", "always_on_units", "mean_firing")

    def __init__(self, sites, every: int = 0, train: bool = False, dead_at_most: float = 0.0,
                 always_on_at_least: float = 1.0, **kw):
        super().__init__(sites, every, **kw)
        self.train = bool(train)
        self.dead_at_most, self.always_on_at_least = float(dead_at_most), float(always_on_at_least)
        self._fires: dict = {}  # split -> list per site of [d_ff] counts (device)
        self._tokens: dict = {}  # split -> list per site of token counts (device)

    def _hook(self, split, site):
        def fn(module, args, output):
            fires = ~module.zero_output(output.detach())
            mask = self.ctx.token_mask(site, output)
            fires = fires.reshape(-1, fires.shape[-1])
            if mask is not None:
                fires = fires[mask.reshape(-1)]
            counts = self._fires.setdefault(split, [None] * len(self.sites))
            tokens = self._tokens.setdefault(split, [0] * len(self.sites))
            c = fires.sum(0, dtype=torch.float64)
            counts[site.index] = c if counts[site.index] is None else counts[site.index] + c
            tokens[site.index] += fires.shape[0]
        return fn

    @contextmanager
    def observe(self, split: str):
        if split == "train" and not self.train:
            yield
            return
        with forward_hooks((s.act, self._hook(split, s)) for s in self.sites):
            yield

    def accumulators(self, split: str) -> list:
        """Firing counts and token counts, as device tensors, for the sum over ranks (DDP)."""
        counts = self._fires.get(split)
        if counts is None or any(c is None for c in counts):
            return []
        self._tokens[split] = [torch.as_tensor(n, dtype=torch.float64, device=c.device)
                               for c, n in zip(counts, self._tokens[split])]
        return counts + self._tokens[split]

    def rows(self, split: str):
        counts, tokens = self._fires.pop(split, None), self._tokens.pop(split, None)
        if counts is None:
            return []
        freqs = [(c / max(1.0, float(n))).cpu().numpy() if c is not None else None for c, n in zip(counts, tokens)]
        freqs = [f for f in freqs if f is not None]
        if len(freqs) != len(self.sites):
            return []
        name = self.name if split == "test" else f"{self.name}_{split}"
        self.save_arrays(name, **{f"layer_{s.index}": f for s, f in zip(self.sites, freqs)})
        out = list(layer_rows(split, "mean_firing", [float(f.mean()) for f in freqs]))
        out += layer_rows(split, "dead_units", [float((f <= self.dead_at_most).sum()) for f in freqs])
        out += layer_rows(split, "always_on_units", [float((f >= self.always_on_at_least).sum()) for f in freqs])
        return out
