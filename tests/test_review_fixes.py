"""Fixes from the integration review: schedules the validator accepts, per-sample gradients under
gradient accumulation, weight probes of LoRA-adapted keys."""
import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from sparsity_exp.run import execute
from sparsity_exp.validate import validate_config


def test_inverse_sqrt_schedule_passes_validation(compose):
    validate_config(compose("model=t5", "optim.schedule.name=inverse_sqrt", "optim.schedule.warmup_steps=10"))


def _as_key(compose, tiny, tmp_path, accum):
    cfg = compose(*tiny, "trainer.steps=1", "probes=none", f"trainer.grad_accum={accum}",
                  "+probes.augmented_flatness.every=1", "+probes.augmented_flatness.per_sample=true")
    execute(cfg, tmp_path / f"k{accum}")
    m = pd.read_csv(tmp_path / f"k{accum}" / "metrics.csv")
    rows = m[(m.probe == "augmented_flatness") & (m.step == 0)].sort_values(["metric", "layer"])
    return rows.set_index(["metric", "layer"]).value


def test_per_sample_gradients_do_not_depend_on_accumulation(compose, tiny, tmp_path):
    one, two = _as_key(compose, tiny, tmp_path, 1), _as_key(compose, tiny, tmp_path, 2)
    assert len(one) > 0 and list(one.index) == list(two.index)
    np.testing.assert_allclose(two.to_numpy(), one.to_numpy(), rtol=1e-6)


def test_weight_probes_see_the_lora_delta():
    from sparsity_exp.activations import ReLU
    from sparsity_exp.models import find_sites
    from sparsity_exp.models.mlp import LNMLP
    from sparsity_exp.modules.finetune import add_lora
    from sparsity_exp.probes.spectrum import key_eigenvalues

    torch.manual_seed(0)
    model = LNMLP(in_features=6, num_classes=3, make_act=ReLU, width=8, depth=1)
    sites = find_sites(model)
    add_lora(model, sites, OmegaConf.create({"enabled": True, "rank": 2, "alpha": 1, "dropout": 0.0,
                                             "targets": "all_linear"}))
    key = sites[0].key
    with torch.no_grad():
        key.lora_B["default"].weight.normal_()  # a non-zero adapter
    x = torch.randn(5, 8)
    applied = key(x) - key.get_base_layer().bias  # what the adapted layer computes, without its bias
    w = sites[0].weight("key")
    torch.testing.assert_close(x @ w.T, applied, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(w, key.get_base_layer().weight)
    np.testing.assert_allclose(key_eigenvalues(w), np.sort(np.linalg.svd(w.detach().double().numpy(),
                                                                         compute_uv=False) ** 2)[::-1], rtol=1e-9)


def test_bad_input_while_resuming_leaves_the_run_record(compose, tiny, tmp_path, monkeypatch):
    """An interrupted run continued with a bad device keeps its summary (status interrupted)."""
    import json
    import os
    import signal

    from sparsity_exp.errors import UserError
    from sparsity_exp.lifecycle.preempt import Preempted
    from sparsity_exp.train import Trainer

    cfg = compose(*tiny, "trainer.checkpoint_every=10")
    original = Trainer.train_step

    def stop_at_15(self, batch):
        original(self, batch)
        if self.step == 15:
            os.kill(os.getpid(), signal.SIGUSR1)

    monkeypatch.setattr(Trainer, "train_step", stop_at_15)
    with pytest.raises(Preempted):
        execute(cfg, tmp_path)
    monkeypatch.setattr(Trainer, "train_step", original)
    before = (tmp_path / "summary.json").read_bytes()
    assert json.loads(before)["status"] == "interrupted"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="CUDA"):
        execute(compose(*tiny, "trainer.checkpoint_every=10", "trainer.device=cuda"), tmp_path)
    assert (tmp_path / "summary.json").read_bytes() == before


def test_figures_find_post_hoc_arrays(tmp_path):
    from sparsity_exp.plots.spectrum import runs_with_arrays

    for run, prefix in (("a", ""), ("b", "posthoc_")):
        (tmp_path / run / "arrays").mkdir(parents=True)
        np.savez(tmp_path / run / "arrays" / f"{prefix}gradient_density_step00000010.npz", layer_0=np.ones(3))
    table = pd.DataFrame({"run": ["a", "b"], "run_dir": [str(tmp_path / "a"), str(tmp_path / "b")]})
    found = dict(runs_with_arrays(table, "gradient_density"))
    assert [s for s, _ in found["a"]] == [10] and found["b"][0][1].name.startswith("posthoc_")


def test_sharpness_at_rho_zero_is_zero_under_mixup():
    """With MixUp on, the clean and the perturbed loss of a batch must use one mix: rho = 0 gives 0."""
    from sparsity_exp.activations import ReLU
    from sparsity_exp.models import find_sites
    from sparsity_exp.models.mlp import LNMLP
    from sparsity_exp.probes.base import ProbeContext
    from sparsity_exp.probes.sharpness import SharpnessProbe
    from sparsity_exp.train import ClassificationTask

    torch.manual_seed(0)
    model = LNMLP(in_features=6, num_classes=3, make_act=ReLU, width=8, depth=2)
    def mix(x, y):  # MixUp on feature vectors: a fresh mixing weight and partner order at every call
        lam, perm = torch.rand(()), torch.randperm(len(x))
        soft = torch.nn.functional.one_hot(y, 3).float()
        return lam * x + (1 - lam) * x[perm], lam * soft + (1 - lam) * soft[perm]

    task = ClassificationTask(batch_transform=mix)
    batches = [(torch.randn(16, 6), torch.randint(0, 3, (16,))) for _ in range(2)]
    probe = SharpnessProbe(find_sites(model), rho=0.0)
    ctx = ProbeContext(model=model, sites=probe.sites, task=task, train_batches=batches, test_batches=batches,
                       device=torch.device("cpu"), step=0, seed=0, recorder=None)
    rows = probe.measure(ctx)
    assert rows and all(value == 0.0 for _, _, _, value in rows), rows
