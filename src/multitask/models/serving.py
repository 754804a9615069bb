"""The served model: raw pixels in, one predicted class index per task out.

MLflow's pyfunc (and ``mlflow models serve``) needs a single output tensor; the multi-task
network returns ``{task: logits}``. :class:`TaskLabels` wraps it. It depends on the network
only, never on a command or on MLflow, so the tracking package logs it and ``predict`` reads
its output.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TaskLabels(nn.Module):
    """Raw pixels -> one predicted class index per task: the module MLflow serves.

    pyfunc (and ``mlflow models serve``) needs a single output tensor; the multi-task network
    returns ``{task: logits}``, so this stacks each task's argmax into an int64 (N, tasks)
    tensor, columns in ``task_names`` order. Normalisation is part of the module, so a served
    model takes pixels as they are stored (0..255), never pre-normalised input.
    """

    def __init__(self, model: nn.Module, task_names: list[str], pixel_mean: float = 0.0,
                 pixel_std: float = 1.0) -> None:
        super().__init__()
        if pixel_std <= 0:
            raise ValueError(f"TaskLabels: pixel_std must be positive (got {pixel_std})")
        self.model = model
        self.task_names = list(task_names)
        self.pixel_mean = float(pixel_mean)
        self.pixel_std = float(pixel_std)

    def forward(self, pixels: Tensor) -> Tensor:
        inputs = (pixels.float() / 255.0 - self.pixel_mean) / self.pixel_std
        logits = self.model(inputs)
        return torch.stack([logits[name].argmax(dim=1) for name in self.task_names], dim=1)
