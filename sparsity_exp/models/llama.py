"""LLaMA-style decoder blocks: transformers' ``LlamaModel`` built from a ``LlamaConfig`` at a tiny size
(random init, nothing downloaded), as an image classifier over row tokens (docs/paper.md §1.7).

    tokens = the image's rows (H tokens of C x W pixels), projected to ``hidden_size``
    LlamaModel(inputs_embeds=tokens): causal self-attention with rotary positions, RMS norms, and
    the gated MLP  down_proj(act(gate_proj x~) * up_proj x~)  (SwiGLU with act = SiLU)
    logits = head(final-norm state of the last token)   (the last token sees every row, as
                                                          LlamaForSequenceClassification pools)

Every block's ``mlp.act_fn`` is replaced by the configured SiteActivation: ``activation=silu`` gives
SwiGLU, ``relu`` / ``squared_relu`` / ``jsrelu`` the ReLU-fied gates the sparsity literature studies.
One gated MLP site per decoder layer: norm = ``post_attention_layernorm``, key = ``mlp.gate_proj``,
up = ``mlp.up_proj``, act = ``mlp.act_fn``, value = ``mlp.down_proj`` (stack ``decoder``, names
``decoder.layers.i``). Text data is refused (this wrapper classifies images).
"""
from __future__ import annotations


import torch
from torch import nn

from ..errors import ConfigError
from ..sites import MLPSite


class LlamaClassifier(nn.Module):
    def __init__(self, config, channels: int, height: int, width: int, num_classes: int, make_act):
        super().__init__()
        from transformers import LlamaModel  # heavy: imported by LLaMA runs only

        self.rows = height
        self.embed = nn.Linear(channels * width, config.hidden_size)
        self.decoder = LlamaModel(config)
        for layer in self.decoder.layers:
            layer.mlp.act_fn = make_act()
        self.head = nn.Linear(config.hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.embed(x.permute(0, 2, 1, 3).reshape(b, h, c * w))  # [batch, rows, C*W] -> hidden
        state = self.decoder(inputs_embeds=tokens, use_cache=False).last_hidden_state  # final RMS norm applied
        return self.head(state[:, -1])


TASK = "classification"  # the batches it takes (models.build_model checks the data against it)


def build(cfg, info, make_act) -> LlamaClassifier:
    from transformers import LlamaConfig

    if getattr(info, "task", "classification") != "classification" or len(getattr(info, "input_shape", ())) != 3:
        raise ConfigError("model=llama classifies images (rows as tokens); pick image data (data=digits, "
                          "mnist, fashion_mnist, cifar10) or model=t5_gated_gelu for text")
    channels, height, width = info.input_shape
    heads = int(cfg.num_attention_heads)
    if cfg.hidden_size % heads or (cfg.hidden_size // heads) % 2:
        raise ConfigError(f"model.hidden_size={cfg.hidden_size} must be num_attention_heads={heads} x an even head size")
    config = LlamaConfig(
        vocab_size=1,  # unused: tokens enter as embeddings
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=heads,
        num_key_value_heads=cfg.num_key_value_heads or heads,
        max_position_embeddings=max(height, 8),
        rms_norm_eps=cfg.rms_norm_eps,
        hidden_act="silu",  # the site's activation replaces it
        attention_dropout=cfg.attention_dropout,
        mlp_bias=cfg.mlp_bias,
        use_cache=False,
    )
    config._attn_implementation = "eager"  # no backend-dependent kernels: the same numbers everywhere
    return LlamaClassifier(config, channels, height, width, info.num_classes, make_act)


def sites(model: LlamaClassifier) -> list[MLPSite]:
    from transformers.models.llama.modeling_llama import LlamaMLP

    out = []
    for i, layer in enumerate(model.decoder.layers):
        if not isinstance(layer.mlp, LlamaMLP):
            raise ConfigError(f"decoder.layers.{i}.mlp is a {type(layer.mlp).__name__}, not LlamaMLP: the MLP sites "
                              f"do not describe it")
        p = f"decoder.layers.{i}"
        paths = {"norm": f"{p}.post_attention_layernorm", "key": f"{p}.mlp.gate_proj", "up": f"{p}.mlp.up_proj",
                 "act": f"{p}.mlp.act_fn", "value": f"{p}.mlp.down_proj"}
        out.append(MLPSite(model=model, index=i, name=f"decoder.layers.{i}", paths=paths, stack="decoder"))
    return out


