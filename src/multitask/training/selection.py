"""``train.early_stopping``: which epoch's weights a run keeps, and when it stops.

After every epoch the validation record is scored (``select``): ``mean_accuracy``, the mean
validation accuracy of the main classification tasks (regression tasks have none and do not
count; a network with no classification task is refused: select delta_m), or ``delta_m``, Δm%
of every main task's primary validation metric (``task.metric``: accuracy, MAE) with its
direction against the single-task baselines' (the reference the baselines stage records in
``reports/baselines_info.json``). A better score than all before keeps a copy of the network's
weights; ``patience`` epochs in a row without one stop the run, and the kept weights are put
back, so what train saves and evaluate scores is the best validation epoch. Ties keep the
earlier epoch.

A single-task network (a baseline) is scored by its task's primary metric with its direction
whatever ``select`` says: Δm% of one task is a monotonic function of that metric whatever the
reference, and for a classification task it is the mean accuracy too, so the baselines share
the multi-task run's rule without a circular reference. A regression baseline's score is its
validation MAE, lower being better.

The state (best score and epoch, its weights, epochs since) travels in the trainer's
checkpoint, so an interrupted run resumes to the same choice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch import Tensor, nn

from multitask import keys
from multitask.config import EarlyStoppingConfig
from multitask.tasks import Task, main_tasks
from multitask.training.metrics import delta_m

STOPPED_EARLY = "patience"  # why a run ended: no better validation score for patience epochs
RAN_ALL = "epochs"  # or it trained every epoch


class Selection:
    """Scores each epoch, keeps the best weights, says when to stop; see the module docstring."""

    def __init__(self, config: EarlyStoppingConfig, tasks: Sequence[Task],
                 reference: Mapping[str, float] | None = None) -> None:
        self.config = config
        self.tasks = main_tasks(tasks)
        self.names = [t.name for t in self.tasks]
        self.reference = None if reference is None else {n: reference[n] for n in self.names}
        self.by_delta_m = config.select == "delta_m" and len(self.names) > 1
        self.higher_is_better = True
        self.accuracy_tasks: list[str] = []  # mean_accuracy: the tasks it averages
        if self.by_delta_m and reference is None:
            raise ValueError("train.early_stopping.select: delta_m needs the baselines' "
                             "validation metrics; run multitask baselines first (they are "
                             "in reports/baselines_info.json) or select mean_accuracy")
        if self.by_delta_m:
            self.key = keys.aggregate(keys.VAL, keys.DELTA_M)
        elif len(self.tasks) == 1 and not self.tasks[0].classification:
            only = self.tasks[0]  # a regression baseline: its own primary metric
            self.key = keys.task_metric(keys.VAL, only.name, only.metric)
            self.higher_is_better = only.higher_is_better
        else:
            self.accuracy_tasks = [t.name for t in self.tasks if t.classification]
            if not self.accuracy_tasks:
                raise ValueError(f"train.early_stopping.select: mean_accuracy: tasks "
                                 f"{self.names} have no classification task, so no accuracy; "
                                 "select delta_m")
            self.key = keys.aggregate(keys.VAL, keys.MEAN_ACCURACY)
        self.best_score: float | None = None
        self.best_epoch = 0
        self.best_state: dict[str, Tensor] | None = None
        self.since_best = 0
        self.stopped = False

    def score(self, record: Mapping[str, float]) -> float:
        if self.by_delta_m:
            assert self.reference is not None
            primary = {t.name: float(record[keys.task_metric(keys.VAL, t.name, t.metric)])
                       for t in self.tasks}
            return delta_m(primary, self.reference,
                           {t.name: t.higher_is_better for t in self.tasks})
        if not self.accuracy_tasks:  # a regression baseline's own metric
            return float(record[self.key])
        accuracy = {n: float(record[keys.task_metric(keys.VAL, n, keys.ACCURACY)])
                    for n in self.accuracy_tasks}
        return float(np.mean(list(accuracy.values())))

    def observe(self, epoch: int, record: Mapping[str, float], model: nn.Module
                ) -> dict[str, float]:
        """Score epoch ``epoch`` (1-based); keep ``model``'s weights if best. Returns the
        score under its key, for the epoch's history record."""
        score = self.score(record)
        better = (self.best_score is None or (score > self.best_score if self.higher_is_better
                                              else score < self.best_score))
        if better:
            self.best_score, self.best_epoch, self.since_best = score, epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.since_best += 1
        patience = self.config.patience
        self.stopped = patience is not None and self.since_best >= patience
        return {self.key: score}

    def restore(self, model: nn.Module) -> None:
        """Put the best epoch's weights back into ``model``."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state)

    def summary(self, epochs_run: int) -> dict[str, Any]:
        """What was kept and why the run ended, for ``train.json``, MLflow and the baselines."""
        return {"select": self.config.select, "patience": self.config.patience,
                "score_key": self.key, "best_score": self.best_score,
                "kept_epoch": self.best_epoch, "epochs_run": epochs_run,
                "stopped": STOPPED_EARLY if self.stopped else RAN_ALL}

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch,
                "best_state": self.best_state, "since_best": self.since_best,
                "stopped": self.stopped}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_score, self.best_epoch = state["best_score"], int(state["best_epoch"])
        self.best_state = state["best_state"]
        self.since_best, self.stopped = int(state["since_best"]), bool(state["stopped"])
