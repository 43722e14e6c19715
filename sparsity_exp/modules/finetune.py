"""Sparsity finetuning (PAPER.md §4.3-4.4): start from an earlier run's weights, optionally through
LoRA adapters (peft), with a fresh optimizer and schedule.

The starting model is built by ``assemble.py`` (``source_model``): ``protocol.init`` names a run
folder (its newest checkpoint is used; the model is rebuilt from that run's ``config.yaml``, so its
model and activation settings win over this run's) or a checkpoint file (rebuilt from its run
folder's config.yaml when the file sits in ``<run>/checkpoints/``, else from this run's model and
activation settings). ``init.json`` in the new run records what was used. Here: the LoRA adapters.
"""
from __future__ import annotations

from torch import nn

from ..errors import ConfigError


def _lora_target_names(model: nn.Module, sites, targets: str) -> list[str]:
    if targets == "mlp":
        return [s.paths[p] for s in sites for p in ("key", "value") if s.paths.get(p)]
    if targets != "all_linear":
        raise ConfigError(f"protocol.lora.targets={targets!r}; choose all_linear or mlp")
    # every nn.Linear, as the paper's LoRA did, and every nn.MultiheadAttention (torchvision's ViT) as a
    # whole: its forward reads in_proj_weight and out_proj.weight directly, so peft adapts the module
    # itself (LoRA on the packed q/k/v projection and on out_proj); the Linears inside it are left to that
    mha = [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    inside_mha = {f"{n}.{c}" for n in mha for c, _ in model.get_submodule(n).named_modules() if c}
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in inside_mha] + mha


def add_lora(model: nn.Module, sites, lora_cfg) -> list[str]:
    """LoRA adapters (peft) on the target linears; trainable afterwards: LoRA weights, every bias,
    every norm weight (the zeroth biases, made later, are trainable too). Returns the adapted names."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise ConfigError("LoRA finetuning needs peft: pip install 'sparsity-exp[lora]' (or peft), or set "
                          "protocol.lora.enabled=false for full finetuning") from None

    rank = int(lora_cfg.rank)
    if rank <= 0:
        raise ConfigError(f"protocol.lora.rank={rank} must be positive (or protocol.lora.enabled=false)")
    names = _lora_target_names(model, sites, lora_cfg.targets)
    config = LoraConfig(r=rank, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout, target_modules=names,
                        bias="none")
    inject_adapter_in_model(config, model)  # in place: paths stay, sites see the adapted layers
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name or name.endswith("bias"))
    for module in model.modules():
        if "Norm" in type(module).__name__ and isinstance(getattr(module, "weight", None), nn.Parameter):
            module.weight.requires_grad_(True)
    return names
