"""The CI report's picture: per task, both sides' learning curves and confusion matrices (a
regression task: predicted-vs-true scatters).

matplotlib rather than ``dvc plots diff``: DVC renders HTML whose Vega charts load their scripts
from a CDN and has no offline image export, while this runs on a runner without network and its
images must open without a browser running scripts.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from multitask import keys
from multitask.io import atomic_open

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from multitask.ci_report import PipelineResult


def class_order(confusion: pd.DataFrame) -> list[str]:
    """Class labels in the order the evaluate stage wrote them (its class index order)."""
    return list(dict.fromkeys([*confusion["actual"], *confusion["predicted"]]))


def confusion_matrix(pairs: pd.DataFrame) -> pd.DataFrame:
    """Row-normalised confusion (actual x predicted) of ``actual,predicted`` pairs."""
    labels = class_order(pairs)
    matrix = pd.crosstab(pairs["actual"], pairs["predicted"], normalize="index")
    return matrix.reindex(index=labels, columns=labels, fill_value=0.0)


def render_plots(base: PipelineResult, head: PipelineResult, path: Path) -> bool:
    """Draw :func:`draw`'s figure to ``path`` as a PNG.

    Returns False (drawing nothing) when neither side has curves or confusion data.
    """
    figure = draw(base, head)
    if figure is None:
        return False
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=80)
    return True


def draw(base: PipelineResult, head: PipelineResult) -> Figure | None:
    """One row per task (losses, validation primary metric -- accuracy, or MAE for a
    regression task --, base and head confusion; for a regression task its predicted-vs-true
    scatter, from the same ``actual,predicted`` pairs); None when neither side has curves or
    confusion data. Each epoch is a marker on its curve, so a one-epoch run shows too.
    """
    # Imported here: matplotlib is slow to import and the report text does not need it.
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    tasks = [t for t in base.tasks() if t in head.tasks()]
    if not tasks or all(side.history is None and not side.confusion for side in (base, head)):
        return None
    figure = Figure(figsize=(16, 3.6 * len(tasks)), layout="constrained")
    axes = figure.subplots(len(tasks), 4, squeeze=False)
    for row, task in enumerate(tasks):
        loss_ax, acc_ax, *confusion_axes = axes[row]
        metric = base.primary(task)  # accuracy; MAE for a regression task (no confusion)
        # base dashed with hollow markers, head solid with filled ones
        for name, side, style, fill in (("base", base, "--", "none"), ("head", head, "-", "full")):
            if side.history is None:
                continue
            for kind, color in ((keys.TRAIN, "tab:blue"), (keys.VAL, "tab:orange")):
                column = keys.task_metric(kind, task, keys.LOSS)
                if column in side.history:
                    loss_ax.plot(side.history["epoch"], side.history[column], style, color=color,
                                 marker="o", markersize=4, fillstyle=fill,
                                 label=f"{name} {kind}")
            column = keys.task_metric(keys.VAL, task, metric)
            if column in side.history:
                acc_ax.plot(side.history["epoch"], side.history[column], style,
                            color="tab:green", marker="o", markersize=4, fillstyle=fill,
                            label=name)
        loss_ax.set(title=f"{task}: loss", xlabel="epoch")
        acc_ax.set(title=f"{task}: validation {metric}", xlabel="epoch")
        for ax in (loss_ax, acc_ax):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
            if ax.lines:
                ax.legend(fontsize="small")
        for ax, side, name in zip(confusion_axes, (base, head), ("base", "head"), strict=True):
            if metric != keys.ACCURACY:  # a regression task: its pairs are values, not classes
                ax.set(title=f"{task}: predicted vs true, {name}", xlabel="true",
                       ylabel="predicted")
                # numbers (load_result checked them), unless the task was classification
                # on this side: its labels are not values to scatter
                pairs = side.confusion.get(task, pd.DataFrame(columns=["actual", "predicted"]))
                pairs = pairs.apply(pd.to_numeric, errors="coerce").dropna()
                if len(pairs):
                    ax.scatter(pairs["actual"], pairs["predicted"], s=8, alpha=0.5)
                    low = float(min(pairs["actual"].min(), pairs["predicted"].min()))
                    high = float(max(pairs["actual"].max(), pairs["predicted"].max()))
                    ax.plot([low, high], [low, high], color="black", linewidth=1)
                continue
            ax.set(title=f"{task}: confusion, {name}", xlabel="predicted", ylabel="actual")
            if task in side.confusion:
                matrix = confusion_matrix(side.confusion[task])
                labels = list(matrix.index)
                ax.imshow(matrix.to_numpy(), vmin=0.0, vmax=1.0, cmap="Blues")
                ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize="small")
                ax.set_yticks(range(len(labels)), labels, fontsize="small")
    figure.suptitle("Sample pipeline: base (dashed, hollow) vs head (solid, filled)")
    return figure
