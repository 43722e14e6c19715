"""The run's quick-look figure: activation sparsity per layer vs step, train and test panels."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure  # no pyplot: works with any backend, no display needed


def sparsity_per_layer(metrics: pd.DataFrame, path: Path, metric: str = "activation_sparsity") -> Path | None:
    rows = metrics[(metrics.probe == "sparsity") & (metrics.metric == metric)]
    if rows.empty:
        return None
    splits = [s for s in ("train", "test") if (rows.split == s).any()]
    fig = Figure(figsize=(5.2 * len(splits), 3.8), layout="constrained")
    axes = fig.subplots(1, len(splits), squeeze=False)[0]
    for ax, split in zip(axes, splits):
        part = rows[rows.split == split]
        layers = sorted({str(l) for l in part.layer} - {"avg"}, key=int)
        for layer in layers:
            curve = part[part.layer.astype(str) == layer].sort_values("step")
            ax.plot(curve.step, curve.value, lw=1.2, label=f"layer {layer}")
        avg = part[part.layer.astype(str) == "avg"].sort_values("step")
        ax.plot(avg.step, avg.value, "k--", lw=1.6, label="average")
        ax.set_title(f"{split} batches" if split == "train" else "test set")
        ax.set_xlabel("step")
        ax.set_ylabel(f"{metric.replace('_', ' ')} (fraction of zeros)" if metric == "activation_sparsity"
                      else metric.replace("_", " "))
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.savefig(path, dpi=110)
    return Path(path)
