"""Start-up check of the composed config: known keys get their type and range checked before
anything is built, so a typo fails in a second and not an hour into training.

The schema is the ``RULES`` table: a dotted key (``*`` matches one level, e.g. ``probes.*.every``)
-> ``Rule``. The valid names of every choice (activations, models, data, probes, optimizers,
schedules, devices) are read from the registries that build them, so the two cannot disagree. Keys without a rule are accepted as they are (config groups grow faster than this
table); a rule whose key is absent is skipped. Cross-field checks go into ``CHECKS``. To extend:
add a line to ``RULES`` here, or call ``add_rules({...})`` from the module that owns the keys.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase

from .activations import ACTIVATIONS, INNER
from .assemble import DEVICE_PATTERN
from .data import DATASETS
from .errors import ConfigError
from .models import MODELS
from .optim import OPTIMIZERS, SCHEDULES
from .probes import PROBES


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
            if not isinstance(value, (list, tuple)) or (self.length is not None and len(value) != self.length):
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
    "seed": count(),
    "results_dir": Rule("str", pattern=r".+", text="a folder path"),
    # trainer
    "trainer.steps": Rule("int"),  # >= 1 unless epochs is set: see CHECKS
    "trainer.epochs": Rule("number", low=0, low_open=True, nullable=True),
    "trainer.batch_size": positive_int(),
    "trainer.eval_batch_size": positive_int(),
    "trainer.log_every": positive_int(),
    "trainer.eval_every": positive_int(),
    "trainer.device": Rule("str", pattern=DEVICE_PATTERN, text="auto, cpu, cuda or cuda:N"),
    "trainer.num_workers": count(),
    "trainer.data_seed_offset": count(),  # optional key (no default): batch order from seed + offset
    "trainer.jobs_per_gpu": positive_int(),
    "trainer.grad_clip": Rule("number", low=0),
    "trainer.label_smoothing": Rule("number", low=0, high=1, high_open=True),
    "trainer.progress": Rule("bool"),
    "trainer.checkpoint_every": count(),
    "trainer.keep_checkpoints": count(),
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
    # data
    "data.test_fraction": Rule("number", low=0, high=1, low_open=True, high_open=True),
    "data.split_seed": count(),
    "data.root": Rule("str"),
    "data.download": Rule("bool"),
    "data.image_size": positive_int(),
    "data.augment": Rule("bool"),
    "data.crop_padding": count(),
    "data.rotation": Rule("number", low=0, high=180),
    # probes: every probe takes these cadence fields
    "probes.*.every": count(),
    "probes.*.measure_every": count(),
    "probes.*.at_end": Rule("bool"),
}


def _steps_or_epochs(flat: dict) -> list[str]:
    if flat.get("trainer.epochs") is None and isinstance(flat.get("trainer.steps"), int) and flat["trainer.steps"] < 1:
        return [f"trainer.steps={flat['trainer.steps']}: must be an integer >= 1 (or set trainer.epochs)"]
    return []


def _known_probes(flat: dict) -> list[str]:
    names = sorted({k.split(".")[1] for k in flat if k.startswith("probes.")} - set(PROBES))
    return [f"probes.{n}=...: must be a known probe, one of {', '.join(sorted(PROBES))}" for n in names]


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


CHECKS = [_steps_or_epochs, _known_probes, _finite_numbers, _run_label]


def add_rules(rules: dict[str, Rule]) -> None:
    """Register rules for keys a module owns (call at import time)."""
    RULES.update(rules)


def _flatten(node, prefix="") -> dict:
    out = {}
    if isinstance(node, dict) and node:
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = node
    return out


def problems(cfg) -> list[str]:
    """One line per broken rule, ``key=value: must be ...``; empty when the config is fine."""
    from omegaconf import DictConfig, OmegaConf

    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    flat = {k: v for k, v in _flatten(container).items() if not k.startswith("hydra.")}
    found = []
    for key, value in flat.items():
        rule = RULES.get(key) or next((r for pat, r in RULES.items() if "*" in pat and fnmatchcase(key, pat)), None)
        if rule is not None and not rule.ok(value):
            found.append(f"{key}={value!r}: must be {rule.describe()}")
    for check in CHECKS:
        found.extend(check(flat))
    return found


def validate_config(cfg) -> None:
    """Raise ``ConfigError`` listing every problem found, with what to do."""
    found = problems(cfg)
    if found:
        lines = "\n".join(f"  {p}" for p in found)
        raise ConfigError(
            f"invalid config value{'s' if len(found) > 1 else ''}:\n{lines}\n"
            f"Set {'them' if len(found) > 1 else 'it'} on the command line (e.g. {found[0].split('=')[0]}=...) or "
            f"in the YAML under conf/; `sparsity-exp run --cfg job` prints the composed config."
        )
