"""The training loop.

One optimizer step per batch. A probe observes the training batches of its own ``every`` cadence
(forward and backward under its hooks, any cadence down to every step); every ``log_every`` steps
loss/accuracy rows and the rows of the probes that observed since the last log step are written
(the ``ProbeSet`` in probes/base.py drives the probes). Every ``eval_every`` steps (and at the end)
the test set is evaluated under the test-split probes. The host synchronises with the device only
at log, evaluation and checkpoint steps.

Protocols and modules plug in as callbacks (``Callback``): they see the trainer before each step,
after the backward (before the optimizer step) and after the step.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .batches import to_device
from .lifecycle import checkpoint
from .lifecycle.checkpoint import checkpoint_path, prune_checkpoints, save_checkpoint
from .distributed import sum_over_ranks
from .errors import UserError
from .lifecycle.preempt import Preempted, StopRequest, catch_stop_signals
from .lifecycle.state import BatchStream
from .probes.base import ProbeContext, ProbeSet


class NonFiniteLoss(UserError):
    pass


class ClassificationTask:
    """Cross-entropy on (input, label) batches; returns the batch-mean loss and the correct count (on
    the device) with the example count, from which the trainer forms sums over batches and ranks.

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
    tokens. With ``mask_padding`` ``token_masks(batch)`` names the real tokens of each stack, which
    the probe driver puts on the probes' context around the forward, so token-level probes leave
    padding out; the authors counted every token (``data.mask_padding=false``)."""

    def __init__(self, mask_padding: bool = True):
        self.mask_padding = mask_padding

    def token_masks(self, batch) -> dict:
        """Stack -> bool [batch, tokens], True = a real token (decoder position t predicts label t)."""
        if not self.mask_padding:
            return {}
        _, attention_mask, labels = batch
        return {"encoder": attention_mask.bool(), "decoder": labels != -100}

    def __call__(self, model, batch, train: bool):
        input_ids, attention_mask, labels = batch
        real = labels != -100  # decoder position t reads token t-1 and predicts label t
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
    probes: ProbeSet  # the probe driver and its context (a plain list of probes is wrapped, see __post_init__)
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
    # model; None = model); steps observed by probes that are not compile_safe run through
    # eager_model (DDP, not compiled: hooks added to a compiled model's submodules are skipped).
    # model stays the bare module.
    forward_model: object = None
    eager_model: object = None
    precision: str = "fp32"  # fp32 | bf16 (autocast around forwards; parameters and optimizer stay fp32)
    grad_accum: int = 1  # each batch runs as this many micro-batches, gradients summed
    step: int = 0
    batches: object = None  # the endless training stream (state.BatchStream), made by fit
    resumed: bool = False  # True once a checkpoint was loaded: the step-0 evaluation is in metrics.csv
    stop: StopRequest = field(default_factory=StopRequest)  # set by SIGTERM/SIGUSR1 during fit
    _losses: list = field(default_factory=list)  # (step, detached loss) since the last finiteness check
    _first_nonfinite: int = -1  # the first step whose loss was not finite, once a check has seen it

    def __post_init__(self):
        # the probe driver; its context (built whole by run.py, Assembly.probe_context) is what
        # probes read. A plain list of probes (unit use) gets a context built here from these fields.
        if not isinstance(self.probes, ProbeSet):
            self.probes = ProbeSet(self.probes, ProbeContext(
                model=self.model, sites=list(self.probes[0].sites) if self.probes else [], task=self.task,
                train_batches=self.train_batches, test_batches=self.test_batches, device=self.device,
                seed=self.seed, recorder=self.recorder, optimizer=self.optimizer,
                steps_per_epoch=self.steps_per_epoch, grad_accum=self.grad_accum))
        self.probes.context.step = self.step
        self._fast = self.model if self.forward_model is None else self.forward_model
        self._observed = self._fast if self.eager_model is None else self.eager_model  # hooks need eager modules
        self._bf16 = self.precision == "bf16"

    @property
    def epoch(self) -> float:
        return self.probes.context.epoch  # the context keeps step and steps_per_epoch current

    @property
    def last(self) -> dict:
        """Last logged values, (split, probe, metric, layer) -> value, for the bar and the summary."""
        return self.probes.last

    @property
    def last_at(self) -> dict:
        """The step each value of ``last`` is from (the bar labels a test accuracy with its step)."""
        return self.probes.last_at

    def _at(self, step: int) -> None:
        self.step = self.probes.context.step = step

    def _write(self, probe: str, rows) -> None:
        self.probes.write(probe, rows)

    def train_step(self, batch) -> None:
        """One optimizer step. Kept lean: a step that neither observes nor logs runs the forward,
        backward, optimizer and schedule and a handful of attribute reads, no extra device work."""
        if not self.model.training:  # evaluate/measure switch the whole model to eval; walking the
            self.model.train()       # module tree on every step costs ~3% of a small model's step
        for cb in self.callbacks:
            cb.on_step_start(self)
        step = self.step
        due = self.probes.due(step)
        if due:
            # compile-safe probes observe the compiled forward itself (hooks traced before compiling);
            # any other due probe needs the eager modules
            net = self._observed if any(not p.compile_safe for p in due) else self._fast
            with self.probes.observe(due, "train"):
                loss, stats = self._forward_backward(batch, net, masked=True)
        else:
            loss, stats = self._forward_backward(batch, self._fast)
        self._losses.append((step, loss))
        if len(self._losses) >= 4096:
            self._first_bad_step()
        if step % self.log_every == 0:
            self._log_train(loss, stats)
        elif step == self.total_steps - 1:  # the summary's training loss/accuracy are the last step's
            self._remember_final_train(loss, stats)
        for cb in self.callbacks:
            cb.after_backward(self)
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step()
        self._at(step + 1)
        for cb in self.callbacks:
            cb.after_step(self)

    def _log_train(self, loss, stats) -> None:
        """Loss, accuracy and lr rows, the rows of the probes that observed since the last log step,
        and the callbacks' rows. The one host sync of a log step (summed over ranks under DDP)."""
        self.check_finite()
        loss_sum, correct, count = sum_over_ranks(
            [loss.double() * stats["count"], stats["correct"], stats["count"]], self.device)
        self._write("train", [("train", "loss", "avg", loss_sum / count),
                              ("train", "accuracy", "avg", correct / count),
                              ("train", "lr", "avg", self.optimizer.param_groups[0]["lr"])])
        self.probes.write_train()
        for cb in self.callbacks:
            for probe, *row in cb.log_rows(self):
                self._write(probe, [tuple(row)])

    def _remember_final_train(self, loss, stats) -> None:
        """The last step's training loss and accuracy for the summary, when it is not a log step
        (kept in ``last`` only: metrics.csv keeps its log cadence)."""
        loss_sum, correct, count = sum_over_ranks(
            [loss.detach().double() * stats["count"], stats["correct"], stats["count"]], self.device)
        for metric, value in (("loss", loss_sum / count), ("accuracy", correct / count)):
            self.last[("train", "train", metric, "avg")] = value
            self.last_at[("train", "train", metric, "avg")] = self.step

    def autocast(self):
        if not self._bf16:  # entering a disabled autocast still costs a few microseconds per forward
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _task(self, net, batch, train: bool, masked: bool):
        if masked:  # probes observe: the task's token masks go on their context around the forward
            return self.probes.task(self.task, net, batch, train)
        return self.task(net, batch, train=train)

    def _forward_backward(self, batch, net=None, masked: bool = False):
        """Forward and backward of one batch through ``net`` (the model, or its DDP/compiled
        wrapper). With ``grad_accum`` > 1 the batch runs as that many micro-batches, each loss
        weighted by its share of the batch's loss terms, so the summed gradient (and the per-token
        gradients probes see) equal those of the whole batch. Under DDP only the last micro-batch
        all-reduces gradients. Returns the detached loss."""
        net = self.model if net is None else net
        if self.grad_accum <= 1:
            with self.autocast():
                loss, stats = self._task(net, batch, True, masked)
            loss.backward()
            return loss.detach(), stats
        chunks = list(zip(*(t.chunk(self.grad_accum) for t in batch)))
        weigh = getattr(self.task, "loss_weight", lambda b: len(b[0]))
        weights = [weigh(c) for c in chunks]
        total = sum(weights)
        loss_sum, correct, count = 0.0, 0, 0
        for k, (chunk, w) in enumerate(zip(chunks, weights)):
            last = k == len(chunks) - 1
            with nullcontext() if last or not hasattr(net, "no_sync") else net.no_sync():
                with self.autocast():
                    loss, stats = self._task(net, chunk, True, masked)
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
        with self.probes.observe(self.probes, "test"):
            for batch in self.test_batches:
                batch = to_device(batch, self.device)
                with self.autocast():
                    loss, stats = self._task(self.model, batch, False, masked=True)
                loss_sum += loss.double() * stats["count"]
                correct += stats["correct"]
                count += stats["count"]
        loss_sum, correct, count = sum_over_ranks([loss_sum, correct, count], self.device)
        self._write("eval", [("test", "loss", "avg", loss_sum / max(1, count)),
                             ("test", "accuracy", "avg", correct / max(1, count))])
        self.probes.write_test()

    def measure(self, last: bool) -> None:
        """Standalone probe measurements that are due now (expensive probes, own cadence)."""
        if any(p.measure_due(self.step, last) for p in self.probes.measurers()):
            self.check_finite()  # a measurement of non-finite weights would fail with a less helpful error
            self.probes.measure(last)

    # Losses are kept as device scalars and checked at log steps and before checkpoints: no device
    # work and no host sync on other steps (a long stretch without a check is checked every 4096 steps).
    def _first_bad_step(self) -> int:
        """The first step whose loss was not finite, or -1 (one host sync when losses are pending)."""
        if self._losses:
            finite = torch.isfinite(torch.stack([loss.float().reshape(()) for _, loss in self._losses])).tolist()
            steps, self._losses = [s for s, _ in self._losses], []
            if self._first_nonfinite < 0:
                self._first_nonfinite = next((s for s, ok in zip(steps, finite) if not ok), -1)
        return self._first_nonfinite

    def check_finite(self) -> None:
        """Stop on a non-finite loss: save the state as it is (for a post-mortem, never resumed
        from) and name the step. Checked at log steps and before every checkpoint."""
        if (bad_step := self._first_bad_step()) < 0:
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
        return checkpoint.capture(self)

    def load_state_dict(self, state: dict) -> None:
        checkpoint.restore(self, state)
        self._at(self.step)

    def save_checkpoint(self):
        if self.run_dir is None:
            return None
        self.check_finite()  # never write a checkpoint that a resume would continue from with NaNs
        self.recorder.flush(durable=True)  # the checkpoint records the metrics file's length after this
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
                batch = to_device(next(batches), self.device)
                logged = self.step % self.log_every == 0
                self.train_step(batch)
                last = self.step == self.total_steps
                evaluated = self.step % self.eval_every == 0 or last
                if evaluated:
                    self.evaluate()
                self.measure(last)
                if last or (self.checkpoint_every and self.step % self.checkpoint_every == 0):
                    self.probes.write_train()  # observations not yet written (a cadence off the log steps)
                    self.save_checkpoint()
                if logged or evaluated:
                    self.recorder.flush()
                    bar.set_postfix(self._postfix(), refresh=False)
                bar.update(1)
                if self.stop and not last:
                    self.probes.write_train()
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

