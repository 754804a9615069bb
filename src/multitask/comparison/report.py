"""A comparison's results: the summary (comparison.json), the table and the plot.

Per row: each task's test accuracy and the mean accuracy as mean ± sample standard deviation
over seeds, Δm% (each seed's against that seed's single-task baselines, as
``reports/metrics.json`` holds it) with its 95% interval, the rank by mean Δm% and whether the
row is tied with the best (:mod:`.statistics`); the per-seed values, experiment names and MLflow
run ids beside them; the baselines' own mean ± std over seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from multitask import keys
from multitask.comparison.rows import Row, Spec
from multitask.comparison.statistics import CONFIDENCE, Summary, rank, summarise


@dataclass(frozen=True)
class Measured:
    """One finished experiment of a row: its seed, names and the two reports it wrote."""

    seed: int
    experiment: str
    run_id: str | None
    metrics: dict[str, Any]  # reports/metrics.json
    baselines: dict[str, Any]  # reports/baselines.json


def _accuracies(report: dict[str, Any]) -> dict[str, float]:
    return {task: float(values[keys.ACCURACY]) for task, values in report[keys.TASKS].items()}


def _per_task(reports: Sequence[dict[str, Any]], tasks: Sequence[str]) -> dict[str, Summary]:
    return {task: summarise([_accuracies(report)[task] for report in reports]) for task in tasks}


def _row(row: Row, measured: Sequence[Measured], tasks: Sequence[str], delta_m: Summary
         ) -> dict[str, Any]:
    metrics = [m.metrics for m in measured]
    return {
        "label": row.label,
        "overrides": dict(row.overrides),
        "seeds": [m.seed for m in measured],
        "experiments": [m.experiment for m in measured],
        "run_ids": [m.run_id for m in measured],
        keys.TASKS: {t: s.as_dict() for t, s in _per_task(metrics, tasks).items()},
        keys.MEAN_ACCURACY: summarise([float(m[keys.MEAN_ACCURACY]) for m in metrics]).as_dict(),
        keys.DELTA_M: delta_m.as_dict(),
        "baselines": {t: s.as_dict() for t, s in
                      _per_task([m.baselines for m in measured], tasks).items()},
    }


def summary(spec: Spec, measured: dict[str, Sequence[Measured]], *, pipeline: str,
            params_file: str) -> dict[str, Any]:
    """The content of comparison.json: rows best first (``measured``: row label -> its
    experiments in seed order)."""
    tasks = list(next(iter(measured.values()))[0].metrics[keys.TASKS])
    delta_m = {row.label: summarise([float(m.metrics[keys.DELTA_M])
                                     for m in measured[row.label]], interval=True)
               for row in spec.rows}
    by_label = {row.label: row for row in spec.rows}
    rows = [{**_row(by_label[label], measured[label], tasks, delta_m[label]),
             "rank": position, "tied": tied}
            for position, (label, tied) in enumerate(rank(delta_m), 1)]
    shared = all(row["baselines"] == rows[0]["baselines"] for row in rows)
    return {
        "name": spec.name,
        "pipeline": pipeline,
        "params_file": params_file,
        "seeds": list(spec.seeds),
        "set": dict(spec.common),
        "confidence": CONFIDENCE,
        keys.TASKS: tasks,
        "rows": rows,
        # every row against the same baselines (rows that share the seeds and the
        # regularisation), else null: each row's own are in the row
        "baselines": rows[0]["baselines"] if shared else None,
    }


# ------------------------------------------------------------------------------------ table
def _cell(summary: dict[str, Any], digits: int = 4) -> str:
    if summary["std"] is None:
        return f"{summary['mean']:.{digits}f}"
    return f"{summary['mean']:.{digits}f} ± {summary['std']:.{digits}f}"


def _delta_m_cell(summary: dict[str, Any]) -> str:
    if summary.get("ci_low") is None:
        return f"{summary['mean']:+.2f}"
    return f"{summary['mean']:+.2f} [{summary['ci_low']:+.2f}, {summary['ci_high']:+.2f}]"


def _mean_of(per_task: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The mean over tasks of per-task summaries, seed by seed."""
    per_seed = [sum(values) / len(values) for values in
                zip(*(s["per_seed"] for s in per_task.values()), strict=True)]
    return summarise(per_seed).as_dict()


def _baseline_row(title: str, baselines: dict[str, dict[str, Any]], tasks: Sequence[str]) -> str:
    return (f"| | {title} | | " + " | ".join(_cell(baselines[t]) for t in tasks)
            + f" | {_cell(_mean_of(baselines))} | 0 (reference) | |")


def markdown(result: dict[str, Any]) -> str:
    """The ranked table with its caption (comparison.md; also the README's)."""
    tasks = result[keys.TASKS]
    seeds = ", ".join(str(s) for s in result["seeds"])
    common = ", ".join(f"`{k}={v}`" for k, v in result["set"].items())
    percent = round(result["confidence"] * 100)
    lines = [
        f"`multitask compare {result['name']}` on `{result['pipeline']}`"
        + (f" at commit `{result['commit'][:7]}`" if result.get("commit") else "")
        + (f" with {common}" if common else "") + f", seeds {seeds}: mean ± sample standard "
        f"deviation over seeds; Δm% (each seed against that seed's single-task baselines) "
        f"with its {percent}% t interval; *tied*: the interval overlaps the best row's.",
        "",
        "| rank | row | overrides | " + " | ".join(f"`{t}` accuracy" for t in tasks)
        + f" | mean accuracy | Δm% [{percent}% interval] | |",
        "|---|---|---|" + "---|" * (len(tasks) + 3),
    ]
    for row in result["rows"]:
        overrides = ", ".join(f"`{k}={v}`" for k, v in row["overrides"].items())
        mark = "best" if row["rank"] == 1 else ("tied" if row["tied"] else "")
        lines.append(f"| {row['rank']} | `{row['label']}` | {overrides} | "
                     + " | ".join(_cell(row[keys.TASKS][t]) for t in tasks)
                     + f" | {_cell(row[keys.MEAN_ACCURACY])} | {_delta_m_cell(row[keys.DELTA_M])}"
                     f" | {mark} |")
    if result["baselines"] is not None:
        lines.append(_baseline_row("single-task baselines", result["baselines"], tasks))
    else:
        lines += [_baseline_row(f"baselines of `{row['label']}`", row["baselines"], tasks)
                  for row in result["rows"]]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------- plot
def plot(result: dict[str, Any], path: Any) -> None:
    """Per-task test accuracy of each row, mean ± std over seeds (per-seed values faint);
    two tasks: one against the other (the Pareto view), else one panel per task. The
    single-task baselines are marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from multitask.training.plots import save_figure

    tasks, rows = result[keys.TASKS], result["rows"]
    baselines = ([("single-task baselines", result["baselines"])] if result["baselines"]
                 else [(f"baselines of {r['label']}", r["baselines"]) for r in rows])
    if len(tasks) == 2:
        fig, axis = plt.subplots(figsize=(6.5, 5.5))
        _pareto(axis, tasks, rows, baselines)
    else:
        fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 0.5 * len(rows) + 2),
                                 squeeze=False)
        for axis, task in zip(axes[0], tasks, strict=True):
            _panel(axis, task, rows, baselines)
    fig.suptitle(f"multitask compare {result['name']}: test accuracy, mean ± std over "
                 f"seeds {', '.join(map(str, result['seeds']))}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def _std(summary: dict[str, Any]) -> float:
    return summary["std"] or 0.0


def _pareto(axis: Any, tasks: Sequence[str], rows: Sequence[dict[str, Any]],
            baselines: Sequence[tuple[str, dict[str, Any]]]) -> None:
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
    axis.set_xlabel(f"test accuracy, task {first}")
    axis.set_ylabel(f"test accuracy, task {second}")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)


def _panel(axis: Any, task: str, rows: Sequence[dict[str, Any]],
           baselines: Sequence[tuple[str, dict[str, Any]]]) -> None:
    positions = range(len(rows))
    for position, row in zip(positions, rows, strict=True):
        summary = row[keys.TASKS][task]
        axis.errorbar(summary["mean"], position, xerr=_std(summary), fmt="o", capsize=3)
        axis.scatter(summary["per_seed"], [position] * len(summary["per_seed"]), s=10,
                     alpha=0.35)
    for label, baseline in baselines:
        mean, std = baseline[task]["mean"], _std(baseline[task])
        axis.axvline(mean, color="black", linestyle="--", linewidth=1, label=label)
        axis.axvspan(mean - std, mean + std, color="black", alpha=0.08)
    axis.set_yticks(list(positions), [row["label"] for row in rows])
    axis.invert_yaxis()
    axis.set_xlabel(f"test accuracy, task {task}")
    axis.grid(axis="x", alpha=0.3)
    axis.legend(fontsize=8)
