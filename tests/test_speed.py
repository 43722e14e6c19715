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


def test_decoded_mnist_like_set_gives_the_dataloaders_batches(tmp_path):
    """data.augment=false decodes an MNIST-like set once into device tensors (data/images.py): every
    training batch of two epochs and every test batch equal, value for value and in order, what the
    DataLoader over torchvision's per-image transforms gave (the shuffle generator drawn as it drew)."""
    from omegaconf import OmegaConf
    from torchvision import transforms as T
    from torchvision.datasets import FashionMNIST

    from sparsity_exp.batches import DeviceTensorBatches, make_batches
    from sparsity_exp.data import idx
    from sparsity_exp.data.images import fashion_mnist
    from sparsity_exp.lifecycle.state import BatchStream
    from tests.idx import write_mnist_like

    write_mnist_like(tmp_path, "FashionMNIST", n_train=70, n_test=23)
    cfg = OmegaConf.create(dict(root=str(tmp_path), download=False, image_size=32, augment=False))
    data = fashion_mnist(cfg)
    cls = idx.local_dataset_class(FashionMNIST, idx.find_files(tmp_path, "FashionMNIST"))
    transform = T.Compose([T.Pad(2), T.ToTensor()])
    plain = {split: cls(str(tmp_path), train=split == "train", transform=transform) for split in ("train", "test")}
    for split, shuffle, drop_last, size in (("train", True, True, 16), ("test", False, False, 10)):
        ours = make_batches(getattr(data, split), size, shuffle, drop_last, seed=3, device=torch.device("cpu"))
        theirs = make_batches(plain[split], size, shuffle, drop_last, seed=3, device=torch.device("cpu"))
        assert isinstance(ours, DeviceTensorBatches) and not isinstance(theirs, DeviceTensorBatches)
        for _ in range(2):  # two epochs: the generator advances alike
            got, want = list(ours), list(theirs)
            assert len(got) == len(want) > 0
            for (x, y), (x2, y2) in zip(got, want):
                assert torch.equal(x, x2) and torch.equal(y, y2) and x.dtype == x2.dtype and y.dtype == y2.dtype
    # as the trainer draws them: an endless stream that starts each epoch after len() batches
    ours, theirs = (BatchStream(make_batches(ds, 16, True, True, seed=4, device=torch.device("cpu")))
                    for ds in (data.train, plain["train"]))
    for _ in range(3 * 4 + 1):
        (x, y), (x2, y2) = next(ours), next(theirs)
        assert torch.equal(x, x2) and torch.equal(y, y2)
