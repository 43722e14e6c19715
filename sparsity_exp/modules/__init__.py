"""The paper's interventions (docs/paper.md §3), applied to any model through its MLP sites.

``apply_interventions`` rewrites the sites of a model (built by ``assemble.py``, never here) as the
config says and returns the Trainer callbacks that keep the modules' constraints and schedules and
log their sizes (probe ``modules``):

  modules.activation       swap every site's activation (sparsified: jsrelu; mixed ReLU -> JSReLU
                           over protocol.mixing_steps when finetuning)
  protocol.lora            LoRA adapters through peft (finetuning only)
  modules.restricted_norm  gamma >= 1 (from scratch) or uplift (finetuning)   -> norm_gamma_abs
  modules.zeroth_bias      per-token biases with clipping                    -> zeroth_bias_abs
  noise / protocol=weight_noise   token-wise Gaussian weight noise, training mode only
  (any scheduled activation)      k_t of the mixed activation                -> jsrelu_portion
  modules.dead_units       a fixed seeded mask zeroing a known fraction of units (a study's planted
                           positive, not a paper module: dead_units.py)

All state lives in the model's parameters (state dict, checkpoints); schedules are functions of the
trainer's step, so a resumed run gets them back by applying the interventions again.
"""
from __future__ import annotations

from ..activations import Mixed, ReLU, SiteActivation, build_activation
from ..errors import ConfigError
from ..train import Callback
from .restricted_norm import RestrictedNorm
from .weight_noise import WeightNoise, target_linears
from .zeroth_bias import ZerothBias, ZerothBiases

PROTOCOLS = ("vanilla", "weight_noise", "sparsity_finetune")


def _protocol(cfg) -> str:
    name = (cfg.get("protocol") or {}).get("name", "vanilla")
    if name not in PROTOCOLS:
        raise ConfigError(f"protocol.name={name!r} is unknown; choose one of {list(PROTOCOLS)}")
    return name


class ActivationSchedule(Callback):
    """Tells every scheduled site activation the optimizer step (``set_step``) and logs the JSReLU
    portion. Made after the activations are final (the end of ``apply_interventions``); only the
    sites whose activation has a schedule are visited, so static ones cost nothing per step (a part
    lookup walks the module tree)."""

    def __init__(self, sites):
        self.sites = [s for s in sites if type(s.act).set_step is not SiteActivation.set_step]
        self.sync(0)

    def sync(self, step: int) -> None:
        for s in self.sites:
            s.act.set_step(step)

    def on_step_start(self, trainer) -> None:
        self.sync(trainer.step)

    def after_step(self, trainer) -> None:  # evaluation after step t uses k_t
        self.sync(trainer.step)

    def log_rows(self, trainer) -> list:
        portions = [s.act.jsrelu_portion for s in self.sites if hasattr(s.act, "jsrelu_portion")]
        return [("modules", "train", "jsrelu_portion", "avg", portions[0])] if portions else []


def _swap_activation(cfg, sites, finetune: bool) -> None:
    name = cfg.modules.get("activation")
    if not name:
        return
    if not finetune:
        if cfg.activation.name not in ("relu", name):
            raise ConfigError(f"modules.activation={name} replaces the activation, so activation={cfg.activation.name} "
                              f"would be lost; drop one of them (modules.activation=null keeps yours)")
        make = lambda: build_activation({"name": name})  # noqa: E731
    elif name == "jsrelu" and int(cfg.protocol.mixing_steps) > 0:
        if not all(type(s.act) is ReLU for s in sites):
            raise ConfigError("protocol.mixing_steps mixes ReLU into JSReLU, but the source model's activation is "
                              "not ReLU; set protocol.mixing_steps=0 to switch at once")
        make = lambda: Mixed(steps=int(cfg.protocol.mixing_steps))  # noqa: E731
    else:
        make = lambda: build_activation({"name": name})  # noqa: E731
    for s in sites:
        s.replace("act", make())


def apply_interventions(cfg, model, sites, sample_forward=None) -> list[Callback]:
    """Rewrite ``sites`` of ``model`` as ``cfg.modules``, ``cfg.noise`` and ``cfg.protocol`` say.

    ``sample_forward()`` runs one forward of the model on real data; it is called only when the
    zeroth biases of a sequence model need their token count. Order matters: LoRA first (so noise
    and zeroth biases attach to the adapted layers), then the norm (its bias freezing wins over
    LoRA's 'all biases trainable'), then the zeroth biases (their clip reads the final norm)."""
    protocol = _protocol(cfg)
    finetune = protocol == "sparsity_finetune"
    mods = cfg.get("modules") or {}
    noise = cfg.get("noise") or {}
    callbacks: list[Callback] = []

    if mods:
        _swap_activation(cfg, sites, finetune)
    if finetune and cfg.protocol.lora.enabled:
        from .finetune import add_lora

        add_lora(model, sites, cfg.protocol.lora)
    rn = mods.get("restricted_norm") or {}
    if rn.get("enabled"):
        mode = rn.get("mode", "auto")
        if mode == "auto":
            mode = "uplift" if finetune else "clamp"
        if mode == "uplift" and not finetune:
            raise ConfigError("modules.restricted_norm.mode=uplift is the finetuning schedule; use "
                              "protocol=sparsity_finetune, or mode=clamp (or auto) from scratch")
        callbacks.append(RestrictedNorm(sites, mode=mode, min_gamma=rn.get("min_gamma", 1.0),
                                        uplift_steps=cfg.protocol.uplift_steps if finetune else 0))
    zb = mods.get("zeroth_bias") or {}
    if zb.get("enabled"):
        callbacks.append(ZerothBiases(model, sites, placement=zb.get("placement", "input"), clip=zb.get("clip", 0.1),
                                      max_tokens=zb.get("max_tokens"), sample_forward=sample_forward))
    if noise.get("enabled") or protocol == "weight_noise":
        hooks = WeightNoise(noise.get("rho", 0.1), grad_through_scale=noise.get("grad_through_scale", False))
        for s in sites:
            hooks.install(target_linears(s, noise.get("targets", "key")))
    du = mods.get("dead_units") or {}
    if float(du.get("fraction", 0.0) or 0.0) > 0:
        from .dead_units import kill_units

        kill_units(sites, float(du["fraction"]), int(du.get("seed", 0)))
    callbacks.append(ActivationSchedule(sites))
    return callbacks


__all__ = ["ActivationSchedule", "PROTOCOLS", "RestrictedNorm", "WeightNoise", "ZerothBias", "ZerothBiases",
           "apply_interventions"]
