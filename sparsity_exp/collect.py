"""Many run folders -> one tidy table.

A run folder is a folder holding ``config.yaml`` or ``summary.json`` (a single run, or one job of a
Hydra multirun). Its rows (``metrics.csv``, and ``posthoc_metrics.csv`` when present, told apart by
the column ``source``) are joined with the config keys whose value differs between the runs
(the resolved ``config.yaml`` flattened to dotted keys), plus the run's id, folder and status.

Status comes from ``summary.json``: completed, failed, running, interrupted; a ``running`` one
whose process is gone is ``dead`` (or ``stale`` on another host after 30 min without a write;
``liveness.py``). A folder without a readable ``summary.json`` is ``partial``. No run is dropped silently: every one is counted on
stdout, and the companion table ``<out>_runs.csv`` lists every run, rows or not.

A crash mid-write can leave the last line of a metrics file incomplete; such a line (and any line
that does not parse) is left out and counted, never fatal.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from .errors import UserError
from .atomic import atomic_path
from .dotted import flatten, is_run_setting
from .record import COLUMNS, METRICS_FILE, POSTHOC_FILE
from .lifecycle.liveness import running_state

SOURCES = {"metrics": METRICS_FILE, "posthoc": POSTHOC_FILE}
STATUSES = ("completed", "failed", "running", "dead", "stale", "interrupted", "partial")
# Columns of the collected table that are not config keys; every other column is a varying config key.
RUN_COLUMNS = ("run", "status", "source")
BASE_COLUMNS = RUN_COLUMNS + COLUMNS + ("run_dir",)
# Folders inside a run folder that never hold runs (Hydra's record, arrays, checkpoints, event files).
_NOT_RUNS = {".hydra", "arrays", "checkpoints", "tensorboard", "__pycache__"}


@dataclass
class Run:
    path: Path
    id: str = ""
    status: str = "partial"
    error: str = ""
    config: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)  # what was odd: dropped lines, unreadable files
    frames: list = field(default_factory=list)  # one DataFrame per source that has rows


# ------------------------------------------------------------------------------------------ finding


def is_run_folder(path: Path) -> bool:
    return (path / "config.yaml").is_file() or (path / "summary.json").is_file()


def find_runs(paths) -> list[Path]:
    """Every run folder at or under ``paths`` (sorted, no duplicates); a run folder's own subfolders
    are not searched."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise UserError(f"{p} does not exist; give run folders or folders holding them (e.g. results/)")
        if p.is_file():
            raise UserError(f"{p} is a file; give run folders or folders holding them (e.g. results/)")
        for root, dirs, _files in os.walk(p):
            here = Path(root)
            if is_run_folder(here):
                found.append(here.resolve())
                dirs.clear()
                continue
            dirs[:] = sorted(d for d in dirs if d not in _NOT_RUNS and not d.startswith("."))
    unique = sorted(set(found))
    if not unique:
        raise UserError(f"no run folders (folders holding config.yaml or summary.json) under "
                        f"{', '.join(map(str, paths))}; run `sparsity-exp run` first or point at its results folder")
    return unique


def run_ids(folders: list[Path]) -> list[str]:
    """Short unique ids: each folder's path relative to the folders' common parent."""
    if len(folders) == 1:
        return [folders[0].name]
    common = Path(os.path.commonpath([str(f) for f in folders]))
    return [f.relative_to(common).as_posix() for f in folders]


# ------------------------------------------------------------------------------------------ reading


def read_rows(path: Path) -> tuple[pd.DataFrame, int]:
    """The rows of one metrics file and how many lines were left out (incomplete or unparsable).

    Robust to a crash mid-write: an unterminated last line, NUL padding, a short or garbled line."""
    data = Path(path).read_bytes().replace(b"\x00", b"")
    dropped = 0
    if data and not data.endswith(b"\n"):  # the last write did not finish its line
        cut = data.rfind(b"\n")
        data = data[: cut + 1] if cut >= 0 else b""
        dropped += 1
    lines = data.count(b"\n")
    if lines <= 1:  # empty, or the header only
        return _empty_rows(), dropped
    fast = _read_clean(data, lines)
    if fast is not None:
        return fast, dropped
    raw = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, on_bad_lines="skip",
                      engine="c")
    missing = [c for c in COLUMNS if c not in raw.columns]
    if missing:
        raise ValueError(f"{path.name} lacks the columns {missing} (found {list(raw.columns)})")
    dropped += (lines - 1) - len(raw)  # lines with too many fields
    raw = raw[list(COLUMNS)]
    step = pd.to_numeric(raw["step"], errors="coerce")
    epoch = pd.to_numeric(raw["epoch"], errors="coerce")
    value = pd.to_numeric(raw["value"], errors="coerce")
    text = raw["value"].astype(str).str.strip().str.lower()
    value_ok = value.notna() | text.isin(["nan", "-nan", "inf", "-inf"])  # a probe may report nan
    names_ok = (raw[["split", "probe", "metric", "layer"]].fillna("").astype(str) != "").all(axis=1)
    ok = step.notna() & (step == np.floor(step)) & value_ok & names_ok
    dropped += int((~ok).sum())
    rows = pd.DataFrame({
        "step": step[ok].astype("int64"),
        "epoch": epoch[ok].astype("float64"),
        "split": raw["split"][ok].astype(str),
        "probe": raw["probe"][ok].astype(str),
        "metric": raw["metric"][ok].astype(str),
        "layer": raw["layer"][ok].astype(str),
        "value": value[ok].astype("float64"),
    })
    return rows.reset_index(drop=True), dropped


def _read_clean(data: bytes, lines: int) -> pd.DataFrame | None:
    """The common case, parsed with types at once: every line complete and numeric where it should be.
    None when anything looks off (the careful path then finds and counts the bad lines)."""
    names = {c: str for c in ("split", "probe", "metric", "layer")}
    try:
        rows = pd.read_csv(io.BytesIO(data), dtype=names, keep_default_na=False, na_values={"value": ["nan"]},
                           engine="c")
    except (ValueError, pd.errors.ParserError):
        return None
    if (tuple(rows.columns) != COLUMNS or len(rows) != lines - 1 or rows.step.dtype.kind != "i"
            or rows.epoch.dtype.kind != "f" or rows.value.dtype.kind != "f" or rows.value.isna().any()
            or (rows[list(names)] == "").any().any()):
        return None
    return rows.astype({"step": "int64", "epoch": "float64", "value": "float64"})


def _empty_rows() -> pd.DataFrame:
    return pd.DataFrame({"step": pd.Series(dtype="int64"), "epoch": pd.Series(dtype="float64"),
                         **{c: pd.Series(dtype=str) for c in ("split", "probe", "metric", "layer")},
                         "value": pd.Series(dtype="float64")})


def _as_cell(value):
    """A config leaf as a table cell: lists (and empty mappings) become their JSON text so they compare and store."""
    return json.dumps(value, sort_keys=True, default=str) if isinstance(value, (list, tuple, dict)) else value


def read_run(folder: Path) -> Run:
    run = Run(path=folder)
    summary_path = folder / "summary.json"
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
            run.status = str(summary.get("status") or "partial")
            run.error = str(summary.get("error") or "")
            if run.status == "running":  # still alive, or killed without a chance to say so?
                run.status = running_state(folder, summary)
        except (ValueError, OSError, AttributeError):
            run.notes.append("summary.json is unreadable")
    if run.status == "failed" and not run.error and (folder / "error.txt").is_file():
        lines = [l for l in (folder / "error.txt").read_text(errors="replace").splitlines() if l.strip()]
        run.error = lines[-1].strip() if lines else ""
    config_path = folder / "config.yaml"
    if config_path.is_file():
        try:
            run.config = flatten(yaml.safe_load(config_path.read_text()) or {}, encode=_as_cell)
        except (yaml.YAMLError, OSError) as exc:
            run.notes.append(f"config.yaml is unreadable ({type(exc).__name__})")
    for source, name in SOURCES.items():
        path = folder / name
        if not path.is_file():
            continue
        try:
            rows, dropped = read_rows(path)
        except (ValueError, OSError, pd.errors.ParserError) as exc:
            run.notes.append(f"{name} is unreadable: {exc}")
            continue
        if dropped:
            run.notes.append(f"left out {dropped} incomplete or unparsable line(s) of {name}")
        if len(rows):
            rows.insert(0, "source", source)
            run.frames.append(rows)
    return run


# ------------------------------------------------------------------------------------------ joining


def varying_keys(configs: list[dict]) -> list[str]:
    """Dotted config keys whose value differs between the runs (a key missing in some runs varies).
    A run without a readable config (nothing to compare) does not make every key vary. Run settings
    (``dotted.RUN_SETTINGS``: trainer.resume, device, threads, progress, results_dir, ...) never vary:
    a resumed run or one on another device is the same experiment."""
    configs = [c for c in configs if c]
    keys = sorted(k for k in set().union(*configs) if not is_run_setting(k)) if configs else []
    out = []
    for key in keys:
        values = {json.dumps(c[key], sort_keys=True, default=str) if key in c else "<missing>" for c in configs}
        if len(values) > 1:
            out.append(key)
    return out


def _config_column(values: list) -> pd.Series:
    """One column of config values with one type: numbers stay numbers, anything mixed becomes text."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pd.Series(values, dtype="boolean")
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        if any(isinstance(v, float) for v in present):
            return pd.Series([np.nan if v is None else v for v in values], dtype="float64")
        # integers stay integers (model.depth 4, not 4.0); a run without the key gets <NA>
        return pd.Series(values, dtype="int64" if len(present) == len(values) else "Int64")
    return pd.Series([None if v is None else str(v) for v in values], dtype=object).astype("string")


@dataclass
class Collection:
    table: pd.DataFrame  # tidy rows: BASE_COLUMNS plus the varying config keys
    runs: pd.DataFrame  # one row per run folder, with or without rows
    keys: list  # the varying config keys (column names in both tables)
    notes: list  # (run id, note)
    left_out: list = field(default_factory=list)  # folders of runs that never started (see never_started)


def never_started(run: Run) -> bool:
    """A job refused at validation by an older version (status failed, no config.yaml, no rows, no
    checkpoint; now such a job leaves no folder). They are no runs; ``collect --all`` lists them anyway.
    A run that failed after its config was written stays in, with its error."""
    return (run.status == "failed" and not run.frames and not run.config
            and not (run.path / "config.yaml").exists() and not (run.path / "checkpoints").is_dir())


def collect(paths, include_unstarted: bool = False) -> Collection:
    folders = find_runs(paths)
    runs = [read_run(f) for f in folders]
    for run, rid in zip(runs, run_ids(folders)):
        run.id = rid
    left_out = [] if include_unstarted else [r.path for r in runs if never_started(r)]
    runs = [r for r in runs if r.path not in left_out]
    keys = varying_keys([r.config for r in runs])
    column_of = {k: (f"config.{k}" if k in BASE_COLUMNS or k in ("error", "rows") else k) for k in keys}
    config_cols = {column_of[k]: _config_column([r.config.get(k) for r in runs]) for k in keys}
    index = pd.DataFrame({
        "run": [r.id for r in runs],
        "status": [r.status for r in runs],
        "rows": [sum(len(f) for f in r.frames) for r in runs],
        "error": [r.error for r in runs],
        **config_cols,
        "run_dir": [str(r.path) for r in runs],
    })
    parts = []
    for i, run in enumerate(runs):
        for frame in run.frames:
            part = frame.copy()
            part.insert(0, "status", run.status)
            part.insert(0, "run", run.id)
            for col, series in config_cols.items():
                part[col] = pd.Series([series.iloc[i]] * len(part), dtype=series.dtype)
            part["run_dir"] = str(run.path)
            parts.append(part)
    if parts:
        table = pd.concat(parts, ignore_index=True)
    else:  # no run has rows yet: an empty table with the right columns
        empty = _empty_rows()
        table = pd.DataFrame({"run": pd.Series(dtype=str), "status": pd.Series(dtype=str),
                              "source": pd.Series(dtype=str), **{c: empty[c] for c in COLUMNS},
                              **{c: s.iloc[0:0] for c, s in config_cols.items()}, "run_dir": pd.Series(dtype=str)})
    table = table[list(RUN_COLUMNS + COLUMNS) + list(config_cols) + ["run_dir"]]
    notes = [(r.id, n) for r in runs for n in r.notes]
    return Collection(table=table, runs=index, keys=list(config_cols), notes=notes, left_out=left_out)


# ------------------------------------------------------------------------------------------ writing


def _atomic(path: Path, write) -> None:
    with atomic_path(path) as tmp:  # the one atomic writer (atomic.py)
        write(tmp)


def have_parquet() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def _write_csv(table: pd.DataFrame, path) -> None:
    """pyarrow's CSV writer when installed (about ten times faster than pandas on millions of rows)."""
    if have_parquet():
        import pyarrow as pa
        import pyarrow.csv as pa_csv

        pa_csv.write_csv(pa.Table.from_pandas(table, preserve_index=False), path,
                         write_options=pa_csv.WriteOptions(quoting_style="needed"))
    else:
        table.to_csv(path, index=False)


def write_collection(col: Collection, out: Path) -> list[Path]:
    """``out`` (CSV), ``out`` with suffix .parquet when pyarrow is installed, ``<out stem>_runs.csv``."""
    out = Path(out)
    if out.suffix == ".parquet":
        out = out.with_suffix(".csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    _atomic(out, lambda tmp: _write_csv(col.table, tmp))
    written.append(out)
    if have_parquet():
        pq = out.with_suffix(".parquet")
        _atomic(pq, lambda tmp: col.table.to_parquet(tmp, index=False))
        written.append(pq)
    runs_path = out.with_name(f"{out.stem}_runs.csv")
    _atomic(runs_path, lambda tmp: col.runs.to_csv(tmp, index=False))
    written.append(runs_path)
    return written


def load_table(path: Path) -> pd.DataFrame:
    """Read a collected table back (CSV or Parquet) with the layer column as text."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is not a file; give a table written by `sparsity-exp collect` or run folders")
    try:
        if path.suffix == ".parquet":
            table = pd.read_parquet(path)
        else:
            table = pd.read_csv(path, dtype={"layer": str, "split": str, "probe": str, "metric": str,
                                             "run": str, "status": str, "source": str, "run_dir": str})
    except Exception as exc:  # pandas raises many kinds; the user needs the file name and the cause
        raise UserError(f"cannot read {path} as a collected table ({type(exc).__name__}: {exc})") from exc
    missing = [c for c in BASE_COLUMNS if c not in table.columns]
    if missing:
        raise UserError(f"{path} lacks the columns {missing}; it is not a table written by `sparsity-exp collect`")
    table["layer"] = table["layer"].astype(str)
    return table


def report(col: Collection, file=None) -> None:
    file = file or sys.stdout
    counts = col.runs.status.value_counts()
    order = [s for s in STATUSES if s in counts] + sorted(set(counts.index) - set(STATUSES))
    parts = ", ".join(f"{counts[s]} {s}" for s in order)
    print(f"{len(col.runs)} runs ({parts}); {len(col.table)} rows; varying config keys: "
          f"{', '.join(col.keys) or 'none'}", file=file)
    for _, r in col.runs.iterrows():
        if r.status != "completed" or r.rows == 0:
            detail = f": {r.error}" if r.error else ""
            print(f"  {r.status:11s} {r.run} ({r.rows} rows){detail}", file=file)
    for rid, note in col.notes:
        print(f"  note: {rid}: {note}", file=file)
    if col.left_out:
        print(f"  left out {len(col.left_out)} folder(s) of runs that never started (refused at start: status failed, "
              f"no config.yaml, no rows); --all lists them", file=file)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="sparsity-exp collect",
        description="Collect every run folder under PATH... into one tidy table (CSV, and Parquet when "
                    "pyarrow is installed) plus <out>_runs.csv with one line per run.")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="run folders or folders holding them")
    parser.add_argument("--out", default="collected.csv", help="output CSV (default: collected.csv)")
    parser.add_argument("--all", action="store_true",
                        help="also list folders of runs that never started (refused at start, no rows)")
    args = parser.parse_args(argv)
    col = collect(args.paths, include_unstarted=args.all)
    written = write_collection(col, Path(args.out))
    report(col)
    print("wrote " + ", ".join(map(str, written)))
    return 0
