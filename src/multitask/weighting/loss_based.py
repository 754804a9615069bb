"""Loss-based methods that need no per-task gradients: each step backpropagates ``Σ_t w_t L_t``.

equal, static, uncertainty (Kendall et al. 2018), dwa (Liu et al. 2019), rlw (Lin et al. 2022)
and famo (Liu et al. 2023).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from multitask.weighting.base import LossWeighting, MethodParams, StepContext, register
from multitask.weighting.solvers import cpu64


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
                "train.method_params.static.weights: required for "
                "train.weighting: static (one non-negative weight per task)"
            )
        if len(params.weights) != num_tasks:
            raise ValueError(
                f"train.method_params.static.weights: {len(params.weights)} "
                f"weights given for {num_tasks} tasks; give one per task"
            )
        super().__init__(num_tasks, params)
        self._weights = torch.tensor(params.weights, dtype=torch.float32)

    def weights(self, losses: Tensor) -> Tensor:
        return self._weights.to(losses.device, losses.dtype)


@register
class Uncertainty(LossWeighting):
    """Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

    With a learnable log-variance ``s_t`` per task, the losses combine as
    ``L = sum_t exp(-s_t) L_t + s_t / 2`` (the form for a softmax likelihood scaled by
    ``1/sigma^2``, eq. 10 of the paper, with ``s = log sigma^2``), regression losses too: the
    paper's Gaussian form ``exp(-s_t) L_t / 2 + s_t / 2`` gives a task the same weight
    ``1 / (2 L_t)`` at the optimum of ``s_t``, so one form serves every kind. The reported
    weight of task ``t`` is ``exp(-s_t)``.
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

    def backward(self, ctx: StepContext) -> Tensor:
        precision = torch.exp(-self.log_vars)
        (precision * ctx.losses + 0.5 * self.log_vars).sum().backward()
        return precision.detach()


class DWAParams(MethodParams):
    temperature: float = Field(2.0, gt=0.0)


@register
class DWA(LossWeighting):
    """Dynamic Weight Average (Liu, Johns & Davison, "End-to-End Multi-Task Learning with
    Attention", CVPR 2019).

    ``w_t = T exp(r_t / τ) / Σ_s exp(r_s / τ)`` with ``r_t = L̄_t(e-1) / L̄_t(e-2)``, the ratio
    of task t's mean training losses over the last two epochs, and temperature ``τ = 2``;
    ``w = 1`` during the first two epochs. The weights sum to T.
    """

    name = "dwa"
    description = "weights from each task's loss ratio over the last two epochs (Liu et al. 2019)"
    Params = DWAParams
    params: DWAParams

    def __init__(self, num_tasks: int, params: DWAParams | None = None) -> None:
        super().__init__(num_tasks, params)
        self.history: list[Tensor] = []  # the last two epochs' mean losses, oldest first

    def weights(self, losses: Tensor) -> Tensor:
        if len(self.history) < 2:
            return torch.ones_like(losses)
        ratios = self.history[-1] / self.history[-2].clamp_min(1e-12)
        weights = self.num_tasks * torch.softmax(ratios / self.params.temperature, dim=0)
        return weights.to(losses)

    def end_epoch(self, epoch: int, mean_train_losses: Tensor) -> None:
        self.history = [*self.history, mean_train_losses.detach().to("cpu", torch.float64)][-2:]

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [h.to("cpu", torch.float64) for h in state["history"]]


@register
class RLW(LossWeighting):
    """Random Loss Weighting (Lin et al., "Reasonable Effectiveness of Random Weighting: A
    Litmus Test for Multi-Task Learning", TMLR 2022).

    Each step ``w = softmax(λ)`` with ``λ ~ N(0, I_T)`` drawn from torch's global generator
    (seeded and checkpointed by the trainer). The weights sum to 1.
    """

    name = "rlw"
    description = "softmax of normal samples, redrawn each step (Lin et al. 2022)"

    def weights(self, losses: Tensor) -> Tensor:
        return torch.softmax(torch.randn(self.num_tasks), dim=0).to(losses)


class FAMOParams(MethodParams):
    lr: float = Field(0.025, gt=0.0)
    weight_decay: float = Field(1e-5, ge=0.0)
    eps: float = Field(1e-8, gt=0.0)
    update: Literal["same_batch", "next_batch"] = "same_batch"


@register
class FAMO(LossWeighting):
    """FAMO (Liu, Liu, Jin, Stone & Liu, "FAMO: Fast Adaptive Multitask Optimization",
    NeurIPS 2023).

    Logits ``ξ`` (start 0), ``z = softmax(ξ)``. The step descends ``Σ_t z_t log(L_t + ε) / c``
    with ``c = Σ_t z_t / (L_t + ε)``, whose gradient is ``Σ_t w_t ∇L_t`` with
    ``w_t = z_t / ((L_t + ε) c)``: weights on the simplex, so this is a loss weighting with those
    ``w``. After the optimiser step the trainer recomputes this batch's losses ``L'`` without
    gradients and passes them to :meth:`after_step`: ``δ_t = log(L_t + ε) - log(L'_t + ε)``,
    ``ξ.grad = (∂z/∂ξ)ᵀ δ`` and Adam (``lr``, weight decay ``γ``) steps ``ξ``, as the authors'
    reference code does. Measuring the change on the same batch is exact and costs one no-grad
    forward; a trainer that does not call :meth:`after_step` gets an error at the next step.
    ``update: next_batch`` skips that forward: the next step's losses, on the next batch, stand
    in for ``L'`` (cheaper, and noisier by the difference between the two batches).
    """

    name = "famo"
    description = "fast adaptive weights balancing log-loss improvement rates (Liu et al. 2023)"
    Params = FAMOParams
    params: FAMOParams
    needs_losses_after_step = True

    def __init__(self, num_tasks: int, params: FAMOParams | None = None) -> None:
        super().__init__(num_tasks, params)
        self.logits = torch.zeros(num_tasks, dtype=torch.float64, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.logits], lr=self.params.lr,
                                          weight_decay=self.params.weight_decay)
        self.log_losses: Tensor | None = None  # this step's, until the logits update
        self.needs_losses_after_step = self.params.update == "same_batch"

    def weights(self, losses: Tensor) -> Tensor:
        shifted = losses.detach().to("cpu", torch.float64) + self.params.eps
        if self.log_losses is not None:
            if self.needs_losses_after_step:
                raise RuntimeError(
                    "train.weighting: famo: the losses after the last optimiser step never "
                    "reached famo.after_step(); a trainer must recompute the batch's losses "
                    "without gradients and call method.after_step(losses) when "
                    "method.needs_losses_after_step is true (or set "
                    "train.method_params.famo.update: next_batch)")
            self._update_logits(shifted)
        self.log_losses = shifted.log()
        weights = torch.softmax(self.logits.detach(), dim=0) / shifted
        return (weights / weights.sum()).to(losses)

    def after_step(self, losses_after_step: Tensor) -> None:
        if self.log_losses is None:
            raise RuntimeError("train.weighting: famo: after_step() called without a step")
        self._update_logits(losses_after_step.detach().to("cpu", torch.float64) + self.params.eps)

    def _update_logits(self, shifted_after: Tensor) -> None:
        assert self.log_losses is not None
        improvement, self.log_losses = self.log_losses - shifted_after.log(), None
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(torch.softmax(self.logits, dim=0), self.logits,
                                          grad_outputs=improvement)
        self.logits.grad = grad
        self.optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return {"logits": self.logits.detach().clone(), "optimizer": self.optimizer.state_dict(),
                "log_losses": self.log_losses}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.logits.copy_(state["logits"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.log_losses = cpu64(state["log_losses"])
