"""What a trial may vary: the task weights on the simplex, the learning rate, the method.

The weights of the T trained tasks come from T-1 free coordinates ``simplex/<task>`` in [0, 1]
by stick-breaking: task i takes ``z_i = 1 - (1 - u_i)^(1/(T-1-i))`` of what is still feasible
for it, so that without bounds uniform coordinates are uniform on the simplex (two tasks:
``w_first = u``). ``tune.weight_range = [low, high]`` bounds every *normalised* weight; each
coordinate's feasible interval already accounts for the tasks after it, so every sample sums to
one within the bounds (possible when ``low * T <= 1 <= high * T``). The coordinates have fixed
[0, 1] ranges, which TPE needs; the weights themselves are stored on the trial.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from optuna.trial import Trial

from multitask.config import EarlyStoppingConfig, Params, TrainConfig, tune_task_problems
from multitask.tasks import Task, main_tasks
from multitask.training.session import weights_method
from multitask.weighting import WeightingMethod, build_weighting


@dataclass(frozen=True)
class Choice:
    """What one trial trains with."""

    method: str
    weights: dict[str, float] | None  # static only: one weight per task, summing to one
    lr: float | None  # None: train.optimizer.lr

    def weighting_method(self, tasks: Sequence[Task], params: Params) -> WeightingMethod:
        if self.weights is None:
            return build_weighting(self.method, len(tasks), params.train.method_params,
                                   where=params.source)
        return weights_method(self.weights, list(tasks), f"{params.source}: tune")


# The ``train`` keys a trial trains with (see trial_config), so the keys of the study's
# identity: a change to any of them starts a new study (tuning.study.setup). The tune stage
# lists the same keys as its params in dvc.yaml (a test holds the two together).
TRIAL_TRAIN_KEYS = ("batch_size", "optimizer", "schedule", "seed", "method_params",
                    "encoder_lr_scale", "label_smoothing", "augment")


def trial_config(params: Params, lr: float | None = None) -> TrainConfig:
    """``train`` with a trial's learning rate and no gradient diagnostics (pure cost here).

    The regularisation is the run's own (weight decay, label smoothing, augmentation; dropout
    comes with ``model``), so trials choose weights for the network that will be trained.
    Early stopping is off: a trial trains ``tune.epochs`` and is scored on its last epoch, the
    one the pruner saw reported (pruning is the trials' stopping rule)."""
    update: dict[str, Any] = {"diagnostics_every": 0,
                              "early_stopping": EarlyStoppingConfig()}
    if lr is not None:
        update["optimizer"] = params.train.optimizer.model_copy(update={"lr": lr})
    return params.train.model_copy(update=update)


def simplex_weights(coordinates: Sequence[float], low: float, high: float) -> list[float]:
    """Map T-1 coordinates in [0, 1] to T weights summing to one, each within [low, high].

    See the module docstring: stick-breaking with Beta(1, k) inverse CDFs, so that with
    ``low=0, high=1`` uniform coordinates are uniform on the simplex.
    """
    count = len(coordinates) + 1
    remaining, weights = 1.0, []
    for index, u in enumerate(coordinates):
        after = count - index - 1  # tasks still to receive a weight after this one
        lowest = max(low, remaining - after * high)
        highest = min(high, remaining - after * low)
        share = 1.0 - (1.0 - u) ** (1.0 / after)
        weights.append(lowest + share * (highest - lowest))
        remaining -= weights[-1]
    return [*weights, remaining]


@dataclass(frozen=True)
class SearchSpace:
    """What trials vary, from ``params.tune`` and the data set's tasks; validated on creation."""

    tasks: tuple[str, ...]  # every trained task, auxiliary ones included (each needs a weight)
    objectives: tuple[str, ...]  # main tasks: their validation accuracies are judged
    weight_range: tuple[float, float]
    lr_range: tuple[float, float] | None
    methods: tuple[str, ...]

    @classmethod
    def from_params(cls, params: Params, tasks: Sequence[Task], source: str) -> SearchSpace:
        """Check what needs the task count (method names were checked when params loaded)."""
        tune = params.tune
        methods = tuple(tune.methods or ["static"])
        objectives = tuple(t.name for t in main_tasks(tasks))
        regression = [t.name for t in main_tasks(tasks) if not t.classification]
        if problems := tune_task_problems(tune, len(tasks), objectives, regression, source):
            raise ValueError("\n".join(problems))
        return cls(tuple(t.name for t in tasks), objectives, tune.weight_range,
                   tune.lr_range if tune.tune_lr else None, methods)

    def suggest(self, trial: Trial) -> Choice:
        method = (trial.suggest_categorical("method", list(self.methods))
                  if len(self.methods) > 1 else self.methods[0])
        weights = None
        if method == "static":
            coordinates = [trial.suggest_float(f"simplex/{name}", 0.0, 1.0)
                           for name in self.tasks[:-1]]
            values = simplex_weights(coordinates, *self.weight_range)
            weights = dict(zip(self.tasks, values, strict=True))
        lr = None if self.lr_range is None else trial.suggest_float("lr", *self.lr_range, log=True)
        return Choice(str(method), weights, lr)
