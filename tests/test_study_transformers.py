"""The `transformers` study suite (conf/study/transformers.yaml) and what it needs of the study code: every arm
composes on both of its datasets and passes the start-up check; claim 2 on the ViT is judged from the first
finite AS_K / coef_L0 because torchvision's zero head makes step 0 a 0/0; non-inferiority on a lower-is-better
metric (T5's test loss); every suite's arms compose; `study paper --dry-run` prints the paper's recipes."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from sparsity_exp.config import conf_dir
from sparsity_exp.study.suite import load_suite, suite_path
from tests.conftest import ROOT

SUITES = ("cpu", "gpu", "paper", "transformers")


def _suite(name="transformers"):
    return load_suite(suite_path(name, conf_dir()))


def _arm_sets(suite):
    """Every arm's overrides as the study composes them: each dataset entry in front of `data: auto` arms."""
    out = []
    for arm in suite.used_arms():
        entries = suite.datasets if arm.data == "auto" else [None]
        for ds in entries:
            data = list(ds.overrides) if ds is not None else []
            out.append((arm.name, ds.name if ds else None, [*data, *arm.overrides]))
    return out


def test_transformers_suite_judges_the_papers_transformer_claims():
    suite = _suite()
    rows = [row for c in suite.claims for row, _, _ in c.comparisons()]
    papers = {c.paper_claim for c in suite.claims if not c.control}
    assert papers == {2, 3, 6, 7, 9}
    # module by module on both models, each at comparable quality
    for row in ("7.vit.vit_jsrelu", "7.vit.vit_zeroth_bias", "7.vit.vit_sparsified", "7.t5.t5_jsrelu",
                "7.t5.t5_zeroth_bias", "7.t5.t5_sparsified", "6.vit", "6.t5", "3a.vit", "3a.t5", "3b.vit", "3b.t5"):
        assert row in rows
    by_id = {c.id: c for c in suite.claims}
    assert by_id["7.t5"].ni_metric.metric == "loss" and by_id["7.t5"].ni_direction == "decrease"
    assert by_id["7.vit"].ni_metric is None and by_id["7.vit"].ni_margin == 0.01
    assert by_id["2"].baseline == "first_finite"
    assert all(c.why.strip() for c in suite.claims), "every claim says why its SESOI / bound / margin"


@pytest.mark.parametrize("name", ["transformers", pytest.param("all", marks=pytest.mark.slow)])
def test_every_arm_of_every_suite_composes_and_passes_the_start_up_check(compose, name):
    """Each arm with each of its dataset entries in front (tests/test_presets.py checks the arms as the default
    run composes them, fast; the slow case here adds every dataset entry of every suite)."""
    from sparsity_exp.validate import problems

    found, n = {}, 0
    for name in SUITES if name == "all" else [name]:
        for arm, ds, overrides in _arm_sets(_suite(name)):
            cfg = compose(*overrides)
            found[(name, arm, ds)] = problems(cfg)
            n += 1
            if name == "transformers" and arm.startswith("vit"):
                assert cfg.model.name == "vit"
                side = {"fashion_mnist": 28, "digits": 8}[ds]
                assert side % cfg.model.patch_size == 0 and (side // cfg.model.patch_size) ** 2 == 16
    assert n >= 13 and not {k: v for k, v in found.items() if v}


def test_first_finite_baseline_skips_the_zero_over_zero_of_step_0():
    from sparsity_exp.study.stats import first_finite_value, series, step0_value
    from sparsity_exp.study.suite import Metric

    rows = pd.DataFrame({"step": [0, 0, 25, 25, 50, 50], "probe": "augmented_flatness",
                         "metric": ["as_key", "coef_l0"] * 3, "split": "train", "layer": "avg",
                         "value": [0.0, 0.0, 6.0, 3.0, 2.0, 2.0]})
    values = series(rows, Metric("augmented_flatness", "as_key", "train", "avg", divide_by="coef_l0"))
    assert math.isnan(step0_value(values))
    assert first_finite_value(values) == 2.0  # 6 / 3 at step 25, the first finite ratio
    assert math.isnan(first_finite_value(pd.Series([np.nan, np.inf], index=[0, 25])))


@pytest.fixture(scope="module")
def vit_claim2_run(tmp_path_factory):
    """The suite's own ViT arm (digits entry), shortened to 4 steps with the flatness probe every 2 steps."""
    import subprocess
    import sys

    suite = _suite()
    arm = suite.arms["vit"]
    digits = next(d for d in suite.datasets if d.name == "digits")
    out = tmp_path_factory.mktemp("vit2")
    cmd = [sys.executable, "-m", "sparsity_exp", "run", *digits.overrides, *arm.overrides, "trainer.steps=4",
           "trainer.log_every=2", "trainer.eval_every=4", "++probes.augmented_flatness.every=2",
           "++probes.gradient_density.every=2", f"results_dir={out}", "trainer.progress=false"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    (run,) = [p for p in out.iterdir() if (p / "metrics.csv").is_file()]
    return suite, pd.read_csv(run / "metrics.csv")


def test_vit_claim_2_reads_a_finite_value_from_the_first_step_the_head_passes_gradient(vit_claim2_run, compose):
    """Claim 2 on the ViT: torchvision zero-initialises the head, so at step 0 AS_K = coef_L0 = 0 exactly and the
    ratio is 0/0; the claim's baseline (first_finite) is the first measured step after it, a finite positive value."""
    from sparsity_exp.data import DataInfo
    from sparsity_exp.models import build_model
    from sparsity_exp.study.stats import first_finite_value, series, step0_value

    suite, frame = vit_claim2_run
    claim = next(c for c in suite.claims if c.id == "2")
    cfg = compose("data=digits", *suite.arms["vit"].overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model, DataInfo((1, 8, 8), 10), cfg.activation)
    assert float(model.heads.head.weight.detach().abs().max()) == 0.0  # the reason: no gradient reaches the blocks at step 0
    raw = frame[(frame.probe == "augmented_flatness") & (frame.split == "train") & (frame.layer == "avg")]
    at0 = raw[raw.step == 0].set_index("metric")["value"]
    assert at0["as_key"] == 0.0 and at0["coef_l0"] == 0.0
    values = series(frame, claim.metric)
    assert math.isnan(step0_value(values))
    first = first_finite_value(values)
    assert math.isfinite(first) and first > 0
    later = raw[raw.step == 2].set_index("metric")["value"]
    assert first == pytest.approx(later["as_key"] / later["coef_l0"])


def test_noninferiority_on_a_loss_reads_lower_as_better(tmp_path):
    """A treatment whose loss is 0.2 nats worse than the reference's fails a 0.05-nat margin; 0.001 nats worse
    passes; the same numbers as accuracies (higher is better) would read the other way round."""
    from sparsity_exp.study.stats import noninferiority

    rng = np.random.default_rng(0)
    ref = 2.0 + 0.002 * rng.standard_normal(6)
    for worse, expected in ((0.2, "inferior"), (0.001, "non-inferior")):
        treat = ref + worse + 0.002 * rng.standard_normal(6)
        # main._numbers negates a decrease-is-better metric before the check
        assert noninferiority(-treat, -ref, 0.05, paired=True).outcome == expected
    assert noninferiority(ref + 0.2, ref, 0.05, paired=True).outcome == "non-inferior"


def test_claim_figure_keeps_coinciding_arms_visible_and_labels_the_verdicts_seeds(tmp_path):
    """Claim 7.vit with four arms whose curves coincide exactly: one panel per verdict row, each side its own line
    style and marker, labelled with the seeds its verdict used (paired: the seeds both arms have), titles wrapped."""
    from sparsity_exp.study.report import ArmNumbers, Verdict, claim_plot
    from sparsity_exp.study.stats import judge

    suite = _suite()
    claim = next(c for c in suite.claims if c.id == "7.vit")
    curve = pd.Series([0.5, 0.55, 0.6], index=[0, 150, 300])

    def nums(arm, seeds):
        vals = [0.6 + 0.001 * s for s in seeds]
        return ArmNumbers(label=arm, arm=arm, seeds=list(seeds), values=vals, step0=[0.5] * len(seeds),
                          accuracy=[0.8] * len(seeds), curves={s: curve for s in seeds},
                          status=["completed"] * len(seeds))

    ref = nums("vit", range(6))  # the reference has 6 seeds, the treatments 3 (a later look added seeds)
    sides = [ref] + [nums(s.arm, range(3)) for s in claim.sides[1:]]
    verdicts = [Verdict(row, claim, sides[i + 1], ref, judge(sides[i + 1].values, ref.values[:3], "arms", "increase",
                                                                 0.1, "nonzero_relative", paired=True))
                for i, (row, _, _) in enumerate(claim.comparisons())]
    fig = claim_plot(claim, sides, tmp_path / "c.png", verdicts, width=60)
    assert (tmp_path / "c.png").is_file()
    axes = [ax for ax in fig.axes if ax.get_legend() is not None]
    assert len(axes) == 3
    for ax, v in zip(axes, verdicts):
        lines = [ln for ln in ax.get_lines() if ln.get_label() and not ln.get_label().startswith("_")]
        assert len(lines) == 2
        assert len({(ln.get_linestyle(), ln.get_marker()) for ln in lines}) == 2  # distinguishable
        np.testing.assert_array_equal(lines[0].get_ydata(), lines[1].get_ydata())  # the curves do coincide
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels == ["vit: n=3 (seeds 0-2)", f"{v.treatment.label}: n=3 (seeds 0-2)"]  # paired: 3, not 6
        assert all(len(line) <= 28 or " " not in line for line in ax.get_title().split("\n"))
        assert " ".join(ax.get_title().split()) == v.row  # wrapped at spaces, no word cut
    title = fig._suptitle.get_text()
    assert "\n" in title and " ".join(title.split()) == f"{claim.id}: {claim.statement}"


def test_gpu_suite_trains_its_vit_on_whatever_image_set_is_present(tmp_path):
    """`study gpu` offline: CIFAR-10 when data.root holds its batches, else Fashion-MNIST (Debian's folder or its
    parent), else the embedded digits; T5 needs no data. Each choice's ViT composes to 64 (or 16) tokens."""
    from sparsity_exp.study.execute import plan_jobs

    suite = _suite("gpu")
    root = tmp_path / "data"
    cifar = root / "cifar-10-batches-py"
    fashion = root / "fashion-mnist"
    seen = {}
    for make in (None, "fashion", "cifar"):
        if make == "fashion":
            fashion.mkdir(parents=True)
            for n in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                      "t10k-labels-idx1-ubyte"):
                (fashion / f"{n}.gz").write_bytes(b"")
        if make == "cifar":
            cifar.mkdir(parents=True)
            for n in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
                (cifar / n).write_bytes(b"")
        jobs, ds = plan_jobs(suite, [f"data.root={root}"], tmp_path / "out", link=True)
        seen[make] = ds.name
        vit = next(j for j in jobs if j.arm.name == "vit")
        t5 = next(j for j in jobs if j.arm.name == "t5")
        assert not any(o.startswith("data.root=") for o in t5.overrides) and "data=text" in t5.overrides
        if ds.name == "cifar10":
            assert f"data.root={root.resolve()}" in vit.overrides and "model.patch_size=4" in vit.overrides
    assert seen == {None: "digits", "fashion": "fashion_mnist", "cifar": "cifar10"}
    assert next(c for c in suite.claims if c.id == "2").baseline == "first_finite"


def _dry_run_arms(text: str) -> dict:
    """`study --dry-run` output -> {arm name: {dotted key: printed value}} (the keys that differ from defaults)."""
    arms, current = {}, None
    for line in text.splitlines():
        if line.startswith("## arm "):
            current = {}
            for name in line[len("## arm "):].split(", "):
                arms[name] = current
        elif current is not None and line.startswith("    ") and ": " in line:
            key, value = line.strip().split(": ", 1)
            current[key] = value
        elif current is not None and line.startswith("  command: "):
            current["command"] = line[len("  command: "):]
    return arms


# docs/paper.md §4.3-4.4: the paper's recipes, as `study paper --dry-run` must print them
PAPER_RECIPES = {
    "vit": {"optim.name": "adamw", "optim.lr": "0.003", "optim.weight_decay": "0.3", "trainer.batch_size": "2048",
            "trainer.grad_accum": "32", "optim.schedule.name": "cosine", "trainer.label_smoothing": "0.11",
            "data.mixup_alpha": "0.2", "data.cutmix_alpha": "1.0", "data.randaugment.num_ops": "2",
            "data.randaugment.magnitude": "9", "data.name": "imagenet"},
    "vit_ft_sparsified": {"protocol.name": "sparsity_finetune", "protocol.lora.rank": "192", "optim.lr": "0.003",
                          "optim.weight_decay": "0.3", "trainer.batch_size": "2048", "modules.activation": "jsrelu"},
    "vit_ft": {"protocol.lora.rank": "192", "protocol.name": "sparsity_finetune"},
    "t5": {"optim.name": "adamw", "optim.lr": "0.01", "optim.weight_decay": "0.001",
           "optim.schedule.name": "inverse_sqrt", "optim.schedule.warmup_steps": "10000", "trainer.steps": "100000",
           "trainer.batch_size": "256", "data.inputs_length": "512", "data.name": "c4"},
    "t5_ft_sparsified": {"protocol.lora.rank": "192", "protocol.name": "sparsity_finetune"},
}


def test_paper_dry_run_prints_the_papers_recipes(tmp_path, monkeypatch, capsys):
    from sparsity_exp.study.main import cli as study

    monkeypatch.chdir(tmp_path)
    assert study(["paper", "--dry-run"]) == 0
    out = capsys.readouterr().out
    arms = _dry_run_arms(out)
    assert set(arms) >= {a.name for a in _suite("paper").used_arms()}
    for arm, recipe in PAPER_RECIPES.items():
        got = {k: arms[arm].get(k) for k in recipe}
        assert got == recipe, arm
    # 300 epochs of ImageNet-1k (1,281,167 images) at a global batch of 2048
    assert round(int(arms["vit"]["trainer.steps"]) * 2048 / 1_281_167) == 300
    assert "seed=0,1,2" in arms["t5"]["command"] and arms["vit_ft"]["protocol.init"].endswith("vit_seed${seed}")
    assert not (tmp_path / "study").exists()  # a dry run writes nothing


def test_no_arm_inherits_a_presets_sweep():
    """An arm runs one job per seed: a preset's `hydra.sweeper.params` (paper/t5_c4 sweeps `modules`) would turn
    `run -m ... seed=0,1,2` into a grid, so every arm sets each key its preset sweeps (the bug: the T5 arms ran
    twice, once with modules=sparsified)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    from sparsity_exp.config import register_resolvers

    register_resolvers()
    checked = 0
    for name in SUITES:
        suite = _suite(name)
        for arm in suite.used_arms():
            presets = [o for o in arm.overrides if o.startswith("experiment=")]
            if not presets:
                continue
            with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
                cfg = hydra_compose("config", overrides=presets, return_hydra_config=True)
            swept = set((cfg.hydra.sweeper.get("params") or {}).keys())
            keys = {o.split("=", 1)[0].lstrip("+~") for o in arm.overrides}
            assert swept <= keys, f"{name}: arm {arm.name} leaves {sorted(swept - keys)} to its preset's sweep"
            checked += bool(swept)
    assert checked >= 8
