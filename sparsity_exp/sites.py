"""The MLP-site view: the one seam between models, modules and probes.

A site names the parts of one MLP block by their dotted path inside the model:

    norm   the norm feeding the block (LayerNorm or T5's RMS norm), may be None
    key    first linear K (d -> d_ff)
    act    the activation module
    value  second linear V (d_ff -> d), None in the plain residual MLP variant

Parts are looked up live through the paths, so a module that replaces a part (activation swap,
weight-noise wrapper, LoRA) is seen at once by every probe. ``replace`` is the only way to
rewrite a site.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

PARTS = ("norm", "key", "act", "value")


def is_lora(module: nn.Module) -> bool:
    """A linear adapted by peft's LoRA (a base layer plus low-rank deltas)."""
    return hasattr(module, "get_base_layer") and hasattr(module, "get_delta_weight")


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight matrix ``module`` applies: for a LoRA-adapted linear the frozen base weight plus
    the active adapters' deltas, else its own weight."""
    if is_lora(module):
        weight = module.get_base_layer().weight
        for name in module.active_adapters:
            if name in getattr(module, "lora_A", {}):
                weight = weight + module.get_delta_weight(name)
        return weight
    return module.weight


@dataclass
class MLPSite:
    model: nn.Module = field(repr=False)
    index: int  # 0-based over all sites of the model (encoder first, then decoder)
    name: str  # stable dotted path of the block, e.g. "blocks.2" or "decoder.block.3"
    paths: dict  # part -> dotted path inside model (None where absent)
    stack: str = "block"  # "block" (plain models), "encoder" or "decoder"

    def part(self, which: str) -> Optional[nn.Module]:
        path = self.paths.get(which)
        return None if path is None else self.model.get_submodule(path)

    @property
    def norm(self) -> Optional[nn.Module]:
        return self.part("norm")

    @property
    def key(self) -> nn.Module:
        return self.part("key")

    @property
    def act(self) -> nn.Module:
        return self.part("act")

    @property
    def value(self) -> Optional[nn.Module]:
        return self.part("value")

    def weight(self, which: str = "key"):
        """The weight matrix that part ``which`` applies: with a LoRA adapter (peft) the frozen base
        weight plus the adapter's delta, so weight probes see what the model computes."""
        return effective_weight(self.part(which))

    def replace(self, which: str, module: nn.Module) -> nn.Module:
        """Put ``module`` in place of part ``which``; returns the module it replaced."""
        path = self.paths[which]
        if path is None:
            raise KeyError(f"site {self.name} has no {which}")
        parent_path, _, attr = path.rpartition(".")
        parent = self.model.get_submodule(parent_path) if parent_path else self.model
        old = getattr(parent, attr)
        setattr(parent, attr, module)
        return old


def describe(sites: list[MLPSite]) -> str:
    return "\n".join(
        f"[{s.index}] {s.stack}:{s.name} " + " ".join(f"{p}={s.paths.get(p)}" for p in PARTS) for s in sites
    )
