"""`sparsity-exp collect` and `sparsity-exp figures` (and a figure script) end to end on two tiny real runs,
and the TensorBoard mirror of the metric rows."""
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from sparsity_exp.cli import main
from sparsity_exp.errors import ConfigError
from sparsity_exp.record import Recorder
from sparsity_exp.run import execute
from tests.conftest import ROOT


@pytest.fixture
def two_runs(compose, tiny, tmp_path):
    """Two real tiny runs, as a sweep over model.depth would leave them."""
    for depth in (1, 2):
        execute(compose(*tiny, f"model.depth={depth}"), tmp_path / "results" / "multirun" / "t" / f"{depth - 1}_depth")
    return tmp_path / "results"


def test_collect_and_figures_end_to_end(cli, two_runs, tmp_path):
    out = cli("collect", "results", "--out", "tables/all.csv")
    assert out.returncode == 0, out.stderr
    assert "2 runs (2 completed)" in out.stdout and "varying config keys: model.depth" in out.stdout
    table = pd.read_csv(tmp_path / "tables" / "all.csv", dtype={"layer": str})
    assert (tmp_path / "tables" / "all.parquet").is_file()
    per_run = table.groupby("run")["model.depth"].first()
    assert sorted(per_run) == [1, 2]
    # the table holds every row of each run's metrics.csv, unchanged
    for run_dir, rows in table.groupby("run_dir"):
        own = pd.read_csv(f"{run_dir}/metrics.csv", dtype={"layer": str})
        assert len(rows) == len(own)
        assert np.allclose(rows.value.to_numpy(), own.value.to_numpy())
        depth = rows["model.depth"].iloc[0]
        assert set(rows[rows.probe == "sparsity"].layer) == {str(i) for i in range(depth)} | {"avg"}

    out = cli("figures", "tables/all.csv", "--out", "figs")
    assert out.returncode == 0, out.stderr
    for name in ("sparsity_train", "sparsity_test"):
        for ext in ("png", "pdf"):
            assert (tmp_path / "figs" / f"{name}.{ext}").stat().st_size > 5_000
    assert "made    sparsity:" in out.stdout
    assert "skipped flat_region: no run uses the shifted activation" in out.stdout  # ReLU runs (issue 15)
    assert "made    spectrum_histograms:" in out.stdout  # the default preset saves K K^T spectra
    assert "skipped mp_anisotropy:" in out.stdout

    # straight from run folders, one figure kind, through its script
    env_run = subprocess.run([sys.executable, str(ROOT / "scripts" / "fig_sparsity.py"), "results", "--out", "f2"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300,
                             env=dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg"))
    assert env_run.returncode == 0, env_run.stderr
    assert sorted(p.name for p in (tmp_path / "f2").iterdir()) == [
        "collected.csv", "collected.parquet", "collected_runs.csv", "sparsity_test.pdf", "sparsity_test.png",
        "sparsity_train.pdf", "sparsity_train.png"]


def test_cli_errors_are_short(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["collect", "nowhere"]) == 2
    assert capsys.readouterr().err.startswith("error: nowhere does not exist")
    (tmp_path / "empty").mkdir()
    assert main(["figures", "empty"]) == 2
    assert "no run folders" in capsys.readouterr().err
    assert main(["figures", "empty", "--only", "nonsense"]) == 2
    assert "unknown figure" in capsys.readouterr().err


def test_tensorboard_mirrors_the_rows(compose, tiny, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    execute(compose(*tiny, "trainer.tensorboard=true"), tmp_path / "run")
    rows = pd.read_csv(tmp_path / "run" / "metrics.csv", dtype={"layer": str})
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    tags = {f"{r.probe}/{r.split}/{r.metric}/{r.layer}" for r in rows.itertuples()}
    assert set(events.Tags()["scalars"]) == tags
    assert "sparsity/train/activation_sparsity/1" in tags and "eval/test/accuracy/avg" in tags
    for tag in tags:
        probe, split, metric, layer = tag.split("/")
        want = rows[(rows.probe == probe) & (rows.split == split) & (rows.metric == metric) & (rows.layer == layer)]
        got = events.Scalars(tag)
        assert [e.step for e in got] == want.step.tolist()
        assert np.allclose([e.value for e in got], want.value, rtol=1e-6)  # stored as float32


def test_tensorboard_off_by_default_and_missing_package_says_what_to_do(compose, tiny, tmp_path, monkeypatch):
    assert compose(*tiny).trainer.tensorboard is False
    execute(compose(*tiny), tmp_path / "run")
    assert not (tmp_path / "run" / "tensorboard").exists()
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        Recorder(tmp_path / "other", tensorboard=True)
    assert not (tmp_path / "other" / "metrics.csv").exists()
