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
  probe RUN_DIR [overrides]
                    measure a run's saved checkpoints with probes, no training (rows into
                    RUN_DIR/posthoc_metrics.csv); e.g. `probe RUN probes=full checkpoints=last`
"""


def _run(args: list[str]) -> int:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from .config import conf_dir, register_resolvers
    from .errors import UserError

    try:
        config_path = str(conf_dir())
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    register_resolvers()

    @hydra.main(config_path=config_path, config_name="config", version_base="1.3")
    def task(cfg):
        from .run import execute

        hc = HydraConfig.get()
        run_dir = Path(hc.runtime.output_dir)
        try:
            return execute(cfg, run_dir)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            if hc.mode != RunMode.MULTIRUN:
                raise SystemExit(2)
        except Exception:
            if hc.mode != RunMode.MULTIRUN:
                raise
            # In a sweep one failing job must not stop the others: its folder keeps error.txt.
            print(f"job {hc.job.num} failed, see {run_dir / 'error.txt'}:\n{traceback.format_exc()}",
                  file=sys.stderr)
        return None

    sys.argv = ["sparsity-exp run", *args]
    task()
    return 0


def _probe(args: list[str]) -> int:
    from .errors import UserError

    if not args or args[0].startswith("-"):
        print("usage: sparsity-exp probe RUN_DIR [probes=<preset>] [checkpoints=all|last|S1,S2] [batches=N] "
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
    if command == "probe":
        return _probe(rest)
    print(f"error: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
