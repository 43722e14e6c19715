"""The README's extension recipe is complete: a probe added to a copy of the tree by following the
README's steps, and only them, passes the suite's contract tests (which take the probe and its
metrics from the registry), and a probe whose declaration lies fails them."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PROBE_FILE = '''"""Mean |a| per MLP site on training batches: the probe of the README's extension recipe."""
from contextlib import contextmanager

import torch

from .base import Probe, layer_rows


class MeanAbsProbe(Probe):
    name = "mean_abs"
    metrics = METRICS

    def __init__(self, sites, every: int = 0, **kw):
        super().__init__(sites, every=every, **kw)
        self._stats = None  # [n_sites, 2]: sum |a|, entries

    @contextmanager
    def observe(self, split):
        if split != "train":
            yield
            return
        if self._stats is None:
            self._stats = torch.zeros(len(self.sites), 2, dtype=torch.float64, device=self.ctx.device)

        def hook(module, args, out, i):
            self._stats[i, 0] += out.detach().abs().sum().double()
            self._stats[i, 1] += out.numel()

        handles = [s.act.register_forward_hook(lambda m, a, o, i=i: hook(m, a, o, i)) for i, s in enumerate(self.sites)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def rows(self, split):
        if split != "train" or self._stats is None:
            return []
        s, self._stats = self._stats.cpu(), None
        return list(layer_rows(split, "mean_abs_activation", (s[:, 0] / s[:, 1].clamp(min=1)).tolist()))
'''


def follow_probe_step(tree: Path, path: str, metrics: tuple) -> None:
    """Do what README step ``path`` says, for the probe 'mean_abs'."""
    if path == "sparsity_exp/probes/<name>.py":
        (tree / "sparsity_exp/probes/mean_abs.py").write_text(PROBE_FILE.replace("METRICS", repr(metrics)))
    elif path == "sparsity_exp/probes/__init__.py":
        init = tree / path
        text = init.read_text()
        imports = list(re.finditer(r"^from \.\w+ import .*$", text, re.M))
        registry = re.search(r"PROBES[^=]*=\s*\{[^}]*?for cls in \(", text)
        assert imports and registry, f"{path} has changed shape: teach this test how to add a probe to PROBES"
        text = text[:registry.end()] + "MeanAbsProbe, " + text[registry.end():]
        text = text[:imports[-1].end()] + "\nfrom .mean_abs import MeanAbsProbe" + text[imports[-1].end():]
        init.write_text(text)
    elif path == "conf/probes/full.yaml":
        with open(tree / path, "a") as f:
            f.write("mean_abs:            # mean |a| per site on training batches\n"
                    "  every: ${trainer.log_every}   # train-batch cadence in steps\n")
    else:
        pytest.fail(f"README's probe recipe names {path!r}, a step this test does not know how to follow")


def readme_probe_steps() -> list[str]:
    """The files of the numbered steps under **A probe** in the README's 'Extending' section."""
    readme = (ROOT / "README.md").read_text()
    section = re.search(r"^## Extending\n(.*?)(?=^## |\Z)", readme, re.M | re.S)
    assert section, "README has no 'Extending' section"
    block = re.search(r"^\*\*A probe\*\*.*?\n(.*?)(?=^\*\*An? |\Z)", section.group(1), re.M | re.S)
    assert block, "README's 'Extending' has no **A probe** recipe"
    steps = re.findall(r"^\d+\. `([^`]+)`", block.group(1), re.M)
    count = re.search(r"^\*\*A probe\*\* \((\d+) files?\)", section.group(1), re.M)
    assert count and int(count.group(1)) == len(steps), "the recipe's file count disagrees with its steps"
    return steps


def tree_with_probe(tmp_path: Path, metrics: tuple) -> Path:
    tree = tmp_path / "tree"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for part in ("sparsity_exp", "conf", "tests"):
        shutil.copytree(ROOT / part, tree / part, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    for path in readme_probe_steps():
        follow_probe_step(tree, path, metrics)
    return tree


def contract_tests(tree: Path, select: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(tree), MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", "-m", "not slow",
                           "tests/test_probe_presets.py", "-k", select],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=600)


def test_readme_lists_the_probe_steps_this_test_follows():
    assert readme_probe_steps() == ["sparsity_exp/probes/<name>.py", "sparsity_exp/probes/__init__.py",
                                    "conf/probes/full.yaml"]


def test_a_probe_added_by_the_readme_passes_the_contract_tests(tmp_path):
    """The full preset builds it, a run writes exactly its declared metrics (probe names and metrics
    come from PROBES); post hoc is checked in the slow test below."""
    tree = tree_with_probe(tmp_path, ("mean_abs_activation",))
    res = contract_tests(tree, "(compose_and_build and full) or writes_the_contract or declares")
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert re.search(r"\b3 passed\b", res.stdout), res.stdout[-2000:]
    assert "mean_abs" in (tree / "sparsity_exp/probes/__init__.py").read_text()


@pytest.mark.slow
def test_a_probe_added_by_the_readme_runs_post_hoc(tmp_path):
    tree = tree_with_probe(tmp_path, ("mean_abs_activation",))
    found = subprocess.run([sys.executable, "-c", "import sparsity_exp.probes as p; print(p.__file__, sorted(p.PROBES))"],
                           cwd=tree, env=dict(os.environ, PYTHONPATH=str(tree)), capture_output=True, text=True)
    assert str(tree) in found.stdout and "'mean_abs'" in found.stdout, found.stdout + found.stderr
    res = contract_tests(tree, "posthoc_probe_command")
    assert res.returncode == 0 and re.search(r"\b1 passed\b", res.stdout), res.stdout[-4000:] + res.stderr[-2000:]


@pytest.mark.slow
def test_a_probe_declaring_other_metrics_fails_the_contract(tmp_path):
    """The check of the check: declared metrics that rows() does not write are caught."""
    tree = tree_with_probe(tmp_path, ("mean_abs_activation", "never_written"))
    res = contract_tests(tree, "writes_the_contract")
    assert res.returncode == 1 and "never_written" in res.stdout, res.stdout[-4000:]
