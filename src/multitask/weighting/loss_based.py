"""Loss-based methods that need no per-task gradients: equal, static and uncertainty."""

from __future__ import annotations

import torch
from pydantic import field_validator
from torch import Tensor, nn

from multitask.weighting.base import LossWeighting, MethodParams, register


@register
class Equal(LossWeighting):
    """Equal weighting: the mean of the task losses, ``L = (1/T) sum_t L_t``."""

    name = "equal"
    description = "mean of the task losses (w_t = 1/T)"

    def weights(self, losses: Tensor) -> Tensor:
        return torch.full_like(losses, 1.0 / self.num_tasks)


class StaticParams(MethodParams):
    weights: list[float]

    @field_validator("weights")
    @classmethod
    def _non_negative(cls, weights: list[float]) -> list[float]:
        if any(w < 0 for w in weights):
            raise ValueError(f"weights must be non-negative, got {weights}")
        if sum(weights) <= 0:
            raise ValueError(f"weights must not all be zero, got {weights}")
        return weights


@register
class Static(LossWeighting):
    """Fixed weights from ``train.method_params.static.weights``: ``L = sum_t w_t L_t``.

    The weights are used as given (not renormalised), one per task in task order.
    """

    name = "static"
    description = "fixed weights from params (train.method_params.static.weights)"
    Params = StaticParams

    def __init__(self, num_tasks: int, params: StaticParams | None = None) -> None:
        if params is None:
            raise ValueError(
                "params.yaml: train.method_params.static.weights: required for "
                "train.weighting: static (one non-negative weight per task)"
            )
        if len(params.weights) != num_tasks:
            raise ValueError(
                f"params.yaml: train.method_params.static.weights: {len(params.weights)} "
                f"weights given for {num_tasks} tasks; give one per task"
            )
        super().__init__(num_tasks, params)
        self._weights = torch.tensor(params.weights, dtype=torch.float32)

    def weights(self, losses: Tensor) -> Tensor:
        return self._weights.to(losses.device, losses.dtype)


@register
class Uncertainty(LossWeighting):
    """Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

    With a learnable log-variance ``s_t`` per task, classification losses combine as
    ``L = sum_t exp(-s_t) L_t + s_t / 2`` (the form for a softmax likelihood scaled by
    ``1/sigma^2``, eq. 10 of the paper, with ``s = log sigma^2``). The reported weight of task
    ``t`` is ``exp(-s_t)``.
    """

    name = "uncertainty"
    description = "learned homoscedastic uncertainty (Kendall et al. 2018)"

    def __init__(self, num_tasks: int, params: MethodParams | None = None) -> None:
        super().__init__(num_tasks, params)
        self.log_vars = nn.Parameter(torch.zeros(num_tasks))

    def parameters(self) -> list[nn.Parameter]:
        return [self.log_vars]

    def weights(self, losses: Tensor) -> Tensor:
        return torch.exp(-self.log_vars)

    def backward(self, ctx) -> Tensor:  # type: ignore[no-untyped-def]
        precision = torch.exp(-self.log_vars)
        (precision * ctx.losses + 0.5 * self.log_vars).sum().backward()
        return precision.detach()
