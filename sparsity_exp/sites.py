"""The MLP-site view: the one seam between models, modules and probes.

A site names the parts of one MLP block by their dotted path inside the model:

    norm   the norm feeding the block (LayerNorm or T5's / LLaMA's RMS norm), may be None
    key    first linear K (d -> d_ff); in a gated block the gate projection W_g
    up     the up projection W_u of a gated block (d -> d_ff), None in a plain block
    act    the activation module (in a gated block: applied to the gate, a = act(x W_g))
    value  second linear V (d_ff -> d), the down projection W_d of a gated block; None in the plain
           residual MLP variant

Two block forms, told apart by ``site.gated`` (docs/paper.md §1.7):

    plain   z = V act(K x~)                     V's input v = a (after dropout)
    gated   z = V (act(K x~) * (U x~))          V's input v = a * u (after dropout), u = U x~

``check_sites`` verifies at start-up, on one real batch, that every site's parts compute its block
output this way; a model whose blocks the seam cannot describe is refused with the reason.

Parts are looked up live through the paths, so a module that replaces a part (activation swap,
weight-noise wrapper, LoRA) is seen at once by every probe. ``replace`` is the only way to
rewrite a site.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

PARTS = ("norm", "key", "up", "act", "value")
LINEARS = ("key", "up", "value")  # the block's linear maps, in the order of the forward


def is_lora(module: nn.Module) -> bool:
    """A linear adapted by peft's LoRA (a base layer plus low-rank deltas)."""
    return hasattr(module, "get_base_layer") and hasattr(module, "get_delta_weight")


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight matrix ``module`` applies: for a LoRA-adapted linear the frozen base weight plus
    the active adapters' deltas, else its own weight."""
    if is_lora(module):
        weight = module.get_base_layer().weight
        for name in module.active_adapters:
            if name in getattr(module, "lora_A", {}):
                weight = weight + module.get_delta_weight(name)
        return weight
    return module.weight


@dataclass
class MLPSite:
    model: nn.Module = field(repr=False)
    index: int  # 0-based over all sites of the model (encoder first, then decoder)
    name: str  # stable dotted path of the block, e.g. "blocks.2" or "decoder.block.3"
    paths: dict  # part -> dotted path inside model (None where absent)
    stack: str = "block"  # "block" (plain models), "encoder" or "decoder"

    def part(self, which: str) -> Optional[nn.Module]:
        path = self.paths.get(which)
        if path is None:
            return None
        # live lookup, walked through the child dictionaries: probes resolve parts on every observed
        # step, and nn.Module.get_submodule's generic attribute path costs ~6 us a part (measured on a 2-core VM)
        module = self.model
        for name in path.split("."):
            module = module._modules.get(name)
            if module is None:
                return self.model.get_submodule(path)  # not a plain child chain: its own lookup (and error)
        return module

    @property
    def norm(self) -> Optional[nn.Module]:
        return self.part("norm")

    @property
    def key(self) -> nn.Module:
        return self.part("key")

    @property
    def act(self) -> nn.Module:
        return self.part("act")

    @property
    def value(self) -> Optional[nn.Module]:
        return self.part("value")

    @property
    def up(self) -> Optional[nn.Module]:
        return self.part("up")

    @property
    def gated(self) -> bool:
        """A gated block (gate, up, activation, down): V multiplies act(K x~) * (U x~)."""
        return self.paths.get("up") is not None

    def linears(self) -> list[str]:
        """The names of the block's linear parts that exist: key, (up,) (value)."""
        return [p for p in LINEARS if self.paths.get(p) is not None]

    def inputs(self) -> list[str]:
        """The linear parts that read the block input x~: the key, and the up projection of a gated block."""
        return [p for p in ("key", "up") if self.paths.get(p) is not None]

    def weight(self, which: str = "key"):
        """The weight matrix that part ``which`` applies: with a LoRA adapter (peft) the frozen base
        weight plus the adapter's delta, so weight probes see what the model computes."""
        return effective_weight(self.part(which))

    def replace(self, which: str, module: nn.Module) -> nn.Module:
        """Put ``module`` in place of part ``which``; returns the module it replaced."""
        path = self.paths[which]
        if path is None:
            raise KeyError(f"site {self.name} has no {which}")
        parent_path, _, attr = path.rpartition(".")
        parent = self.model.get_submodule(parent_path) if parent_path else self.model
        old = getattr(parent, attr)
        setattr(parent, attr, module)
        return old


def describe(sites: list[MLPSite]) -> str:
    return "\n".join(
        f"[{s.index}] {s.stack}:{s.name} ({'gated' if s.gated else 'plain'}) "
        + " ".join(f"{p}={s.paths.get(p)}" for p in PARTS) for s in sites
    )


def check_sites(model: nn.Module, sites: list[MLPSite], forward, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Refuse (``ConfigError``) a model whose MLP blocks the sites do not describe, so that no probe
    measures it wrongly: ``forward()`` runs one evaluation-mode forward of the model on a real batch,
    and for every site the output of V (or of the activation, without V) must equal the form the site
    declares, recomputed from its parts on the input the key received: V(act(K x~)) for a plain block,
    V(act(K x~) * U x~) for a gated one, where U must read the same x~ as K. The reasons it names: no
    forward reached a part, a part that is no linear map, an up projection fed another input, or
    outputs that differ (a block computing something else, e.g. a gated block described as plain)."""
    from .errors import ConfigError

    problems = []
    for site in sites:
        for p in ("key", "act"):
            if site.paths.get(p) is None:
                problems.append(f"site {site.name}: no {p}")
        for p in site.linears():
            m = site.part(p)
            if not isinstance(m, nn.Linear) and not is_lora(m):
                problems.append(f"site {site.name}: part {p} ({type(m).__name__}) is not a linear map")
    if problems:
        raise ConfigError("the model's MLP blocks cannot be described as sites: " + "; ".join(problems))
    seen: dict = {}

    def keep(name, i, which):
        def fn(module, args, output=None):
            seen[(i, which)] = (args[0].detach(), None if output is None else output.detach())
        return fn

    handles = []
    try:
        for site in sites:
            handles.append(site.key.register_forward_pre_hook(keep("key", site.index, "key")))
            if site.gated:
                handles.append(site.up.register_forward_pre_hook(keep("up", site.index, "up")))
            last = site.value if site.value is not None else site.act
            handles.append(last.register_forward_hook(keep("out", site.index, "out")))
        was_training = model.training
        # the check must not move any random state (a DataLoader iterator draws a seed): runs keep the
        # numbers they had without it
        cuda = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=cuda):
                forward()
        finally:
            model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        for site in sites:
            if (site.index, "key") not in seen or (site.index, "out") not in seen:
                problems.append(f"site {site.name}: the forward never reached its key and "
                                f"{'value' if site.value is not None else 'activation'}")
                continue
            x = seen[(site.index, "key")][0]
            got = seen[(site.index, "out")][1]
            a = site.act(site.key(x))
            if site.gated:
                xu = seen.get((site.index, "up"), (None,))[0]
                if xu is None or xu.shape != x.shape or not torch.allclose(xu, x, rtol=rtol, atol=atol):
                    problems.append(f"site {site.name}: the up projection does not read the key's input x~")
                    continue
                a = a * site.up(x)
            want = site.value(a) if site.value is not None else a
            if want.shape != got.shape or not torch.allclose(want.float(), got.float(), rtol=rtol, atol=atol):
                diff = (want.float() - got.float()).abs().max().item() if want.shape == got.shape else "shape"
                form = "V(act(K x) * U x)" if site.gated else ("V(act(K x))" if site.value is not None else "act(K x)")
                problems.append(f"site {site.name}: its block does not compute {form} from its parts "
                                f"(max difference {diff}); a block of another form (a gate the site does not "
                                f"name, a second projection, an expert router) needs its own site description")
    if problems:
        raise ConfigError("the model's MLP blocks cannot be described as sites (they would be measured wrongly): "
                          + "; ".join(problems) + ". Describe the block in the model's sites() "
                          "(sparsity_exp/models/, docs/paper.md §1.7) or pick another model")
