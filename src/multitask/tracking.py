"""The only module that talks to MLflow: where the store is, one run per pipeline execution.

``train`` opens a run with :func:`stage_run` and records its id in ``reports/train.json``;
``evaluate`` reopens it by that id. Whatever happens inside the block, the run never stays
RUNNING: it ends FINISHED on success and FAILED on an exception, Ctrl-C or SIGTERM (the signal is
turned into ``SystemExit(143)`` while the block runs; only SIGKILL can still leave it RUNNING).

The store is ``$MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<repo>/mlflow.db`` with artifacts
in ``<repo>/mlartifacts/``. ``<repo>`` is the original repository, also for the sample pipeline
(run in ``sample/``) and for ``dvc exp run --temp``/``--queue``, which execute in a copy under
``<repo>/.dvc/tmp/exps/``: every run lands in one store.

mlflow is imported inside the functions that need it, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import re
import signal
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from multitask.config import Params, flatten

if TYPE_CHECKING:
    import numpy as np
    import torch
    from matplotlib.figure import Figure
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

URI_ENV = "MLFLOW_TRACKING_URI"
STORE_FILE = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
MODEL_NAME = "model"  # the logged model's name inside its run
MODEL_URI_TAG = "multitask.model_uri"  # where promote finds the run's model
_TEMP_EXPERIMENT_SEGMENT = (".dvc", "tmp", "exps")
# MLflow's async logging thread otherwise polls its queue with a 1 s timeout, so ending every run
# waits up to a second for it; with a buffer it waits on an event that ending the run sets, and
# merges the batches queued meanwhile (one write per buffer period).
_ASYNC_BUFFER = ("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", "2")


# ------------------------------------------------------------------------------ where the store is
def repo_root(start: str | os.PathLike[str] | None = None) -> Path:
    """The original repository's root, seen from ``start`` (default: the current folder).

    ``dvc exp run --temp`` and queued experiments run in ``<repo>/.dvc/tmp/exps/<tmp>/``, a copy
    that has its own ``.dvc`` folder; the store must still be the original's, so that segment is
    looked for first. Otherwise the nearest folder holding ``.dvc`` (then ``.git``) wins, which
    makes ``sample/`` share the root's store. Outside any repository: ``start`` itself.
    """
    here = Path(start if start is not None else Path.cwd()).resolve()
    parts = here.parts
    width = len(_TEMP_EXPERIMENT_SEGMENT)
    for index in range(len(parts) - width + 1):
        if parts[index:index + width] == _TEMP_EXPERIMENT_SEGMENT:
            return Path(*parts[:index])
    for marker in (".dvc", ".git"):
        for folder in (here, *here.parents):
            if (folder / marker).exists():
                return folder
    return here


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else the SQLite store at the repository root."""
    configured = os.environ.get(URI_ENV, "").strip()
    if configured:
        return configured
    return f"sqlite:///{repo_root() / STORE_FILE}"


def artifact_root(uri: str) -> Path | None:
    """Where new experiments of a SQLite store keep artifacts: ``mlartifacts/`` beside the file.

    MLflow's own default is ``./mlruns`` relative to the *current* folder, which would scatter
    artifacts between the root, ``sample/`` and temporary experiment copies. For other stores
    (a tracking server, which proxies artifacts) the server decides: None.
    """
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri.removeprefix("sqlite:///"))
    return (database.parent / ARTIFACT_DIR).resolve()


def client() -> MlflowClient:
    """An MlflowClient on :func:`tracking_uri` (tracking and registry in the same store)."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "experiment"


def experiment_id(name: str) -> str:
    """The id of experiment ``name``, created (artifacts under :func:`artifact_root`) if new."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client()
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is None:
        root = artifact_root(tracking_uri())
        location = (root / _slug(name)).as_uri() if root else None
        try:
            return mlflow_client.create_experiment(name, artifact_location=location)
        except MlflowException as exc:
            # Two queued experiments may create it at the same moment: take the winner's.
            experiment = mlflow_client.get_experiment_by_name(name)
            if experiment is None:
                raise RuntimeError(
                    f"MLflow store {tracking_uri()}: cannot create experiment '{name}': {exc}"
                ) from exc
    if experiment.lifecycle_stage == "deleted":
        raise RuntimeError(
            f"MLflow store {tracking_uri()}: experiment '{name}' is deleted; restore it with "
            f"`mlflow experiments restore --experiment-id {experiment.experiment_id}` or set "
            "tracking.experiment in params.yaml to another name"
        )
    return experiment.experiment_id


def get_run(run_id: str) -> Any:
    """The MLflow run ``run_id``; a clear error when the store does not have it."""
    from mlflow.exceptions import MlflowException

    if not isinstance(run_id, str) or not re.fullmatch(r"[0-9a-f]{32}", run_id):
        raise ValueError(
            f"run id {run_id!r} is not an MLflow run id (32 hex digits); check "
            "reports/train.json or --run-id, or rerun `multitask train`"
        )
    try:
        return client().get_run(run_id)
    except MlflowException as exc:
        raise ValueError(
            f"run {run_id} not found in the MLflow store {tracking_uri()} ({exc.message}); "
            f"check {URI_ENV} and reports/train.json, or rerun `multitask train`"
        ) from None


# --------------------------------------------------------------------------------------- the run
def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                              check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout


def _device(params: Params) -> tuple[str, str]:
    """The device the trainer will pick ('cuda' or 'cpu') and its name, for the run's tags."""
    import torch

    wanted = params.train.device
    if wanted == "cuda" or (wanted == "auto" and torch.cuda.is_available()):
        name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "unavailable"
        return "cuda", name
    return "cpu", "cpu"


def run_tags(params: Params, stage: str) -> dict[str, str]:
    """Provenance tags: git commit and dirty flag, DVC experiment, device, torch and CUDA."""
    import torch

    commit = (_git("rev-parse", "HEAD") or "").strip() or "unknown"
    status = _git("status", "--porcelain", "--untracked-files=no")
    device, device_name = _device(params)
    tags = {
        "git.commit": commit,
        "mlflow.source.git.commit": commit,
        "git.dirty": "unknown" if status is None else str(bool(status.strip())).lower(),
        "device": device,
        "device.name": device_name,
        "torch.version": torch.__version__,
        "cuda.version": torch.version.cuda or "none",
        "stage": stage,
        "dataset": params.data.dataset,
    }
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.experiment"] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc.baseline_rev"] = os.environ["DVC_EXP_BASELINE_REV"]
    return tags


def _param_value(value: Any) -> str:
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
        """Per-epoch metrics (``train/<task>/loss``, ``val/<task>/accuracy``, ``weight/<task>``
        ...) at step ``epoch``: one batch, sent asynchronously so training never waits on it."""
        self.log_metrics(metrics, step=epoch)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Any metrics at ``step`` (default 0), in one asynchronous batch."""
        if self.run_id is None or not metrics:
            return
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        batch = [Metric(key, float(value), timestamp, step or 0) for key, value in metrics.items()]
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

        client().log_batch(self.run_id, params=[Param(k, _param_value(v))
                                                for k, v in params.items()])

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

    def log_model(self, model: torch.nn.Module, input_example: np.ndarray,
                  task_names: list[str], *, class_names: dict[str, list[str]] | None = None,
                  pixel_mean: float = 0.0, pixel_std: float = 1.0) -> str | None:
        """Log ``model`` with ``mlflow.pytorch.log_model`` so that pyfunc predicts every task.

        The logged module is :class:`multitask.predict.TaskLabels` around ``model``: it takes
        float32 raw pixel values 0..255 shaped (N, C, H, W) (an (N, H, W) example gets C=1),
        normalises them as ``(x / 255 - pixel_mean) / pixel_std`` (pass the statistics the
        trainer used) and returns an int64 (N, tasks) array of predicted class indices, one
        column per task in ``task_names`` order. The task and class names travel in the model's
        metadata; :func:`multitask.predict.predict_labels` turns the array into a named table.
        It is saved as a ``torch.export`` program (pt2), so loading it needs torch, not this
        package, and the batch dimension is dynamic. Only the run :func:`stage_run` opened
        (MLflow's active run) can log a model. Returns the model URI (``models:/<id>``), also
        stored in the run's ``multitask.model_uri`` tag; None, logging nothing, when
        ``tracking.log_model`` is false.
        """
        if self.run_id is None or not self.log_models:
            return None
        import mlflow
        import mlflow.pytorch
        import numpy as np
        import torch
        from mlflow.models import infer_signature

        from multitask.predict import TaskLabels

        active = mlflow.active_run()
        if active is None or active.info.run_id != self.run_id:
            raise RuntimeError(f"log_model: run {self.run_id} is not the active stage run; "
                               "log models inside `with stage_run(...)`")
        example = np.asarray(input_example, dtype=np.float32)
        if example.ndim == 3:
            example = example[:, None]
        if len(example) == 1:  # torch.export fixes a batch dimension of size 1 to 1
            example = np.concatenate([example, example])
        # A CPU copy: the caller's model stays where it is (``.cpu()`` would move it in place).
        wrapped = TaskLabels(copy.deepcopy(model).cpu(), task_names, pixel_mean=pixel_mean,
                             pixel_std=pixel_std).eval()
        with torch.no_grad():
            output = wrapped(torch.from_numpy(example)).numpy()
        info = mlflow.pytorch.log_model(
            wrapped,
            name=MODEL_NAME,
            signature=infer_signature(example, output),
            input_example=example,
            # Explicit requirements: inferring them reloads the model in a subprocess (seconds).
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                              f"numpy=={np.__version__}", f"mlflow=={mlflow.__version__}"],
            # pt2 (torch.export): the saved graph loads without this package's classes.
            serialization_format="pt2",
            metadata={"task_names": list(task_names), "class_names": class_names or {},
                      "input": "float32 (N, C, H, W) raw pixel values 0..255"},
        )
        self.set_tags({MODEL_URI_TAG: info.model_uri})
        return info.model_uri

    def log_dataset(self, meta: dict[str, Any], source: str) -> None:
        """Record the processed data as the run's training input (``mlflow.log_input``).

        The digest column holds 36 characters, so the digest is the first 32 hex digits of
        ``meta['sha256']``; the full hash is the run's ``data.sha256`` tag.
        """
        if self.run_id is None:
            return
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        sha256 = str(meta["sha256"])
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": both local
            warnings.simplefilter("ignore", UserWarning)
            data_source = resolve_dataset_source(str(Path(source).resolve()))
        dataset = MetaDataset(data_source, name=str(meta.get("dataset", Path(source).name)),
                              digest=sha256[:32])
        tags = [InputTag("mlflow.data.context", "training")]
        if meta.get("splits"):
            tags.append(InputTag("splits", json.dumps(meta["splits"])))
        client().log_inputs(self.run_id, [DatasetInput(dataset._to_mlflow_entity(), tags)])
        self.set_tags({"data.sha256": sha256})


def _sigterm_raises() -> Callable[[], None]:
    """Turn SIGTERM into ``SystemExit(143)`` so the run can end FAILED; return the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)

    def terminate(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _is_failure(exc: BaseException) -> bool:
    return not (isinstance(exc, SystemExit) and exc.code in (0, None))


@contextlib.contextmanager
def _ending(run: StageRun, what: str, end: Callable[[str], None],
            finished_on: tuple[type[BaseException], ...] = ()) -> Iterator[StageRun]:
    """Yield ``run``; end it FINISHED on success (or a ``finished_on`` exception), else FAILED.

    The exception always propagates; the run's pending metrics are flushed either way.
    """
    try:
        yield run
        run.flush()
    except BaseException as exc:
        if isinstance(exc, finished_on) or not _is_failure(exc):
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
def stage_run(params: Params, stage: str, run_id: str | None = None) -> Iterator[StageRun]:
    """The MLflow run of one pipeline stage, ended FINISHED or FAILED whatever happens.

    ``run_id`` None (``train``): a new run in experiment ``tracking.experiment`` (default: the
    data set's name), named after the DVC experiment when there is one, with every param of
    ``params.yaml`` flattened and the provenance tags of :func:`run_tags`. A ``run_id``
    (``evaluate``): that run, reopened. System metrics are sampled when
    ``tracking.system_metrics``. With ``tracking.enabled`` false the run does nothing.
    """
    if not params.tracking.enabled:
        yield StageRun(None)
        return
    import mlflow

    os.environ.setdefault(*_ASYNC_BUFFER)
    mlflow.set_tracking_uri(tracking_uri())
    system_metrics = params.tracking.system_metrics
    if run_id is None:
        experiment = params.tracking.experiment or params.data.dataset
        active = mlflow.start_run(
            experiment_id=experiment_id(experiment),
            run_name=os.environ.get("DVC_EXP_NAME") or None,
            tags=run_tags(params, stage),
            log_system_metrics=system_metrics,
        )
        run = StageRun(active.info.run_id, log_models=params.tracking.log_model)
        run.log_params(flatten(params))
    else:
        get_run(run_id)  # a clear error for a missing run before MLflow's own
        active = mlflow.start_run(run_id=run_id, log_system_metrics=system_metrics)
        run = StageRun(active.info.run_id, log_models=params.tracking.log_model)
        run.set_tags({"stage": stage})
    log.info("MLflow run %s (%s) in %s", run.run_id, stage, tracking_uri())
    restore_sigterm = _sigterm_raises()
    try:
        with _ending(run, stage, lambda status: mlflow.end_run(status)):
            yield run
    finally:
        restore_sigterm()


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
    created = mlflow_client.create_run(parent.info.experiment_id, run_name=run_name,
                                       tags={**(tags or {}), "mlflow.parentRunId": parent_run_id})
    run = StageRun(created.info.run_id)
    run.log_params(params or {})
    with _ending(run, run_name, lambda status: mlflow_client.set_terminated(created.info.run_id,
                                                                         status), finished_on):
        yield run


def end_run(run_id: str, status: str = "FAILED", reason: str | None = None) -> None:
    """End run ``run_id`` with ``status`` (e.g. a trial whose worker process died)."""
    if status not in {"FINISHED", "FAILED", "KILLED"}:
        raise ValueError(f"end_run: status '{status}' is not FINISHED, FAILED or KILLED")
    stage = StageRun(run_id)
    if reason:
        stage.set_tags({"failure": reason[:4000]})
    client().set_terminated(run_id, status)


# ------------------------------------------------------------------------------- loading models
def load_model(model_uri: str) -> Any:
    """``mlflow.pyfunc.load_model(model_uri)`` with an error that names the URI and the store."""
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    client()  # points the fluent API (and so models:/ URIs) at our store
    try:
        return mlflow.pyfunc.load_model(model_uri)
    except (MlflowException, OSError) as exc:
        message = getattr(exc, "message", str(exc))
        raise ValueError(
            f"cannot load model {model_uri} from the MLflow store {tracking_uri()}: {message}; "
            "check the name and alias with `multitask registry`, or set "
            f"{URI_ENV} to the store that holds it"
        ) from None


# ------------------------------------------------------------------------------------ registry
@dataclass(frozen=True)
class ModelVersion:
    """One version of a registered model, as the promotion gate needs it."""

    name: str
    version: str
    run_id: str | None
    source: str
    tags: dict[str, str]
    aliases: tuple[str, ...]


def _version(entity: Any) -> ModelVersion:
    return ModelVersion(name=entity.name, version=str(entity.version), run_id=entity.run_id,
                        source=entity.source, tags=dict(entity.tags or {}),
                        aliases=tuple(getattr(entity, "aliases", None) or ()))


def _missing(exc: Exception) -> bool:
    return getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def version_by_alias(name: str, alias: str) -> ModelVersion | None:
    """The version of registered model ``name`` holding ``alias``; None if there is none."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client()
    try:
        registered = mlflow_client.get_registered_model(name)
    except MlflowException as exc:
        if _missing(exc):
            return None
        raise
    version = dict(registered.aliases or {}).get(alias)
    return None if version is None else _version(mlflow_client.get_model_version(name, version))


def versions_of_run(name: str, run_id: str) -> list[ModelVersion]:
    """The versions of ``name`` registered from run ``run_id`` (oldest first)."""
    found = client().search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return sorted((_version(v) for v in found), key=lambda v: int(v.version))


def register_version(model_uri: str, name: str, tags: dict[str, str]) -> ModelVersion:
    """Register ``model_uri`` as a new version of ``name`` (created if new), with ``tags``."""
    import mlflow

    client()
    registered = mlflow.register_model(model_uri, name, tags=tags)
    return _version(client().get_model_version(name, registered.version))


def set_version_tags(name: str, version: str, tags: dict[str, str]) -> None:
    mlflow_client = client()
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(name, version, key, value)


def set_alias(name: str, alias: str, version: str) -> None:
    client().set_registered_model_alias(name, alias, version)


def delete_alias(name: str, alias: str) -> None:
    """Remove ``alias`` from ``name``; nothing to do when it is not set."""
    if version_by_alias(name, alias) is not None:
        client().delete_registered_model_alias(name, alias)

