"""A comparison in MLflow and on disk: its parent run, the summary logged there, and the
files (comparison.json, .md, .png) written beside the pipeline."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from multitask.comparison.plot import plot
from multitask.comparison.report import markdown
from multitask.config import Params
from multitask.io import atomic_open, write_json

log = logging.getLogger(__name__)


def parent_run(name: str, params: Params) -> str | None:
    """The comparison's parent run (found, or created, which also creates the MLflow store and
    experiment: experiments starting side by side on a new SQLite store would race to create
    its tables); None with tracking off."""
    if not params.tracking.enabled:
        log.info("tracking.enabled is false: no MLflow parent run")
        return None
    from multitask.tracking.groups import comparison_run
    from multitask.tracking.runs import experiment_name

    return comparison_run(experiment_name(params), name)


def _interval_metrics(prefix: str, summary_: dict[str, Any]) -> dict[str, float]:
    """``<prefix>/mean`` and, where the summary has its interval, ``ci_low`` and ``ci_high``."""
    metrics = {f"{prefix}/mean": summary_["mean"]}
    if summary_.get("ci_low") is not None:
        metrics |= {f"{prefix}/ci_low": summary_["ci_low"],
                    f"{prefix}/ci_high": summary_["ci_high"]}
    return metrics


def record(result: dict[str, Any], parent: str, files: list[Path]) -> str:
    """Record the comparison on its MLflow parent run (a new one when the old one holds rows,
    seeds or metrics the comparison no longer has); write ``files``, logged there, naming
    it. Returns the parent's id."""
    from multitask import keys
    from multitask.tracking.groups import current_parent, record_comparison, stored_runs

    metrics: dict[str, float] = {}
    primary = result.get("metrics") or {}  # each task's primary metric (accuracy, mae, ...)
    for row in result["rows"]:
        label = row["label"]
        metrics |= {f"{label}/rank": row["rank"], f"{label}/tied": float(row["tied"])}
        metrics |= _interval_metrics(f"{label}/{keys.DELTA_M}", row[keys.DELTA_M])
        if row.get(keys.MEAN_ACCURACY):  # absent without a classification task
            metrics[f"{label}/{keys.MEAN_ACCURACY}/mean"] = row[keys.MEAN_ACCURACY]["mean"]
        if row.get("paired_to_best"):
            metrics |= _interval_metrics(f"{label}/{keys.DELTA_M}_minus_best",
                                         row["paired_to_best"])
        for other, reference in (row.get("against") or {}).items():
            metrics |= _interval_metrics(f"{label}/{keys.DELTA_M}_vs_{other}", reference)
        for task, summary_ in row[keys.TASKS].items():
            metric = primary.get(task, keys.ACCURACY)
            metrics[f"{label}/{keys.task_metric(keys.TEST, task, metric)}/mean"] = \
                summary_["mean"]
    params = {"pipeline": result["pipeline"],
              "set": ",".join(f"{k}={v}" for k, v in result["set"].items()) or "-",
              **{f"row.{row['label']}": ",".join(f"{k}={v}" for k, v in row["overrides"].items())
                 for row in result["rows"]}}
    # runs of measurements read from an earlier comparison.json may be in another store
    runs = {run: row["label"] for row in result["rows"] for run in row["run_ids"] if run}
    children = {run: runs[run] for run in stored_runs(runs)}
    parent = current_parent(parent, result["name"], children, params, metrics)
    result["mlflow"]["parent_run_id"] = parent
    write(result, files)
    record_comparison(parent, result["name"], children, metrics=metrics, params=params,
                      tags={"multitask.comparison.seeds": ",".join(map(str, result["seeds"]))},
                      artifacts=files)
    return parent


def write(result: dict[str, Any], files: list[Path]) -> None:
    """comparison.json, .md and .png (``files``, in that order)."""
    write_json(files[0], result)
    with atomic_open(files[1]) as handle:
        handle.write(markdown(result))
    plot(result, files[2])
