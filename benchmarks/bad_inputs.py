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

TINY_RUN = ["trainer.steps=4", "trainer.log_every=2", "trainer.eval_every=4", "trainer.progress=false"]
TINY = ["model.width=16", "model.depth=2", *TINY_RUN]  # the LN-MLP's size keys: other models have their own


def merged(*overrides: str) -> list[str]:
    """The overrides with one value per key, the last given winning (Hydra refuses a key given twice,
    which would test that refusal instead of the value under test)."""
    out: dict[str, str] = {}
    for o in overrides:
        out[o.split("=", 1)[0] if "=" in o else o] = o
    return list(out.values())


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
    # issue 26: an interrupted copy of the run, damaged and foreign checkpoints, a non-checkpoint file
    import json
    import shutil

    cut = work / "cut_run"
    shutil.copytree(run, cut)
    (cut / "checkpoints" / "step_00000004.pt").unlink()
    (cut / "summary.json").write_text(json.dumps({"status": "interrupted", "step": 2}))
    p["cut"] = cut
    trunc = work / "trunc_ckpt_run"
    shutil.copytree(run, trunc)
    last = trunc / "checkpoints" / "step_00000004.pt"
    last.write_bytes(last.read_bytes()[:200])
    p["trunc_ckpt"] = trunc
    other = work / "other_run"
    subprocess.run(cli(["run", *TINY, "model.width=24", "trainer.checkpoint_every=2", f"hydra.run.dir={other}"]),
                   env=env(), cwd=work, check=True, capture_output=True)
    foreign = work / "foreign_ckpt_run"
    shutil.copytree(run, foreign)
    shutil.copy(other / "checkpoints" / "step_00000004.pt", foreign / "checkpoints" / "step_00000004.pt")
    p["foreign_ckpt"] = foreign
    (work / "empty_dir").mkdir()
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
    ] + extra_cases(p)


# Issue 26: inputs beyond those above and beyond the tests' own, one or more per class: values that pass
# the type check but that no code can use, keys of another choice (no effect under this one), settings
# refused only late, damaged files, the resume command, launchers.
def extra_cases(p: dict) -> list[tuple[str, list[str]]]:
    w, f, run = p["work"], p["file"], p["run"]
    vit = ["model=vit", "model.num_layers=1", "model.hidden_dim=16", "model.mlp_dim=32", "model.num_heads=2"]
    t5 = ["model=t5", "model.d_model=16", "model.d_kv=8", "model.d_ff=32", "model.num_layers=1",
          "model.num_decoder_layers=1", "model.num_heads=2", "data.inputs_length=16"]
    cases = [
        ("value: seed beyond the generators' range", ["run", *TINY, "seed=4294967296"]),
        ("value: huge seed", ["run", *TINY, "seed=99999999999999999999"]),
        ("value: split_seed beyond range", ["run", *TINY, "data.split_seed=4294967296"]),
        ("value: vit heads not dividing the width", ["run", *TINY_RUN, *vit, "model.num_heads=3"]),
        ("value: vit patch not dividing the image", ["run", *TINY_RUN, *vit, "model.patch_size=3"]),
        ("value: vit image size other than the data's", ["run", *TINY_RUN, *vit, "model.image_size=10"]),
        ("value: vit zero heads", ["run", *TINY_RUN, *vit, "model.num_heads=0"]),
        ("value: t5 zero heads", ["run", *TINY_RUN, *t5, "model.num_heads=0"]),
        ("value: t5 inputs_length 1", ["run", *TINY_RUN, *t5, "data.inputs_length=1"]),
        ("value: t5 vocab smaller than the tokenizer's", ["run", *TINY_RUN, *t5, "model.vocab_size=10"]),
        ("value: text noise density 0", ["run", *TINY_RUN, *t5, "data.noise_density=0"]),
        ("value: text noise density 1.5", ["run", *TINY_RUN, *t5, "data.noise_density=1.5"]),
        ("value: text mean span 0", ["run", *TINY_RUN, *t5, "data.mean_noise_span_length=0"]),
        ("value: image model on text data", ["run", *TINY_RUN, *vit, "data=text"]),
        ("value: t5 on image data", ["run", *TINY_RUN, *t5, "data=digits"]),
        ("value: mlp on text data", ["run", *TINY, "data=text"]),
        ("value: test fraction leaving a tiny training set", ["run", *TINY, "data.test_fraction=0.999"]),
        ("value: threads 0", ["run", *TINY, "trainer.threads=0"]),
        ("value: threads a word", ["run", *TINY, "trainer.threads=many"]),
        ("value: compile mode unknown", ["run", *TINY, "trainer.compile=true", "trainer.compile_mode=fastest"]),
        ("no effect: compile_mode without compile", ["run", *TINY, "trainer.compile_mode=max-autotune"]),
        ("no effect: a ViT key under model=mlp", ["run", *TINY, "+model.patch_size=4"]),
        ("no effect: a text-data key under data=digits", ["run", *TINY, "+data.inputs_length=32"]),
        ("no effect: a shifted-activation key under relu", ["run", *TINY, "+activation.shift_x=2"]),
        ("no effect: an adam key under sgd", ["run", *TINY, "+optim.betas=[0.9,0.99]"]),
        ("value: noise rho negative", ["run", *TINY, "noise=on", "noise.rho=-1"]),
        ("value: noise targets unknown", ["run", *TINY, "noise=on", "noise.targets=everything"]),
        ("value: zeroth bias placement unknown", ["run", *TINY, "modules.zeroth_bias.enabled=true",
                                                  "modules.zeroth_bias.placement=middle"]),
        ("value: zeroth bias at V's output without V", ["run", *TINY, "modules.zeroth_bias.enabled=true",
                                                        "modules.zeroth_bias.placement=output"]),
        ("value: zeroth bias clip negative", ["run", *TINY, "modules.zeroth_bias.enabled=true",
                                              "modules.zeroth_bias.clip=-1"]),
        ("value: restricted norm mode unknown", ["run", *TINY, "modules.restricted_norm.enabled=true",
                                                 "modules.restricted_norm.mode=sideways"]),
        ("value: restricted norm uplift from scratch", ["run", *TINY, "modules.restricted_norm.enabled=true",
                                                        "modules.restricted_norm.mode=uplift"]),
        ("value: restricted norm min_gamma negative", ["run", *TINY, "modules.restricted_norm.enabled=true",
                                                       "modules.restricted_norm.min_gamma=-1"]),
        ("value: lora rank 0", ["run", *TINY, "protocol=sparsity_finetune", f"protocol.init={run}",
                                "protocol.lora.rank=0"]),
        ("value: lora targets unknown", ["run", *TINY, "protocol=sparsity_finetune", f"protocol.init={run}",
                                         "protocol.lora.targets=some"]),
        ("value: mixing steps negative", ["run", *TINY, "protocol=sparsity_finetune", f"protocol.init={run}",
                                          "protocol.mixing_steps=-1"]),
        ("path: protocol.init a text file", ["run", *TINY, "protocol=sparsity_finetune", f"protocol.init={f}"]),
        ("path: protocol.init an empty folder", ["run", *TINY, "protocol=sparsity_finetune",
                                                 f"protocol.init={w / 'empty_dir'}"]),
        ("path: protocol.init a missing path", ["run", *TINY, "protocol=sparsity_finetune",
                                                f"protocol.init={w / 'nowhere'}"]),
        ("path: protocol.init a truncated checkpoint", ["run", *TINY, "protocol=sparsity_finetune",
                                                        f"protocol.init={p['trunc_ckpt']}/checkpoints/step_00000004.pt"]),
        ("probe: spectrum mass above 1", ["probe", str(run), "probes=cheap", "probes.spectrum.mass=1.5"]),
        ("probe: hessian samples below the estimator's minimum", ["probe", str(run), "probes=full",
                                                                  "probes.hessian.samples=1"]),
        ("probe: gradient density zero bins", ["probe", str(run), "+probes.gradient_density={bins: 0}"]),
        ("probe: gradient density range reversed", ["probe", str(run),
                                                    "+probes.gradient_density={log10_range: [5.0, -10.0]}"]),
        ("probe: sharpness rho negative", ["probe", str(run), "+probes.sharpness={rho: -1.0}"]),
        ("probe: diagonality no powers", ["probe", str(run), "+probes.diagonality={powers: []}"]),
        ("probe: neurons threshold above 1", ["probe", str(run), "+probes.neurons={dead_at_most: 2.0}"]),
        ("probe: truncated checkpoint", ["probe", str(p["trunc_ckpt"]), "checkpoints=last"]),
        ("probe: checkpoint of another model", ["probe", str(p["foreign_ckpt"]), "checkpoints=last"]),
        ("probe: batches 0", ["probe", str(run), "batches=0"]),
        ("probe: batches a word", ["probe", str(run), "batches=many"]),
        ("probe: a sweep value", ["probe", str(run), "probes.sparsity.every=1,2"]),
        ("probe: swap the model", ["probe", str(run), "model=vit"]),
        ("resume: no argument", ["resume"]),
        ("resume: missing folder", ["resume", str(w / "nowhere")]),
        ("resume: a file", ["resume", str(f)]),
        ("resume: another config", ["resume", str(p["cut"]), "optim.lr=0.5"]),
        ("resume: unknown key", ["resume", str(p["cut"]), "+trainer.stepz=1"]),
        ("resume: cuda without a GPU", ["resume", str(p["cut"]), "trainer.device=cuda"]),
        ("resume: damaged config.yaml", ["resume", str(p["bad_cfg_run"])]),
        ("resume: truncated newest checkpoint", ["resume", str(p["trunc_ckpt"])]),
        ("folder: trainer.resume=auto with another config", ["run", *TINY, "trainer.resume=auto",
                                                             "trainer.checkpoint_every=2", "optim.lr=0.7",
                                                             f"results_dir={w / 'empty_dir'}", "trainer.device=cuda"]),
        ("folder: resume=<folder> with cuda", ["run", *TINY, "trainer.checkpoint_every=2",
                                               f"trainer.resume={p['cut']}", "trainer.device=cuda"]),
        ("launcher: slurm without sbatch", ["run", "-m", *TINY, "hydra/launcher=slurm", "seed=0,1"]),
        ("hydra: run dir with = and , unquoted", ["run", *TINY, f"hydra.run.dir={w}/a=1,b=2"]),
        ("collect: --out is a folder", ["collect", str(run), "--out", str(w)]),
        ("figures: unknown hue", ["figures", str(run), "--hue", "nope.key", "--out", str(w / "figs")]),
        ("cli: study unknown suite", ["study", "nope"]),
        ("value: log_every 0 via probes every", ["run", *TINY, "trainer.log_every=0"]),
        ("value: eval batch 0", ["run", *TINY, "trainer.eval_batch_size=0"]),
        ("value: warmup_start above 1", ["run", *TINY, "optim.schedule.warmup_start=2"]),
        ("value: tensorboard a word", ["run", *TINY, "trainer.tensorboard=maybe"]),
        ("value: precision bf16 with a word", ["run", *TINY, "trainer.precision=bf32"]),
        ("value: digits test fraction emptying a class", ["run", *TINY, "data.test_fraction=0.001"]),
        ("value: text test fraction leaving no training document",
         ["run", *TINY_RUN, *t5, "data=text", "data.test_fraction=0.9999"]),
        ("no effect: restricted norm floor negative", ["run", *TINY, "modules.restricted_norm.enabled=true",
                                                       "modules.restricted_norm.min_gamma=-1"]),
        ("value: mixing steps negative", ["run", *TINY, "protocol=sparsity_finetune", f"protocol.init={run}",
                                          "protocol.mixing_steps=-1"]),
        ("value: llama on text data", ["run", *TINY_RUN, "model=llama", "data=text"]),
        ("value: gated LN-MLP without V", ["run", *TINY, "model=mlp_gated", "model.value=false"]),
        ("value: t5 feed_forward_proj unknown", ["run", *TINY_RUN, *t5, "model.feed_forward_proj=gated-swish"]),
        ("value: magnitude cett above 1", ["run", *TINY, "+probes.magnitude.cett=1.5"]),
        ("value: dead units fraction 1", ["run", *TINY, "modules.dead_units.fraction=1"]),
    ]
    keys = ("model.", "data.", "trainer.", "seed=", "+", "noise.", "modules.", "protocol.", "optim.", "activation.")
    return [(name, [a for a in args if not a.startswith(keys)] + merged(*[a for a in args if a.startswith(keys)])
             if args and args[0] == "run" else args) for name, args in cases]


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


def judge(name, args, work, watched):
    before = {folder: digest(folder) for folder in watched}
    out = subprocess.run(cli(args), env=env(), cwd=work, capture_output=True, text=True, timeout=600)
    clear = out.returncode == 2 and "error:" in out.stderr and "Traceback" not in out.stderr
    changed = any(digest(folder) != h for folder, h in before.items())
    escaped = (work.parent / "escape").exists() or (work / "escape").exists()
    ok = clear and not changed and not escaped
    lines = out.stderr.strip().splitlines()
    first = next((x for x in lines if x.startswith("error:")), (lines or [""])[-1])[:200]
    last = (lines or [""])[-1][:160]
    why = "" if ok else f"  exit {out.returncode}{' FOLDER CHANGED' if changed else ''}: {last}"
    row = {"name": name, "args": args, "exit": out.returncode, "first": first, "ok": ok,
           "traceback": "Traceback" in out.stderr, "changed": changed}
    return ok, f"{'OK     ' if ok else 'UNCLEAR'} {name}{why}", row


def markdown(rows: list[dict], work: Path) -> str:
    """The table: input, command (paths shortened to W/), exit code, the first `error:` line."""
    def short(text: str) -> str:
        return str(text).replace(str(work), "W").replace("|", "\\|")

    out = ["| # | input | command | exit | first line of the error | clear |", "|---|---|---|---|---|---|"]
    for i, r in enumerate(rows, 1):
        cmd = "sparsity-exp " + " ".join(a for a in r["args"] if a not in TINY)  # TINY_RUN is inside TINY
        out.append(f"| {i} | {short(r['name'])} | `{short(cmd)}` | {r['exit']} | {short(r['first'])} | "
                   f"{'yes' if r['ok'] else 'NO'} |")
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", default="")
    parser.add_argument("--markdown", default=None, help="write the table (command, exit, first line) here")
    parser.add_argument("--extra-only", action="store_true", help="only the issue-26 inputs (extra_cases)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bad_inputs_")) / "w"
    work.mkdir()
    p = prepare(work)
    chosen = [c for c in (extra_cases(p) if args.extra_only else cases(p)) if args.only in c[0]]
    watched = [p[k] for k in ("run", "cut", "trunc_ckpt", "foreign_ckpt")]
    results = []
    with ThreadPoolExecutor(args.jobs) as pool:  # each result printed (and the table rewritten) as it lands
        for result in pool.map(lambda c: judge(*c, work, watched), chosen):
            results.append(result)
            print(result[1], flush=True)
            if args.markdown:
                Path(args.markdown).write_text(markdown([r for _, _, r in results], work))
    if args.markdown:
        print(f"table in {args.markdown}")
    clear = sum(ok for ok, _, _ in results)
    print(f"{clear}/{len(results)} bad inputs got a clear error (exit 2, 'error:', no traceback, folder unchanged)")
    return 0 if clear == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
