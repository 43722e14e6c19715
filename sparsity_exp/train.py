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
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import resume
from .checkpoint import checkpoint_path, prune_checkpoints, save_checkpoint
from .distributed import probe_rows, sum_over_ranks
from .errors import UserError
from .preempt import Preempted, StopRequest, catch_stop_signals
from .state import BatchStream
from .probes import observing
from .probes.base import ProbeContext


class NonFiniteLoss(UserError):
    pass


class ClassificationTask:
    """Cross-entropy on (input, label) batches; reports summed loss and correct count on device.

    ``batch_transform`` (training only, e.g. MixUp/CutMix) maps (x, labels) to (x', soft labels);
    accuracy is then counted against the original labels."""

    def __init__(self, label_smoothing: float = 0.0, batch_transform=None):
        self.label_smoothing = label_smoothing
        self.batch_transform = batch_transform

    def __call__(self, model, batch, train: bool):
        x, y = batch
        target = y
        if train and self.batch_transform is not None:
            x, target = self.batch_transform(x, y)
        logits = model(x)
        loss = F.cross_entropy(logits, target, label_smoothing=self.label_smoothing if train else 0.0)
        correct = (logits.detach().argmax(-1) == y).sum()
        return loss, {"correct": correct, "count": y.numel()}

    @staticmethod
    def loss_weight(batch) -> int:
        """How many terms the batch's mean loss averages (gradient accumulation weighs by it)."""
        return len(batch[0])


class Seq2SeqTask:
    """Sequence to sequence on (input_ids, attention_mask, labels) batches (labels -100 = padding):
    the loss is the model's own (mean token cross-entropy), accuracy is token accuracy on the label
    tokens. With ``mask_padding`` the real tokens of each stack are marked
    (``probes.masking.token_masks``) around the forward, so token-level probes leave padding out;
    the authors counted every token (``data.mask_padding=false``)."""

    def __init__(self, mask_padding: bool = True):
        self.mask_padding = mask_padding

    def __call__(self, model, batch, train: bool):
        from .probes.masking import token_masks

        input_ids, attention_mask, labels = batch
        real = labels != -100  # decoder position t reads token t-1 and predicts label t
        masks = {"encoder": attention_mask.bool(), "decoder": real} if self.mask_padding else {}
        with token_masks(**masks):
            out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        correct = ((out.logits.detach().argmax(-1) == labels) & real).sum()
        return out.loss, {"correct": correct, "count": real.sum()}

    @staticmethod
    def loss_weight(batch):
        return (batch[2] != -100).sum()


class Callback:
    """Optional ``state_dict()`` / ``load_state_dict(state)``: the trainer checkpoints what they return
    (tensors and plain types) under ``callbacks`` and hands it back on resume."""

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
    # the training forward/backward runs through forward_model (DDP and/or torch.compile around
    # model; None = model); steps that probes observe run through eager_model (DDP, not compiled:
    # hooks on a compiled model's submodules are not reliably called). model stays the bare module.
    forward_model: object = None
    eager_model: object = None
    precision: str = "fp32"  # fp32 | bf16 (autocast around forwards; parameters and optimizer stay fp32)
    grad_accum: int = 1  # each batch runs as this many micro-batches, gradients summed
    step: int = 0
    last: dict = field(default_factory=dict)  # last logged values, for the bar and the summary
    last_at: dict = field(default_factory=dict)  # the step each of them is from
    batches: object = None  # the endless training stream (state.BatchStream), made by fit
    resumed: bool = False  # True once a checkpoint was loaded: the step-0 evaluation is in metrics.csv
    stop: StopRequest = field(default_factory=StopRequest)  # set by SIGTERM/SIGUSR1 during fit
    _first_nonfinite: torch.Tensor = None  # on the device: first step whose loss was not finite, or -1

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
            self.last_at[(split, probe, metric, layer)] = self.step

    def train_step(self, batch) -> None:
        if not self.model.training:  # evaluate/measure switch the whole model to eval; walking the
            self.model.train()       # module tree on every step costs ~3% of a small model's step
        for cb in self.callbacks:
            cb.on_step_start(self)
        log_now = self.step % self.log_every == 0
        due = [p for p in self.probes if p.due(self.step)] if log_now else []
        fast = self.model if self.forward_model is None else self.forward_model
        net = (fast if self.eager_model is None else self.eager_model) if due else fast
        with observing(due, "train"):
            loss, stats = self._forward_backward(batch, net)
        self._watch_loss(loss)
        if log_now:
            self.check_finite()
            # host sync, only at log steps; sums over ranks under data parallel training
            loss_sum, correct, count = sum_over_ranks(
                [loss.detach().double() * stats["count"], stats["correct"], stats["count"]], self.device)
            loss_v = loss_sum / count
            self._write("train", [("train", "loss", "avg", loss_v),
                                  ("train", "accuracy", "avg", correct / count),
                                  ("train", "lr", "avg", self.optimizer.param_groups[0]["lr"])])
            for p in due:
                self._write(p.name, probe_rows(p, "train"))
            for cb in self.callbacks:
                for probe, *row in cb.log_rows(self):
                    self._write(probe, [tuple(row)])
        elif self.step == self.total_steps - 1:
            self._remember_final_train(loss, stats)
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

    def _remember_final_train(self, loss, stats) -> None:
        """The last step's training loss and accuracy for the summary, when it is not a log step
        (kept in ``last`` only: metrics.csv keeps its log cadence)."""
        loss_sum, correct, count = sum_over_ranks(
            [loss.detach().double() * stats["count"], stats["correct"], stats["count"]], self.device)
        for metric, value in (("loss", loss_sum / count), ("accuracy", correct / count)):
            self.last[("train", "train", metric, "avg")] = value
            self.last_at[("train", "train", metric, "avg")] = self.step

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def _forward_backward(self, batch, net=None):
        """Forward and backward of one batch through ``net`` (the model, or its DDP/compiled
        wrapper). With ``grad_accum`` > 1 the batch runs as that many micro-batches, each loss
        weighted by its share of the batch's loss terms, so the summed gradient (and the per-token
        gradients probes see) equal those of the whole batch. Under DDP only the last micro-batch
        all-reduces gradients."""
        net = self.model if net is None else net
        if self.grad_accum <= 1:
            with self.autocast():
                loss, stats = self.task(net, batch, train=True)
            loss.backward()
            return loss, stats
        chunks = list(zip(*(t.chunk(self.grad_accum) for t in batch)))
        weigh = getattr(self.task, "loss_weight", lambda b: len(b[0]))
        weights = [weigh(c) for c in chunks]
        total = sum(weights)
        loss_sum, correct, count = 0.0, 0, 0
        for k, (chunk, w) in enumerate(zip(chunks, weights)):
            last = k == len(chunks) - 1
            with nullcontext() if last or not hasattr(net, "no_sync") else net.no_sync():
                with self.autocast():
                    loss, stats = self.task(net, chunk, train=True)
                (loss * (w / total)).backward()
            loss_sum = loss_sum + loss.detach() * (w / total)
            correct = correct + stats["correct"]
            count = count + stats["count"]
        return loss_sum, {"correct": correct, "count": count}

    @torch.no_grad()
    def evaluate(self) -> None:
        self.model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        count = 0
        with observing(self.probes, "test"):
            for batch in self.test_batches:
                batch = tuple(t.to(self.device, non_blocking=True) for t in batch)
                with self.autocast():
                    loss, stats = self.task(self.model, batch, train=False)
                loss_sum += loss.double() * stats["count"]
                correct += stats["correct"]
                count += stats["count"]
        loss_sum, correct, count = sum_over_ranks([loss_sum, correct, count], self.device)
        self._write("eval", [("test", "loss", "avg", loss_sum / max(1, count)),
                             ("test", "accuracy", "avg", correct / max(1, count))])
        for p in self.probes:
            self._write(p.name, probe_rows(p, "test"))

    def measure(self, last: bool) -> None:
        """Standalone probe measurements that are due now (expensive probes, own cadence)."""
        due = [p for p in self.probes if p.measure_due(self.step, last)]
        if not due:
            return
        self.check_finite()  # a measurement of non-finite weights would fail with a less helpful error
        ctx = ProbeContext(model=self.model, sites=due[0].sites, task=self.task, train_batches=self.train_batches,
                           test_batches=self.test_batches, device=self.device, step=self.step, seed=self.seed,
                           recorder=self.recorder, optimizer=self.optimizer)
        for p in due:
            self._write(p.name, p.measure(ctx))

    def _watch_loss(self, loss: torch.Tensor) -> None:
        """Remember the first step with a non-finite loss on the device (no host sync per step)."""
        if self._first_nonfinite is None:
            self._first_nonfinite = torch.full((), -1, dtype=torch.int64, device=loss.device)
        bad = ~torch.isfinite(loss.detach()) & (self._first_nonfinite < 0)
        self._first_nonfinite = torch.where(bad, self.step, self._first_nonfinite)

    def check_finite(self) -> None:
        """Stop on a non-finite loss: save the state as it is (for a post-mortem, never resumed
        from) and name the step. Checked at log steps and before every checkpoint."""
        if self._first_nonfinite is None or (bad_step := int(self._first_nonfinite)) < 0:
            return
        self.recorder.flush()
        where = ""
        if self.run_dir is not None:
            path = checkpoint_path(self.run_dir, self.step).with_name(f"nonfinite_step_{self.step:08d}.pt")
            save_checkpoint(self.run_dir, self.step, self.state_dict(), path=path)
            where = f" The state at step {self.step} is in {path};"
        raise NonFiniteLoss(
            f"training loss became non-finite at step {bad_step}.{where} rows logged before step {self.step} are in "
            f"{self.recorder.path}. Lower optim.lr or set trainer.grad_clip (e.g. 1.0), then start a new run."
        )

    def state_dict(self) -> dict:
        return resume.capture(self)

    def load_state_dict(self, state: dict) -> None:
        resume.restore(self, state)

    def save_checkpoint(self):
        if self.run_dir is None:
            return None
        self.check_finite()  # never write a checkpoint that a resume would continue from with NaNs
        self.recorder.flush()  # the checkpoint records the metrics file's length after this
        path = save_checkpoint(self.run_dir, self.step, self.state_dict())
        prune_checkpoints(self.run_dir, self.keep_checkpoints)
        return path

    def fit(self) -> None:
        """Train to ``total_steps``. On SIGTERM/SIGUSR1 finish the current step, save a checkpoint and
        raise ``Preempted``."""
        batches = self.batches = self.batches or BatchStream(self.train_batches)
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not self.progress, dynamic_ncols=True,
                   desc="train")
        restore_signals = catch_stop_signals(self.stop)
        try:
            if self.step == 0 and not self.resumed:
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
                if self.stop and not last:
                    raise Preempted(self.stop.signame, self.step, self.save_checkpoint())
        finally:
            restore_signals()
            bar.close()
            self.recorder.flush()

    def _postfix(self) -> dict:
        out = {}
        for key, label in ((("train", "train", "loss", "avg"), "loss"),
                           (("train", "train", "accuracy", "avg"), "acc"),
                           (("test", "eval", "accuracy", "avg"), "test_acc"),
                           (("train", "sparsity", "activation_sparsity", "avg"), "sparsity")):
            if key in self.last:
                if label == "test_acc":  # measured every eval_every steps: say at which step
                    label = f"test_acc@{self.last_at[key]}" if key in self.last_at else label
                out[label] = f"{self.last[key]:.3f}"
        return out

