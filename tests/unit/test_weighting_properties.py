"""Each gradient method against the property that defines it in its paper.

Gradient matrices J (rows ``g_t``, float64, T x (T + 3)) of six kinds (``KINDS``; Nash-MTL also
gets norms spread from 1e-3 to 1e3) for T in {2, 3, 5, 10}. The Gramian methods get
``G = J Jᵀ`` through ``weigh`` and every property is checked on the original gradients. GradDrop
and DB-MTL are not functions of the Gramian: they take one step of a linear toy whose per-task
gradients are the rows of J.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor

from multitask.weighting import SolverError, StepContext, build_weighting
from multitask.weighting.gramian import GramianWeighting

KINDS = ("random", "conflicting", "nearly_collinear", "zero_task", "dominating", "tiny")
TASKS = (2, 3, 5, 10)
ALL = pytest.mark.parametrize(("kind", "tasks"), list(itertools.product(KINDS, TASKS)))


def gradients(kind: str, tasks: int, seed: int = 0, width: int | None = None) -> Tensor:
    """Deterministic ``tasks x width`` (default T + 3) gradients of one kind."""
    generator = torch.Generator().manual_seed(1000 * tasks + seed)
    width = tasks + 3 if width is None else width

    def normal(rows: int) -> Tensor:
        return torch.randn(rows, width, generator=generator, dtype=torch.float64)

    noise = normal(tasks)
    if kind == "conflicting":  # nearly cancelling: strong conflicts, a small common direction
        return noise - noise.mean(0) + 0.05 * normal(1)
    if kind == "nearly_collinear":
        return normal(1) + 1e-3 * noise
    if kind == "zero_task":
        noise[0] = 0.0
    elif kind == "dominating":
        noise[0] *= 1e3
    elif kind == "tiny":  # trace of G ~ 1e-8 T (T + 3): below UPGrad's norm_eps
        noise *= 1e-4
    elif kind == "spread":  # norms from 1e-3 to 1e3
        noise *= torch.logspace(-3, 3, tasks, dtype=torch.float64).unsqueeze(1)
    return noise


def weigh(name: str, matrix: Tensor, **params: object) -> tuple[Tensor, GramianWeighting]:
    method = build_weighting(name, len(matrix), {name: dict(params)})
    assert isinstance(method, GramianWeighting)
    ctx = StepContext(torch.ones(len(matrix)), matrix, [], step=0, epoch=0)
    return method.weigh(matrix @ matrix.T, ctx), method


# Nash-MTL (Navon et al. 2022, Theorem 5.1): α_t (g_t · d) = 1 on the gradients themselves.


@pytest.mark.parametrize(("kind", "tasks"), list(itertools.product(
    ["random", "conflicting", "nearly_collinear", "dominating", "tiny", "spread"], TASKS)))
def test_nashmtl_weights_satisfy_the_bargaining_identity(kind: str, tasks: int) -> None:
    matrix = gradients(kind, tasks)
    alpha, _ = weigh("nashmtl", matrix, on_solver_failure="raise")
    products = alpha * (matrix @ (alpha @ matrix))
    torch.testing.assert_close(products, torch.ones(tasks, dtype=torch.float64),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("tasks", TASKS)
def test_nashmtl_reports_a_zero_task_gradient_as_a_solver_failure(tasks: int) -> None:
    with pytest.raises(SolverError, match=r"gradients of tasks \[0\] are zero"):
        weigh("nashmtl", gradients("zero_task", tasks), on_solver_failure="raise")
