"""The served network: raw pixels in, each task's predicted class index and probability out.

The multi-task network returns ``{task: logits}``; a ``torch.export`` program needs plain
tensors, and serving needs the decision, not logits. :class:`TaskPredictions` wraps the network
into that. It depends on the network only, never on a command or on MLflow: the tracking
package exports and logs it (:mod:`multitask.tracking.served` names its columns).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TaskPredictions(nn.Module):
    """Raw pixels -> ``(indices, probabilities)``: the module exported for serving.

    Both outputs are (N, tasks), columns in ``task_names`` order: ``indices`` (int64) is each
    task's argmax class, ``probabilities`` (float32) its softmax probability. Normalisation is
    part of the module, so a served model takes pixels as they are stored (0..255), never
    pre-normalised input.
    """

    def __init__(self, model: nn.Module, task_names: list[str], pixel_mean: float = 0.0,
                 pixel_std: float = 1.0) -> None:
        super().__init__()
        if pixel_std <= 0:
            raise ValueError(f"TaskPredictions: pixel_std must be positive (got {pixel_std})")
        self.model = model
        self.task_names = list(task_names)
        self.pixel_mean = float(pixel_mean)
        self.pixel_std = float(pixel_std)

    def forward(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        inputs = (pixels.float() / 255.0 - self.pixel_mean) / self.pixel_std
        logits = self.model(inputs)
        best = [logits[name].float().softmax(dim=1).max(dim=1) for name in self.task_names]
        return (torch.stack([b.indices for b in best], dim=1),
                torch.stack([b.values for b in best], dim=1))
