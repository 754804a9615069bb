"""Each gradient method against the property that defines it in its paper.

Gradient matrices J (rows ``g_t``, float64, T x (T + 3)) of six kinds (``KINDS``; Nash-MTL also
gets norms spread from 1e-3 to 1e3) for T in {2, 3, 5, 10}. The Gramian methods get
``G = J Jᵀ`` through ``weigh`` and every property is checked on the original gradients. GradDrop
and DB-MTL are not functions of the Gramian: they take one step of a linear toy whose per-task
gradients are the rows of J.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest
import torch
from scipy.optimize import nnls
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


def exact_min_norm_point(matrix: Tensor) -> Tensor:
    """The min-norm point of the rows' convex hull by brute force over supports.

    For every support S, the min-norm point of its affine hull (least squares on the rows
    themselves); the nearest to 0 of those inside the hull is the answer, since the optimum lies
    in the relative interior of the face spanned by some S.
    """
    rows = matrix.numpy()
    best, best_norm = rows[0], np.inf
    for size in range(1, len(rows) + 1):
        for support in itertools.combinations(range(len(rows)), size):
            points = rows[list(support)]
            offsets = np.linalg.lstsq((points[1:] - points[0]).T, -points[0], rcond=None)[0]
            weights = np.concatenate([[1.0 - offsets.sum()], offsets])
            point = weights @ points
            if weights.min() >= -1e-12 and point @ point < best_norm:
                best, best_norm = point, float(point @ point)
    return torch.from_numpy(best)


def dual_cone_projection(matrix: Tensor, vector: Tensor) -> Tensor:
    """``argmin |x - y|`` over ``{x : J x >= 0}``: ``x = y + Jᵀλ``, ``λ = NNLS(Jᵀ, -y)``."""
    multipliers, _ = nnls(matrix.T.numpy(), -vector.numpy(), maxiter=1000)
    return vector + matrix.T @ torch.from_numpy(multipliers)


# MGDA (Sener & Koltun 2018): d is the min-norm point of the gradients' convex hull.


@ALL
def test_mgda_satisfies_the_min_norm_kkt_conditions(kind: str, tasks: int) -> None:
    matrix = gradients(kind, tasks)
    weights, _ = weigh("mgda", matrix, on_solver_failure="raise")
    d = weights @ matrix
    products, norm2 = matrix @ d, float(d @ d)
    tolerance = 1e-8 * norm2 + 1e-12 * float((matrix * matrix).sum(1).max())
    assert float(weights.min()) >= 0.0 and float(weights.sum()) == pytest.approx(1.0)
    assert bool((products >= norm2 - tolerance).all()), products - norm2
    torch.testing.assert_close(products[weights > 0], torch.full_like(products, norm2)[weights > 0],
                               atol=tolerance, rtol=0)


# Inputs on which the Frank-Wolfe solver of the first version stopped at its 250-iteration cap
# (it needed 284-7,292), from 0.007% (T = 3) to 110% (T = 10, 47° off) of |d*| away from d*.
@pytest.mark.parametrize(("tasks", "seed"), [(3, 0), (3, 47), (5, 5), (5, 9), (10, 0), (10, 1)])
def test_mgda_finds_the_exact_min_norm_point_of_conflicting_gradients(
        tasks: int, seed: int, caplog: pytest.LogCaptureFixture) -> None:
    matrix = gradients("conflicting", tasks, seed, width=tasks + 1)
    with caplog.at_level(logging.WARNING, logger="multitask.weighting.gramian"):
        weights, mgda = weigh("mgda", matrix)
    assert mgda.solver_failures == 0, caplog.text
    exact = exact_min_norm_point(matrix)
    assert float((weights @ matrix - exact).norm()) <= 1e-8 * float(exact.norm())


@pytest.mark.parametrize("tasks", [5, 10])
def test_mgda_gives_zero_when_zero_is_in_the_hull(tasks: int) -> None:
    matrix = gradients("random", tasks, width=2)  # more tasks than dimensions
    weights, _ = weigh("mgda", matrix, on_solver_failure="raise")
    assert float((weights @ matrix).norm()) <= 1e-7 * float(matrix.norm(dim=1).max())


# IMTL-G (Liu et al. 2021): equal projections of d on every unit task gradient.


@pytest.mark.parametrize(("kind", "tasks"),
                         list(itertools.product([k for k in KINDS if k != "zero_task"], TASKS)))
def test_imtl_projects_d_equally_on_every_unit_gradient(kind: str, tasks: int) -> None:
    matrix = gradients(kind, tasks)
    weights, _ = weigh("imtl", matrix)
    d = weights @ matrix
    projections = matrix @ d / matrix.norm(dim=1)
    assert float(weights.sum()) == pytest.approx(1.0)
    assert float(projections.min()) > 0.0
    torch.testing.assert_close(projections, projections.mean().expand(tasks), rtol=1e-6, atol=0)


@pytest.mark.parametrize("tasks", TASKS)
def test_imtl_update_is_zero_when_a_task_gradient_is_zero(tasks: int) -> None:
    matrix = gradients("zero_task", tasks)
    weights, _ = weigh("imtl", matrix)
    assert float((weights @ matrix).norm()) <= 1e-12 * float(matrix.norm(dim=1).max())


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


# UPGrad (Quinton & Rey 2024): d = mean of the gradients projected onto the dual cone.


@pytest.mark.parametrize(("kind", "tasks"),
                         list(itertools.product([k for k in KINDS if k != "tiny"], TASKS)))
def test_upgrad_update_lies_in_the_dual_cone(kind: str, tasks: int) -> None:
    # reg_eps·I moves the cone by up to reg_eps·trace(G)·w_t; a negligible one tests the cone of
    # the gradients themselves.
    matrix = gradients(kind, tasks)
    weights, _ = weigh("upgrad", matrix, reg_eps=1e-12, on_solver_failure="raise")
    products = matrix @ (weights @ matrix)
    assert bool((products >= -1e-9 * float(matrix.norm(dim=1).max()) ** 2).all()), products


@ALL
def test_upgrad_is_the_mean_projection_onto_the_dual_cone(kind: str, tasks: int) -> None:
    # With its regularisation UPGrad projects the rows of J' = [J / √tr(G), √reg_eps I]
    # (Gramian G / tr(G) + reg_eps I, TorchJD's): the update d' = wᵀ J' must be the mean of
    # their projections, computed here in the gradients' own space.
    matrix, reg = gradients(kind, tasks), 1e-4
    weights, _ = weigh("upgrad", matrix, reg_eps=reg, on_solver_failure="raise")
    trace = float((matrix * matrix).sum())
    scaled = matrix / trace**0.5 if trace >= 1e-4 else torch.zeros_like(matrix)
    augmented = torch.cat([scaled, reg**0.5 * torch.eye(tasks, dtype=torch.float64)], dim=1)
    expected = torch.stack([dual_cone_projection(augmented, row) for row in augmented]).mean(0)
    torch.testing.assert_close(weights @ augmented, expected, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("tasks", TASKS)
def test_upgrad_gives_gradients_below_norm_eps_the_mean(tasks: int) -> None:
    # TorchJD normalises such a Gramian to 0, leaving reg_eps·I: every projection is the
    # gradient itself, so d is the mean gradient, not zero.
    matrix = gradients("tiny", tasks)
    assert float((matrix * matrix).sum()) < 1e-4  # UPGrad's default norm_eps
    weights, _ = weigh("upgrad", matrix)
    torch.testing.assert_close(weights, torch.full((tasks,), 1 / tasks, dtype=torch.float64))
