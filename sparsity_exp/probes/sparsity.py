"""Activation and derivative sparsity (docs/paper.md §1.1, §1.2).

Per MLP site, over every entry (samples x tokens x d_ff) of one observation:
  activation_sparsity  fraction of activation outputs with |a| <= 1e-6 (the paper's
                       'activation concentration'; Li et al.'s nonzero % is 1 - this)
  derivative_sparsity  fraction of pre-activations h in the activation's zero-derivative region
  derivative2          mean sigma'(h)^2
  rest_fraction        fraction of outputs equal to the activation's flat-region value (s_y of the
                       shifted activation); written only when some site's value is not 0, where it
                       would repeat activation_sparsity
Entries of padding tokens are left out when the task marks them (``ctx.token_mask``, probes/masking.py).

Under ``trainer.compile`` the train-batch statistics come from the compiled forward itself
(``compile_safe``): ``before_compile`` registers one hook per site before ``torch.compile``, so
dynamo traces it into the graph. The hook writes into a preallocated [n_sites, 5] device tensor in
place (a static address, so CUDA graphs of ``compile_mode=reduce-overhead`` can replay it); the host
reads it only in ``rows``, at log steps. ``compiled_stats`` says when the hook computes:
  log_steps   (default) only while armed by ``observe('train')``; dynamo guards on that flag, so the
              compiled forward holds two graphs, the ordinary steps' one without statistics (nothing
              added, no host synchronisation) and the log steps' one with them: one extra
              compilation, nothing per step;
  every_step  in every training forward, overwriting the tensor (the value at a log step is that
              step's batch): one graph, the statistics paid in every step. Cheaper for short runs
              whose compilation dominates (benchmarks/compiled_stats_cost.py prints the break-even
              step count); with trainer.grad_accum > 1 it falls back to log_steps.
Test-set statistics stay on eager hooks (evaluation runs eagerly).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from ..activations import ReLU, SiteActivation
from .base import Probe, layer_rows
from .hooks import forward_hooks

_ZEROS, _FLAT, _DERIV2, _COUNT, _REST = range(5)


class SparsityProbe(Probe):
    name = "sparsity"
    metrics = ("activation_sparsity", "derivative_sparsity", "derivative2", "rest_fraction")
    compile_safe = True  # train batches are observed inside the compiled forward (before_compile)

    def __init__(self, sites, every: int = 0, test: bool = True, compiled_stats: str = "log_steps", **kw):
        super().__init__(sites, every, **kw)
        if compiled_stats not in ("log_steps", "every_step"):
            raise TypeError(f"compiled_stats={compiled_stats!r}; choose log_steps or every_step")
        self.test = test
        self.compiled_stats = compiled_stats  # under trainer.compile; see the module's docstring
        self._stats = {}  # split -> tensor [n_sites, 5] on the activations' device
        self._static = None  # train statistics written in place by the traced hooks (before_compile)
        self._armed = False  # read by the traced hooks; dynamo guards on it (two graphs, see above)
        for s in sites:
            if not isinstance(s.act, SiteActivation):
                raise TypeError(f"site {s.name}: activation {type(s.act).__name__} does not declare its regions")

    def _hook(self, split: str, site):
        def fn(module, inputs, output):
            stats = self._stats.get(split)
            if stats is None:
                stats = self._stats[split] = torch.zeros(len(self.sites), 5, dtype=torch.float64,
                                                         device=output.device)
            a = output.detach()
            mask = self.ctx.token_mask(site, a)
            if mask is None:
                _add_counts(stats[site.index], module, inputs[0].detach(), a)
            else:
                stats[site.index] += _counts(module, inputs[0].detach(), a, mask)
        return fn

    def before_compile(self, device, micro_batches: int = 1) -> None:
        """Register the traced train-batch hooks; call once, before ``torch.compile`` of the model
        (hooks added after compilation are skipped by the compiled code). They stay registered; in
        eager forwards (evaluation, other probes' eager steps) they do nothing unless armed.
        ``micro_batches`` > 1 (gradient accumulation): a log step sums several forwards, which an
        overwrite cannot, so ``compiled_stats=every_step`` falls back to ``log_steps``."""
        if self._static is not None:
            return
        if micro_batches > 1:
            self.compiled_stats = "log_steps"
        self._static = torch.zeros(len(self.sites), 5, dtype=torch.float64, device=device)
        torch._dynamo.mark_static_address(self._static)  # CUDA graphs may write it in place

        def traced(site):
            def fn(module, inputs, output):
                if self.compiled_stats == "every_step":  # one graph; overwritten by every training forward
                    if module.training:
                        a = output.detach()
                        self._static[site.index] = _counts(module, inputs[0].detach(), a, self.ctx.token_mask(site, a))
                elif self._armed:  # a Python bool: dynamo specialises the graph on it
                    a = output.detach()
                    self._static[site.index] += _counts(module, inputs[0].detach(), a, self.ctx.token_mask(site, a))
            return fn

        for s in self.sites:
            s.act.register_forward_hook(traced(s))

    @contextmanager
    def observe(self, split: str):
        if split == "test" and not self.test:
            yield
            return
        if split == "train" and self._static is not None:  # the traced hooks (compiled model)
            if self.compiled_stats == "log_steps" and "train" not in self._stats:  # rows() took the last sums
                self._static.zero_()
            self._stats["train"] = self._static
            self._armed = True
            try:
                yield
            finally:
                self._armed = False
            return
        with forward_hooks((s.act, self._hook(split, s)) for s in self.sites):
            yield

    def rows(self, split: str):
        stats = self._stats.pop(split, None)
        if stats is None:
            return []
        s = stats.cpu()  # the one host synchronisation of this probe
        count = s[:, _COUNT].clamp(min=1)
        out = []
        out += layer_rows(split, "activation_sparsity", (s[:, _ZEROS] / count).tolist())
        out += layer_rows(split, "derivative_sparsity", (s[:, _FLAT] / count).tolist())
        out += layer_rows(split, "derivative2", (s[:, _DERIV2] / count).tolist())
        if any(getattr(site.act, "rest_value", 0.0) != 0.0 for site in self.sites):
            out += layer_rows(split, "rest_fraction", (s[:, _REST] / count).tolist())
        return out


def _indicator_derivative(module) -> bool:
    """sigma'(h) is ReLU's 1[h > 0]: sum sigma'(h)^2 is then the count of h > 0, exactly."""
    return type(module).derivative is ReLU.derivative


def _rest_is_zero(module) -> bool:
    """at_rest(a) is zero_output(a) (rest value 0, the base class's test): |a - 0| = |a| exactly."""
    return (module.rest_value == 0.0 and type(module).at_rest is SiteActivation.at_rest
            and type(module).zero_output is SiteActivation.zero_output)


def _add_counts(row: torch.Tensor, module, h: torch.Tensor, a: torch.Tensor) -> None:
    """Add one unmasked forward's sums into ``row`` (float64 [5], _ZEROS .. _REST) in place: the
    values of ``_counts`` to the last bit (integer counts are exact in float64; sigma'(h)^2 is summed
    as there) in fewer passes: the counts in one stacked reduction (with the ReLU family's sum of
    1[h > 0]^2 among them), the rest count reused when it is the zero count, the entries a number."""
    entries = tuple(range(1, a.dim() + 1))  # every dim of the stacked masks but the first
    indicator = _indicator_derivative(module)
    masks = [module.zero_output(a), module.flat_region(h)] + ([h > 0] if indicator else [])
    sums = torch.stack(masks).sum(entries)
    row[_ZEROS:_ZEROS + len(masks)] += sums
    if not indicator:
        row[_DERIV2] += module.derivative(h).double().pow(2).sum()
    row[_COUNT] += a.numel()
    row[_REST] += sums[_ZEROS] if _rest_is_zero(module) else module.at_rest(a).sum()


def _counts(module, h: torch.Tensor, a: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """One forward's sums at ``site`` as a float64 vector indexed by _ZEROS, _FLAT, _DERIV2, _COUNT, _REST."""
    if mask is None:
        sums = [module.zero_output(a).sum(), module.flat_region(h).sum(),
                module.derivative(h).double().pow(2).sum(), torch.full((), a.numel(), dtype=torch.float64, device=a.device),
                module.at_rest(a).sum()]
    else:  # padding tokens do not count
        m = mask.unsqueeze(-1)
        sums = [(module.zero_output(a) & m).sum(), (module.flat_region(h) & m).sum(),
                (module.derivative(h).double().pow(2) * m).sum(), mask.sum() * a.shape[-1],
                (module.at_rest(a) & m).sum()]
    return torch.stack([v.to(torch.float64) for v in sums])
