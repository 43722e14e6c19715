"""ViT and T5 on the MLP-site seam: sites, probes through the sites against hand counts, padding."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from sparsity_exp.activations import ReLU
from sparsity_exp.data import DataInfo, build_data
from sparsity_exp.models import build_model, find_sites
from sparsity_exp.probes import PROBES, build_probes, observing
from sparsity_exp.probes.base import ProbeContext, run_task
from sparsity_exp.run import make_task

VIT = ["model=vit", "model.num_layers=3", "model.hidden_dim=16", "model.mlp_dim=24", "model.num_heads=2"]
T5 = ["model=t5", "model.d_model=16", "model.d_kv=8", "model.d_ff=24", "model.num_heads=2", "model.num_layers=2",
      "model.num_decoder_layers=3", "data.inputs_length=24", "data.max_test_examples=16"]


def _rows(rows, split=None):
    return {(m, l): v for s, m, l, v in rows if split is None or s == split}


def _vit(compose, *extra):
    cfg = compose(*VIT, *extra)
    torch.manual_seed(0)
    return cfg, build_model(cfg.model, DataInfo((1, 8, 8), 10), cfg.activation)


def _t5(compose, *extra):
    cfg = compose(*T5, *extra)
    data = build_data(cfg.data)
    torch.manual_seed(0)
    return cfg, data, build_model(cfg.model, data.info, cfg.activation)


def _t5_batch(data, n=6):
    data.test.lengths = data.test.lengths.clone()
    data.test.lengths[1] = 10  # a short chunk (like a split's last one): its inputs and labels get padded
    return tuple(torch.stack(t) for t in zip(*(data.test[i] for i in range(n))))


def test_vit_sites_grayscale_and_activation(compose):
    cfg, model = _vit(compose)
    sites = find_sites(model)
    assert [s.index for s in sites] == [0, 1, 2] and {s.stack for s in sites} == {"encoder"}
    assert [s.name for s in sites] == [f"encoder.layers.encoder_layer_{i}" for i in range(3)]
    for s, layer in zip(sites, model.encoder.layers):
        assert s.norm is layer.ln_2 and s.key is layer.mlp[0] and s.value is layer.mlp[3]
        assert isinstance(s.act, ReLU) and s.key.out_features == 24
    assert model.conv_proj.in_channels == 1  # grayscale enters as one channel, not copied 3x
    assert model(torch.rand(5, 1, 8, 8)).shape == (5, 10)


def test_vit_image_size_must_match_the_data(compose):
    from sparsity_exp.errors import ConfigError

    cfg = compose(*VIT, "model.image_size=16")
    with pytest.raises(ConfigError, match="model.image_size=16"):
        build_model(cfg.model, DataInfo((1, 8, 8), 10), cfg.activation)


def test_t5_sites_encoder_first_then_decoder(compose):
    cfg, data, model = _t5(compose)
    sites = find_sites(model)
    assert [s.stack for s in sites] == ["encoder"] * 2 + ["decoder"] * 3
    assert [s.index for s in sites] == list(range(5))
    assert [s.name for s in sites] == ["encoder.block.0", "encoder.block.1", "decoder.block.0", "decoder.block.1",
                                       "decoder.block.2"]
    dec = model.decoder.block[1].layer[2]
    assert sites[3].key is dec.DenseReluDense.wi and sites[3].value is dec.DenseReluDense.wo
    assert sites[3].norm is dec.layer_norm and isinstance(sites[3].act, ReLU)
    assert model.config.vocab_size == data.info.vocab_size == 3 + 256 + 100


def _vit_hand_count(model, x):
    """Zeros of ReLU(K LN(u) + b) from each block's ln_2 input, in numpy."""
    inputs = {}
    handles = [layer.ln_2.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0].detach()))
               for i, layer in enumerate(model.encoder.layers)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    out = []
    for i, layer in enumerate(model.encoder.layers):
        u = inputs[i].double().numpy()
        ln = (u - u.mean(-1, keepdims=True)) / np.sqrt(u.var(-1, keepdims=True) + 1e-6)
        ln = ln * layer.ln_2.weight.detach().double().numpy() + layer.ln_2.bias.detach().double().numpy()
        h = ln @ layer.mlp[0].weight.detach().double().numpy().T + layer.mlp[0].bias.detach().double().numpy()
        out.append(np.mean(np.maximum(h, 0) <= 1e-6))
    return out


def test_vit_sparsity_rows_cover_every_block_and_match_a_hand_count(compose):
    cfg, model = _vit(compose)
    model.eval()
    x = torch.rand(9, 1, 8, 8)
    probe = build_probes({"sparsity": {"every": 1}}, find_sites(model))[0]
    with observing([probe], "test"), torch.no_grad():
        model(x)
    got = _rows(probe.rows("test"))
    expected = _vit_hand_count(model, x)
    assert {l for m, l in got if m == "activation_sparsity"} == {0, 1, 2, "avg"}
    for i, e in enumerate(expected):
        assert got[("activation_sparsity", i)] == pytest.approx(e, abs=1e-9)
    assert 0.05 < np.mean(expected) < 0.95  # a real mixture of zeros and non-zeros


def _t5_hand_count(model, batch, mask_padding: bool):
    """Zeros of ReLU(wi RMSNorm(u)) from each feed-forward block's input, in numpy, over the real
    tokens only when ``mask_padding``."""
    input_ids, attention_mask, labels = batch
    inputs = {}
    ffs = [(stack, b.layer[-1]) for stack in ("encoder", "decoder") for b in getattr(model, stack).block]
    handles = [ff.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0].detach()))
               for i, (_, ff) in enumerate(ffs)]
    with torch.no_grad():
        model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    for h in handles:
        h.remove()
    real = {"encoder": attention_mask.bool().numpy(), "decoder": (labels != -100).numpy()}
    out = []
    for i, (stack, ff) in enumerate(ffs):
        u = inputs[i].double().numpy()
        n = u / np.sqrt((u ** 2).mean(-1, keepdims=True) + 1e-6) * ff.layer_norm.weight.detach().double().numpy()
        zero = np.maximum(n @ ff.DenseReluDense.wi.weight.detach().double().numpy().T, 0) <= 1e-6
        m = real[stack] if mask_padding else np.ones(zero.shape[:2], bool)
        out.append(zero[m].mean())
    return out


@pytest.mark.parametrize("mask_padding", [True, False])
def test_t5_sparsity_rows_cover_encoder_and_decoder_and_match_a_hand_count(compose, mask_padding):
    cfg, data, model = _t5(compose, f"data.mask_padding={mask_padding}")
    model.eval()
    batch = _t5_batch(data)
    assert (batch[1] == 0).any() and (batch[2] == -100).any()  # the batch really holds padding
    probe = build_probes({"sparsity": {"every": 1}}, find_sites(model))[0]
    task = make_task(cfg, data)
    with observing([probe], "test"), torch.no_grad():
        run_task(task, model, batch, False, probe.ctx)  # the driver puts the task's token masks on the context
    got = _rows(probe.rows("test"))
    assert {l for m, l in got if m == "activation_sparsity"} == {0, 1, 2, 3, 4, "avg"}
    expected = _t5_hand_count(model, batch, mask_padding)
    for i, e in enumerate(expected):
        assert got[("activation_sparsity", i)] == pytest.approx(e, abs=1e-9)
    other = _t5_hand_count(model, batch, not mask_padding)
    assert any(abs(a - b) > 1e-6 for a, b in zip(expected, other))  # masking changes the counts


def test_seq2seq_task_loss_and_token_accuracy(compose):
    cfg, data, model = _t5(compose)
    model.eval()
    batch = _t5_batch(data)
    with torch.no_grad():
        loss, stats = make_task(cfg, data)(model, batch, train=False)
        logits = model(input_ids=batch[0], attention_mask=batch[1], labels=batch[2]).logits
    real = batch[2] != -100
    ce = torch.nn.functional.cross_entropy(logits[real], batch[2][real])
    assert float(loss) == pytest.approx(float(ce), rel=1e-5)
    assert int(stats["count"]) == int(real.sum())
    assert int(stats["correct"]) == int((logits.argmax(-1)[real] == batch[2][real]).sum())


@pytest.mark.parametrize("which", ["vit", "t5"])
def test_every_registered_probe_runs_through_the_sites(compose, which, tmp_path):
    """Each probe of the registry, at its defaults, on a training step and a standalone measurement:
    its per-layer rows name only real sites, every layer of each per-layer metric is present."""
    from sparsity_exp.batches import make_batches
    from sparsity_exp.record import Recorder

    if which == "vit":
        cfg, model = _vit(compose)
        data = build_data(cfg.data)
        # torchvision zero-initialises the head, so no gradient would reach the blocks at step 0
        # (gradient_density's ratio is then undefined, NaN)
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    else:
        cfg, data, model = _t5(compose)
    sites = find_sites(model)
    task = make_task(cfg, data)
    train = make_batches(data.train, 8, True, True, 0, torch.device("cpu"))
    test = make_batches(data.test, 8, False, False, 0, torch.device("cpu"))
    batch = next(iter(train))
    n = len(sites)
    for name, cls in PROBES.items():
        probe = cls(sites, every=1, measure_every=1, at_end=True)
        with observing([probe], "train"):
            loss, _ = task(model, batch, train=True)
            loss.backward()
        model.zero_grad(set_to_none=True)
        with Recorder(tmp_path / name if (tmp_path / name).mkdir() is None else None) as rec:
            ctx = ProbeContext(model=model, sites=sites, task=task, train_batches=train, test_batches=test,
                               device=torch.device("cpu"), step=0, seed=0, recorder=rec)
            rows = probe.rows("train") + probe.measure(ctx)
        by_metric = {}
        for split, metric, layer, value in rows:
            assert layer == "avg" or layer in range(n), (name, metric, layer)
            assert isinstance(value, (int, float)), (name, metric)
            # the errors w.r.t. the training set need two batches: nan at the default batches=1 (X_se, X_df,
            # X_se_batches; documented as such, issue 27)
            assert not math.isnan(value) or metric.endswith(("_se_batches", "_se", "_df")), (name, metric)
            by_metric.setdefault((split, metric), set()).add(layer)
        for key, layers in by_metric.items():
            assert layers == {"avg"} or set(range(n)) <= layers, (name, key, layers)
        assert all(p.grad is None for p in model.parameters()), name  # gradients left as found
