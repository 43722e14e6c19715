import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("MPLBACKEND", "Agg")

# Under pytest-xdist (the default: pyproject's addopts, ``-n auto``) the cores are shared among the
# workers: each worker, and every process a test starts, gets its share of threads instead of all of
# them (N workers x all cores of threads each would only contend).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if not os.environ.get(_var, "").strip().isdigit() or int(os.environ[_var]) < 1:  # unset, empty or not a count
            os.environ[_var] = str(_share)
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture
def compose():
    """Compose the real configs with overrides, as `sparsity-exp run` would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from sparsity_exp.config import conf_dir, register_resolvers

    register_resolvers()

    def _compose(*overrides):
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(overrides))

    return _compose


@pytest.fixture
def cli(tmp_path):
    """Run `sparsity-exp ...` from a scratch working directory: in this process through the command's
    own entry point (``sparsity_exp.cli.main``, what `python -m sparsity_exp` calls) by default, or in
    a subprocess with ``process=True`` (signals, a fresh interpreter). Returns a CompletedProcess
    either way: exit code, stdout, stderr (an uncaught exception: its traceback and exit 1, as a process).
    In process saves starting an interpreter and importing torch per call (~5 s of CPU each: most of
    the default suite's time went there); the working directory, sys.argv, the environment, torch's
    threads and random state and the logging handlers are put back after each call."""

    def _cli(*args, cwd=None, timeout=300, process=False):
        if process:
            env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
            return subprocess.run([sys.executable, "-m", "sparsity_exp", *args], cwd=cwd or tmp_path, env=env,
                                  capture_output=True, text=True, timeout=timeout)
        return run_in_process(list(args), cwd or tmp_path)

    return _cli


def run_in_process(args: list[str], cwd) -> subprocess.CompletedProcess:
    import contextlib
    import io
    import logging
    import random
    import traceback

    import numpy as np
    import torch

    from sparsity_exp.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved = (os.getcwd(), list(sys.argv), dict(os.environ), torch.get_num_threads(), torch.get_rng_state(),
             random.getstate(), np.random.get_state(), list(logging.root.handlers), logging.root.level)
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(args)
            except SystemExit as exc:
                code = exc.code
                if isinstance(code, str):  # sys.exit("message"): printed, exit 1
                    print(code, file=sys.stderr)
                    code = 1
                code = 0 if code is None else code
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        cwd0, argv, environ, threads, rng, py_rng, np_rng, handlers, level = saved
        os.chdir(cwd0)
        sys.argv[:] = argv
        os.environ.clear()
        os.environ.update(environ)
        torch.set_num_threads(threads)
        torch.set_rng_state(rng)
        random.setstate(py_rng)
        np.random.set_state(np_rng)
        for h in list(logging.root.handlers):
            if h not in handlers:
                logging.root.removeHandler(h)
                h.close()
        for h in handlers:
            if h not in logging.root.handlers:
                logging.root.addHandler(h)
        logging.root.setLevel(level)
    return subprocess.CompletedProcess(["sparsity-exp", *args], code, out.getvalue(), err.getvalue())


# A run short enough for tests: a few dozen steps of a small LN-MLP on the digits.
TINY = ["model.width=32", "model.depth=2", "trainer.steps=30", "trainer.log_every=10", "trainer.eval_every=20",
        "trainer.progress=false"]


@pytest.fixture
def tiny():
    return list(TINY)
