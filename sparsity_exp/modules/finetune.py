"""Sparsity finetuning (docs/paper.md §4.3-4.4): start from an earlier run's weights, optionally through
LoRA adapters (peft), with a fresh optimizer and schedule.

The starting model is built by ``assemble.py`` (``source_model``): ``protocol.init`` names a run
folder (its newest checkpoint is used; the model is rebuilt from that run's ``config.yaml``, so its
model and activation settings win over this run's) or a checkpoint file (rebuilt from its run
folder's config.yaml when the file sits in ``<run>/checkpoints/``, else from this run's model and
activation settings). ``init.json`` in the new run records what was used. Here: the LoRA adapters.

LoRA on attention (``targets: all_linear``), as the authors' loralib ``MergedLinear(enable_lora=[True,
True, True])`` on the fused q/k/v projection: q, k and v each get their own rank-r adapter, so the
update of the packed ``in_proj_weight`` [3d, d] is [B_q A_q; B_k A_k; B_v A_v] x alpha / r (rank <= r
per block, <= 3r in all; 3 r (d_in + d_out / 3) = 6 r d parameters). peft cannot give this: its LoRA
on a packed projection (its MultiheadAttention layer, or rank_pattern) is one rank-r B A for all three.
So torchvision's ``nn.MultiheadAttention``, whose forward reads ``in_proj_weight`` and
``out_proj.weight`` directly (a wrapper around out_proj would be bypassed), is adapted in weight space
with ``torch.nn.utils.parametrize``: ``in_proj_weight`` (or q/k/v_proj_weight when the embedding sizes
differ) and ``out_proj.weight`` become base + low-rank delta, computed at each access, differentiable,
the base frozen (``...parametrizations.<weight>.original``; adapters ``...parametrizations.<weight>.0.
lora_A / lora_B``). ``merge_attention_lora`` folds the deltas into plain weights. Every other Linear
(MLP, head; T5's separate q, k, v and o Linears, so rank r each there already) goes through peft.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ConfigError


class BlockLoRA(nn.Module):
    """Parametrization W -> W + (alpha / r) [B_1 A_1; ...; B_p A_p] of a weight [p * d_out, d_in]
    stacked from ``parts`` blocks, each with its own rank-r adapter (A_i [r, d_in], B_i [d_out, r]);
    A kaiming-uniform and B zero at the start (the delta is 0), as loralib and peft initialise."""

    def __init__(self, weight: torch.Tensor, rank: int, alpha: float, parts: int = 1):
        super().__init__()
        out, d_in = weight.shape
        if out % parts:
            raise ConfigError(f"a weight of {out} rows cannot be split into {parts} LoRA blocks")
        self.lora_A = nn.Parameter(weight.new_empty(parts, rank, d_in))
        self.lora_B = nn.Parameter(weight.new_zeros(parts, out // parts, rank))
        with torch.no_grad():
            for block in self.lora_A:
                nn.init.kaiming_uniform_(block, a=math.sqrt(5))
        self.scaling = float(alpha) / rank

    def delta(self) -> torch.Tensor:
        return torch.bmm(self.lora_B, self.lora_A).reshape(-1, self.lora_A.shape[-1]) * self.scaling

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta()


def _adapt_attention(mha: nn.MultiheadAttention, rank: int, alpha: float) -> None:
    """Rank r on each of q, k, v (and on out_proj) of one torchvision/PyTorch attention module."""
    if mha._qkv_same_embed_dim:
        parametrize.register_parametrization(mha, "in_proj_weight", BlockLoRA(mha.in_proj_weight, rank, alpha, 3))
    else:
        for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
            parametrize.register_parametrization(mha, name, BlockLoRA(getattr(mha, name), rank, alpha, 1))
    parametrize.register_parametrization(mha.out_proj, "weight", BlockLoRA(mha.out_proj.weight, rank, alpha, 1))


def merge_attention_lora(model: nn.Module) -> None:
    """Fold the attention adapters into plain weights (base + delta), in place: the same function,
    no parametrization left (for export or inference)."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations):
                if any(isinstance(p, BlockLoRA) for p in module.parametrizations[name]):
                    parametrize.remove_parametrizations(module, name, leave_parametrized=True)


def _lora_target_names(model: nn.Module, sites, targets: str) -> list[str]:
    if targets == "mlp":
        return [s.paths[p] for s in sites for p in s.linears()]  # key, up (gated), value
    if targets != "all_linear":
        raise ConfigError(f"protocol.lora.targets={targets!r}; choose all_linear or mlp")
    # every nn.Linear, as the paper's LoRA did, and every nn.MultiheadAttention (torchvision's ViT) as a
    # whole: its forward reads in_proj_weight and out_proj.weight directly, so it is adapted in weight
    # space (_adapt_attention, rank r per q/k/v); the Linears inside it are left to that
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
    attention = [n for n in names if isinstance(model.get_submodule(n), nn.MultiheadAttention)]
    if attention and float(lora_cfg.dropout or 0) > 0:
        raise ConfigError(f"protocol.lora.dropout={lora_cfg.dropout}: the attention adapters act on the weights "
                          "(rank r per q/k/v), where input dropout has no place; set protocol.lora.dropout=0, "
                          "or protocol.lora.targets=mlp")
    linears = [n for n in names if n not in attention]
    if linears:
        config = LoraConfig(r=rank, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                            target_modules=linears, bias="none")
        inject_adapter_in_model(config, model)  # in place: paths stay, sites see the adapted layers
    for name in attention:
        _adapt_attention(model.get_submodule(name), rank, lora_cfg.alpha)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name or name.endswith("bias"))
    for module in model.modules():
        if "Norm" in type(module).__name__ and isinstance(getattr(module, "weight", None), nn.Parameter):
            module.weight.requires_grad_(True)
    return names
