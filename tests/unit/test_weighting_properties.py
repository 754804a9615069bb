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
from torch import Tensor, nn

from multitask.weighting import SolverError, StepContext, build_weighting
from multitask.weighting.gramian import GramianWeighting
from multitask.weighting.surgery import aligned_balance, pcgrad_combinations

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


def toy_step(name: str, matrix: Tensor, losses: Tensor, **params: object) -> tuple[Tensor, Tensor]:
    """One step on ``L_t = g_t · (z - 1) + losses_t`` at ``z = θ = 1`` (a batch of one)."""
    method = build_weighting(name, len(matrix), {name: dict(params)})
    theta = nn.Parameter(torch.ones(matrix.shape[1]))
    z = (theta * 1.0).unsqueeze(0)
    task_losses = (matrix.float() @ (z[0] - 1.0)) + losses.float()
    weights = method.backward(StepContext(task_losses, z, [theta], step=0, epoch=0))
    assert theta.grad is not None
    return theta.grad.double(), weights.double()


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


# PCGrad (Yu et al. 2020): after each projection, g_i^PC no longer conflicts with that g_j.


@ALL
def test_pcgrad_leaves_no_conflict_with_the_last_gradient_projected_against(
        kind: str, tasks: int) -> None:
    # A later projection can reintroduce a conflict with an earlier g_j (T >= 3), but none
    # follows the last one: g_i^PC · g_j >= 0 for the last j in i's order, with or without
    # a projection.
    matrix = gradients(kind, tasks)
    gramian = (matrix @ matrix.T).numpy()
    generator = torch.Generator().manual_seed(tasks)
    orders = [torch.randperm(tasks, generator=generator).tolist() for _ in range(tasks)]
    products = pcgrad_combinations(gramian, orders) @ gramian  # [i, j] = g_i^PC · g_j
    scale = float(np.abs(gramian).max())
    for task, order in enumerate(orders):
        last = [j for j in order if j != task][-1]
        assert products[task, last] >= -1e-12 * scale, (task, last, products[task, last])


@pytest.mark.parametrize("kind", KINDS)
def test_pcgrad_two_conflicting_gradients_become_orthogonal(kind: str) -> None:
    matrix = gradients(kind, 2)
    gramian = (matrix @ matrix.T).numpy()
    products = pcgrad_combinations(gramian, [[1, 0], [0, 1]]) @ gramian
    scale = float(np.abs(gramian).max())
    off_diagonal = np.array([products[0, 1], products[1, 0]])
    if gramian[0, 1] < 0:
        np.testing.assert_allclose(off_diagonal, 0.0, atol=1e-12 * scale)
    else:
        np.testing.assert_allclose(off_diagonal, gramian[0, 1])


# CAGrad (Liu et al. 2021): d maximises min_t g_t · d within c·|g_0| of the mean g_0.


@ALL
def test_cagrad_certifies_its_worst_task_improvement(kind: str, tasks: int) -> None:
    # Weak duality: for d in the ball and any w in the simplex, min_t g_t·d <= F(w) =
    # g_w·g_0 + c|g_0||g_w|. d = g_0 + (c|g_0| / |g_w|) g_w with F(w) = min_t g_t·d is
    # therefore optimal; w is read off the combined weights (g_0 + λ g_w). SLSQP solves the
    # dual on G scaled to a largest diagonal of 1, so the gap is only that small relative to
    # max|g|²: on the dominating kind at T = 10 the worst task's g_t·d is -260 where -197 is
    # attainable.
    matrix, c = gradients(kind, tasks), 0.5
    combined, _ = weigh("cagrad", matrix, c=c, rescale=0, on_solver_failure="raise")
    mean = matrix.mean(0)
    radius = c * float(mean.norm())
    scale = float(matrix.norm(dim=1).max())
    d = combined @ matrix
    assert float((d - mean).norm()) <= radius + 1e-9 * scale
    direction = combined - 1.0 / tasks
    if float(direction.sum()) <= 0.0:  # no ball: g_0 = 0
        return
    g_w = (direction / direction.sum()) @ matrix
    dual = float(g_w @ mean) + radius * float(g_w.norm())
    assert float((matrix @ d).min()) >= dual - 1e-5 * scale**2


# Aligned-MTL (Senushkin et al. 2023): the aligned gradients B J have one singular value.


@ALL
def test_alignedmtl_aligned_gradients_share_the_smallest_singular_value(
        kind: str, tasks: int) -> None:
    matrix = gradients(kind, tasks)
    gramian = matrix @ matrix.T
    balance = aligned_balance(gramian)
    eigenvalues = torch.linalg.eigvalsh(gramian)
    kept = eigenvalues[eigenvalues > eigenvalues.max() * tasks * torch.finfo(torch.float32).eps]
    aligned = torch.linalg.eigvalsh(balance @ gramian @ balance.T)  # squared singular values
    nonzero = aligned[aligned > 1e-6 * float(kept.min())]
    assert len(nonzero) == len(kept)
    torch.testing.assert_close(nonzero, kept.min().expand(len(kept)), rtol=1e-7, atol=0)
    weights, _ = weigh("alignedmtl", matrix)
    torch.testing.assert_close(weights, balance.sum(1))


# GradDrop (Chen et al. 2020): each element keeps the gradients of one sign only.


@ALL
def test_graddrop_keeps_one_sign_per_element(kind: str, tasks: int) -> None:
    torch.manual_seed(tasks)
    matrix = gradients(kind, tasks)
    update, _ = toy_step("graddrop", matrix, torch.ones(tasks))
    rows = matrix.float().double()
    positive, negative = rows.clamp_min(0).sum(0), rows.clamp_max(0).sum(0)
    is_positive = torch.isclose(update, positive, rtol=1e-5, atol=0)
    is_negative = torch.isclose(update, negative, rtol=1e-5, atol=0)
    assert bool((is_positive | is_negative).all()), update
    unanimous = (rows >= 0).all(0) | (rows <= 0).all(0)  # purity 0 or 1: no draw involved
    torch.testing.assert_close(update[unanimous], rows.sum(0)[unanimous], rtol=1e-5, atol=0)


# DB-MTL (Lin & Zhang 2023): every task's averaged log-loss gradient scaled to the largest norm.


@ALL
def test_dbmtl_scales_every_gradient_to_the_largest_norm(kind: str, tasks: int) -> None:
    matrix, beta, eps = gradients(kind, tasks), 0.9, 1e-8
    losses = torch.linspace(0.5, 2.0, tasks, dtype=torch.float64)
    update, weights = toy_step("dbmtl", matrix, losses, balance_gradients=True, beta=beta)
    rows = matrix.float().double()
    averaged = (1 - beta) * rows / (losses + eps).unsqueeze(1)  # the average after one step
    norms = averaged.norm(dim=1)
    scaled = (weights * (1 - beta)).unsqueeze(1) * rows  # weights include 1 / (L_t + ε)
    torch.testing.assert_close(update, scaled.sum(0), rtol=1e-5, atol=1e-6 * float(norms.max()))
    # exact up to the authors' ε in max|ĥ| / (|ĥ_t| + ε); zero gradients stay zero
    nonzero = norms > 0
    relative = scaled.norm(dim=1)[nonzero] / norms.max()
    bound = 1e-5 + eps / norms[nonzero]
    assert bool(((relative - 1).abs() <= bound).all()), relative


# GradNorm (Chen et al. 2018): w.grad is the gradient of Σ_t |w_t |g_t| - Ḡ r_t^α| (target fixed).


@ALL
def test_gradnorm_weight_gradient_is_that_of_its_gradient_loss(kind: str, tasks: int) -> None:
    matrix, alpha = gradients(kind, tasks), 1.5
    gradnorm = build_weighting("gradnorm", tasks, {"gradnorm": {"alpha": alpha}})
    assert isinstance(gradnorm, GramianWeighting)
    gramian = matrix @ matrix.T
    first, later = torch.ones(tasks), torch.linspace(0.3, 1.2, tasks)
    gradnorm.weigh(gramian, StepContext(first, matrix, [], step=0, epoch=0))
    weights = gradnorm.weigh(gramian, StepContext(later, matrix, [], step=1, epoch=0))
    assert float(weights.sum()) == pytest.approx(tasks)
    w = weights.clone().requires_grad_(True)
    norms = gramian.diagonal().sqrt()
    rates = later.double() / first.double()
    target = ((w * norms).mean() * (rates / rates.mean()) ** alpha).detach()
    (w * norms - target).abs().sum().backward()
    assert w.grad is not None
    torch.testing.assert_close(gradnorm.task_weights.grad.double(), w.grad)
