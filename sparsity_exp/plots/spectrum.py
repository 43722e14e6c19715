"""Spectral concentration of the key matrices (docs/paper.md §1.5, §2 claim 4).

spectrum_histograms  per run: one panel per layer, histograms of log10 of the non-zero eigenvalues
                     of K K^T (lambda > 0.1) for up to ``max_steps`` saved steps, read from
                     ``arrays/spectrum_step*.npz`` (keys ``layer_<i>``); red lines bound the narrowest
                     interval holding 80% of the non-zero eigenvalues at the last step
spectrum_ratio       ratio80 (y capped at 100, as the paper plots it) and near_zero_rate vs step,
                     one curve per layer, one column per run group
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from .common import (Skip, colors, figure_legend, hue_keys, layer_order, lines_per_layer, panels, pick_split,
                     save, select, slug)

NONZERO = 0.1  # the notebook's "non-zero": lambda > 0.1, i.e. log10 lambda > -1


def array_files(run_dir, name: str) -> list[tuple[int, Path]]:
    """(step, path) of ``<run_dir>/arrays/<name>_step<digits>.npz``, by step."""
    folder = Path(run_dir) / "arrays"
    out = []
    for path in folder.glob(f"{name}_step*.npz") if folder.is_dir() else []:
        m = re.fullmatch(rf"{re.escape(name)}_step(\d+)\.npz", path.name)
        if m:
            out.append((int(m.group(1)), path))
    return sorted(out)


def runs_with_arrays(table: pd.DataFrame, name: str) -> list[tuple[str, list]]:
    runs = table.groupby("run", sort=True).run_dir.first()
    # a run's own arrays, else those of `sparsity-exp probe` over its checkpoints (posthoc_<name>)
    found = [(run, array_files(d, name) or array_files(d, f"posthoc_{name}")) for run, d in runs.items()]
    return [(run, files) for run, files in found if files]


def layer_arrays(npz) -> dict[str, np.ndarray]:
    """{'0': array, '1': ...} from the keys ``layer_<i>``."""
    out = {}
    for key in npz.files:
        m = re.fullmatch(r"layer_(\d+)", key)
        if m:
            out[m.group(1)] = np.asarray(npz[key], dtype=np.float64).ravel()
    return out


def majority_interval(eigenvalues, mass: float = 0.8, bins: int = 100, nonzero: float = NONZERO):
    """Narrowest run of contiguous histogram bins (``bins`` equal bins of log10 lambda over
    [log10 nonzero, log10 lambda_max]) holding at least ``mass`` of the non-zero eigenvalues, as
    (lo, hi) in log10 units; None when no eigenvalue is non-zero (docs/paper.md §1.5, notebook)."""
    lam = np.asarray(eigenvalues, dtype=np.float64)
    logs = np.log10(lam[lam > nonzero])
    if logs.size == 0:
        return None
    lo_edge, hi_edge = np.log10(nonzero), logs.max()
    if hi_edge <= lo_edge:
        return (lo_edge, hi_edge)
    counts, edges = np.histogram(logs, bins=bins, range=(lo_edge, hi_edge))
    need = mass * logs.size
    csum = np.concatenate([[0], np.cumsum(counts)])
    best = (0, bins)
    for i in range(bins):  # smallest j with csum[j] - csum[i] >= need, then keep the narrowest
        j = int(np.searchsorted(csum, csum[i] + need - 1e-9, side="left"))
        if j <= bins and j - i < best[1] - best[0]:
            best = (i, j)
    return float(edges[best[0]]), float(edges[best[1]])


def spectrum_histograms(table: pd.DataFrame, out_dir: Path, max_steps: int = 6) -> list[Path]:
    found = runs_with_arrays(table, "spectrum")
    if not found:
        raise Skip("no arrays/spectrum_step*.npz in any run: enable the spectrum probe "
                   "(probes=full, or probe over the checkpoints with `sparsity-exp probe RUN`)")
    written = []
    for run, files in found:
        pick = sorted({int(round(i)) for i in np.linspace(0, len(files) - 1, min(max_steps, len(files)))})
        chosen = [files[i] for i in pick]
        per_step = [(step, layer_arrays(np.load(path))) for step, path in chosen]
        layers = layer_order(set().union(*(d.keys() for _, d in per_step)))
        if not layers:
            continue
        fig, axes = panels(len(layers), ncols=4)
        palette = colors(len(per_step), "viridis")
        top = max((np.log10(v.max()) for _, d in per_step for v in d.values() if v.size and v.max() > NONZERO),
                  default=0.0)
        for ax, layer in zip(axes, layers):
            for color, (step, arrays) in zip(palette, per_step):
                lam = arrays.get(layer)
                if lam is None or not (lam > NONZERO).any():
                    continue
                ax.hist(np.log10(lam[lam > NONZERO]), bins=40, range=(-1, max(top, -1 + 1e-6)), histtype="step",
                        color=color, label=f"step {step}", lw=1.2)
            last = per_step[-1][1].get(layer)
            interval = majority_interval(last) if last is not None else None
            if interval:
                for x in interval:
                    ax.axvline(x, color="red", lw=1.0)
            ax.set_title(f"layer {layer}", fontsize=9)
            ax.set_xlabel("log10 eigenvalue of KKᵀ (non-zero only)")
            ax.set_ylabel("count")
            ax.grid(alpha=0.3)
        figure_legend(fig, axes)  # one legend for every panel
        fig.suptitle(f"KKᵀ eigenvalues, {run} (red: 80% interval, last step)", fontsize=9)
        written += save(fig, out_dir, f"spectrum_hist_{slug(run)}")
    if not written:
        raise Skip("the spectrum arrays hold no layer_<i> keys")
    return written


def spectrum_ratio(table: pd.DataFrame, out_dir: Path, hue=None) -> list[Path]:
    rows = select(table, ["ratio80", "near_zero_rate"])
    if rows.empty:
        raise Skip("no ratio80 / near_zero_rate rows: enable the spectrum probe (probes=full)")
    rows, split = pick_split(rows)
    metrics = [m for m in ("ratio80", "near_zero_rate") if (rows.metric == m).any()]
    top = rows.loc[rows.metric == "ratio80", "value"].max() if "ratio80" in metrics else 1
    ylims = {"ratio80": (1, min(100.0, max(top * 1.1, 1.5)))} if "ratio80" in metrics else {}
    fig, _ = lines_per_layer(rows, metrics, hue_keys(rows, hue),
                             {"ratio80": "λ_hi/λ_lo of the 80% interval", "near_zero_rate": "near-zero rate (λ ≤ 0.1)"},
                             ylims=ylims)
    fig.suptitle("spectral concentration of KKᵀ")
    return save(fig, out_dir, "spectrum_ratio")
