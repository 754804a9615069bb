"""The served model as an MLflow flavour: a ``torch.export`` program with named per-task output.

MLflow's pytorch flavour serves one unnamed tensor, so a client got ``[[3, 7]]`` and had to look
the task and class names up in the model's metadata. This flavour serves a table instead, one
row per image and two columns per task::

    left        left_probability  right    right_probability
    Trouser     0.97              Sandal   0.88

The program (:class:`multitask.models.serving.TaskPredictions`, exported with a dynamic batch
dimension) computes the class indices and probabilities; :class:`NamedTaskOutput` turns the
indices into the class names recorded in the MLmodel file's ``model_config``. Nothing is
pickled and the store ships no code: pyfunc loads the model through this module's
:func:`_load_pyfunc` (MLmodel's ``loader_module``), so loading runs this installed package's
code and ``torch.export.load`` only (:func:`multitask.tracking.models.fetch_checked_model`
checks that before anything is loaded). ``mlflow models serve --env-manager local`` and
``mlflow.pyfunc.load_model`` both go through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch

FLAVOR = "multitask"
LOADER_MODULE = __name__
DATA_DIR = "data"
PROGRAM_FILE = "model.pt2"
PROBABILITY_SUFFIX = "_probability"


def probability_column(task: str) -> str:
    """The column holding the probability of ``task``'s predicted class: ``left_probability``."""
    return f"{task}{PROBABILITY_SUFFIX}"


class NamedTaskOutput:
    """The pyfunc implementation: pixels (N, C, H, W) -> a table of class names and
    probabilities, columns ``<task>`` and ``<task>_probability`` in task order."""

    def __init__(self, program: torch.nn.Module, task_names: list[str],
                 class_names: dict[str, list[str]]) -> None:
        self.program = program
        self.task_names = list(task_names)
        self.class_names = {task: list(names) for task, names in class_names.items()}

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        import numpy as np
        import pandas as pd
        import torch

        pixels = np.asarray(data.to_numpy() if isinstance(data, pd.DataFrame) else data,
                            dtype=np.float32)
        with torch.no_grad():
            indices, probabilities = self.program(torch.from_numpy(pixels))
        table: dict[str, Any] = {}
        for column, task in enumerate(self.task_names):
            names = self.class_names.get(task) or []
            table[task] = [names[i] if 0 <= i < len(names) else str(i)
                           for i in indices[:, column].tolist()]
            table[probability_column(task)] = probabilities[:, column].numpy()
        return pd.DataFrame(table)


def export_program(module: torch.nn.Module, example: np.ndarray) -> Any:
    """``torch.export`` ``module`` on ``example`` (N >= 2) with a dynamic batch dimension."""
    import torch

    batch = torch.export.Dim.AUTO if hasattr(torch.export.Dim, "AUTO") else torch.export.Dim("n")
    return torch.export.export(module, (torch.from_numpy(example),),
                               dynamic_shapes=[{0: batch}])


def save_model(path: str, mlflow_model: Any, *, program: Any, task_names: list[str],
               class_names: dict[str, list[str]], signature: Any, input_example: np.ndarray,
               pip_requirements: list[str], **_: Any) -> None:
    """Write the model folder (``mlflow.models.Model.log`` calls this with ``flavor=`` this
    module): the program, the MLmodel file with its pyfunc and ``multitask`` flavours, the
    input example and requirements."""
    import mlflow.pyfunc
    import torch
    from mlflow.models.utils import _save_example  # how every MLflow flavour writes examples

    folder = Path(path)
    (folder / DATA_DIR).mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(folder / DATA_DIR / PROGRAM_FILE))
    mlflow_model.signature = signature
    _save_example(mlflow_model, input_example, str(folder))
    mlflow.pyfunc.add_to_model(
        mlflow_model, loader_module=LOADER_MODULE, data=DATA_DIR,
        model_config={"task_names": list(task_names), "class_names": class_names})
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
                           dict(config.get("class_names") or {}))
