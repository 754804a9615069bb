"""Per-task evaluation and Δm%, the multi-task gain over single-task baselines."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from multitask import keys
from multitask.device import autocast
from multitask.models.base import MultiTaskModel
from multitask.tasks import Task
from multitask.training.data import ProcessedData


@dataclass
class Evaluation:
    """Per-task metrics of one split, and the confusion matrix of each task."""

    metrics: dict[str, dict[str, float]]  # task -> {"accuracy": ..., "loss": ...}
    confusion: dict[str, Tensor]  # task -> (classes, classes) counts, rows = actual


@torch.inference_mode()
def evaluate(model: MultiTaskModel, data: ProcessedData, split: str, tasks: Sequence[Task],
             batch_size: int = 1024) -> Evaluation:
    """Accuracy, mean cross-entropy and confusion matrix per task on ``split``.

    Auxiliary tasks are left out: their targets are not part of the data set.
    """
    model.eval()
    scored = [(data.label_column(t.name), t) for t in tasks if not t.auxiliary]
    loss_sum = {t.name: torch.zeros((), device=data.device, dtype=torch.float64) for _, t in scored}
    confusion = {t.name: torch.zeros(t.num_classes, t.num_classes, dtype=torch.int64,
                                     device=data.device) for _, t in scored}
    for x, y in data.batches(split, batch_size):
        with autocast(data.device):
            outputs = model(x)
        for i, task in scored:
            logits = outputs[task.name].float()
            loss_sum[task.name] += F.cross_entropy(logits, y[:, i], reduction="sum").double()
            flat = y[:, i] * task.num_classes + logits.argmax(dim=1)
            confusion[task.name] += torch.bincount(
                flat, minlength=task.num_classes ** 2).view(task.num_classes, task.num_classes)
    count = len(data.splits[split])
    metrics = {
        name: {
            keys.ACCURACY: float(confusion[name].diagonal().sum()) / count,
            keys.LOSS: float(loss_sum[name]) / count,
        }
        for name in loss_sum
    }
    model.train()
    return Evaluation(metrics, {k: v.cpu() for k, v in confusion.items()})


def delta_m(metrics: Mapping[str, float], baselines: Mapping[str, float],
            higher_is_better: Mapping[str, bool]) -> float:
    """Δm% of Maninis et al. (CVPR 2019): the mean relative change against the baselines.

    ``Δm = (1/T) Σ_t (-1)^{l_t} (M_t - B_t) / B_t × 100``, with ``l_t = 1`` when lower is
    better for task ``t``. Positive means the multi-task model beats its single-task models.
    """
    if set(metrics) != set(baselines):
        raise ValueError(
            f"Δm% needs the same tasks in model and baselines: {sorted(metrics)} vs "
            f"{sorted(baselines)}; rerun multitask baselines"
        )
    total = 0.0
    for task, value in metrics.items():
        base = baselines[task]
        if base == 0:
            raise ValueError(f"Δm%: baseline metric of task '{task}' is 0; cannot divide by it")
        sign = 1.0 if higher_is_better[task] else -1.0
        total += sign * (value - base) / base
    return 100.0 * total / len(metrics)
