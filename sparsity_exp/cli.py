"""The ``sparsity-exp`` command: ``run`` (Hydra; ``-m`` for grids), and the subcommands that grow
around it."""
from __future__ import annotations

import shutil
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
  resume RUN_DIR [overrides]
                    continue an interrupted or killed run in its folder with its own config (what the
                    message after SIGTERM prints); overrides may change run settings (trainer.device=cpu)
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
    sweep = _Sweep(_outcomes_folder(args))
    before = FolderSnapshot(run_dir_argument(args))  # Hydra rewrites .hydra/ before the run may refuse

    @hydra.main(config_path=config_path, config_name="config", version_base="1.3")
    def task(cfg):
        return _job(cfg, sweep, before)

    sys.argv = ["sparsity-exp run", *args]
    try:
        code = _hydra_main(task, sweep)
        return code if code is not None else sweep.report(_is_multirun(args))
    finally:
        distributed.shutdown()
        if sweep.outcomes is not None:
            import shutil

            shutil.rmtree(sweep.outcomes, ignore_errors=True)


class _Sweep:
    """What the jobs of one ``run`` command did, for the account at the end (a single run is a sweep
    of one job). Jobs may run in other processes (``hydra/launcher=local``: joblib workers; SLURM: other
    machines), each with its own copy of this object: with ``outcomes`` set every job also writes its
    outcome there as one JSON file, and the account reads them all."""

    def __init__(self, outcomes: Path | None = None):
        self.started = False  # Hydra composed a config and called a job (else: Hydra's own error)
        self.outcomes = outcomes
        self.jobs: dict = {}  # job number -> {"job", "folder", "error"} of the jobs run in this process

    def start(self, num) -> None:
        self.started = True
        if self.outcomes is not None:
            _write_outcome(self.outcomes / f"job_{num}.started", {"job": num})

    def record(self, num, folder: Path | None, error: str | None, refused: bool = False) -> None:
        entry = {"job": num, "folder": str(folder) if folder else None, "error": error, "refused": refused}
        self.jobs[num] = entry
        if self.outcomes is not None:
            _write_outcome(self.outcomes / f"job_{num}.json", entry)

    def any_started(self) -> bool:
        return self.started or (self.outcomes is not None and any(self.outcomes.glob("job_*")))

    def collected(self) -> list[dict]:
        """Every job's outcome (this process's and the files of the others), in job order; a job that
        started and left no outcome (its process died) is a failure without an error message."""
        import json

        jobs = dict(self.jobs)
        if self.outcomes is not None and self.outcomes.is_dir():
            for path in self.outcomes.glob("job_*.json"):
                entry = json.loads(path.read_text())
                jobs.setdefault(entry["job"], entry)
            for path in self.outcomes.glob("job_*.started"):
                num = json.loads(path.read_text())["job"]
                jobs.setdefault(num, {"job": num, "folder": None, "refused": False,
                                      "error": "the job's process ended without a word (killed? out of memory?)"})
        return [jobs[k] for k in sorted(jobs, key=lambda k: (str(type(k)), k))]

    def report(self, multirun: bool) -> int:
        jobs = self.collected()
        failed = [j for j in jobs if j["error"]]
        finished = [j for j in jobs if not j["error"]]
        if failed:
            lines = []
            for j in failed:
                where = (f"folder {j['folder']}" if j["folder"] else "no folder (refused before it started)")
                first = (j["error"].strip().splitlines() or ["?"])[0]
                lines.append(f"  job {j['job']}: {first} [{where}]")
            print(f"\n{len(failed)} of {len(jobs)} job(s) of the sweep failed; a folder that held a run keeps "
                  f"summary.json (status 'failed') and error.txt:\n" + "\n".join(lines), file=sys.stderr)
            return 1
        if len(finished) > 1 or (finished and multirun):
            parents = sorted({str(Path(j["folder"]).parent) for j in finished if j["folder"]})
            print(f"\nall {len(finished)} job(s) of the sweep completed; `sparsity-exp collect "
                  f"{' '.join(_quoted(p) for p in parents)}` gathers them into one table")
        return 0


def _quoted(path: str) -> str:
    import shlex

    return shlex.quote(path)


def _write_outcome(path: Path, entry: dict) -> None:
    import json

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(entry))
    except OSError:  # the account then says this job left no word; the job itself goes on
        pass


def _outcomes_folder(args: list[str]) -> Path | None:
    """Where the jobs of a sweep write their outcomes: a temporary folder on this machine, or for a
    launcher that runs jobs elsewhere (SLURM) one under results_dir (a shared file system)."""
    import tempfile
    import uuid

    if not _is_multirun(args):
        return None
    local = not any(a.startswith("hydra/launcher=") and a.split("=", 1)[1] not in ("local", "basic") for a in args)
    if local:
        return Path(tempfile.mkdtemp(prefix="sparsity-exp-sweep-"))
    given = [a.split("=", 1)[1] for a in args if a.split("=", 1)[0].lstrip("+") == "results_dir"]
    root = Path(given[-1] if given and "," not in given[-1] else "results").expanduser().absolute()
    return root / ".sweep_outcomes" / uuid.uuid4().hex[:12]


def _hydra_main(task, sweep: _Sweep) -> int | None:
    """Call Hydra's ``main``; an error of Hydra's own (it could not compose or set up the config from
    the overrides, before any job started) becomes exit 2 with what to check. None: the jobs ran."""
    try:
        task()
    except SystemExit as exc:
        if exc.code == 1 and not sweep.any_started():  # Hydra could not compose the config: bad input, exit 2
            print("error: the overrides above could not be applied (Hydra's message says which). Check the key "
                  "and group names with `sparsity-exp run --cfg job` and `sparsity-exp run --help`; a key that "
                  "is not in the config needs a leading + (e.g. +model.new_key=1)", file=sys.stderr)
            return 2
        raise
    except Exception as exc:  # raised while Hydra set the job up (e.g. an interpolation in an override)
        if sweep.any_started():
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
    from .errors import StorageError, UserError
    from .lifecycle import folders
    from .lifecycle.folder_guard import FolderSnapshot
    from .lifecycle.preempt import REQUEUE_EXIT_CODE, Preempted
    from .run import execute
    from .runlog import tee_to_run_log
    from .speed import place_local_job, set_threads

    hc = HydraConfig.get()
    num = hc.job.get("num")
    sweep.start(num)
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
            before = FolderSnapshot(run_dir)  # a refused continuation leaves that folder as it was
        with tee_to_run_log(run_dir, distributed.is_main()):
            summary = execute(cfg, run_dir)
        sweep.record(num, run_dir, None)
        return summary
    except Preempted as exc:
        print(f"{exc}. Exit {REQUEUE_EXIT_CODE} (requeue); {resume_hint(run_dir)}", file=sys.stderr)
        raise SystemExit(REQUEUE_EXIT_CODE)
    except StorageError as exc:  # the file system refused a write: said in one line, exit 1
        print(f"error: {exc}", file=sys.stderr)
        if not multirun:
            raise SystemExit(1)
        sweep.record(num, run_dir, f"error: {exc}")
    except UserError as exc:
        _roll_back(run_dir, fresh, before, exc)
        print(f"error: {exc}", file=sys.stderr)
        if not multirun:
            raise SystemExit(2)
        kept = run_dir.is_dir() and folders.has_output(run_dir)
        sweep.record(num, run_dir if kept else None, f"error: {exc}", refused=not kept)
    except Exception as exc:
        if not multirun:
            raise
        # In a sweep one failing job must not stop the others: its folder keeps error.txt.
        print(f"job {num} failed, see {run_dir / 'error.txt'}:\n{traceback.format_exc()}", file=sys.stderr)
        sweep.record(num, run_dir, f"{type(exc).__name__}: {exc} (traceback in {run_dir / 'error.txt'})")
    return None


def resume_hint(run_dir: Path) -> str:
    """The command that continues ``run_dir``, quoted for a POSIX shell (folder names hold = and ,)."""
    import shlex

    return (f"to continue: sparsity-exp resume {shlex.quote(str(run_dir))} (a requeued sweep job: the same "
            f"command with trainer.resume=auto)")


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
            if name == "slurm" and _is_multirun(args) and not _local_slurm_executor(args):
                missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
                if missing:
                    return (f"hydra/launcher=slurm submits jobs with SLURM's sbatch and runs them with srun, but "
                            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not on PATH here; run "
                            f"the sweep on a SLURM login node (or `module load slurm`), or use hydra/launcher=local")
    return None


def _local_slurm_executor(args: list[str]) -> bool:
    """submitit's ``local`` executor (hydra/launcher=submitit_local) needs no SLURM tools."""
    return any(a.startswith("hydra/launcher=submitit_local") for a in args)


def _resume(args: list[str]) -> int:
    """``sparsity-exp resume RUN_DIR [overrides]``: continue a run in its own folder with the run's own
    config (``RUN_DIR/config.yaml``), no Hydra grammar for the folder's name (which holds = and ,).
    Overrides (Hydra's grammar, as ``probe`` takes them) may change run settings such as
    ``trainer.device=cpu``; one that changes the experiment is refused by the config comparison. A
    refusal leaves the folder byte-identical."""
    from omegaconf import OmegaConf, open_dict

    from . import distributed
    from .config import apply_overrides, register_resolvers
    from .errors import StorageError, UserError
    from .lifecycle import folders
    from .lifecycle.folder_guard import FolderSnapshot
    from .lifecycle.preempt import REQUEUE_EXIT_CODE, Preempted
    from .run import execute
    from .runlog import tee_to_run_log
    from .speed import set_threads

    if not args or args[0].startswith("-"):
        print("error: resume needs a run folder first\nusage: sparsity-exp resume RUN_DIR [trainer.device=cpu ...]",
              file=sys.stderr)
        return 2
    run_dir = Path(args[0]).expanduser()
    register_resolvers()
    snapshot = FolderSnapshot(run_dir)
    try:
        if not (run_dir / "config.yaml").is_file():
            raise UserError(f"{run_dir} is not a run folder (no config.yaml); pass the folder a `sparsity-exp run` "
                            f"wrote (its name is printed as 'run folder:' and in the interruption message)")
        try:
            cfg = OmegaConf.load(run_dir / "config.yaml")
        except Exception as exc:  # noqa: BLE001 - a damaged YAML file
            raise UserError(f"{run_dir / 'config.yaml'} cannot be read ({type(exc).__name__}); restore it from "
                            f"{run_dir / '.hydra' / 'config.yaml'}, or start a new run") from None
        cfg = apply_overrides(cfg, args[1:])
        with open_dict(cfg):
            cfg.trainer.resume = None  # this folder, continued (a recorded `auto` or `false` would look elsewhere)
        _resolvable(cfg)
        distributed.init_from_env()
        set_threads(cfg.trainer.get("threads", "auto"), "")
        if not folders.has_output(run_dir):
            raise UserError(f"{run_dir} holds no run to continue (no summary.json, metrics.csv or checkpoints); "
                            f"start it with `sparsity-exp run`")
        with tee_to_run_log(run_dir, distributed.is_main()):
            execute(cfg, run_dir)
    except Preempted as exc:
        print(f"{exc}. Exit {REQUEUE_EXIT_CODE} (requeue); {resume_hint(run_dir)}", file=sys.stderr)
        return REQUEUE_EXIT_CODE
    except StorageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except UserError as exc:
        from .train import NonFiniteLoss

        if distributed.is_main() and not isinstance(exc, NonFiniteLoss):
            snapshot.restore()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        distributed.shutdown()
    return 0


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
    if command == "resume":
        return _resume(rest)
    if command == "study":
        from .study.main import cli as study_cli

        return study_cli(rest)
    print(f"error: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
