"""Capture of one MLP block's tensors and their gradients during a forward/backward, for probes.

For every site it records, as [rows, features] matrices (rows = samples x tokens, padding tokens
left out when the task marks them on ``masks``, a ProbeContext; see masking.py):

    x     input of the key layer (the normed block input, x~ in docs/paper.md §1)
    h     pre-activation (input of the activation)
    a     activation output
    v     input of the value layer V (``value_inputs``): a after whatever sits between the activation
          and V (dropout in ViT and T5 blocks), i.e. what V actually multiplies; None without V
  and, after the backward, the gradients of the loss
    eta   dL/dh   (the 'effective gradient')
    g     dL/da
    gz    dL/dz at the block output z = V a (+ b_V); for a value-free block z is a itself, so gz = g
    gu    dL/du at the output u = U x~ of a gated block's up projection (docs/paper.md §1.7); never
          awaited on a plain block (it stays None there)

In a gated block (``site.gated``) a is the gate's output act(K x~), g = dL/da = (dL/dp) * u with
p = a * u the product V reads (v is p after dropout), and eta = sigma'(h) * g as in a plain block.

Gradients come from tensor hooks registered from forward hooks, so the training step's own
backward (or a ``torch.autograd.grad`` call in a standalone measurement) delivers them: no extra
backward is run. Once every gradient a probe asked for has arrived, ``on_record(site, rec)`` is
called. Gradients are those of the loss the caller differentiates, usually the batch-mean loss;
``rec.samples`` (dim 0 of the activation) lets a probe rescale to per-sample gradients.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

GRADS = ("eta", "g", "gz", "gu")


@dataclass
class Record:
    samples: int  # dim 0 of the activation: the number of samples in the batch
    mask: Optional[torch.Tensor]  # bool over the leading dims of a, None when every row counts
    x: Optional[torch.Tensor] = None
    h: Optional[torch.Tensor] = None
    a: Optional[torch.Tensor] = None
    v: Optional[torch.Tensor] = None
    eta: Optional[torch.Tensor] = None
    g: Optional[torch.Tensor] = None
    gz: Optional[torch.Tensor] = None
    gu: Optional[torch.Tensor] = None
    missing: set = field(default_factory=set)


def rows_of(t: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """[batch, (tokens...,) features] -> [rows, features], padding rows dropped."""
    flat = t.detach().reshape(-1, t.shape[-1])
    return flat if mask is None else flat[mask.reshape(-1)]


@contextmanager
def capture(sites, on_record: Callable, grads=(), inputs: bool = False, with_activation: bool = True,
            masks=None, value_inputs: bool = False):
    """Within the block, every forward of every site produces a ``Record``; ``on_record(site, rec)``
    is called when its forward is done (no grads asked) or when all of ``grads`` have arrived.

    ``grads``: a subset of ('eta', 'g', 'gz'). ``inputs``: also record the key input x.
    ``masks``: the probe's ``ProbeContext`` (its ``token_mask``); None = every row counts.
    ``value_inputs``: also record V's input v (needs ``grads``: it arrives after the activation's
    forward, so only a record delivered after the backward has it)."""
    grads = tuple(grads)
    unknown = set(grads) - set(GRADS)
    if unknown:
        raise ValueError(f"unknown gradient(s) {sorted(unknown)}; choose from {GRADS}")
    pending: dict[int, Record] = {}  # site index -> record of the current forward
    awaiting_v: dict[int, Record] = {}  # site index -> record whose V input is still to come
    key_inputs: dict[int, torch.Tensor] = {}
    awaiting_u: dict[int, Record] = {}  # site index -> record whose dL/du is still to come (gated)

    def deliver(site, rec, name, grad):
        setattr(rec, name, rows_of(grad, rec.mask))
        rec.missing.discard(name)
        if not rec.missing:
            on_record(site, rec)

    def key_hook(site):
        def fn(module, args):
            key_inputs[site.index] = args[0]
        return fn

    def act_hook(site):
        def fn(module, args, output):
            h = args[0]
            mask = None if masks is None else masks.token_mask(site, output)
            rec = Record(samples=int(output.shape[0]), mask=mask,
                         missing=set(g for g in grads if g != "gu" or site.gated))
            if with_activation:
                rec.h, rec.a = rows_of(h, mask), rows_of(output, mask)
            if inputs:
                x = key_inputs.pop(site.index, None)
                rec.x = None if x is None else rows_of(x, mask)
            if not grads:
                on_record(site, rec)
                return
            if value_inputs and site.value is not None:
                awaiting_v[site.index] = rec
            if not torch.is_grad_enabled() or not output.requires_grad:
                return  # no backward will come (evaluation): nothing to deliver
            if "eta" in grads:
                h.register_hook(lambda gr: deliver(site, rec, "eta", gr))
            if "g" in grads or ("gz" in grads and site.value is None):
                output.register_hook(lambda gr: _deliver_g(site, rec, gr))
            if "gz" in grads and site.value is not None:
                pending[site.index] = rec
            if "gu" in grads and site.gated:
                awaiting_u[site.index] = rec
        return fn

    def up_hook(site):  # the up projection runs after the gate in every gated block
        def fn(module, args, output):
            rec = awaiting_u.pop(site.index, None)
            if rec is not None and output.requires_grad:
                output.register_hook(lambda gr: deliver(site, rec, "gu", gr))
        return fn

    def _deliver_g(site, rec, gr):
        if "gz" in rec.missing and site.value is None:  # value-free block: z is a itself
            deliver(site, rec, "gz", gr)
        if "g" in rec.missing:
            deliver(site, rec, "g", gr)

    def value_hook(site):
        def fn(module, args, output):
            rec = pending.pop(site.index, None)
            if rec is not None and output.requires_grad:
                output.register_hook(lambda gr: deliver(site, rec, "gz", gr))
        return fn

    def value_input_hook(site):
        def fn(module, args):
            rec = awaiting_v.pop(site.index, None)
            if rec is not None:
                rec.v = rows_of(args[0], rec.mask)
        return fn

    with ExitStack() as stack:
        for s in sites:
            if value_inputs and s.value is not None:
                handle = s.value.register_forward_pre_hook(value_input_hook(s))
                stack.callback(handle.remove)
            if inputs:
                handle = s.key.register_forward_pre_hook(key_hook(s))
                stack.callback(handle.remove)
            handle = s.act.register_forward_hook(act_hook(s))
            stack.callback(handle.remove)
            if "gz" in grads and s.value is not None:
                handle = s.value.register_forward_hook(value_hook(s))
                stack.callback(handle.remove)
            if "gu" in grads and s.gated:
                handle = s.up.register_forward_hook(up_hook(s))
                stack.callback(handle.remove)
        yield
