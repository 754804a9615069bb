"""Where the MLflow store is: one store for the root pipeline, ``sample/`` and experiment copies.

The store is ``$MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<repo>/mlflow.db`` with artifacts
in ``<repo>/mlartifacts/``. ``<repo>`` is the original repository, also for the sample pipeline
(run in ``sample/``) and for ``dvc exp run --temp``/``--queue``, which execute in a copy under
``<repo>/.dvc/tmp/exps/``: every run lands in one store.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from multitask.io import exclusive_lock
from multitask.redaction import redact

if TYPE_CHECKING:
    from mlflow import MlflowClient

URI_ENV = "MLFLOW_TRACKING_URI"
STORE_FILE = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
_TEMP_EXPERIMENT_SEGMENT = (".dvc", "tmp", "exps")
P = ParamSpec("P")
R = TypeVar("R")


class StoreError(RuntimeError):
    """The MLflow store could not be reached or refused a request; credentials are masked."""


_FILTER_SAFE = re.compile(r"[A-Za-z0-9 ._:/@+-]{1,256}")


def filter_literal(value: str) -> str:
    """``value`` as a quoted literal of an MLflow search filter; values that could end the
    quote or change the filter (quotes, backslashes, control characters) are refused."""
    if not _FILTER_SAFE.fullmatch(value):
        raise ValueError(f"{value!r} cannot be used in an MLflow search: use letters, digits, "
                         "spaces and . _ : / @ + - only")
    return f"'{value}'"


def describe_uri() -> str:
    """:func:`tracking_uri` with any password masked: the only form that is logged or raised."""
    return redact(tracking_uri())


def store_errors(function: Callable[P, R]) -> Callable[P, R]:
    """Turn MLflow's and the HTTP client's failures into one :class:`StoreError` line that
    names the store (credentials masked) and what to check."""
    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        from mlflow.exceptions import MlflowException
        from requests.exceptions import RequestException

        try:
            return function(*args, **kwargs)
        except (MlflowException, RequestException) as exc:
            message = redact(str(getattr(exc, "message", exc))).splitlines()[0][:500]
            raise StoreError(f"MLflow store {describe_uri()}: {message}; check {URI_ENV} and "
                             "that the tracking server is up") from None

    return wrapper


def repo_root(start: str | os.PathLike[str] | None = None) -> Path:
    """The original repository's root, seen from ``start`` (default: the current folder).

    ``dvc exp run --temp`` and queued experiments run in ``<repo>/.dvc/tmp/exps/<tmp>/``, a copy
    that has its own ``.dvc`` folder; the store must still be the original's, so that segment is
    looked for first. Otherwise the nearest folder holding ``.dvc`` (then ``.git``) wins, which
    makes ``sample/`` share the root's store. Outside any repository: ``start`` itself.
    """
    here = Path(start if start is not None else Path.cwd()).resolve()
    return _marked_root(here) or here


def _marked_root(here: Path) -> Path | None:
    """:func:`repo_root` of the resolved folder ``here``; None outside any repository."""
    parts = here.parts
    width = len(_TEMP_EXPERIMENT_SEGMENT)
    for index in range(len(parts) - width + 1):
        if parts[index:index + width] == _TEMP_EXPERIMENT_SEGMENT:
            return Path(*parts[:index])
    for marker in (".dvc", ".git"):
        for folder in (here, *here.parents):
            if (folder / marker).exists():
                return folder
    return None


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


def client(*, create: bool = True) -> MlflowClient:
    """An MlflowClient on :func:`tracking_uri` (tracking and registry in the same store).

    MLflow creates a SQLite store's file when a client first opens it. Commands that only read
    (``predict``, ``registry``) pass ``create=False``: a store that does not exist is then a
    :class:`StoreError` saying which file was looked for, not a new empty store.
    """
    import mlflow

    uri = tracking_uri()
    if not create:
        _require_store(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if not uri.startswith("sqlite:///") or uri in _READY:
        return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    # MLflow creates or migrates a SQLite file's tables when a client first opens it; two
    # experiments of one queue starting together on a new store both did, and one failed
    # ("table _alembic_tmp_experiments already exists"). One process at a time, then.
    database = Path(uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(database.with_name(database.name + ".lock")):
        mlflow_client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        mlflow_client.search_experiments(max_results=1)  # the tracking store's tables
        mlflow_client.search_registered_models(max_results=1)  # the registry's
    _READY.add(uri)
    return mlflow_client


_READY: set[str] = set()  # SQLite stores whose tables this process has seen ready


def _require_store(uri: str) -> None:
    """Raise :class:`StoreError` when ``uri`` is a SQLite store whose file does not exist."""
    if not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).is_file():
        return
    if os.environ.get(URI_ENV, "").strip():
        where = f"{URI_ENV} names it"
    elif _marked_root(Path.cwd().resolve()) is None:
        where = (f"outside any repository (no .dvc or .git above {Path.cwd()}), the store "
                 "looked for is the current folder's")
    else:
        where = "the repository's store; no pipeline here has logged a run yet"
    raise StoreError(f"MLflow store {redact(uri)}: no such file ({where}); run from the "
                     f"repository whose pipeline logged the model, or set {URI_ENV} to the "
                     "store that holds it (nothing was created)")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "experiment"


@store_errors
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
                    f"MLflow store {describe_uri()}: cannot create experiment '{name}': "
                    f"{redact(str(exc))}"
                ) from exc
    if experiment.lifecycle_stage == "deleted":
        raise RuntimeError(
            f"MLflow store {describe_uri()}: experiment '{name}' is deleted; restore it with "
            f"`mlflow experiments restore --experiment-id {experiment.experiment_id}` or set "
            "tracking.experiment in params.yaml to another name"
        )
    return experiment.experiment_id


@store_errors
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
            f"run {run_id} not found in the MLflow store {describe_uri()} "
            f"({redact(exc.message)}); "
            f"check {URI_ENV} and reports/train.json, or rerun `multitask train`"
        ) from None


@store_errors
def end_run(run_id: str, status: str = "FAILED", reason: str | None = None) -> None:
    """End run ``run_id`` with ``status`` (e.g. a trial whose worker process died)."""
    if status not in {"FINISHED", "FAILED", "KILLED"}:
        raise ValueError(f"end_run: status '{status}' is not FINISHED, FAILED or KILLED")
    if reason:
        client().set_tag(run_id, "failure", reason[:4000])
    client().set_terminated(run_id, status)
