"""A comparison's plot: each row's per-task primary test metric, mean ± std over seeds, beside
the single-task baselines (two tasks: one against the other, the Pareto view), and each row's
Δm% minus the best row's, paired seed by seed, with its interval."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from multitask import keys
from multitask.comparison.report import METRIC_TITLES, paired_to_best, task_metrics

__all__ = ["plot"]


def plot(result: dict[str, Any], path: Any) -> None:
    """Per-task primary test metric (accuracy; MAE for a regression task) of each row, mean ±
    std over seeds (per-seed values faint); two tasks: one against the other (the Pareto view),
    else one panel per task. The single-task baselines are marked. With several rows measured on
    the best row's seeds, a last panel shows each one's Δm% minus the best row's, paired seed by
    seed (:func:`.report.paired_to_best`), with its interval and a line at 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from multitask.training.plots import save_figure

    tasks, rows = result[keys.TASKS], result["rows"]
    metrics = task_metrics(result)
    labels = {task: f"test {METRIC_TITLES.get(m, m)}, task {task}" for task, m in metrics.items()}
    baselines = ([("single-task baselines", result["baselines"])] if result["baselines"]
                 else [(f"baselines of {r['label']}", r["baselines"]) for r in rows])
    differences = paired_to_best(rows, result["confidence"])
    paired = any(difference is not None for difference in differences)
    if len(tasks) == 2:
        fig, axes = plt.subplots(1, 1 + paired, figsize=(6.5 + 5.5 * paired, 5.5),
                                 squeeze=False)
        _pareto(axes[0][0], tasks, rows, baselines, labels)
    else:
        fig, axes = plt.subplots(1, len(tasks) + paired,
                                 figsize=(4.5 * (len(tasks) + paired), 0.5 * len(rows) + 2),
                                 squeeze=False)
        for axis, task in zip(axes[0], tasks, strict=False):
            _panel(axis, task, rows, baselines, labels[task])
    if paired:
        _paired(axes[0][-1], rows, differences, round(result["confidence"] * 100))
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


def _paired(axis: Any, rows: Sequence[dict[str, Any]],
            differences: Sequence[dict[str, Any] | None], percent: int) -> None:
    """Each row's Δm% minus the best row's, seed by seed: the mean with its interval (per-seed
    differences faint), the best row at 0; rows on other seeds are left out."""
    shown = [(row["label"], difference) for index, (row, difference) in enumerate(
        zip(rows, differences, strict=True)) if index == 0 or difference]
    for position, (_, difference) in enumerate(shown):
        if difference is None:  # the best row itself
            axis.plot(0.0, position, "D", color="black")
            continue
        low, high = difference.get("ci_low"), difference.get("ci_high")
        error = None if low is None else [[difference["mean"] - low], [high - difference["mean"]]]
        below = high is not None and high < 0
        axis.errorbar(difference["mean"], position, xerr=error, fmt="o", capsize=3,
                      color="tab:red" if below else "tab:blue")
        axis.scatter(difference["per_seed"], [position] * len(difference["per_seed"]), s=10,
                     alpha=0.35, color="gray")
    axis.axvline(0.0, color="black", linewidth=1)
    axis.set_yticks(list(range(len(shown))), [label for label, _ in shown])
    axis.invert_yaxis()
    axis.set_xlabel(f"Δm% minus {shown[0][0]}'s, paired by seed\n({percent}% interval;"
                    " red: below 0)")
    axis.grid(axis="x", alpha=0.3)
