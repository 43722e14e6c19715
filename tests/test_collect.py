"""collect: synthetic run folders in every state -> one table; nothing dropped silently."""
import json
import math

import pandas as pd
import pytest
import yaml

from sparsity_exp.collect import collect, find_runs, load_table, read_rows, report, write_collection
from sparsity_exp.errors import UserError
from sparsity_exp.record import Recorder


def make_run(folder, *, lr=0.1, width=32, status="completed", steps=(0, 10, 20), error=None, summary=True,
             metrics=True, posthoc=False, milestones=(1, 2)):
    """A run folder as `sparsity-exp run` writes it, with the real Recorder."""
    folder.mkdir(parents=True)
    config = {"model": {"name": "mlp", "width": width, "depth": 2}, "optim": {"name": "sgd", "lr": lr,
              "schedule": {"milestones": list(milestones)}}, "seed": 0, "results_dir": "results"}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / ".hydra").mkdir()  # Hydra's record holds a config.yaml too: must not count as a run
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    if summary:
        (folder / "summary.json").write_text(json.dumps({"status": status, **({"error": error} if error else {})}))
    if error:
        (folder / "error.txt").write_text(f"Traceback (most recent call last):\n  ...\n{error}\n")
    if metrics:
        with Recorder(folder) as rec:
            for s in steps:
                rec.add(s, s / 100, "sparsity", [("train", "activation_sparsity", 0, 0.5 + s / 100),
                                                 ("train", "activation_sparsity", "avg", 0.5 + s / 100)])
                rec.add(s, s / 100, "train", [("train", "loss", "avg", 2.0 - s / 100)])
    if posthoc:
        with open(folder / "posthoc_metrics.csv", "w") as f:
            f.write("step,epoch,split,probe,metric,layer,value\n")
            for s in steps:
                f.write(f"{s},{s / 100},train,augmented_flatness,as_key,avg,{1.0 + s}\n")
    return folder


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "results"
    make_run(root / "done", posthoc=True)
    make_run(root / "broken", lr=0.5, status="failed", error="RuntimeError: boom", steps=(0, 10))
    make_run(root / "going", width=64, status="running", steps=(0,))
    make_run(root / "stopped", status="interrupted", steps=(0, 10))
    crashed = make_run(root / "crashed", lr=0.01, status="running", milestones=(3,))
    with open(crashed / "metrics.csv", "a") as f:  # killed while writing a row
        f.write("30,0.3,train,sparsity,activation_spa")
    make_run(root / "multirun" / "20260101-000000" / "0_nosummary", summary=False, steps=(0, 10))
    make_run(root / "early_fail", status="failed", error="ValueError: bad data", metrics=False)
    (root / "multirun" / "20260101-000000" / "multirun.yaml").write_text("hydra: {}\n")
    return root


def test_every_run_is_found_with_its_status(results, capsys):
    col = collect([results])
    status = dict(zip(col.runs.run, col.runs.status))
    assert status == {"broken": "failed", "crashed": "running", "done": "completed", "early_fail": "failed",
                      "going": "running", "multirun/20260101-000000/0_nosummary": "partial",
                      "stopped": "interrupted"}
    report(col)
    out = capsys.readouterr().out
    assert "7 runs (1 completed, 2 failed, 2 running, 1 interrupted, 1 partial)" in out
    assert "early_fail (0 rows): ValueError: bad data" in out  # a run without rows is still reported
    errors = dict(zip(col.runs.run, col.runs.error))
    assert errors["broken"] == "RuntimeError: boom"


def test_varying_keys_are_joined_and_constant_ones_left_out(results):
    col = collect([results])
    assert col.keys == ["model.width", "optim.lr", "optim.schedule.milestones"]
    t = col.table
    assert "seed" not in t.columns and "model.depth" not in t.columns
    by_run = t.groupby("run")[["optim.lr", "model.width", "optim.schedule.milestones"]].first()
    assert by_run.loc["broken", "optim.lr"] == 0.5 and by_run.loc["going", "model.width"] == 64
    assert by_run.loc["crashed", "optim.schedule.milestones"] == "[3]"
    assert t["optim.lr"].dtype == "float64" and t["model.width"].dtype == "int64"


def test_rows_sources_and_the_crashed_line(results):
    col = collect([results])
    t = col.table
    rows = t.groupby("run").size()
    # 3 rows per step: two sparsity rows and the loss
    assert rows["done"] == 3 * 3 + 3 and rows["broken"] == 6 and rows["going"] == 3
    assert rows["crashed"] == 9  # the half-written row is left out, the complete ones kept
    assert ("crashed", "left out 1 incomplete or unparsable line(s) of metrics.csv") in col.notes
    post = t[t.source == "posthoc"]
    assert set(post.run) == {"done"} and sorted(post.value) == [1.0, 11.0, 21.0]
    assert set(t.source) == {"metrics", "posthoc"}
    assert t.layer.tolist().count("avg") > 0 and set(t.layer) == {"0", "avg"}
    assert t[t.run == "done"].run_dir.iloc[0] == str((results / "done").resolve())


def test_hydra_record_and_nested_runs(results):
    runs = find_runs([results])
    assert not any(".hydra" in p.parts for p in runs)
    assert len(runs) == 7
    # a run folder given directly, and the same one twice, counts once
    assert find_runs([results / "done", results / "done"]) == [(results / "done").resolve()]


def test_bad_paths_say_what_to_do(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        find_runs([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no run folders"):
        find_runs([tmp_path / "empty"])


def test_read_rows_survives_garbage(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_bytes(b"step,epoch,split,probe,metric,layer,value\r\n"
                     b"0,0.0,train,sparsity,activation_sparsity,0,0.25\r\n"
                     b"1,0.1,train,sparsity,activation_sparsity,0,not-a-number\r\n"  # garbled
                     b"2,0.2,train,hessian,trace,avg,nan\r\n"  # a probe may report nan: kept
                     b"3,0.3,train,sparsity\r\n"  # short row
                     b"4,0.4,train,sparsity,activation_sparsity,0,0.5,extra\r\n"  # too many fields
                     b"5,0.5,train,sparsity,activation_sparsity,0,0.75\r\n"
                     b"\x00\x00\x00")  # NUL padding left by a crash
    rows, dropped = read_rows(path)
    assert rows.step.tolist() == [0, 2, 5] and dropped == 3
    assert rows.value.iloc[0] == 0.25 and math.isnan(rows.value.iloc[1]) and rows.value.iloc[2] == 0.75
    path.write_bytes(b"step,epoch,split,probe,metric,layer,value\n0,0.0,tr")  # only a half row
    rows, dropped = read_rows(path)
    assert rows.empty and dropped == 1
    path.write_bytes(b"")
    assert read_rows(path)[0].empty


def test_unreadable_summary_is_partial_and_unreadable_metrics_noted(tmp_path):
    run = make_run(tmp_path / "r")
    (run / "summary.json").write_text('{"status": "compl')
    (run / "posthoc_metrics.csv").write_text("a,b\n1,2\n")
    col = collect([tmp_path])
    assert col.runs.status.tolist() == ["partial"]
    assert any("summary.json is unreadable" in n for _, n in col.notes)
    assert any("posthoc_metrics.csv is unreadable" in n for _, n in col.notes)
    assert len(col.table) == 9  # metrics.csv still read


def test_written_csv_and_parquet_read_back_equal(results, tmp_path):
    col = collect([results])
    written = write_collection(col, tmp_path / "out" / "table.csv")
    assert [p.name for p in written] == ["table.csv", "table.parquet", "table_runs.csv"]
    csv = load_table(tmp_path / "out" / "table.csv")
    pq = load_table(tmp_path / "out" / "table.parquet")
    assert len(csv) == len(pq) == len(col.table)
    pd.testing.assert_series_equal(csv.value, pq.value)
    assert csv.layer.tolist() == pq.layer.tolist() == col.table.layer.tolist()
    assert csv["optim.lr"].tolist() == col.table["optim.lr"].tolist()
    runs = pd.read_csv(tmp_path / "out" / "table_runs.csv")
    assert len(runs) == 7 and dict(zip(runs.run, runs.rows))["early_fail"] == 0


def test_parquet_is_optional(results, tmp_path, monkeypatch):
    import sparsity_exp.collect as collect_module

    monkeypatch.setattr(collect_module, "have_parquet", lambda: False)
    col = collect([results])
    written = write_collection(col, tmp_path / "t.csv")
    assert [p.name for p in written] == ["t.csv", "t_runs.csv"]
    back = load_table(tmp_path / "t.csv")  # pandas' own CSV writer reads back the same
    assert back.value.tolist() == col.table.value.tolist() and back.layer.tolist() == col.table.layer.tolist()


def test_load_table_refuses_other_files(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="not a table written by `sparsity-exp collect`"):
        load_table(tmp_path / "x.csv")
