"""Per-task regressions: the one rule both gates apply.

A multi-task model is not better because its average is. The promotion gate (candidate against
the registered champion) and the CI gate (pull request against its base) both ask
:func:`task_regressions` which tasks got worse by more than a tolerance, and word the answer
with :meth:`TaskChange.describe`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# Deltas this small are float noise: 0.81 - 0.79 must not count as more than 0.02.
EPSILON = 1e-9


@dataclass(frozen=True)
class TaskChange:
    """One task's metric on the reference side (``base``) and the new side (``head``)."""

    task: str
    base: float | None
    head: float | None
    higher_is_better: bool = True

    @property
    def delta(self) -> float | None:
        return None if self.base is None or self.head is None else self.head - self.base

    @property
    def worse_by(self) -> float | None:
        """How much worse ``head`` is than ``base`` (negative when better)."""
        delta = self.delta
        return None if delta is None else (-delta if self.higher_is_better else delta)

    def regressed(self, tolerance: float) -> bool:
        """Worse by more than ``tolerance``, or missing on the new side."""
        if self.base is None:
            return False
        worse_by = self.worse_by
        return worse_by is None or worse_by > tolerance + EPSILON


def task_regressions(base: Mapping[str, float], head: Mapping[str, float], tolerance: float,
                     higher_is_better: Mapping[str, bool] | None = None) -> list[TaskChange]:
    """The tasks of ``base`` whose ``head`` value is worse by more than ``tolerance`` (absolute:
    0.01 = one percentage point of accuracy) or missing, in ``base``'s order."""
    better = higher_is_better or {}
    changes = [TaskChange(task, float(value), None if head.get(task) is None
                          else float(head[task]), better.get(task, True))
               for task, value in base.items()]
    return [change for change in changes if change.regressed(tolerance)]
