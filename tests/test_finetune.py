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


def _vit_with_lora(compose, rank=4, *extra):
    from sparsity_exp.data import build_data
    from sparsity_exp.models import build_model, find_sites
    from sparsity_exp.modules.finetune import add_lora

    cfg = compose("model=vit", "protocol=sparsity_finetune", f"protocol.lora.rank={rank}", *extra)
    data = build_data(cfg.data)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.info, cfg.activation)
    before = {n: m.in_proj_weight.detach().clone() for n, m in model.named_modules()
              if isinstance(m, torch.nn.MultiheadAttention)}
    names = add_lora(model, find_sites(model), cfg.protocol.lora)
    return model, data, before, names


def test_lora_reaches_torchvision_attention_and_trains(compose):
    """ViT finetuning adapts attention as the paper's LoRA did (loralib MergedLinear on q/k/v): each
    nn.MultiheadAttention's packed in_proj_weight and out_proj get low-rank adapters; they get
    gradients and move, the base weights stay frozen, exactly."""
    pytest.importorskip("peft")
    import torch.nn.functional as F
    from torch.nn.utils import parametrize

    model, data, before, names = _vit_with_lora(compose)
    assert set(before) <= set(names)
    attn = {n: model.get_submodule(n) for n in before}
    assert all(parametrize.is_parametrized(m, "in_proj_weight") and parametrize.is_parametrized(m.out_proj, "weight")
               for m in attn.values())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x, y = torch.randn(16, *data.info.input_shape), torch.randint(0, data.info.num_classes, (16,))
    for step in range(4):  # torchvision zero-initialises the head: gradients reach attention from step 1 on
        F.cross_entropy(model(x), y).backward()
        if step == 3:
            assert all(m.parametrizations.in_proj_weight[0].lora_B.grad.abs().max() > 0 for m in attn.values())
        opt.step()
        opt.zero_grad()
    for n, m in attn.items():
        lora = m.parametrizations.in_proj_weight
        assert lora[0].lora_B.abs().max() > 0  # the adapter trained (B starts at 0)
        assert not lora.original.requires_grad
        assert torch.equal(lora.original, before[n])  # the base is never written: frozen exactly


def test_attention_lora_is_rank_r_per_q_k_v_with_hand_counted_parameters(compose):
    """Rank r on each of q, k, v (as loralib's MergedLinear(enable_lora=[True, True, True])): the
    effective update of the packed in_proj_weight has rank <= r per block and up to 3r overall; the
    parameter counts are the hand-computed ones; the merged model computes the same function."""
    pytest.importorskip("peft")
    from sparsity_exp.modules.finetune import merge_attention_lora

    r = 3
    model, data, before, _ = _vit_with_lora(compose, r)
    d = model.hidden_dim
    for n, base in before.items():
        m = model.get_submodule(n)
        lora = m.parametrizations.in_proj_weight[0]
        with torch.no_grad():  # random B (it starts at 0) so the ranks are the generic ones
            lora.lora_B.normal_()
            m.out_proj.parametrizations.weight[0].lora_B.normal_()
        delta = (m.in_proj_weight - base).detach().double()
        assert delta.shape == (3 * d, d)
        rank = lambda t: int(torch.linalg.matrix_rank(t, rtol=1e-4))  # float32 rounding of W + delta - W
        for q_k_v in delta.split(d):  # q, k, v blocks of the packed weight
            assert rank(q_k_v) == r
        assert rank(delta) == 3 * r  # peft's single adapter would give r here
        # 3 x r x (d_in + d_out / 3) for the packed q/k/v (d_in = d, d_out = 3d), r (d + d) for out_proj
        assert lora.lora_A.numel() + lora.lora_B.numel() == 3 * r * (d + 3 * d // 3) == 6 * r * d
        out = m.out_proj.parametrizations.weight[0]
        assert out.lora_A.numel() + out.lora_B.numel() == 2 * r * d
        assert rank((m.out_proj.weight - m.out_proj.parametrizations.weight.original).detach().double()) == r
    model.eval()
    x = torch.randn(4, *data.info.input_shape)
    with torch.no_grad():
        unmerged = model(x)
        merge_attention_lora(model)
        merged = model(x)
    assert not any(hasattr(m, "parametrizations") for m in model.modules() if isinstance(m, torch.nn.MultiheadAttention))
    assert torch.allclose(merged, unmerged, rtol=0, atol=1e-5)
    with pytest.raises(ConfigError, match="protocol.lora.dropout=0"):
        _vit_with_lora(compose, 2, "protocol.lora.dropout=0.1")


def test_t5_lora_is_rank_r_on_each_of_q_k_v(compose):
    """T5's attention has separate q, k, v (and o) Linears: peft gives each its own rank-r adapter."""
    pytest.importorskip("peft")
    from sparsity_exp.data import build_data
    from sparsity_exp.models import build_model, find_sites
    from sparsity_exp.modules.finetune import add_lora

    cfg = compose("model=t5", "model.d_model=16", "model.d_kv=8", "model.d_ff=24", "model.num_heads=2",
                  "model.num_layers=1", "model.num_decoder_layers=1", "data.inputs_length=24",
                  "data.max_test_examples=16", "protocol=sparsity_finetune", "protocol.lora.rank=3")
    data = build_data(cfg.data)
    model = build_model(cfg.model, data.info, cfg.activation)
    add_lora(model, find_sites(model), cfg.protocol.lora)
    attention = [m for n, m in model.named_modules() if n.endswith("SelfAttention")]
    assert attention
    for att in attention:
        for proj in ("q", "k", "v", "o"):
            lin = getattr(att, proj)
            assert lin.lora_A["default"].weight.shape == (3, lin.in_features)
            assert lin.lora_B["default"].weight.shape == (lin.out_features, 3)


def test_model_and_activation_settings_a_run_folder_overrides_are_warned(compose, tiny, tmp_path, source):
    """From a run folder the model is rebuilt from that run's config: this run's activation= and
    model.* values have no effect, and the warning says which (none when they agree)."""
    import warnings

    from sparsity_exp.assemble import initial_model
    from sparsity_exp.data import build_data

    def warned(*overrides):
        cfg = compose(*tiny, *FT, f"protocol.init={source}", *overrides)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model, _ = initial_model(cfg, build_data(cfg.data).info)
        return model, [str(w.message) for w in caught if "have no effect" in str(w.message)]

    model, said = warned("activation=gelu", "model.width=48")
    assert len(said) == 1
    assert "model.width=48 (source run: 32)" in said[0] and "activation.name='gelu' (source run: 'relu')" in said[0]
    assert model.blocks[0].key.in_features == 32  # the source's width, as the warning says
    assert warned()[1] == []
