"""Probe registry. ``build_probes(cfg.probes, sites)`` makes one probe per entry of the config's
``probes`` mapping (name -> settings); ``probes=none`` gives an empty mapping."""
from __future__ import annotations

from ..errors import ConfigError
from .base import Probe, layer_rows, observing
from .sparsity import SparsityProbe

PROBES: dict[str, type[Probe]] = {SparsityProbe.name: SparsityProbe}


def build_probes(cfg, sites) -> list[Probe]:
    probes = []
    for name, settings in (cfg or {}).items():
        if name not in PROBES:
            raise ConfigError(f"probes.{name} is not a known probe; known probes: {sorted(PROBES)}")
        probes.append(PROBES[name](sites, **dict(settings or {})))
    return probes


__all__ = ["PROBES", "Probe", "build_probes", "layer_rows", "observing"]
