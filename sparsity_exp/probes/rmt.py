"""Random-matrix quantities of the Marchenko-Pastur experiment (PAPER.md §1.6, §4.5; the authors'
CovariancePlugin in marchenko_pastur/mnist.py, and after_training/mp.py).

Per site, running covariances accumulated over training with weight-decay forgetting:
    C <- r_t C + C_t,   r_t = 1 - lr_t * wd,   C_t = mean over step t's rows of u u^T
for u = the key layer's input x~ ('input', p = d; the authors' 'sample') and u = dL/da, the gradient
at the hidden layer's output ('grad'; their 'gradient'); uncentered, like the authors' default. With
``every: 1`` (the paper presets) every step's batch enters C with that step's lr and wd, read from
the optimizer's param group holding the key weight, exactly the authors' recursion; micro-batches of
one step (gradient accumulation) are averaged into that step's C_t. With ``every: k > 1`` only every
k-th batch enters and C decays by r^k between observations (a subsample: the anisotropy floor of
isotropic data then grows ~sqrt(k), so use ``every: 1`` for numbers to compare with the paper).
The update stays on the device (no host synchronisation); only ``rows`` reads values back.

    a = tr C / ||C||_F^2;  alpha = tr(aC);  anisotropy = ||aC - I||_F sqrt(p)
    rel_anisotropy_* = anisotropy / p;      alpha_* = alpha / p          (the authors' 'ratio' tags)
    T = steps since the probe's first observation, inclusive (mp.py's step axis)
    T_eff = ceil(log(thr (1 - r)) / log r - 1)     (inf without weight decay)
    inv_c = B min(T, T_eff) / p                     (the authors' logged inv_c; B = rows per batch)
    c = p / (T B)                                   (mp.py: T NOT capped at T_eff; ``cap_t_eff: true`` caps it)
    common = sqrt(c + (2 sqrt2 + 3) c alpha / v + c anisotropy / v + c / (v p))
    bound_re = sqrt2 / (c sqrt v) alpha common;  bound_im = sqrt2 / (c v sqrt v) alpha^2 common
The bound uses the input ('sample') covariance's relative alpha and anisotropy, as mp.py computes it
(`compute_bounds(..., 'sample')`: the 'ratio' tables, c from the step column, not the logged inv_c).
Direction: bound_re = sqrt(2 (1 + ((2 sqrt2 + 3) alpha + anisotropy)/v + 1/(v p)) / v) alpha sqrt(T B / p),
so at fixed alpha and anisotropy it GROWS like sqrt(T); it falls only where alpha (and anisotropy)
fall faster than 1/sqrt(T). ``thr`` (1e-3) and ``v`` (1e-2) come from config. Online only.
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
    metrics = ("rel_anisotropy_input", "rel_anisotropy_grad", "alpha_input", "alpha_grad", "bound_re", "bound_im",
               "t_eff", "inv_c")
    posthoc = False  # the running covariances need the whole training trajectory

    def __init__(self, sites, every: int = 0, thr: float = 1e-3, v: float = 1e-2, cap_t_eff: bool = False, **kw):
        super().__init__(sites, every, **kw)
        self.thr, self.v = float(thr), float(v)
        self.cap_t_eff = bool(cap_t_eff)
        self._c_in = [None] * len(sites)
        self._c_grad = [None] * len(sites)
        self._last_step = None  # step of the previous observation
        self._first_step = None
        self._decay = 1.0  # what C is multiplied by before this observation's batch enters
        self._r = 1.0
        self._batch_rows = 0
        self._accum = 1

    # The running covariances span the whole run: a checkpoint keeps them so a resumed run goes on
    # with the same sums (lifecycle/checkpoint.py saves every probe's state_dict).
    _STATE = ("_c_in", "_c_grad", "_last_step", "_first_step", "_decay", "_r", "_batch_rows")

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in self._STATE}

    def load_state_dict(self, state: dict) -> None:
        for k in self._STATE:
            setattr(self, k, state[k])

    def _training_state(self) -> tuple[int, float, float, int]:
        """(step, lr, weight decay, micro-batches per step) of the step being observed, from the
        probe's context (lr and wd of the param group holding the first key weight)."""
        lr, wd = self.ctx.lr_wd(self.sites[0].key.weight)
        return int(self.ctx.step), lr, wd, int(self.ctx.grad_accum or 1)

    def _begin(self):
        step, lr, wd, self._accum = self._training_state()
        self._r = 1.0 - lr * wd
        # every step observed (every: 1): one factor r_t, this step's own; a subsample decays by
        # r_t^k for the k steps since the previous observation (their lrs are not seen)
        k = 0 if self._last_step is None else step - self._last_step
        self._decay = self._r**k
        self._last_step = step
        if self._first_step is None:
            self._first_step = step
        self._decayed = set()

    def _add(self, store, i, u):
        # The batch's u^T u in the activations' precision (float32: a third of float64's cost on a CPU),
        # summed into a float64 running C: the sum over 10^5 steps keeps its digits. One decay per
        # observation, then the mean over the step's rows (micro-batches each count 1/accum); python
        # scalars only, so no host synchronisation.
        outer = u.T @ u
        weight = 1.0 / (max(1, u.shape[0]) * self._accum)
        if store[i] is None:
            store[i] = torch.zeros(outer.shape, dtype=torch.float64, device=outer.device)
        elif (id(store), i) not in self._decayed:
            store[i].mul_(self._decay)
        store[i].add_(outer, alpha=weight)
        self._decayed.add((id(store), i))

    def on_record(self, site, rec):
        self._add(self._c_in, site.index, rec.x.float())
        self._add(self._c_grad, site.index, rec.g.float())
        self._batch_rows = rec.x.shape[0] * self._accum

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
        steps = self._last_step - self._first_step + 1
        cols = {k: [] for k in ("rel_anisotropy_input", "alpha_input", "rel_anisotropy_grad", "alpha_grad",
                                "bound_re", "bound_im")}
        for i in range(len(self.sites)):
            an_in, al_in = anisotropy_alpha(self._c_in[i])
            an_g, al_g = anisotropy_alpha(self._c_grad[i])
            re, im = mp_bound(self._c_in[i].shape[0], min(steps, t_eff) if self.cap_t_eff else steps,
                              self._batch_rows, al_in, an_in, self.v)
            for k, v in zip(cols, (an_in, al_in, an_g, al_g, re, im)):
                cols[k].append(v)
        out = []
        for k, vals in cols.items():
            out += layer_rows(split, k, vals)
        out.append((split, "t_eff", "avg", t_eff))
        p = self._c_in[0].shape[0]
        out.append((split, "inv_c", "avg", self._batch_rows * min(steps, t_eff) / p))
        return out
