"""Speed options: a compiled training forward logs the probe rows of the eager one; fused AdamW,
TF32 and thread settings do what the config says."""
import pandas as pd
import pytest
import torch

from sparsity_exp.activations import ReLU
from sparsity_exp.models.mlp import LNMLP
from sparsity_exp.optim import build_optimizer
from sparsity_exp.run import _train, execute
from sparsity_exp.speed import set_threads

KEY = ["step", "split", "probe", "metric", "layer"]


def test_hooks_on_a_compiled_model_are_not_called():
    # why observed steps run eagerly: a hook added after compilation is skipped by the compiled code
    model = LNMLP(4, 2, ReLU, width=8, depth=1)
    compiled = torch.compile(model, backend="aot_eager")
    x = torch.randn(3, 4)
    compiled(x)
    calls = []
    handle = model.blocks[0].act.register_forward_hook(lambda *a: calls.append(1))
    compiled(x)
    model(x)
    handle.remove()
    assert len(calls) == 1  # the eager call only


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_run_logs_the_eager_probe_rows(compose, tiny, tmp_path, backend):
    compiled_cfg = compose(*tiny, "trainer.compile=true", f"trainer.compile_backend={backend}")
    (tmp_path / "compiled").mkdir()
    trainer = _train(compiled_cfg, tmp_path / "compiled")
    assert isinstance(trainer.forward_model, torch._dynamo.eval_frame.OptimizedModule)
    execute(compose(*tiny), tmp_path / "eager")
    compiled = pd.read_csv(tmp_path / "compiled" / "metrics.csv")
    eager = pd.read_csv(tmp_path / "eager" / "metrics.csv")
    both = eager.merge(compiled, on=KEY, suffixes=("_eager", "_compiled"))
    assert len(both) == len(eager) == len(compiled)
    sparsity = both[both.probe == "sparsity"]
    assert sorted(sparsity[sparsity.split == "train"].step.unique()) == [0, 10, 20]
    # compiled steps round differently at most in the last bits: no activation changes side here
    assert sparsity.value_compiled.to_numpy() == pytest.approx(sparsity.value_eager.to_numpy(), abs=1e-3)
    first = sparsity[sparsity.step == 0]
    assert (first.value_compiled == first.value_eager).all()


def test_fused_adamw_only_where_asked(compose):
    params = [torch.nn.Parameter(torch.zeros(3))]
    auto = build_optimizer(compose("optim=adamw").optim, params, torch.device("cpu"))
    assert not auto.defaults.get("fused")  # auto: fused on CUDA only
    forced = build_optimizer(compose("optim=adamw", "optim.fused=true").optim, params, torch.device("cpu"))
    assert forced.defaults["fused"] is True
    from sparsity_exp.errors import ConfigError

    with pytest.raises(ConfigError, match="optim.fused"):
        build_optimizer(compose("optim=adam", "optim.fused=maybe").optim, params, torch.device("cpu"))


def test_threads_auto_is_one_under_joblib(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", str(before))
    try:
        assert set_threads(2, "") == 2
        assert set_threads("auto", "hydra._internal.core_plugins.basic_launcher.BasicLauncher") == 2  # unchanged
        assert set_threads("auto", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher") == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_tf32_flag_follows_the_config_on_cuda_only(compose):
    from sparsity_exp.speed import set_backend_flags

    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        set_backend_flags(compose("trainer.tf32=false").trainer, torch.device("cuda"))
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        set_backend_flags(compose().trainer, torch.device("cpu"))  # CPU: nothing to switch
        assert not torch.backends.cuda.matmul.allow_tf32
        set_backend_flags(compose().trainer, torch.device("cuda"))  # default: on
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
