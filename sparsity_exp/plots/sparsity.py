"""Sparsity figures (docs/paper.md §2 claims 1, 7, 8).

sparsity_vs_step   per-layer activation sparsity vs step, one figure per split (training batches,
                   test set), one panel per layer plus the average, one curve per run group
                   (vanilla vs modified: whatever config key varies)
flat_region        fraction of pre-activations in the activation's zero-derivative (flat) region vs
                   step, one column per run group, i.e. per (s_x, s_y) of the shifted activations of
                   §4.1; below it the fraction of outputs equal to s_y and mean sigma'(h)^2 when logged
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from .common import Skip, hue_keys, layer_order, lines_per_group, lines_per_layer, pick_split, save, select

SPLIT_TITLES = {"train": "training batches", "test": "test set"}
YLABELS = {
    "activation_sparsity": "activation sparsity (fraction of zeros)",
    "derivative_sparsity": "fraction in flat region",
    "rest_fraction": "fraction of outputs = s_y",
    "derivative2": "mean σ'(h)²",
}
# Config keys of the shifted activation's offsets (docs/paper.md §4.1), put first when grouping.
SHIFT_KEY = re.compile(r"(^|\.)(s_x|shift_x|sx|s_y|shift_y|sy)$")


def sparsity_vs_step(table: pd.DataFrame, out_dir: Path, metric: str = "activation_sparsity", hue=None) -> list[Path]:
    rows = select(table, metric, probe="sparsity")
    if rows.empty:
        raise Skip(f"no {metric} rows: the runs did not use the sparsity probe (probes=default)")
    keys = hue_keys(rows, hue)
    written = []
    for split in dict.fromkeys(["train", "test", *rows.split]):
        part = rows[rows.split == split]
        if part.empty:
            continue
        layers = layer_order(part.layer)
        fig, _ = lines_per_group(part, "layer", layers, keys, ylabel=YLABELS.get(metric, metric),
                                 title=lambda l: "average over layers" if l == "avg" else f"layer {l}")
        fig.suptitle(f"{metric.replace('_', ' ')} on the {SPLIT_TITLES.get(split, split)}")
        written += save(fig, out_dir, f"{metric}_{split}" if metric != "activation_sparsity" else f"sparsity_{split}")
    return written


def shifted_runs(table: pd.DataFrame) -> list[str]:
    """Runs whose activation is the shifted one: from the ``activation.name`` column when it varies,
    else from each run's config.yaml, else (a table without its folders) from ``rest_fraction`` rows,
    which only an activation resting at s_y != 0 logs."""
    runs = list(dict.fromkeys(table.run))
    if "activation.name" in table.columns:
        names = table.groupby("run")["activation.name"].first()
        return [r for r in runs if names.get(r) == "shifted"]
    found = []
    folders = table.groupby("run")["run_dir"].first() if "run_dir" in table.columns else {}
    resting = set(table.run[table.metric == "rest_fraction"])
    for run in runs:
        config = Path(str(folders.get(run, ""))) / "config.yaml"
        if config.is_file():
            import yaml

            name = ((yaml.safe_load(config.read_text()) or {}).get("activation") or {}).get("name")
            if name == "shifted":
                found.append(run)
        elif run in resting:
            found.append(run)
    return found


def flat_region(table: pd.DataFrame, out_dir: Path, hue=None, split=None) -> list[Path]:
    rows = select(table, ["derivative_sparsity", "rest_fraction", "derivative2"])
    if not (rows.metric == "derivative_sparsity").any():
        raise Skip("no derivative_sparsity rows: the runs did not use the sparsity probe (probes=default)")
    shifted = shifted_runs(table)
    if not shifted:
        raise Skip("no run uses the shifted activation (activation=shifted): the flat region of ReLU-like "
                   "activations is h <= 0, which the sparsity figures already show")
    rows = rows[rows.run.isin(shifted)]
    rows, split = (rows[rows.split == split], split) if split else pick_split(rows)
    keys = hue_keys(rows, hue)
    keys = sorted(keys, key=lambda k: not SHIFT_KEY.search(k))  # (s_x, s_y) first: panels read in order
    metrics = [m for m in YLABELS if m != "activation_sparsity" and (rows.metric == m).any()]
    fig, _ = lines_per_layer(rows, metrics, keys, YLABELS)
    fig.suptitle(f"flat (zero-derivative) region of the activation, {SPLIT_TITLES.get(split, split)}")
    return save(fig, out_dir, "flat_region")
