"""Activation modules for MLP sites.

Every activation is an ``nn.Module`` (hooks need modules) that also declares
  * ``zero_output(a)``: where the output counts as zero (|a| <= tol, the paper's habitat 1e-6);
  * ``flat_region(h)``: where sigma'(h) = 0, so derivative sparsity is exact for it;
  * ``derivative(h)``: sigma'(h) in closed form, for mean sigma'(h)^2;
  * ``rest_value``: the value sigma takes on its flat region (0 for the ReLU family, s_y for the
    shifted activation); ``at_rest(a)`` marks outputs equal to it (the probe's ``rest_fraction``).
Probes use these declarations and never guess from the function's values.

Derivatives use the convention sigma'(0) = 0 for the ReLU family (0 lies in the flat region), so
``flat_region`` and ``derivative`` always agree.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

ZERO_TOL = 1e-6  # docs/paper.md §1.1: activation habitat y in [-1e-6, 1e-6]


class SiteActivation(nn.Module):
    """Base class: an activation that knows its zero-output and zero-derivative regions."""

    zero_tol: float = ZERO_TOL
    rest_value: float = 0.0

    def zero_output(self, a: torch.Tensor) -> torch.Tensor:
        return a.abs() <= self.zero_tol

    def at_rest(self, a: torch.Tensor) -> torch.Tensor:
        """Outputs equal (within the tolerance) to the value of the flat region."""
        return (a - self.rest_value).abs() <= self.zero_tol

    def flat_region(self, h: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def derivative(self, h: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def set_step(self, step: int) -> None:
        """Schedules (e.g. activation mixing) read the optimizer step; static ones ignore it."""


class ReLU(SiteActivation):
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.relu(h)

    def flat_region(self, h: torch.Tensor) -> torch.Tensor:
        return h <= 0

    def derivative(self, h: torch.Tensor) -> torch.Tensor:
        return (h > 0).to(h.dtype)


class _JSReLUFunction(torch.autograd.Function):
    """J-SquaredReLU (docs/paper.md §3.2): (h^2/2 + h) 1[h > 0], gradient (h + 1) 1[h > 0] in closed form.
    Saves only the input, like the authors' C++ extension."""

    @staticmethod
    def forward(ctx, h):
        ctx.save_for_backward(h)
        return torch.where(h > 0, h * (0.5 * h + 1), torch.zeros_like(h))

    @staticmethod
    def backward(ctx, grad):
        (h,) = ctx.saved_tensors
        return grad * torch.where(h > 0, h + 1, torch.zeros_like(h))


def jsrelu(h: torch.Tensor) -> torch.Tensor:
    return _JSReLUFunction.apply(h)


def _jsrelu_derivative(h: torch.Tensor) -> torch.Tensor:
    return torch.where(h > 0, h + 1, torch.zeros_like(h))


def _squared_relu(h: torch.Tensor) -> torch.Tensor:
    return torch.relu(h).square()


def _squared_relu_derivative(h: torch.Tensor) -> torch.Tensor:
    return 2 * torch.relu(h)


class JSReLU(SiteActivation):
    """Jumping squared ReLU: the derivative jumps from 0 to 1 at h = 0, so every active entry costs
    at least as much flatness as under ReLU. Zero output and flat region: h <= 0."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return jsrelu(h)

    def flat_region(self, h: torch.Tensor) -> torch.Tensor:
        return h <= 0

    def derivative(self, h: torch.Tensor) -> torch.Tensor:
        return _jsrelu_derivative(h)


class SquaredReLU(SiteActivation):
    """relu(h)^2: continuous derivative 2h 1[h > 0] (no jump; the contrast to JSReLU)."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return _squared_relu(h)

    def flat_region(self, h: torch.Tensor) -> torch.Tensor:
        return h <= 0

    def derivative(self, h: torch.Tensor) -> torch.Tensor:
        return _squared_relu_derivative(h)


class GELU(SiteActivation):
    """Exact (erf) GELU, h Phi(h). Its derivative Phi(h) + h phi(h) vanishes only at one point
    (h ~ -0.7518), a measure-zero set, so it has no flat region in the exact sense. We count the
    *numerically* flat entries, |sigma'(h)| <= 1e-6 (the same tolerance as zero outputs): the far
    negative tail (h below about -5.4) plus a window of about +-2e-6 around that point."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(h)

    def flat_region(self, h: torch.Tensor) -> torch.Tensor:
        return self.derivative(h).abs() <= self.zero_tol

    def derivative(self, h: torch.Tensor) -> torch.Tensor:
        cdf = 0.5 * (1 + torch.erf(h * math.sqrt(0.5)))
        pdf = torch.exp(-0.5 * h * h) / math.sqrt(2 * math.pi)
        return cdf + h * pdf


class SiLU(SiteActivation):
    """SiLU / Swish, h sigmoid(h): the gate of LLaMA's SwiGLU (docs/paper.md §1.7). Like GELU it has no
    exact zeros and no flat region: its derivative sigmoid(h) (1 + h (1 - sigmoid(h))) vanishes only at
    h ~ -1.2785 (measure zero). Counted as numerically flat: |sigma'(h)| <= 1e-6 (the tail below about
    h = -16.5 and a tiny window around that point); output zeros: |a| <= 1e-6, as for every activation.
    Its exact-zero sparsity reads about 0; the magnitude criteria (probe ``magnitude``) are the field's
    measure for it."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return nn.functional.silu(h)

    def flat_region(self, h: torch.Tensor) -> torch.Tensor:
        return self.derivative(h).abs() <= self.zero_tol

    def derivative(self, h: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(h)
        return s * (1 + h * (1 - s))


INNER = {"squared_relu": (_squared_relu, _squared_relu_derivative), "jsrelu": (jsrelu, _jsrelu_derivative)}


class Shifted(SiteActivation):
    """The shifted S-shaped activation of the validation experiment (docs/paper.md §4.1):

        f(h) = s_y + phi(u - c) - phi(-u - c),   u = h - s_x,

    with phi = squared ReLU (2023 runs) or JSReLU (2026 re-run). It is flat, f = s_y, on
    [s_x - c, s_x + c] and odd-symmetric around (s_x, s_y) outside, so derivative sparsity and
    output zeros are separated on purpose: ``activation_sparsity`` stays the fraction of exact zeros,
    and the fraction of outputs equal to s_y is ``rest_fraction``."""

    def __init__(self, shift_x: float = 1.6, shift_y: float = 1.6, half_width: float = 1.5,
                 inner: str = "squared_relu"):
        super().__init__()
        from .errors import ConfigError

        if inner not in INNER:
            raise ConfigError(f"activation.inner={inner!r} is unknown; choose one of {sorted(INNER)}")
        if half_width < 0:
            raise ConfigError(f"activation.half_width={half_width} must be >= 0")
        self.shift_x, self.shift_y, self.half_width, self.inner = float(shift_x), float(shift_y), float(half_width), inner
        self.rest_value = self.shift_y
        self._phi, self._dphi = INNER[inner]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        u = h - self.shift_x
        return self.shift_y + self._phi(u - self.half_width) - self._phi(-u - self.half_width)

    def flat_region(self, h: torch.Tensor) -> torch.Tensor:
        return (h - self.shift_x).abs() <= self.half_width

    def derivative(self, h: torch.Tensor) -> torch.Tensor:
        u = h - self.shift_x
        return self._dphi(u - self.half_width) + self._dphi(-u - self.half_width)

    def extra_repr(self) -> str:
        return f"shift_x={self.shift_x}, shift_y={self.shift_y}, half_width={self.half_width}, inner={self.inner}"


class Mixed(SiteActivation):
    """(1 - k_t) ReLU + k_t JSReLU with k_t = clip(t / T, 0, 1) (docs/paper.md §3.2): the finetuning
    transition from ReLU to JSReLU over T = ``steps`` optimizer steps (T = 0: JSReLU at once).
    ``set_step`` moves k_t; both parts are flat (and zero) for h <= 0."""

    def __init__(self, steps: int = 3000):
        super().__init__()
        from .errors import ConfigError

        if int(steps) < 0:
            raise ConfigError(f"activation mixing steps={steps} must be >= 0")
        self.steps = int(steps)
        self.jsrelu_portion = 0.0 if self.steps > 0 else 1.0

    def set_step(self, step: int) -> None:
        self.jsrelu_portion = 1.0 if self.steps == 0 else min(max(step / self.steps, 0.0), 1.0)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        k = self.jsrelu_portion
        if k == 0.0:
            return torch.relu(h)
        if k == 1.0:
            return jsrelu(h)
        return (1 - k) * torch.relu(h) + k * jsrelu(h)

    def flat_region(self, h: torch.Tensor) -> torch.Tensor:
        return h <= 0

    def derivative(self, h: torch.Tensor) -> torch.Tensor:
        k = self.jsrelu_portion
        return torch.where(h > 0, (1 - k) + k * (h + 1), torch.zeros_like(h))

    def extra_repr(self) -> str:
        return f"steps={self.steps}, jsrelu_portion={self.jsrelu_portion:.4f}"


ACTIVATIONS: dict[str, Callable[..., SiteActivation]] = {
    "relu": ReLU,
    "jsrelu": JSReLU,
    "squared_relu": SquaredReLU,
    "gelu": GELU,
    "silu": SiLU,
    "shifted": Shifted,
    "mixed": Mixed,
}


def build_activation(cfg) -> SiteActivation:
    """Build the activation named by ``cfg.name`` with the remaining fields as arguments."""
    from .errors import ConfigError

    # grad_clip is the activation's recommended trainer.grad_clip (conf/trainer), not an argument
    kwargs = {k: v for k, v in dict(cfg).items() if k not in ("name", "grad_clip")}
    name = cfg["name"]
    if name not in ACTIVATIONS:
        raise ConfigError(f"activation.name={name!r} is unknown; choose one of {sorted(ACTIVATIONS)}")
    try:
        return ACTIVATIONS[name](**kwargs)
    except TypeError as exc:
        raise ConfigError(f"activation={name}: {exc}; see conf/activation/{name}.yaml for its fields") from None
