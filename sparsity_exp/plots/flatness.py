"""Flatness figures (docs/paper.md §1.3, §2 claim 2, and the Hessian/sharpness probes).

augmented_flatness     layer-averaged AS_K, coefficient L0, AS_V, coefficient L2 vs step (log y), and
                       AS_K / coef_L0, which equals ||v||_0 (or ||a||_0, pre_dropout) for ReLU (its
                       decrease over training is the 2026 claim); one curve per run group, online and
                       post-hoc rows told apart; the y axis says the probe's scale (authors' or
                       per-sample) and the title its active set, from the settings the probe recorded
flatness_vs_sparsity   each Hessian/sharpness metric (layer 'avg') against the layer-averaged activation
                       sparsity of the same run at the nearest logged step: one point per (run, step),
                       a run's points joined in step order, colours by run group; a metric with a
                       standard-error row (`<metric>_se`, the Hessian probe's traces) gets 95% interval
                       bars, +- t_{df}(0.975) x SE on the `<metric>_df` row's degrees of freedom (issue 27:
                       t quantiles wherever an interval is drawn); rows from before df were recorded get
                       +-1 SE, and the panel says which
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from .common import (Skip, colors, figure_legend, hue_keys, lines_per_group, ordered_groups, panels,
                     pick_split, save, select)
from .gradients import probe_settings, settings_text

AUGMENTED = {"as_key": "AS_K", "coef_l0": "L0 coefficient", "as_value": "AS_V", "coef_l2": "L2 coefficient"}
RATIO = "as_key/coef_l0"
FLATNESS = {
    ("hessian", "trace"): "Hessian trace",
    ("hessian", "lambda_max"): "largest Hessian eigenvalue",
    ("hessian", "top_abs_eigenvalue"): "largest-magnitude Hessian eigenvalue",
    ("hessian", "top_eigenvalue"): "largest-magnitude Hessian eigenvalue",  # its name before the probe said which
    ("hessian", "feature_input_trace"): "Hessian trace per token, MLP inputs",
    ("hessian", "feature_preact_trace"): "Hessian trace per token, pre-activations",
    ("sharpness", "avg_param"): "average-case sharpness, parameters",
    ("sharpness", "worst_param"): "worst-case sharpness, parameters",
    ("sharpness", "avg_feature_input"): "average-case sharpness, MLP inputs",
    ("sharpness", "worst_feature_input"): "worst-case sharpness, MLP inputs",
    ("sharpness", "avg_feature_act"): "average-case sharpness, activations",
    ("sharpness", "worst_feature_act"): "worst-case sharpness, activations",
}


SCALE_NAMES = {"authors": "authors' scale (batch mean)", "per_sample": "per-sample scale (×B²)"}
ACTIVE_NAMES = {"value_input": "V's input > 0 (after dropout)", "pre_dropout": "σ'(h) ≠ 0 (before dropout)"}
ACTIVE_L0 = {ACTIVE_NAMES["value_input"]: "‖v‖₀", ACTIVE_NAMES["pre_dropout"]: "‖a‖₀"}


def _settings_from_config(section: dict) -> dict:
    """A run's online augmented_flatness settings from its config.yaml (runs written before the probe
    recorded them): ``scale``, else the older ``per_sample`` flag; the active set then was pre-dropout."""
    if "scale" in section:
        return {"scale": section["scale"], "active_set": section.get("active_set", "value_input"),
                "loss_scale": float(section.get("loss_scale", 1.0))}
    if "per_sample" in section:
        return {"scale": "per_sample" if section["per_sample"] else "authors", "active_set": "pre_dropout"}
    return {}


def _with_source(rows: pd.DataFrame, keys: list[str]) -> list[str]:
    """Online and post-hoc rows of one metric are different curves."""
    return keys + ["source"] if rows.source.nunique() > 1 else keys


def _ratio_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """AS_K / coef_L0 per (run, source, step, layer), then averaged over the numbered layers as 'avg'."""
    idx = ["run", "source", "split", "step", "layer"]
    wide = rows[rows.metric.isin(["as_key", "coef_l0"])].pivot_table(index=idx, columns="metric", values="value",
                                                                      aggfunc="mean")
    if not {"as_key", "coef_l0"} <= set(wide.columns):
        return rows.iloc[0:0]
    ratio = (wide["as_key"] / wide["coef_l0"].replace(0, np.nan)).rename("value").reset_index()
    per_layer = ratio[ratio.layer.astype(str) != "avg"]
    if not per_layer.empty:
        ratio = per_layer.groupby(["run", "source", "split", "step"], as_index=False).value.mean().assign(layer="avg")
    ratio["metric"] = RATIO
    extra = rows.drop(columns=["metric", "layer", "value", "step", "epoch"]).drop_duplicates(["run", "source", "split"])
    return ratio.merge(extra, on=["run", "source", "split"], how="left")


def augmented_flatness(table: pd.DataFrame, out_dir: Path, hue=None) -> list[Path]:
    rows = select(table, list(AUGMENTED))
    if rows.empty:
        raise Skip("no as_key / coef_l0 / as_value / coef_l2 rows: enable the augmented_flatness probe, online "
                   "or over checkpoints with `sparsity-exp probe RUN`")
    rows, split = pick_split(rows)
    keys = _with_source(rows, hue_keys(rows, hue))
    ratio = _ratio_rows(rows)
    avg = pd.concat([rows[rows.layer.astype(str) == "avg"], ratio], ignore_index=True)
    present = [m for m in [*AUGMENTED, RATIO] if (avg.metric == m).any()]
    found = probe_settings(rows, "augmented_flatness", _settings_from_config)
    scale = settings_text(found, "scale", SCALE_NAMES)
    loss_scale = settings_text(found, "loss_scale", {"1.0": ""})
    if scale and loss_scale:  # gradients of loss_scale x the loss (the authors' fp16 GradScaler: 65536)
        scale += f", x loss scale {loss_scale}²"
    active = settings_text(found, "active_set", ACTIVE_NAMES)
    label = {**AUGMENTED, RATIO: "AS_K / L0 coefficient (= " + (ACTIVE_L0.get(active, "‖a‖₀") if active else "‖a‖₀")
             + " for ReLU)"}
    fig, axes = lines_per_group(avg, "metric", present, keys, title=lambda m: label[m],
                                ylabel="value (layer average)\n" + (scale or "scale unknown"),
                                logy=True, ncols=3)
    fig.suptitle("augmented flatness, " + ("training batches" if split == "train" else f"split {split}")
                 + (f"; active entries: {active}" if active else ""))
    return save(fig, out_dir, "augmented_flatness")


def flatness_vs_sparsity(table: pd.DataFrame, out_dir: Path, hue=None, sparsity_split: str = "train") -> list[Path]:
    ys = table[table.metric.isin({m for _, m in FLATNESS}) & (table.layer.astype(str) == "avg")]
    ys = ys[[(p, m) in FLATNESS for p, m in zip(ys.probe, ys.metric)]]
    if ys.empty:
        raise Skip("no hessian / sharpness rows: enable those probes (probes=full)")
    se = table[table.metric.str.endswith(("_se", "_df")) & (table.layer.astype(str) == "avg")]
    xs = select(table, "activation_sparsity", probe="sparsity", layer="avg")
    if xs.empty:
        raise Skip("no activation_sparsity rows to put on the x axis: enable the sparsity probe")
    xs = xs[xs.split == sparsity_split] if (xs.split == sparsity_split).any() else pick_split(xs)[0]
    x_split = xs.split.iloc[0]
    panels_keys = list(dict.fromkeys(zip(ys.probe, ys.metric, ys.split)))
    keys = hue_keys(table[table.run.isin(ys.run)], hue)
    groups = ordered_groups(ys, keys)
    palette = colors(len(groups), "tab10" if len(groups) <= 10 else "viridis")
    fig, axes = panels(len(panels_keys), ncols=3, size=(4.0, 3.2))
    points = 0
    for ax, (probe, metric, split) in zip(axes, panels_keys):
        kinds = set()
        for color, (label, g) in zip(palette, groups):
            first = True
            for run, y in g[(g.probe == probe) & (g.metric == metric) & (g.split == split)].groupby("run"):
                x = xs[xs.run == run][["step", "value"]].sort_values("step")
                if x.empty:
                    continue
                y = y[["step", "value", "source"] if "source" in y else ["step", "value"]].sort_values("step")
                mine = se[(se.run == run) & (se.probe == probe) & (se.split == split)]
                err, df = mine[mine.metric == f"{metric}_se"], mine[mine.metric == f"{metric}_df"]
                if not err.empty:  # the estimate's standard error (and its df) at the same step (and source)
                    on = [c for c in ("step", "source") if c in y and c in err]
                    y = y.merge(err[on + ["value"]].rename(columns={"value": "se"}), on=on, how="left")
                    if not df.empty:
                        y = y.merge(df[on + ["value"]].rename(columns={"value": "df"}), on=on, how="left")
                        y["se"] = y.se * stats.t.ppf(0.975, y.df)  # the 95% interval's half-width
                        kinds.add("95% t interval")
                    else:
                        kinds.add("+-1 SE (no df recorded)")
                y = y.sort_values("step")
                both = pd.merge_asof(y, x.rename(columns={"value": "x"}), on="step", direction="nearest")
                ax.plot(both.x, both.value, "-", color=color, lw=0.6, alpha=0.5)
                ax.scatter(both.x, both.value, color=color, s=14, label=label if first else None)
                if "se" in both and both.se.notna().any():
                    ax.errorbar(both.x, both.value, yerr=both.se.fillna(0), fmt="none", ecolor=color, elinewidth=0.8,
                                capsize=2)
                first = False
                points += len(both)
        title = FLATNESS[(probe, metric)]
        title = title if split in ("train", "avg") else f"{title} ({split})"
        ax.set_title(title + (f"\nbars: {', '.join(sorted(kinds))}" if kinds else ""), fontsize=9)
        ax.set_xlabel(f"activation sparsity ({x_split}, layer avg)")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    if not points:
        raise Skip("the runs with hessian/sharpness rows have no activation_sparsity rows")
    figure_legend(fig, axes)  # one legend for every panel
    fig.suptitle("flatness and sharpness against activation sparsity (one point per run and step)")
    return save(fig, out_dir, "flatness_vs_sparsity")
