"""``<run>/run.log``: what the run printed (its summary, warnings, errors, the final state of the
progress bar), appended line by line while it still goes to the terminal. Hydra opens the file for
its own logging; the run itself prints, so without this the file stays empty."""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path


class _Tee:
    """A text stream that writes to ``stream`` and, by whole lines, to ``log``; of a line redrawn
    with carriage returns (a progress bar) only its last state goes into the log."""

    def __init__(self, stream, log):
        self._stream, self._log, self._partial = stream, log, ""

    def write(self, text: str) -> int:
        n = self._stream.write(text)
        self._partial += text
        if "\n" in self._partial:
            *lines, self._partial = self._partial.split("\n")
            for line in lines:
                self._log.write(line.split("\r")[-1] + "\n")
            self._log.flush()
        return n

    def flush(self) -> None:
        self._stream.flush()
        self._log.flush()

    def __getattr__(self, name):  # isatty, encoding, fileno ... as the terminal stream has them
        return getattr(self._stream, name)


@contextlib.contextmanager
def tee_to_run_log(run_dir: Path, enabled: bool = True):
    """Copy stdout and stderr into ``run_dir/run.log`` while the block runs."""
    if not enabled or not Path(run_dir).is_dir():
        yield
        return
    with open(Path(run_dir) / "run.log", "a", encoding="utf-8") as log:
        out, err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(out, log), _Tee(err, log)
        try:
            yield
        finally:
            for tee in (sys.stdout, sys.stderr):
                if isinstance(tee, _Tee) and tee._partial:
                    log.write(tee._partial.split("\r")[-1] + "\n")
            sys.stdout, sys.stderr = out, err
