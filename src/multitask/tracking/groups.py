"""A comparison as a group of runs in the MLflow UI: one parent run, its experiments' runs nested.

`multitask compare NAME` opens (or, run again, reopens) one parent run named ``compare NAME``
in the project's experiment, tagged ``multitask.comparison=NAME`` and
``multitask.comparison.role=parent``; the run of each of its DVC experiments (train + evaluate)
gets ``mlflow.parentRunId`` (the UI then shows it folded under the parent),
``multitask.comparison=NAME`` and ``multitask.comparison.row=<label>``, so the runs of one
comparison, or of one row, are a filter away: ``tags.`multitask.comparison` = 'NAME'``.

MLflow cannot delete a run's params or metrics, nor change a param. A rerun that records less
than the parent holds (a row or seed dropped, a row redefined under the same label, a metric no
longer measured) would leave the parent showing what the comparison no longer says, so
:func:`current_parent` then supersedes it: the old parent is renamed ``compare NAME
(superseded)``, tagged ``multitask.comparison.role=superseded`` (and
``multitask.comparison.superseded_by=<new id>``), keeps its history, and loses the runs no
longer in the comparison (their nesting and comparison tags are removed); a new parent takes
its place and the comparison is recorded there. A rerun with the same content, or more (a row
or seed added), keeps the parent.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from multitask.tracking.runs import StageRun, param_value
from multitask.tracking.store import client, experiment_id, filter_literal, get_run, store_errors

log = logging.getLogger(__name__)

COMPARISON_TAG = "multitask.comparison"
ROW_TAG = "multitask.comparison.row"
ROLE_TAG = "multitask.comparison.role"
SUPERSEDED_BY_TAG = "multitask.comparison.superseded_by"
PARENT_ROLE = "parent"
SUPERSEDED_ROLE = "superseded"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: the UI nests a run under this one
ROW_PARAM = "row."  # the parent's param of each row: row.<label> = its overrides
_SEED_PARAM = "train.seed"  # a child run's seed (its params, flattened)
_LISTED = 6  # names listed in the warning before "and N more"


def run_name(comparison: str) -> str:
    return f"compare {comparison}"


def superseded_name(comparison: str) -> str:
    return f"{run_name(comparison)} (superseded)"


@store_errors
def comparison_run(experiment: str, comparison: str) -> str:
    """The parent run of ``comparison`` in MLflow experiment ``experiment``: the one an earlier
    invocation created, else a new one. Returns its id."""
    experiment_key = experiment_id(experiment)
    found = client().search_runs(
        [experiment_key], max_results=1, order_by=["attributes.start_time ASC"],
        filter_string=f"tags.`{COMPARISON_TAG}` = {filter_literal(comparison)} and "
                      f"tags.`{ROLE_TAG}` = '{PARENT_ROLE}'")
    if found:
        return str(found[0].info.run_id)
    return _new_parent(experiment_key, comparison)


def _new_parent(experiment_key: str, comparison: str) -> str:
    """A new, empty parent run of ``comparison`` in the experiment of id ``experiment_key``."""
    created = client().create_run(experiment_key, run_name=run_name(comparison),
                                  tags={COMPARISON_TAG: comparison, ROLE_TAG: PARENT_ROLE})
    client().set_terminated(created.info.run_id, "FINISHED")
    log.info("MLflow: parent run %s (%s)", created.info.run_id, run_name(comparison))
    return str(created.info.run_id)


@store_errors
def stored_runs(run_ids: Iterable[str]) -> list[str]:
    """Those of ``run_ids`` this store holds (a comparison read back from comparison.json
    may name runs another clone's store logged)."""
    found = []
    for run_id in run_ids:
        try:
            get_run(run_id)
        except ValueError:
            continue
        found.append(run_id)
    return found


@store_errors
def current_parent(parent_run_id: str, comparison: str, children: dict[str, str],
                   params: dict[str, Any], metrics: dict[str, float]) -> str:
    """The parent run ``comparison`` is to be recorded on now (by :func:`record_comparison`,
    with these ``children``, run id -> row label, ``params`` and ``metrics``).

    ``parent_run_id`` itself when it holds nothing outside what is about to be logged: every
    param it has is in ``params`` with the same value, every metric key is in ``metrics``,
    every run nested under it is in ``children``. Otherwise (MLflow cannot delete params or
    metrics) the old parent is superseded: renamed ``compare NAME (superseded)``, tagged
    ``multitask.comparison.role=superseded``, so :func:`comparison_run` no longer finds it,
    and ``multitask.comparison.superseded_by=<new id>``; the runs nested under it that are
    not in ``children`` lose ``mlflow.parentRunId`` and the comparison's tags (those in
    ``children`` are nested again by :func:`record_comparison`); a new parent is created in
    the old one's experiment and its id returned, with a warning naming the old run and what
    differed."""
    old = get_run(parent_run_id)
    logged_params = dict(old.data.params)
    stale_runs = [run for run in _nested(parent_run_id) if run.info.run_id not in children]
    removed_rows = sorted(key.removeprefix(ROW_PARAM) for key in logged_params
                          if key.startswith(ROW_PARAM) and key not in params)
    changed = sorted(key for key, value in logged_params.items()
                     if key in params and param_value(params[key]) != value)
    dropped_params = sorted(key for key in logged_params if key not in params
                            and not (key.startswith(ROW_PARAM)
                                     and key.removeprefix(ROW_PARAM) in removed_rows))
    dropped_metrics = sorted(key for key in old.data.metrics if key not in metrics
                             and key.split("/", 1)[0] not in removed_rows)
    if not (removed_rows or changed or dropped_params or dropped_metrics or stale_runs):
        return parent_run_id
    mlflow_client = client()
    # superseded first: should anything below fail, the next run creates a new parent
    mlflow_client.set_tag(parent_run_id, ROLE_TAG, SUPERSEDED_ROLE)
    mlflow_client.update_run(parent_run_id, name=superseded_name(comparison))
    for run in stale_runs:
        for key in (PARENT_TAG, COMPARISON_TAG, ROW_TAG):
            if key in run.data.tags:
                mlflow_client.delete_tag(run.info.run_id, key)
    new = _new_parent(old.info.experiment_id, comparison)
    mlflow_client.set_tag(parent_run_id, SUPERSEDED_BY_TAG, new)
    differences = []
    if removed_rows:
        differences.append(f"rows {', '.join(removed_rows)} no longer in the comparison")
    differences += [f"{key} was {logged_params[key]!r}, now {param_value(params[key])!r}"
                    for key in changed]
    if dropped_params:
        differences.append(f"params {_listed(dropped_params)} no longer logged")
    if dropped_metrics:
        differences.append(f"metrics {_listed(dropped_metrics)} no longer measured")
    if stale_runs:
        differences.append(f"runs {_listed(sorted(map(_describe, stale_runs)))} "
                           "no longer in it")
    log.warning("MLflow: comparison %s changed (%s): its parent run %s, which MLflow cannot "
                "clear, is now '%s'; recording on a new parent run %s", comparison,
                "; ".join(differences), parent_run_id, superseded_name(comparison), new)
    return new


def _nested(parent_run_id: str) -> list[Any]:
    """The (active) runs of every experiment nested under run ``parent_run_id``. Every
    experiment, not the parent's alone: a row that sets ``tracking.experiment`` logs its runs
    elsewhere, and once that row is dropped no child of the comparison points there."""
    mlflow_client = client()
    experiments: list[str] = []
    token = None
    while True:
        page = mlflow_client.search_experiments(page_token=token)
        experiments += [experiment.experiment_id for experiment in page]
        token = page.token
        if not token:
            break
    runs: list[Any] = []
    for start in range(0, len(experiments), 100):
        token = None
        while True:
            found = mlflow_client.search_runs(
                experiments[start:start + 100], page_token=token,
                filter_string=f"tags.`{PARENT_TAG}` = {filter_literal(parent_run_id)}")
            runs += found
            token = found.token
            if not token:
                break
    return runs


def _describe(run: Any) -> str:
    """A nested run as the warning names it: ``<row> seed <n>`` where known, else its id."""
    row, seed = run.data.tags.get(ROW_TAG), run.data.params.get(_SEED_PARAM)
    if row and seed is not None:
        return f"{row} seed {seed}"
    return run.data.tags.get("dvc.experiment") or str(run.info.run_id)


def _listed(names: list[str]) -> str:
    """``a, b, c`` (at most :data:`_LISTED` names, then ``and N more``)."""
    shown = ", ".join(names[:_LISTED])
    return shown if len(names) <= _LISTED else f"{shown} and {len(names) - _LISTED} more"


@store_errors
def record_comparison(parent_run_id: str, comparison: str, children: dict[str, str], *,
                      metrics: dict[str, float], params: dict[str, Any],
                      tags: dict[str, str], artifacts: Iterable[Path]) -> None:
    """Nest each run of ``children`` (run id -> row label) under the parent and tag it; log
    the summary (metrics, params, tags) and the files of the comparison on the parent.

    ``children`` are runs this store holds (:func:`stored_runs` keeps those). Call it on the
    run :func:`current_parent` returns for these children, params and metrics: on any other
    parent, params cannot change in MLflow, so one already logged with another value (a row
    redefined under the same name) stays as it was, with a warning; metrics and tags take the
    new values.
    """
    for run_id, label in children.items():
        StageRun(run_id).set_tags({PARENT_TAG: parent_run_id, COMPARISON_TAG: comparison,
                                   ROW_TAG: label})
    parent = StageRun(parent_run_id)
    logged = get_run(parent_run_id).data.params
    changed = sorted(k for k, v in params.items() if k in logged and logged[k] != param_value(v))
    if changed:
        log.warning("MLflow run %s keeps its earlier params %s (params cannot change)",
                    parent_run_id, ", ".join(changed))
    parent.log_params({k: v for k, v in params.items() if k not in logged})
    parent.set_tags({**tags, COMPARISON_TAG: comparison, ROLE_TAG: PARENT_ROLE})
    parent.log_metrics(metrics)
    parent.flush()
    for path in artifacts:
        parent.log_artifact(path)
