"""Several ``sparsity-exp run -m`` launches in one process, one after the other (study/execute.py).

A study launches one ``run -m`` per arm (its pending seeds). Run as separate processes, each arm paid
process start and imports (a few seconds each) and, with the basic launcher, decoding its dataset
again; here they all share one process: the imports are paid once, the basic launcher's jobs share the
decoded datasets (data/images.py keeps them per process), and under ``hydra/launcher=local`` loky's
reusable worker pool serves every arm's jobs, so each worker starts (and decodes) once. Every job still
gets its own run folder, and ``trainer.resume=auto`` still skips completed runs.

    python -m sparsity_exp.study.launch < launches.json    # [{"name": ARM, "args": [run -m args...]}, ...]

After each launch a line ``LAUNCHED <name> exit <code> after <seconds> s`` (the exit code that
``sparsity-exp run -m`` would have returned); a launch that crashes does not stop the next one.
"""
from __future__ import annotations

import json
import sys
import time
import traceback

from .execute import MARK


def main() -> int:
    from hydra.core.global_hydra import GlobalHydra

    from ..cli import main as cli_main

    launches = json.load(sys.stdin)
    worst = 0
    for item in launches:
        GlobalHydra.instance().clear()  # each launch composes its own config, as a fresh process would
        started = time.perf_counter()
        print(f"$ run {' '.join(item['args'])}", flush=True)
        try:
            code = cli_main(["run", *item["args"]])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except Exception:  # noqa: BLE001 - one arm's crash must not stop the others
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        print(f"{MARK} {item['name']} exit {code} after {time.perf_counter() - started:.0f} s", flush=True)
        worst = worst or code
    return worst


if __name__ == "__main__":
    sys.exit(main())
