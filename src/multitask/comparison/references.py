"""Δm% against a reference that stays put: another comparison's single-task baselines.

A comparison's own Δm% takes each seed's row against that seed's baselines, trained with the
row's params. Where rows change the schedule or the regularisation, the baselines change with
them (a shorter schedule weakens them too), and a row can look better for weakening its own
reference. ``multitask compare --against OTHER`` also takes each row's Δm% against the
baselines of the earlier comparison OTHER, seed by seed, with the same interval
(:mod:`.statistics`).
"""

from __future__ import annotations

from typing import Any

from multitask import keys
from multitask.comparison.report import task_metrics
from multitask.comparison.statistics import summarise


def add_references(result: dict[str, Any], others: dict[str, dict[str, Any]]) -> None:
    """Each row's Δm% also against the single-task baselines of other comparisons (``others``:
    name -> its comparison.json), seed by seed, with its interval: ``row["against"][name]``
    (and the other's commit). The other comparison must measure the same tasks with the same
    metrics, have one set of baselines for all its rows, and hold every seed of this one."""
    from multitask.training.metrics import delta_m  # torch: only where references are asked

    metrics = task_metrics(result)
    better = {task: keys.higher_is_better(metric) for task, metric in metrics.items()}
    for name, other in others.items():
        where = f"comparison {name!r}"
        if task_metrics(other) != metrics:
            raise ValueError(f"{where} measures {task_metrics(other)}, this one {metrics}: "
                             "name a comparison of the same tasks and metrics")
        baselines = other.get("baselines")
        if baselines is None:
            raise ValueError(f"{where}: its rows have baselines of their own (their params "
                             "differ in what the baselines share), so there is no one "
                             "reference; name a comparison whose rows share their baselines")
        seeds = list(other["seeds"])
        for row in result["rows"]:
            missing = [seed for seed in row["seeds"] if seed not in seeds]
            if missing:
                raise ValueError(f"{where} has no baselines for seed "
                                 f"{', '.join(map(str, missing))} (its seeds: "
                                 f"{', '.join(map(str, seeds))})")
            values = [delta_m({t: row[keys.TASKS][t]["per_seed"][i] for t in metrics},
                              {t: baselines[t]["per_seed"][seeds.index(seed)] for t in metrics},
                              better)
                      for i, seed in enumerate(row["seeds"])]
            row.setdefault("against", {})[name] = {
                **summarise(values, interval=True, confidence=result["confidence"]).as_dict(),
                "commit": other.get("commit")}
