"""Hooks on site parts, registered and always removed by one context manager."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable

from torch import nn


@contextmanager
def forward_hooks(pairs: Iterable[tuple[nn.Module, Callable]]):
    """Register ``module.register_forward_hook(fn)`` for every (module, fn); remove all on exit,
    also when the body raises, so a failed step never leaves a probe attached."""
    handles = []
    try:
        for module, fn in pairs:
            handles.append(module.register_forward_hook(fn))
        yield
    finally:
        for h in handles:
            h.remove()
