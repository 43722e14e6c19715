"""The combination matrix: every model preset x probe preset x protocol x modules choice (and the
activation and noise groups), each as a tiny two-step run, online and post hoc (`sparsity-exp probe`).

Choices are read from ``conf/<group>/*.yaml`` (a new model or probe preset joins the matrix without an
edit here); a model preset is shrunk by the size keys it has (``SHRINK``) and put on the embedded data of
its kind (digits for images, the pydoc text for token data), so paper-scale presets run in seconds.

``all_pairs(factors)`` is a greedy all-pairs (pairwise) covering generator written here: every pair of
choices of any two factors appears in at least one combination. The default test suite runs the
pairwise set; the full product of model x probes x protocol x modules is a ``slow`` test.
"""
from __future__ import annotations

import itertools
import traceback
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"

# size keys a model preset may have -> the tiny value (only keys the preset defines are set)
SHRINK = {
    "width": 16, "depth": 2, "d_ff": 32,                                       # LN-MLP
    "hidden_dim": 16, "mlp_dim": 32, "num_layers": 1, "num_heads": 2,          # ViT (and T5's num_layers)
    "patch_size": 2, "image_size": None,
    "d_model": 16, "d_kv": 8, "num_decoder_layers": 1,                         # T5
    "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,        # LLaMA-style / HF names
    "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8,
    "max_position_embeddings": 128, "dropout": 0.0,
}
# the group axes of the matrix (conf/<group>/*.yaml); noise and activation ride along pairwise
AXES = ("model", "probes", "protocol", "modules")
EXTRA_AXES = ("activation", "noise")
TINY_TRAINER = ["trainer.steps=2", "trainer.log_every=1", "trainer.eval_every=2", "trainer.checkpoint_every=2",
                "trainer.batch_size=8", "trainer.eval_batch_size=64", "trainer.progress=false",
                "trainer.device=cpu", "trainer.threads=1"]
# per probe: settings that make its measurement cheap (applied only when the preset has the probe)
FAST_PROBES = {"hessian": ["samples=4", "iterations=3", "krylov=4"], "sharpness": ["samples=2", "steps=2"],
               "augmented_flatness": ["batches=1"], "gradient_density": ["bins=100"]}


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _yaml(group: str, name: str) -> dict:
    return yaml.safe_load((CONF / group / f"{name}.yaml").read_text()) or {}


def data_of(model: str) -> str:
    """The embedded data set of the preset's kind: its own default data if embedded, else digits/text."""
    from sparsity_exp.data import DATASETS

    node = _yaml("model", model)
    own = None
    for entry in node.get("defaults") or []:
        if isinstance(entry, dict):
            for k, v in entry.items():
                if "data" in k:
                    own = v
    if own is None:  # the kind of batches the model's code takes (a preset may inherit its name from another)
        from sparsity_exp.models import MODELS

        name = node.get("name") or _yaml("model", next(e for e in node["defaults"] if isinstance(e, str)))["name"]
        return "text" if getattr(MODELS[name][0], "TASK", "classification") == "seq2seq" else "digits"
    if own in ("digits", "text"):
        return own
    return "text" if DATASETS[own].startswith("text:") else "digits"


def model_overrides(model: str) -> list[str]:
    node = _yaml("model", model)
    out = [f"model={model}", f"data={data_of(model)}"]
    for key, value in SHRINK.items():
        if key in node:
            out.append(f"model.{key}={'null' if value is None else value}")
    if data_of(model) == "text":
        out += ["data.inputs_length=16", "data.max_test_examples=16"]
    return out


def probe_overrides(preset: str) -> list[str]:
    node = _yaml("probes", preset)
    out = [f"probes={preset}"]
    for probe, settings in FAST_PROBES.items():
        if probe in node:
            out += [f"probes.{probe}.{s}" for s in settings]
    return out


def protocol_overrides(protocol: str, source: Path | None) -> list[str]:
    if protocol != "sparsity_finetune":
        return [f"protocol={protocol}"]
    return [f"protocol={protocol}", f"protocol.init={source}", "protocol.mixing_steps=1",
            "protocol.uplift_steps=1", "protocol.lora.rank=2"]


def factors(extra: bool = True) -> dict[str, list[str]]:
    axes = AXES + (EXTRA_AXES if extra else ())
    return {axis: choices(axis) for axis in axes}


def all_pairs(factors: dict[str, list]) -> list[dict]:
    """A combination list covering every pair of values of any two factors (greedy: each new
    combination is the candidate covering most uncovered pairs; candidates built factor by factor,
    seeded with an uncovered pair so every round covers at least one). Deterministic."""
    names = list(factors)
    uncovered = {(a, va, b, vb) for a, b in itertools.combinations(names, 2)
                 for va in factors[a] for vb in factors[b]}
    out = []
    while uncovered:
        a, va, b, vb = min(uncovered, key=lambda p: (names.index(p[0]), names.index(p[2]), str(p[1]), str(p[3])))
        combo = {a: va, b: vb}
        for name in names:
            if name in combo:
                continue
            def gain(value):
                return sum((x, combo[x], name, value) in uncovered or (name, value, x, combo[x]) in uncovered
                           for x in combo)
            combo[name] = max(factors[name], key=lambda v: (gain(v), -factors[name].index(v)))
        ordered = {n: combo[n] for n in names}
        uncovered -= {(x, ordered[x], y, ordered[y]) for x, y in itertools.combinations(names, 2)}
        out.append(ordered)
    return out


def each_once(factors: dict[str, list]) -> list[dict]:
    """The smallest covering set: every choice of every factor in at least one combination (row i takes
    choice i mod n of each factor), as many rows as the largest factor has choices."""
    rows = max(len(v) for v in factors.values())
    return [{name: values[i % len(values)] for name, values in factors.items()} for i in range(rows)]


def full_product(axes=AXES) -> list[dict]:
    f = factors(extra=False)
    return [dict(zip(axes, values)) for values in itertools.product(*(f[a] for a in axes))]


def overrides(combo: dict, source: Path | None) -> list[str]:
    out = [*model_overrides(combo["model"]), *probe_overrides(combo["probes"]),
           *protocol_overrides(combo["protocol"], source), f"modules={combo['modules']}", *TINY_TRAINER]
    if "activation" in combo:
        out.append(f"activation={combo['activation']}")
    if "noise" in combo:
        out.append(f"noise={combo['noise']}")
    if combo["modules"] == "sparsified" and combo.get("activation") not in (None, "relu", "jsrelu"):
        out.append("modules.activation=null")  # keep the chosen activation (validate refuses losing it)
    return out


def compose(overrides_: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from sparsity_exp.config import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides_))


def run_combo(combo: dict, folder: Path, sources: dict) -> str | None:
    """Train the combination two steps, then probe its checkpoints post hoc; None when both ran and
    wrote their rows, else what went wrong (a traceback's last lines, or the missing output)."""
    import io

    import pandas as pd

    from sparsity_exp.posthoc import probe_run
    from sparsity_exp.run import execute

    source = None
    if combo["protocol"] == "sparsity_finetune":
        source = sources.get(combo["model"])
        if source is None:
            source = folder.parent / f"source_{combo['model']}"
            execute(compose([*model_overrides(combo["model"]), "probes=none", *TINY_TRAINER]), source)
            sources[combo["model"]] = source
    args = overrides(combo, source)
    stage = "run"
    try:
        summary = execute(compose(args), folder)
        if summary.get("status") != "completed":
            return f"run: status {summary.get('status')}"
        stage = "probe"
        out = probe_run(folder, ["checkpoints=all"], file=io.StringIO())
        if combo["probes"] not in ("none",) and not out.exists():
            return "probe: no posthoc_metrics.csv"
        if out.exists():
            pd.read_csv(out)
    except Exception as exc:  # noqa: BLE001 - the matrix reports every kind of failure
        tb = traceback.format_exc().strip().splitlines()
        return f"{stage}: {type(exc).__name__}: {exc}\n    " + "\n    ".join(tb[-6:]) + f"\n    overrides: {' '.join(args)}"
    return None
