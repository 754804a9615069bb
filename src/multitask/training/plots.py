"""Figures people would rather look at than read: learning curves, weights, confusion matrices,
predicted-vs-true and residual plots of regression tasks.

matplotlib is imported here only, with the non-interactive Agg backend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from multitask import keys
from multitask.io import atomic_path


def learning_curves(history: Sequence[dict[str, float]], task_names: Sequence[str],
                    units: Mapping[str, str] | None = None) -> Figure:
    """Per-task training loss, validation loss, accuracy (when a task has one: classification)
    and MAE (when a task has one: regression, titled with the regression tasks' ``units`` when
    they share one), and task weights, per epoch."""
    epochs = [row[keys.EPOCH] for row in history]
    named = set((units or {}).values())
    mae_unit = named.pop() if len(named) == 1 and "" not in named else "target units"

    def recorded(metric: str) -> bool:
        return any(keys.task_metric(keys.VAL, t, metric) in row
                   for row in history for t in task_names)

    panels = [(lambda t: keys.task_metric(keys.TRAIN, t, keys.LOSS), "training loss"),
              (lambda t: keys.task_metric(keys.VAL, t, keys.LOSS), "validation loss")]
    if recorded(keys.ACCURACY):
        panels.append((lambda t: keys.task_metric(keys.VAL, t, keys.ACCURACY),
                       "validation accuracy"))
    if recorded(keys.MAE):
        panels.append((lambda t: keys.task_metric(keys.VAL, t, keys.MAE),
                       f"validation MAE ({mae_unit})"))
    panels.append((keys.weight, "task weight"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2),
                             constrained_layout=True)
    for ax, (key_of, title) in zip(axes, panels, strict=True):
        # a task keeps its colour in every panel: the legend is drawn on the first panel only,
        # and a panel that skips a task (no accuracy for a regression) must not shift the rest
        for index, name in enumerate(task_names):
            key = key_of(name)
            values = [row.get(key, np.nan) for row in history]
            if not np.all(np.isnan(values)):
                ax.plot(epochs, values, marker="o", markersize=3, label=name,
                        color=f"C{index % 10}")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend()
    return fig


def confusion_figure(matrix: np.ndarray, class_names: Sequence[str], title: str) -> Figure:
    """A row-normalised confusion matrix with the counts written in each cell."""
    counts = np.asarray(matrix)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.5, 5.5), constrained_layout=True)
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(ticks, class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    for (row, col), count in np.ndenumerate(counts):
        ax.text(col, row, str(count), ha="center", va="center", fontsize=6,
                color="white" if rates[row, col] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of actual class")
    return fig


def regression_figure(predicted: np.ndarray, actual: np.ndarray, title: str, unit: str = ""
                      ) -> Figure:
    """Predicted against true values (the diagonal is a perfect prediction) beside the
    residuals (predicted - true) against the true value, both in the target's ``unit``."""
    predicted, actual = np.asarray(predicted, dtype=float), np.asarray(actual, dtype=float)
    suffix = f" ({unit})" if unit else ""
    fig, (scatter, residual) = plt.subplots(1, 2, figsize=(10, 4.2), constrained_layout=True)
    low, high = float(min(actual.min(), predicted.min())), float(max(actual.max(),
                                                                     predicted.max()))
    scatter.scatter(actual, predicted, s=6, alpha=0.5)
    scatter.plot([low, high], [low, high], color="black", linewidth=1, label="predicted = true")
    scatter.set_xlabel(f"true{suffix}")
    scatter.set_ylabel(f"predicted{suffix}")
    scatter.set_title(f"{title}: predicted vs true")
    scatter.legend(loc="upper left")
    residual.scatter(actual, predicted - actual, s=6, alpha=0.5)
    residual.axhline(0.0, color="black", linewidth=1)
    residual.set_xlabel(f"true{suffix}")
    residual.set_ylabel(f"residual, predicted - true{suffix}")
    residual.set_title(f"{title}: residuals")
    for ax in (scatter, residual):
        ax.grid(alpha=0.3)
    return fig


def save_figure(fig: Figure, path: str | Path, **kwargs: Any) -> None:
    """Save as PNG atomically and release the figure."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, **kwargs)
    plt.close(fig)
