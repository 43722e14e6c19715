"""Gradient-side probes on training batches (docs/paper.md §1.2, §1.3 'older direct probes').

``gradients`` (per MLP site, over the observed training batches):
  eta_small_<p>    fraction of entries with |eta| < p, p in ``thresholds`` (1e-9, 1e-6, 1e-3)
  eta_l1, eta_l2   mean over tokens of sum_j |eta_j|^q, q = 1, 2
  key_fro2         ||K||_F^2 of the key weight (tr K K^T)
  g_norm2          mean over tokens of ||g_t||^2, g = dL/da
  gz_norm          mean over tokens of ||dL/dz_t|| at the block output
  eta_neg_count / eta_pos_count   mean over tokens of the number of entries with eta < 0 / > 0
  eta_neg_sum / eta_pos_sum       mean over tokens of the sum of those entries
  value_grad_fro   ||dL/dV||_F of the site's value weight, dL/dV = sum_t dL/dz_t v_t^T over the
                   observed rows (v = V's input, after dropout): the gradient of V's effective weight
                   (base + LoRA delta) even where the weight itself is frozen; sites with V only
  grad_norm_wrt_values  (one model-wide row, layer 'avg' like t_eff) sqrt(sum over sites of value_grad_fro^2): the authors'
                   'grad norm wrt values' (ActivationObservationPlugin, docs/paper.md §1.3 direct probes)
``gradient_density``:
  density_ratio    E[g^2 | active] / E[g^2] (active = outside the zero-derivative region, i.e.
                   a > 0 for ReLU). ``ratio_mode: exact`` (default): over every entry, exact zeros
                   and entries outside the range included. ``ratio_mode: binned``: the authors'
                   computation from the histograms (codes/scripts/after_training/gradient_density.py,
                   docs/paper.md §1.2): each mean is sum_b n_b 10^(2 c_b) / sum_b n_b over the bins b
                   of log10|g| inside ``log10_range`` (c_b the bin centre, n_b its count), so the
                   entries outside the range (below_range / above_range) and exact zeros are left out
                   and each entry counts at its bin centre; histograms are then filled at every
                   observation. Arrays ``gradient_density``: histograms of log10|g| over all
                   entries and over active ones on ``log10_range`` (the model preset's
                   ``grad_log10_range``: ViT [-10, 5], T5 [-40, 0] as the authors' figures), computed
                   only at the steps they are saved (``save_every``; every checkpoint post hoc)
  below_range / above_range  fraction of all entries with log10|g| below / above that range (exact
                   zeros count as below): the mass the histograms leave out, every observation

Scale: gradients of the training loss as the step computes it (the batch mean), like the authors'
hooks; ``per_sample: true`` multiplies them by the batch size, giving per-sample gradients for a
loss that averages per-sample losses over the batch. ``loss_scale`` (default 1.0) multiplies them
by a loss scale: the authors' ViT gradient-density runs backpropagate an fp16 GradScaler's 2^16 x
the loss, so their log10|g| histograms (and window) sit log10(65536) = 4.82 decades above the
project's at 1.0; ``loss_scale: 65536.0`` puts the project's histograms, below_range and
above_range on theirs (density_ratio does not depend on it; probes/flatness.py, docs/paper.md §1.3).
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch

from ..distributed import world_size
from ..atomic import atomic_path

from .base import Probe, layer_rows
from .capture import capture


def threshold_name(p: float) -> str:
    """1e-09 -> '1e-9', 0.001 -> '1e-3' (the metric names of the contract)."""
    mant, exp = f"{p:.0e}".split("e")
    return f"{mant}e{int(exp)}"


class _TrainGradientProbe(Probe):
    """Shared shape: accumulate a [n_sites, K] float64 tensor on the device from training-batch
    records, turn it into rows at ``rows('train')``."""

    grads: tuple = ("eta", "g", "gz")
    inputs = False
    value_inputs = False  # also capture V's input (after dropout), see capture.py
    n_stats = 0

    def __init__(self, sites, every: int = 0, per_sample: bool = False, loss_scale: float = 1.0, **kw):
        super().__init__(sites, every, **kw)
        self.per_sample = bool(per_sample)
        try:
            self.loss_scale = float(loss_scale)
        except (TypeError, ValueError):
            self.loss_scale = float("nan")
        if not (self.loss_scale > 0 and self.loss_scale < float("inf")):
            raise TypeError(f"loss_scale={loss_scale!r} must be a positive number (1.0: the loss as it is; 65536.0 = "
                            f"2^16: the authors' fp16 GradScaler, docs/paper.md §1.3)")
        self._stats = None

    def _acc(self, device) -> torch.Tensor:
        if self._stats is None:
            self._stats = torch.zeros(len(self.sites), self.n_stats, dtype=torch.float64, device=device)
        return self._stats

    def scale(self, rec) -> float:
        # Under data parallel training each rank's loss is the mean over its own share of the batch,
        # so its gradients are world_size times those of the global batch-mean loss: undo that.
        # Per sample: the micro-batch's samples times the accumulation steps, since each micro-batch
        # loss is weighted by its share of the whole batch (Trainer._forward_backward).
        # loss_scale: the gradients of loss_scale x the loss, as a backward inside an AMP GradScaler
        # sees them (the authors' fp16 runs: a fresh scaler's 2^16; docs/paper.md §1.3)
        accum = int(self.ctx.grad_accum or 1)
        return (float(rec.samples) * accum if self.per_sample else 1.0 / world_size()) * self.loss_scale

    def on_record(self, site, rec) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    @contextmanager
    def observe(self, split: str):
        if split != "train":
            yield
            return
        with capture(self.sites, self.on_record, grads=self.grads, inputs=self.inputs, masks=self.ctx,
                     value_inputs=self.value_inputs):
            yield

    def record_settings(self, **settings) -> None:
        """The conventions behind this probe's numbers (scale, active set, ratio mode), once per
        process, to ``arrays/[posthoc_]<name>_settings.json`` of the run folder, so a figure can label
        its axes with them (plots.gradients.probe_settings reads it); nothing without a recorder. The
        file holds the latest process's settings: a second post-hoc pass with other settings
        replaces it, while its rows are appended to the same posthoc_metrics.csv."""
        recorder = self.ctx.recorder
        if recorder is None or getattr(self, "_settings_recorded", False):
            return
        folder = recorder.run_dir / "arrays"
        folder.mkdir(exist_ok=True)
        with atomic_path(folder / f"{recorder.array_prefix}{self.name}_settings.json") as tmp:
            Path(tmp).write_text(json.dumps(settings, sort_keys=True) + "\n")
        self._settings_recorded = True

    def take(self, split: str):
        """The accumulated sums on the host, reset; None for the test split or when nothing was seen."""
        if split != "train":
            return None
        stats, self._stats = self._stats, None
        return None if stats is None else stats.cpu()  # the one host synchronisation


class GradientsProbe(_TrainGradientProbe):
    name = "gradients"
    metrics = ("eta_small_1e-9", "eta_small_1e-6", "eta_small_1e-3", "eta_l1", "eta_l2", "key_fro2", "g_norm2",
               "gz_norm", "eta_neg_count", "eta_pos_count", "eta_neg_sum", "eta_pos_sum", "value_grad_fro",
               "grad_norm_wrt_values")
    inputs = False
    value_inputs = True  # dL/dV is built from V's input

    def __init__(self, sites, every: int = 0, thresholds=(1e-9, 1e-6, 1e-3), **kw):
        self.thresholds = [float(t) for t in thresholds]
        self.n_stats = len(self.thresholds) + len(self._SUMS)
        super().__init__(sites, every, **kw)
        self._gv = [None] * len(sites)  # per site with V: sum over rows of dL/dz v^T (float64, V's shape)

    # per-site sums after the threshold counts; every metric below is one of them over entries or tokens
    _SUMS = ("entries", "tokens", "eta_l1", "eta_l2", "g_norm2", "gz_norm",
             "eta_neg_count", "eta_pos_count", "eta_neg_sum", "eta_pos_sum")

    def on_record(self, site, rec):
        k = self.scale(rec)
        eta, g, gz = rec.eta.double() * k, rec.g.double() * k, rec.gz.double() * k
        mag, neg, pos = eta.abs(), eta < 0, eta > 0
        counts = [(mag < p).sum() for p in self.thresholds]
        # counts filled on the device (new_full), not copied from the host: no transfer per observation
        sums = [eta.new_full((), float(eta.numel())), eta.new_full((), float(eta.shape[0])),
                mag.sum(), eta.pow(2).sum(), g.pow(2).sum(), gz.norm(dim=-1).sum(),
                neg.sum(), pos.sum(), (eta * neg).sum(), (eta * pos).sum()]
        self._acc(eta.device)[site.index] += torch.stack([v.double() for v in counts + sums])
        if rec.v is not None:
            gv = gz.T @ rec.v.double()
            self._gv[site.index] = gv if self._gv[site.index] is None else self._gv[site.index] + gv

    def accumulators(self, split: str):
        # the dL/dV sums are per-rank sums like _stats: summed over ranks before rows
        return super().accumulators(split) + ([m for m in self._gv if m is not None] if split == "train" else [])

    def rows(self, split: str):
        s = self.take(split)
        if s is None:
            return []
        n = len(self.thresholds)
        col = {name: s[:, n + i] for i, name in enumerate(self._SUMS)}
        entries, tokens = col["entries"].clamp(min=1), col["tokens"].clamp(min=1)
        out = []
        for j, p in enumerate(self.thresholds):
            out += layer_rows(split, f"eta_small_{threshold_name(p)}", (s[:, j] / entries).tolist())
        for name in ("eta_l1", "eta_l2"):
            out += layer_rows(split, name, (col[name] / tokens).tolist())
        out += layer_rows(split, "key_fro2", [float(site.weight("key").detach().double().pow(2).sum())
                                              for site in self.sites])
        for name in self._SUMS[4:]:
            out += layer_rows(split, name, (col[name] / tokens).tolist())
        gv, self._gv = self._gv, [None] * len(self.sites)
        fro = {i: float(m.norm()) for i, m in enumerate(gv) if m is not None}
        if fro:
            out += [(split, "value_grad_fro", i, v) for i, v in sorted(fro.items())]
            out.append((split, "value_grad_fro", "avg", sum(fro.values()) / len(fro)))
            out.append((split, "grad_norm_wrt_values", "avg", sum(v * v for v in fro.values()) ** 0.5))  # model-wide
        return out


RATIO_MODES = ("exact", "binned")


class GradientDensityProbe(_TrainGradientProbe):
    """E[g^2 | active] / E[g^2] per layer, and histograms of log10|g| (docs/paper.md §1.2)."""

    name = "gradient_density"
    metrics = ("density_ratio", "below_range", "above_range")
    grads = ("g",)
    n_stats = 6  # sum g^2, entries, sum g^2 over active, active entries, entries below / above the range

    def __init__(self, sites, every: int = 0, bins: int = 10000, log10_range=(-10.0, 5.0),
                 save_every: int = 0, ratio_mode: str = "exact", **kw):
        super().__init__(sites, every, **kw)
        if ratio_mode not in RATIO_MODES:
            raise TypeError(f"ratio_mode={ratio_mode!r}; choose one of {list(RATIO_MODES)}")
        self.ratio_mode = str(ratio_mode)
        self.bins = int(bins)
        self.lo, self.hi = (float(v) for v in log10_range)
        if not self.lo < self.hi:
            raise TypeError(f"log10_range={list(log10_range)} must be [low, high] with low < high")
        self.save_every = int(save_every or 0)
        self._hist = None  # [n_sites, 2, bins]: all entries, active entries

    def on_record(self, site, rec):
        g = rec.g.double() * self.scale(rec)
        active = ~site.act.flat_region(rec.h)
        g2 = g.pow(2)
        mag = g.abs()
        s = self._acc(g.device)[site.index]
        s += torch.stack([g2.sum(), g2.new_full((), float(g.numel()), dtype=torch.float64),
                          (g2 * active).sum(), active.sum().double(),
                          (mag < 10.0**self.lo).sum().double(), (mag > 10.0**self.hi).sum().double()])
        if not (self._save_due() or self.ratio_mode == "binned"):  # histograms cost more than the ratio:
            return                                                   # only when saved or the ratio needs them
        if self._hist is None:
            self._hist = torch.zeros(len(self.sites), 2, self.bins, dtype=torch.float64, device=g.device)
        logg = g.abs().log10().float()  # log10 0 = -inf falls outside the range: exact zeros are not binned
        self._hist[site.index, 0] += torch.histc(logg, self.bins, self.lo, self.hi).double()
        self._hist[site.index, 1] += torch.histc(logg[active], self.bins, self.lo, self.hi).double()

    def accumulators(self, split: str):
        # the histograms are counts like _stats: summed over ranks too (the binned ratio needs all of them)
        extra = [self._hist] if split == "train" and self._hist is not None else []
        return super().accumulators(split) + extra

    def _binned_means(self, hist):
        """Per site, the in-range means of g^2 over all and over active entries from the histogram
        counts, each entry at its bin centre: sum_b n_b 10^(2 c_b) / sum_b n_b (the authors'
        get_means on log10 g^2 = 2 log10|g|). NaN where no entry fell in the range."""
        if hist is None:
            nan = torch.full((len(self.sites),), float("nan"), dtype=torch.float64)
            return nan, nan
        h = hist.cpu()
        edges = torch.linspace(self.lo, self.hi, self.bins + 1, dtype=torch.float64)
        weight = torch.pow(10.0, 2 * (edges[:-1] + edges[1:]) / 2)  # 10^(2 c_b)
        means = (h * weight).sum(-1) / h.sum(-1)  # [sites, 2]; 0/0 = NaN for an empty histogram
        return means[:, 0], means[:, 1]

    def _save_due(self) -> bool:
        if self.ctx.recorder is None:
            return self.save_every >= 0  # no run folder (unit use): keep them in memory
        if self.ctx.posthoc:  # post hoc: every checkpoint measured gets its histograms
            return True
        return self.save_every > 0 and self.ctx.step % self.save_every == 0

    def rows(self, split: str):
        if split != "train":
            return []
        s = self.take(split)
        hist, self._hist = self._hist, None
        if s is None:
            return []
        mean_all = s[:, 0] / s[:, 1].clamp(min=1)
        mean_active = s[:, 2] / s[:, 3].clamp(min=1)
        if self.ratio_mode == "binned":
            mean_all, mean_active = self._binned_means(hist)
        ratio = torch.where(mean_all > 0, mean_active / mean_all, torch.full_like(mean_all, float("nan")))
        self.record_settings(ratio_mode=self.ratio_mode, log10_range=[self.lo, self.hi], bins=self.bins,
                             loss_scale=self.loss_scale)
        entries = s[:, 1].clamp(min=1)
        if self._save_due() and hist is not None and self.ctx.recorder is not None:
            h = hist.cpu().numpy()
            edges = torch.linspace(self.lo, self.hi, self.bins + 1).numpy()
            arrays = {"log10_edges": edges}
            for site in self.sites:
                arrays[f"layer_{site.index}_all"] = h[site.index, 0]
                arrays[f"layer_{site.index}_active"] = h[site.index, 1]
            self.save_arrays(self.name, **arrays)
        out = list(layer_rows(split, "density_ratio", ratio.tolist()))
        out += layer_rows(split, "below_range", (s[:, 4] / entries).tolist())
        out += layer_rows(split, "above_range", (s[:, 5] / entries).tolist())
        return out
