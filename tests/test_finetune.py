"""Sparsity finetuning starts from a run the spine really saved: a tiny vanilla run first, then a
finetuning run from its folder (or checkpoint file), with LoRA through peft and the schedules."""
import json

import pandas as pd
import pytest
import torch

from sparsity_exp.lifecycle.checkpoint import list_checkpoints, load_checkpoint
from sparsity_exp.errors import ConfigError
from sparsity_exp.run import execute

FT = ["protocol=sparsity_finetune", "modules=sparsified", "protocol.mixing_steps=20", "protocol.uplift_steps=20",
      "protocol.lora.rank=4"]


@pytest.fixture
def source(compose, tiny, tmp_path):
    run = tmp_path / "source"
    execute(compose(*tiny), run)
    return run


def _metric(m, probe, metric, split, layer="avg"):
    rows = m[(m.probe == probe) & (m.metric == metric) & (m.split == split) & (m.layer.astype(str) == layer)]
    return dict(zip(rows.step, rows.value))


def test_finetune_from_a_saved_run_folder(compose, tiny, tmp_path, source):
    run = tmp_path / "ft"
    execute(compose(*tiny, *FT, f"protocol.init={source}"), run)
    init = json.loads((run / "init.json").read_text())
    assert init["checkpoint_step"] == 30 and init["source_run"] == str(source)
    src_m, m = pd.read_csv(source / "metrics.csv"), pd.read_csv(run / "metrics.csv")
    # it really starts from the source's weights: at step 0 every module is still the identity
    # (LoRA B = 0, zeroth biases 0, k_0 = 0 so ReLU, gamma = 1 without bias), so the test loss is the
    # source's final one
    assert _metric(m, "eval", "loss", "test")[0] == pytest.approx(_metric(src_m, "eval", "loss", "test")[30], rel=1e-5)
    # schedules: k_t = t / 20 at the log steps, the uplift floor reaches 1 at t = 20
    assert _metric(m, "modules", "jsrelu_portion", "train") == pytest.approx({0: 0.0, 10: 0.5, 20: 1.0})

    src_state = load_checkpoint(list_checkpoints(source)[-1][1])["model"]
    state = load_checkpoint(list_checkpoints(run)[-1][1])["model"]
    # LoRA: the base weights are frozen, the adapters, biases and zeroth biases trained
    assert torch.equal(state["blocks.0.key.base_layer.weight"], src_state["blocks.0.key.weight"])
    assert torch.equal(state["head.base_layer.weight"], src_state["head.weight"])
    assert state["blocks.0.key.lora_B.default.weight"].abs().max() > 0
    assert state["blocks.0.key.lora_A.default.weight"].shape == (4, 32)
    assert not torch.equal(state["blocks.0.key.base_layer.bias"], src_state["blocks.0.key.bias"])
    assert state["zeroth_biases.0.bias"].abs().max() > 0
    for i in range(2):  # uplift finished: |gamma| >= 1
        assert (state[f"blocks.{i}.norm.weight"].abs() >= 1).all()


def test_finetune_from_a_checkpoint_file_without_lora(compose, tiny, tmp_path, source):
    ckpt = list_checkpoints(source)[-1][1]
    run = tmp_path / "ft"
    execute(compose(*tiny, "protocol=sparsity_finetune", f"protocol.init={ckpt}", "protocol.lora.enabled=false",
                    "trainer.steps=10"), run)
    state = load_checkpoint(list_checkpoints(run)[-1][1])["model"]
    src_state = load_checkpoint(ckpt)["model"]
    assert not any("lora" in k for k in state)
    assert not torch.equal(state["blocks.0.key.weight"], src_state["blocks.0.key.weight"])  # full finetuning


def test_finetune_input_errors(compose, tiny, tmp_path, source):
    with pytest.raises(ConfigError, match="needs protocol.init"):
        execute(compose(*tiny, "protocol=sparsity_finetune"), tmp_path / "a")
    with pytest.raises(ConfigError, match="no such run folder"):
        execute(compose(*tiny, "protocol=sparsity_finetune", f"protocol.init={tmp_path / 'nope'}"), tmp_path / "b")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="has no checkpoints"):
        execute(compose(*tiny, "protocol=sparsity_finetune", f"protocol.init={tmp_path / 'empty'}"), tmp_path / "c")
    loose = tmp_path / "loose.pt"  # outside a run folder: rebuilt from this run's model settings
    loose.write_bytes(list_checkpoints(source)[-1][1].read_bytes())
    with pytest.raises(ConfigError, match="does not fit"):
        execute(compose(*tiny, "protocol=sparsity_finetune", f"protocol.init={loose}", "model.width=48"), tmp_path / "d")
    assert json.loads((tmp_path / "d" / "summary.json").read_text())["status"] == "failed"


def test_finetune_from_a_modified_run_is_refused(compose, tiny, tmp_path, source):
    first = tmp_path / "ft"
    execute(compose(*tiny, *FT, f"protocol.init={source}", "trainer.steps=5"), first)
    with pytest.raises(ConfigError, match="modules=none"):
        execute(compose(*tiny, *FT, f"protocol.init={first}"), tmp_path / "again")


@pytest.mark.slow  # two CLI processes, one importing peft (and transformers): over a minute on a busy CPU
def test_cli_finetune_from_a_run_folder(cli, tiny, tmp_path):
    out = cli("run", *tiny, "trainer.steps=10")
    assert out.returncode == 0, out.stderr
    (src,) = (tmp_path / "results").iterdir()
    assert "=" in src.name  # run folder names hold '=' and ',': the value must be quoted for Hydra
    out = cli("run", *tiny, "trainer.steps=10", *FT, f"protocol.init='{src}'")
    assert out.returncode == 0, out.stderr
    ft = [p for p in (tmp_path / "results").iterdir() if p != src]
    assert json.loads((ft[0] / "init.json").read_text())["source_run"] == str(src)


def test_lora_reaches_torchvision_attention_and_trains(compose):
    """ViT finetuning adapts attention as the paper's LoRA did: peft wraps each nn.MultiheadAttention
    (packed q/k/v and out_proj); its adapters get gradients and move, its base weights stay frozen."""
    pytest.importorskip("peft")
    import torch.nn.functional as F
    from torch import nn

    from sparsity_exp.data import build_data
    from sparsity_exp.models import build_model, find_sites
    from sparsity_exp.modules.finetune import add_lora

    cfg = compose("model=vit", "protocol=sparsity_finetune", "protocol.lora.rank=4")
    data = build_data(cfg.data)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.info, cfg.activation)
    before = {n: m.in_proj_weight.detach().clone() for n, m in model.named_modules()
              if isinstance(m, nn.MultiheadAttention)}
    names = add_lora(model, find_sites(model), cfg.protocol.lora)
    assert set(before) <= set(names)
    attn = {n: model.get_submodule(n) for n in before}
    assert all(hasattr(m, "lora_A") and hasattr(m, "get_base_layer") for m in attn.values())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x, y = torch.randn(16, *data.info.input_shape), torch.randint(0, data.info.num_classes, (16,))
    for step in range(4):  # torchvision zero-initialises the head: gradients reach attention from step 1 on
        F.cross_entropy(model(x), y).backward()
        if step == 3:
            assert all(m.lora_B["default"].weight.grad.abs().max() > 0 for m in attn.values())
        opt.step()
        opt.zero_grad()
    for n, m in attn.items():
        assert m.lora_B["default"].weight.abs().max() > 0  # the adapter trained (B starts at 0)
        assert not m.get_base_layer().in_proj_weight.requires_grad
        # frozen, up to rounding: peft's MultiheadAttention adds the LoRA delta to in_proj_weight for each
        # forward and subtracts it after, so the base weight moves by float32 rounding only
        assert torch.allclose(m.get_base_layer().in_proj_weight, before[n], rtol=0, atol=1e-5)
