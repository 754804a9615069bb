"""Gradient-based weighting methods on given task gradients, checked by hand.

A linear toy makes the per-task gradients whatever the test says: shared parameters θ (zero),
representation ``z = 1·θ`` and losses ``L_t = g_t · z``, so ``∇θ L_t = ∇z L_t = g_t`` and
``θ.grad`` after a step is the method's combined update ``d``.
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch import Tensor, nn

from multitask.weighting import SolverError, StepContext, WeightingMethod, build_weighting
from multitask.weighting.gradients import gramian64
from multitask.weighting.gramian import GramianWeighting


def step(method: WeightingMethod, vectors: list[list[float]],
         losses_value: list[float] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """One ``method.backward`` on the toy; returns (update d, weights, gradients as rows)."""
    gradients = torch.tensor(vectors, dtype=torch.float32)
    theta = nn.Parameter(torch.zeros(gradients.shape[1]))
    z = theta * 1.0
    losses = gradients @ z
    if losses_value is not None:  # shift the values, keep the gradients
        losses = losses + torch.tensor(losses_value)
    weights = method.backward(StepContext(losses, z, [theta], step=0, epoch=0))
    assert theta.grad is not None
    return theta.grad, weights, gradients


def method(name: str, tasks: int, **params: object) -> WeightingMethod:
    return build_weighting(name, tasks, {name: dict(params)})


@pytest.mark.parametrize("gradients", ["parameters", "representation"])
def test_pcgrad_removes_the_conflicting_component(gradients: str) -> None:
    # g1 = (1, 0), g2 = (-1, 1) conflict (g1·g2 = -1):
    # g1' = g1 - (-1/2) g2 = (0.5, 0.5) and g2' = g2 - (-1/1) g1 = (0, 1), both with
    # g1'·g2 = 0 and g2'·g1 = 0; d = g1' + g2' = (0.5, 1.5).
    d, weights, _ = step(method("pcgrad", 2, gradients=gradients), [[1, 0], [-1, 1]])
    torch.testing.assert_close(d, torch.tensor([0.5, 1.5]))
    torch.testing.assert_close(weights, torch.tensor([2.0, 1.5]))


def test_pcgrad_leaves_agreeing_gradients_alone() -> None:
    d, _, _ = step(method("pcgrad", 2), [[1, 0], [1, 1]])
    torch.testing.assert_close(d, torch.tensor([2.0, 1.0]))


def test_mgda_two_task_weights_match_the_closed_form() -> None:
    # w1 = (g2 - g1)·g2 / |g1 - g2|² = ((-1, 2)·(0, 2)) / 5 = 0.8
    d, weights, _ = step(method("mgda", 2), [[1, 0], [0, 2]])
    torch.testing.assert_close(weights, torch.tensor([0.8, 0.2]))
    torch.testing.assert_close(d, torch.tensor([0.8, 0.4]))  # orthogonal to g1 - g2


def test_mgda_uses_the_representation_by_default() -> None:
    assert method("mgda", 2).gradients == "representation"
    assert method("mgda", 2, gradients="parameters").gradients == "parameters"
    assert method("pcgrad", 2).gradients == "parameters"


def test_imtl_makes_the_projections_equal() -> None:
    vectors = [[1.0, 0.2, 0.0, -0.5], [-0.3, 2.0, 0.4, 0.0], [0.5, -0.2, 0.7, 1.5]]
    d, weights, gradients = step(method("imtl", 3), vectors)
    projections = gradients @ d / gradients.norm(dim=1)
    torch.testing.assert_close(projections, projections.mean().expand(3))
    assert float(weights.sum()) == pytest.approx(1.0)


def test_cagrad_with_c_zero_is_the_mean() -> None:
    vectors = [[1.0, 0.0, 2.0], [-3.0, 1.0, 0.0], [0.5, 0.5, 0.5]]
    d, weights, gradients = step(method("cagrad", 3, c=0.0), vectors)
    torch.testing.assert_close(d, gradients.mean(0))
    torch.testing.assert_close(weights, torch.full((3,), 1 / 3))


def test_cagrad_improves_the_worst_task_over_the_mean() -> None:
    vectors = [[1.0, 0.0], [-0.8, 0.3]]
    d, _, gradients = step(method("cagrad", 2, c=0.5, rescale=0), vectors)
    mean = gradients.mean(0)
    assert float((gradients @ d).min()) > float((gradients @ mean).min())
    assert float((d - mean).norm()) <= 0.5 * float(mean.norm()) + 1e-5  # within the ball


def test_upgrad_has_a_nonnegative_inner_product_with_every_gradient() -> None:
    # The property is exact for the problem UPGrad solves, G/trace(G) + reg_eps·I; with a
    # negligible reg_eps it holds for the gradients themselves.
    vectors = [[1.0, 0.0, 0.0], [-2.0, 0.5, 0.1], [0.3, -1.0, 0.2]]
    d, _, gradients = step(method("upgrad", 3, reg_eps=1e-12), vectors)
    assert float(d.norm()) > 0.1
    assert bool(((gradients @ d) >= -1e-6).all()), gradients @ d


def test_upgrad_of_orthogonal_gradients_is_the_mean() -> None:
    d, _, gradients = step(method("upgrad", 2), [[3.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(d, gradients.mean(0))


def test_upgrad_steps_on_the_mean_of_gradients_below_norm_eps() -> None:
    # Σ|g_t|² = 6e-6 < norm_eps = 1e-4: TorchJD normalises G to 0, so the problems are
    # reg_eps·I and d is the mean gradient (conflicting here: g_1·g_2 < 0), not zero.
    d, weights, gradients = step(method("upgrad", 2), [[1e-3, 0.0], [-2e-3, 1e-3]])
    torch.testing.assert_close(weights, torch.full((2,), 0.5))
    torch.testing.assert_close(d, gradients.mean(0))


def test_nashmtl_satisfies_its_optimality_condition() -> None:
    # α_t (g_t · d) = 1 for every t, on the gradients themselves (the paper's Theorem 5.1)
    vectors = [[1.0, 0.3, 0.0, 0.2], [-0.2, 1.5, 0.1, 0.0], [0.4, -0.1, 0.8, 0.6]]
    d, weights, gradients = step(method("nashmtl", 3), vectors)
    products = weights * (gradients @ d)
    torch.testing.assert_close(products, torch.ones(3))


@pytest.mark.parametrize("name", ["imtl", "alignedmtl", "mgda"])
def test_weights_come_from_the_float64_gramian_of_the_gradients(name: str) -> None:
    # Gradients 1% apart (D = 1000): a float32 J Jᵀ moved IMTL-G's weights by 6e-4 and
    # Aligned-MTL's by 7e-5 (relative) here.
    generator = torch.Generator().manual_seed(0)
    vectors = torch.randn(1, 1000, generator=generator) + 1e-2 * torch.randn(
        3, 1000, generator=generator)
    gramian_method = method(name, 3)
    assert isinstance(gramian_method, GramianWeighting)
    _, weights, gradients = step(gramian_method, vectors.tolist())
    exact = gradients.double()
    ctx = StepContext(torch.zeros(3), exact, [], step=0, epoch=0)
    expected = gramian_method.weigh(exact @ exact.T, ctx)
    torch.testing.assert_close(weights.double(), expected, rtol=1e-6, atol=1e-7)


def test_gramian64_is_exactly_symmetric_and_blockwise_exact() -> None:
    matrix = torch.randn(5, 1003, generator=torch.Generator().manual_seed(0))
    gramian = gramian64(matrix, block=100)
    assert gramian.dtype == torch.float64 and torch.equal(gramian, gramian.T)
    torch.testing.assert_close(gramian, matrix.double() @ matrix.double().T, rtol=1e-12, atol=0)


def test_alignedmtl_equalises_the_components() -> None:
    # G = diag(4, 1): B = √1 · diag(1/2, 1), w = B·1 = (1/2, 1), d = (1, 1)
    d, weights, _ = step(method("alignedmtl", 2), [[2.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(weights, torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(d, torch.tensor([1.0, 1.0]))


def test_gradnorm_moves_weights_toward_balanced_rates() -> None:
    # Unit orthogonal gradients, L(0) = (1, 1); task 1 halved its loss, task 2 did not:
    # rates r = (2/3, 4/3); alpha = 1 targets Ḡ r = (2/3, 4/3) against G = (1, 1), so
    # w.grad = (sign(1 - 2/3), sign(1 - 4/3)) · |g| = (1, -1): the slow task gains weight.
    gradnorm = method("gradnorm", 2, alpha=1.0)
    optimizer = torch.optim.SGD(gradnorm.parameters(), lr=0.1)
    step(gradnorm, [[1.0, 0.0], [0.0, 1.0]], losses_value=[1.0, 1.0])  # records L(0)
    optimizer.zero_grad()
    step(gradnorm, [[1.0, 0.0], [0.0, 1.0]], losses_value=[0.5, 1.0])
    torch.testing.assert_close(gradnorm.task_weights.grad, torch.tensor([1.0, -1.0]))
    optimizer.step()
    _, weights, _ = step(gradnorm, [[1.0, 0.0], [0.0, 1.0]], losses_value=[0.5, 1.0])
    torch.testing.assert_close(weights, torch.tensor([0.9, 1.1]))  # renormalised: sum 2


def test_graddrop_keeps_agreeing_signs_and_picks_one_sign_otherwise() -> None:
    # z = θ > 0; element 0: both gradients positive (purity 1), both always kept;
    # element 1: +1 and -2 (purity ½(1 - 1/3) = 1/3): +1 with probability 1/3, else -2.
    torch.manual_seed(0)
    graddrop = method("graddrop", 2)
    seen = []
    for _ in range(300):
        theta = nn.Parameter(torch.ones(2))
        z = (theta * 1.0).unsqueeze(0)  # a batch of one, two elements
        losses = torch.stack([(torch.tensor([1.0, 1.0]) * z).sum(),
                              (torch.tensor([2.0, -2.0]) * z).sum()])
        graddrop.backward(StepContext(losses, z, [theta], step=0, epoch=0))
        assert theta.grad is not None
        assert float(theta.grad[0]) == 3.0
        seen.append(float(theta.grad[1]))
    assert set(seen) == {1.0, -2.0}
    assert seen.count(1.0) / len(seen) == pytest.approx(1 / 3, abs=0.08)


def test_dbmtl_balancing_scales_every_average_to_the_largest_norm() -> None:
    # gradients of log(L_t) are g_t / L_t: (3, 0) / 1 and (0, 1) / 2; after one step the
    # averages are (1 - β) of those, norms 0.3 and 0.05: task 2 is scaled by 6.
    dbmtl = method("dbmtl", 2, balance_gradients=True, beta=0.9)
    assert dbmtl.gradients == "parameters"
    d, _, _ = step(dbmtl, [[3.0, 0.0], [0.0, 1.0]], losses_value=[1.0, 2.0])
    torch.testing.assert_close(d, torch.tensor([0.3, 0.3]))


def test_a_forced_solver_failure_raises_with_the_fix() -> None:
    # Opposite gradients: 0 is in their convex hull, no Nash bargaining solution exists.
    nash = method("nashmtl", 2, on_solver_failure="raise")
    with pytest.raises(SolverError, match=r"train\.method_params\.nashmtl\.on_solver_failure"):
        step(nash, [[1.0, 0.0], [-1.0, 0.0]])
    assert nash.solver_failures == 1


def test_a_forced_solver_failure_is_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    nash = method("nashmtl", 2)  # on_solver_failure: warn (the default)
    with caplog.at_level(logging.WARNING, logger="multitask.weighting.gramian"):
        _, weights, _ = step(nash, [[1.0, 0.0], [-1.0, 0.0]])
    assert nash.solver_failures == 1
    assert nash.metrics() == {"weighting/solver_failures": 1.0}
    assert "nashmtl: solver failed at step 0" in caplog.text
    torch.testing.assert_close(weights, torch.ones(2))  # the documented substitute


def test_mgda_iteration_cap_is_counted(caplog: pytest.LogCaptureFixture) -> None:
    mgda = method("mgda", 4, max_iter=1)
    vectors = [[1.0, 0.2, 0.0, 0.3], [-0.4, 1.0, 0.1, 0.0], [0.1, -0.5, 1.0, 0.2],
               [-0.3, -0.3, -0.2, 1.0]]
    with caplog.at_level(logging.WARNING, logger="multitask.weighting.gramian"):
        step(mgda, vectors)
    assert mgda.solver_failures == 1 and "duality gap" in caplog.text


@pytest.mark.parametrize(("name", "params", "key"), [
    ("cagrad", {"cc": 0.5}, "cc"),
    ("cagrad", {"c": -1.0}, "c"),
    ("mgda", {"gradients": "weights"}, "gradients"),
    ("nashmtl", {"on_solver_failure": "ignore"}, "on_solver_failure"),
    ("dwa", {"temperature": 0}, "temperature"),
    ("famo", {"w_lr": 0.1}, "w_lr"),
])
def test_bad_method_params_name_the_key(name: str, params: dict[str, object], key: str) -> None:
    with pytest.raises(ValueError, match=rf"train\.method_params\.{name}\.{key}"):
        build_weighting(name, 2, {name: params})


@pytest.mark.parametrize(("name", "key"), [
    ("dwa", "temperature"), ("famo", "lr"), ("cagrad", "c"), ("mgda", "tol"),
    ("gradnorm", "alpha"), ("upgrad", "norm_eps"), ("dbmtl", "beta_sigma"),
])
def test_infinite_method_params_are_refused_by_key(name: str, key: str) -> None:
    # YAML's .inf passes gt=0 / ge=0; mgda with tol: .inf would stop at its first vertex
    with pytest.raises(ValueError, match=rf"train\.method_params\.{name}\.{key}: .*finite"):
        build_weighting(name, 2, {name: {key: float("inf")}})
