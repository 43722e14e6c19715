"""One front door: assemble(cfg) for a run, load_run(dir) for a saved one; choices from registries."""
import ast
from pathlib import Path

import pytest
import torch

import sparsity_exp
from sparsity_exp.activations import ACTIVATIONS
from sparsity_exp.assemble import assemble, load_run, resolve_device
from sparsity_exp.data import DATASETS
from sparsity_exp.errors import ConfigError
from sparsity_exp.models import MODELS
from sparsity_exp.optim import OPTIMIZERS, SCHEDULES
from sparsity_exp.run import execute
from sparsity_exp.validate import RULES, problems

PACKAGE = Path(sparsity_exp.__file__).parent


def test_load_run_rebuilds_what_the_run_trained_on(compose, tiny, tmp_path):
    cfg = compose(*tiny, "probes=none", "modules=sparsified")
    execute(cfg, tmp_path)
    built, again = assemble(cfg), load_run(tmp_path)
    assert again.steps_per_epoch == built.steps_per_epoch and again.total_steps == built.total_steps
    assert len(again.train_batches) == len(built.train_batches)  # train_repeats travel too
    for a, b in zip(next(iter(built.train_batches)), next(iter(again.train_batches))):
        assert torch.equal(a, b)
    assert [s.paths for s in again.sites] == [s.paths for s in built.sites]
    assert {type(c).__name__ for c in again.callbacks} == {type(c).__name__ for c in built.callbacks}
    with_weights = load_run(tmp_path, checkpoint=tmp_path / "checkpoints" / "step_00000030.pt")
    saved = torch.load(tmp_path / "checkpoints" / "step_00000030.pt", weights_only=True)["model"]
    assert all(torch.equal(v, saved[k]) for k, v in with_weights.model.state_dict().items())


@pytest.mark.parametrize("key, registry", [("model.name", MODELS), ("activation.name", ACTIVATIONS),
                                           ("data.name", DATASETS), ("optim.name", OPTIMIZERS),
                                           ("optim.schedule.name", SCHEDULES)])
def test_validation_reads_the_registries(key, registry):
    assert set(RULES[key].choices) == set(registry)


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps", "gpu", "cuda:x"])
def test_validation_and_resolve_device_agree(device):
    valid = not problems({"trainer": {"device": device}})
    try:
        resolve_device(device)
        accepted = True
    except ConfigError as exc:
        accepted = "no CUDA device is visible" in str(exc)  # a valid name this machine cannot serve
    assert valid == accepted, device


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            out.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_arrows_point_down():
    """sites.py imports nothing from modules/; modules/ builds no model and writes no file (the
    trainer's Callback base class is all it takes from train.py)."""
    assert not any("modules" in m for m in _imports(PACKAGE / "sites.py"))
    for path in (PACKAGE / "modules").glob("*.py"):
        bad = {m for m in _imports(path) if m.lstrip(".") in ("models", "record", "lifecycle.checkpoint", "assemble")}
        assert not bad, (path.name, bad)


def test_keys_added_since_a_run_was_written_do_not_block_continuing_it():
    """A run folder written before a key existed can be continued when the new config holds that key
    at the value that computes what the run did; any other value, or a changed key, still differs."""
    from sparsity_exp.lifecycle.folders import config_differences

    old = {"noise": {"rho": 0.1, "targets": "key"}, "model": {"width": 64}}
    new = {"noise": {"rho": 0.1, "targets": "key", "grad_through_scale": False},
           "model": {"width": 64, "noise_targets": "key"}}
    assert config_differences(old, new) == []
    changed = {**new, "noise": {**new["noise"], "grad_through_scale": True}}
    assert config_differences(old, changed) == ["noise.grad_through_scale: <absent> -> True"]
    other = {**new, "model": {"width": 128, "noise_targets": "key"}}
    assert config_differences(old, other) == ["model.width: 64 -> 128"]
    # a key unknown to the table is still a difference when it appears
    assert config_differences(old, {**new, "seed": 1}) == ["seed: <absent> -> 1"]


def _saved_run(compose, folder: Path, *overrides) -> Path:
    from omegaconf import OmegaConf

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(compose(*overrides), resolve=True))
    return folder


def test_probe_overrides_use_hydras_grammar(compose, tiny, tmp_path):
    """`sparsity-exp probe RUN <overrides>`: the grammar `run` takes, on the run's saved config."""
    from sparsity_exp.assemble import load_run_config

    run = _saved_run(compose, tmp_path / "run", *tiny, "probes=cheap")
    cfg = load_run_config(run, ["+probes.neurons={train: true, dead_at_most: 0.1}",  # nested value, new key
                                "++probes.sparsity.every=1", "++probes.spectrum.bins=7",  # ++: change / add
                                "probes.sparsity.test=false", "~probes.spectrum.at_end",
                                "trainer.device=cpu", "name='a=b,c'", "+model.dropout=0.0"])  # quoting as on the run command line
    assert dict(cfg.probes.neurons) == {"train": True, "dead_at_most": 0.1}
    assert cfg.probes.sparsity.every == 1 and cfg.probes.sparsity.test is False
    assert cfg.probes.spectrum.bins == 7 and "at_end" not in cfg.probes.spectrum
    assert cfg.trainer.device == "cpu" and cfg.name == "a=b,c" and cfg.model.dropout == 0.0
    # probes=<preset> swaps the probe set (before the key overrides, as Hydra applies defaults first);
    # the preset's ${trainer.log_every} resolves against the run's config
    full = load_run_config(run, ["probes.hessian.samples=3", "probes=full"])
    assert full.probes.hessian.samples == 3 and full.probes.gradients.every == full.trainer.log_every == 10


def test_probe_command_measures_a_probe_added_with_a_nested_override(compose, tiny, tmp_path):
    import pandas as pd

    from sparsity_exp.cli import main

    execute(compose(*tiny, "probes=none"), tmp_path)
    assert main(["probe", str(tmp_path), "+probes.neurons={train: true}", "checkpoints=last"]) == 0
    rows = pd.read_csv(tmp_path / "posthoc_metrics.csv")
    assert set(rows.probe) == {"neurons"} and set(rows.split) == {"train", "test"} and set(rows.step) == {30}
