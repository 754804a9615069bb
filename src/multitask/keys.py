"""Every metric key, spelt once: MLflow metrics, DVC metrics and plots, reports, gates.

Per-task metrics are ``<split>/<metric>/<task>`` (``train/loss/left``, ``val/accuracy/left``,
``test/accuracy/left``), task weights ``weight/<task>``, aggregates ``test/mean_accuracy`` and
``test/delta_m_pct``; the metrics are each task kind's (:data:`multitask.tasks.KIND_METRICS`:
``test/mae/age``, ``val/auroc/smiling``). The task comes last because MLflow's UI groups a run's
charts into sections by everything before a key's last ``/``: ``val/accuracy`` is one section
holding every task's validation accuracy side by side (with ``val/<task>/accuracy`` each task
had its own section).
The trainer and stages produce them with the functions below; plots, tuning, promotion and the
CI report read them with the same functions, so a renamed or new metric changes here and in its
producer only.

``reports/metrics.json`` and ``reports/baselines.json`` nest the same names:
``{"tasks": {task: {metric: value}}, "mean_accuracy": ..., "delta_m_pct": ...}``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from multitask.tasks import METRICS

TRAIN, VAL, TEST = "train", "val", "test"
ACCURACY, LOSS = "accuracy", "loss"
# the other per-kind metrics (multitask.tasks.KIND_METRICS lists which kind reports which)
MACRO_F1, AUROC, F1, MAE, RMSE = "macro_f1", "auroc", "f1", "mae", "rmse"
TASKS = "tasks"  # the per-task mapping of metrics.json and baselines.json
MEAN_ACCURACY = "mean_accuracy"
DELTA_M = "delta_m_pct"

EPOCH = "epoch"
LR = "lr"
EPOCH_SECONDS = "time/epoch_s"
TRAIN_IMAGES_PER_S = "time/train_images_per_s"

# promote.aggregate -> the run metric it compares
AGGREGATES: Mapping[str, str] = {"delta_m": f"{TEST}/{DELTA_M}",
                                 "mean_accuracy": f"{TEST}/{MEAN_ACCURACY}"}

_TASK_METRIC = re.compile(r"(?P<split>train|val|test)/(?P<metric>[^/]+)/(?P<task>[^/]+)")


def task_metric(split: str, task: str, metric: str) -> str:
    """``val/accuracy/left``."""
    return f"{split}/{metric}/{task}"


def weight(task: str) -> str:
    """The task's mean loss weight over an epoch: ``weight/left``."""
    return f"weight/{task}"


def aggregate(split: str, name: str) -> str:
    """``test/mean_accuracy``, ``test/delta_m_pct``."""
    return f"{split}/{name}"


def parse_task_metric(key: str) -> tuple[str, str, str] | None:
    """``(split, task, metric)`` of a per-task key; None for any other key."""
    match = _TASK_METRIC.fullmatch(key)
    return None if match is None else (match["split"], match["task"], match["metric"])


def task_values(metrics: Mapping[str, float], split: str, metric: str) -> dict[str, float]:
    """``{task: value}`` of every ``<split>/<metric>/<task>`` key in ``metrics``."""
    found = {}
    for key, value in metrics.items():
        parsed = parse_task_metric(key)
        if parsed is not None and parsed[0] == split and parsed[2] == metric:
            found[parsed[1]] = float(value)
    return found


def split_metrics(split: str, per_task: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """``{task: {metric: v}}`` -> ``{"<split>/<metric>/<task>": v}``."""
    return {task_metric(split, task, metric): float(value)
            for task, values in per_task.items() for metric, value in values.items()}


def flat_test_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """``reports/metrics.json`` as MLflow run metrics: per task, then the aggregates."""
    flat = split_metrics(TEST, report[TASKS])
    for name in (MEAN_ACCURACY, DELTA_M):
        if name in report:
            flat[aggregate(TEST, name)] = float(report[name])
    return flat


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is better: :data:`multitask.tasks.METRICS` says so
    for a task metric (MAE, RMSE and losses are not); any other key containing ``loss`` is
    not either."""
    return METRICS.get(metric, LOSS not in metric)
