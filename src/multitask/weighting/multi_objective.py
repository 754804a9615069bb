"""Methods that solve an optimisation problem over the task gradients each step.

MGDA (min-norm point of their convex hull), CAGrad (conflict-averse ball around the mean),
Nash-MTL (bargaining solution) and UPGrad (projections onto their dual cone). Each is a function
of the Gramian (see :mod:`multitask.weighting.gramian`); their solvers live in
:mod:`multitask.weighting.solvers`.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from scipy.optimize import minimize
from torch import Tensor

from multitask.weighting.base import StepContext, register
from multitask.weighting.gramian import GradientSource, GramianWeighting, SolverParams
from multitask.weighting.solvers import (
    Solution,
    cpu64,
    min_norm_simplex,
    nash_bargaining,
    nonnegative_qp,
)


class MGDAParams(SolverParams):
    gradients: GradientSource = "representation"
    max_iter: int = Field(250, ge=1)
    tol: float = Field(1e-8, gt=0.0)


@register
class MGDA(GramianWeighting):
    """MGDA-UB (Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", 2018).

    ``w = argmin_{w in simplex} |Σ_t w_t g_t|²``, the min-norm point of the convex hull of the
    task gradients, here (as MGDA-UB) the gradients w.r.t. the shared representation; the
    encoder then gets ``∇θ Σ_t w_t L_t``. T = 2: ``w_1 = clip((g_2 - g_1)·g_2 / |g_1 - g_2|², 0,
    1)``; T > 2: Wolfe's exact active-set method
    (:func:`~multitask.weighting.solvers.min_norm_simplex`), done when the duality gap is at most
    ``tol · |d|²``. Weights sum to 1. Solver failure (``warn``): the last active-set iterate,
    feasible but not optimal.
    """

    name = "mgda"
    description = "min-norm point of the task gradients' convex hull, MGDA-UB (Sener & Koltun 2018)"
    gradients = "representation"
    Params = MGDAParams
    params: MGDAParams

    def weigh(self, gramian: Tensor, ctx: StepContext) -> Tensor:
        solution = min_norm_simplex(gramian, self.params.max_iter, self.params.tol)
        if not solution.converged:
            self.solver_failed(ctx, solution.detail, "the last active-set iterate")
        return solution.x


class CAGradParams(SolverParams):
    c: float = Field(0.5, ge=0.0)
    rescale: Literal[0, 1, 2] = 1


@register
class CAGrad(GramianWeighting):
    """Conflict-Averse Gradient descent (Liu, Liu, Jin, Stone & Liu, NeurIPS 2021).

    With the mean gradient ``g_0 = (1/T) Σ_t g_t`` and ``φ = c² |g_0|²``, solve the dual
    ``w = argmin_{w in simplex} g_wᵀ g_0 + √φ |g_w|`` (``g_w = Σ_t w_t g_t``) and step along
    ``d = g_0 + (√φ / |g_w|) g_w``, divided by ``1 + c²`` (``rescale: 1``, the authors' default;
    ``0``: not divided; ``2``: by ``1 + c``). ``c = 0`` is the mean gradient. The dual is solved
    by SLSQP as in the authors' code; on failure (``warn``) its last iterate, projected onto the
    simplex.
    """

    name = "cagrad"
    description = "conflict-averse update within c·|mean| of the mean gradient (Liu et al. 2021)"
    Params = CAGradParams
    params: CAGradParams

    def weigh(self, gramian: Tensor, ctx: StepContext) -> Tensor:
        n, c = gramian.shape[0], self.params.c
        mean = torch.full((n,), 1.0 / n, dtype=torch.float64)
        divisor = {0: 1.0, 1: 1.0 + c**2, 2: 1.0 + c}[self.params.rescale]
        scale = float(gramian.diagonal().max())
        if c == 0.0 or scale <= 0.0:
            return mean / divisor
        g = (gramian / scale).numpy()
        radius = c * math.sqrt(max(float(mean.numpy() @ g @ mean.numpy()), 0.0))
        toward_mean = g @ mean.numpy()

        def objective(w: np.ndarray) -> float:
            return float(w @ toward_mean + radius * math.sqrt(w @ g @ w + 1e-12))

        def gradient(w: np.ndarray) -> np.ndarray:
            return toward_mean + radius * (g @ w) / math.sqrt(w @ g @ w + 1e-12)

        constraint: dict[str, Any] = {"type": "eq", "fun": lambda w: w.sum() - 1.0,
                                      "jac": lambda w: np.ones_like(w)}
        result = minimize(objective, mean.numpy(), jac=gradient, method="SLSQP",
                          bounds=[(0.0, 1.0)] * n, constraints=[constraint],
                          options={"maxiter": self.params.max_iter, "ftol": 1e-10})
        w = torch.from_numpy(result.x).clamp_min(0.0)
        w = w / w.sum()
        if not result.success:
            self.solver_failed(ctx, f"SLSQP: {result.message}", "its last iterate")
        norm = math.sqrt(max(float(w @ torch.from_numpy(g) @ w), 0.0))
        return (mean + radius / (norm + 1e-12) * w) / divisor


class NashMTLParams(SolverParams):
    max_iter: int = Field(50, ge=1)
    update_weights_every: int = Field(1, ge=1)


@register
class NashMTL(GramianWeighting):
    """Nash-MTL (Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022).

    ``d = Σ_t α_t g_t`` with ``α > 0`` solving ``G α = 1/α`` elementwise, that is
    ``α_t (g_t · d) = 1`` for every task: the Nash bargaining solution (the paper's Theorem 5.1),
    on the gradients themselves; the heads get ``α``-weighted gradients (they backpropagate
    ``Σ_t α_t L_t``). The authors' code divides G by its Frobenius norm for the solver and puts
    the factor back into the constraint, so its α too solves the original problem. Here the solver
    gets the cosine matrix ``C = N⁻¹ G N⁻¹`` (``N = diag |g_t|``): with ``β = N α``,
    ``α_t (G α)_t = β_t (C β)_t``, so ``β`` solves ``C β = 1/β`` and ``α = β / |g|`` exactly,
    and gradients of very different norms do not make the solver's problem ill-conditioned.
    The authors approximate the solution by a sequence of convex programs (cvxpy); here damped
    Newton minimises the convex ``½ βᵀCβ - Σ_t log β_t``, whose stationary point is exactly
    ``C β = 1/β`` (:func:`~multitask.weighting.solvers.nash_bargaining`), warm-started from the
    previous α. ``update_weights_every: k`` re-solves every k-th step and otherwise steps on
    ``Σ_t α_t L_t`` with the last α (one backward, the authors' speed option). No solution exists
    when 0 is in the convex hull of the gradients, in particular when a task's gradient is zero;
    then (``warn``) the previous step's α is used (ones at the first step), as the authors' code
    does.
    """

    name = "nashmtl"
    description = "Nash bargaining solution over the task gradients (Navon et al. 2022)"
    Params = NashMTLParams
    params: NashMTLParams
    weights_heads = True

    def __init__(self, num_tasks: int, params: NashMTLParams | None = None) -> None:
        super().__init__(num_tasks, params)
        self.alpha: Tensor | None = None

    def backward(self, ctx: StepContext) -> Tensor:
        if self.alpha is not None and ctx.step % self.params.update_weights_every != 0:
            weights = self.alpha.to(ctx.losses)
            (weights * ctx.losses).sum().backward()
            return weights.detach()
        return super().backward(ctx)

    def weigh(self, gramian: Tensor, ctx: StepContext) -> Tensor:
        norms = gramian.diagonal().clamp_min(0.0).sqrt()
        if bool((norms > 0).all()):
            cosines = gramian / torch.outer(norms, norms)
            start = (self.alpha * norms if self.alpha is not None
                     else torch.ones(len(norms), dtype=torch.float64))
            solution = nash_bargaining(cosines, start, self.params.max_iter)
        else:
            zero = torch.nonzero(norms == 0).flatten().tolist()
            solution = Solution(norms, False, 0, f"the gradients of tasks {zero} are zero: no "
                                "α satisfies α_t (g_t · d) = 1")
        if solution.converged:
            self.alpha = solution.x / norms
        else:
            self.solver_failed(ctx, solution.detail, "the previous step's weights")
            if self.alpha is None:
                self.alpha = torch.ones(self.num_tasks, dtype=torch.float64)
        return self.alpha

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "alpha": self.alpha}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.alpha = cpu64(state["alpha"])


class UPGradParams(SolverParams):
    norm_eps: float = Field(1e-4, ge=0.0)
    reg_eps: float = Field(1e-4, gt=0.0)


@register
class UPGrad(GramianWeighting):
    """UPGrad (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024; TorchJD).

    ``d = (1/T) Σ_i π(g_i)``: each task gradient projected onto the dual cone
    ``{x : g_t · x >= 0 for all t}``, then averaged, so ``g_t · d >= 0`` for every task. With the
    Gramian, ``π(Jᵀu) = Jᵀv`` with ``v = argmin_{v >= u} vᵀ G v``; so ``w = Σ_i v_i`` with
    ``u = e_i / T``. As TorchJD: G divided by its trace, or replaced by 0 when the trace
    ``Σ_t |g_t|²`` is below ``norm_eps``, plus ``reg_eps·I``, which makes each problem strictly
    convex. With G replaced by 0 the problems are ``reg_eps·I``, each ``v = u`` and ``w = 1/T``:
    tiny gradients get the mean gradient, not the dual-cone property. Each problem is a
    non-negative QP in ``v - u`` solved exactly by an active-set method
    (:func:`~multitask.weighting.solvers.nonnegative_qp`). Solver failure (``warn``): the last
    active-set iterate, which is feasible.
    """

    name = "upgrad"
    description = "mean of the task gradients projected onto their dual cone (Quinton & Rey 2024)"
    Params = UPGradParams
    params: UPGradParams

    def weigh(self, gramian: Tensor, ctx: StepContext) -> Tensor:
        n = gramian.shape[0]
        trace = float(gramian.trace())
        normalised = gramian / trace if trace >= self.params.norm_eps else torch.zeros_like(gramian)
        g = normalised + self.params.reg_eps * torch.eye(n, dtype=torch.float64)
        total = torch.zeros(n, dtype=torch.float64)
        for task in range(n):
            lower = torch.zeros(n, dtype=torch.float64)
            lower[task] = 1.0 / n
            solution = nonnegative_qp(g, g @ lower, self.params.max_iter)
            if not solution.converged:
                self.solver_failed(ctx, solution.detail, "the last active-set iterate")
            total += lower + solution.x
        return total
