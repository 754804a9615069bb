"""Per-task evaluation by kind (:mod:`multitask.tasks`) and Δm%, the multi-task gain over
single-task baselines."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from multitask import keys
from multitask.device import autocast
from multitask.models.base import MultiTaskModel
from multitask.tasks import Task
from multitask.training.data import ProcessedData, targets

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """Per-task metrics of one split; the confusion matrix of each classification task and the
    (value, target) pairs of each regression task."""

    metrics: dict[str, dict[str, float]]  # task -> {metric: value, ..., "loss": value}
    confusion: dict[str, Tensor]  # classification task -> (classes, classes), rows = actual
    # regression task -> (N, 2) float64: predicted value, target (the target's units)
    predictions: dict[str, Tensor] = field(default_factory=dict)

    def warn_undefined(self, split: str, report: str) -> None:
        """One warning per task with a metric that is not a number on ``split`` (an AUROC of
        a split that holds one class of a binary task): written as NaN into ``report``."""
        for task, values in self.metrics.items():
            undefined = sorted(name for name, value in values.items() if not math.isfinite(value))
            if undefined:
                why = ("an AUROC needs both classes in the split; the validate stage's summary "
                       "counts each split's classes" if keys.AUROC in undefined else
                       "the network's outputs or the loss were not finite")
                log.warning("%s split, task %s: %s not defined (%s); written as NaN in %s",
                            split, task, ", ".join(undefined), why, report)


def macro_f1(confusion: Tensor) -> float:
    """The mean F1 over the classes that occur in the targets or the predictions
    (``confusion`` rows = actual): ``F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c)``; a class that
    occurs but is never predicted right scores 0."""
    counts = confusion.double()
    true_positive = counts.diagonal()
    actual, predicted = counts.sum(dim=1), counts.sum(dim=0)
    denominator = actual + predicted  # = 2 TP + FP + FN
    present = denominator > 0
    return float((2 * true_positive[present] / denominator[present]).mean())


def binary_f1(confusion: Tensor) -> float:
    """F1 of the positive class (index 1) from a 2x2 confusion matrix (rows = actual); 0 when
    there is no positive among the targets nor the predictions."""
    true_positive = float(confusion[1, 1])
    denominator = 2 * true_positive + float(confusion[0, 1]) + float(confusion[1, 0])
    return 2 * true_positive / denominator if denominator else 0.0


def auroc(scores: Tensor, labels: Tensor) -> float:
    """Area under the ROC curve: the probability that a random positive scores above a random
    negative, ties counting one half (Mann-Whitney U / (P N), ranks of tied scores averaged).
    NaN when ``labels`` hold one class only (the area is undefined)."""
    scores, positive = scores.double().flatten(), labels.flatten() > 0.5
    positives = int(positive.sum())
    negatives = len(positive) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    _, group, counts = torch.unique(scores, sorted=True, return_inverse=True,
                                    return_counts=True)
    before = torch.cumsum(counts, 0) - counts  # scores strictly below each distinct value
    ranks = (before + (counts + 1) / 2.0).double()[group]  # 1-based, ties averaged
    u = float(ranks[positive].sum()) - positives * (positives + 1) / 2
    return u / (positives * negatives)


@torch.inference_mode()
def evaluate(model: MultiTaskModel, data: ProcessedData, split: str, tasks: Sequence[Task],
             batch_size: int = 1024) -> Evaluation:
    """Each task's metrics (``task.metrics``) and mean loss on ``split``, by kind:

    - multiclass: accuracy, macro-F1 (:func:`macro_f1`), cross-entropy; confusion matrix;
    - binary: accuracy of the decision ``logit > 0``, AUROC of the logit (:func:`auroc`), F1 of
      the positive class, BCE; 2x2 confusion matrix;
    - regression: MAE and RMSE of ``output * target_std + target_mean`` in the target's units,
      the loss on the standardised scale (MSE or Huber, as trained); the (value, target) pairs.

    Losses are without label smoothing. Auxiliary tasks are left out: their targets are not
    part of the data set.
    """
    model.eval()
    scored = [(data.label_column(t.name), t) for t in tasks if not t.auxiliary]
    loss_sum = {t.name: torch.zeros((), device=data.device, dtype=torch.float64) for _, t in scored}
    confusion = {t.name: torch.zeros(t.num_classes, t.num_classes, dtype=torch.int64,
                                     device=data.device) for _, t in scored if t.classification}
    collected: dict[str, list[tuple[Tensor, Tensor]]] = {
        t.name: [] for _, t in scored if t.kind != "multiclass"}
    for x, y in data.batches(split, batch_size):
        with autocast(data.device):
            outputs = model(x)
        for i, task in scored:
            logits = outputs[task.name].float()
            target = targets(y, i, task)
            if task.kind == "multiclass":
                loss_sum[task.name] += F.cross_entropy(logits, target, reduction="sum").double()
                predicted = logits.argmax(dim=1)
            elif task.kind == "binary":
                loss_sum[task.name] += F.binary_cross_entropy_with_logits(
                    logits.squeeze(1), target, reduction="sum").double()
                collected[task.name].append((logits.squeeze(1), target))
                predicted = (logits.squeeze(1) > 0).long()
            else:
                standardised = (target - task.target_mean) / task.target_std
                loss = F.huber_loss if task.loss == "huber" else F.mse_loss
                loss_sum[task.name] += loss(logits.squeeze(1), standardised,
                                            reduction="sum").double()
                value = logits.squeeze(1).double() * task.target_std + task.target_mean
                collected[task.name].append((value, target.double()))
                continue
            flat = target.long() * task.num_classes + predicted
            confusion[task.name] += torch.bincount(
                flat, minlength=task.num_classes ** 2).view(task.num_classes, task.num_classes)
    count = len(data.splits[split])
    metrics: dict[str, dict[str, float]] = {}
    predictions: dict[str, Tensor] = {}
    for _, task in scored:
        name = task.name
        loss = float(loss_sum[name]) / count
        if task.kind == "multiclass":
            metrics[name] = {keys.ACCURACY: float(confusion[name].diagonal().sum()) / count,
                             keys.MACRO_F1: macro_f1(confusion[name]), keys.LOSS: loss}
            continue
        scores, truth = (torch.cat(parts) for parts in zip(*collected[name], strict=True))
        if task.kind == "binary":
            metrics[name] = {keys.ACCURACY: float(confusion[name].diagonal().sum()) / count,
                             keys.AUROC: auroc(scores, truth), keys.F1: binary_f1(confusion[name]),
                             keys.LOSS: loss}
            continue
        error = scores - truth
        metrics[name] = {keys.MAE: float(error.abs().mean()),
                         keys.RMSE: float(error.square().mean().sqrt()), keys.LOSS: loss}
        predictions[name] = torch.stack([scores, truth], dim=1).cpu()
    model.train()
    return Evaluation(metrics, {k: v.cpu() for k, v in confusion.items()}, predictions)


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
