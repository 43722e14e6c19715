"""Bad-input battery: run `sparsity-exp` on many bad inputs (one or more per class: config values,
Hydra syntax, paths, data files, run folders, subcommand arguments) and count how many end with a
clear error: exit 2, an `error:` line, no traceback, and (where the input names an existing run
folder) that folder unchanged.

    python benchmarks/bad_inputs.py [--jobs 2] [--only SUBSTRING]

Prints one line per input (OK / UNCLEAR with the last line of stderr) and the count.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.idx import write_mnist_like  # noqa: E402

TINY = ["model.width=16", "model.depth=2", "trainer.steps=4", "trainer.log_every=2", "trainer.eval_every=4",
        "trainer.progress=false"]


def prepare(work: Path) -> dict:
    """Files the inputs point at: a finished run, damaged datasets, a plain file, ..."""
    p = {"work": work, "file": work / "a_file.txt"}
    p["file"].write_text("not a folder\n")
    write_mnist_like(work / "trunc_raw", "MNIST")
    raw = work / "trunc_raw" / "MNIST" / "raw" / "train-images-idx3-ubyte"
    raw.write_bytes(raw.read_bytes()[:-50])
    write_mnist_like(work / "trunc_gz", "MNIST", gz=True)
    gz = work / "trunc_gz" / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:40])
    write_mnist_like(work / "garbage_gz", "MNIST", gz=True)
    (work / "garbage_gz" / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    run = work / "done_run"
    subprocess.run(cli(["run", *TINY, "trainer.checkpoint_every=2", f"hydra.run.dir={run}"]), env=env(),
                   cwd=work, check=True, capture_output=True)
    p["run"] = run
    bad_cfg = work / "bad_cfg_run"
    bad_cfg.mkdir()
    (bad_cfg / "config.yaml").write_text("model: [unclosed\n")
    (bad_cfg / "summary.json").write_text('{"status": "interrupted"}\n')
    p["bad_cfg_run"] = bad_cfg
    (work / "table.csv").write_text("a,b\n1,2\n")
    return p


def cases(p: dict) -> list[tuple[str, list[str]]]:
    w, f, run = p["work"], p["file"], p["run"]
    return [
        # config values: type, range, choice, non-finite
        ("value: wrong type", ["run", *TINY, "optim.lr=abc"]),
        ("value: out of range", ["run", *TINY, "trainer.steps=0"]),
        ("value: negative seed", ["run", *TINY, "seed=-1"]),
        ("value: non-finite known key", ["run", *TINY, "optim.lr=nan"]),
        ("value: non-finite key without a rule", ["run", *TINY, "+model.dropout=inf"]),
        ("key: added with + but read by no code", ["run", *TINY, "+trainer.stepz=10"]),
        ("key: unknown probe setting", ["run", *TINY, "+probes.sparsity.evry=1"]),
        ("value: unknown modules.activation", ["run", *TINY, "modules.activation=foo"]),
        ("value: unknown device", ["run", *TINY, "trainer.device=gpu"]),
        ("value: cuda without a GPU", ["run", *TINY, "trainer.device=cuda"]),
        ("value: unknown data.name", ["run", *TINY, "data.name=foo"]),
        ("value: unknown activation.name", ["run", *TINY, "activation.name=foo"]),
        ("value: several activation fields", ["run", *TINY, "activation=shifted", "activation.inner=x",
                                             "activation.half_width=-1"]),
        ("value: unknown optimizer", ["run", *TINY, "optim.name=foo"]),
        ("value: unknown schedule", ["run", *TINY, "optim.schedule.name=step"]),
        ("value: precision", ["run", *TINY, "trainer.precision=fp8"]),
        ("value: grad_accum not dividing", ["run", *TINY, "trainer.grad_accum=5"]),
        ("value: negative epochs", ["run", *TINY, "trainer.epochs=-1"]),
        ("value: betas length", ["run", *TINY, "optim=adam", "optim.betas=[0.9]"]),
        ("value: batch larger than the data set", ["run", *TINY, "trainer.batch_size=100000"]),
        ("value: image size", ["run", *TINY, "data=mnist", f"data.root={w / 'trunc_raw'}", "data.image_size=0"]),
        ("value: unknown probe field", ["run", *TINY, "+probes.sparsity.every=-3"]),
        # Hydra: keys, groups, syntax, launcher
        ("hydra: unknown key", ["run", *TINY, "model.no_such_key=1"]),
        ("hydra: unknown group choice", ["run", *TINY, "model=nope"]),
        ("hydra: unknown group", ["run", *TINY, "nogroup=x"]),
        ("hydra: syntax", ["run", *TINY, "optim.lr=[1"]),
        ("hydra: bad interpolation", ["run", *TINY, "optim.lr=${nope}"]),
        ("hydra: unknown launcher", ["run", "-m", *TINY, "hydra/launcher=nope", "seed=0,1"]),
        # paths reaching the OS
        ("path: results_dir is a file", ["run", *TINY, f"results_dir={f}/sub"]),
        ("path: hydra.run.dir is a file", ["run", *TINY, f"hydra.run.dir={f}"]),
        ("path: name with a slash", ["run", *TINY, "name=../../escape"]),
        ("path: name too long", ["run", *TINY, "name=" + "x" * 300]),
        ("path: empty results_dir", ["run", *TINY, "results_dir="]),
        ("path: data.root is a file", ["run", *TINY, "data=mnist", f"data.root={f}"]),
        ("path: data.root missing", ["run", *TINY, "data=fashion_mnist", f"data.root={w / 'nowhere'}"]),
        ("path: cifar root missing", ["run", *TINY, "data=cifar10", f"data.root={w / 'nowhere'}"]),
        ("path: imagenet root missing", ["run", *TINY, "data=imagenet", f"data.root={w / 'nowhere'}"]),
        ("path: text tokenizer missing", ["run", *TINY, "model=t5", "data=text", f"data.tokenizer={w / 'nope'}"]),
        ("path: trainer.resume missing folder", ["run", *TINY, f"trainer.resume={w / 'nowhere'}"]),
        ("path: trainer.resume a file", ["run", *TINY, f"trainer.resume={f}"]),
        ("path: trainer.resume old checkpoint", ["run", *TINY, "trainer.checkpoint_every=2",
                                                 f"trainer.resume={run}/checkpoints/step_00000002.pt"]),
        # data files
        ("data: truncated raw IDX", ["run", *TINY, "data=mnist", f"data.root={w / 'trunc_raw'}"]),
        ("data: truncated .gz", ["run", *TINY, "data=mnist", f"data.root={w / 'trunc_gz'}"]),
        ("data: not gzip", ["run", *TINY, "data=mnist", f"data.root={w / 'garbage_gz'}"]),
        # run folders
        ("folder: other config in a finished run", ["run", *TINY, "trainer.checkpoint_every=2", "optim.lr=0.5",
                                                    f"hydra.run.dir={run}"]),
        ("folder: resume=false on a run", ["run", *TINY, "trainer.checkpoint_every=2", "trainer.resume=false",
                                           f"hydra.run.dir={run}"]),
        ("folder: damaged config.yaml", ["run", *TINY, f"hydra.run.dir={p['bad_cfg_run']}"]),
        ("folder: finetune without a source", ["run", *TINY, "protocol=sparsity_finetune", "modules=sparsified"]),
        # subcommands
        ("cli: unknown command", ["frobnicate"]),
        ("collect: missing path", ["collect", str(w / "nowhere")]),
        ("collect: a file", ["collect", str(f)]),
        ("collect: no runs", ["collect", str(w / "trunc_raw")]),
        ("collect: --out in a file", ["collect", str(run), "--out", f"{f}/x.csv"]),
        ("collect: unknown option", ["collect", str(run), "--nope"]),
        ("figures: missing path", ["figures", str(w / "nowhere")]),
        ("figures: not a table", ["figures", str(w / "table.csv")]),
        ("figures: unknown figure", ["figures", str(run), "--only", "nope"]),
        ("figures: --out a file", ["figures", str(run), "--out", str(f)]),
        ("probe: missing run", ["probe", str(w / "nowhere")]),
        ("probe: not a run", ["probe", str(f)]),
        ("probe: bad override", ["probe", str(run), "probes=nope"]),
        ("probe: unknown setting in a nested value", ["probe", str(run), "+probes.sparsity={evry: 1}"]),
        ("probe: bad checkpoints", ["probe", str(run), "checkpoints=abc"]),
        ("probe: no argument", ["probe"]),
    ]


def cli(args):
    return [sys.executable, "-m", "sparsity_exp", *args]


def env():
    return dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg", OMP_NUM_THREADS="1")


def digest(folder: Path) -> str:
    h = hashlib.sha1()
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and path.name != ".lock":
            h.update(path.as_posix().encode() + path.read_bytes())
    return h.hexdigest()


def judge(name, args, work, run):
    before = digest(run)
    out = subprocess.run(cli(args), env=env(), cwd=work, capture_output=True, text=True, timeout=600)
    clear = out.returncode == 2 and "error:" in out.stderr and "Traceback" not in out.stderr
    changed = digest(run) != before
    escaped = (work.parent / "escape").exists() or (work / "escape").exists()
    ok = clear and not changed and not escaped
    last = (out.stderr.strip().splitlines() or [""])[-1][:160]
    why = "" if ok else f"  exit {out.returncode}{' FOLDER CHANGED' if changed else ''}: {last}"
    return ok, f"{'OK     ' if ok else 'UNCLEAR'} {name}{why}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", default="")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bad_inputs_")) / "w"
    work.mkdir()
    p = prepare(work)
    chosen = [c for c in cases(p) if args.only in c[0]]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda c: judge(*c, work, p["run"]), chosen))
    for _, line in results:
        print(line)
    clear = sum(ok for ok, _ in results)
    print(f"{clear}/{len(results)} bad inputs got a clear error (exit 2, 'error:', no traceback, folder unchanged)")
    return 0 if clear == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
