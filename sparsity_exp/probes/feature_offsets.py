"""Offsets on the hidden features of every MLP site during a forward: what the Hessian probe
differentiates w.r.t. (zero leaf offsets) and what the sharpness probe perturbs with (given deltas).

Where, per site: ``input`` the key's input (block input after its norm, a forward pre-hook on K; in
a gated block the same offset reaches the up projection U, which reads the same x~: the offset is
one of the block input, docs/paper.md §1.7),
``preact`` the key's output (pre-activation, a forward hook on K), ``act`` the activation's output
(a forward hook on the activation module). Keys are ``(site index, where)``."""
from __future__ import annotations

from contextlib import ExitStack

import torch

WHERE = ("input", "preact", "act")


class FeatureOffsets:
    """Adds an offset to the features named by ``where`` of every site in ``sites`` while attached.

    ``leaves = True``: each forward adds a fresh zero leaf (requires_grad) and keeps it in
    ``offsets[key]``, so the loss can be differentiated w.r.t. the features where they are (at 0).
    Otherwise ``deltas[key]`` is added where given (nothing where absent). ``record = True`` keeps the
    clean features' per-token norms ``norms[key]`` ([..., 1]) and shapes ``shapes[key]``."""

    def __init__(self, sites, where=("input", "preact"), leaves: bool = False):
        where = (where,) if isinstance(where, str) else tuple(where)
        bad = [w for w in where if w not in WHERE]
        if bad:
            raise ValueError(f"feature offsets at {bad}; choose from {list(WHERE)}")
        self.sites, self.where, self.leaves = sites, where, leaves
        self.offsets: dict = {}  # key -> zero leaf of this forward (leaves=True)
        self.deltas: dict = {}  # key -> offset to add (leaves=False)
        self.norms: dict = {}
        self.shapes: dict = {}
        self.record = False

    def _add(self, key, x):
        if self.record:
            self.norms[key], self.shapes[key] = x.detach().norm(dim=-1, keepdim=True), x.shape
        if self.leaves:
            d = torch.zeros_like(x, requires_grad=True)
            self.offsets[key] = d
            return x + d
        d = self.deltas.get(key)
        return None if d is None else x + d

    def _pre(self, key):
        def fn(module, args):
            out = self._add(key, args[0])
            return None if out is None else (out, *args[1:])
        return fn

    def _same(self, key):
        """The offset the key's hook added in this forward, added again to the up projection's input
        (a gated block: one offset of x~, seen by K and U alike; K runs first in every gated block)."""
        def fn(module, args):
            d = self.offsets.get(key) if self.leaves else self.deltas.get(key)
            return None if d is None else (args[0] + d, *args[1:])
        return fn

    def _post(self, key):
        def fn(module, args, output):
            return self._add(key, output)
        return fn

    def attach(self, stack: ExitStack):
        for s in self.sites:
            for where in self.where:
                key = (s.index, where)
                if where == "input":
                    h = s.key.register_forward_pre_hook(self._pre(key))
                    if s.gated:
                        stack.callback(s.up.register_forward_pre_hook(self._same(key)).remove)
                elif where == "preact":
                    h = s.key.register_forward_hook(self._post(key))
                else:
                    h = s.act.register_forward_hook(self._post(key))
                stack.callback(h.remove)
