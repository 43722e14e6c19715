"""Training features for the transformers: gradient accumulation, bf16 autocast, weight decay
groups, the inverse-square-root schedule."""
import math

import pytest
import torch

from sparsity_exp.data import DataInfo
from sparsity_exp.errors import ConfigError
from sparsity_exp.models import build_model
from sparsity_exp.optim import build_optimizer, lr_factor, param_groups
from sparsity_exp.train import ClassificationTask, Trainer

VIT = ["model=vit", "model.num_layers=2", "model.hidden_dim=16", "model.mlp_dim=24", "model.num_heads=2"]


def _trainer(model, **kw):
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    return Trainer(model=model, task=ClassificationTask(), optimizer=opt, schedule=None, train_batches=None,
                   test_batches=None, probes=[], recorder=None, total_steps=1, steps_per_epoch=1, log_every=1,
                   eval_every=1, device=torch.device("cpu"), **kw)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("accum", [2, 3])
def test_grad_accumulation_gives_the_whole_batch_gradient(compose, accum):
    cfg = compose(*VIT)
    torch.manual_seed(0)
    model = build_model(cfg.model, DataInfo((1, 8, 8), 10), cfg.activation)
    batch = (torch.rand(12, 1, 8, 8), torch.randint(0, 10, (12,)))
    loss_whole, _ = _trainer(model)._forward_backward(batch)
    whole = _grads(model)
    model.zero_grad(set_to_none=True)
    loss_acc, stats = _trainer(model, grad_accum=accum)._forward_backward(batch)
    for n, g in _grads(model).items():
        torch.testing.assert_close(g, whole[n], rtol=1e-4, atol=1e-6, msg=n)
    assert float(loss_acc) == pytest.approx(float(loss_whole.detach()), rel=1e-5) and stats["count"] == 12


def test_token_task_accumulation_weighs_by_label_tokens(compose):
    """Micro-batches with different numbers of real label tokens still give the whole-batch gradient."""
    from sparsity_exp.data import build_data
    from sparsity_exp.run import make_task

    cfg = compose("model=t5", "model.d_model=16", "model.d_kv=8", "model.d_ff=24", "model.num_heads=2",
                  "model.num_layers=1", "model.num_decoder_layers=1", "data.inputs_length=24")
    data = build_data(cfg.data)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.info, cfg.activation)
    data.test.lengths = data.test.lengths.clone()
    data.test.lengths[:2] = 8  # the first micro-batch holds fewer label tokens
    batch = tuple(torch.stack(t) for t in zip(*(data.test[i] for i in range(4))))
    trainer = _trainer(model)
    trainer.task = make_task(cfg, data)
    trainer._forward_backward(batch)
    whole = _grads(model)
    model.zero_grad(set_to_none=True)
    trainer.grad_accum = 2
    trainer._forward_backward(batch)
    for n, g in _grads(model).items():
        torch.testing.assert_close(g, whole[n], rtol=1e-4, atol=1e-6, msg=n)


def test_bf16_autocast_runs_the_forward_in_bf16(compose):
    cfg = compose(*VIT)
    torch.manual_seed(0)
    model = build_model(cfg.model, DataInfo((1, 8, 8), 10), cfg.activation)
    seen = []
    model.encoder.layers[0].mlp[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    batch = (torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,)))
    loss32, _ = _trainer(model)._forward_backward(batch)
    model.zero_grad(set_to_none=True)
    loss16, _ = _trainer(model, precision="bf16")._forward_backward(batch)
    assert seen == [torch.float32, torch.bfloat16]
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    assert float(loss16.detach()) == pytest.approx(float(loss32.detach()), rel=0.05)


def test_bad_precision_or_accumulation_is_a_config_error(compose, tmp_path):
    from sparsity_exp.run import execute

    with pytest.raises(ConfigError, match="trainer.precision"):
        execute(compose("trainer.precision=fp8", "trainer.steps=1"), tmp_path / "a")
    with pytest.raises(ConfigError, match="trainer.grad_accum"):
        execute(compose("trainer.grad_accum=5", "trainer.steps=1"), tmp_path / "b")


def test_weight_decay_groups(compose):
    cfg = compose(*VIT, "optim.decay_norm_and_bias=false", "optim.weight_decay=0.3")
    model = build_model(cfg.model, DataInfo((1, 8, 8), 10), cfg.activation)
    opt = build_optimizer(cfg.optim, param_groups(model, cfg.optim))
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in opt.param_groups[0]["params"]}
    plain = {names[id(p)] for p in opt.param_groups[1]["params"]}
    assert opt.param_groups[0]["weight_decay"] == 0.3 and opt.param_groups[1]["weight_decay"] == 0.0
    assert decayed | plain == set(names.values()) and not decayed & plain
    assert "encoder.layers.encoder_layer_0.ln_2.weight" in plain and "encoder.ln.weight" in plain
    assert "encoder.layers.encoder_layer_1.mlp.0.bias" in plain and "heads.head.bias" in plain
    assert "encoder.layers.encoder_layer_1.mlp.0.weight" in decayed and "conv_proj.weight" in decayed
    assert all(not n.endswith("bias") and "ln" not in n for n in decayed)
    everything = param_groups(model, compose(*VIT).optim)
    assert len(everything) == 1 and len(everything[0]["params"]) == len(names)


def test_t5_norms_are_found_by_class(compose):
    from sparsity_exp.data import build_data

    cfg = compose("model=t5", "model.d_model=16", "model.d_kv=8", "model.d_ff=24", "model.num_heads=2",
                  "model.num_layers=1", "model.num_decoder_layers=1", "optim.decay_norm_and_bias=false")
    model = build_model(cfg.model, build_data(cfg.data).info, cfg.activation)
    groups = param_groups(model, cfg.optim)
    names = {id(p): n for n, p in model.named_parameters()}
    plain = sorted(names[id(p)] for p in groups[1]["params"])
    assert plain and all("layer_norm" in n for n in plain)  # T5LayerNorm weights (T5 has no biases)
    assert len(plain) == (2 + 1) + (3 + 1)  # one block each: encoder 2 norms + final, decoder 3 + final


def test_inverse_sqrt_schedule(compose):
    s = compose("optim.schedule.name=inverse_sqrt", "optim.schedule.warmup_steps=100").optim.schedule
    assert lr_factor(s, 0, 1000) == 0.0 and lr_factor(s, 50, 1000) == pytest.approx(0.5)
    assert lr_factor(s, 100, 1000) == pytest.approx(1.0)
    assert lr_factor(s, 400, 1000) == pytest.approx(0.5)  # 1/sqrt(400/100)
    assert lr_factor(s, 10_000, 1000) == pytest.approx(0.1)
    cos = compose("optim.schedule.name=cosine", "optim.schedule.warmup_steps=100").optim.schedule
    assert lr_factor(cos, 550, 1000) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
