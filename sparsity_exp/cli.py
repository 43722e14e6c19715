"""The ``sparsity-exp`` command: ``run`` (Hydra; ``-m`` for grids), and the subcommands that grow
around it."""
from __future__ import annotations

import sys
import traceback
from pathlib import Path

USAGE = """usage: sparsity-exp COMMAND [ARGS]

commands:
  run [overrides]   train and probe one configuration (Hydra overrides, e.g. model.depth=6 optim.lr=0.1);
                    `run -m a=1,2 b=x,y` runs the grid; `run --help` lists the config groups;
                    `run --cfg job` prints the composed config without running
  collect PATH... [--out FILE] [--all]
                    every run folder under PATH... into one tidy table (CSV, and Parquet when pyarrow is
                    installed) joined with the config keys that vary; counts runs per status (a killed
                    run is `dead`); --all also lists folders of jobs refused at start
  figures PATH... [--out DIR] [--only NAME,...]
                    every figure whose data exist, from run folders or a collected table (PNG and PDF)
  probe RUN_DIR [overrides]
                    measure a run's saved checkpoints with probes, no training (rows into
                    RUN_DIR/posthoc_metrics.csv); e.g. `probe RUN probes=full checkpoints=last`;
                    overrides in Hydra's grammar as for run (`'+probes.neurons={train: true}'`)
  study SUITE [overrides] [--out DIR] [--seeds 0,1,2] [--judge-only]
                    validation study: every arm x seed of conf/study/SUITE.yaml through `run -m`
                    (completed runs skipped), then a verdict per claim with effect and 95% CI in
                    study/SUITE/report.md; --plan (seeds needed), --seeds auto --max-seeds N (sequential),
                    --dry-run; `study --help` says more
"""


def _run(args: list[str]) -> int:
    """``sparsity-exp run``: checks before Hydra makes a folder, then Hydra's ``main`` over ``_job``
    (one job, or each job of a sweep), then the sweep's account."""
    import hydra

    from . import distributed
    from .config import conf_dir, register_resolvers, writable_results_dir
    from .errors import UserError
    from .lifecycle.folder_guard import FolderSnapshot, run_dir_argument

    try:
        config_path = str(conf_dir())
        writable_results_dir(args, conf_dir())
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    register_resolvers()
    missing = _missing_launcher(args)
    if missing:
        print(f"error: {missing}", file=sys.stderr)
        return 2
    # under torchrun: join the ranks first, so that all of them name one run folder
    if distributed.init_from_env() and not distributed.is_main():
        args = [*args, "hydra.output_subdir=null"]  # rank 0 alone writes the run folder
    sweep = _Sweep()
    before = FolderSnapshot(run_dir_argument(args))  # Hydra rewrites .hydra/ before the run may refuse

    @hydra.main(config_path=config_path, config_name="config", version_base="1.3")
    def task(cfg):
        return _job(cfg, sweep, before)

    sys.argv = ["sparsity-exp run", *args]
    try:
        code = _hydra_main(task, sweep)
    finally:
        distributed.shutdown()
    return code if code is not None else sweep.report(_is_multirun(args))


class _Sweep:
    """What the jobs of one ``run`` command did, for the account at the end (a single run is a sweep
    of one job)."""

    def __init__(self):
        self.started = False  # Hydra composed a config and called a job (else: Hydra's own error)
        self.failed: list[str] = []
        self.finished: list[str] = []

    def report(self, multirun: bool) -> int:
        if self.failed:
            print(f"\n{len(self.failed)} of {len(self.failed) + len(self.finished)} job(s) of the sweep failed; "
                  f"folders that held a run keep summary.json (status 'failed') and error.txt:\n  "
                  + "\n  ".join(self.failed), file=sys.stderr)
            return 1
        if len(self.finished) > 1 or (self.finished and multirun):
            print(f"\nall {len(self.finished)} job(s) of the sweep completed; `sparsity-exp collect "
                  f"{Path(self.finished[0]).parent}` gathers them into one table")
        return 0


def _hydra_main(task, sweep: _Sweep) -> int | None:
    """Call Hydra's ``main``; an error of Hydra's own (it could not compose or set up the config from
    the overrides, before any job started) becomes exit 2 with what to check. None: the jobs ran."""
    try:
        task()
    except SystemExit as exc:
        if exc.code == 1 and not sweep.started:  # Hydra could not compose the config: bad input, exit 2
            print("error: the overrides above could not be applied (Hydra's message says which). Check the key "
                  "and group names with `sparsity-exp run --cfg job` and `sparsity-exp run --help`; a key that "
                  "is not in the config needs a leading + (e.g. +model.new_key=1)", file=sys.stderr)
            return 2
        raise
    except Exception as exc:  # raised while Hydra set the job up (e.g. an interpolation in an override)
        if sweep.started:
            raise
        detail = (str(exc).strip().splitlines() or [""])[0]
        print(f"error: the config could not be set up from these overrides ({type(exc).__name__}: {detail}); "
              f"check the overrides (a ${{...}} that names no key, a value that needs quotes); "
              f"`sparsity-exp run --cfg job` prints the composed config", file=sys.stderr)
        return 2
    return None


def _job(cfg, sweep: _Sweep, before):
    """One job: place it, pick its folder (``trainer.resume``), run it with its output teed into
    ``run.log``. Bad input exits 2 (a sweep goes on with its other jobs and counts the failure)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from . import distributed
    from .errors import UserError
    from .lifecycle import folders
    from .lifecycle.preempt import REQUEUE_EXIT_CODE, Preempted
    from .run import execute
    from .runlog import tee_to_run_log
    from .speed import place_local_job, set_threads

    sweep.started = True
    hc = HydraConfig.get()
    run_dir = distributed.agree_on_run_dir(Path(hc.runtime.output_dir))
    multirun = hc.mode == RunMode.MULTIRUN
    fresh = not folders.has_output(run_dir)
    try:
        _resolvable(cfg)
        launcher = str(hc.launcher.get("_target_", ""))
        set_threads(cfg.trainer.get("threads", "auto"), launcher)
        from .study.machine import apply_reproducible

        apply_reproducible()  # `study --reproducible` runs: deterministic kernels, one thread (else a no-op)
        place_local_job(str(cfg.trainer.get("device", "auto")), launcher, hc.job.get("num") or 0)
        target = folders.resolve_run_dir(cfg, run_dir)
        if target != run_dir:  # trainer.resume names another folder: Hydra's fresh one is not needed
            folders.discard_if_empty(run_dir)
            run_dir = target
            fresh = not folders.has_output(run_dir)
        with tee_to_run_log(run_dir, distributed.is_main()):
            summary = execute(cfg, run_dir)
        sweep.finished.append(str(run_dir))
        return summary
    except Preempted as exc:
        print(f"{exc}. Exit {REQUEUE_EXIT_CODE} (requeue); to continue, rerun the same command with "
              f"trainer.resume=auto (or hydra.run.dir={run_dir})", file=sys.stderr)
        raise SystemExit(REQUEUE_EXIT_CODE)
    except UserError as exc:
        _roll_back(run_dir, fresh, before, exc)
        print(f"error: {exc}", file=sys.stderr)
        if not multirun:
            raise SystemExit(2)
        sweep.failed.append(f"job {hc.job.num} ({run_dir.name}): " + str(exc).replace("\n", "\n    "))
    except Exception:
        if not multirun:
            raise
        # In a sweep one failing job must not stop the others: its folder keeps error.txt.
        print(f"job {hc.job.num} failed, see {run_dir / 'error.txt'}:\n{traceback.format_exc()}", file=sys.stderr)
        sweep.failed.append(f"job {hc.job.num} ({run_dir}): see error.txt")
    return None


def _roll_back(run_dir: Path, fresh: bool, before, exc) -> None:
    """After bad input: a folder made for a job refused before it started is removed; a refused
    continuation's folder gets Hydra's rewritten files back as they were (rank 0 only)."""
    from . import distributed
    from .lifecycle.folder_guard import discard_new
    from .train import NonFiniteLoss

    if not distributed.is_main():
        return
    if fresh and not isinstance(exc, NonFiniteLoss):  # refused before it started: leave nothing
        discard_new(run_dir, before)
    elif before.covers(run_dir):  # a refused continuation: the folder stays as it was
        before.restore()


def _resolvable(cfg) -> None:
    """An interpolation that cannot be resolved (``optim.lr=${nope}``) is bad input, said before the run."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from .errors import ConfigError

    try:
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        detail = str(exc).strip().splitlines()[0]
        raise ConfigError(f"the config cannot be resolved: {detail} (full key: {getattr(exc, 'full_key', '?')}); "
                          f"fix the ${{...}} interpolation, or quote a value meant literally") from None


def _is_multirun(args: list[str]) -> bool:
    return "-m" in args or "--multirun" in args


# launcher preset -> (module its Hydra plugin installs, pip package)
_LAUNCHERS = {"local": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
              "slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher")}


def _missing_launcher(args: list[str]) -> str | None:
    """A launcher preset (conf/hydra/launcher) whose plugin is not installed: say how to install it."""
    import importlib.util

    for arg in args:
        if arg.startswith("hydra/launcher="):
            name = arg.split("=", 1)[1]
            module, package = _LAUNCHERS.get(name, (None, None))
            if module and importlib.util.find_spec(module) is None:
                return (f"hydra/launcher={name} needs the {package} plugin: "
                        f"pip install 'sparsity-exp[cluster]' (or pip install {package})")
    return None


def _table_command(command: str, args: list[str]) -> int:
    from .errors import UserError

    try:
        if command == "collect":
            from .collect import main as collect_main

            return collect_main(args)
        from .figures import main as figures_main

        return figures_main(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # --out under a file, an unreadable folder: the OS's word and the path
        print(f"error: {exc.filename or ''}: {exc.strerror or exc}; check the paths given (--out must be a file "
              f"or folder you can write, PATH... folders you can read)", file=sys.stderr)
        return 2


def _probe(args: list[str]) -> int:
    from .errors import UserError

    if not args or args[0].startswith("-"):
        print("error: probe needs a run folder first\nusage: sparsity-exp probe RUN_DIR [probes=<preset>] [checkpoints=all|last|S1,S2] [batches=N] "
              "[key=value ...]", file=sys.stderr)
        return 2
    try:
        from .posthoc import probe_run

        probe_run(Path(args[0]), args[1:])
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "run":
        return _run(rest)
    if command in ("collect", "figures"):
        return _table_command(command, rest)
    if command == "probe":
        return _probe(rest)
    if command == "study":
        from .study.main import cli as study_cli

        return study_cli(rest)
    print(f"error: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
