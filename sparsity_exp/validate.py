"""Start-up check of the composed config, the one place a config is judged, before any data or model
is built (``run`` and ``probe`` call it first), so a typo fails in a second and not an hour into
training: every key must be known, known keys get their type and range checked, probe settings
are checked against each probe's constructor, and cross-field rules (``CHECKS``) hold.

Known keys (``known_keys``): every key some choice of a config group defines in ``conf/``
(``model.dropout`` is known because a ViT preset has it, even under ``model=mlp``) and the root
config's own; a key added on the command line with ``+`` that no YAML defines is refused, naming
the nearest known key (no code would read it). Open maps whose keys are declared elsewhere:
``probes.<name>.<setting>`` (names from ``PROBES``, settings from each probe class's signature),
and ``hydra.*`` (Hydra's own, ignored).

The schema is the ``RULES`` table: a dotted key (``*`` matches one level, e.g. ``probes.*.every``)
-> ``Rule``. The valid names of every choice (activations, models, data, probes, optimizers,
schedules, devices) are read from the registries that build them, so the two cannot disagree.
Known keys without a rule are accepted as they are (config groups grow faster than this table); a
rule whose key is absent is skipped. Cross-field checks go into ``CHECKS``. To extend:
add a line to ``RULES`` here, or call ``add_rules({...})`` from the module that owns the keys.
"""
from __future__ import annotations

import difflib
import functools
import inspect
import json
import math
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from .activations import ACTIVATIONS, INNER
from .data import DATASETS
from .dotted import flatten
from .errors import ConfigError
from .models import MODELS
from .optim import OPTIMIZERS, SCHEDULES
from .probes import PROBES


DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?"  # what assemble.resolve_device accepts
SEED_MAX = 2**32 - 1  # the largest seed numpy's legacy generator (and so seed_everything) accepts


@dataclass(frozen=True)
class Rule:
    kind: str  # "int", "number", "bool", "str", "list"
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low < value instead of low <= value
    high_open: bool = False
    choices: tuple | None = None
    pattern: str | None = None  # a regular expression a string must match in full
    nullable: bool = False
    length: int | None = None  # lists: exact length; items are checked with ``item``
    item: "Rule | None" = None
    text: str | None = None  # says what is allowed where the fields above cannot (e.g. a pattern)
    nonempty: bool = False  # lists: at least one item

    def describe(self) -> str:
        if self.text:
            return self.text + (" or null" if self.nullable else "")
        noun = {"int": "an integer", "number": "a number", "bool": "true or false", "str": "a string",
                "list": f"a list{f' of {self.length}' if self.length else ''}"}[self.kind]
        parts = [noun]
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'and ' if self.low is not None else ''}{'<' if self.high_open else '<='} {self.high:g}")
        if self.choices:
            parts = [f"one of {', '.join(map(str, self.choices))}"]
        if self.nonempty:
            parts[0] = "a non-empty list"
        if self.item is not None:
            parts.append(f"each {self.item.describe()}")
        return " ".join(parts) + (" or null" if self.nullable else "")

    def ok(self, value) -> bool:
        if value is None:
            return self.nullable
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "str":
            if not isinstance(value, str):
                return False
            return (self.choices is None or value in self.choices) and (
                self.pattern is None or re.fullmatch(self.pattern, value) is not None)
        if self.kind == "list":
            if not isinstance(value, (list, tuple)) or (self.length is not None and len(value) != self.length) \
                    or (self.nonempty and not value):
                return False
            return self.item is None or all(self.item.ok(v) for v in value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True


def positive_int(**kw) -> Rule:
    return Rule("int", low=1, **kw)


def count(**kw) -> Rule:
    return Rule("int", low=0, **kw)


def fraction(**kw) -> Rule:
    return Rule("number", low=0, high=1, **kw)


RULES: dict[str, Rule] = {
    "seed": count(high=SEED_MAX),  # numpy's generators take seeds below 2**32
    "results_dir": Rule("str", pattern=r".+", text="a folder path"),
    # trainer
    "trainer.steps": Rule("int"),  # >= 1 unless epochs is set: see CHECKS
    "trainer.epochs": Rule("number", low=0, low_open=True, nullable=True),
    "trainer.batch_size": positive_int(),
    "trainer.eval_batch_size": positive_int(),
    "trainer.log_every": positive_int(),
    "trainer.eval_every": positive_int(),
    "trainer.device": Rule("str", pattern=DEVICE_PATTERN, text="auto, cpu, cuda or cuda:N"),
    "trainer.tensorboard": Rule("bool"),  # 'maybe' used to be taken as true (a non-empty string)
    "trainer.num_workers": count(),
    "trainer.data_seed_offset": count(high=SEED_MAX),  # optional key (no default): batch order from seed + offset
    "trainer.jobs_per_gpu": positive_int(),
    "trainer.grad_clip": Rule("number", low=0),
    "trainer.label_smoothing": Rule("number", low=0, high=1, high_open=True),
    "trainer.progress": Rule("bool"),
    "trainer.checkpoint_every": count(),
    "trainer.keep_checkpoints": count(),
    "trainer.precision": Rule("str", choices=("fp32", "bf16")),
    "trainer.compile_mode": Rule("str", choices=("default", "reduce-overhead", "max-autotune",
                                                 "max-autotune-no-cudagraphs"), nullable=True),
    "trainer.grad_accum": positive_int(),  # and divides batch_size: see CHECKS
    # optimizer and schedule
    "optim.lr": Rule("number", low=0, low_open=True),
    "optim.weight_decay": Rule("number", low=0),
    "optim.momentum": Rule("number", low=0, high=1, high_open=True),
    "optim.nesterov": Rule("bool"),
    "optim.betas": Rule("list", length=2, item=Rule("number", low=0, high=1, high_open=True)),
    "optim.eps": Rule("number", low=0, low_open=True),
    "optim.name": Rule("str", choices=tuple(sorted(OPTIMIZERS))),
    "optim.schedule.name": Rule("str", choices=SCHEDULES),
    "model.name": Rule("str", choices=tuple(sorted(MODELS))),
    "activation.name": Rule("str", choices=tuple(sorted(ACTIVATIONS))),
    "modules.activation": Rule("str", choices=tuple(sorted(ACTIVATIONS)), nullable=True),
    "modules.dead_units.fraction": Rule("number", low=0, high=1, high_open=True),
    "modules.dead_units.seed": count(),
    # a negative floor clamps nothing (|gamma| >= -1 always holds): the module would silently be off
    "modules.restricted_norm.min_gamma": Rule("number", low=0, low_open=True),
    "protocol.mixing_steps": count(),
    "protocol.uplift_steps": count(),
    # the activation's own fields, checked with every other value so one error lists them all (the
    # constructors' checks stay for direct use)
    "activation.shift_x": Rule("number"),
    "activation.shift_y": Rule("number"),
    "activation.half_width": Rule("number", low=0),
    "activation.inner": Rule("str", choices=tuple(INNER)),
    "activation.steps": Rule("int", low=0),
    "activation.grad_clip": Rule("number", low=0),
    "data.name": Rule("str", choices=tuple(sorted(DATASETS))),
    "optim.schedule.warmup_steps": count(),
    "optim.schedule.warmup_start": fraction(),
    "optim.schedule.min_factor": fraction(),
    # model (sizes mean the same in every architecture that has them)
    "model.width": positive_int(),
    "model.depth": positive_int(),
    "model.d_ff": positive_int(),
    "model.value": Rule("bool"),
    "model.norm_affine": Rule("bool"),
    "model.norm_eps": Rule("number", low=0, low_open=True),
    "model.final_norm": Rule("bool"),
    "model.num_heads": positive_int(),
    "model.num_attention_heads": positive_int(),
    "model.num_key_value_heads": positive_int(nullable=True),
    "model.gated": Rule("bool"),  # optional (LN-MLP; absent = false): a gated block, docs/paper.md §1.7
    "model.feed_forward_proj": Rule("str", choices=("relu", "gated-gelu", "gated-relu")),  # optional (T5; absent = relu)
    # data
    "data.test_fraction": Rule("number", low=0, high=1, low_open=True, high_open=True),
    "data.split_seed": count(high=SEED_MAX),
    "data.root": Rule("str"),
    "data.download": Rule("bool"),
    "data.image_size": positive_int(),
    "data.augment": Rule("bool"),
    "data.crop_padding": count(),
    "data.rotation": Rule("number", low=0, high=180),
    "data.inputs_length": Rule("int", low=2),  # text: span corruption of one token leaves no input (was a ZeroDivisionError)
    # span corruption masks a fraction of each chunk strictly between none and all (0 was silently raised to one
    # token; 1 or more never fits the inputs and the sizing loop did not end); spans are at least a token long
    "data.noise_density": Rule("number", low=0, high=1, low_open=True, high_open=True),
    "data.mean_noise_span_length": Rule("number", low=1),
    # probes: every probe takes these cadence fields
    "probes.*.every": count(),
    "probes.*.measure_every": count(),
    "probes.*.at_end": Rule("bool"),
    # probe settings that pass the type check of the constructor's default but that no code can use
    # (they used to fail only when the probe first measured, after training, or measured nothing)
    "probes.*.batches": positive_int(),
    "probes.*.samples": positive_int(),
    "probes.*.bins": positive_int(),
    "probes.gradient_density.log10_range": Rule("list", length=2, item=Rule("number")),
    "probes.gradient_density.save_every": count(),
    "probes.gradients.thresholds": Rule("list", nonempty=True, item=Rule("number", low=0, low_open=True)),
    "probes.diagonality.powers": Rule("list", nonempty=True, item=Rule("number", low=0, low_open=True)),
    "probes.spectrum.mass": Rule("number", low=0, high=1, low_open=True),
    "probes.spectrum.ratio_threshold": Rule("number", low=0),
    "probes.spectrum.nonzero_above": Rule("number", low=0),
    "probes.neurons.dead_at_most": fraction(),
    "probes.neurons.always_on_at_least": fraction(),
    "probes.rmt.thr": Rule("number", low=0, low_open=True),
    "probes.rmt.v": Rule("number", low=0, low_open=True),
    "probes.rmt.max_pending_rows": positive_int(),
    "probes.sharpness.rho": Rule("number", low=0, low_open=True),
    "probes.sharpness.rho_feature": Rule("number", low=0, low_open=True, nullable=True),
    "probes.sharpness.steps": positive_int(),
    "probes.sharpness.step_size": Rule("number", low=0, low_open=True),
    "probes.hessian.iterations": positive_int(),
    "probes.hessian.krylov": Rule("int", low=2),
    "probes.hessian.tol": Rule("number", low=0),
    "probes.hessian.block_samples": count(nullable=True),
    "probes.hessian.feature_samples": positive_int(nullable=True),
    "probes.hessian.block": positive_int(nullable=True),
    "probes.hessian.memory_mb": Rule("number", low=0, low_open=True, nullable=True),
}


def _steps_or_epochs(flat: dict) -> list[str]:
    if flat.get("trainer.epochs") is None and isinstance(flat.get("trainer.steps"), int) and flat["trainer.steps"] < 1:
        return [f"trainer.steps={flat['trainer.steps']}: must be an integer >= 1 (or set trainer.epochs)"]
    return []


def _accumulation(flat: dict) -> list[str]:
    accum, batch = flat.get("trainer.grad_accum", 1), flat.get("trainer.batch_size")
    if isinstance(accum, int) and accum >= 1 and isinstance(batch, int) and batch % accum:
        return [f"trainer.grad_accum={accum}: must divide trainer.batch_size={batch} (each batch runs as "
                f"grad_accum micro-batches)"]
    return []


def _replaced_activation(flat: dict) -> list[str]:
    """``modules.activation`` swaps every site's activation: one chosen with ``activation=`` too would be lost
    (finetuning swaps the source model's, so there it is allowed)."""
    name, own = flat.get("modules.activation"), flat.get("activation.name")
    if not name or flat.get("protocol.name") == "sparsity_finetune" or own in ("relu", name):
        return []
    return [f"modules.activation={name}: replaces the activation, so activation={own} would be lost; drop one of "
            f"them (modules.activation=null keeps yours)"]


def _known_probes(flat: dict) -> list[str]:
    names = sorted({k.split(".")[1] for k in flat if k.startswith("probes.")} - set(PROBES))
    out = []
    for n in names:
        near = difflib.get_close_matches(n, list(PROBES), n=1)
        out.append(f"probes.{n}=...: must be a known probe{f' (did you mean probes.{near[0]}?)' if near else ''}, "
                   f"one of {', '.join(sorted(PROBES))}")
    return out


def probe_settings(cls) -> dict:
    """Setting -> default value of a probe class: the keyword parameters of its constructor and of
    every base constructor it hands ``**kw`` on to (``sites`` and ``context`` are the driver's)."""
    found: dict = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        for p in params:
            if p.name not in ("self", "sites", "context") and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                found.setdefault(p.name, p.default)
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break  # this constructor takes nothing further up
    return found


def _setting_fits(default, value) -> bool:
    """A value of the kind the default has (None and defaults of None accept anything)."""
    if default is inspect.Parameter.empty or default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return True


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
          tuple: "a list"}


def _probe_settings(probes: dict) -> list[str]:
    """Each probe's settings against its constructor: an unknown one names the nearest valid one."""
    out = []
    for name, settings in probes.items():
        if name not in PROBES or not isinstance(settings, dict):
            continue
        valid = probe_settings(PROBES[name])
        for key, value in settings.items():
            if key not in valid:
                near = difflib.get_close_matches(key, list(valid), n=1)
                out.append(f"probes.{name}.{key}: the {name} probe has no such setting"
                           f"{f' (did you mean probes.{name}.{near[0]}?)' if near else ''}; its settings: "
                           f"{', '.join(sorted(valid))}")
            elif not _setting_fits(valid[key], value):
                out.append(f"probes.{name}.{key}={value!r}: must be {_KINDS[type(valid[key])]}, like its default "
                           f"{valid[key]!r}")
    return out


def _finite_numbers(flat: dict) -> list[str]:
    """A nan or inf anywhere in the config (keys without a rule too) is a typo, not a setting: said as
    such here, instead of surfacing later as a non-finite loss."""
    def ruled(key):
        return key in RULES or any("*" in pat and fnmatchcase(key, pat) for pat in RULES)

    return [f"{key}={value!r}: must be a finite number" for key, value in flat.items()
            if isinstance(value, float) and not math.isfinite(value) and not ruled(key)]


def _run_label(flat: dict) -> list[str]:
    """``name`` becomes part of the run folder's name: no path separators, a file-name's length."""
    name = flat.get("name")
    if name is None or re.fullmatch(r"[A-Za-z0-9=,.+_-]{1,60}", str(name)):
        return []
    return [f"name={name!r}: must be a label of up to 60 letters, digits or = , . + _ - "
            f"(it becomes part of the run folder's name)"]


def _compile_mode_alone(flat: dict) -> list[str]:
    """``trainer.compile_mode`` chooses how torch.compile compiles: without ``trainer.compile=true``
    nothing is compiled, so the setting would have no effect."""
    mode = flat.get("trainer.compile_mode")
    if mode in (None, "", "default") or flat.get("trainer.compile") is True:
        return []
    return [f"trainer.compile_mode={mode}: has no effect without trainer.compile=true; add trainer.compile=true, "
            f"or drop trainer.compile_mode"]


def _heads_divide_width(flat: dict) -> list[str]:
    """Multi-head attention splits the width into equal heads: torchvision's ViT and LLaMA need the
    width divisible by the heads (and the heads by the key/value heads), else they fail at build time
    with a traceback. (T5 has its own head size d_kv, so any count works.)"""
    out = []
    for width_key, heads_key in (("model.hidden_dim", "model.num_heads"),
                                 ("model.hidden_size", "model.num_attention_heads")):
        width, heads = flat.get(width_key), flat.get(heads_key)
        if isinstance(width, int) and isinstance(heads, int) and heads >= 1 and width % heads:
            out.append(f"{heads_key}={heads}: must divide {width_key}={width} (each head gets {width_key} / "
                       f"{heads_key} dimensions); pick a divisor, e.g. {heads_key}="
                       f"{max(d for d in range(1, heads + 1) if width % d == 0)}")
    heads, kv = flat.get("model.num_attention_heads"), flat.get("model.num_key_value_heads")
    if isinstance(heads, int) and isinstance(kv, int) and kv >= 1 and heads % kv:
        out.append(f"model.num_key_value_heads={kv}: must divide model.num_attention_heads={heads} (grouped-query "
                   f"attention); pick a divisor or null")
    return out


# groups whose choices carry a ``name`` that says which code reads them (model=vit_b16 is name: vit)
NAMED_GROUPS = ("model", "data", "activation", "optim", "protocol")


@functools.lru_cache(maxsize=4)
def keys_by_choice(conf: Path | None = None) -> dict:
    """group -> ``name`` -> the dotted keys the YAMLs of that name define, and the keys a YAML reads
    through ``${oc.select:key,...}`` from anywhere (those have an effect under every choice)."""
    import yaml

    from .config import conf_dir

    conf = Path(conf or conf_dir())
    out: dict = {g: {} for g in NAMED_GROUPS}
    defaults: dict = {}  # dotted key -> the values (JSON) its choices default to
    selected = set()
    for path in conf.rglob("*.yaml"):
        selected |= set(re.findall(r"oc\.select:([A-Za-z0-9_.]+)", path.read_text()))
    for group in NAMED_GROUPS:
        for path in (conf / group).glob("*.yaml"):
            node = {k: v for k, v in (yaml.safe_load(path.read_text()) or {}).items() if k != "defaults"}
            if "name" in node:
                flat = flatten(node)
                out[group].setdefault(str(node["name"]), set()).update(f"{group}.{k}" for k in flat)
                for k, v in flat.items():
                    defaults.setdefault(f"{group}.{k}", set()).add(json.dumps(v, sort_keys=True))
    return {"groups": out, "selected": frozenset(selected), "defaults": defaults}


def _other_choices_keys(flat: dict) -> list[str]:
    """A key that only another choice of its group defines (``+model.patch_size=4`` under model=mlp, a
    ViT setting): it passes the key check (some YAML defines it) but nothing reads it under this choice."""
    from .dotted import is_run_setting

    found = keys_by_choice()
    out = []
    for key in sorted(flat):
        group = key.split(".")[0]
        own = found["groups"].get(group, {}).get(str(flat.get(f"{group}.name")))
        parts = key.split(".")
        if own is None or any(".".join(parts[:i]) in own for i in range(2, len(parts) + 1)) or is_run_setting(key) \
                or key in found["selected"] or flat[key] in (None, False, 0, "", []) \
                or json.dumps(flat[key], sort_keys=True) in found["defaults"].get(key, ()):  # off or a default
            continue
        if any(key in keys for keys in found["groups"][group].values()):
            owners = sorted(n for n, keys in found["groups"][group].items() if key in keys)
            out.append(f"{key}: a setting of {group} {' / '.join(owners)}, which nothing reads under "
                       f"{group}.name={flat.get(f'{group}.name')}; drop it, or choose that {group}")
    return out


def _threads(flat: dict) -> list[str]:
    value = flat.get("trainer.threads", "auto")
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return []
    return [f"trainer.threads={value!r}: must be auto or an integer >= 1 (torch threads)"]


CHECKS = [_heads_divide_width,
          _threads, _steps_or_epochs, _accumulation, _replaced_activation, _known_probes, _finite_numbers, _run_label,
          _compile_mode_alone, _other_choices_keys]

# Roots whose keys no YAML of conf/ lists: checked another way (probes), or not ours (hydra)
OPEN_MAPS = ("hydra", "probes")
# conf/ folders that are not groups of the run config (presets over all groups, study suites, Hydra's)
NOT_GROUPS = ("experiment", "study", "hydra")


@functools.lru_cache(maxsize=4)
def known_keys(conf: Path | None = None) -> frozenset:
    """Every dotted key a choice of a config group defines (``model.hidden_dim`` from conf/model/vit.yaml),
    and the root config's own keys; an empty mapping in a YAML is an open map (anything under it)."""
    import yaml

    from .config import conf_dir

    conf = Path(conf or conf_dir())
    root = yaml.safe_load((conf / "config.yaml").read_text()) or {}
    keys = set(flatten({k: v for k, v in root.items() if k not in ("defaults", "hydra")}))
    for group in sorted(p for p in conf.iterdir() if p.is_dir() and p.name not in NOT_GROUPS):
        for path in group.rglob("*.yaml"):
            text = path.read_text()
            node = {k: v for k, v in (yaml.safe_load(text) or {}).items() if k != "defaults"}
            package = re.search(r"^# @package (\S+)", text, re.MULTILINE)
            prefix = package.group(1) if package else ".".join(path.relative_to(conf).parent.parts)
            prefix = "" if prefix == "_global_" else prefix.replace("_global_.", "") + "."
            keys |= {prefix + k + (".*" if v == {} else "") for k, v in flatten(node).items()}
    return frozenset(keys)


def _open(key: str, known: frozenset) -> bool:
    if key.split(".")[0] in OPEN_MAPS:
        return True
    parts = key.split(".")
    return any(".".join(parts[:i]) + ".*" in known for i in range(1, len(parts)))


def unknown_keys(flat: dict, known: frozenset | None = None) -> list[str]:
    """Keys no YAML of conf/ defines and no rule of ``RULES`` declares (an optional key without a default,
    such as ``trainer.data_seed_offset``): added with ``+``, nothing would read them; nearest known key named."""
    known = known if known is not None else known_keys()
    out = []
    for key in sorted(flat):
        if key in known or key in RULES or _open(key, known):
            continue
        near = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
        out.append(f"{key}: no config group defines this key, so nothing would read it"
                   f"{f' (did you mean {near[0]}?)' if near else ''}; fix the name, or drop it")
    return out


def add_rules(rules: dict[str, Rule]) -> None:
    """Register rules for keys a module owns (call at import time)."""
    RULES.update(rules)


def problems(cfg, known: frozenset | None = None) -> list[str]:
    """One line per broken rule, ``key=value: must be ...``; empty when the config is fine. ``known``:
    the known keys (default: ``known_keys()`` of conf/)."""
    from omegaconf import DictConfig, OmegaConf

    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    flat = flatten(container)
    found = unknown_keys(flat, known)
    unknown = {line.split(":")[0] for line in found}
    flat = {k: v for k, v in flat.items() if k not in unknown}  # one line per unknown key, not two
    found.extend(_probe_settings((container or {}).get("probes") or {}))
    for key, value in flat.items():
        rule = RULES.get(key) or next((r for pat, r in RULES.items() if "*" in pat and fnmatchcase(key, pat)), None)
        if rule is not None and not rule.ok(value):
            found.append(f"{key}={value!r}: must be {rule.describe()}")
    for check in CHECKS:
        found.extend(check(flat))
    return found


def validate_config(cfg) -> None:
    """Raise ``ConfigError`` listing every problem found, with what to do. The first line is the first
    problem itself and where to fix it (never a bare heading); further problems follow, one a line."""
    found = problems(cfg)
    if found:
        key = re.match(r"[^=:]*", found[0])[0]
        more = f"; {len(found) - 1} more problem{'s' if len(found) > 2 else ''} below" if len(found) > 1 else ""
        rest = "".join(f"\n  {p}" for p in found[1:])
        raise ConfigError(
            f"{found[0]} (fix {key} on the command line, e.g. {key}=..., or in its YAML under conf/{more})"
            f"{rest}\n`sparsity-exp run --cfg job` prints the composed config."
        )
