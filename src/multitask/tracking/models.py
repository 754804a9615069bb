"""The logged model: written as a ``torch.export`` program, loaded through pyfunc.

The served module is :class:`multitask.models.serving.TaskLabels`; this module only moves it in
and out of MLflow.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from multitask.redaction import redact
from multitask.tracking.store import URI_ENV, client, describe_uri

if TYPE_CHECKING:
    import numpy as np
    import torch

MODEL_NAME = "model"  # the logged model's name inside its run
MODEL_URI_TAG = "multitask.model_uri"  # where promote finds the run's model


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
            f"cannot load model {model_uri} from the MLflow store {describe_uri()}: "
            f"{redact(message)}; "
            "check the name and alias with `multitask registry`, or set "
            f"{URI_ENV} to the store that holds it"
        ) from None
