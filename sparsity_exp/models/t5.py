"""T5: transformers' ``T5ForConditionalGeneration`` built from a ``T5Config`` (random init, nothing
downloaded), with the ReLU feed-forward of the original T5 / ``t5-base`` (docs/paper.md §4.4), or,
with ``model.feed_forward_proj=gated-gelu|gated-relu``, T5 v1.1's gated feed-forward
(``T5DenseGatedActDense``: wo(act(wi_0 x) * wi_1 x), docs/paper.md §1.7).

Every feed-forward block's activation (``DenseReluDense.act``) is replaced by the configured
SiteActivation (the preset picks the one its ``feed_forward_proj`` names; T5 v1.1's ``gelu_new`` is
the tanh approximation, the project's ``gelu`` the exact erf one). One MLP site per feed-forward
block: norm = the layer's T5 RMS norm, key = ``wi`` (the gate ``wi_0`` when gated, up = ``wi_1``),
value = ``wo``. Encoder sites come first (indices 0..L-1, stack "encoder", names
``encoder.block.i``), then decoder sites (L..L+M-1, stack "decoder", names ``decoder.block.j``),
the order of the paper's T5 layer indices.
"""
from __future__ import annotations

from ..errors import ConfigError
from ..sites import MLPSite

# Position of T5LayerFF inside a T5Block: after self-attention (encoder), after cross-attention (decoder).
_FF_LAYER = {"encoder": 1, "decoder": 2}


TASK = "seq2seq"  # the batches it takes (models.build_model checks the data against it)


def build(cfg, info, make_act):
    from transformers import T5Config, T5ForConditionalGeneration  # heavy: imported by T5 runs only

    vocab = cfg.vocab_size or getattr(info, "vocab_size", None)
    if not vocab:
        raise ConfigError("model=t5 needs token data (data=text or data=c4) or an explicit model.vocab_size")
    if getattr(info, "vocab_size", None) and vocab < info.vocab_size:
        raise ConfigError(f"model.vocab_size={vocab} is smaller than the tokenizer's {info.vocab_size}; "
                          f"set model.vocab_size=null to follow the tokenizer")
    config = T5Config(
        vocab_size=vocab,
        d_model=cfg.d_model,
        d_kv=cfg.d_kv,
        d_ff=cfg.d_ff,
        num_layers=cfg.num_layers,
        num_decoder_layers=cfg.num_decoder_layers,
        num_heads=cfg.num_heads,
        relative_attention_num_buckets=cfg.relative_attention_num_buckets,
        relative_attention_max_distance=cfg.relative_attention_max_distance,
        dropout_rate=cfg.dropout,
        layer_norm_epsilon=cfg.layer_norm_epsilon,
        feed_forward_proj=_ff_proj(cfg),  # its gating; the site's activation replaces its function below
        tie_word_embeddings=cfg.tie_word_embeddings,
        pad_token_id=getattr(info, "pad_id", 0),
        eos_token_id=getattr(info, "eos_id", 1),
        decoder_start_token_id=getattr(info, "pad_id", 0),  # T5 starts decoding from the pad id
        use_cache=False,
    )
    model = T5ForConditionalGeneration(config)
    for stack, layer in _FF_LAYER.items():
        for block in getattr(model, stack).block:
            block.layer[layer].DenseReluDense.act = make_act()
    return model


FF_PROJ = ("relu", "gated-gelu", "gated-relu")


def _ff_proj(cfg) -> str:
    proj = str(cfg.get("feed_forward_proj", "relu") or "relu")
    if proj not in FF_PROJ:
        raise ConfigError(f"model.feed_forward_proj={proj!r}; choose one of {list(FF_PROJ)}")
    return proj


def sites(model) -> list[MLPSite]:
    from transformers.models.t5.modeling_t5 import T5DenseActDense, T5DenseGatedActDense

    out = []
    for stack, layer in _FF_LAYER.items():
        for j in range(len(getattr(model, stack).block)):
            name = f"{stack}.block.{j}"
            ff = f"{name}.layer.{layer}"
            dense = model.get_submodule(f"{ff}.DenseReluDense")
            if isinstance(dense, T5DenseGatedActDense):
                paths = {"key": f"{ff}.DenseReluDense.wi_0", "up": f"{ff}.DenseReluDense.wi_1"}
            elif isinstance(dense, T5DenseActDense):
                paths = {"key": f"{ff}.DenseReluDense.wi", "up": None}
            else:
                raise ConfigError(f"{ff}.DenseReluDense is a {type(dense).__name__}, a T5 feed-forward the MLP sites "
                                  f"do not describe (known: T5DenseActDense, T5DenseGatedActDense)")
            paths.update({"norm": f"{ff}.layer_norm", "act": f"{ff}.DenseReluDense.act",
                          "value": f"{ff}.DenseReluDense.wo"})
            out.append(MLPSite(model=model, index=len(out), name=name, paths=paths, stack=stack))
    return out
