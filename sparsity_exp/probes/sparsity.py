"""Activation and derivative sparsity (PAPER.md §1.1, §1.2).

Per MLP site, over every entry (samples x tokens x d_ff) of one observation:
  activation_sparsity  fraction of activation outputs with |a| <= 1e-6 (the paper's
                       'activation concentration'; Li et al.'s nonzero % is 1 - this)
  derivative_sparsity  fraction of pre-activations h in the activation's zero-derivative region
  derivative2          mean sigma'(h)^2
  rest_fraction        fraction of outputs equal to the activation's flat-region value (s_y of the
                       shifted activation); written only when some site's value is not 0, where it
                       would repeat activation_sparsity
Entries of padding tokens are left out when the task marks them (probes/masking.py).

Under ``trainer.compile`` the train-batch statistics come from the compiled forward itself
(``compile_safe``): ``before_compile`` registers one hook per site before ``torch.compile``, so
dynamo traces it into the graph. The hook writes into a preallocated [n_sites, 5] device tensor in
place (a static address, so CUDA graphs of ``compile_mode=reduce-overhead`` can replay it) and only
while the probe is armed (``observe('train')`` at log steps). Dynamo guards on that flag, so the
compiled forward holds two graphs: one without statistics for the ordinary steps (nothing added to
them, no host synchronisation) and one with them for log steps (one extra compilation, measured
cheaper than computing the statistics on every step; see README "Speed options"). The host reads
the tensor only in ``rows``. Test-set statistics stay on eager hooks (evaluation runs eagerly).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from ..activations import SiteActivation
from .base import Probe, layer_rows
from .hooks import forward_hooks
from .masking import token_mask_for

_ZEROS, _FLAT, _DERIV2, _COUNT, _REST = range(5)


class SparsityProbe(Probe):
    name = "sparsity"
    compile_safe = True  # train batches are observed inside the compiled forward (before_compile)

    def __init__(self, sites, every: int = 0, test: bool = True, **kw):
        super().__init__(sites, every, **kw)
        self.test = test
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
            _accumulate(stats, site, module, inputs[0].detach(), output.detach())
        return fn

    def before_compile(self, device) -> None:
        """Register the traced train-batch hooks; call once, before ``torch.compile`` of the model
        (hooks added after compilation are skipped by the compiled code). They stay registered: in
        eager forwards (evaluation, other probes' eager steps) they do nothing unless armed."""
        if self._static is not None:
            return
        self._static = torch.zeros(len(self.sites), 5, dtype=torch.float64, device=device)
        torch._dynamo.mark_static_address(self._static)  # CUDA graphs may write it in place

        def traced(site):
            def fn(module, inputs, output):
                if self._armed:  # a Python bool: dynamo specialises the graph on it
                    _accumulate(self._static, site, module, inputs[0].detach(), output.detach())
            return fn

        for s in self.sites:
            s.act.register_forward_hook(traced(s))

    @contextmanager
    def observe(self, split: str):
        if split == "test" and not self.test:
            yield
            return
        if split == "train" and self._static is not None:  # the traced hooks (compiled model)
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


def _accumulate(stats: torch.Tensor, site, module, h: torch.Tensor, a: torch.Tensor) -> None:
    """Add one forward's counts at ``site`` to row ``site.index`` of ``stats`` in place."""
    i = site.index
    mask = token_mask_for(site, a)
    if mask is None:
        stats[i, _ZEROS] += module.zero_output(a).sum()
        stats[i, _FLAT] += module.flat_region(h).sum()
        stats[i, _DERIV2] += module.derivative(h).double().pow(2).sum()
        stats[i, _COUNT] += a.numel()
        stats[i, _REST] += module.at_rest(a).sum()
    else:  # padding tokens do not count
        m = mask.unsqueeze(-1)
        stats[i, _ZEROS] += (module.zero_output(a) & m).sum()
        stats[i, _FLAT] += (module.flat_region(h) & m).sum()
        stats[i, _DERIV2] += (module.derivative(h).double().pow(2) * m).sum()
        stats[i, _COUNT] += mask.sum() * a.shape[-1]
        stats[i, _REST] += (module.at_rest(a) & m).sum()
