"""Probe registry. ``build_probes(cfg.probes, sites, context)`` makes one probe per entry of the
config's ``probes`` mapping (name -> settings), all sharing ``context``; ``probes=none`` gives an
empty mapping. ``ProbeSet`` (probes/base.py) drives them. A new probe is one file here plus its
line in ``PROBES`` (and its settings in conf/probes/full.yaml)."""
from __future__ import annotations

from ..errors import ConfigError
from .base import Probe, ProbeContext, ProbeSet, layer_rows, observing
from .diagonality import DiagonalityProbe
from .flatness import AugmentedFlatnessProbe
from .gradients import GradientDensityProbe, GradientsProbe
from .hessian import HessianProbe
from .magnitude import MagnitudeProbe
from .neurons import NeuronsProbe
from .rmt import RMTProbe
from .sharpness import SharpnessProbe
from .sparsity import SparsityProbe
from .spectrum import SpectrumProbe

PROBES: dict[str, type[Probe]] = {
    cls.name: cls
    for cls in (SparsityProbe, GradientsProbe, GradientDensityProbe, AugmentedFlatnessProbe, HessianProbe,
                SharpnessProbe, SpectrumProbe, RMTProbe, NeuronsProbe, DiagonalityProbe, MagnitudeProbe)
}


def build_probes(cfg, sites, context: ProbeContext | None = None) -> list[Probe]:
    context = context if context is not None else ProbeContext(sites=list(sites))
    probes = []
    for name, settings in (cfg or {}).items():
        if name not in PROBES:
            raise ConfigError(f"probes.{name} is not a known probe; known probes: {sorted(PROBES)}")
        try:
            probes.append(PROBES[name](sites, context=context, **dict(settings or {})))
        except TypeError as exc:  # an unknown or mistyped setting
            raise ConfigError(f"probes.{name}: {exc}; see conf/probes/full.yaml for its settings") from exc
    return probes


__all__ = ["PROBES", "Probe", "ProbeContext", "ProbeSet", "build_probes", "layer_rows", "observing"]
