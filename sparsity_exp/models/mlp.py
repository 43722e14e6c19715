"""The LayerNorm-ed pure residual MLP of docs/paper.md §4.5.

    z_0 = P flatten(x)                       input projection
    z_l = z_{l-1} + V act(K LN(z_{l-1}) + b)   (value=true: a transformer-style MLP block)
    z_l = z_{l-1} + act(W LN(z_{l-1}) + b)     (value=false: the authors' MNIST MLP, W is width x width)
    z_l = z_{l-1} + V (act(K x~ + b) * (U x~ + c)),  x~ = LN(z_{l-1})   (gated=true, needs value=true:
                                               a gated block, docs/paper.md §1.7)
    logits = H z_L

It is the only model written here; ViT and T5 come from torchvision / transformers.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from ..sites import MLPSite


class MLPBlock(nn.Module):
    def __init__(self, width: int, d_ff: int, act: nn.Module, value: bool, norm_affine: bool, norm_eps: float,
                 gated: bool = False):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=norm_eps, elementwise_affine=norm_affine)
        self.key = nn.Linear(width, d_ff if value else width)
        self.up = nn.Linear(width, d_ff) if gated else None
        self.act = act
        self.value = nn.Linear(d_ff, width) if value else None

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.norm(z)
        u = self.act(self.key(x))
        if self.up is not None:
            u = u * self.up(x)
        if self.value is not None:
            u = self.value(u)
        return z + u


class LNMLP(nn.Module):
    def __init__(
        self,
        in_features: int,
        num_classes: int,
        make_act: Callable[[], nn.Module],
        width: int = 256,
        depth: int = 4,
        d_ff: int = 1024,
        value: bool = False,
        norm_affine: bool = False,
        norm_eps: float = 1e-5,
        final_norm: bool = False,
        gated: bool = False,
    ):
        super().__init__()
        if gated and not value:
            from ..errors import ConfigError

            raise ConfigError("model.gated=true needs model.value=true (a gated block multiplies act(K x) by U x "
                              "and maps the product back with V)")
        self.inp = nn.Linear(in_features, width)
        self.blocks = nn.ModuleList(
            MLPBlock(width, d_ff, make_act(), value, norm_affine, norm_eps, gated) for _ in range(depth)
        )
        self.final_norm = nn.LayerNorm(width, eps=norm_eps, elementwise_affine=norm_affine) if final_norm else None
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.inp(x.flatten(1))
        for block in self.blocks:
            z = block(z)
        if self.final_norm is not None:
            z = self.final_norm(z)
        return self.head(z)


TASK = "classification"  # the batches it takes (models.build_model checks the data against it)


def build(cfg, info, make_act) -> LNMLP:
    return LNMLP(
        in_features=math.prod(info.input_shape),
        num_classes=info.num_classes,
        make_act=make_act,
        width=cfg.width,
        depth=cfg.depth,
        d_ff=cfg.d_ff,
        value=cfg.value,
        norm_affine=cfg.norm_affine,
        norm_eps=cfg.norm_eps,
        final_norm=cfg.final_norm,
        gated=bool(cfg.get("gated", False)),
    )


def sites(model: LNMLP) -> list[MLPSite]:
    out = []
    for i, block in enumerate(model.blocks):
        p = f"blocks.{i}"
        paths = {"norm": f"{p}.norm", "key": f"{p}.key", "act": f"{p}.act",
                 "up": f"{p}.up" if block.up is not None else None,
                 "value": f"{p}.value" if block.value is not None else None}
        out.append(MLPSite(model=model, index=i, name=p, paths=paths))
    return out
