"""A task is declared once; heads, losses, metrics, MLflow keys and the gate all follow from it.

Three kinds (the data set declares each task's kind; ``meta.json`` records it):

========== ================ =============== ========================================== ========
kind       head outputs     loss            metrics (primary first)                    target
========== ================ =============== ========================================== ========
multiclass ``num_classes``  cross-entropy   accuracy, macro-F1                         class id
binary     1 (a logit)      BCE with logits accuracy, AUROC, F1 (of the positive class) 0 or 1
regression 1                MSE or Huber    MAE, RMSE (in the target's ``unit``)       a value
========== ================ =============== ========================================== ========

A regression head predicts the standardised target ``(y - target_mean) / target_std``, with the
statistics of the training split; its loss is computed on that scale (so tasks in different
units weigh alike) and its MAE and RMSE are reported back in the target's units. Each kind's
primary metric (accuracy, accuracy, MAE) is the one Δm%, early stopping, tuning, the gates and
the README tables use; MAE is lower-is-better, so it enters Δm% with a minus sign (Maninis et
al., CVPR 2019).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["multiclass", "binary", "regression"]
KINDS: tuple[Kind, ...] = ("multiclass", "binary", "regression")

# metric -> whether larger is better
METRICS: Mapping[str, bool] = {"accuracy": True, "macro_f1": True, "auroc": True, "f1": True,
                               "mae": False, "rmse": False, "loss": False}
KIND_METRICS: Mapping[Kind, tuple[str, ...]] = {
    "multiclass": ("accuracy", "macro_f1"),
    "binary": ("accuracy", "auroc", "f1"),
    "regression": ("mae", "rmse"),
}
KIND_LOSSES: Mapping[Kind, tuple[str, ...]] = {  # the first is the default
    "multiclass": ("cross_entropy",),
    "binary": ("bce",),
    "regression": ("mse", "huber"),
}


@dataclass(frozen=True)
class Task:
    """One prediction task of the multi-task network."""

    name: str
    num_classes: int = 0  # multiclass: >= 2; binary: 2 (negative, positive); regression: 0
    kind: Kind = "multiclass"
    loss: str = ""  # one of KIND_LOSSES[kind]; "" is the kind's default
    class_names: tuple[str, ...] = ()  # classification; binary: (negative, positive)
    target_mean: float = 0.0  # regression: training-split mean and std of the target
    target_std: float = 1.0
    unit: str = ""  # regression: the target's unit, for reports ("" when it has none)
    auxiliary: bool = False  # trained on, but not a deliverable: excluded from Δm% and the gate

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task '{self.name}': kind '{self.kind}' is not one of {KINDS}")
        if not self.loss:
            object.__setattr__(self, "loss", KIND_LOSSES[self.kind][0])
        if self.loss not in KIND_LOSSES[self.kind]:
            raise ValueError(f"task '{self.name}' ({self.kind}): loss '{self.loss}' is not one "
                             f"of {KIND_LOSSES[self.kind]}")
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if self.kind == "multiclass" and self.num_classes < 2:
            raise ValueError(f"task '{self.name}' (multiclass) needs at least 2 classes, "
                             f"has {self.num_classes}")
        if self.kind == "binary" and self.num_classes != 2:
            raise ValueError(f"task '{self.name}' (binary) has 2 classes, not "
                             f"{self.num_classes}")
        if self.kind == "regression" and not self.target_std > 0:
            raise ValueError(f"task '{self.name}' (regression): target_std must be > 0, is "
                             f"{self.target_std} (a constant target cannot be learnt)")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(f"task '{self.name}': {len(self.class_names)} class names for "
                             f"{self.num_classes} classes")

    @property
    def classification(self) -> bool:
        return self.kind != "regression"

    @property
    def outputs(self) -> int:
        """Width of the task's head: a logit per class, one logit (binary) or one value."""
        return self.num_classes if self.kind == "multiclass" else 1

    @property
    def metrics(self) -> tuple[str, ...]:
        """The task's test metrics, primary first (its loss is reported beside them)."""
        return KIND_METRICS[self.kind]

    @property
    def metric(self) -> str:
        """The primary metric: Δm%, early stopping, tuning, the gates and the tables use it."""
        return self.metrics[0]

    @property
    def higher_is_better(self) -> bool:
        """Whether a larger primary metric is better (MAE: no)."""
        return METRICS[self.metric]

    def to_dict(self) -> dict[str, Any]:
        """The declaration (what :meth:`from_dict` takes back), JSON-ready."""
        return {"name": self.name, "num_classes": self.num_classes, "kind": self.kind,
                "loss": self.loss, "class_names": list(self.class_names),
                "target_mean": self.target_mean, "target_std": self.target_std,
                "unit": self.unit, "auxiliary": self.auxiliary}

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> Task:
        """A task from :meth:`to_dict`'s form; an entry saved before kinds existed (kind
        ``classification``, with ``metric`` and ``higher_is_better``) is multiclass."""
        known = {k: v for k, v in entry.items() if k in _FIELDS}
        if known.get("kind") == "classification":
            known["kind"], known["loss"] = "multiclass", ""
        return cls(**known)


_FIELDS = frozenset(Task.__dataclass_fields__)

ROTATION_TASK = Task(name="rotation", num_classes=4, auxiliary=True)


def main_tasks(tasks: Iterable[Task]) -> list[Task]:
    """The tasks users are judged on (auxiliary tasks left out)."""
    return [t for t in tasks if not t.auxiliary]


# ------------------------------------------------------------------- served columns
# What the served model and `multitask predict` answer per task
# (multitask.tracking.served): config refuses a task named as another task's column.
PROBABILITY_SUFFIX = "_probability"
DECISION_SUFFIX = "_decision"


def probability_column(task: str) -> str:
    """The column holding ``task``'s probability: of the predicted class (multiclass), of the
    positive class (binary): ``left_probability``."""
    return f"{task}{PROBABILITY_SUFFIX}"


def decision_column(task: str) -> str:
    """The column holding a binary task's 0/1 decision: ``smiling_decision``."""
    return f"{task}{DECISION_SUFFIX}"


def task_columns(task: str, kind: str) -> list[str]:
    """The served columns of ``task`` for its ``kind``, in table order."""
    if kind == "regression":
        return [task]
    if kind == "binary":
        return [task, decision_column(task), probability_column(task)]
    return [task, probability_column(task)]
