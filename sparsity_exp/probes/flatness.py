"""Augmented flatness (PAPER.md §1.3, the 2026 follow-up's 'weighted sum of flatness measures').

Per MLP site, with per-sample gradients (``per_sample: true``, the paper's definition: the batch-
mean loss's gradients times the batch size), summed over tokens and averaged over the batch:
  as_key    AS_K = E_sample sum_t ||dl/dh_t||^2 ||x~_t||^2   (sum of per-token ||dl/dK||_F^2)
  as_value  AS_V = E_sample sum_t ||dl/dz_t||^2 ||v_t||^2    (sum of per-token ||dl/dV||_F^2)
  coef_l0   mean over active entries (a > 0 for ReLU) of g_j^2 ||x~_t||^2
  coef_l2   mean_t ||dl/dz_t||^2;  a2 = mean_t ||v_t||^2;  l2_term = mean_t ||v_t||^2 ||dl/dz_t||^2
where v is V's actual input: the activation a after the dropout between them in ViT and T5 blocks
(in training mode dropout zeroes and rescales a; dL/dV is built from v, not a). Without V (the
value-free block) a2 is mean_t ||a_t||^2.
For ReLU, AS_K / coef_l0 = E_sample ||a||_0 (nonzeros per sample, summed over tokens) exactly.
A value-free block has no V: as_value, coef_l2 and l2_term are left out for it.

Scale (absolute values; the ratios AS_K / coef_l0 and AS_V / coef_l2 do not depend on it):
``per_sample: true`` (default) scales the batch-mean loss's gradients by the rows' batch size (times
the accumulation factor), so each row carries the gradient of its own sample's loss, the definition
of PAPER.md §1.3 ("all quantities are per sample"). ``per_sample: false`` keeps the gradients of the
batch-mean loss, what the authors' hooks record (MlpGradientHook and ActivationMapHook in
hooks.py read grad_output of the trainer's backward and never rescale); with it AS_K, AS_V,
coef_l0, coef_l2 and l2_term are the per-sample values / B^2 (a2 unchanged). The body of the
authors' CoefficientPlugin (imported by scripts/T5/T5.py) is not in the readable copy of their
repository, so whether it rescales is unknown: their T5 measurement ran one sample per micro-batch
(T5/augmented_flatness.sh: 256 / 8 GPUs / 32 accumulation steps), where the two conventions agree up
to the accumulation factor; their ImageNet one ran micro-batches of 128 (imagenet1k/
augmented_flatness.sh), where they differ by 128^2. Compare absolute values with theirs only
under the matching setting; the ratios compare under either.

Online: on training batches every ``every`` steps (observe). Standalone / post hoc: ``measure``
runs ``batches`` training-mode forward/backward passes with no parameter update (lr 0).
"""
from __future__ import annotations

import torch

from .base import layer_rows
from .gradients import _TrainGradientProbe
from .standalone import preserved, take_batches, train_passes

_AS_K, _AS_V, _L0_NUM, _ACTIVE, _GZ2, _A2, _L2, _ROWS, _SAMPLES = range(9)


class AugmentedFlatnessProbe(_TrainGradientProbe):
    name = "augmented_flatness"
    metrics = ("as_key", "as_value", "coef_l0", "coef_l2", "a2", "l2_term")
    grads = ("eta", "g", "gz")
    inputs = True
    value_inputs = True
    n_stats = 9

    def __init__(self, sites, every: int = 0, per_sample: bool = True, batches: int = 1, **kw):
        super().__init__(sites, every, per_sample=per_sample, **kw)
        self.batches = int(batches)

    def on_record(self, site, rec):
        k = self.scale(rec)
        x2 = rec.x.double().pow(2).sum(-1)  # ||x~_t||^2 per row
        eta2 = (rec.eta.double() * k).pow(2).sum(-1)
        g2 = (rec.g.double() * k).pow(2)
        gz2 = (rec.gz.double() * k).pow(2).sum(-1)
        v = rec.v if rec.v is not None else rec.a  # V's input (after dropout); a for a value-free block
        a2 = v.double().pow(2).sum(-1)
        active = ~site.act.flat_region(rec.h)
        dev = x2.device
        self._acc(dev)[site.index] += torch.stack([
            (eta2 * x2).sum(), (gz2 * a2).sum(), ((g2 * active).sum(-1) * x2).sum(), active.sum().double(),
            gz2.sum(), a2.sum(), (a2 * gz2).sum(),
            torch.tensor(float(x2.shape[0]), dtype=torch.float64, device=dev),
            torch.tensor(float(rec.samples), dtype=torch.float64, device=dev),
        ])

    def rows(self, split: str):
        s = self.take(split)
        if s is None:
            return []
        samples, rows = s[:, _SAMPLES].clamp(min=1), s[:, _ROWS].clamp(min=1)
        out = list(layer_rows(split, "as_key", (s[:, _AS_K] / samples).tolist()))
        out += layer_rows(split, "coef_l0", (s[:, _L0_NUM] / s[:, _ACTIVE].clamp(min=1)).tolist())
        out += layer_rows(split, "a2", (s[:, _A2] / rows).tolist())
        with_value = [site.index for site in self.sites if site.value is not None]
        for metric, v in (("as_value", s[:, _AS_V] / samples), ("coef_l2", s[:, _GZ2] / rows),
                          ("l2_term", s[:, _L2] / rows)):
            out += _rows_for(split, metric, {i: float(v[i]) for i in with_value})
        return out

    def measure(self, ctx):
        with preserved(ctx.model, ctx.train_batches):
            batches = take_batches(ctx.train_batches, self.batches, ctx.device)
            self._stats = None
            train_passes(ctx.model, ctx.task, [self], batches, ctx)
        return self.rows("train")


def _rows_for(split, metric, values: dict):
    """Rows for the layers that have the metric, plus their mean as 'avg'."""
    out = [(split, metric, i, v) for i, v in sorted(values.items())]
    if values:
        out.append((split, metric, "avg", sum(values.values()) / len(values)))
    return out
