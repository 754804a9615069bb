"""Per-task regressions: the one rule both gates apply.

A multi-task model is not better because its average is. The promotion gate (candidate against
the registered champion) and the CI gate (pull request against its base) both ask
:class:`TaskChange` (:func:`task_regressions` for a whole mapping) which tasks got worse by
more than a tolerance, and each words the answer for its own reader.

Each task is judged on its primary metric (:attr:`multitask.tasks.Task.metric`) in that metric's
direction: accuracy (multiclass, binary) must not fall, MAE (regression) must not rise. One
tolerance, read per metric: accuracy is a share, so the tolerance is *absolute* (0.01 = one
percentage point, as before task kinds); MAE is in the target's units, which differ from task to
task, so the tolerance is *relative* to the reference's MAE (0.01 = the MAE may rise by 1%).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from multitask import keys
from multitask.tasks import KIND_METRICS

# Deltas this small are float noise: 0.81 - 0.79 must not count as more than 0.02.
EPSILON = 1e-9
# Each kind's primary metric, in the order the kinds are declared (accuracy, mae).
PRIMARY_METRICS: tuple[str, ...] = tuple(dict.fromkeys(m[0] for m in KIND_METRICS.values()))
# Metrics in a target's units: gated relative to the reference value.
RELATIVE_METRICS = frozenset({"mae", "rmse"})


def primary_metric(available: Iterable[str]) -> str | None:
    """The primary metric among a task's reported ``available`` metrics (``accuracy`` for a
    classification task, ``mae`` for a regression task); None when it reports neither."""
    names = set(available)
    return next((metric for metric in PRIMARY_METRICS if metric in names), None)


def primary_values(metrics: Mapping[str, float], split: str
                   ) -> tuple[dict[str, float], dict[str, str]]:
    """``({task: value}, {task: metric})`` of each task's primary metric among the flat
    ``<split>/<metric>/<task>`` keys of ``metrics`` (run metrics, version tags)."""
    values: dict[str, float] = {}
    names: dict[str, str] = {}
    for metric in PRIMARY_METRICS:
        for task, value in keys.task_values(metrics, split, metric).items():
            if task not in values:
                values[task], names[task] = value, metric
    return values, names


@dataclass(frozen=True)
class TaskChange:
    """One task's metric on the reference side (``base``) and the new side (``head``).

    ``relative``: the tolerance is a fraction of ``|base|`` (MAE) rather than absolute
    (accuracy).
    """

    task: str
    base: float | None
    head: float | None
    higher_is_better: bool = True
    relative: bool = False

    @classmethod
    def of(cls, task: str, metric: str, base: float | None, head: float | None) -> TaskChange:
        """The change of ``task``'s ``metric``, with that metric's direction and tolerance."""
        return cls(task, base, head, keys.higher_is_better(metric), metric in RELATIVE_METRICS)

    @property
    def delta(self) -> float | None:
        return None if self.base is None or self.head is None else self.head - self.base

    @property
    def worse_by(self) -> float | None:
        """How much worse ``head`` is than ``base`` (negative when better)."""
        delta = self.delta
        return None if delta is None else (-delta if self.higher_is_better else delta)

    def allowance(self, tolerance: float) -> float:
        """How much worse ``head`` may be: ``tolerance``, or ``tolerance * |base|``."""
        return tolerance * abs(self.base or 0.0) if self.relative else tolerance

    def regressed(self, tolerance: float) -> bool:
        """Worse by more than the allowance of ``tolerance``, missing on the new side, or not
        a number there (NaN or infinite: no comparison could pass it). Never when the reference
        is missing (a new task), nor when it is not a number (NaN or infinite alike) and the new
        side is: there is nothing to compare with, and the task is not gated."""
        if self.base is None:
            return False
        if self.head is None or not math.isfinite(self.head):
            return True
        if not math.isfinite(self.base):
            return False
        return self.worse_by > self.allowance(tolerance) + EPSILON  # type: ignore[operator]


def task_regressions(base: Mapping[str, float], head: Mapping[str, float], tolerance: float,
                     higher_is_better: Mapping[str, bool] | None = None,
                     metrics: Mapping[str, str] | None = None) -> list[TaskChange]:
    """The tasks of ``base`` whose ``head`` value is worse by more than ``tolerance`` or missing,
    in ``base``'s order. ``metrics`` (task -> metric name) gives a task its metric's direction
    and tolerance (accuracy: absolute, 0.01 = one percentage point; MAE: relative, 0.01 = 1%);
    without it ``higher_is_better`` (task -> bool, default True) sets the direction and the
    tolerance is absolute."""
    better = higher_is_better or {}
    named = metrics or {}
    changes = []
    for task, value in base.items():
        after = None if head.get(task) is None else float(head[task])
        if task in named:
            changes.append(TaskChange.of(task, named[task], float(value), after))
        else:
            changes.append(TaskChange(task, float(value), after, better.get(task, True)))
    return [change for change in changes if change.regressed(tolerance)]
