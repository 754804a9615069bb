"""Loss-based weighting methods (no per-task gradients), checked against their formulas."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from multitask.weighting import StepContext, WeightingMethod, build_weighting


def step(method: WeightingMethod, losses: list[float]) -> tuple[Tensor, Tensor]:
    """One backward of losses ``L_t = value_t · θ_t`` at θ = 1: ``θ.grad[t] = w_t · value_t``."""
    theta = nn.Parameter(torch.ones(len(losses)))
    values = torch.tensor(losses)
    loss_tensor = values * theta
    weights = method.backward(StepContext(loss_tensor, theta * 1.0, [theta], step=0, epoch=0))
    assert theta.grad is not None
    return weights, theta.grad


def test_equal_is_the_mean() -> None:
    weights, grad = step(build_weighting("equal", 2), [2.0, 4.0])
    torch.testing.assert_close(weights, torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(grad, torch.tensor([1.0, 2.0]))


def test_uncertainty_matches_its_formula() -> None:
    # L = Σ exp(-s_t) L_t + s_t / 2: ∂L/∂s_t = -exp(-s_t) L_t + 1/2, ∂L/∂θ_t = exp(-s_t) value_t
    method = build_weighting("uncertainty", 2)
    with torch.no_grad():
        method.parameters()[0].copy_(torch.tensor([0.0, math.log(2.0)]))
    weights, grad = step(method, [3.0, 4.0])
    torch.testing.assert_close(weights, torch.tensor([1.0, 0.5]))
    torch.testing.assert_close(grad, torch.tensor([3.0, 2.0]))
    torch.testing.assert_close(method.parameters()[0].grad, torch.tensor([-2.5, -1.5]))


def test_dwa_weights_follow_the_loss_ratios_and_sum_to_the_task_count() -> None:
    dwa = build_weighting("dwa", 3)
    torch.testing.assert_close(step(dwa, [1.0, 1.0, 1.0])[0], torch.ones(3))  # epoch 1
    dwa.end_epoch(0, torch.tensor([1.0, 2.0, 4.0]))
    torch.testing.assert_close(step(dwa, [1.0, 1.0, 1.0])[0], torch.ones(3))  # epoch 2
    dwa.end_epoch(1, torch.tensor([0.5, 2.0, 6.0]))  # ratios 0.5, 1, 1.5
    weights, _ = step(dwa, [1.0, 1.0, 1.0])
    expected = 3 * torch.softmax(torch.tensor([0.25, 0.5, 0.75]), dim=0)  # r / T, T = 2
    torch.testing.assert_close(weights, expected)
    assert float(weights.sum()) == pytest.approx(3.0)


def test_dwa_history_survives_a_checkpoint() -> None:
    dwa = build_weighting("dwa", 2)
    dwa.end_epoch(0, torch.tensor([1.0, 2.0]))
    dwa.end_epoch(1, torch.tensor([0.5, 3.0]))
    restored = build_weighting("dwa", 2)
    restored.load_state_dict(dwa.state_dict())
    torch.testing.assert_close(step(restored, [1.0, 1.0])[0], step(dwa, [1.0, 1.0])[0])


def test_rlw_draws_new_simplex_weights_each_step() -> None:
    torch.manual_seed(0)
    rlw = build_weighting("rlw", 3)
    first, second = step(rlw, [1.0, 1.0, 1.0])[0], step(rlw, [1.0, 1.0, 1.0])[0]
    for weights in (first, second):
        assert float(weights.sum()) == pytest.approx(1.0) and bool((weights > 0).all())
    assert not torch.equal(first, second)


def test_famo_weights_stay_on_the_simplex_and_favour_the_slower_task() -> None:
    famo = build_weighting("famo", 2, {"famo": {"lr": 0.1}})
    losses = [2.0, 1.0]
    for _ in range(20):
        weights, grad = step(famo, losses)
        assert float(weights.sum()) == pytest.approx(1.0) and bool((weights >= 0).all())
        # the update is Σ w_t ∇L_t, the gradient of Σ z_t log L_t / c
        torch.testing.assert_close(grad, weights * torch.tensor(losses))
        famo.after_step(torch.tensor([losses[0] * 0.5, losses[1] * 0.99]))  # task 0 improves fast
    logits = famo.state_dict()["logits"]
    assert float(logits[1]) > float(logits[0])  # the slow task's logit grew


def test_famo_without_after_step_fails_loudly() -> None:
    famo = build_weighting("famo", 2)
    assert famo.needs_losses_after_step
    step(famo, [1.0, 1.0])
    with pytest.raises(RuntimeError, match="after_step"):
        step(famo, [1.0, 1.0])


def test_famo_next_batch_updates_from_the_next_steps_losses() -> None:
    famo = build_weighting("famo", 2, {"famo": {"update": "next_batch", "lr": 0.1}})
    assert not famo.needs_losses_after_step
    step(famo, [2.0, 1.0])
    torch.testing.assert_close(famo.state_dict()["logits"], torch.zeros(2, dtype=torch.float64))
    step(famo, [1.0, 0.99])  # task 0 improved fast: its logit drops at this step
    logits = famo.state_dict()["logits"]
    assert float(logits[0]) < 0.0 < float(logits[1])


def test_famo_state_round_trips() -> None:
    famo = build_weighting("famo", 2)
    step(famo, [2.0, 1.0])
    famo.after_step(torch.tensor([1.0, 1.0]))
    restored = build_weighting("famo", 2)
    restored.load_state_dict(famo.state_dict())
    torch.testing.assert_close(step(restored, [1.0, 3.0])[0], step(famo, [1.0, 3.0])[0])


def test_dbmtl_backpropagates_the_sum_of_log_losses() -> None:
    # ∂/∂θ_t log(value_t θ_t) = 1/θ_t = 1: weights 1 / L_t on the losses
    weights, grad = step(build_weighting("dbmtl", 2), [4.0, 0.5])
    torch.testing.assert_close(weights, torch.tensor([0.25, 2.0]))
    torch.testing.assert_close(grad, torch.ones(2))
