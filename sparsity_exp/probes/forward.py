"""Running a forward under probes: entering their ``observe(split)`` together, and a task's forward
with the batch's token masks on the probes' context. Used by the driver (base.py) and by the
post-hoc passes (standalone.py), and imports neither, so neither imports the other back."""
from __future__ import annotations

from contextlib import ExitStack, contextmanager


@contextmanager
def observing(probes, split: str):
    """Enter ``observe(split)`` of every probe in ``probes`` together."""
    with ExitStack() as stack:
        for p in probes:
            stack.enter_context(p.observe(split))
        yield


def run_task(task, model, batch, train: bool, context=None):
    """``task(model, batch, train)`` with the batch's token masks (``task.token_masks(batch)``, a
    sequence task's real tokens) set on ``context`` (a ProbeContext) around the forward, for the probes
    observing it."""
    masks = task.token_masks(batch) if context is not None and hasattr(task, "token_masks") else None
    if not masks:
        return task(model, batch, train=train)
    with context.masked(masks):
        return task(model, batch, train=train)
