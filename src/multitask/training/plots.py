"""Figures people would rather look at than read: learning curves, weights, confusion matrices.

matplotlib is imported here only, with the non-interactive Agg backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from multitask import keys
from multitask.io import atomic_path


def learning_curves(history: Sequence[dict[str, float]], task_names: Sequence[str]) -> Figure:
    """Per-task training loss, validation loss and accuracy, and task weights, per epoch."""
    epochs = [row[keys.EPOCH] for row in history]
    panels = [(lambda t: keys.task_metric(keys.TRAIN, t, keys.LOSS), "training loss"),
              (lambda t: keys.task_metric(keys.VAL, t, keys.LOSS), "validation loss"),
              (lambda t: keys.task_metric(keys.VAL, t, keys.ACCURACY), "validation accuracy"),
              (keys.weight, "task weight")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2),
                             constrained_layout=True)
    for ax, (key_of, title) in zip(axes, panels, strict=True):
        for name in task_names:
            key = key_of(name)
            values = [row.get(key, np.nan) for row in history]
            if not np.all(np.isnan(values)):
                ax.plot(epochs, values, marker="o", markersize=3, label=name)
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


def save_figure(fig: Figure, path: str | Path, **kwargs: Any) -> None:
    """Save as PNG atomically and release the figure."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, **kwargs)
    plt.close(fig)
