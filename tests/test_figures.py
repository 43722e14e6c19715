"""Figure functions on tiny synthetic tables and arrays with the contract's metric names: each writes
non-empty PNG and PDF files, and draws what the numbers say (lines, panels, scales checked)."""
import itertools

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure

from sparsity_exp.figures import FIGURES, KINDS, make_figures
from sparsity_exp.plots.common import Skip
from sparsity_exp.plots.flatness import augmented_flatness, flatness_vs_sparsity
from sparsity_exp.plots.gradients import gradient_density, gradient_density_histograms, read_histograms
from sparsity_exp.plots.rmt import mp_anisotropy, mp_bound
from sparsity_exp.plots.sparsity import flat_region, sparsity_vs_step
from sparsity_exp.plots.spectrum import majority_interval, spectrum_histograms, spectrum_ratio
from sparsity_exp.record import Recorder


def table(rows, root):
    """Rows (dicts with run, step, split, probe, metric, layer, value and config keys) -> collected table."""
    t = pd.DataFrame(rows)
    t["layer"] = t["layer"].astype(str)
    t["epoch"] = t["step"] / 100
    t["status"] = "completed"
    if "source" not in t:
        t["source"] = "metrics"
    t["source"] = t["source"].fillna("metrics")
    t["run_dir"] = [str(root / r) for r in t.run]
    return t


@pytest.fixture
def drawn(monkeypatch):
    """Every Figure saved during the test, once each, in order."""
    figures = []
    original = Figure.savefig

    def savefig(self, *args, **kw):
        if not any(f is self for f in figures):
            figures.append(self)
        return original(self, *args, **kw)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return figures


def visible_axes(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def assert_images(paths):
    assert {p.suffix for p in paths} == {".png", ".pdf"}
    for p in paths:
        assert p.stat().st_size > 5_000, p


def curve(ax, label):
    (line,) = [l for l in ax.get_lines() if l.get_label() == label]
    return line.get_xdata(), line.get_ydata()


def sparsity_rows():
    rows = []
    for name, seed, split, step, layer in itertools.product(["relu", "jsrelu"], [0, 1], ["train", "test"], [0, 10, 20],
                                                             [0, 1]):
        v = 0.3 + 0.1 * layer + 0.02 * seed + step / 100 + (0.2 if name == "jsrelu" else 0)
        rows.append(dict(run=f"{name}_{seed}", step=step, split=split, probe="sparsity", metric="activation_sparsity",
                         layer=layer, value=v, **{"activation.name": name, "seed": seed}))
    avg = pd.DataFrame(rows).groupby(["run", "step", "split"], as_index=False).agg(
        {"value": "mean", "activation.name": "first", "seed": "first", "probe": "first", "metric": "first"})
    return rows + avg.assign(layer="avg").to_dict("records")


def test_sparsity_vs_step_one_curve_per_group_mean_over_seeds(tmp_path, drawn):
    paths = sparsity_vs_step(table(sparsity_rows(), tmp_path), tmp_path / "figs")
    assert sorted(p.name for p in paths) == ["sparsity_test.pdf", "sparsity_test.png", "sparsity_train.pdf",
                                             "sparsity_train.png"]
    assert_images(paths)
    train = drawn[0]
    axes = visible_axes(train)
    assert [ax.get_title() for ax in axes] == ["layer 0", "layer 1", "average over layers"]
    for ax in axes:  # one line per activation, a min-max band over the two seeds each
        assert sorted(l.get_label() for l in ax.get_lines()) == ["activation.name=jsrelu", "activation.name=relu"]
        assert sum(isinstance(c, PolyCollection) for c in ax.collections) == 2
    x, y = curve(axes[1], "activation.name=relu")
    assert list(x) == [0, 10, 20] and np.allclose(y, [0.3 + 0.1 + 0.01 + s / 100 for s in (0, 10, 20)])
    assert "training batches" in train.get_suptitle() and "test set" in drawn[1].get_suptitle()


def test_flat_region_one_column_per_shift(tmp_path, drawn):
    rows = []
    for sx, sy, metric, step, layer in itertools.product([1.6, -1.6], [1.6, -1.6], ["derivative_sparsity",
                                                         "rest_fraction", "derivative2"], [0, 10], [0, 1, "avg"]):
        rows.append(dict(run=f"{sx}_{sy}", step=step, split="train", probe="sparsity", metric=metric, layer=layer,
                         value=0.5 + step / 100, **{"activation.s_x": sx, "activation.s_y": sy, "optim.lr": 1e-4}))
    paths = flat_region(table(rows, tmp_path), tmp_path)
    assert_images(paths)
    axes = np.array(visible_axes(drawn[0])).reshape(3, 4)
    assert [ax.get_title() for ax in axes[0]] == ["activation.s_x=-1.6, activation.s_y=-1.6", "activation.s_x=-1.6, activation.s_y=1.6",
                                                  "activation.s_x=1.6, activation.s_y=-1.6",
                                                  "activation.s_x=1.6, activation.s_y=1.6"]
    assert [axes[r][0].get_ylabel() for r in range(3)] == ["fraction in flat region", "fraction of outputs = s_y",
                                                          "mean σ'(h)²"]
    assert sorted(l.get_label() for l in axes[0][0].get_lines()) == ["average", "layer 0", "layer 1"]


def brute_force_interval(eigs, mass=0.8, bins=100):
    logs = np.log10(eigs[eigs > 0.1])
    counts, edges = np.histogram(logs, bins=bins, range=(-1, logs.max()))
    best = None
    for i in range(bins):
        for j in range(i + 1, bins + 1):
            if counts[i:j].sum() >= mass * len(logs) and (best is None or j - i < best[1] - best[0]):
                best = (i, j)
    return edges[best[0]], edges[best[1]]


def test_majority_interval_is_the_narrowest_80_percent(tmp_path):
    rng = np.random.default_rng(0)
    for _ in range(5):
        eigs = np.concatenate([np.zeros(50), 10 ** rng.normal(1.0, 0.7, size=300)])
        assert majority_interval(eigs) == pytest.approx(brute_force_interval(eigs))
    # hand-made: 80 eigenvalues at 10, 20 at 1000: one bin holds the 80%
    lo, hi = majority_interval(np.array([10.0] * 80 + [1000.0] * 20 + [0.0] * 50))
    assert lo <= 1 <= hi and hi - lo == pytest.approx(4 / 100)
    assert majority_interval(np.zeros(10)) is None


def test_spectrum_histograms_from_saved_arrays(tmp_path, drawn):
    rng = np.random.default_rng(1)
    run = tmp_path / "vanilla"
    run.mkdir()
    with Recorder(run) as rec:
        last = None
        for step in (0, 100, 200):
            last = {f"layer_{i}": np.concatenate([np.zeros(40), 10 ** rng.normal(1 + i, 0.5, 60)]) for i in range(2)}
            rec.save_arrays("spectrum", step, **last)
    rows = [dict(run="vanilla", step=s, split="train", probe="spectrum", metric="ratio80", layer="avg", value=3.0)
            for s in (0, 100, 200)]
    paths = spectrum_histograms(table(rows, tmp_path), tmp_path / "figs")
    assert [p.name for p in paths] == ["spectrum_hist_vanilla.png", "spectrum_hist_vanilla.pdf"]
    assert_images(paths)
    axes = visible_axes(drawn[0])
    assert [ax.get_title() for ax in axes] == ["layer 0", "layer 1"]
    for ax, key in zip(axes, ["layer_0", "layer_1"]):
        assert len(ax.patches) == 3  # one step-histogram per saved step
        red = [l.get_xdata()[0] for l in ax.get_lines() if l.get_color() == "red"]
        assert red == pytest.approx(list(majority_interval(last[key])))


def test_spectrum_ratio_capped_at_100(tmp_path, drawn):
    rows = [dict(run="r", step=s, split="train", probe="spectrum", metric=m, layer=l, value=v)
            for s in (0, 10) for l in (0, "avg") for m, v in (("ratio80", 500.0 if s else 5.0), ("near_zero_rate", 0.8))]
    assert_images(spectrum_ratio(table(rows, tmp_path), tmp_path))
    ratio_ax, zero_ax = visible_axes(drawn[0])
    assert ratio_ax.get_ylim()[1] == 100 and "80%" in ratio_ax.get_ylabel()
    assert "near-zero" in zero_ax.get_ylabel()


def test_augmented_flatness_ratio_and_sources(tmp_path, drawn):
    rows = []
    rng = np.random.default_rng(2)
    for source, step in itertools.product(["metrics", "posthoc"], [0, 50, 100]):
        per = {m: rng.uniform(1, 10, 2) for m in ("as_key", "coef_l0", "as_value", "coef_l2")}
        for m, vals in per.items():
            for layer, v in [(0, vals[0]), (1, vals[1]), ("avg", vals.mean())]:
                rows.append(dict(run="r", step=step, split="train", probe="augmented_flatness", metric=m, layer=layer,
                                 value=v, source=source))
    t = table(rows, tmp_path)
    assert_images(augmented_flatness(t, tmp_path))
    axes = visible_axes(drawn[0])
    assert [ax.get_title() for ax in axes] == ["AS_K", "L0 coefficient", "AS_V", "L2 coefficient",
                                               "AS_K / L0 coefficient (= ‖a‖₀ for ReLU)"]
    assert all(ax.get_yscale() == "log" for ax in axes)
    labels = sorted(l.get_label() for l in axes[-1].get_lines())
    assert labels == ["source=metrics", "source=posthoc"]
    # the ratio panel: mean over layers of AS_K / coef_L0 (not the ratio of the layer averages)
    online = t[(t.source == "metrics") & (t.layer != "avg")]
    k = online[online.metric == "as_key"].sort_values(["step", "layer"]).value.to_numpy().reshape(3, 2)
    c = online[online.metric == "coef_l0"].sort_values(["step", "layer"]).value.to_numpy().reshape(3, 2)
    x, y = curve(axes[-1], "source=metrics")
    assert list(x) == [0, 50, 100] and np.allclose(y, (k / c).mean(axis=1))


def test_augmented_flatness_axes_say_the_scale_and_active_set(tmp_path, drawn):
    """The y axis names the scale and the title the active set, from the settings file the probe
    writes beside its rows, else (online rows of older runs) from the run's config.yaml."""
    import json

    rows = [dict(run=run, step=step, split="train", probe="augmented_flatness", metric=m, layer=layer, value=1.0 + step,
                 source="posthoc" if run == "a" else "metrics")
            for run in ("a", "b") for step in (0, 50) for m in ("as_key", "coef_l0") for layer in (0, "avg")]
    (tmp_path / "a" / "arrays").mkdir(parents=True)
    (tmp_path / "a" / "arrays" / "posthoc_augmented_flatness_settings.json").write_text(
        json.dumps({"scale": "authors", "active_set": "value_input"}))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.yaml").write_text("probes:\n  augmented_flatness:\n    every: 10\n    per_sample: true\n")
    t = table(rows, tmp_path)
    augmented_flatness(t[t.run == "a"], tmp_path)
    axes = visible_axes(drawn[-1])
    assert axes[0].get_ylabel() == "value (layer average)\nauthors' scale (batch mean)"
    assert axes[-1].get_title() == "AS_K / L0 coefficient (= ‖v‖₀ for ReLU)"
    assert drawn[-1]._suptitle.get_text().endswith("active entries: V's input > 0 (after dropout)")
    augmented_flatness(t[t.run == "b"], tmp_path)  # an older run: per_sample: true in its config
    assert visible_axes(drawn[-1])[0].get_ylabel().endswith("per-sample scale (×B²)")
    augmented_flatness(t, tmp_path)
    assert visible_axes(drawn[-1])[0].get_ylabel().endswith("mixed: authors' scale (batch mean) / per-sample scale (×B²)")


def test_gradient_density_axis_says_the_ratio_mode(tmp_path, drawn):
    import json

    rows = [dict(run="r", step=s, split="train", probe="gradient_density", metric="density_ratio", layer=l,
                 value=1.0) for s in (0, 100) for l in (0, "avg")]
    (tmp_path / "r" / "arrays").mkdir(parents=True)
    (tmp_path / "r" / "arrays" / "gradient_density_settings.json").write_text(json.dumps({"ratio_mode": "binned"}))
    gradient_density(table(rows, tmp_path), tmp_path)
    (ax,) = visible_axes(drawn[-1])
    assert ax.get_ylabel() == "E[g² | a>0] / E[g²]\n(binned in range (authors'))"


def write_density_arrays(run, steps=(0, 100)):
    edges = np.linspace(-10, 5, 1001)
    rng = np.random.default_rng(3)
    with Recorder(run) as rec:
        for step in steps:
            arrays = {"edges": edges}
            for i in range(2):
                all_ = np.histogram(rng.normal(-3, 1, 5000), bins=edges)[0]
                arrays[f"layer_{i}_all"], arrays[f"layer_{i}_active"] = all_, all_ // 2
            rec.save_arrays("gradient_density", step, **arrays)


def test_gradient_density_curve_and_histograms(tmp_path, drawn):
    run = tmp_path / "r"
    run.mkdir()
    write_density_arrays(run)
    rows = [dict(run="r", step=s, split="train", probe="gradient_density", metric="density_ratio", layer=l,
                 value=1.0 + s / 100) for s in (0, 100) for l in (0, 1, "avg")]
    rows += [dict(run="r", step=100, split="train", probe="gradient_density", metric=m, layer=0, value=v)
             for m, v in (("below_range", 0.125), ("above_range", 0.0))]
    t = table(rows, tmp_path)
    assert_images(gradient_density(t, tmp_path))
    (ax,) = visible_axes(drawn[0])
    assert ax.get_yscale() == "log" and "E[g² | a>0]" in ax.get_ylabel()
    assert sorted(l.get_label() for l in ax.get_lines()) == ["average", "layer 0", "layer 1"]
    paths = gradient_density_histograms(t, tmp_path)
    assert [p.name for p in paths] == ["gradient_density_hist_r.png", "gradient_density_hist_r.pdf"]
    axes = visible_axes(drawn[1])
    assert len(axes) == 2 and axes[0].get_xlabel() == "log10 |g|"
    assert len(axes[0].patches) == 4  # (all, active) x two steps
    # the mass outside the range at the last drawn step, where the probe logged it
    assert axes[0].get_title() == "layer 0 (12.5% below, 0.0% above range)" and axes[1].get_title() == "layer 1"


def test_read_histograms_accepts_the_layouts(tmp_path):
    np.savez(tmp_path / "a.npz", layer_0=np.array([[4, 2, 0], [2, 1, 0]]), range=np.array([-3, 0]))
    np.savez(tmp_path / "b.npz", layer_3_all=np.array([1, 2]), layer_3_edges=np.array([0.0, 1, 2]))
    a = read_histograms(np.load(tmp_path / "a.npz"))
    assert a["0"]["all"].tolist() == [4, 2, 0] and a["0"]["active"].tolist() == [2, 1, 0]
    assert a["0"]["edges"].tolist() == [-3, -2, -1, 0]
    b = read_histograms(np.load(tmp_path / "b.npz"))
    assert b["3"]["active"] is None and b["3"]["edges"].tolist() == [0, 1, 2]


def rmt_rows():
    rows = []
    for width, wd, step, layer in itertools.product([16, 64, 256], [0.0, 0.1], [0, 20], [0, 1]):
        for metric in ("rel_anisotropy_input", "rel_anisotropy_grad", "bound_re", "bound_im"):
            value = (1 / width + wd) * (10 if step == 0 else 1) * (1 + layer)
            rows.append(dict(run=f"p{width}_wd{wd}", step=step, split="train", probe="rmt", metric=metric, layer=layer,
                             value=value, **{"model.width": width, "optim.weight_decay": wd}))
            if layer == 1:  # the probe's layer average, which mp.py does not plot
                rows.append({**rows[-1], "layer": "avg", "value": value * 0.75})
    return rows


def test_mp_anisotropy_mean_over_steps_and_layers(tmp_path, drawn):
    assert_images(mp_anisotropy(table(rmt_rows(), tmp_path), tmp_path))
    ax_in, ax_grad = visible_axes(drawn[0])
    assert "model.width" in ax_in.get_xlabel()
    x, y = curve(ax_in, "optim.weight_decay=0.1")
    # mp.py: mean over the steps (x10 at step 0, x1 at 20) and the layers (x1, x2): 5.5 x 1.5
    assert list(x) == [16, 64, 256] and np.allclose(y, [(1 / w + 0.1) * 5.5 * 1.5 for w in (16, 64, 256)])
    one_width = table([r for r in rmt_rows() if r["model.width"] == 16], tmp_path)
    with pytest.raises(Skip, match="several widths"):
        mp_anisotropy(one_width, tmp_path)


def test_mp_bound_of_layer_one_per_width_and_decay(tmp_path, drawn):
    assert_images(mp_bound(table(rmt_rows(), tmp_path), tmp_path))
    re_ax, im_ax = visible_axes(drawn[0])
    assert re_ax.get_yscale() == "log" and len(re_ax.get_lines()) == 6
    assert "model.width=16, optim.weight_decay=0" in [l.get_label() for l in re_ax.get_lines()]
    x, y = curve(re_ax, "model.width=16, optim.weight_decay=0")
    assert list(x) == [0, 20] and np.allclose(y, [(1 / 16) * 10 * 2, (1 / 16) * 2])  # layer 1, not the average
    with pytest.raises(Skip, match="layer 3"):
        mp_bound(table(rmt_rows(), tmp_path), tmp_path, layer=3)


def test_flatness_vs_sparsity_pairs_nearest_steps(tmp_path, drawn):
    rows = [dict(run=r, step=s, split="train", probe="sparsity", metric="activation_sparsity", layer="avg",
                 value=s / 100 + (0.05 if r == "b" else 0), **{"optim.lr": lr})
            for r, lr in (("a", 0.1), ("b", 0.01)) for s in range(0, 101, 20)]
    rows += [dict(run=r, step=s, split="train", probe=p, metric=m, layer="avg", value=s + 1.0, **{"optim.lr": lr})
             for r, lr in (("a", 0.1), ("b", 0.01)) for s in (0, 45, 100)
             for p, m in (("hessian", "trace"), ("sharpness", "worst_param"))]
    assert_images(flatness_vs_sparsity(table(rows, tmp_path), tmp_path))
    trace_ax, sharp_ax = visible_axes(drawn[0])
    assert trace_ax.get_title() == "Hessian trace" and "activation sparsity" in trace_ax.get_xlabel()
    points = {tuple(np.round(off, 6)) for c in trace_ax.collections for off in c.get_offsets()}
    # run a (lr 0.1): hessian at step 45 pairs with the sparsity logged at step 40
    assert points == {(0.0, 1.0), (0.4, 46.0), (1.0, 101.0), (0.05, 1.0), (0.45, 46.0), (1.05, 101.0)}
    (legend,) = drawn[0].legends  # one figure legend for all panels, none inside a panel
    assert sharp_ax.get_legend() is None
    assert sorted(t.get_text() for t in legend.get_texts()) == ["optim.lr=0.01", "optim.lr=0.1"]


def test_missing_data_is_skipped_with_a_reason(tmp_path):
    made, skipped = make_figures(table(sparsity_rows(), tmp_path), tmp_path / "figs")
    assert set(made) == {"sparsity"} and set(made) | set(skipped) == set(FIGURES)
    assert "derivative_sparsity" in skipped["flat_region"]
    assert "spectrum probe" in skipped["spectrum_histograms"] and "rmt probe" in skipped["mp_bound"]
    assert "hessian" in skipped["flatness_vs_sparsity"]
    assert sorted(n for names in KINDS.values() for n in names) == sorted(FIGURES)


def test_hue_picks_the_grouping_key(tmp_path, drawn):
    made, skipped = make_figures(table(sparsity_rows(), tmp_path), tmp_path, ["sparsity"], hue=["seed"])
    ax = visible_axes(drawn[0])[0]
    assert sorted(l.get_label() for l in ax.get_lines()) == ["seed=0", "seed=1"]  # relu and jsrelu averaged
    made, skipped = make_figures(table(sparsity_rows(), tmp_path), tmp_path, ["sparsity"], hue=["nope"])
    assert "nope" in skipped["sparsity"] and "activation.name" in skipped["sparsity"]


def test_flatness_vs_sparsity_draws_standard_errors(tmp_path, drawn):
    """A metric with `<metric>_se` and `<metric>_df` rows gets 95% t-interval bars (t_{df}(0.975) x SE,
    issue 27), one with `_se` alone +-1 SE, and the title says which; one without gets none."""
    from matplotlib.collections import LineCollection
    from scipy import stats

    rows = [dict(run="a", step=s, split="train", probe="sparsity", metric="activation_sparsity", layer="avg",
                 value=s / 100) for s in (0, 50, 100)]
    rows += [dict(run="a", step=s, split="train", probe="hessian", metric=m, layer="avg", value=v)
             for s in (0, 100) for m, v in (("trace", s + 10.0), ("trace_se", 1.0 + s / 100), ("trace_df", 3.0),
                                            ("lambda_max", 3.0))]
    assert_images(flatness_vs_sparsity(table(rows, tmp_path), tmp_path))
    axes = {ax.get_title().split("\n")[0]: ax for ax in visible_axes(drawn[0])}
    assert set(axes) == {"Hessian trace", "largest Hessian eigenvalue"}
    assert "95% t interval" in axes["Hessian trace"].get_title()
    q = stats.t.ppf(0.975, 3)  # 3.18, not 1.96
    bars = [c for c in axes["Hessian trace"].collections if isinstance(c, LineCollection)]
    spans = sorted((float(seg[0][0]), float(seg[0][1]), float(seg[1][1])) for c in bars for seg in c.get_segments())
    assert np.allclose(spans, [(0.0, 10 - q, 10 + q), (1.0, 110 - 2 * q, 110 + 2 * q)])
    assert not [c for c in axes["largest Hessian eigenvalue"].collections if isinstance(c, LineCollection)]
