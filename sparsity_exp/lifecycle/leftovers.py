"""What a killed process can leave in a run folder, and how the next process that owns the folder
(holding its lock, having accepted to continue it) tidies up:

  * temporary files of atomic writes cut short: ``checkpoints/.step_*.tmp`` (tens of MB each),
    ``.summary.json.*.tmp`` and other ``.<name>.*.tmp`` beside the run's files, ``arrays/tmp*.npz``;
    nothing else writes them, and the lock says no other process is writing now;
  * a completed run killed between its last checkpoint and its quick-look figure: the figure is
    drawn from ``metrics.csv`` when the folder is next visited."""
from __future__ import annotations

import sys
from pathlib import Path

TEMPORARY = ("checkpoints/.step_*.tmp", ".*.tmp", "arrays/tmp*.npz", "arrays/.*.tmp")


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete the temporary files of interrupted atomic writes; return what was removed."""
    removed = []
    for pattern in TEMPORARY:
        for path in Path(run_dir).glob(pattern):
            if path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    if removed:
        print(f"removed {len(removed)} temporary file(s) left by an interrupted write in {run_dir}", file=sys.stderr)
    return removed


def ensure_quicklook(run_dir: Path) -> bool:
    """Draw ``quicklook.png`` of a completed run that lacks it; return whether it was drawn."""
    import pandas as pd

    from ..plots.quicklook import sparsity_per_layer
    from ..record import METRICS_FILE

    run_dir = Path(run_dir)
    figure, metrics = run_dir / "quicklook.png", run_dir / METRICS_FILE
    if figure.exists() or not metrics.is_file():
        return False
    sparsity_per_layer(pd.read_csv(metrics), figure)
    return True
