"""Which tokens count. A sequence task marks its real (non-padding) tokens per stack while it runs
the model; token-level probes weigh their statistics with ``token_mask_for(site, x)``.

Plain (non-sequence) models set nothing, and every entry counts."""
from __future__ import annotations

from contextlib import contextmanager

import torch

_MASKS: dict[str, torch.Tensor] = {}


@contextmanager
def token_masks(**masks: torch.Tensor | None):
    """Within the block, ``masks[stack]`` (bool, shape [batch, tokens], True = real token) is the
    mask of the sites of that stack ('encoder', 'decoder', 'block')."""
    previous = dict(_MASKS)
    _MASKS.update({k: v for k, v in masks.items() if v is not None})
    try:
        yield
    finally:
        _MASKS.clear()
        _MASKS.update(previous)


def token_mask_for(site, x: torch.Tensor) -> torch.Tensor | None:
    """The mask for activation-like tensor ``x`` ([batch, tokens, features]) at ``site``, as a bool
    tensor of shape x.shape[:-1]; None when every entry counts."""
    mask = _MASKS.get(site.stack)
    if mask is None or x.dim() != mask.dim() + 1 or tuple(x.shape[:-1]) != tuple(mask.shape):
        return None
    return mask.to(device=x.device, dtype=torch.bool)
