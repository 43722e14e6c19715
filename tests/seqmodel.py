"""A small hand-made sequence model with 'encoder' and 'decoder' MLP sites, for testing that the
interventions work without knowing the model (as on ViT / T5): [batch, tokens, d] inputs, pre-norm
residual MLP blocks with key, activation and value, a gated block (wi_0, wi_1, wo) in the decoder."""
import torch
from torch import nn

from sparsity_exp.activations import ReLU
from sparsity_exp.sites import MLPSite


class Block(nn.Module):
    def __init__(self, d, f, gated=False):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.mlp = nn.Module()
        self.mlp.wi_0 = nn.Linear(d, f)
        self.mlp.wi_1 = nn.Linear(d, f) if gated else None
        self.mlp.act = ReLU()
        self.mlp.wo = nn.Linear(f, d)

    def forward(self, x):
        h = self.mlp.act(self.mlp.wi_0(self.norm(x)))
        if self.mlp.wi_1 is not None:
            h = h * self.mlp.wi_1(self.norm(x))
        return x + self.mlp.wo(h)


class Seq(nn.Module):
    def __init__(self, d=6, f=10, n_enc=2, n_dec=1, vocab=5):
        super().__init__()
        self.embed = nn.Linear(vocab, d)
        self.encoder = nn.ModuleList(Block(d, f) for _ in range(n_enc))
        self.decoder = nn.ModuleList(Block(d, f, gated=True) for _ in range(n_dec))
        self.head = nn.Linear(d, vocab)

    def forward(self, src, tgt):
        z = self.embed(src)
        for b in self.encoder:
            z = b(z)
        y = self.embed(tgt) + z.mean(1, keepdim=True)
        for b in self.decoder:
            y = b(y)
        return self.head(y)


def seq_sites(model):
    out = []
    for stack, blocks in (("encoder", model.encoder), ("decoder", model.decoder)):
        for i, _ in enumerate(blocks):
            p = f"{stack}.{i}"
            out.append(MLPSite(model=model, index=len(out), name=p, stack=stack,
                               paths={"norm": f"{p}.norm", "key": f"{p}.mlp.wi_0", "act": f"{p}.mlp.act",
                                      "value": f"{p}.mlp.wo"}))
    return out
