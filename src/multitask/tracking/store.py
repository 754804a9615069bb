"""Where the MLflow store is: one store for the root pipeline, ``sample/`` and experiment copies.

The store is ``$MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<repo>/mlflow.db`` with artifacts
in ``<repo>/mlartifacts/``. ``<repo>`` is the original repository, also for the sample pipeline
(run in ``sample/``) and for ``dvc exp run --temp``/``--queue``, which execute in a copy under
``<repo>/.dvc/tmp/exps/``: every run lands in one store.

A store that cannot serve is one :class:`StoreError` line naming it (credentials masked), the
cause and what to check: a tracking server that does not answer (refused, unknown host, timed
out) or refuses the credentials (HTTP 401 or 403), a SQLite path that is a folder, not a
database, or in a folder that cannot be written.
:func:`read_only_requests` bounds MLflow's HTTP retries (unless the user set them) for commands
that only read, so an unreachable server is reported in seconds.

One module, not several: where the store is and why it cannot serve are one question, asked
by every command that opens it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
from collections.abc import Callable, Iterator
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
    """Turn MLflow's, the HTTP client's and SQLAlchemy's failures into one :class:`StoreError`
    line that names the store (credentials masked) and what to check."""
    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except _failures() as exc:
            raise _store_error(exc) from None

    return wrapper


def _failures() -> tuple[type[Exception], ...]:
    """What the store's clients raise when it cannot serve a request."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException
    from sqlalchemy.exc import SQLAlchemyError

    return MlflowException, RequestException, SQLAlchemyError


def server_problem(exc: BaseException) -> str | None:
    """What to tell about ``exc`` when the tracking server did not answer or refused the
    credentials (HTTP 401 or 403, from a server or proxy that authenticates users), naming it
    (password masked) and what to check; None for any other failure."""
    unreachable = _unreachable_reason(exc)
    if unreachable is not None:
        return (f"MLflow tracking server {describe_uri()} is unreachable ({unreachable}); "
                f"check that the server is running and that {URI_ENV} names it")
    status = getattr(exc, "get_http_status_code", lambda: None)()
    if status in (401, 403):
        return (f"MLflow tracking server {describe_uri()} refused the credentials (HTTP "
                f"{status}); check the user name and password in {URI_ENV} (or "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD) and that this user "
                "may use the server")
    return None


def _store_error(exc: BaseException) -> StoreError:
    """The :class:`StoreError` for ``exc``: an unreachable server or refused credentials say
    so, anything else gives the store's own reason (first line)."""
    problem = server_problem(exc)
    if problem is not None:
        return StoreError(problem)
    message = (redact(str(getattr(exc, "message", exc))).splitlines() or ["no reason given"]
               )[0][:500]
    server = "" if describe_uri().startswith("sqlite:") else " and that the tracking server is up"
    return StoreError(f"MLflow store {describe_uri()}: {message}; check {URI_ENV}{server}")


def _unreachable_reason(exc: BaseException) -> str | None:
    """Why the tracking server did not answer (``connection refused``, ``timed out``, ...) when
    ``exc`` or an exception behind it is a connection failure; None for any other failure.

    MLflow raises an :class:`~mlflow.exceptions.MlflowException` ("API request to <url> failed
    with exception ...", error code INTERNAL_ERROR) once its retries are spent, with the
    ``requests`` error as its cause or context; the artifact client may raise that error itself.
    """
    from requests.exceptions import ConnectionError as RequestsConnectionError
    from requests.exceptions import SSLError, Timeout

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, Timeout):
            return f"no answer within {os.environ.get(HTTP_TIMEOUT_ENV) or 120} s"
        if isinstance(current, RequestsConnectionError) and not isinstance(current, SSLError):
            errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(current))
            return errno[1].strip().lower() if errno else "no connection"
        current = current.__cause__ or current.__context__
    return None


HTTP_RETRIES_ENV = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
HTTP_BACKOFF_ENV = "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"
HTTP_TIMEOUT_ENV = "MLFLOW_HTTP_REQUEST_TIMEOUT"
#: MLflow's HTTP client settings while a command only reads; MLflow's own defaults (7 retries,
#: back-off factor 2, 120 s) keep a training run alive through a server restart of up to about
#: four minutes, but leave someone who only asked for the registry waiting that long.
READ_ONLY_HTTP = {HTTP_RETRIES_ENV: "2", HTTP_BACKOFF_ENV: "1", HTTP_TIMEOUT_ENV: "30"}


@contextlib.contextmanager
def read_only_requests() -> Iterator[None]:
    """For the block, MLflow's HTTP retries bounded as :data:`READ_ONLY_HTTP` says (a refused
    connection is reported after about 3 s, a silent server after about 90 s): for commands that
    only read (``registry``, ``promote --status`` and ``--dry-run``, ``predict``), where nothing
    is lost by failing and a person waits for the answer. A variable the user set, even
    empty, is left alone; those set here are removed again when the block ends."""
    added = [name for name in READ_ONLY_HTTP if name not in os.environ]
    os.environ.update({name: READ_ONLY_HTTP[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


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


def require_pipeline_store(pipeline: str | os.PathLike[str]) -> None:
    """Refuse the store found from the current folder for a pipeline folder of another
    repository (``multitask train --params /elsewhere/params.yaml``): its runs would land in a
    store beside neither, where the pipeline's own store, `make ui` and `promote` miss them.
    Nothing to check when ``$MLFLOW_TRACKING_URI`` names the store."""
    if os.environ.get(URI_ENV, "").strip():
        return
    home, here = repo_root(pipeline), repo_root()
    if home != here:
        raise StoreError(f"{pipeline} is a pipeline of {home}, but the MLflow store is found "
                         f"from the current folder ({here / STORE_FILE}); run the command "
                         f"inside {home}, or set {URI_ENV} to the store its runs belong in")


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
    if uri.startswith("sqlite:///") and uri not in _READY:
        _check_sqlite(uri)
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
    with contextlib.ExitStack() as held:
        try:
            database.parent.mkdir(parents=True, exist_ok=True)
            held.enter_context(exclusive_lock(database.with_name(database.name + ".lock")))
        except OSError as exc:
            raise StoreError(f"MLflow store {redact(uri)}: {_blocked(database, exc)}; "
                             f"{_sqlite_remedy()}") from None
        try:
            mlflow_client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
            mlflow_client.search_experiments(max_results=1)  # the tracking store's tables
            mlflow_client.search_registered_models(max_results=1)  # the registry's
        except _failures() as exc:
            raise _store_error(exc) from None
    _READY.add(uri)
    return mlflow_client


_READY: set[str] = set()  # SQLite stores whose tables this process has seen ready


_SQLITE_HEADER = b"SQLite format 3\x00"


def _check_sqlite(uri: str) -> None:
    """Raise :class:`StoreError` when the SQLite store ``uri`` names a folder, a file that is
    not an SQLite database or one that cannot be read; a file that does not exist yet passes.

    MLflow would retry opening such a path for over a minute, then fail with SQLAlchemy's
    traceback; a file that is not a database must not be touched either.
    """
    database = Path(uri.removeprefix("sqlite:///"))
    if database.is_dir():
        problem = f"{database} is a folder, not an SQLite file"
    else:
        try:
            with database.open("rb") as handle:
                header = handle.read(len(_SQLITE_HEADER))
        except FileNotFoundError:
            return
        except OSError as exc:
            if not database.exists():  # e.g. a parent is a file: client() says which
                return
            problem = f"cannot read {database} ({exc.strerror or exc})"
        else:
            if not header or header == _SQLITE_HEADER:  # SQLite makes an empty file a store
                return
            problem = f"{database} is not an SQLite database"
    raise StoreError(f"MLflow store {redact(uri)}: {problem}; {_sqlite_remedy()}")


def _blocked(database: Path, exc: OSError) -> str:
    """What could not be created beside ``database`` (its folder or lock file), from ``exc``."""
    existing = next((folder for folder in database.parents if folder.exists()), None)
    if existing is not None and not existing.is_dir():
        return f"cannot create the store in {database.parent}: {existing} is a file, not a folder"
    return f"cannot create {exc.filename or database.parent}: {exc.strerror or exc}"


def _sqlite_remedy() -> str:
    """What to do about a SQLite store that cannot be used: it depends on who chose it."""
    if os.environ.get(URI_ENV, "").strip():
        return (f"set {URI_ENV} to an MLflow SQLite store (sqlite:////path/to/{STORE_FILE}) in "
                "a folder you can write, or to a tracking server")
    return (f"this is the repository's own store ({STORE_FILE} at its root): make it a writable "
            f"SQLite file, or set {URI_ENV} to another store")


def missing_store(uri: str | None = None) -> bool:
    """Whether the store (``uri``, the configured one by default) is an SQLite file that does
    not exist (nothing logged here yet)."""
    uri = tracking_uri() if uri is None else uri
    return uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file()


def _require_store(uri: str) -> None:
    """Raise :class:`StoreError` when ``uri`` is a SQLite store whose file does not exist."""
    if not missing_store(uri):
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
    """The MLflow run ``run_id``: ValueError when the store does not have it, StoreError when
    the store could not be asked (see :func:`store_errors`)."""
    from mlflow.exceptions import MlflowException

    if not isinstance(run_id, str) or not re.fullmatch(r"[0-9a-f]{32}", run_id):
        raise ValueError(
            f"run id {run_id!r} is not an MLflow run id (32 hex digits); check "
            "reports/train.json or --run-id, or rerun `multitask train`"
        )
    try:  # reading: a store that does not exist cannot hold it, and is not created
        return client(create=False).get_run(run_id)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise  # the store could not answer (an unreachable server ...): store_errors
        raise ValueError(
            f"run {run_id} not found in the MLflow store {describe_uri()} "
            f"({redact(exc.message)}); "
            f"check {URI_ENV} and reports/train.json, or rerun `multitask train`"
        ) from None


@store_errors
def run_json(run_id: str, artifact_path: str) -> Any:
    """The JSON file ``artifact_path`` that run ``run_id`` logged (``baselines.json`` ...),
    parsed; None where the run logged no such file or it is not JSON."""
    import tempfile

    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    client(create=False)  # points MLflow at our store
    with tempfile.TemporaryDirectory(prefix="multitask-artifact-") as folder:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path,
                                                       dst_path=folder)
            return json.loads(Path(path).read_text())
        except (MlflowException, OSError, ValueError):
            return None


@store_errors
def end_run(run_id: str, status: str = "FAILED", reason: str | None = None) -> None:
    """End run ``run_id`` with ``status`` (e.g. a trial whose worker process died)."""
    if status not in {"FINISHED", "FAILED", "KILLED"}:
        raise ValueError(f"end_run: status '{status}' is not FINISHED, FAILED or KILLED")
    if reason:
        client().set_tag(run_id, "failure", reason[:4000])
    if status != "FINISHED":
        fail_pending_models(run_id)
    client().set_terminated(run_id, status)


def fail_pending_models(run_id: str) -> list[str]:
    """Mark FAILED the logged models of run ``run_id`` still PENDING: MLflow finalises a model
    only when its logging ends with an ``Exception``, so one cut short by Ctrl-C, SIGTERM or
    SIGKILL would stay PENDING in the experiment's Models tab for good. Returns their ids."""
    from mlflow.entities import LoggedModelStatus

    mlflow_client = client()
    experiment = mlflow_client.get_run(run_id).info.experiment_id
    pending = [model.model_id for model in mlflow_client.search_logged_models(
        [experiment], filter_string=f"source_run_id = {filter_literal(run_id)}")
        if model.status == LoggedModelStatus.PENDING]
    for model_id in pending:
        mlflow_client.finalize_logged_model(model_id, LoggedModelStatus.FAILED)
    return pending
