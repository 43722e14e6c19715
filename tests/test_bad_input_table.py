"""One row per class of bad input: the CLI arguments (and the files they point at), the `error:`
text expected, exit 2, no traceback. benchmarks/bad_inputs.py runs a larger battery of the same."""
import sys

import pytest

from tests.idx import write_mnist_like

from .conftest import TINY


def _truncated_idx(tmp_path):
    write_mnist_like(tmp_path / "d", "MNIST")
    raw = tmp_path / "d" / "MNIST" / "raw" / "train-images-idx3-ubyte"
    raw.write_bytes(raw.read_bytes()[:-50])
    return [f"data.root={tmp_path / 'd'}", "data=mnist"]


def _truncated_gz(tmp_path):
    write_mnist_like(tmp_path / "d", "MNIST", gz=True)
    gz = tmp_path / "d" / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:40])
    return [f"data.root={tmp_path / 'd'}", "data=mnist"]


def _a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    return tmp_path / "f"


ROWS = [
    # class, run arguments (or a function of tmp_path giving them), expected error text
    ("value out of range", ["optim.lr=-1"], "optim.lr=-1: must be a number > 0"),
    ("wrong type", ["trainer.steps=abc"], "trainer.steps='abc': must be an integer"),
    ("non-finite value", ["+model.dropout=nan"], "model.dropout=nan: must be a finite number"),
    ("unknown choice in a field", ["activation.name=foo"], "activation.name='foo': must be one of"),
    ("batch larger than the data", ["trainer.batch_size=100000"], "larger than the training set"),
    ("Hydra: unknown key", ["model.nope=1"], "could not be applied"),
    ("Hydra: unknown group option", ["model=nope"], "could not be applied"),
    ("Hydra: bad interpolation", ["optim.lr=${nope}"], "Interpolation key 'nope' not found"),
    ("path in a name", ["name=../../x"], "name='../../x': must be a label"),
    ("results under a file", lambda t: [f"results_dir={_a_file(t)}/r"], "is a file, not a folder"),
    ("missing dataset", lambda t: ["data=mnist", f"data.root={t / 'none'}"], "MNIST not found"),
    ("truncated raw IDX", _truncated_idx, "is truncated or padded"),
    ("truncated .gz", _truncated_gz, "is damaged"),
    ("resume from a non-run", lambda t: [f"trainer.resume={t}"], "is not a run folder"),
    # the one start-up check (validate.py), before any data or model is built
    ("key no code reads", ["+trainer.stepz=10"],
     "trainer.stepz: no config group defines this key, so nothing would read it (did you mean trainer.steps?)"),
    ("unknown probe", ["+probes.sparsty.every=1"], "probes.sparsty=...: must be a known probe (did you mean probes.sparsity?)"),
    ("unknown probe setting", ["+probes.sparsity.evry=1"],
     "probes.sparsity.evry: the sparsity probe has no such setting (did you mean probes.sparsity.every?)"),
    ("probe setting of the wrong kind", ["probes.sparsity.test=1"], "probes.sparsity.test=1: must be true or false"),
    ("precision", ["trainer.precision=fp8"], "trainer.precision='fp8': must be one of fp32, bf16"),
    ("grad_accum not dividing the batch", ["trainer.grad_accum=7"],
     "trainer.grad_accum=7: must divide trainer.batch_size=32"),
    ("unknown modules.activation", ["modules.activation=foo"], "modules.activation='foo': must be one of"),  # not the list: a new activation changes it
    ("modules.activation over another activation", ["activation=gelu", "modules.activation=jsrelu"],
     "so activation=gelu would be lost"),
    # found by benchmarks/bad_inputs.py: a traceback from the thread setting (read before the start-up
    # check), and a word taken as true
    ("threads a word", ["trainer.threads=many"], "trainer.threads='many': must be auto or an integer >= 1"),
    ("tensorboard a word", ["trainer.tensorboard=maybe"], "trainer.tensorboard='maybe': must be true or false"),
]


def _run_in_process(args, monkeypatch, capsys, tmp_path) -> tuple[int, str]:
    """`sparsity-exp run ARGS` through the command's own entry point (cli.main), in this process from
    tmp_path: the exit code (returned, or raised as SystemExit by a job) and what it wrote to stderr."""
    from sparsity_exp.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # the command sets it for Hydra
    capsys.readouterr()
    try:
        code = main(["run", *args])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("kind,args,says", ROWS, ids=[r[0] for r in ROWS])
def test_bad_run_input_is_a_clear_error(monkeypatch, capsys, tmp_path, kind, args, says):
    """Every row in process (cli.main, Hydra included): a subprocess per row cost ~7 s of CPU each,
    mostly importing torch; the rows below check the same through `python -m sparsity_exp`."""
    args = args(tmp_path) if callable(args) else args
    code, err = _run_in_process([*TINY, *args], monkeypatch, capsys, tmp_path)
    assert code == 2, (code, err[-800:])
    assert "error:" in err and says in err and "Traceback" not in err, err[-800:]
    results = tmp_path / "results"
    assert not results.exists() or not any(results.iterdir())  # refused before it started: no run folder


# one row of each path through a real process: a config check (validate.py), Hydra's own refusal, an
# error raised while building the data (exit code 2 and no traceback as a user sees them); the first two
# are slow (a process each; their in-process rows above stay in the default suite, as does the data row)
@pytest.mark.parametrize("kind,args,says", [pytest.param(*r, marks=[pytest.mark.slow] if r[0] != "missing dataset" else [])
                                            for r in ROWS if r[0] in ("value out of range", "Hydra: unknown key",
                                                                      "missing dataset")],
                         ids=lambda v: v if isinstance(v, str) else None)
def test_bad_run_input_is_a_clear_error_in_a_process(cli, tmp_path, kind, args, says):
    args = args(tmp_path) if callable(args) else args
    out = cli("run", *TINY, *args, process=True)
    assert out.returncode == 2, (out.returncode, out.stderr[-800:])
    assert "error:" in out.stderr and says in out.stderr and "Traceback" not in out.stderr, out.stderr[-800:]
    results = tmp_path / "results"
    assert not results.exists() or not any(results.iterdir())


@pytest.mark.parametrize("kind,args,says", [
    ("collect: missing path", lambda t: ["collect", str(t / "none")], "does not exist"),
    ("collect: --out under a file", lambda t: ["collect", str(t), "--out", f"{_a_file(t)}/x.csv"], "--out must be"),
    ("figures: unknown figure", lambda t: ["figures", str(t), "--only", "nope"], "error:"),
    ("probe: no run folder", lambda t: ["probe"], "probe needs a run folder"),
    ("unknown command", lambda t: ["frobnicate"], "unknown command"),
], ids=lambda v: v if isinstance(v, str) and ":" in v else None)
def test_bad_subcommand_input_is_a_clear_error(monkeypatch, capsys, tmp_path, kind, args, says):
    """In process (cli.main; the run rows above check the real process's exit code and stderr)."""
    from sparsity_exp.cli import main

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text('{"status": "completed"}')
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    try:
        code = main(args(tmp_path))
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and "error:" in err and says in err, err[-800:]
    assert "Traceback" not in err


@pytest.mark.parametrize("override,says", [
    ("+probes.kurtosis={every:1}", "probes.kurtosis=...: must be a known probe"),
    ("probes.sparsity.evry=1", "the config has no key probes.sparsity.evry; add it with +probes.sparsity.evry=1"),
    ("+probes.sparsity.evry=1", "(did you mean probes.sparsity.every?)"),
    ("+probes.sparsity.every=1", "probes.sparsity.every is already in the config; drop the +"),
    ("probes.sparsity.test=1", "probes.sparsity.test=1: must be true or false"),
    ("+trainer.stepz=10", "(did you mean trainer.steps?)"),
    ("probes=nope", "probes=nope: no such preset"),
    ("model=vit", "a saved run's model cannot be swapped"),
    ("probes.sparsity.every=1,2", "one value per key here"),
    ("probes.sparsity.every={1", "cannot be read"),
])
def test_bad_probe_overrides_are_clear_errors(compose, capsys, tmp_path, override, says):
    """`sparsity-exp probe` reads overrides with Hydra's grammar and checks the result as a run is
    checked, before anything is built: no rows are written. (In process: the command's own code.)"""
    from omegaconf import OmegaConf

    from sparsity_exp.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(OmegaConf.to_yaml(compose(*TINY, "probes=cheap"), resolve=True))
    assert main(["probe", str(run), override]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and says in err, err[-800:]
    assert not (run / "posthoc_metrics.csv").exists()
