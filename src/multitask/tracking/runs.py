"""The MLflow run of a stage: one run per pipeline execution, never left RUNNING.

``train`` opens a run with :func:`stage_run` and records its id in ``reports/train.json``;
``evaluate`` reopens it by that id. Whatever happens inside the block, the run never stays
RUNNING: it ends FINISHED on success and FAILED on an exception, Ctrl-C or SIGTERM (the signal is
turned into ``SystemExit(143)`` while the block runs; only SIGKILL can still leave it RUNNING).
Tuning trials are nested runs (:func:`nested_run`) created by id, so worker processes can add
them under a parent that lives in another process.

One module, not several: the run handle, the two ways of opening it and the ending that never
leaves it RUNNING are one contract; split, each part would need the others' internals.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from multitask.config import Params, flatten
from multitask.processes import signals_deferred, sigterm_raises
from multitask.tracking.models import MODEL_URI_TAG, log_model
from multitask.tracking.orphans import end_orphaned_runs, owner_tags
from multitask.tracking.provenance import run_tags
from multitask.tracking.store import (
    client,
    describe_uri,
    experiment_id,
    filter_literal,
    get_run,
    require_pipeline_store,
    store_errors,
    tracking_uri,
)

if TYPE_CHECKING:
    import numpy as np
    import torch
    from matplotlib.figure import Figure

    from multitask.tasks import Task

log = logging.getLogger(__name__)

# MLflow's async logging thread otherwise polls its queue with a 1 s timeout, so ending every run
# waits up to a second for it; with a buffer it waits on an event that ending the run sets, and
# merges the batches queued meanwhile (one write per buffer period).
_ASYNC_BUFFER = ("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", "2")
# The processed data's full sha256 on a training run (log_dataset); promotion copies it to
# the registered version and compares champion and candidate by it.
DATA_TAG = "data.sha256"
# "false" on a train run until an evaluate of it completes ("true"): a pipeline stopped between
# the two stages leaves the run FINISHED without test metrics, and this is what says so (the
# runs table's filter: tags.evaluated = 'false').
EVALUATED_TAG = "evaluated"


def param_value(value: Any) -> str:
    """A param spelt as YAML would (true, null, [1, 2]) rather than Python's repr."""
    return value if isinstance(value, str) else json.dumps(value)


@dataclass
class StageRun:
    """A handle on one MLflow run; with ``run_id`` None every method does nothing.

    Every call names the run explicitly (never MLflow's "active run"), so the handle of a nested
    trial run and that of its parent can be used side by side.
    """

    run_id: str | None
    log_models: bool = True  # tracking.log_model: false makes log_model a no-op
    _pending: list[Any] = field(default_factory=list, repr=False)

    @property
    def enabled(self) -> bool:
        return self.run_id is not None

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """Per-epoch metrics (``train/loss/<task>``, ``val/accuracy/<task>``, ``weight/<task>``
        ...) at step ``epoch``: one batch, sent asynchronously so training never waits on it."""
        self.log_metrics(metrics, step=epoch)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None, *,
                    model_id: str | None = None, dataset: tuple[str, str] | None = None) -> None:
        """Any metrics at ``step`` (default 0), in one asynchronous batch; with ``model_id``
        also the logged model's metrics, measured on ``dataset`` ``(name, digest)``."""
        if self.run_id is None or not metrics:
            return
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        name, digest = dataset or (None, None)
        batch = [Metric(key, float(value), timestamp, step or 0, model_id=model_id,
                        dataset_name=name, dataset_digest=digest)
                 for key, value in metrics.items()]
        operation = client().log_batch(self.run_id, metrics=batch, synchronous=False)
        if operation is not None:
            self._pending.append(operation)

    def flush(self) -> None:
        """Send every queued batch now and wait for it; raise if one was rejected (a bad key)."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        import mlflow

        client()  # the fluent flush below acts on the store of the current tracking URI
        mlflow.flush_async_logging()  # wakes the logging thread instead of waiting out its buffer
        for operation in pending:
            operation.wait()

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.run_id is None or not tags:
            return
        from mlflow.entities import RunTag

        client().log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_params(self, params: dict[str, Any]) -> None:
        """Params spelt as ``params.yaml`` spells them (true, null, [1, 2])."""
        if self.run_id is None or not params:
            return
        from mlflow.entities import Param

        client().log_batch(self.run_id, params=[Param(k, v)
                                                for k, v in logged_params(params).items()])

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None
                     ) -> None:
        """A file, or a folder under its own name, at ``artifact_path`` in the run."""
        if self.run_id is None:
            return
        path = Path(path)
        if path.is_dir():
            target = f"{artifact_path}/{path.name}" if artifact_path else path.name
            client().log_artifacts(self.run_id, str(path), artifact_path=target)
        elif path.is_file():
            client().log_artifact(self.run_id, str(path), artifact_path=artifact_path)
        else:
            raise FileNotFoundError(f"{path}: not found; cannot log it to MLflow run "
                                    f"{self.run_id}; run the stage that writes it first")

    def log_figure(self, figure: Figure, artifact_file: str) -> None:
        """A matplotlib figure as a PNG at ``artifact_file`` (which must end in .png)."""
        if self.run_id is None:
            return
        if not artifact_file.endswith(".png"):
            raise ValueError(f"log_figure: artifact_file '{artifact_file}' must end in .png")
        client().log_figure(self.run_id, figure, artifact_file)

    def log_model_metrics(self, metrics: dict[str, float], meta: dict[str, Any]) -> None:
        """Metrics of the run's logged model on the processed data ``meta`` describes, also
        linked to that model (MLflow 3's LoggedModel metrics: the experiment's Models tab);
        only on the run when it logged no model (``tracking.log_model`` false)."""
        if self.run_id is None:
            return
        uri = get_run(self.run_id).data.tags.get(MODEL_URI_TAG, "")
        model_id = uri.removeprefix("models:/") if uri.startswith("models:/") else None
        self.log_metrics(metrics, model_id=model_id,
                         dataset=_dataset_identity(meta) if model_id else None)

    def log_model(self, model: torch.nn.Module, input_example: np.ndarray,
                  task_names: list[str], *, class_names: dict[str, list[str]] | None = None,
                  pixel_mean: float | Sequence[float] = 0.0,
                  pixel_std: float | Sequence[float] = 1.0,
                  tasks: Sequence[Task] | None = None, resize: str | None = None) -> str | None:
        """Log the served model (see :func:`multitask.tracking.models.log_model`: ``tasks``
        gives each task's kind, ``resize`` how the data fitted its images); None, logging
        nothing, when tracking is off or ``tracking.log_model`` is false."""
        if self.run_id is None or not self.log_models:
            return None
        return log_model(self.run_id, model, input_example, task_names,
                         class_names=class_names, pixel_mean=pixel_mean, pixel_std=pixel_std,
                         tasks=tasks, resize=resize)

    def log_dataset(self, meta: dict[str, Any], source: str) -> None:
        """Record the processed data as the run's training input (``mlflow.log_input``); the
        full hash (MLflow's digest holds 32 digits of it) is the run's ``data.sha256`` tag."""
        if self.run_id is None:
            return
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        name, digest = _dataset_identity(meta)
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": both local
            warnings.simplefilter("ignore", UserWarning)
            data_source = resolve_dataset_source(str(Path(source).resolve()))
        dataset = MetaDataset(data_source, name=name, digest=digest)
        tags = [InputTag("mlflow.data.context", "training")]
        if meta.get("splits"):
            tags.append(InputTag("splits", json.dumps(meta["splits"])))
        client().log_inputs(self.run_id, [DatasetInput(dataset._to_mlflow_entity(), tags)])
        self.set_tags({DATA_TAG: str(meta["sha256"])})


def _dataset_identity(meta: dict[str, Any]) -> tuple[str, str]:
    """``(name, digest)`` of the processed data in MLflow: its name and the first 32 hex
    digits of its sha256 (MLflow's digest column holds 36 characters)."""
    return str(meta.get("dataset", "processed")), str(meta["sha256"])[:32]


def experiment_name(params: Params) -> str:
    """The MLflow experiment a pipeline's runs go to: ``tracking.experiment``, else the data
    set's name."""
    return params.tracking.experiment or params.data.dataset


def logged_params(flat: dict[str, Any]) -> dict[str, str]:
    """Flattened params as a run records them: spelt as ``params.yaml`` spells them (true,
    null, [1, 2])."""
    return {key: param_value(value) for key, value in flat.items()}


def stage_run_name(stage: str) -> str | None:
    """A new run's name: the DVC experiment's for ``train`` (the run a user compares), with the
    stage after it for the others (``exp-3f2a1 tune``), so the table of runs does not show
    three alike; None (MLflow picks one) outside ``dvc exp run``."""
    experiment = os.environ.get("DVC_EXP_NAME")
    if not experiment:
        return None
    return experiment if stage == "train" else f"{experiment} {stage}"


def _is_failure(exc: BaseException) -> bool:
    return not (isinstance(exc, SystemExit) and exc.code in (0, None))


@contextlib.contextmanager
def _ending(run: StageRun, what: str, end: Callable[[str], None],
            finished_on: tuple[type[BaseException], ...] = (),
            keep_finished: bool = False) -> Iterator[StageRun]:
    """Yield ``run``; end it FINISHED on success (or a ``finished_on`` exception), else FAILED.

    ``keep_finished``: the run is a FINISHED one reopened by a rerun that records nothing new,
    so it ends FINISHED whatever happens to the rerun (the work it holds is complete; FAILED
    would also hide it from :func:`rerun_of`, and the next rerun would add an empty run).
    The exception always propagates; the run's pending metrics are flushed either way.
    """
    try:
        yield run
        run.flush()
    except BaseException as exc:
        if isinstance(exc, finished_on) or not _is_failure(exc) or keep_finished:
            if keep_finished and _is_failure(exc):
                log.warning("MLflow run %s stays FINISHED: this %s rerun, which records "
                            "nothing new, stopped (%s)", run.run_id, what, type(exc).__name__)
            _flush_quietly(run)
            end("FINISHED")
            raise
        reason = f"{what}: {type(exc).__name__}: {exc}"[:4000]
        log.error("MLflow run %s ends FAILED (%s)", run.run_id, reason)
        _flush_quietly(run)
        with contextlib.suppress(Exception):  # the store may be what failed; ending matters more
            run.set_tags({"failure": reason})
        end("FAILED")
        raise
    else:
        end("FINISHED")


def _flush_quietly(run: StageRun) -> None:
    try:
        run.flush()
    except Exception:  # already leaving with an exception; do not replace it
        log.exception("MLflow run %s: some metrics could not be logged", run.run_id)


@contextlib.contextmanager
def stage_run(params: Params, stage: str, run_id: str | None = None,
              records_nothing_new: bool = False) -> Iterator[StageRun]:
    """The MLflow run of one pipeline stage, ended FINISHED or FAILED whatever happens.

    ``run_id`` None (``train``): a new run in experiment ``tracking.experiment`` (default: the
    data set's name), named after the DVC experiment when there is one, with every param of
    ``params.yaml`` flattened and the provenance tags of :func:`run_tags`. A ``run_id``
    (``evaluate``; ``tune`` on a finished study, see
    :func:`rerun_of`): that run, reopened. ``records_nothing_new`` (with a ``run_id`` of a
    FINISHED run: ``tune`` on a finished study): the run ends FINISHED even when the rerun
    fails or is interrupted. System metrics are sampled when ``tracking.system_metrics``. With
    ``tracking.enabled`` false the run does nothing.
    """
    if not params.tracking.enabled:
        yield StageRun(None)
        return
    import mlflow

    require_pipeline_store(Path(params.source).parent)
    os.environ.setdefault(*_ASYNC_BUFFER)
    mlflow.set_tracking_uri(tracking_uri())
    system_metrics = params.tracking.system_metrics
    # SIGTERM raises from before the run exists, and the run is guarded from the moment it
    # does: a signal while its params are logged must not leave it RUNNING (SIGTERM) or let
    # MLflow's exit hook end it FINISHED (Ctrl-C).
    restore_sigterm = sigterm_raises()  # so the run can end FAILED
    guarded = False
    try:
        if run_id is None:
            experiment = experiment_id(experiment_name(params))
            end_orphaned_runs(experiment, stage)
            active = mlflow.start_run(
                experiment_id=experiment,
                run_name=stage_run_name(stage),
                tags={**run_tags(params, stage), **owner_tags()},
                log_system_metrics=system_metrics,
            )
        else:
            reopened = get_run(run_id)  # a clear error for a missing run before MLflow's own
            end_orphaned_runs(reopened.info.experiment_id, stage, keep=run_id)
            active = mlflow.start_run(run_id=run_id, log_system_metrics=system_metrics)
        run = StageRun(active.info.run_id, log_models=params.tracking.log_model)
        guarded = True
        with _ending(run, stage, partial(_end_active, reopened=run_id is not None),
                     keep_finished=records_nothing_new and run_id is not None):
            if run_id is None:
                run.log_params(flatten(params))
            else:
                run.set_tags({"stage": stage, **owner_tags()})
            log.info("MLflow run %s (%s) in %s", run.run_id, stage, describe_uri())
            yield run
    except BaseException:
        if not guarded and mlflow.active_run() is not None:  # interrupted inside start_run
            with contextlib.suppress(Exception):
                mlflow.end_run("FAILED")
        raise
    finally:
        restore_sigterm()


@store_errors
def rerun_of(params: Params, stage: str, tags: dict[str, str]) -> str | None:
    """The latest FINISHED run of ``stage`` in the experiment ``params`` name that carries
    ``tags`` and exactly the params :func:`stage_run` would log for ``params``; None when there
    is none or tracking is off. A rerun that records nothing new (``tune`` when DVC reruns it
    on a study with no trial left) reopens it with ``stage_run(..., run_id=...)`` instead of
    adding an empty copy beside the run that holds the work."""
    if not params.tracking.enabled:
        return None
    experiment = experiment_id(experiment_name(params))
    wanted = logged_params(flatten(params))
    found = client().search_runs(  # tags compared here: a study's name has ( , # in it
        [experiment], max_results=50, order_by=["attributes.start_time DESC"],
        filter_string=f"attributes.status = 'FINISHED' and tags.stage = {filter_literal(stage)}")
    return next((str(run.info.run_id) for run in found
                 if run.data.params == wanted
                 and all(run.data.tags.get(k) == v for k, v in tags.items())), None)


def _end_active(status: str, reopened: bool) -> None:
    """End MLflow's active run with ``status``; a reopened run (``evaluate``) that now ends
    FINISHED loses the ``failure`` tag an earlier, interrupted attempt left on it."""
    import mlflow

    active = mlflow.active_run()
    if status == "FINISHED" and reopened and active is not None:
        with contextlib.suppress(Exception):
            if "failure" in get_run(active.info.run_id).data.tags:
                client().delete_tag(active.info.run_id, "failure")
    mlflow.end_run(status)


@contextlib.contextmanager
def nested_run(parent_run_id: str | None, run_name: str, *, params: dict[str, Any] | None = None,
               tags: dict[str, str] | None = None,
               finished_on: tuple[type[BaseException], ...] = ()) -> Iterator[StageRun]:
    """A child run of ``parent_run_id`` (an Optuna trial under the ``tune`` stage's run).

    Created by id, not as MLflow's active run, so worker processes can open one under a
    parent that lives in another process. Ends FINISHED on success or on an exception of
    ``finished_on`` (a pruned trial is not a failure), FAILED otherwise; the exception
    propagates. ``parent_run_id`` None (tracking disabled): a run that does nothing.
    """
    if parent_run_id is None:
        yield StageRun(None)
        return
    os.environ.setdefault(*_ASYNC_BUFFER)
    mlflow_client = client()
    parent = get_run(parent_run_id)
    with contextlib.ExitStack() as creating:
        # Ctrl-C or SIGTERM while the run is created would leave it RUNNING: they are held
        # until it is guarded, then end it FAILED
        creating.enter_context(signals_deferred(signal.SIGINT, signal.SIGTERM))
        created = mlflow_client.create_run(parent.info.experiment_id, run_name=run_name, tags={
            **(tags or {}), "mlflow.parentRunId": parent_run_id})
        run = StageRun(created.info.run_id)
        held = creating.pop_all()
    with _ending(run, run_name, lambda status: mlflow_client.set_terminated(created.info.run_id,
                                                                         status), finished_on):
        held.close()  # a signal that came meanwhile is handled here
        run.log_params(params or {})
        yield run
