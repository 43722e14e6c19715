"""Launcher presets: a local joblib grid runs jobs in parallel processes, each in its own folder with
one torch thread; the SLURM preset composes against the submitit plugin's schema."""
import json

import pytest
from hydra import compose, initialize_config_dir

from sparsity_exp.config import conf_dir, register_resolvers


# slow (a joblib pool of processes, 18 s of a 2-core default suite): the default suite runs the local launcher
# in test_user_paths.py (a failed sweep under hydra/launcher=local, its job folders and summaries), and
# test_speed.py checks that trainer.threads=auto is 1 under joblib
@pytest.mark.slow
def test_local_joblib_grid_gives_distinct_completed_folders(cli, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    out = cli("run", "-m", "hydra/launcher=local", "hydra.launcher.n_jobs=2", "model.width=16", "model.depth=1",
              "trainer.steps=10", "trainer.log_every=5", "trainer.eval_every=10", "trainer.progress=false",
              "seed=0,1", "name=same")
    assert out.returncode == 0, out.stderr[-3000:]
    summaries = sorted((tmp_path / "results" / "multirun").glob("*/*/summary.json"))
    assert len(summaries) == 2 and len({p.parent for p in summaries}) == 2
    assert len({p.parent.parent for p in summaries}) == 1  # one sweep folder
    loaded = [json.loads(p.read_text()) for p in summaries]
    assert all(s["status"] == "completed" and s["threads"] == 1 for s in loaded)
    assert sorted(s["seed"] for s in loaded) == [0, 1]


def test_slurm_preset_composes_with_requeue_settings():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    register_resolvers()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1 and launcher.timeout_min > 0
    assert launcher.max_num_timeout > 0 and launcher.signal_delay_s > 0  # preempted jobs are requeued


def test_missing_launcher_plugin_is_a_short_error(monkeypatch, capsys):
    import importlib.util

    from sparsity_exp import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("hydra_plugins.hydra_joblib") else real(name, *a))
    assert cli.main(["run", "-m", "hydra/launcher=local", "seed=0,1"]) == 2
    assert "pip install 'sparsity-exp[cluster]'" in capsys.readouterr().err


def _local_launcher_cfg(*overrides):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    register_resolvers()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="config", overrides=["hydra/launcher=local", *overrides],
                       return_hydra_config=True)


def test_local_launcher_runs_jobs_per_gpu_times_visible_gpus(monkeypatch):
    import os

    import torch
    from omegaconf import OmegaConf

    from sparsity_exp import config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert config.local_jobs(4) == 12  # the resolver itself, uncached
    cfg = _local_launcher_cfg("trainer.jobs_per_gpu=8")
    assert OmegaConf.select(cfg, "hydra.launcher.n_jobs") == 24
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert config.local_jobs(8) == (os.cpu_count() or 1)  # no GPU: one job per core
    with pytest.raises(config.ConfigError, match="jobs_per_gpu"):
        config.local_jobs(0)


def test_local_jobs_are_placed_round_robin_on_the_gpus(monkeypatch):
    import torch

    from sparsity_exp.speed import place_local_job

    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert [place_local_job("auto", joblib, n) for n in range(5)] == [0, 1, 0, 1, 0]
    assert chosen == [0, 1, 0, 1, 0]
    # an explicit device, another launcher or no GPU: nothing is placed
    assert place_local_job("cuda:1", joblib, 0) is None and place_local_job("cpu", joblib, 0) is None
    assert place_local_job("auto", "hydra._internal.core_plugins.basic_launcher.BasicLauncher", 3) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert place_local_job("auto", joblib, 1) is None and chosen == [0, 1, 0, 1, 0]
