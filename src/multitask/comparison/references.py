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
from multitask.comparison.experiments import Pipeline
from multitask.comparison.report import task_metrics
from multitask.comparison.statistics import summarise
from multitask.io import read_json


def check_reference(name: str, other: dict[str, Any], seeds: list[int] | tuple[int, ...]
                    ) -> None:
    """Refuse comparison ``name`` (its comparison.json ``other``) as a reference for ``seeds``:
    it needs one set of baselines for all its rows, measured on each of those seeds. Asked
    before anything is queued, and again on the result."""
    where = f"--against {name}"
    if other.get("baselines") is None:
        raise ValueError(f"{where}: the rows of that comparison have baselines that differ "
                         "(params the baselines share differ between its rows, or its "
                         "experiments ran with different thread counts, which change the float "
                         "sums on CPU), so there is no one reference; name a comparison whose "
                         "rows share their baselines")
    theirs = list(other.get("seeds") or [])
    if missing := [seed for seed in seeds if seed not in theirs]:
        raise ValueError(f"{where}: that comparison has no baselines for seed "
                         f"{', '.join(map(str, missing))} (its seeds: "
                         f"{', '.join(map(str, theirs))}); give --seeds among them, or run "
                         f"`multitask compare {name} ...` with those seeds first")


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
        check_reference(name, other, sorted({s for row in result["rows"] for s in row["seeds"]}))
        baselines, seeds = other["baselines"], list(other["seeds"])
        for row in result["rows"]:
            values = [delta_m({t: row[keys.TASKS][t]["per_seed"][i] for t in metrics},
                              {t: baselines[t]["per_seed"][seeds.index(seed)] for t in metrics},
                              better)
                      for i, seed in enumerate(row["seeds"])]
            row.setdefault("against", {})[name] = {
                **summarise(values, interval=True, confidence=result["confidence"]).as_dict(),
                "commit": other.get("commit")}


def read_references(pipeline: Pipeline, name: str, against: tuple[str, ...],
                    seeds: tuple[int, ...]) -> dict[str, dict[str, Any]]:
    """The comparison.json of each comparison named by --against, read and checked against
    ``seeds`` before anything runs."""
    others = {}
    for other in against:
        if other == name:
            raise ValueError(f"--against {other}: the comparison's own baselines are its "
                             "Δm% already; name another comparison")
        path = pipeline.layout.comparison_json(other)
        if not path.is_file():
            raise FileNotFoundError(f"--against {other}: no {path} (run `multitask compare "
                                    f"{other} ...` first, on the same pipeline)")
        others[other] = read_json(path, required=(), remedy=f"rerun `multitask compare {other} "
                                  "...` to write it again")
        check_reference(other, others[other], seeds)
    return others
