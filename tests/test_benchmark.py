"""The throughput benchmark: runs both loops through the real wiring, counts FLOPs exactly, notes
missing presets. (Speed itself is never asserted: the benchmark prints it.)"""
import json
import sys

import pytest

from .conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import rounds  # noqa: E402
import throughput  # noqa: E402


def test_benchmark_runs_both_loops_and_counts_the_mlp_flops(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = throughput.main(["--rounds", "2", "--block-steps", "4", "--presets", "none,nonexistent,default",
                            "--json", str(out), "model.width=16", "model.depth=2", "model.value=true",
                            "model.d_ff=24", "trainer.batch_size=8", "trainer.log_every=4"])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["skipped_presets"] == ["nonexistent"] and list(report["presets"]) == ["none", "default"]
    printed = capsys.readouterr().out
    assert "'nonexistent' does not exist" in printed and "trainer/bare throughput ratio" in printed
    # alternating rounds: every loop timed once per round on both clocks, blocks of whole log periods
    assert report["rounds"] == 2 and report["block_steps"] == 4
    for clock in ("wall", "cpu"):
        assert set(report["timings"][clock]) == {"bare", "none", "default"}
        assert all(len(v) == 2 and min(v) > 0 for v in report["timings"][clock].values())
    ratio = report["presets"]["default"]["vs_bare_cpu"]
    per_round = [b / t for b, t in zip(report["timings"]["cpu"]["bare"], report["timings"]["cpu"]["default"])]
    assert ratio["ratios"] == pytest.approx(per_round) and ratio["low"] <= ratio["median"] <= ratio["high"]
    assert "cost_vs_first_wall" in report["presets"]["default"] and len(report["load"]) >= 4
    b, d, f, inp, classes = 8, 16, 24, 64, 10  # digits: 8x8 inputs, 10 classes
    # every linear costs 2*b*in*out forward and as much for its weight gradient and its input
    # gradient, except the input projection, whose input (the images) needs no gradient
    per_block = 6 * b * d * f * 2
    expected = 4 * b * inp * d + 2 * per_block + 6 * b * d * classes
    for res in report["presets"].values():
        assert res["flops_per_step"] == expected
        assert res["bare"]["steps"] == 8 and res["trainer"]["steps"] == 8
        assert res["samples_per_batch"] == 8 and res["tokens_per_batch"] is None
        assert res["bare"]["samples_per_s"] == pytest.approx(8 * res["bare"]["steps_per_s"])
    assert report["peak_flops"] is None  # no CPU peak without --peak-tflops


def test_peak_table_override_and_precision():
    import torch

    assert throughput.peak_flops(torch.device("cpu"), "fp32", 2.0)[0] == 2e12
    assert throughput.PEAK_TFLOPS["H100"]["bf16"] > throughput.PEAK_TFLOPS["H100"]["tf32"]


def test_median_interval_is_the_binomial_order_statistic_one():
    """The interval's ranks against the exact Binomial(n, 1/2) coverage counted by hand, and the
    median of a known sample."""
    from math import comb

    def coverage(n, j):  # P(X_(j) <= median <= X_(n+1-j)) = 1 - 2 P(B <= j - 1)
        return 1 - 2 * sum(comb(n, k) for k in range(j)) / 2**n

    for n in (5, 6, 9, 15, 30):
        xs = list(range(100, 100 + n))[::-1]  # unsorted on purpose
        med, lo, hi, cover = rounds.median_ci(xs)
        best = max([j for j in range(1, n // 2 + 1) if coverage(n, j) >= 0.95], default=1)
        assert (lo, hi) == (100 + best - 1, 100 + n - best) and cover == pytest.approx(coverage(n, best))
        assert med == (100 + (n - 1) / 2)
    assert rounds.median_ci([3.0, 1.0, 2.0, 5.0, 4.0])[3] == pytest.approx(1 - 2 / 32)  # n=5: [min, max], 93.75%


def test_rounds_needed_follows_the_spread():
    """Rounds for a +-2% interval: (1.96 sqrt(pi/2) s / log 1.02)^2 with s = 1.4826 MAD of the log ratios;
    four times the spread needs sixteen times the rounds."""
    import math

    narrow = [math.exp(e) for e in (-0.01, 0.0, 0.01, -0.005, 0.005, 0.0, 0.02, -0.02)]
    wide = [r ** 4 for r in narrow]
    logs = sorted(math.log(r) for r in narrow)
    s = rounds.robust_spread(logs)
    mad = sorted(abs(v) for v in logs)
    assert s == pytest.approx(1.4826 * (mad[3] + mad[4]) / 2)
    n = rounds.rounds_for(narrow)
    assert n == math.ceil((1.959964 * math.sqrt(math.pi / 2) * s / math.log(1.02)) ** 2)
    assert rounds.rounds_for(wide) == pytest.approx(16 * n, rel=0.05)


def test_rounds_alternate_the_order():
    seen = []
    out = rounds.run_rounds({"a": lambda: seen.append("a"), "b": lambda: seen.append("b")}, 3)
    assert seen == ["a", "b", "b", "a", "a", "b"]
    assert all(len(v) == 3 for k in ("wall", "cpu") for v in out[k].values()) and len(out["load"]) == 3


def test_rmt_cost_counts_the_gram_work_against_the_steps_by_hand(capsys):
    """benchmarks/rmt_cost.py's work line: per row, the LN-MLP's training step is 3 x its linear maps'
    multiply-adds less the first layer's input gradient; the Gram products p (p + 1) / 2 for each site's
    input and gradient covariance. Counted by hand for width 16, depth 4 (64 inputs, 10 classes)."""
    import rmt_cost

    from sparsity_exp.activations import ReLU
    from sparsity_exp.models import find_sites
    from sparsity_exp.models.mlp import LNMLP

    model = LNMLP(in_features=64, num_classes=10, make_act=ReLU, width=16, depth=4)
    forward = 64 * 16 + 4 * 16 * 16 + 16 * 10
    assert rmt_cost.matmul_work(model, find_sites(model)) == (3 * forward - 64 * 16, 8 * 16 * 17 // 2)
    rmt_cost.main(["--rounds", "1", "--steps", "4", "--log-every", "2", "--width", "16", "--device", "cpu", "--breakdown"])
    printed = capsys.readouterr().out
    for name in rmt_cost.CUT_DOWN:
        assert f"{name} / plain (cpu)" in printed
    assert f"training step {(3 * forward - 64 * 16) / 1e6:.3f} M MAC, Gram products {8 * 16 * 17 / 2 / 1e6:.3f} M MAC" in printed
    assert "folds (Gram products)" in printed and "rmt / plain (cpu )" in printed
