"""What the figure functions share: picking rows from the collected table, grouping runs by the
config keys that vary, panel grids, and writing PNG + PDF.

Runs that differ only in their seed fall into one group: the group's curve is the mean over its
runs, with a band from the lowest to the highest run when there are several.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure  # no pyplot: any backend, no display needed

from ..collect import BASE_COLUMNS
from ..dotted import RUN_SETTINGS, is_run_setting
from ..naming import shorten_items

# Config keys that never make two runs scientifically different: not used to group runs.
BOOKKEEPING = set(RUN_SETTINGS)  # never a figure group (dotted.py)
SEED_KEYS = {"seed"}


class Skip(Exception):
    """A figure whose data are absent. The message says what is missing and how to get it."""


def config_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c not in BASE_COLUMNS]


def hue_keys(rows: pd.DataFrame, hue=None, exclude=()) -> list[str]:
    """The config keys that tell the runs in ``rows`` apart (seed and bookkeeping left out), or
    ``hue`` when given (a key or a list of keys)."""
    if hue is not None:
        keys = [hue] if isinstance(hue, str) else list(hue)
        unknown = [k for k in keys if k not in rows.columns]
        if unknown:
            raise Skip(f"hue key(s) {unknown} are not columns of the table; varying config keys: "
                       f"{config_columns(rows)}")
        return keys
    return [c for c in config_columns(rows)
            if c not in BOOKKEEPING and not is_run_setting(c) and c not in exclude and c.split(".")[-1] not in SEED_KEYS
            and rows.groupby("run")[c].first().nunique(dropna=False) > 1]


def _short(keys: list[str]) -> dict:
    """The legend name of each key: the full dotted key (``noise.enabled``, not ``enabled``, which
    says nothing of what is enabled)."""
    return {k: k for k in keys}


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{v:g}"
    return str(v)


def group_labels(rows: pd.DataFrame, keys: list[str]) -> pd.Series:
    """One label per row: 'key=value, ...' over ``keys``; all runs share one label when none vary."""
    if not keys:
        n = rows.run.nunique()
        return pd.Series("run" if n == 1 else f"mean of {n} runs", index=rows.index)
    short = _short(keys)
    parts = [rows[k].map(lambda v, k=k: f"{short[k]}={_fmt(v)}") for k in keys]
    label = parts[0]
    for p in parts[1:]:
        label = label + ", " + p
    return label


def ordered_groups(rows: pd.DataFrame, keys: list[str]) -> list[tuple[str, pd.DataFrame]]:
    """(label, rows) per group, ordered by the keys' values (numbers numerically)."""
    labels = group_labels(rows, keys)
    if not keys:
        return [(labels.iloc[0], rows)] if len(rows) else []
    firsts = rows.assign(_label=labels).groupby("_label")[keys].first()
    firsts = firsts.sort_values(keys, na_position="last", kind="stable")
    return [(label, rows[labels == label]) for label in firsts.index]


def layer_order(layers) -> list[str]:
    """Layer indices numerically, then 'avg'."""
    layers = {str(l) for l in layers}
    numeric = sorted((l for l in layers if re.fullmatch(r"-?\d+", l)), key=int)
    return numeric + sorted(layers - set(numeric) - {"avg"}) + (["avg"] if "avg" in layers else [])


def select(table: pd.DataFrame, metric, probe=None, split=None, layer=None) -> pd.DataFrame:
    metrics = [metric] if isinstance(metric, str) else list(metric)
    rows = table[table.metric.isin(metrics)]
    if probe is not None:
        rows = rows[rows.probe.isin([probe] if isinstance(probe, str) else list(probe))]
    if split is not None:
        rows = rows[rows.split == split]
    if layer is not None:
        rows = rows[rows.layer.astype(str) == str(layer)]
    return rows


def pick_split(rows: pd.DataFrame, prefer=("train", "test")) -> tuple[pd.DataFrame, str]:
    """The rows of one split: the first of ``prefer`` present, else the first present."""
    present = list(dict.fromkeys(rows.split))
    split = next((s for s in prefer if s in present), present[0] if present else "")
    return rows[rows.split == split], split


def draw_curve(ax, rows: pd.DataFrame, x: str = "step", **style):
    """Mean over runs of ``value`` vs ``x``; a min-max band when there are several runs."""
    wide = rows.groupby([x, "run"]).value.mean().unstack("run").sort_index()
    if wide.empty:
        return None
    mean = wide.mean(axis=1)
    (line,) = ax.plot(mean.index.to_numpy(), mean.to_numpy(), **{"lw": 1.4, **style})
    if wide.shape[1] > 1:
        ax.fill_between(wide.index.to_numpy(), wide.min(axis=1).to_numpy(), wide.max(axis=1).to_numpy(),
                        color=line.get_color(), alpha=0.18, lw=0)
    return line


def colors(n: int, cmap: str = "viridis"):
    if n <= 10 and cmap == "tab10":
        return [colormaps["tab10"](i) for i in range(n)]
    cm = colormaps[cmap]
    return [cm(v) for v in np.linspace(0.05, 0.9, max(n, 1))][:n]


def panels(n: int, ncols: int = 4, size=(3.6, 2.8), sharex=False, sharey=False):
    """A figure with ``n`` axes in rows of ``ncols``; unused axes are hidden."""
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=sharex, sharey=sharey).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def grid(nrows: int, ncols: int, size=(3.6, 2.8)):
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def slug(text: str, limit: int = 80) -> str:
    """A file-name part from a run id: at most ``limit`` characters, shortened by dropping whole
    key=value items (never digits of a value); a folder's trailing hash is kept, so names stay distinct."""
    text = re.sub(r"[^A-Za-z0-9=.,+_-]+", "_", str(text)).strip("_") or "run"
    if len(text) <= limit:
        return text
    tail = re.search(r"_[0-9a-f]{6}$", text)
    body, tail = (text[: tail.start()], tail.group()) if tail else (text, "")
    return shorten_items(body, limit - len(tail)) + tail


def save(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    """``<out_dir>/<name>.png`` and ``.pdf``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        path = out_dir / f"{name}.{ext}"
        fig.savefig(path, dpi=120)
        paths.append(path)
    return paths


def lines_per_group(rows: pd.DataFrame, panel_col: str, panel_values, keys, title, ylabel,
                    logy=False, ncols=4, xlabel="step"):
    """One panel per value of ``panel_col`` (e.g. a layer); in each, one curve per run group."""
    groups = ordered_groups(rows, keys)
    palette = colors(len(groups), "tab10" if len(groups) <= 10 else "viridis")
    fig, axes = panels(len(panel_values), ncols=ncols)
    ncols = max(1, min(ncols, len(panel_values)))
    for i, (ax, pv) in enumerate(zip(axes, panel_values)):
        for color, (label, g) in zip(palette, groups):
            draw_curve(ax, g[g[panel_col].astype(str) == str(pv)], color=color, label=label)
        ax.set_title(title(pv), fontsize=9)
        ax.set_xlabel(xlabel)
        if i % ncols == 0:
            ax.set_ylabel(ylabel)
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    figure_legend(fig, axes)
    return fig, axes


def figure_legend(fig: Figure, axes, ncols: int = 3) -> None:
    """One legend for the whole figure, below the panels (a legend inside one panel hides its curves
    and looks as if it were that panel's alone)."""
    entries = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if entries:
        fig.legend(list(entries.values()), list(entries), loc="outside lower center", fontsize=7,
                   ncols=max(1, min(ncols, len(entries))))


def lines_per_layer(rows: pd.DataFrame, metrics: list[str], keys, ylabels: dict, logy=(), ylims=None,
                    size=(3.8, 2.8)):
    """Rows of panels per metric, columns per run group; in each, one curve per layer (average dashed)."""
    groups = ordered_groups(rows, keys)
    fig, axes = grid(len(metrics), len(groups), size=size)
    layers = [l for l in layer_order(rows.layer) if l != "avg"]
    palette = colors(len(layers), "viridis")
    for c, (label, g) in enumerate(groups):
        for r, metric in enumerate(metrics):
            ax = axes[r][c]
            m = g[g.metric == metric]
            for color, layer in zip(palette, layers):
                draw_curve(ax, m[m.layer.astype(str) == layer], color=color, label=f"layer {layer}", lw=1.1)
            draw_curve(ax, m[m.layer.astype(str) == "avg"], color="k", ls="--", label="average", lw=1.6)
            ax.set_title(label if len(groups) > 1 or label != "run" else metric, fontsize=9)
            ax.set_xlabel("step")
            ax.set_ylabel(ylabels.get(metric, metric))
            if metric in logy:
                ax.set_yscale("log")
            if ylims and metric in ylims:
                ax.set_ylim(*ylims[metric])
            ax.grid(alpha=0.3)
    figure_legend(fig, [a for row in axes for a in row], ncols=min(len(layers) + 1, 6))
    return fig, axes
