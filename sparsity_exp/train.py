"""The training loop.

One optimizer step per batch. At every ``log_every`` steps the training batch is observed by the
probes that are due (forward and backward under their hooks) and loss/accuracy rows are written;
every ``eval_every`` steps (and at the end) the test set is evaluated under the test-split probes.
The host synchronises with the device only at those points.

Protocols and modules plug in as callbacks (``Callback``): they see the trainer before each step,
after the backward (before the optimizer step) and after the step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .batches import forever
from .checkpoint import prune_checkpoints, save_checkpoint
from .errors import UserError
from .probes import observing
from .probes.base import ProbeContext


class NonFiniteLoss(UserError):
    pass


class ClassificationTask:
    """Cross-entropy on (input, label) batches; reports summed loss and correct count on device."""

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = label_smoothing

    def __call__(self, model, batch, train: bool):
        x, y = batch
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing if train else 0.0)
        correct = (logits.detach().argmax(-1) == y).sum()
        return loss, {"correct": correct, "count": y.numel()}


class Callback:
    def on_step_start(self, trainer: "Trainer") -> None: ...

    def after_backward(self, trainer: "Trainer") -> None: ...

    def after_step(self, trainer: "Trainer") -> None: ...

    def log_rows(self, trainer: "Trainer") -> list:
        """Rows (probe, split, metric, layer, value) written at each log step (e.g. module sizes)."""
        return []


@dataclass
class Trainer:
    model: torch.nn.Module
    task: object
    optimizer: torch.optim.Optimizer
    schedule: object
    train_batches: object
    test_batches: object
    probes: list
    recorder: object
    total_steps: int
    steps_per_epoch: int
    log_every: int
    eval_every: int
    device: torch.device
    grad_clip: float = 0.0
    callbacks: list = field(default_factory=list)
    progress: bool = True
    run_dir: object = None  # checkpoints go to <run_dir>/checkpoints when set
    checkpoint_every: int = 0  # 0 = only the final checkpoint
    keep_checkpoints: int = 0  # newest K kept; 0 = all
    seed: int = 0
    step: int = 0
    last: dict = field(default_factory=dict)  # last logged values, for the bar and the summary

    def __post_init__(self):
        for p in self.probes:  # probes that save arrays or read the lr find the step and recorder here
            p.bind(self)

    @property
    def epoch(self) -> float:
        return self.step / max(1, self.steps_per_epoch)

    def _write(self, probe: str, rows) -> None:
        self.recorder.add(self.step, self.epoch, probe, rows)
        for split, metric, layer, value in rows:
            self.last[(split, probe, metric, layer)] = value

    def train_step(self, batch) -> None:
        self.model.train()
        for cb in self.callbacks:
            cb.on_step_start(self)
        log_now = self.step % self.log_every == 0
        due = [p for p in self.probes if p.due(self.step)] if log_now else []
        with observing(due, "train"):
            loss, stats = self.task(self.model, batch, train=True)
            loss.backward()
        if log_now:
            loss_v = float(loss.detach())  # host sync, only at log steps
            if not math.isfinite(loss_v):
                raise NonFiniteLoss(
                    f"training loss became {loss_v} at step {self.step}; lower optim.lr or enable "
                    f"trainer.grad_clip. Rows up to this step are in {self.recorder.path}."
                )
            self._write("train", [("train", "loss", "avg", loss_v),
                                  ("train", "accuracy", "avg", float(stats["correct"]) / stats["count"]),
                                  ("train", "lr", "avg", self.optimizer.param_groups[0]["lr"])])
            for p in due:
                self._write(p.name, p.rows("train"))
            for cb in self.callbacks:
                for probe, *row in cb.log_rows(self):
                    self._write(probe, [tuple(row)])
        for cb in self.callbacks:
            cb.after_backward(self)
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step()
        self.step += 1
        for cb in self.callbacks:
            cb.after_step(self)

    @torch.no_grad()
    def evaluate(self) -> None:
        self.model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        count = 0
        with observing(self.probes, "test"):
            for batch in self.test_batches:
                batch = tuple(t.to(self.device, non_blocking=True) for t in batch)
                loss, stats = self.task(self.model, batch, train=False)
                loss_sum += loss.double() * stats["count"]
                correct += stats["correct"]
                count += stats["count"]
        self._write("eval", [("test", "loss", "avg", float(loss_sum) / max(1, count)),
                             ("test", "accuracy", "avg", float(correct) / max(1, count))])
        for p in self.probes:
            self._write(p.name, p.rows("test"))

    def measure(self, last: bool) -> None:
        """Standalone probe measurements that are due now (expensive probes, own cadence)."""
        due = [p for p in self.probes if p.measure_due(self.step, last)]
        if not due:
            return
        ctx = ProbeContext(model=self.model, sites=due[0].sites, task=self.task, train_batches=self.train_batches,
                           test_batches=self.test_batches, device=self.device, step=self.step, seed=self.seed,
                           recorder=self.recorder, optimizer=self.optimizer)
        for p in due:
            self._write(p.name, p.measure(ctx))

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict()}

    def save_checkpoint(self) -> None:
        if self.run_dir is None:
            return
        save_checkpoint(self.run_dir, self.step, self.state_dict())
        prune_checkpoints(self.run_dir, self.keep_checkpoints)

    def fit(self) -> None:
        batches = forever(self.train_batches)
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not self.progress, dynamic_ncols=True,
                   desc="train")
        try:
            if self.step == 0:
                self.evaluate()
                self.measure(last=False)
                if self.checkpoint_every:
                    self.save_checkpoint()
                self.recorder.flush()
            while self.step < self.total_steps:
                batch = tuple(t.to(self.device, non_blocking=True) for t in next(batches))
                logged = self.step % self.log_every == 0
                self.train_step(batch)
                last = self.step == self.total_steps
                evaluated = self.step % self.eval_every == 0 or last
                if evaluated:
                    self.evaluate()
                self.measure(last)
                if last or (self.checkpoint_every and self.step % self.checkpoint_every == 0):
                    self.save_checkpoint()
                if logged or evaluated:
                    self.recorder.flush()
                    bar.set_postfix(self._postfix(), refresh=False)
                bar.update(1)
        finally:
            bar.close()
            self.recorder.flush()

    def _postfix(self) -> dict:
        out = {}
        for key, label in ((("train", "train", "loss", "avg"), "loss"),
                           (("train", "train", "accuracy", "avg"), "acc"),
                           (("test", "eval", "accuracy", "avg"), "test_acc"),
                           (("train", "sparsity", "activation_sparsity", "avg"), "sparsity")):
            if key in self.last:
                out[label] = f"{self.last[key]:.3f}"
        return out

