"""Model registry: ``build_model`` makes a model from config, ``find_sites`` lists its MLP sites.

A new architecture is one module with ``build(cfg, info, make_act)`` and ``sites(model)``,
registered below; every probe and intervention then works on it through the sites.
"""
from __future__ import annotations

from torch import nn

from ..activations import build_activation
from ..errors import ConfigError
from ..sites import MLPSite
from . import mlp

# name -> (module with build/sites, model class the sites function understands)
MODELS = {"mlp": (mlp, mlp.LNMLP)}


def build_model(model_cfg, info, activation_cfg) -> nn.Module:
    name = model_cfg.name
    if name not in MODELS:
        raise ConfigError(f"model.name={name!r} is unknown; choose one of {sorted(MODELS)}")
    module, _ = MODELS[name]
    return module.build(model_cfg, info, lambda: build_activation(activation_cfg))


def find_sites(model: nn.Module) -> list[MLPSite]:
    for module, cls in MODELS.values():
        if isinstance(model, cls):
            return module.sites(model)
    raise TypeError(f"no MLP-site function is registered for {type(model).__name__}")
