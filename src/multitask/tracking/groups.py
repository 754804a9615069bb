"""A comparison as a group of runs in the MLflow UI: one parent run, its experiments' runs nested.

`multitask compare NAME` opens (or, run again, reopens) one parent run named ``compare NAME``
in the project's experiment, tagged ``multitask.comparison=NAME`` and
``multitask.comparison.role=parent``; the run of each of its DVC experiments (train + evaluate)
gets ``mlflow.parentRunId`` (the UI then shows it folded under the parent),
``multitask.comparison=NAME`` and ``multitask.comparison.row=<label>``, so the runs of one
comparison, or of one row, are a filter away: ``tags.`multitask.comparison` = 'NAME'``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from multitask.tracking.runs import StageRun
from multitask.tracking.store import client, experiment_id, filter_literal, get_run, store_errors

log = logging.getLogger(__name__)

COMPARISON_TAG = "multitask.comparison"
ROW_TAG = "multitask.comparison.row"
ROLE_TAG = "multitask.comparison.role"
PARENT_ROLE = "parent"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: the UI nests a run under this one


def run_name(comparison: str) -> str:
    return f"compare {comparison}"


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
    created = client().create_run(experiment_key, run_name=run_name(comparison),
                                  tags={COMPARISON_TAG: comparison, ROLE_TAG: PARENT_ROLE})
    client().set_terminated(created.info.run_id, "FINISHED")
    log.info("MLflow: parent run %s (%s)", created.info.run_id, run_name(comparison))
    return str(created.info.run_id)


@store_errors
def record_comparison(parent_run_id: str, comparison: str, children: dict[str, str], *,
                      metrics: dict[str, float], params: dict[str, Any],
                      tags: dict[str, str], artifacts: Iterable[Path]) -> None:
    """Nest each run of ``children`` (run id -> row label) under the parent and tag it; log
    the summary (metrics, params, tags) and the files of the comparison on the parent.

    Params cannot change in MLflow: one already logged with another value (a row redefined
    under the same name) stays as it was, with a warning; metrics and tags take the new values.
    """
    for run_id, label in children.items():
        get_run(run_id)  # a clear error for a run missing from this store
        StageRun(run_id).set_tags({PARENT_TAG: parent_run_id, COMPARISON_TAG: comparison,
                                   ROW_TAG: label})
    parent = StageRun(parent_run_id)
    logged = get_run(parent_run_id).data.params
    changed = sorted(k for k, v in params.items() if k in logged and logged[k] != str(v))
    if changed:
        log.warning("MLflow run %s keeps its earlier params %s (params cannot change)",
                    parent_run_id, ", ".join(changed))
    parent.log_params({k: v for k, v in params.items() if k not in logged})
    parent.set_tags({**tags, COMPARISON_TAG: comparison, ROLE_TAG: PARENT_ROLE})
    parent.log_metrics(metrics)
    parent.flush()
    for path in artifacts:
        parent.log_artifact(path)
