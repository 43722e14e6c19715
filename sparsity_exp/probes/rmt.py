"""Random-matrix quantities of the Marchenko-Pastur experiment (PAPER.md §1.6, §4.5; the authors'
CovariancePlugin and mp.py).

Per site, running covariances accumulated over training with weight-decay forgetting:
    C <- r^k C + C_batch,   r = 1 - lr * wd,   C_batch = mean over the batch's rows of u u^T
for u = the key layer's input x~ ('input', p = d) and u = dL/da, the gradient at the hidden layer's
output ('grad', p = d_ff); uncentered, like the authors' default. k is the number of optimizer
steps since the previous observation: the probe sees the training batches of its ``every``
cadence, a subsample of the steps, which changes C by a scale only (all metrics are scale-free).
lr and wd are read from the optimizer's param group holding the key weight at each observation.

    a = tr C / ||C||_F^2;  alpha = tr(aC);  anisotropy = ||aC - I||_F sqrt(p)
    rel_anisotropy_* = anisotropy / p;      alpha_* = alpha / p
    T_eff = ceil(log(thr (1 - r)) / log r - 1)     (inf without weight decay)
    c = p / (T B), T = min(steps accumulated, T_eff) (the authors' inv_c), B = rows per batch
    common = sqrt(c + (2 sqrt2 + 3) c alpha / v + c anisotropy / v + c / (v p))
    bound_re = sqrt2 / (c sqrt v) alpha common;  bound_im = sqrt2 / (c v sqrt v) alpha^2 common
The bound uses the input ('sample') covariance and the relative alpha and anisotropy, as mp.py
plots it; ``thr`` (1e-3) and ``v`` (1e-2) come from config. Online only (no post-hoc meaning).
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch

from .base import Probe, layer_rows
from .capture import capture


def anisotropy_alpha(c: torch.Tensor) -> tuple[float, float]:
    """(relative anisotropy ||aC - I||_F sqrt(p) / p, relative alpha tr(aC) / p), a = tr C / ||C||_F^2."""
    p = c.shape[-1]
    fro2 = c.pow(2).sum()
    if fro2 <= 0:
        return float("nan"), float("nan")
    a = c.diagonal().sum() / fro2
    ac = a * c
    aniso = (ac - torch.eye(p, dtype=c.dtype, device=c.device)).norm() * math.sqrt(p)
    return float(aniso / p), float(ac.diagonal().sum() / p)


def effective_memory(r: float, thr: float) -> float:
    if r >= 1.0:
        return math.inf
    if r <= 0.0:
        return 1.0
    return float(math.ceil(math.log(thr * (1 - r)) / math.log(r) - 1))


def mp_bound(p: int, steps: float, batch: int, alpha: float, anisotropy: float, v: float) -> tuple[float, float]:
    c = p / (steps * batch)
    common = math.sqrt(c + (2 * math.sqrt(2) + 3) * c * alpha / v + c * anisotropy / v + c / (v * p))
    return (math.sqrt(2) / (c * math.sqrt(v)) * alpha * common,
            math.sqrt(2) / (c * v * math.sqrt(v)) * alpha**2 * common)


class RMTProbe(Probe):
    name = "rmt"
    posthoc = False  # the running covariances need the whole training trajectory

    def __init__(self, sites, every: int = 0, thr: float = 1e-3, v: float = 1e-2, **kw):
        super().__init__(sites, every, **kw)
        self.thr, self.v = float(thr), float(v)
        self._c_in = [None] * len(sites)
        self._c_grad = [None] * len(sites)
        self._last_step = None  # step of the previous observation
        self._first_step = None
        self._decay = 1.0  # r^k for the current observation
        self._r = 1.0
        self._batch_rows = 0

    # The running covariances span the whole run: a checkpoint keeps them so a resumed run goes on
    # with the same sums (lifecycle/checkpoint.py saves every probe's state_dict).
    _STATE = ("_c_in", "_c_grad", "_last_step", "_first_step", "_decay", "_r", "_batch_rows")

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in self._STATE}

    def load_state_dict(self, state: dict) -> None:
        for k in self._STATE:
            setattr(self, k, state[k])

    def _lr_wd(self) -> tuple[float, float]:
        return self.ctx.lr_wd(self.sites[0].key.weight)  # the param group holding the key weight

    def _begin(self):
        step = int(self.ctx.step)
        lr, wd = self._lr_wd()
        self._r = 1.0 - lr * wd
        k = 0 if self._last_step is None else step - self._last_step
        self._decay = self._r**k
        self._last_step = step
        if self._first_step is None:
            self._first_step = step
        self._decayed = set()

    def _add(self, store, i, u):
        cov = (u.T @ u) / max(1, u.shape[0])
        if store[i] is None:
            store[i] = cov
        else:
            if (id(store), i) not in self._decayed:  # decay once per observation, then add the batch(es)
                store[i].mul_(self._decay)
            store[i] += cov
        self._decayed.add((id(store), i))

    def on_record(self, site, rec):
        self._add(self._c_in, site.index, rec.x.double())
        self._add(self._c_grad, site.index, rec.g.double())
        self._batch_rows = rec.x.shape[0]

    @contextmanager
    def observe(self, split: str):
        if split != "train":
            yield
            return
        self._begin()
        with capture(self.sites, self.on_record, grads=("g",), inputs=True, with_activation=False, masks=self.ctx):
            yield

    def rows(self, split: str):
        if split != "train" or self._c_in[0] is None:
            return []
        t_eff = effective_memory(self._r, self.thr)
        steps = min(self._last_step - self._first_step + 1, t_eff)
        cols = {k: [] for k in ("rel_anisotropy_input", "alpha_input", "rel_anisotropy_grad", "alpha_grad",
                                "bound_re", "bound_im")}
        for i in range(len(self.sites)):
            an_in, al_in = anisotropy_alpha(self._c_in[i])
            an_g, al_g = anisotropy_alpha(self._c_grad[i])
            re, im = mp_bound(self._c_in[i].shape[0], steps, self._batch_rows, al_in, an_in, self.v)
            for k, v in zip(cols, (an_in, al_in, an_g, al_g, re, im)):
                cols[k].append(v)
        out = []
        for k, vals in cols.items():
            out += layer_rows(split, k, vals)
        out.append((split, "t_eff", "avg", t_eff))
        return out
