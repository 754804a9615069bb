"""multitask.tracking.groups against a real MLflow SQLite store in a temporary folder: a rerun
of a comparison that records less than its parent run holds gets a new parent."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from multitask.tracking.groups import comparison_run, current_parent, record_comparison
from multitask.tracking.store import client, experiment_id

EXPERIMENT = "comparison-groups"
NAME = "weighting"
ROWS = {"equal": "train.weighting=equal", "dwa": "train.weighting=dwa",
        "famo": "train.weighting=famo"}
SEEDS = (0, 1, 2)


Runs = dict[tuple[str, int], str]  # (row, seed) -> run id


@pytest.fixture
def runs(store: str) -> Runs:
    """One finished evaluate run per (row, seed), as the comparison's experiments leave them."""
    experiment = experiment_id(EXPERIMENT)
    made = {}
    for row in ROWS:
        for seed in SEEDS:
            run = client().create_run(experiment, run_name=f"{NAME}-{row}-s{seed}",
                                      tags={"stage": "evaluate"})
            client().log_param(run.info.run_id, "train.seed", seed)
            client().set_terminated(run.info.run_id, "FINISHED")
            made[row, seed] = run.info.run_id
    return made


def content(runs: Runs, rows: dict[str, str], seeds: tuple[int, ...]
            ) -> tuple[dict[str, str], dict[str, Any], dict[str, float]]:
    """``(children, params, metrics)`` of a comparison of ``rows`` over ``seeds``, as
    ``multitask compare`` records it."""
    children = {runs[row, seed]: row for row in rows for seed in seeds}
    params = {"pipeline": "dvc.yaml", "set": "-",
              **{f"row.{label}": overrides for label, overrides in rows.items()}}
    metrics = {}
    for rank, label in enumerate(rows, start=1):
        metrics |= {f"{label}/rank": float(rank), f"{label}/tied": 0.0,
                    f"{label}/delta_m_pct/mean": 1.5 * rank,
                    f"{label}/delta_m_pct/ci_low": 1.0 * rank,
                    f"{label}/delta_m_pct/ci_high": 2.0 * rank}
    return children, params, metrics


Record = Callable[..., str]


@pytest.fixture
def record(runs: Runs, tmp_path: Path) -> Record:
    """``record(rows, seeds, parent=None) -> parent id``: what ``multitask compare`` records,
    on ``parent`` as given, else on the one :func:`comparison_run` finds (or creates)."""
    summary = tmp_path / "comparison.json"
    summary.write_text("{}\n")

    def run(rows: dict[str, str], seeds: tuple[int, ...], parent: str | None = None) -> str:
        parent = parent or comparison_run(EXPERIMENT, NAME)
        children, params, metrics = content(runs, rows, seeds)
        record_comparison(parent, NAME, children, metrics=metrics, params=params,
                          tags={"multitask.comparison.seeds": ",".join(map(str, seeds))},
                          artifacts=[summary])
        return parent

    return run


def nested(parent: str) -> set[str]:
    """The ids of the runs nested under ``parent``."""
    found = client().search_runs([experiment_id(EXPERIMENT)],
                                 filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    return {run.info.run_id for run in found}


def test_a_narrower_rerun_supersedes_the_parent_and_unnests_the_dropped_runs(
        record: Record, runs: Runs, caplog: pytest.LogCaptureFixture) -> None:
    old = record(ROWS, SEEDS)
    narrower = {label: ROWS[label] for label in ("equal", "dwa")}
    children, params, metrics = content(runs, narrower, (0, 1))
    with caplog.at_level(logging.WARNING, logger="multitask.tracking.groups"):
        new = current_parent(old, NAME, children, params, metrics)

    assert new != old
    superseded = client().get_run(old)
    assert superseded.data.tags["multitask.comparison.role"] == "superseded"
    assert superseded.data.tags["multitask.comparison.superseded_by"] == new
    assert superseded.info.run_name == f"compare {NAME} (superseded)"
    assert superseded.data.tags["mlflow.runName"] == f"compare {NAME} (superseded)"
    assert "famo/rank" in superseded.data.metrics  # its history is kept, under its new name
    dropped = {run for (row, seed), run in runs.items() if row == "famo" or seed == 2}
    for run_id in dropped:
        tags = client().get_run(run_id).data.tags
        assert not {"mlflow.parentRunId", "multitask.comparison",
                    "multitask.comparison.row"} & set(tags), run_id
        assert tags["stage"] == "evaluate"  # the run's own tags stay
    assert nested(old) == set(children)  # until record_comparison nests them again
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert old in warning and new in warning
    assert "rows famo no longer in the comparison" in warning
    assert "equal seed 2" in warning and "dwa seed 2" in warning

    fresh = client().get_run(new)
    assert fresh.info.run_name == f"compare {NAME}"
    assert fresh.info.experiment_id == superseded.info.experiment_id
    assert fresh.data.tags["multitask.comparison"] == NAME
    assert fresh.data.tags["multitask.comparison.role"] == "parent"
    assert fresh.info.status == "FINISHED"
    assert comparison_run(EXPERIMENT, NAME) == new

    assert record(narrower, (0, 1), parent=new) == new
    recorded = client().get_run(new)
    assert nested(new) == set(children) and nested(old) == set()
    assert not any(key.startswith("famo/") for key in recorded.data.metrics)
    assert "row.famo" not in recorded.data.params
    assert recorded.data.tags["multitask.comparison.seeds"] == "0,1"
    assert current_parent(new, NAME, children, params, metrics) == new


def test_the_same_content_keeps_the_parent(record: Record, runs: Runs,
                                           caplog: pytest.LogCaptureFixture) -> None:
    old = record(ROWS, SEEDS)
    with caplog.at_level(logging.WARNING, logger="multitask.tracking.groups"):
        assert current_parent(old, NAME, *content(runs, ROWS, SEEDS)) == old
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    tags = client().get_run(old).data.tags
    assert tags["multitask.comparison.role"] == "parent"
    assert tags["mlflow.runName"] == f"compare {NAME}"
    assert nested(old) == set(runs.values())
    assert comparison_run(EXPERIMENT, NAME) == old


def test_a_wider_rerun_keeps_the_parent(record: Record, runs: Runs) -> None:
    """A row or a seed added is only more params, metrics and runs: nothing to clear."""
    narrower = {label: ROWS[label] for label in ("equal", "dwa")}
    old = record(narrower, (0, 1))
    assert current_parent(old, NAME, *content(runs, ROWS, SEEDS)) == old
    assert comparison_run(EXPERIMENT, NAME) == old


def _redefine_a_row(children: dict[str, str], params: dict[str, Any],
                    metrics: dict[str, float]) -> str:
    params["row.dwa"] = "train.weighting=dwa,train.epochs=2"
    return "row.dwa was 'train.weighting=dwa', now 'train.weighting=dwa,train.epochs=2'"


def _change_a_setting(children: dict[str, str], params: dict[str, Any],
                      metrics: dict[str, float]) -> str:
    params["set"] = "train.epochs=3"
    return "set was '-', now 'train.epochs=3'"


def _drop_an_interval(children: dict[str, str], params: dict[str, Any],
                      metrics: dict[str, float]) -> str:
    del metrics["dwa/delta_m_pct/ci_low"], metrics["dwa/delta_m_pct/ci_high"]
    return "metrics dwa/delta_m_pct/ci_high, dwa/delta_m_pct/ci_low no longer measured"


def _drop_a_run(children: dict[str, str], params: dict[str, Any],
                metrics: dict[str, float]) -> str:
    run = next(run for run, row in children.items() if row == "famo")
    del children[run]
    return "runs famo seed 0 no longer in it"


@pytest.mark.parametrize("change", [_redefine_a_row, _change_a_setting, _drop_an_interval,
                                    _drop_a_run])
def test_anything_the_parent_would_keep_that_is_no_longer_recorded_supersedes_it(
        record: Record, runs: Runs, caplog: pytest.LogCaptureFixture,
        change: Callable[[dict[str, str], dict[str, Any], dict[str, float]], str]) -> None:
    old = record(ROWS, SEEDS)
    children, params, metrics = content(runs, ROWS, SEEDS)
    expected = change(children, params, metrics)
    with caplog.at_level(logging.WARNING, logger="multitask.tracking.groups"):
        new = current_parent(old, NAME, children, params, metrics)
    assert new != old
    assert client().get_run(old).data.tags["multitask.comparison.role"] == "superseded"
    assert comparison_run(EXPERIMENT, NAME) == new
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert expected in warning and old in warning
    # the new parent takes the new definition, which the old one could not
    with caplog.at_level(logging.WARNING, logger="multitask.tracking.groups"):
        caplog.clear()
        record_comparison(new, NAME, children, metrics=metrics, params=params, tags={},
                          artifacts=[])
    assert not caplog.records
    assert client().get_run(new).data.params == {k: str(v) for k, v in params.items()}
    assert current_parent(new, NAME, children, params, metrics) == new
