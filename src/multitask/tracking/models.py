"""The logged model: written as a ``torch.export`` program, loaded through pyfunc.

The exported module is :class:`multitask.models.serving.KindPredictions`, served with named
columns per task kind by the :mod:`multitask.tracking.served` flavour; this module moves it in
and out of MLflow and refuses any other model (pickled, or shipping code) before loading it.

One module, not several: logging the program and every way of reading it back (to predict,
to serve, to start an encoder from its weights) share the one check of what was fetched, so
nothing is loaded that the check did not see.
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from multitask.config import MANIFEST_DEFAULTS
from multitask.redaction import redact
from multitask.tracking.store import (
    URI_ENV,
    StoreError,
    client,
    describe_uri,
    fail_pending_models,
    server_problem,
    store_errors,
)

if TYPE_CHECKING:
    import numpy as np
    import torch

    from multitask.tasks import Task

MODEL_NAME = "model"  # the logged model's name inside its run
MODEL_URI_TAG = "multitask.model_uri"  # where promote finds the run's model
MODEL_FORMAT_TAG = "multitask.model_format"  # on registered versions: what loading expects
MODEL_FORMAT = "torch.export program (pt2), multitask flavour"
NO_RUN_STEP = -1  # a step no run metric is logged at (runs log at epochs and samples from 0)
STORE_SCHEMES = ("models:/", "runs:/")  # model URIs that name something in the tracking store
# How images of another size are fitted into the model's (data.resize): what a model records
# when its data says nothing (built-in data sets come at their size) and what a model logged
# before it was recorded is taken to have used.
DEFAULT_RESIZE: str = MANIFEST_DEFAULTS["resize"]


def log_model(run_id: str, model: torch.nn.Module, input_example: np.ndarray,
              task_names: list[str], *, class_names: dict[str, list[str]] | None = None,
              pixel_mean: float | Sequence[float] = 0.0,
              pixel_std: float | Sequence[float] = 1.0,
              tasks: Sequence[Task] | None = None, resize: str | None = None) -> str:
    """Log ``model`` so that pyfunc and ``mlflow models serve`` name every task's prediction.

    The logged program is :class:`multitask.models.serving.KindPredictions` around
    ``model``, exported with ``torch.export``: it takes float32 raw pixel values 0..255 shaped
    (N, C, H, W) (an (N, H, W) example gets C=1), normalises them as
    ``(x / 255 - pixel_mean) / pixel_std`` (pass the statistics the trainer used: a float, or
    one per channel) and gives each task's answer for its kind. ``tasks`` (the declarations of
    ``task_names``, in that order) says each task's kind and a regression task's target
    statistics; without it the network's own declarations (``model.tasks`` of a
    :class:`multitask.models.base.MultiTaskModel`) do, and a task neither declares is
    multiclass. Served through
    :mod:`multitask.tracking.served`, the answer is a table with, per task in ``task_names``
    order, the columns of its kind (:func:`multitask.tasks.task_columns`: class name
    from ``class_names`` and probability; for binary also the 0/1 decision; for regression the
    value in the target's units); the signature lists them with their types. MLflow copies
    the run's params onto the logged model, so the experiment's Models tab shows them. Only
    the run :func:`stage_run` opened (MLflow's active run) can log a model. ``resize`` (the
    data's ``resize``, default :data:`DEFAULT_RESIZE`) is recorded in the metadata, so that
    ``multitask predict`` fits an image of another size as training did. Returns the model
    URI (``models:/<id>``), also stored in the run's ``multitask.model_uri`` tag.
    """
    import mlflow
    import numpy as np
    import torch
    from mlflow.models import Model, infer_signature

    from multitask.models.serving import KindPredictions
    from multitask.tracking import served

    if tasks is not None and [t.name for t in tasks] != list(task_names):
        raise ValueError(f"log_model: tasks {[t.name for t in tasks]} do not match "
                         f"task_names {list(task_names)}; pass the same tasks in the same order")
    # a multitask network declares its tasks (MultiTaskModel.tasks); other modules: multiclass
    known = {t.name: t for t in (tasks or getattr(model, "tasks", None) or [])}
    declared = [known[name] for name in task_names if name in known]
    active = mlflow.active_run()
    if active is None or active.info.run_id != run_id:
        raise RuntimeError(f"log_model: run {run_id} is not the active stage run; "
                           "log models inside `with stage_run(...)`")
    example = np.asarray(input_example, dtype=np.float32)
    if example.ndim == 3:
        example = example[:, None]
    if len(example) == 1:  # torch.export fixes a batch dimension of size 1 to 1
        example = np.concatenate([example, example])
    kinds = {name: str(known[name].kind) if name in known else "multiclass"
             for name in task_names}
    targets = {t.name: (t.target_mean, t.target_std) for t in declared
               if t.kind == "regression"}
    # A CPU copy: the caller's model stays where it is (``.cpu()`` would move it in place).
    wrapped = KindPredictions(copy.deepcopy(model).cpu(), task_names, kinds, targets,
                              pixel_mean=pixel_mean, pixel_std=pixel_std).eval()
    program = served.export_program(wrapped, example)
    names = class_names or {}
    output = served.NamedTaskOutput(program.module(), task_names, names, kinds).predict(example)
    units = {t.name: t.unit for t in declared if t.kind == "regression"}
    classifier = all(kind != "regression" for kind in kinds.values())
    with warnings.catch_warnings():
        # MLflow hints that an integer column cannot hold a missing value: a binary task's
        # <task>_decision is 0 or 1 on every row the model answers, never missing
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer",
                                category=UserWarning)
        signature = infer_signature(example, output)
    try:
        info = Model.log(
            None,  # artifact_path: deprecated in favour of name, still positional
            name=MODEL_NAME,
            flavor=served,
            program=program,
            task_names=list(task_names),
            class_names=names,
            kinds=kinds,
            signature=signature,
            input_example=example,
            # Explicit requirements: inferring them reloads the model in a subprocess (seconds).
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                              f"numpy=={np.__version__}", f"mlflow=={mlflow.__version__}"],
            metadata={"task_names": list(task_names), "class_names": names, "kinds": kinds,
                      **({"units": units} if units else {}),
                      "input": "float32 (N, C, H, W) raw pixel values 0..255",
                      "resize": resize or DEFAULT_RESIZE,
                      "output": served.describe_output(list(task_names), kinds)},
            model_type="multi-task classifier" if classifier else "multi-task model",
            # MLflow links every run metric logged at ``step`` to the model; at the default 0
            # those are the system samples. No step of the run's: the model's metrics are the
            # ones linked on purpose (``StageRun.log_model_metrics``: evaluate's test metrics).
            step=NO_RUN_STEP,
        )
    except BaseException:  # Ctrl-C, SIGTERM too: MLflow marks the model FAILED on Exception only
        with contextlib.suppress(Exception):  # the store may be what failed
            fail_pending_models(run_id)
        raise
    client().set_tag(run_id, MODEL_URI_TAG, info.model_uri)
    return info.model_uri


def _format_problem(folder: Path) -> str | None:
    """Why the model in ``folder`` is not one this package wrote (None when it is)."""
    import yaml

    from multitask.tracking import served

    spec = yaml.safe_load((folder / "MLmodel").read_text()) or {}
    flavors = spec.get("flavors") or {}
    if set(flavors) != {"python_function", served.FLAVOR}:
        return (f"flavours {sorted(flavors)}, expected exactly {served.FLAVOR} with its pyfunc "
                "loader")
    pyfunc = flavors["python_function"]
    if pyfunc.get("loader_module") != served.LOADER_MODULE:
        return f"pyfunc loader {pyfunc.get('loader_module')!r}, expected {served.LOADER_MODULE}"
    if pyfunc.get("code") or pyfunc.get("model_code_path") or flavors[served.FLAVOR].get("code"):
        return "it ships code to import"
    data = folder / str(pyfunc.get("data", served.DATA_DIR))
    files = sorted(p.name for p in data.iterdir()) if data.is_dir() else []
    if files != [served.PROGRAM_FILE]:
        return (f"model files {files}, expected only {served.PROGRAM_FILE} (a torch.export "
                "program)")
    return None


@store_errors
def fetch_checked_model(model_uri: str, into: Path) -> Path:
    """Download ``model_uri`` into ``into`` and check it is a model this package logs: a
    ``torch.export`` program loaded by :mod:`multitask.tracking.served`, nothing pickled, no
    code shipped with it.

    A pickled model runs arbitrary code when loaded; anyone with write access to a shared
    registry could register one, so nothing else is ever loaded. Returns the local folder.
    """
    return _fetch_checked(model_uri, into)


def _fetch_checked(model_uri: str, into: Path, *, create: bool = True) -> Path:
    """:func:`fetch_checked_model` letting MLflow's own errors through (the callers that say
    more about them than :func:`store_errors` catch them); ``create`` False: a SQLite store
    that does not exist is an error, not created (:func:`~.store.client`)."""
    import mlflow.artifacts

    if model_uri.startswith(STORE_SCHEMES):
        client(create=create)  # points the URI at our store
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(into)))
    if not (folder / "MLmodel").is_file():  # a local file or folder, e.g. models/model.pt
        raise ValueError(f"{model_uri}: not a logged model (no MLmodel file); give a model "
                         "URI: models:/<name>@champion, models:/<name>/<version> or runs:/<run "
                         "id>/model (a pipeline's run id is in its reports/train.json)")
    problem = _format_problem(folder)
    if problem is not None:
        raise ValueError(f"{model_uri}: refused to load: {problem}; only models logged by "
                         f"multitask ({MODEL_FORMAT}) are loaded, since a pickled model runs "
                         "code when loaded")
    return folder


def load_model(model_uri: str) -> Any:
    """The pyfunc model at ``model_uri``, after :func:`fetch_checked_model` vetted its files;
    errors name the URI and the store. Reading creates no store (``multitask predict`` run
    outside the repository is told which store it looked for)."""
    import mlflow.pyfunc

    with tempfile.TemporaryDirectory(prefix="multitask-model-") as tmp:
        try:
            folder = _fetch_checked(model_uri, Path(tmp), create=False)
            return mlflow.pyfunc.load_model(str(folder))
        except _unreachable_errors() as exc:
            raise _unreachable(f"cannot load model {model_uri}", model_uri, exc) from None


def _unreachable_errors() -> tuple[type[Exception], ...]:
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException

    return MlflowException, RequestException, OSError


def _unreachable(what: str, model_uri: str, exc: Exception) -> ValueError:
    """The one error for a model the store could not give: ``what``, the store, MLflow's
    reason, the aliases the registered model has (for a ``models:/<name>@<alias>`` URI), and
    what to check: the name and alias, a tracking server's being up, or which store
    ``$MLFLOW_TRACKING_URI`` names."""
    problem = server_problem(exc)
    if problem is not None:
        return ValueError(f"{what}: {problem}")
    message = redact(str(getattr(exc, "message", exc))).splitlines()[0][:500].rstrip(". ")
    server = "" if describe_uri().startswith("sqlite:///") else "that the tracking server is up, "
    if model_uri.startswith("models:/"):
        pinned = "alias" if "@" in model_uri else "version"  # models:/<name>/<version>
        named = f"the name and {pinned} (the MLflow UI's Models page lists both)"
    elif ":" not in model_uri and "/" not in model_uri:  # a bare registered model name?
        named = (f"the URI: a folder, runs:/<run id>/model, or a registered model as "
                 f"models:/{model_uri}@champion (or @challenger, /<version>)")
    elif no_model := _run_without_model(model_uri):
        named = no_model
    else:
        named = "the URI"
    return ValueError(f"{what} from the MLflow store {describe_uri()}: {message}"
                      f"{_aliases(model_uri)}; check {server}{named}, or set {URI_ENV} to the "
                      "store that holds it")


def _run_without_model(model_uri: str) -> str | None:
    """For ``runs:/<id>/...`` naming a run that logged no model (a tuning trial's, a stage's
    other than train, one with ``tracking.log_model`` false, or a train that failed or was
    killed before it logged one): what to give instead."""
    run_id = model_uri.removeprefix("runs:/").split("/")[0]
    if not model_uri.startswith("runs:/") or not run_id:
        return None
    try:
        run = client(create=False).get_run(run_id)
    except (StoreError, *_unreachable_errors()):  # no such run: MLflow's reason says so
        return None
    if MODEL_URI_TAG in run.data.tags:
        return None
    if run.info.status in ("FAILED", "KILLED"):  # a train stopped before it logged its model
        return (f"the run: {run_id} is {run.info.status} (its 'failure' tag says why) and "
                "logged no model; rerun the pipeline, or give a finished train run: "
                "reports/train.json names the last")
    return (f"the run: {run_id} logged no model (a tuning trial's or another stage's run, or "
            "tracking.log_model was false); a pipeline's train run, which does, is named in "
            "its reports/train.json")


def _aliases(model_uri: str) -> str:
    """`` (<name> has aliases champion, challenger)`` for a ``models:/<name>@<alias>`` URI
    whose registered model exists; empty otherwise."""
    name, at, _ = model_uri.removeprefix("models:/").rpartition("@")
    if not model_uri.startswith("models:/") or not at:
        return ""
    try:
        aliases = sorted(client(create=False).get_registered_model(name).aliases or {})
    except (StoreError, *_unreachable_errors()):  # no such model: MLflow's reason says so
        return ""
    return f" ({name} has aliases {', '.join(aliases)})" if aliases else f" ({name} has no alias)"


@dataclass(frozen=True)
class NetworkState:
    """The weights of a logged multi-task network, read back for transfer (model.pretrained).

    ``state_dict`` is keyed as the network's own ``state_dict`` (``encoder.net.conv1.weight``,
    ``heads.left.0.weight``); ``origin`` says in one line which model it was (URI, registered
    version, run); ``sha256`` is of its weights (:func:`multitask.models.pretrained.weights_sha256`,
    as for the same weights in a file); ``backbone``/``architecture`` come from the
    params of the run that logged it (None when that run did not record them).
    """

    state_dict: dict[str, torch.Tensor]
    origin: str
    sha256: str
    backbone: str | None
    architecture: str | None


def network_state(model_uri: str) -> NetworkState:
    """The weights of the multi-task network logged at ``model_uri`` (``models:/<name>@<alias>``,
    ``models:/<name>/<version>``, ``runs:/<run id>/model``, ``models:/<model id>``).

    The logged program is vetted as :func:`load_model` does (nothing pickled, no code), loaded
    with ``torch.export.load`` and its parameters and buffers taken back out of the served
    wrapper (:class:`multitask.models.serving.KindPredictions` holds the network as
    ``model``). Errors name the URI and the store.
    """
    import mlflow.models
    import torch

    from multitask.models.pretrained import weights_sha256
    from multitask.tracking import served

    with tempfile.TemporaryDirectory(prefix="multitask-transfer-") as tmp:
        try:
            folder = _fetch_checked(model_uri, Path(tmp))
            info = mlflow.models.get_model_info(model_uri)
            run_params = client().get_run(info.run_id).data.params if info.run_id else {}
        except _unreachable_errors() as exc:
            raise _unreachable(f"model.pretrained: cannot read {model_uri}", model_uri,
                               exc) from None
        program = torch.export.load(str(folder / served.DATA_DIR / served.PROGRAM_FILE))
    prefix = "model."
    state = {key.removeprefix(prefix): value.detach().clone()
             for key, value in program.state_dict.items() if key.startswith(prefix)}
    state.update({key.removeprefix(prefix): value.detach().clone()
                  for key, value in program.constants.items()
                  if key.startswith(prefix) and isinstance(value, torch.Tensor)})
    where = [f"run {info.run_id}"] if info.run_id else []
    if (version := _registered_version(model_uri)) is not None:
        where.insert(0, f"version {version}")
    origin = f"{model_uri} ({', '.join(where)})" if where else model_uri
    return NetworkState(state, origin, weights_sha256(state), run_params.get("model.backbone"),
                        run_params.get("model.architecture"))


def _registered_version(model_uri: str) -> str | None:
    """The registered version a ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` URI
    resolves to now (an alias moves; the run's record keeps the version it started from)."""
    from multitask.tracking.registry import version_by_alias

    if not model_uri.startswith("models:/"):
        return None
    path = model_uri.removeprefix("models:/")
    if "@" in path:
        name, alias = path.rsplit("@", 1)
        found = version_by_alias(name, alias)
        return None if found is None else found.version
    name, _, version = path.rpartition("/")
    return version if name and version.isdigit() else None
