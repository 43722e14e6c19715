"""A probe that raises in its rows or its measurement does not end the run: the run completes, the
failure is said (a warning on stderr and in run.log, a 'probe_failed' row at that step, a count in summary.json),
and every other probe's rows, and training itself, are those of a run where the probe did not fail."""
from __future__ import annotations

import json

import pandas as pd

from sparsity_exp.probes.sparsity import SparsityProbe
from sparsity_exp.probes.spectrum import SpectrumProbe


def _table(run_dir):
    return pd.read_csv(run_dir / "metrics.csv")


def _only_run(root):
    (path,) = [p.parent for p in root.rglob("summary.json")]
    return path


def test_a_probe_that_raises_writes_a_row_that_says_so_and_the_run_completes(cli, tiny, tmp_path, monkeypatch):
    args = [*tiny, "probes=default", "++probes.spectrum.measure_every=10"]
    ok = cli("run", *args, "results_dir=ok", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr

    calls = {"rows": 0, "measure": 0}
    rows, measure = SparsityProbe.rows, SpectrumProbe.measure

    def failing_rows(self, split):
        calls["rows"] += 1
        out = rows(self, split)  # its accumulators reset, as a failure after reading them leaves them
        if split == "train" and self.ctx.step == 20:
            raise ZeroDivisionError("nothing to measure")
        return out

    def failing_measure(self, ctx):
        calls["measure"] += 1
        if ctx.step == 10:
            raise RuntimeError("an eigen-solver gave up")
        return measure(self, ctx)

    monkeypatch.setattr(SparsityProbe, "rows", failing_rows)
    monkeypatch.setattr(SpectrumProbe, "measure", failing_measure)
    bad = cli("run", *args, "results_dir=bad", cwd=tmp_path)
    assert bad.returncode == 0, bad.stderr
    assert calls["rows"] and calls["measure"]
    run_dir = _only_run(tmp_path / "bad")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["probe_failures"] == {"sparsity/train": 1, "spectrum/train": 1}
    log = (run_dir / "run.log").read_text()
    assert "warning: probe 'sparsity' failed at step 20 (train): ZeroDivisionError: nothing to measure" in log
    assert "probe 'spectrum' failed at step 10 (train): RuntimeError: an eigen-solver gave up" in log

    good, got = _table(_only_run(tmp_path / "ok")), _table(run_dir)
    failed = got[got.metric == "probe_failed"]
    assert sorted(zip(failed.step, failed.probe)) == [(10, "spectrum"), (20, "sparsity")]
    assert failed.value.isna().all()
    # everything else is the failure-free run's rows, except the two failed probes' rows at their step
    key = ["step", "probe", "split", "metric", "layer"]
    lost = (((good.probe == "sparsity") & (good.step == 20) & (good.split == "train")) |
            ((good.probe == "spectrum") & (good.step == 10)))
    rest = got[got.metric != "probe_failed"].sort_values(key).reset_index(drop=True)
    expected = good[~lost].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(rest[key + ["value"]], expected[key + ["value"]])
    assert "probe_failures" not in json.loads((_only_run(tmp_path / "ok") / "summary.json").read_text())


def test_a_full_disk_inside_a_probe_is_the_runs_error_not_the_probes(cli, tiny, tmp_path, monkeypatch):
    """A write the file system refuses while a probe saves its arrays ends the run as a storage error
    (one `error:` line naming the file, summary 'failed'), not as a 'probe_failed' row."""
    import errno

    def full(self, ctx):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "spectra.npz"))

    monkeypatch.setattr(SpectrumProbe, "measure", full)
    out = cli("run", *tiny, "probes=default", "++probes.spectrum.measure_every=10", cwd=tmp_path)
    assert out.returncode == 1, out.stderr[-2000:]
    assert "error: cannot write" in out.stderr and "No space left on device" in out.stderr
    assert "probe_failed" not in out.stderr
    summary = json.loads((_only_run(tmp_path / "results") / "summary.json").read_text())
    assert summary["status"] == "failed"
