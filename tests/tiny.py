"""A tiny float64 LN-MLP, a batch for it and a probe context over it: what the exact-Hessian and
flatness tests share (small enough for torch.autograd.functional.hessian)."""
import torch

from sparsity_exp.activations import ReLU
from sparsity_exp.models import find_sites
from sparsity_exp.models.mlp import LNMLP
from sparsity_exp.probes.base import ProbeContext
from sparsity_exp.train import ClassificationTask


def tiny_mlp(seed=0, depth=1, value=True):
    torch.manual_seed(seed)
    return LNMLP(in_features=3, num_classes=2, make_act=ReLU, width=4, depth=depth, d_ff=5, value=value,
                 norm_affine=True).double()


def tiny_batch(n=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g, dtype=torch.float64), torch.randint(0, 2, (n,), generator=g)


def probe_context(model, batches, seed=0, step=0):
    return ProbeContext(model=model, sites=find_sites(model), task=ClassificationTask(), train_batches=batches,
                        test_batches=batches, device=torch.device("cpu"), step=step, seed=seed, recorder=None)
