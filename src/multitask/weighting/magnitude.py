"""Methods that balance the magnitudes of the task gradients: GradNorm and DB-MTL."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn

from multitask.weighting.base import MethodParams, StepContext, WeightingMethod, register
from multitask.weighting.gramian import GramianParams, GramianWeighting
from multitask.weighting.solvers import cpu64


class GradNormParams(GramianParams):
    alpha: float = Field(1.5, ge=0.0)


@register
class GradNorm(GramianWeighting):
    """GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018).

    Learnable weights ``w`` (start 1, renormalised to ``Σ_t w_t = T`` before each step, after
    clamping at 1e-6); the network trains on ``Σ_t w_t L_t``. With ``G_t = w_t |g_t|`` (``g_t``
    task t's gradient w.r.t. the shared parameters: the paper allows any subset W and picks the
    last shared layer to save compute; ``gradients: representation`` uses the representation),
    ``Ḡ = mean_t G_t``, and relative inverse training rates ``r_t = L̃_t / mean_s L̃_s`` with
    ``L̃_t = L_t / L_t(0)`` (L(0): the first step's losses), the gradient loss
    ``Σ_t |G_t - Ḡ r_t^α|``, its target held constant as in the paper, has
    ``∂/∂w_t = sign(G_t - Ḡ r_t^α) |g_t|``: written to ``w.grad`` for the trainer's optimiser,
    which holds ``w`` (:meth:`parameters`).
    """

    name = "gradnorm"
    description = "learned weights equalising gradient norms x training rates (Chen et al. 2018)"
    Params = GradNormParams
    params: GradNormParams
    weights_heads = True

    def __init__(self, num_tasks: int, params: GradNormParams | None = None) -> None:
        super().__init__(num_tasks, params)
        self.task_weights = nn.Parameter(torch.ones(num_tasks))
        self.initial_losses: Tensor | None = None

    def parameters(self) -> list[nn.Parameter]:
        return [self.task_weights]

    def weigh(self, gramian: Tensor, ctx: StepContext) -> Tensor:
        losses = ctx.losses.detach().to("cpu", torch.float64)
        if self.initial_losses is None:
            self.initial_losses = losses.clone()
        with torch.no_grad():
            self.task_weights.clamp_(min=1e-6)
            self.task_weights.mul_(self.num_tasks / self.task_weights.sum())
        weights = self.task_weights.detach().to("cpu", torch.float64)
        norms = gramian.diagonal().clamp_min(0.0).sqrt()
        weighted = weights * norms
        progress = losses / self.initial_losses.clamp_min(1e-12)
        target = weighted.mean() * (progress / progress.mean()) ** self.params.alpha
        grad = torch.sign(weighted - target) * norms
        self.task_weights.grad = grad.to(self.task_weights)
        return weights

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "initial_losses": self.initial_losses}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.initial_losses = cpu64(state["initial_losses"])


class DBMTLParams(MethodParams):
    balance_gradients: bool = False
    beta: float = Field(0.9, ge=0.0, lt=1.0)
    beta_sigma: float = Field(0.0, ge=0.0)
    eps: float = Field(1e-8, gt=0.0)


@register
class DBMTL(WeightingMethod):
    """DB-MTL (Lin & Zhang, "Dual-Balancing for Multi-Task Learning", 2023).

    Loss-scale balancing: train on ``Σ_t log(L_t + ε)``, whose gradient is the loss weighting
    ``w_t = 1 / (L_t + ε)``. With ``balance_gradients: true``, also the paper's gradient-magnitude
    balancing, as in the authors' LibMTL code: ``h_t`` = gradient of ``log(L_t + ε)`` w.r.t. the
    shared parameters, ``ĥ_t <- β_k ĥ_t + (1 - β_k) h_t`` with ``β_k = β / k^σ`` (k = 1, 2, ...,
    ``ĥ`` starts at 0), and the shared update ``Σ_t (max_s |ĥ_s| / |ĥ_t|) ĥ_t``: every task's
    averaged gradient scaled to the largest norm. Heads get the plain gradients of
    ``Σ_t log(L_t + ε)``. Returned weights: ``1 / (L_t + ε)``, times ``max_s |ĥ_s| / |ĥ_t|``
    with balancing.
    """

    name = "dbmtl"
    description = "sum of log losses, optionally gradient-norm balancing (Lin & Zhang 2023)"
    Params = DBMTLParams
    params: DBMTLParams

    def __init__(self, num_tasks: int, params: DBMTLParams | None = None) -> None:
        super().__init__(num_tasks, params)
        self.gradients = "parameters" if self.params.balance_gradients else "none"
        self.steps = 0
        self.average: Tensor | None = None

    def backward(self, ctx: StepContext) -> Tensor:
        eps = self.params.eps
        inverse = 1.0 / (ctx.losses.detach() + eps)  # d log(L_t + ε) / d L_t
        if not self.params.balance_gradients:
            torch.log(ctx.losses + eps).sum().backward()
            return inverse
        grads = ctx.per_task_gradients("parameters", scales=inverse)
        self.steps += 1
        beta = self.params.beta / self.steps**self.params.beta_sigma
        if self.average is None:
            self.average = torch.zeros_like(grads.matrix)
        self.average = grads.matrix + beta * (self.average - grads.matrix)
        norms = self.average.norm(dim=1)
        scales = norms.max() / (norms + eps)
        grads.apply(scales @ self.average)
        return scales * inverse

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "average": self.average}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps, self.average = int(state["steps"]), state["average"]
