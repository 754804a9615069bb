"""Gradient methods whose update is ``d = Σ_t w_t g_t`` with ``w`` a function of the Gramian.

MGDA, PCGrad, CAGrad, IMTL-G, Nash-MTL, Aligned-MTL, UPGrad and GradNorm all combine the
per-task gradients ``g_t`` linearly, and the weights depend on the gradients only through the
Gramian ``G = J Jᵀ`` (``G[i, j] = g_i · g_j``). So each is one function ``G -> w``
(:meth:`GramianWeighting.weigh`); this base computes the per-task gradients once per step
(w.r.t. the representation or the shared parameters, ``gradients`` in the method's params),
their Gramian, and writes ``d = wᵀ J`` back without a further backward pass through the encoder.
With ``gradients: representation`` that write-back is one encoder backward of ``d``, which is
exactly the gradient of ``Σ_t w_t L_t`` (MGDA-UB's upper-bound trick, Sener & Koltun 2018).
The Gramian is formed in float64 (:func:`multitask.weighting.gradients.gramian64`): the
gradients are float32, but G is only T x T, and the float32 product is neither exactly
symmetric nor accurate for nearly collinear gradients, whose differences the methods divide by.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from typing import Any, ClassVar, Literal

from pydantic import Field
from torch import Tensor

from multitask.weighting.base import MethodParams, StepContext, WeightingMethod
from multitask.weighting.solvers import SolverError

log = logging.getLogger(__name__)

GradientSource = Literal["parameters", "representation"]


class GramianParams(MethodParams):
    gradients: GradientSource = "parameters"


class SolverParams(GramianParams):
    """Params of a method that solves an optimisation problem each step."""

    on_solver_failure: Literal["raise", "warn"] = "warn"
    max_iter: int = Field(100, ge=1)


class GramianWeighting(WeightingMethod):
    """Base: per-task gradients -> Gramian -> :meth:`weigh` -> ``d = wᵀ J`` into ``.grad``.

    Task-specific parameters get their own tasks' plain gradients, as in the papers of MGDA,
    PCGrad and CAGrad; methods that train on the weighted loss (GradNorm, Nash-MTL) set
    ``weights_heads`` so that they get ``w_t``-weighted ones.
    """

    gradients = "parameters"
    Params: ClassVar[type[MethodParams]] = GramianParams
    weights_heads: ClassVar[bool] = False
    params: GramianParams

    def __init__(self, num_tasks: int, params: MethodParams | None = None) -> None:
        super().__init__(num_tasks, params)
        self.gradients = self.params.gradients
        self.solver_failures = 0

    @abstractmethod
    def weigh(self, gramian: Tensor, ctx: StepContext) -> Tensor:
        """The weights ``w`` (float64, [T]) for gradients whose Gramian is ``gramian``."""

    def backward(self, ctx: StepContext) -> Tensor:
        grads = ctx.per_task_gradients(self.gradients)
        weights = self.weigh(grads.gramian(), ctx).to(grads.matrix)
        grads.apply(weights @ grads.matrix, weights if self.weights_heads else None)
        return weights

    def solver_failed(self, ctx: StepContext, detail: str, instead: str) -> None:
        """Count a solver failure, then raise or log it as ``on_solver_failure`` says."""
        self.solver_failures += 1
        problem = f"train.weighting: {self.name}: solver failed at step {ctx.step} ({detail})"
        if getattr(self.params, "on_solver_failure", "raise") == "raise":
            raise SolverError(
                f"{problem}; set train.method_params.{self.name}.on_solver_failure: warn to "
                f"continue with {instead} on such steps, counting them")
        log.warning("%s; this step uses %s (failure %d so far)", problem, instead,
                    self.solver_failures)

    def metrics(self) -> dict[str, float]:
        if not isinstance(self.params, SolverParams):
            return {}
        return {"weighting/solver_failures": float(self.solver_failures)}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "solver_failures": self.solver_failures}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.solver_failures = int(state.get("solver_failures", 0))
