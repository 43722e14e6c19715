"""Activation and derivative sparsity (PAPER.md §1.1, §1.2).

Per MLP site, over every entry (samples x tokens x d_ff) of one observation:
  activation_sparsity  fraction of activation outputs with |a| <= 1e-6 (the paper's
                       'activation concentration'; Li et al.'s nonzero % is 1 - this)
  derivative_sparsity  fraction of pre-activations h in the activation's zero-derivative region
  derivative2          mean sigma'(h)^2
  rest_fraction        fraction of outputs equal to the activation's flat-region value (s_y of the
                       shifted activation); written only when some site's value is not 0, where it
                       would repeat activation_sparsity
Entries of padding tokens are left out when the task marks them (``ctx.token_mask``, probes/masking.py).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from ..activations import SiteActivation
from .base import Probe, layer_rows
from .hooks import forward_hooks

_ZEROS, _FLAT, _DERIV2, _COUNT, _REST = range(5)


class SparsityProbe(Probe):
    name = "sparsity"

    def __init__(self, sites, every: int = 0, test: bool = True, **kw):
        super().__init__(sites, every, **kw)
        self.test = test
        self._stats = {}  # split -> tensor [n_sites, 4] on the activations' device
        for s in sites:
            if not isinstance(s.act, SiteActivation):
                raise TypeError(f"site {s.name}: activation {type(s.act).__name__} does not declare its regions")

    def _hook(self, split: str, site):
        i = site.index

        def fn(module, inputs, output):
            h, a = inputs[0].detach(), output.detach()
            stats = self._stats.get(split)
            if stats is None:
                stats = self._stats[split] = torch.zeros(len(self.sites), 5, dtype=torch.float64, device=a.device)
            mask = self.ctx.token_mask(site, a)
            if mask is None:
                stats[i, _ZEROS] += module.zero_output(a).sum()
                stats[i, _FLAT] += module.flat_region(h).sum()
                stats[i, _DERIV2] += module.derivative(h).double().pow(2).sum()
                stats[i, _COUNT] += a.numel()
                stats[i, _REST] += module.at_rest(a).sum()
            else:  # padding tokens do not count
                m = mask.unsqueeze(-1)
                stats[i, _ZEROS] += (module.zero_output(a) & m).sum()
                stats[i, _FLAT] += (module.flat_region(h) & m).sum()
                stats[i, _DERIV2] += (module.derivative(h).double().pow(2) * m).sum()
                stats[i, _COUNT] += mask.sum() * a.shape[-1]
                stats[i, _REST] += (module.at_rest(a) & m).sum()
        return fn

    @contextmanager
    def observe(self, split: str):
        if split == "test" and not self.test:
            yield
            return
        with forward_hooks((s.act, self._hook(split, s)) for s in self.sites):
            yield

    def rows(self, split: str):
        stats = self._stats.pop(split, None)
        if stats is None:
            return []
        s = stats.cpu()  # the one host synchronisation of this probe
        count = s[:, _COUNT].clamp(min=1)
        out = []
        out += layer_rows(split, "activation_sparsity", (s[:, _ZEROS] / count).tolist())
        out += layer_rows(split, "derivative_sparsity", (s[:, _FLAT] / count).tolist())
        out += layer_rows(split, "derivative2", (s[:, _DERIV2] / count).tolist())
        if any(getattr(site.act, "rest_value", 0.0) != 0.0 for site in self.sites):
            out += layer_rows(split, "rest_fraction", (s[:, _REST] / count).tolist())
        return out
