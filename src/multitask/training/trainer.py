"""The training loop: per-task losses -> weighting method -> optimiser, checkpointed each epoch.

One step: ``features = model.encode(x)``, ``outputs = model.decode(features)``, one loss per task,
then the weighting method turns the losses (and, for gradient methods, per-task gradients) into
``.grad`` and the optimiser steps. Each epoch ends with a validation pass, a history record and an
atomic checkpoint holding everything needed to continue bit-for-bit: model, optimiser,
scheduler, weighting state, RNG states, the history so far and, with early stopping, the best
epoch's weights (:mod:`.selection`). Regularisation: ``train.label_smoothing`` in every
classification loss (:func:`task_loss`), ``train.augment`` on each batch (:mod:`.augment`).

Under torchrun each process trains on its share of every global batch and the step stays the
one-process step (:mod:`multitask.training.distributed` says how); only rank 0 writes the
checkpoint and reports epochs.

One module, not several: the step, the epoch and the checkpoint that must restore both read
as one; split, what a checkpoint holds would live apart from the loop whose state it is.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from multitask import keys
from multitask.config import TrainConfig
from multitask.device import autocast
from multitask.io import atomic_path
from multitask.models.base import MultiTaskModel
from multitask.tasks import Task
from multitask.training import distributed
from multitask.training.augment import Augmenter
from multitask.training.checkpoints import load_checkpoint, tensors_to
from multitask.training.data import ProcessedData, targets
from multitask.training.metrics import evaluate
from multitask.training.optimization import build_optimizer, build_scheduler, freeze_shared
from multitask.training.selection import Selection
from multitask.weighting import StepContext, WeightingMethod

log = logging.getLogger(__name__)
FAIL_AFTER_EPOCH_ENV = "MULTITASK_FAIL_AFTER_EPOCH"  # tests only: raise after this epoch
# tests only: "<folder>:<n>": after its first epoch each run waits (up to BARRIER_WAIT_S) until
# n runs have reached that point, so that runs meant to log at the same time surely do
BARRIER_ENV, BARRIER_WAIT_S = "MULTITASK_EPOCH_BARRIER", 120.0

EpochCallback = Callable[[int, dict[str, float]], None]


def _meet(barrier: str) -> None:
    """Test hook (:data:`BARRIER_ENV`): mark this process as arrived in the barrier's folder
    and wait for the others."""
    folder, count = barrier.rsplit(":", 1)
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / str(os.getpid())).touch()
    deadline = time.monotonic() + BARRIER_WAIT_S
    while len(list(Path(folder).iterdir())) < int(count) and time.monotonic() < deadline:
        time.sleep(0.2)


class NonFiniteLossError(RuntimeError):
    """A task's training loss became NaN or infinite: the run stops, nothing is saved.

    ``what`` says where (epoch and tasks) without the advice that follows it in the message,
    for callers that give their own (a tuning trial's lr and weights are its own choice)."""

    def __init__(self, what: str, advice: str) -> None:
        super().__init__(f"{what}; {advice}")
        self.what = what

    def advising(self, advice: str) -> NonFiniteLossError:
        """The same failure with the advice of the stage that trained (the trainer's names the
        multi-task run's weights and learning rate)."""
        return NonFiniteLossError(self.what, advice)


def random_turns(count: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """A random multiple of 90° (0..3) per image, for the auxiliary rotation task."""
    return torch.randint(0, 4, (count,), generator=generator).to(device)


def rotate_batch(x: Tensor, turns: Tensor) -> Tensor:
    """Each image of ``x`` turned by ``turns`` × 90°."""
    rotated = x.clone()
    for k in range(1, 4):
        picked = turns == k
        rotated[picked] = torch.rot90(x[picked], k, dims=(2, 3))
    return rotated


def task_loss(task: Task, output: Tensor, target: Tensor, label_smoothing: float = 0.0
              ) -> Tensor:
    """The mean loss of ``task``'s head ``output`` against ``target`` (:func:`targets`'s dtype).

    - multiclass: cross-entropy; with ``label_smoothing`` ε each target is
      ``(1 - ε) one_hot + ε / classes``;
    - binary: BCE with logits on the one logit; with ε the target is ``(1 - ε) y + ε / 2``
      (the two-class case of the same smoothing);
    - regression: MSE or Huber (δ = 1) between the output and the standardised target
      ``(y - target_mean) / target_std``; ε does not apply.
    """
    if task.kind == "multiclass":
        return F.cross_entropy(output, target, label_smoothing=label_smoothing)
    if task.kind == "binary":
        if label_smoothing:
            target = target * (1.0 - label_smoothing) + label_smoothing / 2
        return F.binary_cross_entropy_with_logits(output.squeeze(1), target)
    standardised = (target - task.target_mean) / task.target_std
    if task.loss == "huber":
        return F.huber_loss(output.squeeze(1), standardised, delta=1.0)
    return F.mse_loss(output.squeeze(1), standardised)


def task_losses(model: MultiTaskModel, tasks: Sequence[Task], columns: Sequence[int | None],
                x: Tensor, y: Tensor, turns: Tensor | None = None, label_smoothing: float = 0.0
                ) -> tuple[Tensor, Tensor | tuple[Tensor, ...]]:
    """One loss per task (stacked, shape [T], each :func:`task_loss`) and the shared
    representation.

    ``columns[t]`` is task ``t``'s column in ``y`` (``None`` for auxiliary tasks).

    With the auxiliary rotation task, ``turns`` (see :func:`random_turns`) extends the batch by
    a rotated copy of itself: the main tasks are scored on the originals, the rotation head on
    the copies. Without main tasks (self-supervised pretraining) the batch is the copies alone.
    """
    batch = len(x) if any(column is not None for column in columns) else 0
    if turns is not None:
        rotated = rotate_batch(x, turns)
        x = torch.cat([x, rotated]) if batch else rotated
    with autocast(x.device):
        features = model.encode(x)
        outputs = model.decode(features)
    losses = []
    for task, column in zip(tasks, columns, strict=True):
        logits = outputs[task.name].float()
        if column is None:
            losses.append(F.cross_entropy(logits[batch:], turns,
                                          label_smoothing=label_smoothing))
        else:
            losses.append(task_loss(task, logits[:batch], targets(y, column, task),
                                    label_smoothing))
    return torch.stack(losses), features


@dataclass
class Trainer:
    """Trains ``model`` on ``data`` with ``method``; see the module docstring."""

    model: MultiTaskModel
    tasks: list[Task]
    method: WeightingMethod
    data: ProcessedData
    config: TrainConfig
    epochs: int | None = None  # default: config.epochs
    data_fraction: float | None = None  # default: config.data_fraction
    checkpoint_path: Path | None = None
    fingerprint: str = ""  # a checkpoint with another fingerprint is not resumed
    on_epoch: EpochCallback | None = None
    progress: bool = True
    history: list[dict[str, float]] = field(default_factory=list)
    # the processes training together (torchrun), None alone; default: the current group
    group: distributed.ProcessGroup | None = field(default_factory=distributed.active)
    # the first epochs train the task-specific parameters only (model.freeze_encoder_epochs)
    freeze_encoder_epochs: int = 0
    # the single-task baselines' primary validation metrics (early stopping by delta_m)
    reference: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        self.epochs = self.epochs or self.config.epochs
        fraction = (self.config.data_fraction if self.data_fraction is None
                    else self.data_fraction)
        self.device = self.data.device
        self.columns = [None if t.auxiliary else self.data.label_column(t.name) for t in self.tasks]
        self.model.to(self.device, memory_format=torch.channels_last)
        self.method.to(self.device)
        self._parameters = [*self.model.parameters(), *self.method.parameters()]
        self.optimizer = build_optimizer(self._parameters, self.config.optimizer,
                                         encoder=self.model.shared_parameters(),
                                         encoder_lr_scale=self.config.encoder_lr_scale)
        self.scheduler = build_scheduler(self.optimizer, self.config.schedule, self.epochs)
        stopping = self.config.early_stopping
        self.selection = (None if stopping.patience is None
                          else Selection(stopping, self.tasks, self.reference))
        self.augment = Augmenter(self.config.augment) if self.config.augment.active else None
        torch.manual_seed(self.config.seed)
        self.generator = torch.Generator().manual_seed(self.config.seed)
        n_train = len(self.data.splits["train"])
        self.subset: Tensor | None = None
        if fraction < 1.0:
            keep = max(1, int(fraction * n_train))
            fixed = torch.Generator().manual_seed(self.config.seed)
            order = torch.randperm(n_train, generator=fixed)
            self.subset = order[:keep].sort().values.to(self.device)
        self.train_size = n_train if self.subset is None else len(self.subset)
        self.start_epoch = 0
        self.step = 0
        if self.group is not None:
            if self.config.batch_size < self.group.world:
                raise ValueError(
                    f"train.batch_size: {self.config.batch_size} is the global batch; it cannot "
                    f"be split among {self.group.world} processes (train.processes)")
            # Same seed, same network; rank 0's values make sure of it.
            self.group.broadcast([*self.model.state_dict().values(), *self.method.parameters()])

    @property
    def main(self) -> bool:
        """Whether this process writes (alone, or rank 0 of a group)."""
        return self.group is None or self.group.main

    # ----------------------------------------------------------------------- checkpoints
    def _state(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "epoch": self.start_epoch,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "method": self.method.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "generator": self.generator.get_state(),
            "history": self.history,
            "selection": None if self.selection is None else self.selection.state_dict(),
        }

    def save_checkpoint(self) -> None:
        if self.checkpoint_path is None or not self.main:
            return
        with atomic_path(self.checkpoint_path) as tmp:
            torch.save(self._state(), tmp)

    def _read_checkpoint(self, device: torch.device) -> dict[str, Any] | None:
        """The checkpoint's state if it exists and belongs to this run, else None."""
        path = self.checkpoint_path
        if path is None or not path.is_file():
            return None
        state = load_checkpoint(path, device)
        if state is not None and state.get("fingerprint") != self.fingerprint:
            log.info("%s: checkpoint of other params or data; starting from scratch", path)
            return None
        return state

    def try_resume(self) -> bool:
        """Load the checkpoint if it exists and belongs to this run; return whether it did.

        In a process group rank 0 alone reads it, the one that wrote it, and hands the state to
        the others: on several hosts the other ranks' checkouts do not hold it, and each rank
        must continue from the same epoch with the same state.
        """
        if self.group is None:
            state = self._read_checkpoint(self.device)
        else:
            state = self._read_checkpoint(torch.device("cpu")) if self.main else None
            state = tensors_to(self.group.share(state), self.device)
        if state is None:
            return False
        path = self.checkpoint_path
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.method.load_state_dict(state["method"])
        torch.set_rng_state(state["torch_rng"].cpu())
        if self.device.type == "cuda" and state["cuda_rng"]:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        self.generator.set_state(state["generator"].cpu())
        self.history = list(state["history"])
        if self.selection is not None:
            self.selection.load_state_dict(state["selection"])
        self.start_epoch, self.step = int(state["epoch"]), int(state["step"])
        log.info("resumed from %s after epoch %d", path if self.main else f"rank 0's {path}",
                 self.start_epoch)
        return True

    # -------------------------------------------------------------------------- training
    def _frozen_step(self, losses: Tensor) -> Tensor:
        """A step while the encoder is frozen: each head learns from its own task's loss.

        Every head reads only its own loss, so the weighting method (whose job is to arbitrate
        between tasks in the shared parameters) is not consulted; the weights are recorded as 1.
        """
        losses.sum().backward()
        return torch.ones(len(self.tasks))

    def _diagnostics_due(self) -> bool:
        every = self.config.diagnostics_every
        return every > 0 and self.step % every == 0

    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        frozen = epoch < self.freeze_encoder_epochs
        freeze_shared(self.model, frozen)
        names = [t.name for t in self.tasks]
        loss_sum = torch.zeros(len(self.tasks), device=self.device)
        weight_sum = torch.zeros(len(self.tasks), device=self.device)
        diagnostics: dict[str, list[float]] = {}
        steps = 0
        batches = self.data.batch_rows("train", self.config.batch_size,
                                       generator=self.generator, subset=self.subset)
        total = math.ceil(self.train_size / self.config.batch_size)
        bar = tqdm(batches, total=total, desc=f"epoch {epoch + 1}/{self.epochs}",
                   # None: shown on a terminal only, so logs hold no bar redraws
                   disable=None if self.progress and self.main else True, leave=False,
                   unit="batch")
        shared = self.model.shared_parameters()
        rotation = any(column is None for column in self.columns)
        group = self.group
        for rows in bar:
            count = len(rows)
            turns = random_turns(count, self.generator, self.device) if rotation else None
            draws = None if self.augment is None else self.augment.draw(count, self.generator)
            if group is not None:  # this process's share of the global batch
                if count < group.world:
                    continue
                mine = group.rows(count)
                rows, turns = rows[mine], None if turns is None else turns[mine]
                draws = None if draws is None else draws[mine]
            x, y = self.data.take("train", rows, draws if draws is None
                                  else partial(self.augment.apply, draws=draws))
            smoothing = self.config.label_smoothing
            losses, features = task_losses(self.model, self.tasks, self.columns, x, y, turns,
                                           smoothing)
            if group is not None:
                losses = group.global_losses(losses, len(x), count)
            if self._diagnostics_due() and not frozen:
                from multitask.weighting.diagnostics import gradient_diagnostics  # when due

                for key, value in gradient_diagnostics(losses, shared, names, group).items():
                    diagnostics.setdefault(key, []).append(value)
            self.optimizer.zero_grad(set_to_none=True)
            weights = self._frozen_step(losses) if frozen else self.method.backward(
                StepContext(losses, features, shared, self.step, epoch, group))
            if group is not None:
                group.average_gradients(self._parameters)
            self.optimizer.step()
            # FAMO: this batch's losses after the step
            if self.method.needs_losses_after_step and not frozen:
                with torch.no_grad():
                    after, _ = task_losses(self.model, self.tasks, self.columns, x, y, turns,
                                           smoothing)
                    if group is not None:
                        after = group.global_losses(after, len(x), count)
                self.method.after_step(after)
            loss_sum += losses.detach()
            weight_sum += weights.to(self.device)
            steps += 1
            self.step += 1
            if steps % 20 == 0:
                bar.set_postfix({n: f"{v:.3f}" for n, v in zip(names, (loss_sum / steps).tolist(),
                                                             strict=True)})
        bar.close()
        if group is not None:  # batch-norm statistics: rank 0's, so every copy is the same
            group.broadcast(self.model.buffers())
        mean_losses = loss_sum / steps
        if not bool(torch.isfinite(mean_losses).all()):  # one check per epoch: no step syncs
            broken = [n for n, v in zip(names, mean_losses.tolist(), strict=True)
                      if not math.isfinite(v)]
            raise NonFiniteLossError(
                f"epoch {epoch + 1}: the training loss of task(s) {broken} is not finite (NaN or "
                "inf)", "stopped before saving this epoch. Lower the task weights "
                "(train.method_params, reports/tuning/weights.json) or train.optimizer.lr")
        self.method.end_epoch(epoch, mean_losses.detach())
        record = {keys.task_metric(keys.TRAIN, n, keys.LOSS): v
                  for n, v in zip(names, mean_losses.tolist(), strict=True)}
        record.update({keys.weight(n): v
                       for n, v in zip(names, (weight_sum / steps).tolist(), strict=True)})
        record.update({k: sum(v) / len(v) for k, v in diagnostics.items()})
        record.update(self.method.metrics())
        return record

    def fit(self) -> list[dict[str, float]]:
        """Train from ``start_epoch`` (see :meth:`try_resume`); return the per-epoch history.

        With early stopping, stops when patience runs out and leaves the best epoch's weights
        in the model."""
        for epoch in range(self.start_epoch, self.epochs):
            if self.selection is not None and self.selection.stopped:
                break  # a resumed run that had already stopped
            started = time.perf_counter()
            record: dict[str, float] = {keys.EPOCH: epoch + 1,
                                        keys.LR: self.optimizer.param_groups[0]["lr"]}
            record.update(self.train_epoch(epoch))
            self.scheduler.step()
            train_seconds = time.perf_counter() - started
            val = evaluate(self.model, self.data, keys.VAL, self.tasks)
            record.update(keys.split_metrics(keys.VAL, val.metrics))
            if self.selection is not None:
                record.update(self.selection.observe(epoch + 1, record, self.model))
            record[keys.EPOCH_SECONDS] = time.perf_counter() - started
            record[keys.TRAIN_IMAGES_PER_S] = self.train_size / train_seconds
            self.history.append(record)
            self.start_epoch = epoch + 1
            self.save_checkpoint()
            log.info("epoch %d/%d %s", epoch + 1, self.epochs, "  ".join(
                f"{k}={v:.4f}" for k, v in record.items()
                if keys.parse_task_metric(k) is not None))
            if self.on_epoch is not None and self.main:
                self.on_epoch(epoch + 1, record)
            if epoch == 0 and (barrier := os.environ.get(BARRIER_ENV)):
                _meet(barrier)
            if os.environ.get(FAIL_AFTER_EPOCH_ENV) == str(epoch + 1):
                # Test hook: a crash mid-training must leave the MLflow run FAILED.
                raise RuntimeError(f"{FAIL_AFTER_EPOCH_ENV}={epoch + 1}: injected failure")
        if self.selection is not None:
            self.selection.restore(self.model)
        return self.history
