"""Model registry: ``build_model`` makes a model from config, ``find_sites`` lists its MLP sites.

A new architecture is one module with ``build(cfg, info, make_act)`` and ``sites(model)``,
registered below; every probe and intervention then works on it through the sites.
"""
from __future__ import annotations

import sys

from torch import nn

from ..activations import build_activation
from ..errors import ConfigError
from ..sites import MLPSite
from . import llama, mlp, t5, vit

# name -> (module with build/sites, model class the sites function understands). A class may be
# given as "module:Class" so that heavy libraries (transformers) are imported only by runs using them.
MODELS = {
    "mlp": (mlp, mlp.LNMLP),
    "vit": (vit, "torchvision.models.vision_transformer:VisionTransformer"),
    "t5": (t5, "transformers.models.t5.modeling_t5:T5ForConditionalGeneration"),
    "llama": (llama, llama.LlamaClassifier),
}


def build_model(model_cfg, info, activation_cfg) -> nn.Module:
    name = model_cfg.name
    if name not in MODELS:
        raise ConfigError(f"model.name={name!r} is unknown; choose one of {sorted(MODELS)}")
    module, _ = MODELS[name]
    task = getattr(module, "TASK", None)  # the batches the model takes: classification (images) or seq2seq (tokens)
    if task is not None and task != info.task:
        wants = "image batches (data=digits, mnist, fashion_mnist, cifar10, cifar100, imagenet)" \
            if task == "classification" else "token sequences (data=text or c4)"
        raise ConfigError(f"model={name} takes {wants}, but the data gives {info.task} batches: pick such data, "
                          f"or a model for it (" + ("model=t5 for text" if task == "classification"
                                                    else "model=mlp, vit or llama for images") + ")")
    return module.build(model_cfg, info, lambda: build_activation(activation_cfg))


def _loaded_class(cls):
    """The class itself, or None when it is named by a module that was never imported (then no
    model of that class can exist)."""
    if not isinstance(cls, str):
        return cls
    module, _, attr = cls.partition(":")
    return getattr(sys.modules[module], attr) if module in sys.modules else None


def find_sites(model: nn.Module) -> list[MLPSite]:
    for module, cls in MODELS.values():
        cls = _loaded_class(cls)
        if cls is not None and isinstance(model, cls):
            return module.sites(model)
    raise ConfigError(f"no MLP-site function is registered for {type(model).__name__}: the model's blocks cannot "
                      f"be described as sites, so no probe can measure it; register it in MODELS "
                      f"(sparsity_exp/models/__init__.py, README 'Extending')")
