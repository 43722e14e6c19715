"""End to end: a real short run writes the documented run folder; the CLI composes, sweeps and fails
clearly."""
import json

import pandas as pd
import pytest

from sparsity_exp.record import COLUMNS
from sparsity_exp.run import execute


def test_run_folder_contents(compose, tiny, tmp_path):
    summary = execute(compose(*tiny), tmp_path / "run")
    run = tmp_path / "run"
    assert {"model:", "data:", "optim:"} <= {line.split(" ")[0] for line in (run / "config.yaml").read_text().splitlines()}
    m = pd.read_csv(run / "metrics.csv")
    assert tuple(m.columns) == COLUMNS
    sp = m[(m.probe == "sparsity") & (m.metric == "activation_sparsity")]
    # train rows at every log step (0, 10, 20), test rows at 0, eval_every (20) and the end (30)
    assert sorted(sp[sp.split == "train"].step.unique()) == [0, 10, 20]
    assert sorted(sp[sp.split == "test"].step.unique()) == [0, 20, 30]
    assert set(sp.layer.astype(str)) == {"0", "1", "avg"}
    assert ((sp.value >= 0) & (sp.value <= 1)).all()
    acc = m[(m.metric == "accuracy") & (m.split == "test")]
    assert sorted(acc.step) == [0, 20, 30]
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert on_disk["status"] == "completed" and on_disk["steps"] == 30
    final = sp[(sp.split == "test") & (sp.step == 30)]
    last_test = final.set_index(final.layer.astype(str)).value
    assert on_disk["test"]["activation_sparsity"]["1"] == pytest.approx(last_test["1"])
    assert (run / "quicklook.png").stat().st_size > 10_000
    sites = json.loads((run / "sites.json").read_text())
    assert [s["name"] for s in sites] == ["blocks.0", "blocks.1"] and sites[1]["paths"]["act"] == "blocks.1.act"


def test_same_seed_same_result_other_seed_other_result(compose, tiny, tmp_path):
    runs = [pd.read_csv(execute(compose(*tiny, f"seed={s}"), tmp_path / str(i))["run_dir"] + "/metrics.csv")
            for i, s in enumerate([4, 4, 5])]
    pd.testing.assert_frame_equal(runs[0], runs[1])
    assert not runs[0].value.equals(runs[2].value)


def test_epochs_set_the_length(compose, tiny, tmp_path):
    summary = execute(compose(*tiny, "trainer.epochs=0.5", "trainer.batch_size=100"), tmp_path / "r")
    assert summary["steps"] == 7  # 0.5 x floor(1437 train images / 100)


def test_zero_steps_is_refused(compose, tiny, tmp_path):
    from sparsity_exp.errors import ConfigError

    with pytest.raises(ConfigError, match="trainer.steps"):
        execute(compose(*tiny, "trainer.steps=0"), tmp_path / "r")
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["status"] == "failed"


def test_cli_run_writes_a_named_folder(cli, tiny, tmp_path):
    out = cli("run", *tiny, "model.depth=3")
    assert out.returncode == 0, out.stderr
    folders = list((tmp_path / "results").iterdir())
    assert len(folders) == 1
    name = folders[0].name
    assert "model.depth=3" in name and len(name.split("_")[-1]) == 6
    assert "activation sparsity per layer" in out.stdout
    assert (folders[0] / ".hydra" / "overrides.yaml").exists()


def test_cli_multirun_grid(cli, tiny, tmp_path):
    out = cli("run", "-m", *tiny, "model.depth=1,2", "seed=0,1")
    assert out.returncode == 0, out.stderr
    summaries = list((tmp_path / "results" / "multirun").glob("*/*/summary.json"))
    assert len(summaries) == 4
    assert all(json.loads(p.read_text())["status"] == "completed" for p in summaries)


def test_cli_unknown_choice_lists_the_valid_ones(cli):
    out = cli("run", "model=resnet")
    assert out.returncode != 0
    assert "model" in out.stderr and "mlp" in out.stderr
    assert not (out.stderr.count("Traceback") and "HYDRA_FULL_ERROR" not in out.stderr)


def test_cli_cfg_job_and_help(cli, tmp_path):
    out = cli("run", "model.width=77", "--cfg", "job")
    assert out.returncode == 0 and "width: 77" in out.stdout
    assert not (tmp_path / "results").exists()
    helped = cli("run", "--help")
    groups = dict(line.split(": ", 1) for line in helped.stdout.splitlines() if line.startswith(("model: ", "probes: ")))
    # a choice's presence, not the exact line: a new preset sorting before mlp must not break this
    assert helped.returncode == 0 and "mlp" in groups["model"].split(", ") and "cheap" in groups["probes"].split(", ")
    top = cli("--help")
    assert "run [overrides]" in top.stdout


def test_cli_missing_dataset_is_a_short_error(cli, tmp_path):
    out = cli("run", "data=mnist", f"data.root={tmp_path / 'none'}", "trainer.progress=false")
    assert out.returncode == 2
    assert "error: MNIST not found" in out.stderr and "Traceback" not in out.stderr


def test_first_run_in_a_process_draws_what_a_later_one_does(tmp_path):
    """Building the data imports libraries lazily (the digits: scikit-learn, which imports rich, which takes a
    draw from Python's global generator at import). The run's generators must not see that: in a fresh
    interpreter, two identical assemblies leave Python's, NumPy's and torch's generators in the same state."""
    import subprocess
    import sys

    from .conftest import ROOT, TINY

    script = f"""
import random, numpy as np, torch
from hydra import compose, initialize_config_dir
from sparsity_exp.assemble import assemble
from sparsity_exp.config import conf_dir, register_resolvers
register_resolvers()
with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
    cfg = compose(config_name="config", overrides={TINY!r})
draws = []
for _ in range(2):
    assemble(cfg)
    draws.append((random.random(), float(np.random.rand()), float(torch.rand(()))))
print(repr(draws))
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    first, second = eval(out.stdout.strip().splitlines()[-1])
    assert first == second
