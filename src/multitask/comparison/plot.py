"""A comparison's plot: each row's per-task primary test metric, mean ± std over seeds, beside
the single-task baselines (two tasks: one against the other, the Pareto view)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from multitask import keys
from multitask.comparison.report import METRIC_TITLES, task_metrics

__all__ = ["plot"]


def plot(result: dict[str, Any], path: Any) -> None:
    """Per-task primary test metric (accuracy; MAE for a regression task) of each row, mean ±
    std over seeds (per-seed values faint); two tasks: one against the other (the Pareto view),
    else one panel per task. The single-task baselines are marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from multitask.training.plots import save_figure

    tasks, rows = result[keys.TASKS], result["rows"]
    metrics = task_metrics(result)
    labels = {task: f"test {METRIC_TITLES.get(m, m)}, task {task}" for task, m in metrics.items()}
    baselines = ([("single-task baselines", result["baselines"])] if result["baselines"]
                 else [(f"baselines of {r['label']}", r["baselines"]) for r in rows])
    if len(tasks) == 2:
        fig, axis = plt.subplots(figsize=(6.5, 5.5))
        _pareto(axis, tasks, rows, baselines, labels)
    else:
        fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 0.5 * len(rows) + 2),
                                 squeeze=False)
        for axis, task in zip(axes[0], tasks, strict=True):
            _panel(axis, task, rows, baselines, labels[task])
    shown = " and ".join(dict.fromkeys(METRIC_TITLES.get(m, m) for m in metrics.values()))
    fig.suptitle(f"multitask compare {result['name']}: test {shown}, mean ± std over "
                 f"seeds {', '.join(map(str, result['seeds']))}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def _std(summary: dict[str, Any]) -> float:
    return summary["std"] or 0.0


def _pareto(axis: Any, tasks: Sequence[str], rows: Sequence[dict[str, Any]],
            baselines: Sequence[tuple[str, dict[str, Any]]], labels: dict[str, str]) -> None:
    first, second = tasks
    for row in rows:
        x, y = row[keys.TASKS][first], row[keys.TASKS][second]
        drawn = axis.errorbar(x["mean"], y["mean"], xerr=_std(x), yerr=_std(y), fmt="o",
                              capsize=3, label=row["label"])
        axis.scatter(x["per_seed"], y["per_seed"], s=10, alpha=0.35,
                     color=drawn.lines[0].get_color())
    for label, baseline in baselines:
        x, y = baseline[first], baseline[second]
        axis.errorbar(x["mean"], y["mean"], xerr=_std(x), yerr=_std(y), fmt="*", color="black",
                      markersize=11, capsize=3, label=label)
    axis.set_xlabel(labels[first])
    axis.set_ylabel(labels[second])
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)


def _panel(axis: Any, task: str, rows: Sequence[dict[str, Any]],
           baselines: Sequence[tuple[str, dict[str, Any]]], label: str) -> None:
    positions = range(len(rows))
    for position, row in zip(positions, rows, strict=True):
        summary = row[keys.TASKS][task]
        axis.errorbar(summary["mean"], position, xerr=_std(summary), fmt="o", capsize=3)
        axis.scatter(summary["per_seed"], [position] * len(summary["per_seed"]), s=10,
                     alpha=0.35)
    for name, baseline in baselines:
        mean, std = baseline[task]["mean"], _std(baseline[task])
        axis.axvline(mean, color="black", linestyle="--", linewidth=1, label=name)
        axis.axvspan(mean - std, mean + std, color="black", alpha=0.08)
    axis.set_yticks(list(positions), [row["label"] for row in rows])
    axis.invert_yaxis()
    axis.set_xlabel(label)  # the task and its metric
    axis.locator_params(axis="x", nbins=5)
    axis.grid(axis="x", alpha=0.3)
    axis.legend(fontsize=8)
