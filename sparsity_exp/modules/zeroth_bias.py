"""Zeroth biases (docs/paper.md §3.1, the 'doubly biased' MLP): one trainable bias vector per token
position, zero at init, shared across samples, added to the MLP input after the norm (default) or to
the MLP block output (the value layer's output, before the residual add).

Sequence sites (stack 'encoder'/'decoder') hold B of shape [max_tokens, d] and use its first T rows
for an input of T tokens; plain sites (stack 'block') hold one vector [d]. B is clipped elementwise
to [-c|gamma|, +c|gamma|], gamma the weight of the norm feeding the site (|gamma| = 1 where the norm
has no affine weight or the site has no norm), before every forward and after every backward.

The biases live in the model (``model.zeroth_biases``, one per site), so they are in its state dict
and checkpoints; the hooks that add them are installed again whenever the interventions are applied.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..train import Callback

CONTAINER = "zeroth_biases"  # attribute of the model holding the biases (a ModuleList in site order)


class ZerothBias(nn.Module):
    def __init__(self, shape: tuple, device=None, dtype=None):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(shape, device=device, dtype=dtype))

    @property
    def per_token(self) -> bool:
        return self.bias.dim() == 2

    def add_to(self, u: torch.Tensor) -> torch.Tensor:
        if not self.per_token:
            return u + self.bias
        tokens = u.shape[-2]
        if tokens > self.bias.shape[0]:
            raise RuntimeError(
                f"the zeroth bias holds {self.bias.shape[0]} token positions but the input has {tokens} tokens; "
                f"set modules.zeroth_bias.max_tokens={tokens} (or larger)"
            )
        return u + self.bias[:tokens]


def gamma_abs(norm: nn.Module | None) -> torch.Tensor | float:
    """|gamma| of a norm: its affine weight, or 1 when it has none (e.g. the LN-MLP's non-affine LayerNorm)."""
    weight = getattr(norm, "weight", None) if norm is not None else None
    return weight.detach().abs() if isinstance(weight, torch.Tensor) else 1.0


def _key_input_lengths(sites, sample_forward) -> dict[int, int]:
    """Token count of each site's key input in one forward (the paper infers B's shape at the first forward)."""
    lengths, handles = {}, []

    def record(index):
        def hook(module, args):
            lengths.setdefault(index, args[0].shape[-2] if args[0].dim() >= 3 else 1)
        return hook

    for s in sites:
        handles.append(s.key.register_forward_pre_hook(record(s.index)))
    try:
        sample_forward()
    finally:
        for h in handles:
            h.remove()
    return lengths


class ZerothBiases(Callback):
    """Adds, clips and logs the zeroth biases of every site."""

    def __init__(self, model: nn.Module, sites, placement: str = "input", clip: float | None = 0.1,
                 max_tokens: int | None = None, sample_forward=None):
        if placement not in ("input", "output"):
            raise ConfigError(f"modules.zeroth_bias.placement={placement!r}; choose input or output")
        if clip is not None and clip < 0:
            raise ConfigError(f"modules.zeroth_bias.clip={clip} must be >= 0, or null for no clipping")
        self.sites, self.placement, self.clip = sites, placement, clip
        lengths = {}
        if max_tokens is None and any(s.stack != "block" for s in sites):
            if sample_forward is None:
                raise ConfigError("set modules.zeroth_bias.max_tokens: the token count cannot be inferred here")
            lengths = _key_input_lengths(sites, sample_forward)
        biases = getattr(model, CONTAINER, None)
        if biases is None:
            ref = next(model.parameters())
            biases = nn.ModuleList()
            for s in sites:
                width = s.key.in_features if placement == "input" else self._value(s).out_features
                shape = (width,) if s.stack == "block" else (int(max_tokens or lengths[s.index]), width)
                biases.append(ZerothBias(shape, device=ref.device, dtype=ref.dtype))
            setattr(model, CONTAINER, biases)
        self.biases = list(biases)
        self.handles = []
        for s, b in zip(sites, self.biases):
            if placement == "input":  # after the norm, before K: the key's input (and U's, in a gated block)
                for lin in s.inputs():
                    self.handles.append(s.part(lin).register_forward_pre_hook(
                        lambda mod, args, b=b: (b.add_to(args[0]), *args[1:])))
            else:  # block output: the value's output, before the residual add
                self.handles.append(self._value(s).register_forward_hook(lambda mod, args, out, b=b: b.add_to(out)))
        self.project()

    @staticmethod
    def _value(site):
        if site.value is None:
            raise ConfigError(
                f"modules.zeroth_bias.placement=output needs a value layer, and site {site.name} has none; "
                f"use placement=input (or model.value=true for the LN-MLP)"
            )
        return site.value

    @torch.no_grad()
    def project(self) -> None:
        if self.clip is None:
            return
        for s, b in zip(self.sites, self.biases):
            bound = self.clip * gamma_abs(s.norm)
            if isinstance(bound, torch.Tensor):
                b.bias.copy_(torch.maximum(torch.minimum(b.bias, bound), -bound))
            else:
                b.bias.clamp_(-bound, bound)

    # the paper clips before each forward and after each backward; clipping after the optimizer step
    # as well makes evaluation and checkpoints see clipped values too
    def on_step_start(self, trainer) -> None:
        self.project()

    def after_backward(self, trainer) -> None:
        self.project()

    def after_step(self, trainer) -> None:
        self.project()

    def log_rows(self, trainer) -> list:
        from ..probes.base import layer_rows

        values = [b.bias.detach().abs().mean() for b in self.biases]
        values = torch.stack(values).cpu().tolist()  # one host sync
        return [("modules", *row) for row in layer_rows("train", "zeroth_bias_abs", values)]
