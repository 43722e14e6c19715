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


def exact_hessian(model, batch, names=None):
    """Exact Hessian of the mean cross-entropy w.r.t. the named parameters (all, in model order, when
    ``names`` is None), as a numpy array over their flattened concatenation."""
    import math

    from torch.func import functional_call

    params = dict(model.named_parameters())
    names = list(params) if names is None else list(names)
    shapes = [params[n].shape for n in names]
    flat = torch.cat([params[n].detach().reshape(-1) for n in names])

    def loss_of(theta):
        sub, i = {}, 0
        for n, s in zip(names, shapes):
            k = math.prod(s)
            sub[n] = theta[i:i + k].reshape(s)
            i += k
        return torch.nn.functional.cross_entropy(functional_call(model, sub, (batch[0],)), batch[1])

    return torch.autograd.functional.hessian(loss_of, flat).numpy()
