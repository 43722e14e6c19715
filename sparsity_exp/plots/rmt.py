"""Marchenko-Pastur figures of the LN-MLP width sweep (docs/paper.md §1.6, §4.5, §2 claim 5), aggregated
as the authors' after_training/mp.py does.

mp_anisotropy  "averaged relative anisotropy" of the input and gradient covariances against the hidden
               width p: per run the mean over every logged step and every layer (mp.py's
               ``global_statistics.mean(axis=(-1, -2))``), then the mean over seeds; one line per
               value of the other varying keys (e.g. weight decay)
mp_bound       the Theorem-8 upper bound (bound_re, bound_im) of ONE layer (``layer``, default 1: mp.py
               plots ``bound_re[..., 1]``) vs step, log y, one curve per run group (width x weight
               decay), mean over seeds. The probe's bound uses c = p/(T B) with T the step, as mp.py;
               it grows ~sqrt(T) at fixed alpha and anisotropy (see probes/rmt.py).
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from .common import (Skip, colors, config_columns, figure_legend, hue_keys, lines_per_group, ordered_groups,
                     panels, pick_split, save, select)

ANISOTROPY = {"rel_anisotropy_input": "inputs (LayerNorm outputs)", "rel_anisotropy_grad": "gradients"}
BOUND = {"bound_re": "bound, real part", "bound_im": "bound, imaginary part"}
WIDTH_KEY = re.compile(r"(^|\.)(width|p|d_ff|hidden)$")


def find_width_key(rows: pd.DataFrame, width_key=None) -> str:
    if width_key:
        if width_key not in rows.columns:
            raise Skip(f"{width_key} is not a varying config key of these runs; varying: {config_columns(rows)}")
        return width_key
    candidates = [c for c in config_columns(rows) if WIDTH_KEY.search(c)
                  and pd.api.types.is_numeric_dtype(rows[c]) and rows.groupby("run")[c].first().nunique() > 1]
    if not candidates:
        raise Skip("needs runs of several widths: sweep model.width (e.g. `run -m model.width=16,64,256`)")
    return "model.width" if "model.width" in candidates else candidates[0]


def mp_anisotropy(table: pd.DataFrame, out_dir: Path, width_key=None, hue=None) -> list[Path]:
    rows = select(table, list(ANISOTROPY))
    rows = rows[rows.layer.astype(str) != "avg"]
    if rows.empty:
        raise Skip("no rel_anisotropy_input / rel_anisotropy_grad rows: enable the rmt probe")
    rows, split = pick_split(rows)
    width = find_width_key(rows, width_key)
    # mp.py: mean over steps and layers per run (one value per run and metric), then over seeds
    per_run = rows.groupby(["run", "metric"], as_index=False).agg(
        {"value": "mean", **{c: "first" for c in rows.columns if c not in ("run", "metric", "value")}})
    keys = hue_keys(per_run, hue, exclude={width})
    groups = ordered_groups(per_run, keys)
    metrics = [m for m in ANISOTROPY if (per_run.metric == m).any()]
    fig, axes = panels(len(metrics), ncols=2, size=(4.2, 3.2))
    palette = colors(len(groups), "tab10" if len(groups) <= 10 else "viridis")
    for ax, metric in zip(axes, metrics):
        for color, (label, g) in zip(palette, groups):
            m = g[g.metric == metric].groupby(width).value.mean().sort_index()
            ax.plot(m.index.to_numpy(), m.to_numpy(), "o-", color=color, label=label)
        ax.set_title(f"covariance of {ANISOTROPY[metric]}", fontsize=9)
        ax.set_xlabel(f"hidden width p ({width})")
        ax.set_ylabel("averaged relative anisotropy")
        ax.grid(alpha=0.3)
    figure_legend(fig, axes)  # one legend for every panel
    fig.suptitle("relative anisotropy vs width (mean over steps and layers, as mp.py)")
    return save(fig, out_dir, "mp_anisotropy")


def mp_bound(table: pd.DataFrame, out_dir: Path, hue=None, layer: int = 1) -> list[Path]:
    rows = select(table, list(BOUND))
    if rows.empty:
        raise Skip("no bound_re / bound_im rows: enable the rmt probe")
    present = sorted({str(l) for l in rows.layer} - {"avg"})
    if str(layer) not in present:
        raise Skip(f"no bound rows for layer {layer} (mp.py plots layer 1); layers present: {present}")
    rows = rows[rows.layer.astype(str) == str(layer)]
    rows, split = pick_split(rows)
    metrics = [m for m in BOUND if (rows.metric == m).any()]
    fig, _ = lines_per_group(rows, "metric", metrics, hue_keys(rows, hue), title=lambda m: BOUND[m],
                             ylabel=f"upper bound (layer {layer})", logy=True, ncols=2)
    fig.suptitle(f"Marchenko-Pastur upper bound vs step, layer {layer} as mp.py (rises ~sqrt(T) at fixed alpha)")
    return save(fig, out_dir, "mp_bound")
