"""The exported program: raw pixels in, each task's answer out, whatever the task's kind.

The multi-task network returns ``{task: head output}``; a ``torch.export`` program needs plain
tensors, and serving needs answers, not logits. :class:`KindPredictions` gives two (N, tasks)
tensors, columns in task order, each task's pair read according to its kind:

========== ====================================== ========================================
kind       ``indices`` (int64)                    ``values`` (float32)
========== ====================================== ========================================
multiclass the argmax class                       its softmax probability
binary     the decision: 1 when the logit is > 0  the positive class's probability,
           (probability above 0.5), else 0        ``sigmoid(logit)``
regression 0 (unused)                             the prediction in the target's units:
                                                  ``output * target_std + target_mean``
========== ====================================== ========================================

The multiclass column is the argmax of the logits and its softmax probability, and the binary
decision is the evaluation's (``logit > 0``). Normalisation is part
of the program, so a served model takes pixels as they are stored (0..255): one mean and
standard deviation for grey images, or one per channel. The network is the attribute ``model``
(:func:`multitask.tracking.models.network_state` reads its weights back under that prefix).
MLflow logs it (:mod:`multitask.tracking.models`); it is a module of the model family, so it
lives here, without MLflow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from multitask.tasks import KINDS

MULTICLASS, BINARY, REGRESSION = KINDS


def _statistic(value: float | Sequence[float]) -> float | Tensor:
    """A pixel statistic as the program applies it: a float, or a (1, C, 1, 1) tensor."""
    if isinstance(value, int | float):
        return float(value)
    return torch.tensor([float(v) for v in value], dtype=torch.float32).view(1, -1, 1, 1)


class KindPredictions(nn.Module):
    """Raw pixels (N, C, H, W) -> ``(indices, values)``: the module exported for serving.

    ``kinds`` maps a task to its kind (absent: multiclass); ``targets`` a regression task to
    its training ``(target_mean, target_std)``.
    """

    def __init__(self, model: nn.Module, task_names: Sequence[str],
                 kinds: Mapping[str, str] | None = None,
                 targets: Mapping[str, tuple[float, float]] | None = None,
                 pixel_mean: float | Sequence[float] = 0.0,
                 pixel_std: float | Sequence[float] = 1.0) -> None:
        super().__init__()
        stds = [pixel_std] if isinstance(pixel_std, int | float) else list(pixel_std)
        if not stds or min(stds) <= 0:
            raise ValueError(f"KindPredictions: pixel_std must be positive (got {pixel_std})")
        self.model = model
        self.task_names = list(task_names)
        self.kinds = [(kinds or {}).get(name, MULTICLASS) for name in self.task_names]
        unknown = sorted({k for k in self.kinds if k not in KINDS})
        if unknown:
            raise ValueError(f"KindPredictions: unknown task kind(s) {unknown}")
        missing = [name for name, kind in zip(self.task_names, self.kinds, strict=True)
                   if kind == REGRESSION and name not in (targets or {})]
        if missing:
            raise ValueError(f"KindPredictions: regression task(s) {missing} need their "
                             "(target_mean, target_std)")
        self.targets = [tuple(map(float, (targets or {}).get(name, (0.0, 1.0))))
                        for name in self.task_names]
        mean, std = _statistic(pixel_mean), _statistic(pixel_std)
        if isinstance(mean, Tensor) or isinstance(std, Tensor):
            # per channel: buffers (outside ``model.``, so the network's weights stay apart)
            self.register_buffer("pixel_mean", torch.as_tensor(mean).view(1, -1, 1, 1))
            self.register_buffer("pixel_std", torch.as_tensor(std).view(1, -1, 1, 1))
        else:
            self.pixel_mean, self.pixel_std = mean, std

    def forward(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        inputs = (pixels.float() / 255.0 - self.pixel_mean) / self.pixel_std
        outputs = self.model(inputs)
        indices: list[Tensor] = []
        values: list[Tensor] = []
        for name, kind, (mean, std) in zip(self.task_names, self.kinds, self.targets,
                                           strict=True):
            output = outputs[name].float()
            if kind == MULTICLASS:
                best = output.softmax(dim=1).max(dim=1)
                indices.append(best.indices)
                values.append(best.values)
            elif kind == BINARY:
                logit = output[:, 0]
                indices.append((logit > 0).long())
                values.append(torch.sigmoid(logit))
            else:
                value = output[:, 0] * std + mean
                indices.append(torch.zeros_like(value, dtype=torch.long))
                values.append(value)
        return torch.stack(indices, dim=1), torch.stack(values, dim=1)
