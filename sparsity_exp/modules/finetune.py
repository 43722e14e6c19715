"""Sparsity finetuning (PAPER.md §4.3-4.4): start from an earlier run's weights, optionally through
LoRA adapters (peft), with a fresh optimizer and schedule.

``protocol.init`` names a run folder (its newest checkpoint is used; the model is rebuilt from that
run's ``config.yaml``, so its model and activation settings win over this run's) or a checkpoint file
(rebuilt from its run folder's config.yaml when the file sits in ``<run>/checkpoints/``, else from
this run's model and activation settings). ``init.json`` in the new run records what was used.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf
from torch import nn

from ..checkpoint import CHECKPOINT_DIR, list_checkpoints, load_checkpoint
from ..errors import ConfigError
from ..models import build_model


def resolve_init(init) -> tuple[Path, Path | None]:
    """(checkpoint file, run folder or None) named by ``protocol.init``."""
    if init in (None, ""):
        raise ConfigError("protocol=sparsity_finetune needs protocol.init=<run folder or checkpoint file> "
                          "(e.g. a folder under results/ written by an earlier `sparsity-exp run`)")
    path = Path(str(init)).expanduser()
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise ConfigError(f"protocol.init={init}: the folder has no {CHECKPOINT_DIR}/step_*.pt; give a run folder "
                              f"written by `sparsity-exp run` (checkpoints are saved at the end of every run) "
                              f"or a checkpoint file")
        return found[-1][1], path
    if path.is_file():
        run = path.parent.parent
        return path, run if path.parent.name == CHECKPOINT_DIR and (run / "config.yaml").is_file() else None
    raise ConfigError(f"protocol.init={init}: no such run folder or checkpoint file")


def _modified(src_cfg) -> list[str]:
    """What in a source run's config changed the model's parameters (such runs cannot be rebuilt here)."""
    out = []
    mods = src_cfg.get("modules") or {}
    if (mods.get("zeroth_bias") or {}).get("enabled"):
        out.append("modules.zeroth_bias")
    if (mods.get("restricted_norm") or {}).get("enabled"):
        out.append("modules.restricted_norm")
    if (src_cfg.get("protocol") or {}).get("name") == "sparsity_finetune":
        out.append("protocol=sparsity_finetune")
    return out


def build_source_model(cfg, info) -> tuple[nn.Module, dict]:
    """The model of the finetuning source, with its weights loaded; and a record of where it came from."""
    ckpt, run = resolve_init(cfg.protocol.init)
    src_cfg = OmegaConf.load(run / "config.yaml") if run is not None else cfg
    changed = _modified(src_cfg) if run is not None else []
    if changed:
        raise ConfigError(f"protocol.init={cfg.protocol.init}: that run used {', '.join(changed)}, whose extra "
                          f"parameters cannot be rebuilt here; finetune from a run trained with modules=none")
    model = build_model(src_cfg.model, info, src_cfg.activation)
    state = load_checkpoint(ckpt)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as exc:
        raise ConfigError(f"checkpoint {ckpt} does not fit the model rebuilt from "
                          f"{run / 'config.yaml' if run else 'this run’s model settings'} "
                          f"(different data or model?): {str(exc).splitlines()[0]}") from None
    record = {"init": str(cfg.protocol.init), "checkpoint": str(ckpt), "checkpoint_step": int(state["step"]),
              "source_run": str(run) if run else None,
              "model": OmegaConf.to_container(src_cfg.model, resolve=True),
              "activation": OmegaConf.to_container(src_cfg.activation, resolve=True)}
    return model, record


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
