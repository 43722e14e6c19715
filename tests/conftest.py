import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("MPLBACKEND", "Agg")


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
    """Run `sparsity-exp ...` in a subprocess from a scratch working directory."""

    def _cli(*args, cwd=None, timeout=300):
        env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
        return subprocess.run([sys.executable, "-m", "sparsity_exp", *args], cwd=cwd or tmp_path, env=env,
                              capture_output=True, text=True, timeout=timeout)

    return _cli


# A run short enough for tests: a few dozen steps of a small LN-MLP on the digits.
TINY = ["model.width=32", "model.depth=2", "trainer.steps=30", "trainer.log_every=10", "trainer.eval_every=20",
        "trainer.progress=false"]


@pytest.fixture
def tiny():
    return list(TINY)
