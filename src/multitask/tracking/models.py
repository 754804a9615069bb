"""The logged model: written as a ``torch.export`` program, loaded through pyfunc.

The served module is :class:`multitask.models.serving.TaskLabels`; this module only moves it in
and out of MLflow.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from multitask.redaction import redact
from multitask.tracking.store import URI_ENV, StoreError, client, describe_uri, store_errors

if TYPE_CHECKING:
    import numpy as np
    import torch

MODEL_NAME = "model"  # the logged model's name inside its run
MODEL_URI_TAG = "multitask.model_uri"  # where promote finds the run's model
MODEL_FORMAT_TAG = "multitask.model_format"  # on registered versions: what loading expects
MODEL_FORMAT = "torch.export program (pt2)"
PT2_FILE = "model.pt2"


def log_model(run_id: str, model: torch.nn.Module, input_example: np.ndarray,
              task_names: list[str], *, class_names: dict[str, list[str]] | None = None,
              pixel_mean: float = 0.0, pixel_std: float = 1.0) -> str:
    """Log ``model`` with ``mlflow.pytorch.log_model`` so that pyfunc predicts every task.

    The logged module is :class:`multitask.models.serving.TaskLabels` around ``model``: it takes
    float32 raw pixel values 0..255 shaped (N, C, H, W) (an (N, H, W) example gets C=1),
    normalises them as ``(x / 255 - pixel_mean) / pixel_std`` (pass the statistics the
    trainer used) and returns an int64 (N, tasks) array of predicted class indices, one
    column per task in ``task_names`` order. The task and class names travel in the model's
    metadata; :func:`multitask.predict.predict_labels` turns the array into a named table.
    It is saved as a ``torch.export`` program (pt2), so loading it needs torch, not this
    package, and the batch dimension is dynamic. Only the run :func:`stage_run` opened
    (MLflow's active run) can log a model. Returns the model URI (``models:/<id>``), also
    stored in the run's ``multitask.model_uri`` tag.
    """
    import mlflow
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    from multitask.models.serving import TaskLabels

    active = mlflow.active_run()
    if active is None or active.info.run_id != run_id:
        raise RuntimeError(f"log_model: run {run_id} is not the active stage run; "
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
    client().set_tag(run_id, MODEL_URI_TAG, info.model_uri)
    return info.model_uri


def _format_problem(folder: Path) -> str | None:
    """Why the model in ``folder`` is not one this package wrote (None when it is)."""
    import yaml

    spec = yaml.safe_load((folder / "MLmodel").read_text()) or {}
    flavors = spec.get("flavors") or {}
    if set(flavors) != {"python_function", "pytorch"}:
        return f"flavours {sorted(flavors)}, expected exactly pytorch with its pyfunc loader"
    if flavors["python_function"].get("loader_module") != "mlflow.pytorch":
        return f"pyfunc loader {flavors['python_function'].get('loader_module')!r}"
    if flavors["python_function"].get("code") or flavors["pytorch"].get("code"):
        return "it ships code to import"
    data = folder / str(flavors["pytorch"].get("model_data", "data"))
    files = sorted(p.name for p in data.iterdir()) if data.is_dir() else []
    if files != [PT2_FILE]:
        return f"model files {files}, expected only {PT2_FILE} (a torch.export program)"
    return None


@store_errors
def fetch_checked_model(model_uri: str, into: Path) -> Path:
    """Download ``model_uri`` into ``into`` and check it is a model this package logs: a
    ``torch.export`` program behind MLflow's pytorch flavour, nothing pickled, no code.

    A pickled model runs arbitrary code when loaded; anyone with write access to a shared
    registry could register one, so nothing else is ever loaded. Returns the local folder.
    """
    import mlflow.artifacts

    client()  # points models:/ URIs at our store
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(into)))
    problem = _format_problem(folder) if (folder / "MLmodel").is_file() else "no MLmodel file"
    if problem is not None:
        raise ValueError(f"{model_uri}: refused to load: {problem}; only models logged by "
                         f"multitask ({MODEL_FORMAT}) are loaded, since a pickled model runs "
                         "code when loaded")
    return folder


def load_model(model_uri: str) -> Any:
    """The pyfunc model at ``model_uri``, after :func:`fetch_checked_model` vetted its files;
    errors name the URI and the store."""
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="multitask-model-") as tmp:
        try:
            folder = fetch_checked_model(model_uri, Path(tmp))
            return mlflow.pyfunc.load_model(str(folder))
        except (StoreError, MlflowException, OSError) as exc:
            message = getattr(exc, "message", str(exc))
            raise ValueError(
                f"cannot load model {model_uri} from the MLflow store {describe_uri()}: "
                f"{redact(message)}; check the name and alias with `multitask registry`, or "
                f"set {URI_ENV} to the store that holds it") from None
