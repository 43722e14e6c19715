"""Inputs that used to end in a traceback or be accepted without effect (issue 26's battery): each is
refused before training with an `error:` line that names the setting and the fix."""
import pytest

from sparsity_exp.validate import problems


@pytest.mark.parametrize("model, data", [("mlp", "text"), ("vit", "text"), ("t5", "digits")])
def test_a_model_given_the_other_kind_of_data_is_refused(cli, model, data):
    out = cli("run", f"model={model}", f"data={data}", "trainer.steps=1", "probes=none", "trainer.progress=false")
    first = out.stderr.strip().splitlines()[0]
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert first.startswith(f"error: model={model} takes ") and "pick such data" in first, first


@pytest.mark.parametrize("fraction", [0.999, 0.001])
def test_a_test_fraction_that_empties_a_class_is_refused(cli, fraction):
    out = cli("run", f"data.test_fraction={fraction}", "trainer.steps=1", "probes=none", "trainer.progress=false")
    first = out.stderr.strip().splitlines()[0]
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert first.startswith(f"error: data.test_fraction={fraction} leaves ") and "(default 0.2)" in first, first


@pytest.mark.parametrize("override, key", [("modules.restricted_norm.min_gamma=-1", "modules.restricted_norm.min_gamma"),
                                           ("modules.restricted_norm.min_gamma=0", "modules.restricted_norm.min_gamma"),
                                           ("protocol.mixing_steps=-1", "protocol.mixing_steps"),
                                           ("protocol.uplift_steps=-5", "protocol.uplift_steps"),
                                           ("data.inputs_length=1", "data.inputs_length"),
                                           # 0 was raised to one masked token without a word; >= 1 never ended
                                           # the span-corruption sizing loop (the battery's run hung)
                                           ("data.noise_density=0", "data.noise_density"),
                                           ("data.noise_density=1.5", "data.noise_density"),
                                           ("data.mean_noise_span_length=0.5", "data.mean_noise_span_length")])
def test_values_no_code_can_use_are_refused_at_start_up(compose, override, key):
    extra = ["model=t5", "data=text"] if override.startswith("data.") else []
    cfg = compose(*extra, "modules=sparsified", "protocol=sparsity_finetune", "protocol.init=somewhere", override)
    found = problems(cfg)
    assert any(p.startswith(key + "=") for p in found), found
    assert not [p for p in problems(compose(*extra, "modules=sparsified", "protocol=sparsity_finetune", "protocol.init=somewhere"))
                if p.startswith(key)]


@pytest.mark.parametrize("overrides, key", [(["model=vit", "model.hidden_dim=16", "model.num_heads=3"], "model.num_heads=3"),
                                            (["model=vit", "model.num_heads=0"], "model.num_heads=0"),
                                            (["model=llama", "model.num_attention_heads=3"], "model.num_attention_heads=3"),
                                            (["model=llama", "model.num_key_value_heads=3"], "model.num_key_value_heads=3")])
def test_attention_heads_that_do_not_divide_the_width_are_refused_at_start_up(compose, overrides, key):
    # torchvision's ViT and LLaMA used to fail at build time with a traceback
    found = problems(compose(*overrides))
    assert any(p.startswith(key + ":") for p in found), found
    assert not [p for p in problems(compose(overrides[0])) if "heads" in p]
