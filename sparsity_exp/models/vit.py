"""Vision Transformer: torchvision's ``VisionTransformer`` built from config (docs/paper.md §4.1, §4.3).

Module surgery only, no copy of the architecture:
  * each encoder block's MLP activation (``mlp[1]``, GELU in torchvision) is replaced by the
    configured SiteActivation (ReLU for the paper's ``relu_vit_b_16``);
  * the patch projection takes as many input channels as the data has, so grayscale images
    enter as one channel instead of being copied three times.

One MLP site per encoder block: norm = ``ln_2``, key = ``mlp[0]``, act = ``mlp[1]``,
value = ``mlp[3]`` (``mlp[2]``/``mlp[4]`` are dropouts).
"""
from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from ..sites import MLPSite


TASK = "classification"  # the batches it takes (models.build_model checks the data against it)


def build(cfg, info, make_act):
    from torchvision.models.vision_transformer import VisionTransformer

    channels, height, width = info.input_shape
    image_size = cfg.image_size or height
    if height != width or height != image_size:
        raise ConfigError(
            f"model.image_size={image_size} but the data gives {height}x{width} images; set model.image_size=null "
            f"to follow the data, or pick data whose transforms resize to {image_size} (e.g. data.image_size={image_size})"
        )
    if image_size % cfg.patch_size:
        raise ConfigError(f"model.patch_size={cfg.patch_size} must divide the image size {image_size}")
    model = VisionTransformer(
        image_size=image_size,
        patch_size=cfg.patch_size,
        num_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        hidden_dim=cfg.hidden_dim,
        mlp_dim=cfg.mlp_dim,
        dropout=cfg.dropout,
        attention_dropout=cfg.attention_dropout,
        num_classes=cfg.num_classes or info.num_classes,
    )
    if channels != 3:  # same init as torchvision's (lecun-normal-like trunc normal, zero bias)
        old = model.conv_proj
        model.conv_proj = nn.Conv2d(channels, cfg.hidden_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        fan_in = channels * cfg.patch_size ** 2
        nn.init.trunc_normal_(model.conv_proj.weight, std=(1.0 / fan_in) ** 0.5)
        nn.init.zeros_(model.conv_proj.bias)
        del old
    for layer in model.encoder.layers:
        layer.mlp[1] = make_act()
    return model


def sites(model) -> list[MLPSite]:
    out = []
    for i, (name, _) in enumerate(model.encoder.layers.named_children()):
        p = f"encoder.layers.{name}"
        paths = {"norm": f"{p}.ln_2", "key": f"{p}.mlp.0", "act": f"{p}.mlp.1", "value": f"{p}.mlp.3"}
        out.append(MLPSite(model=model, index=i, name=p, paths=paths, stack="encoder"))
    return out
