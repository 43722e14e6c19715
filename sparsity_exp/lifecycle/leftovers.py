"""What a killed process can leave in a run folder, and how the next process that owns the folder
(holding its lock, having accepted to continue it) tidies up:

  * temporary files of atomic writes cut short: ``checkpoints/.step_*.tmp`` (tens of MB each),
    ``.summary.json.*.tmp`` and other ``.<name>.*.tmp`` beside the run's files, ``arrays/tmp*.npz``;
    nothing else writes them, and the lock says no other process is writing now.

(A completed run killed between its last checkpoint and its quick-look figure gets the figure
drawn when the folder is next visited: that is the run's business, ``run.ensure_quicklook``; the
folder helpers draw nothing.)"""
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
