"""A task is declared once; heads, losses, metrics, MLflow keys and the gate all follow from it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Task:
    """One prediction task of the multi-task network."""

    name: str
    num_classes: int
    kind: Literal["classification"] = "classification"
    loss: Literal["cross_entropy"] = "cross_entropy"
    metric: Literal["accuracy"] = "accuracy"
    higher_is_better: bool = True
    auxiliary: bool = False  # trained on, but not a deliverable: excluded from Δm% and the gate

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ROTATION_TASK = Task(name="rotation", num_classes=4, auxiliary=True)


def main_tasks(tasks: Iterable[Task]) -> list[Task]:
    """The tasks users are judged on (auxiliary tasks left out)."""
    return [t for t in tasks if not t.auxiliary]
