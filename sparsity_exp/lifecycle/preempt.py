"""Preemption: SIGTERM or SIGUSR1 (a cluster scheduler's warning before it kills or requeues a job)
asks the run to stop. The trainer finishes the step it is in, writes a checkpoint and raises
``Preempted``; the CLI then exits with ``REQUEUE_EXIT_CODE`` so a launcher can requeue the job, and
rerunning the same command with ``trainer.resume=auto`` continues where it stopped.
"""
from __future__ import annotations

import signal
import threading

# EX_TEMPFAIL of sysexits.h: "a temporary failure; the user is invited to retry". Distinct from 0
# (done), 1 (a crash), 2 (bad input) and from 124/137/143 (killed by timeout or a signal).
REQUEUE_EXIT_CODE = 75
SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s is not None)


class Preempted(Exception):
    """The run stopped on request after saving a checkpoint; not a failure."""

    def __init__(self, signame: str, step: int, checkpoint):
        self.signame, self.step, self.checkpoint = signame, step, checkpoint
        super().__init__(f"stopped by {signame} at step {step}; checkpoint {checkpoint}")


class StopRequest:
    """Set by a signal handler, read by the training loop at each step boundary."""

    def __init__(self):
        self.signame: str | None = None

    def __bool__(self) -> bool:
        return self.signame is not None


def catch_stop_signals(request: StopRequest, signals=SIGNALS):
    """From now on the signals only mark ``request``; returns a function that puts the previous
    handlers back. Outside the main thread (where handlers cannot be installed) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, _frame):
        request.signame = signal.Signals(signum).name

    previous = {s: signal.signal(s, handler) for s in signals}

    def restore() -> None:
        for s, h in previous.items():
            signal.signal(s, h)

    return restore
