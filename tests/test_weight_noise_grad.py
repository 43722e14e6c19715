"""Weight noise with the gradient through its scale (noise.grad_through_scale): checked against the
closed-form derivative of out = W x + b + eps * sigma_W * ||x||, sigma_W = rho ||W||_F / sqrt(numel W)."""
import math

import torch
from torch import nn

from sparsity_exp.modules.weight_noise import WeightNoise


def _setup(grad_through_scale):
    torch.manual_seed(0)
    lin = nn.Linear(6, 4)
    x = torch.randn(3, 6, requires_grad=True)
    WeightNoise(0.3, grad_through_scale=grad_through_scale).install([lin])
    torch.manual_seed(123)
    lin(x).sum().backward()
    torch.manual_seed(123)
    eps = torch.randn(3, 4)  # the draw the hook made
    return lin, x, eps


def test_default_noise_carries_no_gradient():
    lin, x, _ = _setup(False)
    assert torch.allclose(x.grad, lin.weight.detach().sum(0).expand(3, -1))
    assert torch.allclose(lin.weight.grad, torch.ones(3, 4).T @ x.detach())


def test_gradient_through_the_noise_scale():
    lin, x, eps = _setup(True)
    w, xd = lin.weight.detach(), x.detach()
    sigma = 0.3 * w.norm() / math.sqrt(w.numel())
    xnorm = xd.norm(dim=1, keepdim=True)
    # d/dx sum(W x + eps sigma ||x||) = W^T 1 + (sum_j eps_j) sigma x / ||x||
    expected_x = w.sum(0).expand(3, -1) + eps.sum(1, keepdim=True) * sigma * xd / xnorm
    assert torch.allclose(x.grad, expected_x, atol=1e-6)
    # d/dW: 1 x^T + sum(eps ||x||) * rho W / (||W|| sqrt(numel W))
    expected_w = torch.ones(3, 4).T @ xd + (eps * xnorm).sum() * 0.3 * w / (w.norm() * math.sqrt(w.numel()))
    assert torch.allclose(lin.weight.grad, expected_w, atol=1e-6)
    assert not torch.allclose(x.grad, w.sum(0).expand(3, -1))  # the option changes the gradient
