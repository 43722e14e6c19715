"""Which tokens count. A sequence task names its real (non-padding) tokens per stack
(``task.token_masks(batch)``); the probe driver puts them on the ``ProbeContext`` around the
forward (``ctx.masked``), and token-level probes weigh their statistics with
``ctx.token_mask(site, x)``. Nothing is kept in module state.

Plain (non-sequence) models mark nothing, and every entry counts."""
from __future__ import annotations

import torch


def token_mask_for(masks: dict, site, x: torch.Tensor) -> torch.Tensor | None:
    """``masks[site.stack]`` (bool, shape [batch, tokens], True = real token) for activation-like
    ``x`` ([batch, tokens, features]), as a bool tensor of shape x.shape[:-1]; None when every
    entry counts (no mask for the stack, or shapes that do not match)."""
    mask = masks.get(site.stack)
    if mask is None or x.dim() != mask.dim() + 1 or tuple(x.shape[:-1]) != tuple(mask.shape):
        return None
    return mask.to(device=x.device, dtype=torch.bool)
