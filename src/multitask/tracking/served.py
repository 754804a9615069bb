"""The served model as an MLflow flavour: a ``torch.export`` program with named per-task output.

MLflow's pytorch flavour serves one unnamed tensor, so a client got ``[[3, 7]]`` and had to look
the task and class names up in the model's metadata. This flavour serves a table instead, one
row per image and per task the columns its kind yields (:func:`multitask.tasks.task_columns`)::

    left     left_probability  smiling  smiling_decision  smiling_probability  age
    Trouser  0.97              yes      1                 0.81                 37.2

* multiclass: ``<task>`` the class name, ``<task>_probability`` its probability;
* binary: ``<task>`` the decided class's name, ``<task>_decision`` 0 or 1 (1 when the positive
  class's probability is above 0.5), ``<task>_probability`` the *positive* class's probability;
* regression: ``<task>`` the prediction in the target's units.

The program (:class:`multitask.models.serving.KindPredictions`, exported with a dynamic batch
dimension) computes each task's decision and value; :class:`NamedTaskOutput` turns them into
those columns with the class names and kinds recorded in the MLmodel file's ``model_config``
(a model logged before task kinds has none: every task is multiclass). Nothing is
pickled and the store ships no code: pyfunc loads the model through this module's
:func:`_load_pyfunc` (MLmodel's ``loader_module``), so loading runs this installed package's
code and ``torch.export.load`` only (:func:`multitask.tracking.models.fetch_checked_model`
checks that before anything is loaded). ``mlflow models serve --env-manager local`` and
``mlflow.pyfunc.load_model`` both go through it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

# The columns are defined with the task kinds (config refuses a task named as another's).
from multitask.tasks import decision_column, probability_column

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch

FLAVOR = "multitask"
LOADER_MODULE = __name__
DATA_DIR = "data"
PROGRAM_FILE = "model.pt2"


def describe_output(task_names: list[str], kinds: dict[str, str]) -> str:
    """One line for the model's metadata: what each kind's columns hold."""
    used = dict.fromkeys(kinds.get(task, "multiclass") for task in task_names)
    words = {"multiclass": "multiclass <task> (class name), <task>_probability",
             "binary": "binary <task> (class name), <task>_decision (0/1), "
                       "<task>_probability (of the positive class)",
             "regression": "regression <task> (value in the target's units)"}
    return "per task: " + "; ".join(words[kind] for kind in used)


def pixel_problem(pixels: np.ndarray) -> str | None:
    """What makes a batch of pixels one the network would answer with nonsense rather than an
    error, or None: a NaN or infinite value (every task's answer becomes its first class with
    probability NaN) or a value outside 0..255 (normalised pixels: confident, wrong answers).
    ``multitask predict`` refuses such a file, the served model such a request (HTTP 400)."""
    import numpy as np

    bad = ~np.isfinite(pixels)
    if bad.any():
        images = np.unique(np.nonzero(bad.reshape(len(pixels), -1))[0])
        more = " ..." if len(images) > 5 else ""
        return (f"{int(bad.sum())} NaN or infinite pixel value(s), in image(s) at index "
                f"{images[:5].tolist()}{more}")
    if pixels.size and (pixels.min() < 0 or pixels.max() > 255):
        return f"pixel values outside 0..255 (min {pixels.min():g}, max {pixels.max():g})"
    return None


class NamedTaskOutput:
    """The pyfunc implementation: pixels (N, C, H, W) -> a table with, per task in task order,
    the columns its kind yields (:func:`multitask.tasks.task_columns`)."""

    def __init__(self, program: torch.nn.Module, task_names: list[str],
                 class_names: dict[str, list[str]], kinds: dict[str, str] | None = None
                 ) -> None:
        self.program = program
        self.task_names = list(task_names)
        self.class_names = {task: list(names) for task, names in class_names.items()}
        self.kinds = {task: (kinds or {}).get(task, "multiclass") for task in self.task_names}

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        import numpy as np
        import pandas as pd
        import torch

        pixels = np.asarray(data.to_numpy() if isinstance(data, pd.DataFrame) else data,
                            dtype=np.float32)
        if (problem := pixel_problem(pixels)) is not None:
            from mlflow.exceptions import MlflowException
            from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

            raise MlflowException(f"{problem}; send raw pixel values 0..255, not normalised "
                                  "ones", error_code=INVALID_PARAMETER_VALUE)
        with torch.no_grad():
            indices, values = self.program(torch.from_numpy(pixels))
        table: dict[str, Any] = {}
        for column, task in enumerate(self.task_names):
            kind = self.kinds[task]
            if kind == "regression":
                table[task] = values[:, column].numpy()
                continue
            names = self.class_names.get(task) or []
            decided = indices[:, column]
            table[task] = [names[i] if 0 <= i < len(names) else str(i) for i in decided.tolist()]
            if kind == "binary":
                table[decision_column(task)] = decided.numpy()
            table[probability_column(task)] = values[:, column].numpy()
        return pd.DataFrame(table)


def export_program(module: torch.nn.Module, example: np.ndarray) -> Any:
    """``torch.export`` ``module`` on ``example`` (N >= 2) with a dynamic batch dimension."""
    import torch

    batch = torch.export.Dim.AUTO if hasattr(torch.export.Dim, "AUTO") else torch.export.Dim("n")
    return torch.export.export(module, (torch.from_numpy(example),),
                               dynamic_shapes=[{0: batch}])


def save_model(path: str, mlflow_model: Any, *, program: Any, task_names: list[str],
               class_names: dict[str, list[str]], kinds: dict[str, str], signature: Any,
               input_example: np.ndarray, pip_requirements: list[str], **_: Any) -> None:
    """Write the model folder (``mlflow.models.Model.log`` calls this with ``flavor=`` this
    module): the program, the MLmodel file with its pyfunc and ``multitask`` flavours, the
    input example and requirements."""
    import mlflow.pyfunc
    import torch
    from mlflow.models.utils import _save_example  # how every MLflow flavour writes examples

    folder = Path(path)
    (folder / DATA_DIR).mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # Weights that share one storage with none covering it all (a view's base is not a
        # weight) make torch warn "No complete tensor found in the group", a risk for weights
        # off the CPU only: it writes the first one's whole storage, which holds every view,
        # and the program is saved from a CPU copy (see log_model).
        warnings.filterwarnings("ignore", message="No complete tensor found in the group",
                                category=UserWarning)
        torch.export.save(program, str(folder / DATA_DIR / PROGRAM_FILE))
    mlflow_model.signature = signature
    _save_example(mlflow_model, input_example, str(folder))
    mlflow.pyfunc.add_to_model(
        mlflow_model, loader_module=LOADER_MODULE, data=DATA_DIR,
        model_config={"task_names": list(task_names), "class_names": class_names,
                      "kinds": dict(kinds)})
    mlflow_model.add_flavor(FLAVOR, program=f"{DATA_DIR}/{PROGRAM_FILE}",
                            torch_version=str(torch.__version__))
    mlflow_model.save(str(folder / "MLmodel"))
    (folder / "requirements.txt").write_text("\n".join(pip_requirements) + "\n")


def _load_pyfunc(data_path: str, model_config: dict[str, Any] | None = None) -> NamedTaskOutput:
    """pyfunc's entry point (MLmodel ``loader_module``): the program under ``data_path``."""
    import torch

    config = model_config or {}
    program = torch.export.load(str(Path(data_path) / PROGRAM_FILE)).module()
    return NamedTaskOutput(program, list(config.get("task_names") or []),
                           dict(config.get("class_names") or {}), dict(config.get("kinds") or {}))
