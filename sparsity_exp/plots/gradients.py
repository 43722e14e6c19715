"""Gradient density (docs/paper.md §1.2, §2 claim 9: small eta does not come from mis-aligning g).

gradient_density             E[g^2 | a>0] / E[g^2] (metric density_ratio) vs step, log y, one curve
                             per layer, one column per run group; the y axis names the probe's
                             ratio_mode (exact | binned, from the settings the probe recorded)
gradient_density_histograms  per run: one panel per layer, the distribution of log10|g| over all
                             entries (solid) and over active entries (dashed) for up to ``max_steps``
                             saved steps, from ``arrays/gradient_density_step*.npz``

The histogram files are read tolerantly: per layer ``layer_<i>_all`` and ``layer_<i>_active``
(counts), or ``layer_<i>`` with two rows (all, active) or one (all); bin edges of log10|g| from
``edges`` (or ``bin_edges``, or ``layer_<i>_edges``), else from ``range`` = (lo, hi).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from .common import (Skip, colors, figure_legend, hue_keys, layer_order, lines_per_layer, panels, pick_split,
                     save, select, slug)
from .spectrum import runs_with_arrays


def read_histograms(npz) -> dict[str, dict]:
    """{layer: {'edges': array or None, 'all': counts, 'active': counts or None}}."""
    files = set(npz.files)
    shared = next((np.asarray(npz[k], float) for k in ("edges", "bin_edges") if k in files), None)
    out = {}
    for key in sorted(files):
        m = re.fullmatch(r"layer_(\d+)(?:_(all|active))?", key)
        if not m:
            continue
        layer, part = m.groups()
        entry = out.setdefault(layer, {"edges": None, "all": None, "active": None})
        arr = np.asarray(npz[key], dtype=np.float64)
        if part:
            entry[part] = arr.ravel()
        elif arr.ndim == 2:
            entry["all"], entry["active"] = arr[0], (arr[1] if len(arr) > 1 else None)
        else:
            entry["all"] = arr.ravel()
    for layer, entry in out.items():
        own = f"layer_{layer}_edges"
        edges = np.asarray(npz[own], float) if own in files else shared
        if edges is None and "range" in files and entry["all"] is not None:
            lo, hi = np.asarray(npz["range"], float).ravel()[:2]
            edges = np.linspace(lo, hi, len(entry["all"]) + 1)
        entry["edges"] = edges
    return {l: e for l, e in out.items() if e["all"] is not None}


def _coarse(counts: np.ndarray, edges, target: int = 150):
    """Sum neighbouring bins so a 10,000-bin histogram draws as about ``target`` bins."""
    n = len(counts)
    if edges is None or len(edges) != n + 1:
        edges = np.arange(n + 1, dtype=float)
    k = max(1, n // target)
    starts = np.arange(0, n, k)
    return np.add.reduceat(counts, starts), np.append(edges[starts], edges[-1])


def probe_settings(rows: pd.DataFrame, probe: str, from_config=None) -> list[dict]:
    """The settings behind ``rows`` of ``probe``, one dict per (run folder, source) that has them: the
    file the probe writes beside its rows (``arrays/[posthoc_]<probe>_settings.json``,
    probes.gradients._TrainGradientProbe.record_settings), else for online rows ``from_config(probe
    section of the run's config.yaml)`` when given (runs written before the file existed)."""
    found = []
    if "run_dir" not in rows:
        return found
    sources = rows.source if "source" in rows else pd.Series("metrics", index=rows.index)
    for run_dir, source in set(zip(rows.run_dir.astype(str), sources.astype(str))):
        folder = Path(run_dir)
        path = folder / "arrays" / f"{'posthoc_' if source == 'posthoc' else ''}{probe}_settings.json"
        try:
            found.append(json.loads(path.read_text()))
            continue
        except (OSError, ValueError):
            pass
        if from_config is not None and source != "posthoc":
            try:
                section = ((yaml.safe_load((folder / "config.yaml").read_text()) or {}).get("probes") or {}).get(probe)
            except (OSError, yaml.YAMLError):
                section = None
            if isinstance(section, dict) and (got := from_config(section)):
                found.append(got)
    return found


def settings_text(found: list[dict], key: str, names: dict) -> str | None:
    """How ``key`` reads in a label: its one value's name, 'mixed: ...' when runs differ, None unknown."""
    values = sorted({str(f[key]) for f in found if key in f})
    if not values:
        return None
    text = [names.get(v, v) for v in values]
    return text[0] if len(text) == 1 else "mixed: " + " / ".join(text)


RATIO_MODE_NAMES = {"exact": "exact, every entry", "binned": "binned in range (authors')"}


def gradient_density(table: pd.DataFrame, out_dir: Path, hue=None) -> list[Path]:
    rows = select(table, "density_ratio")
    if rows.empty:
        raise Skip("no density_ratio rows: enable the gradient_density probe")
    rows, split = pick_split(rows)
    mode = settings_text(probe_settings(rows, "gradient_density", lambda c: {"ratio_mode": c.get("ratio_mode", "exact")}),
                         "ratio_mode", RATIO_MODE_NAMES)
    ylabel = "E[g² | a>0] / E[g²]" + (f"\n({mode})" if mode else "")
    fig, _ = lines_per_layer(rows, ["density_ratio"], hue_keys(rows, hue), {"density_ratio": ylabel},
                             logy={"density_ratio"})
    fig.suptitle(f"gradient density on active units ({split})")
    return save(fig, out_dir, "gradient_density")


def _outside(table: pd.DataFrame, run: str, layer: str, step: int) -> str:
    """', x% below / y% above the range' at ``step`` from the probe's below_range/above_range rows: the
    mass the histogram (normalised over the entries in range) leaves out; '' without those rows."""
    rows = table[(table.run == run) & (table.probe == "gradient_density") & (table.step == step)
                 & (table.layer.astype(str) == str(layer))]
    got = {m: rows[rows.metric == m].value for m in ("below_range", "above_range")}
    if any(v.empty for v in got.values()):
        return ""
    return f" ({got['below_range'].iloc[0]:.1%} below, {got['above_range'].iloc[0]:.1%} above range)"


def gradient_density_histograms(table: pd.DataFrame, out_dir: Path, max_steps: int = 4) -> list[Path]:
    found = runs_with_arrays(table, "gradient_density")
    if not found:
        raise Skip("no arrays/gradient_density_step*.npz in any run: enable the gradient_density probe")
    written = []
    for run, files in found:
        pick = sorted({int(round(i)) for i in np.linspace(0, len(files) - 1, min(max_steps, len(files)))})
        per_step = [(files[i][0], read_histograms(np.load(files[i][1]))) for i in pick]
        layers = layer_order(set().union(*(h.keys() for _, h in per_step)))
        if not layers:
            continue
        fig, axes = panels(len(layers), ncols=4)
        palette = colors(len(per_step), "viridis")
        with_edges = True
        for ax, layer in zip(axes, layers):
            for color, (step, hists) in zip(palette, per_step):
                h = hists.get(layer)
                if h is None:
                    continue
                with_edges &= h["edges"] is not None
                total = max(h["all"].sum(), 1.0)
                counts, edges = _coarse(h["all"], h["edges"])
                ax.stairs(counts / total, edges, color=color, label=f"step {step}, all")
                if h["active"] is not None:
                    counts, edges = _coarse(h["active"], h["edges"])
                    ax.stairs(counts / total, edges, color=color, ls="--", label=f"step {step}, active")
            ax.set_yscale("log")
            ax.set_title(f"layer {layer}{_outside(table, run, layer, per_step[-1][0])}", fontsize=9)
            ax.set_xlabel("log10 |g|" if with_edges else "bin of log10 |g| (no edges saved)")
            ax.set_ylabel("fraction of entries in range")
            ax.grid(alpha=0.3)
        figure_legend(fig, axes)  # one legend for every panel
        fig.suptitle(f"log10 |g| over all entries (solid) and active entries (dashed), {run}", fontsize=9)
        written += save(fig, out_dir, f"gradient_density_hist_{slug(run)}")
    if not written:
        raise Skip("the gradient_density arrays hold no layer_<i> keys")
    return written
