"""The paper-experiment presets (conf/experiment/paper/): every paper config and its CPU twin compose
with the paper's settings, the twins keep the paper's recipe and shrink only its scale, the sweeps
have the paper's grids, and the cheap twins run end to end."""
import csv
import itertools
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import ROOT

PAPER = ROOT / "conf" / "experiment" / "paper"
PRESETS = sorted(p.stem for p in PAPER.glob("*.yaml") if not p.stem.endswith("_cpu"))

# preset -> dotted key -> the paper's value (docs/paper.md §4)
PAPER_SETTINGS = {
    "shifted": {"model.hidden_dim": 768, "model.patch_size": 16, "data.name": "cifar10", "activation.name": "shifted",
                "activation.half_width": 1.5, "optim.name": "adam", "optim.lr": 1e-4, "optim.weight_decay": 0.0,
                "trainer.batch_size": 64, "trainer.grad_clip": 1.0, "trainer.log_every": 10,
                "optim.schedule.warmup_start": 0.1, "modules.zeroth_bias.enabled": True,
                "modules.zeroth_bias.clip": None, "trainer.steps": 78200},
    "cifar_ablation": {"model.hidden_dim": 768, "data.name": "cifar10", "optim.name": "adamw", "optim.lr": 1e-4,
                       "optim.weight_decay": 1e-4, "model.dropout": 0.2, "trainer.batch_size": 64,
                       "trainer.grad_clip": 1.0, "trainer.precision": "bf16"},
    "vit_imagenet": {"model.hidden_dim": 768, "model.num_layers": 12, "data.name": "imagenet", "optim.name": "adamw",
                     "optim.lr": 3e-3, "optim.weight_decay": 0.3, "optim.schedule.name": "cosine",
                     "optim.schedule.warmup_steps": 0, "trainer.batch_size": 2048, "trainer.grad_accum": 32,
                     "trainer.label_smoothing": 0.11, "trainer.grad_clip": 1.0, "trainer.steps": 187500,
                     "trainer.log_every": 100, "data.mixup_alpha": 0.2, "data.cutmix_alpha": 1.0,
                     "data.repeated_augmentation": 3, "protocol.name": "vanilla"},
    "vit_imagenet_finetune": {"data.name": "imagenet", "optim.lr": 3e-3, "optim.weight_decay": 0.3,
                              "protocol.name": "sparsity_finetune", "protocol.lora.rank": 192, "protocol.lora.alpha": 1,
                              "protocol.mixing_steps": 0, "trainer.steps": 9375, "trainer.batch_size": 2048},
    "t5_c4": {"model.d_model": 768, "model.num_layers": 12, "model.num_decoder_layers": 12, "data.name": "c4",
              "data.inputs_length": 512, "optim.name": "adamw", "optim.lr": 0.01, "optim.weight_decay": 0.001,
              "optim.decay_norm_and_bias": False, "optim.schedule.name": "inverse_sqrt",
              "optim.schedule.warmup_steps": 10000, "trainer.batch_size": 256, "trainer.steps": 100000,
              "trainer.log_every": 25, "trainer.eval_every": 5000},
    "t5_c4_finetune": {"data.name": "c4", "optim.lr": 0.01, "protocol.name": "sparsity_finetune",
                       "protocol.lora.rank": 192, "protocol.mixing_steps": 3000, "protocol.uplift_steps": 3000,
                       "optim.schedule.warmup_steps": 1000, "trainer.steps": 10000, "trainer.grad_accum": 2,
                       "trainer.log_every": 50, "trainer.eval_every": 2500, "trainer.checkpoint_every": 1000},
    "mlp_rmt": {"model.name": "mlp", "model.depth": 4, "model.value": False, "model.norm_affine": False,
                "data.name": "mnist", "data.image_size": 32, "optim.name": "sgd", "optim.lr": 1e-3,
                "trainer.batch_size": 32, "trainer.steps": 187500, "trainer.log_every": 20, "probes.rmt.thr": 1e-3},
    "augmented_flatness": {"model.hidden_dim": 768, "data.name": "cifar10", "optim.lr": 1e-4,
                           "optim.weight_decay": 0.05, "optim.schedule.name": "cosine", "trainer.batch_size": 128,
                           "trainer.label_smoothing": 0.11, "data.mixup_alpha": 0.2, "trainer.log_every": 25,
                           "trainer.checkpoint_every": 1955},
}
# what a twin must keep from its paper preset (the recipe), while model size, data and length shrink
RECIPE = ["optim.name", "optim.schedule.name", "activation.name", "activation.shift_x", "protocol.name",
          "modules.zeroth_bias.enabled", "modules.zeroth_bias.clip", "modules.restricted_norm.enabled",
          "model.name", "model.depth", "model.value", "trainer.grad_clip"]
# preset -> (swept keys, number of runs) of its `-m` grid at paper scale, and of its twin
SWEEPS = {"shifted": (4, 4), "cifar_ablation": (4, 4), "vit_imagenet": (2, 2), "vit_imagenet_finetune": (2, 2),
          "t5_c4": (2, 2), "t5_c4_finetune": (2, 2), "mlp_rmt": (48, 6), "augmented_flatness": (1, 1)}


def _get(cfg, key):
    return OmegaConf.select(cfg, key, throw_on_missing=True)


def _grid_size(params) -> int:
    if not params:
        return 1
    return len(list(itertools.product(*[str(v).split(",") for v in params.values()])))


def test_every_paper_experiment_has_a_preset_and_a_twin():
    assert set(PRESETS) == set(PAPER_SETTINGS)
    for name in PRESETS:
        assert (PAPER / f"{name}_cpu.yaml").is_file(), f"{name} has no CPU twin"
        for file in (f"{name}.yaml", f"{name}_cpu.yaml"):
            text = (PAPER / file).read_text()
            assert text.startswith("# @package _global_\n#"), f"{file} must open with its package line and a comment"
            assert f"experiment=paper/{name}_cpu" in text, f"{file} must give the twin's command"
        header = (PAPER / f"{name}.yaml").read_text().split("defaults:")[0]
        assert f"experiment=paper/{name}" in header and "sparsity-exp figures" in header
        assert "GPU" in header, f"{name}.yaml must say what hardware it expects"


@pytest.mark.parametrize("name", sorted(PAPER_SETTINGS))
def test_paper_preset_has_the_papers_settings(compose, name):
    cfg = compose(f"experiment=paper/{name}")
    for key, want in PAPER_SETTINGS[name].items():
        got = _get(cfg, key)
        assert got == pytest.approx(want) if isinstance(want, float) else got == want, f"{name}: {key}={got}, want {want}"


@pytest.mark.parametrize("name", sorted(PAPER_SETTINGS))
def test_twin_keeps_the_recipe_and_runs_on_embedded_data(compose, name):
    paper = compose(f"experiment=paper/{name}")
    twin = compose(f"experiment=paper/{name}_cpu")
    for key in RECIPE:
        if OmegaConf.select(paper, key) is not None:
            assert _get(twin, key) == _get(paper, key), f"{name} twin changes the recipe: {key}"
    assert set(twin.probes) == set(paper.probes)
    assert twin.data.name in ("digits", "text")  # embedded data, nothing to download
    assert twin.trainer.steps <= 600 and twin.trainer.precision == "fp32"
    assert twin.trainer.batch_size <= 64 and twin.trainer.grad_accum == 1
    if twin.model.name == "vit":
        assert twin.model.hidden_dim <= 64 and twin.model.image_size is None
    if twin.model.name == "t5":
        assert twin.model.d_model <= 64 and twin.data.tokenizer == "bytes"
    if twin.model.name == "mlp":
        assert twin.model.width <= 256


@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_sweep_grids(compose, name):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from sparsity_exp.config import conf_dir

    sizes = []
    for choice in (name, f"{name}_cpu"):
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=[f"experiment=paper/{choice}"],
                                return_hydra_config=True)
        sizes.append(_grid_size(cfg.hydra.sweeper.params))
    assert tuple(sizes) == SWEEPS[name]


def test_shifted_grid_is_the_papers(compose):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from sparsity_exp.config import conf_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=["experiment=paper/shifted"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert sorted(float(v) for v in params["activation.shift_x"].split(",")) == [-1.6, 1.6]
    assert sorted(float(v) for v in params["activation.shift_y"].split(",")) == [-1.6, 1.6]


def test_finetune_preset_without_init_says_what_to_do(cli):
    res = cli("run", "experiment=paper/vit_imagenet_finetune_cpu", "trainer.steps=2")
    assert res.returncode == 2
    assert "protocol.init" in res.stderr and "Traceback" not in res.stderr


def _rows(path: Path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _run_dirs(root: Path):
    return sorted(p.parent for p in root.rglob("summary.json"))


def test_shifted_twin_runs_end_to_end(cli, tmp_path):
    res = cli("run", "experiment=paper/shifted_cpu", "activation.shift_y=-1.6", "trainer.steps=20",
              "trainer.eval_every=20", "hydra.run.dir=out")
    assert res.returncode == 0, res.stderr[-2000:]
    rows = _rows(tmp_path / "out" / "metrics.csv")
    metrics = {(r["split"], r["metric"]) for r in rows}
    assert {("train", "derivative_sparsity"), ("test", "rest_fraction"), ("test", "derivative2")} <= metrics
    cfg = OmegaConf.load(tmp_path / "out" / "config.yaml")
    assert cfg.activation.shift_y == -1.6 and cfg.data.name == "digits" and cfg.model.hidden_dim == 64


def test_mlp_rmt_twin_sweep_runs_end_to_end(cli, tmp_path):
    # one width on the command line narrows the preset's grid to the two weight decays
    res = cli("run", "-m", "experiment=paper/mlp_rmt_cpu", "model.width=16", "trainer.steps=20",
              "trainer.eval_every=20", "hydra.sweep.dir=sweep")
    assert res.returncode == 0, res.stderr[-2000:]
    runs = _run_dirs(tmp_path / "sweep")
    assert len(runs) == 2
    wds = sorted(OmegaConf.load(r / "config.yaml").optim.weight_decay for r in runs)
    assert wds == [0.01, 0.1]
    metrics = {r["metric"] for r in _rows(runs[0] / "metrics.csv") if r["probe"] == "rmt"}
    assert {"rel_anisotropy_input", "bound_re", "t_eff"} <= metrics


def test_augmented_flatness_twin_and_posthoc_probe(cli, tmp_path):
    res = cli("run", "experiment=paper/augmented_flatness_cpu", "trainer.steps=20", "trainer.checkpoint_every=10",
              "trainer.eval_every=20", "hydra.run.dir=run")
    assert res.returncode == 0, res.stderr[-2000:]
    res = cli("probe", "run", "probes=checkpoints", "checkpoints=all", "probes.augmented_flatness.batches=1")
    assert res.returncode == 0, res.stderr[-2000:]
    rows = _rows(tmp_path / "run" / "posthoc_metrics.csv")
    steps = {int(r["step"]) for r in rows if r["metric"] == "as_key"}
    assert steps == {0, 10, 20}  # the run also checkpoints its initial weights
    assert {"coef_l0", "ratio80", "density_ratio"} <= {r["metric"] for r in rows}


@pytest.mark.slow
@pytest.mark.parametrize("scratch,finetune", [("vit_imagenet_cpu", "vit_imagenet_finetune_cpu"),
                                              ("t5_c4_cpu", "t5_c4_finetune_cpu")])
def test_finetune_twin_from_its_scratch_twin(cli, tmp_path, scratch, finetune):
    res = cli("run", f"experiment=paper/{scratch}", "modules=none", "trainer.steps=20", "trainer.eval_every=20",
              "hydra.run.dir=vanilla")
    assert res.returncode == 0, res.stderr[-2000:]
    res = cli("run", "-m", f"experiment=paper/{finetune}", "protocol.init=vanilla", "trainer.steps=10",
              "trainer.eval_every=10", "hydra.sweep.dir=ft")
    assert res.returncode == 0, res.stderr[-2000:]
    runs = _run_dirs(tmp_path / "ft")
    assert len(runs) == 2
    arms = {OmegaConf.load(r / "config.yaml").modules.activation for r in runs}
    assert arms == {None, "jsrelu"}
    for r in runs:
        assert (r / "init.json").is_file()


def test_inverse_sqrt_schedule_passes_validation(compose):
    # regression: the schema listed only constant/cosine/linear, so the T5 recipe's inverse_sqrt
    # schedule (optim.py supports it) was refused at start-up
    from sparsity_exp.validate import problems, validate_config

    cfg = compose("experiment=paper/t5_c4_cpu")
    assert cfg.optim.schedule.name == "inverse_sqrt"
    validate_config(cfg)
    assert any("optim.schedule.name" in p for p in problems(compose("optim.schedule.name=wiggly")))


def test_every_preset_and_study_arm_passes_the_start_up_check(compose):
    """The one start-up check (validate.py: known keys, values, probe settings) accepts every paper
    preset, its twin, every choice of every group and every arm of every study suite as composed."""
    from sparsity_exp.config import conf_dir
    from sparsity_exp.study.suite import load_suite, suite_path
    from sparsity_exp.validate import problems

    conf = conf_dir()
    sets = [[f"experiment=paper/{p.stem}"] for p in sorted(PAPER.glob("*.yaml"))]
    sets += [[f"{g.name}={p.stem}"] for g in sorted(conf.iterdir()) if g.name not in ("experiment", "study", "hydra")
             and g.is_dir() for p in sorted(g.glob("*.yaml"))]
    for suite in sorted((conf / "study").glob("*.yaml")):
        arms = load_suite(suite_path(suite.stem, conf)).used_arms()
        sets += [[o for o in arm.overrides if o != "data=auto"] for arm in arms]
    found = {" ".join(s): problems(compose(*s)) for s in sets}
    assert len(sets) > 60 and not {k: v for k, v in found.items() if v}
