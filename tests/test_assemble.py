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
