"""Dead units: a fixed, seeded mask that zeroes a known fraction of every site's hidden units (the study's
planted positive, conf/study/cpu.yaml `mlp_dead`; not a module of the paper).

``modules.dead_units.fraction = f`` kills k = round(f d_ff) units of each site, chosen once by a seeded
permutation (``modules.dead_units.seed`` and the site's index): their output is 0 and their derivative 0,
for every input, from step 0 on. The probes then count, exactly,

    activation sparsity = k/d_ff + (1 - k/d_ff) s_live,      non-zero fraction = (1 - k/d_ff)(1 - s_live),

with s_live the sparsity of the units left alive. Against the same model without the mask (same seed:
same init and batch order) the non-zero fraction falls by the factor (1 - k/d_ff) wherever the live
units keep the reference's sparsity, so the arm's effect is known in advance: -k/d_ff in the paper's
unit (relative change of the non-zero fraction), up to what training does to s_live with k fewer units
(second order for a few percent of 256 units; the study measures it, it does not assume it away).
The intervention acts through training (the dead units pass no gradient, the next layer sees zeros) and
through the probes (zero outputs, flat region), unlike a constant added to finished numbers.
"""
from __future__ import annotations

import torch

from ..activations import SiteActivation
from ..errors import ConfigError


class DeadUnits(SiteActivation):
    """``inner`` with a fixed set of units (last dimension) forced to 0 (output and derivative)."""

    def __init__(self, inner: SiteActivation, fraction: float, seed: int, site: int):
        super().__init__()
        if not 0 <= fraction < 1:
            raise ConfigError(f"modules.dead_units.fraction={fraction}: the share of hidden units to kill, 0 <= f < 1")
        if float(getattr(inner, "rest_value", 0.0)) != 0.0:
            raise ConfigError("modules.dead_units needs an activation whose flat region outputs 0 (a dead unit "
                              f"outputs 0); {type(inner).__name__} rests at {inner.rest_value}")
        self.inner, self.fraction, self.seed, self.site = inner, float(fraction), int(seed), int(site)
        self.zero_tol = inner.zero_tol
        self.register_buffer("dead", None, persistent=False)  # built from the seed at the first forward

    def dead_mask(self, width: int, device) -> torch.Tensor:
        """Boolean (width,): the k = round(fraction x width) dead units, the same for every run of a seed."""
        if self.dead is None or self.dead.numel() != width:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.site)
            k = int(round(self.fraction * width))
            mask = torch.zeros(width, dtype=torch.bool)
            mask[torch.randperm(width, generator=gen)[:k]] = True
            self.dead = mask
        return self.dead.to(device)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a = self.inner(h)
        return a.masked_fill(self.dead_mask(h.shape[-1], h.device), 0.0)

    def flat_region(self, h: torch.Tensor) -> torch.Tensor:
        return self.inner.flat_region(h) | self.dead_mask(h.shape[-1], h.device)

    def derivative(self, h: torch.Tensor) -> torch.Tensor:
        return self.inner.derivative(h).masked_fill(self.dead_mask(h.shape[-1], h.device), 0.0)

    def set_step(self, step: int) -> None:
        self.inner.set_step(step)

    def extra_repr(self) -> str:
        return f"fraction={self.fraction:g}, seed={self.seed}, site={self.site}"


def kill_units(sites, fraction: float, seed: int) -> None:
    """Wrap every site's activation in DeadUnits (after any activation swap)."""
    for s in sites:
        s.replace("act", DeadUnits(s.act, fraction, seed, s.index))
