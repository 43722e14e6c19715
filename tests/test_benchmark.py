"""The throughput benchmark: runs both loops through the real wiring, counts FLOPs exactly, notes
missing presets. (Speed itself is never asserted: the benchmark prints it.)"""
import json
import sys

import pytest

from .conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import throughput  # noqa: E402


def test_benchmark_runs_both_loops_and_counts_the_mlp_flops(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = throughput.main(["--budget-s", "0.4", "--rounds", "1", "--presets", "none,nonexistent,default",
                            "--json", str(out), "model.width=16", "model.depth=2", "model.value=true",
                            "model.d_ff=24", "trainer.batch_size=8", "trainer.log_every=4"])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["skipped_presets"] == ["nonexistent"] and list(report["presets"]) == ["none", "default"]
    printed = capsys.readouterr().out
    assert "'nonexistent' does not exist" in printed and "trainer/bare ratio per preset" in printed
    b, d, f, inp, classes = 8, 16, 24, 64, 10  # digits: 8x8 inputs, 10 classes
    # every linear costs 2*b*in*out forward and as much for its weight gradient and its input
    # gradient, except the input projection, whose input (the images) needs no gradient
    per_block = 6 * b * d * f * 2
    expected = 4 * b * inp * d + 2 * per_block + 6 * b * d * classes
    for res in report["presets"].values():
        assert res["flops_per_step"] == expected
        assert res["bare"]["steps"] >= 4 and res["trainer"]["steps"] >= 4
        assert res["samples_per_batch"] == 8 and res["tokens_per_batch"] is None
        assert res["bare"]["samples_per_s"] == pytest.approx(8 * res["bare"]["steps_per_s"])
    assert report["peak_flops"] is None  # no CPU peak without --peak-tflops


def test_peak_table_override_and_precision():
    import torch

    assert throughput.peak_flops(torch.device("cpu"), "fp32", 2.0)[0] == 2e12
    assert throughput.PEAK_TFLOPS["H100"]["bf16"] > throughput.PEAK_TFLOPS["H100"]["tf32"]
