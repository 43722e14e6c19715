"""Random-matrix quantities of the Marchenko-Pastur experiment (docs/paper.md §1.6, §4.5; the authors'
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

Batched update (speed; the same C): an observation does not touch C. Its rows are kept on the
device, each scaled by sqrt(w / P_t) (w = 1 / (rows x micro-batches), P_t = the product of the
decays d_1..d_t since the last fold), and ``rows`` (or a checkpoint, or ``max_pending_rows`` kept
rows) folds them in with one product: C <- P_n (C + X^T X), which is the recursion
C <- d_t C + w U_t^T U_t unrolled, since P_n / P_t = prod_{s>t} d_s. One large product replaces a
p x p outer product and a float64 p x p update per site per step. X^T X runs in the activations'
precision (float32; on a CPU as BLAS's symmetric rank-k update, half the work, written into one
reused p x p array) and is summed into the float64 C. C is symmetric, so only its lower triangle is
kept up to date (the rest of the stored matrix is ignored): ``covariances``, ``rows`` and a
checkpoint see the whole symmetric matrix, rebuilt from that triangle.

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

import numpy as np
import torch

from .base import Probe, layer_rows
from .capture import rows_of


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


def _gram(x: torch.Tensor, out: dict) -> torch.Tensor:
    """X^T X in x's precision, of which only the LOWER triangle (diagonal included) is meant: on a CPU
    through BLAS's symmetric rank-k update (scipy's ?syrk: half a general product's work, the upper
    triangle left zero), written into a p x p array kept in ``out`` (by p and dtype) and reused from
    fold to fold instead of allocated each time (measured: ~2-5% of a syrk's time, more at larger p);
    elsewhere the whole product (its upper triangle equal to the lower). Valid until the next call."""
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        from scipy.linalg.blas import dsyrk, ssyrk

        syrk = ssyrk if x.dtype == torch.float32 else dsyrk
        p = x.shape[1]
        # x^T (rows x p, C order) is p x rows in Fortran order: no copy; the Fortran-order upper
        # triangle of the result is the lower one of its C-order transpose
        a = x.contiguous().numpy().T
        c = out.get((p, x.dtype))
        if c is None:  # zeros: the triangle syrk never writes stays zero
            c = out[(p, x.dtype)] = np.zeros((p, p), dtype=a.dtype, order="F")
        return torch.from_numpy(syrk(1.0, a, beta=0.0, c=c, trans=0, overwrite_c=1).T)
    return x.T @ x


def symmetric(lower: torch.Tensor) -> torch.Tensor:
    """The symmetric matrix whose lower triangle (diagonal included) is ``lower``'s."""
    return lower.tril() + lower.tril(-1).T


class RMTProbe(Probe):
    name = "rmt"
    metrics = ("rel_anisotropy_input", "rel_anisotropy_grad", "alpha_input", "alpha_grad", "bound_re", "bound_im",
               "t_eff", "inv_c")
    posthoc = False  # the running covariances need the whole training trajectory

    def __init__(self, sites, every: int = 0, thr: float = 1e-3, v: float = 1e-2, cap_t_eff: bool = False,
                 max_pending_rows: int = 4096, **kw):
        super().__init__(sites, every, **kw)
        self.thr, self.v = float(thr), float(v)
        self.cap_t_eff = bool(cap_t_eff)
        self.max_pending_rows = int(max_pending_rows)  # rows kept per covariance before a fold (memory bound)
        self._c_in = [None] * len(sites)
        self._c_grad = [None] * len(sites)
        self._pending = {}  # (store name, site index) -> [scaled rows] not in a buffer, since the last fold
        # (store name, site index) -> float32 [capacity, p]: the scaled rows written in place, reused
        # from fold to fold (no allocation per observation); _filled: rows in it since the last fold
        self._buffers, self._filled = {}, {}
        self._pending_rows = 0  # rows kept for the first site's input covariance
        self._gram_out = {}  # (p, dtype) -> the p x p array the CPU Gram product is written into, reused
        self._since_fold = 1.0  # P_t: product of the decays of the observations since the last fold
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
        self._fold()
        state = {k: getattr(self, k) for k in self._STATE}
        for k in ("_c_in", "_c_grad"):  # whole symmetric matrices: the checkpoint's format does not depend on the fold
            state[k] = [None if c is None else symmetric(c) for c in state[k]]
        return state

    def load_state_dict(self, state: dict) -> None:
        for k in self._STATE:
            setattr(self, k, state[k])
        self._pending, self._filled, self._pending_rows, self._since_fold = {}, {}, 0, 1.0

    def covariances(self) -> tuple[list, list]:
        """The running (input, grad) covariances per site, float64, with every observation folded in."""
        self._fold()
        return ([None if c is None else symmetric(c) for c in self._c_in],
                [None if c is None else symmetric(c) for c in self._c_grad])

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
        if (self._pending or self._filled) and (self._pending_rows >= self.max_pending_rows or self._since_fold * self._decay < 1e-3):
            self._fold()  # bounded memory; and 1 / P_t stays small enough for float32 rows
        self._since_fold *= self._decay

    def _add(self, name: str, i: int, u: torch.Tensor) -> None:
        # the rows scaled by sqrt(w / P_t), copied (the activation or gradient may be reused later)
        # into this covariance's buffer; python scalars only, so no host synchronisation
        weight = 1.0 / (max(1, u.shape[0]) * self._accum)
        scale = math.sqrt(weight / self._since_fold)
        key, n = (name, i), u.shape[0]
        used = self._filled.get(key, 0)
        buf = self._buffers.get(key)
        if buf is None or used + n > buf.shape[0] or buf.shape[1:] != u.shape[1:] or buf.device != u.device:
            limit = self.max_pending_rows + n  # a fold comes before the kept rows pass max_pending_rows
            if used + n > limit or u.dtype != torch.float32:  # one observation larger than the bound:
                self._pending.setdefault(key, []).append(u * scale)  # kept apart, folded at the next step
                return
            grown = u.new_empty((min(limit, max(used + n, 2 * (0 if buf is None else buf.shape[0]))), *u.shape[1:]))
            if used:
                grown[:used].copy_(buf[:used])
            self._buffers[key] = buf = grown
        torch.mul(u, scale, out=buf[used:used + n])
        self._filled[key] = used + n

    def _fold(self) -> None:
        """C <- P (C + X^T X) for every covariance with kept rows, P the decays since the last fold.
        The one large product per covariance; X^T X in float32 (as the per-batch products were), summed
        into the float64 C, whose sum over 10^5 steps keeps its digits."""
        if not (self._pending or self._filled):
            return
        for key in list(self._filled) + [k for k in self._pending if k not in self._filled]:
            name, i = key
            parts = ([self._buffers[key][:self._filled[key]]] if self._filled.get(key) else []) + \
                self._pending.get(key, [])
            store = self._c_in if name == "input" else self._c_grad
            product = _gram(parts[0] if len(parts) == 1 else torch.cat(parts), self._gram_out)
            if store[i] is None:
                store[i] = product.to(torch.float64).mul_(self._since_fold)
            else:  # C <- (C + X^T X) P, in this order (a checkpoint's sums stay those of earlier runs, bit for bit)
                store[i].add_(product).mul_(self._since_fold)
        self._pending, self._filled, self._pending_rows, self._since_fold = {}, {}, 0, 1.0

    def _observed(self, site, x: torch.Tensor, output: torch.Tensor) -> None:
        """A training forward of ``site``: its key input's rows now, dL/da's rows when the backward
        delivers them (padding rows left out, as capture.py does; no Record, the per-step cost)."""
        if not torch.is_grad_enabled() or not output.requires_grad:
            return  # no backward will come
        mask = self.ctx.token_mask(site, output)
        rows = rows_of(x, mask)
        self._add("input", site.index, rows.float())
        output.register_hook(lambda g: self._add("grad", site.index, rows_of(g, mask).float()))
        if site.index == self.sites[0].index:
            self._pending_rows += rows.shape[0]
        self._batch_rows = rows.shape[0] * self._accum

    @contextmanager
    def observe(self, split: str):
        if split != "train":
            yield
            return
        self._begin()
        inputs = {}
        handles = []
        try:
            for s in self.sites:
                handles.append(s.key.register_forward_pre_hook(
                    lambda m, args, i=s.index: inputs.__setitem__(i, args[0])))
                handles.append(s.act.register_forward_hook(
                    lambda m, args, out, site=s: self._observed(site, inputs.pop(site.index), out)))
            yield
        finally:
            for h in handles:
                h.remove()

    def rows(self, split: str):
        if split != "train":
            return []
        self._fold()
        if self._c_in[0] is None:
            return []
        t_eff = effective_memory(self._r, self.thr)
        steps = self._last_step - self._first_step + 1
        cols = {k: [] for k in ("rel_anisotropy_input", "alpha_input", "rel_anisotropy_grad", "alpha_grad",
                                "bound_re", "bound_im")}
        c_in, c_grad = self.covariances()
        for i in range(len(self.sites)):
            an_in, al_in = anisotropy_alpha(c_in[i])
            an_g, al_g = anisotropy_alpha(c_grad[i])
            re, im = mp_bound(c_in[i].shape[0], min(steps, t_eff) if self.cap_t_eff else steps,
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
