"""Augmented flatness (docs/paper.md §1.3, the 2026 follow-up's 'weighted sum of flatness measures').

Per MLP site, summed over tokens and averaged over the samples of the observed batches:
  as_key    AS_K = E_sample sum_t ||dl/dh_t||^2 ||x~_t||^2   (sum of per-token ||dl/dK||_F^2)
  as_value  AS_V = E_sample sum_t ||dl/dz_t||^2 ||v_t||^2    (sum of per-token ||dl/dV||_F^2)
  coef_l0   mean over the active entries (``active_set``) of g_j^2 ||x~_t||^2
  coef_l2   mean_t ||dl/dz_t||^2;  a2 = mean_t ||v_t||^2;  l2_term = mean_t ||v_t||^2 ||dl/dz_t||^2
where v is V's actual input: the activation a after the dropout between them in ViT and T5 blocks
(in training mode dropout zeroes and rescales a; dL/dV is built from v, not a). Without V (the
value-free block) v is a itself. A value-free block has no V: as_value, coef_l2 and l2_term are
left out for it.

The authors' code (docs/paper.md §1.3: ``CoefficientPlugin``, ``codes/modules/hooks.py`` at their
HEAD, around lines 977-1090, added in commit b106fad) fixes two conventions, the defaults here:

``scale: authors`` (default): the gradients the backward delivers, as they are: those of the loss
  mean-reduced over the batch, never rescaled per sample. Under data parallel training the project
  divides by the number of processes, so the value is that of the global batch-mean loss whatever
  the process count (the authors' per-rank hooks see world_size times it there: their per-rank
  value is world_size^2 x this one for AS and the coefficients). With gradient accumulation the
  trainer weights each micro-batch's loss by its share of the batch, as HF's Trainer does, so the
  gradients are again those of the whole batch's mean loss.
``scale: per_sample``: the gradients times the batch size (and the accumulation factor), so each
  row carries the gradient of its own sample's loss (docs/paper.md §1.3 "all quantities are per
  sample"); the project's default before issue 19. AS_K, AS_V, coef_l0, coef_l2 and l2_term are
  then B^2 x the ``authors`` values for a batch of B samples (a2 unchanged); the ratios AS_K /
  coef_l0 and AS_V / coef_l2 do not depend on the scale.

``loss_scale`` (default 1.0; either scale): the gradients of loss_scale x the loss. The authors'
  ViT augmented-flatness and gradient-density runs use AMP with a fresh fp16 GradScaler, whose scale
  is 2^16 = 65536 (torch.amp.GradScaler's init_scale), and their hooks fire inside the scaled
  backward: their logged AS_K, AS_V, coefficients and l2_term are loss_scale^2 = 2^32 ~ 4.3e9 x this
  probe's ``scale: authors`` values (a2 and the ratios unchanged), their log10|g| histograms sit
  log10(2^16) = 4.82 decades above the project's. ``loss_scale: 65536.0`` reproduces their numbers
  (tests/test_augmented_flatness.py checks the factor against a scaled backward). A GradScaler
  that has already backed off after overflows holds a smaller scale: use the value it logged.

``active_set: value_input`` (default, the authors'): an entry is active where V's input is > 0, i.e.
  after the dropout between the activation and V (a > 0 for a value-free block). ``active_set:
  pre_dropout``: active = outside the activation's zero-derivative region, sigma'(h) != 0 (h > 0 for
  ReLU), before dropout; the project's convention before issue 19. Without dropout and for ReLU the
  two sets are the same. Dropped entries have g = dL/da = 0, so the numerator of coef_l0 is the same
  under both sets and only the count of active entries differs; for ReLU
    AS_K / coef_l0 = E_sample ||v||_0 (value_input)   or   E_sample ||a||_0 (pre_dropout)
  (nonzeros per sample, summed over tokens), exactly.

Gated blocks (docs/paper.md §1.7: z = V (act(K x~) * U x~), v = the product after dropout): both K
and U read x~, so the key term is that of the pair [K; U]:
  as_key    E_sample sum_t (||eta_t||^2 + ||xi_t||^2) ||x~_t||^2   (per-token ||dl/dK||_F^2 + ||dl/dU||_F^2),
            xi = dL/du
  as_up     E_sample sum_t ||xi_t||^2 ||x~_t||^2 (the U share of as_key; gated sites only)
  coef_l0   mean over the active entries of (g_j^2 + xi_j^2) ||x~_t||^2, g = dL/da
and the default active set is V's input != 0 (the product is signed, so "> 0" would drop every entry
where u < 0). For a ReLU gate eta_j = g_j and xi_j = g_p,j a_j vanish off {a_j != 0}, so again
AS_K / coef_L0 = E_sample ||v||_0 exactly (almost surely: an exact u_j = 0 is the exception).

The settings are recorded beside the rows (``arrays/[posthoc_]augmented_flatness_settings.json``)
so figures can say which scale their axes carry.

Online: on training batches every ``every`` steps (observe). Standalone / post hoc: ``measure``
runs ``batches`` training-mode forward/backward passes with no parameter update (lr 0).
"""
from __future__ import annotations

import torch

from .base import layer_rows
from .gradients import _TrainGradientProbe
from .standalone import preserved, take_batches, train_passes

_AS_K, _AS_V, _L0_NUM, _ACTIVE, _GZ2, _A2, _L2, _ROWS, _SAMPLES, _AS_U = range(10)
SCALES = ("authors", "per_sample")
ACTIVE_SETS = ("value_input", "pre_dropout")


def _scale_setting(scale, per_sample) -> str:
    """``scale``, or the older boolean ``per_sample`` (true: per_sample, false: authors)."""
    if per_sample is not None:
        legacy = "per_sample" if per_sample else "authors"
        if scale is not None and scale != legacy:
            raise TypeError(f"scale={scale!r} contradicts per_sample={per_sample}; set only scale "
                            f"({' | '.join(SCALES)})")
        scale = legacy
    scale = "authors" if scale is None else str(scale)
    if scale not in SCALES:
        raise TypeError(f"scale={scale!r}; choose one of {list(SCALES)}")
    return scale


class AugmentedFlatnessProbe(_TrainGradientProbe):
    name = "augmented_flatness"
    metrics = ("as_key", "as_value", "coef_l0", "coef_l2", "a2", "l2_term", "as_up")
    gated_metrics = ("as_up",)  # written on gated sites only (docs/paper.md §1.7)
    grads = ("eta", "g", "gz", "gu")  # gu: dL/du, gated sites only
    inputs = True
    value_inputs = True
    n_stats = 10

    def __init__(self, sites, every: int = 0, scale: str | None = None, active_set: str = "value_input",
                 batches: int = 1, per_sample: bool | None = None, **kw):
        self.scale_name = _scale_setting(scale, per_sample)
        if active_set not in ACTIVE_SETS:
            raise TypeError(f"active_set={active_set!r}; choose one of {list(ACTIVE_SETS)}")
        self.active_set = str(active_set)
        super().__init__(sites, every, per_sample=self.scale_name == "per_sample", **kw)
        self.batches = int(batches)

    def on_record(self, site, rec):
        k = self.scale(rec)
        x2 = rec.x.double().pow(2).sum(-1)  # ||x~_t||^2 per row
        eta2 = (rec.eta.double() * k).pow(2).sum(-1)
        g2 = (rec.g.double() * k).pow(2)
        xi2 = torch.zeros_like(eta2)
        if rec.gu is not None:  # a gated block: U reads x~ too (docs/paper.md §1.7)
            xi = (rec.gu.double() * k).pow(2)
            xi2 = xi.sum(-1)
            g2 = g2 + xi
        gz2 = (rec.gz.double() * k).pow(2).sum(-1)
        v = rec.v if rec.v is not None else rec.a  # V's input (after dropout); a for a value-free block
        a2 = v.double().pow(2).sum(-1)
        if self.active_set == "value_input":
            active = v != 0 if site.gated else v > 0  # the product of a gated block is signed
        else:
            active = ~site.act.flat_region(rec.h)
        dev = x2.device
        self._acc(dev)[site.index] += torch.stack([
            ((eta2 + xi2) * x2).sum(), (gz2 * a2).sum(), ((g2 * active).sum(-1) * x2).sum(), active.sum().double(),
            gz2.sum(), a2.sum(), (a2 * gz2).sum(),
            torch.tensor(float(x2.shape[0]), dtype=torch.float64, device=dev),
            torch.tensor(float(rec.samples), dtype=torch.float64, device=dev),
            (xi2 * x2).sum(),
        ])

    def rows(self, split: str):
        s = self.take(split)
        if s is None:
            return []
        self.record_settings(scale=self.scale_name, active_set=self.active_set, loss_scale=self.loss_scale)
        samples, rows = s[:, _SAMPLES].clamp(min=1), s[:, _ROWS].clamp(min=1)
        out = list(layer_rows(split, "as_key", (s[:, _AS_K] / samples).tolist()))
        out += layer_rows(split, "coef_l0", (s[:, _L0_NUM] / s[:, _ACTIVE].clamp(min=1)).tolist())
        out += layer_rows(split, "a2", (s[:, _A2] / rows).tolist())
        with_value = [site.index for site in self.sites if site.value is not None]
        for metric, v in (("as_value", s[:, _AS_V] / samples), ("coef_l2", s[:, _GZ2] / rows),
                          ("l2_term", s[:, _L2] / rows)):
            out += _rows_for(split, metric, {i: float(v[i]) for i in with_value})
        gated = [site.index for site in self.sites if site.gated]
        out += _rows_for(split, "as_up", {i: float(s[i, _AS_U] / samples[i]) for i in gated})
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
