"""multitask.weighting.gradients: per-task gradients, their write-back, diagnostics."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from multitask.weighting.diagnostics import describe_gramian, gradient_diagnostics
from multitask.weighting.gradients import decoder_leaves, per_task_gradients


class TinyHPS(nn.Module):
    """x (4) -> tanh(Linear) = z (3) -> two linear heads -> squared-error losses."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Linear(4, 3)
        self.heads = nn.ModuleList([nn.Linear(3, 2), nn.Linear(3, 2)])

    def losses(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = torch.tanh(self.encoder(x))
        targets = (torch.ones(len(x), 2), -torch.ones(len(x), 2))
        losses = [((head(z) - y) ** 2).mean() for head, y in zip(self.heads, targets, strict=True)]
        return torch.stack(losses), z


def reference_grads(model: TinyHPS, x: Tensor, task: int, wrt: list[Tensor] | None = None
                    ) -> list[Tensor]:
    losses, z = model.losses(x)
    inputs = wrt if wrt is not None else [z]
    return list(torch.autograd.grad(losses[task], inputs, allow_unused=True))


@pytest.fixture
def model() -> TinyHPS:
    return TinyHPS()


@pytest.fixture
def x() -> Tensor:
    return torch.randn(5, 4, generator=torch.Generator().manual_seed(1))


def test_parameter_rows_are_each_tasks_own_gradient(model: TinyHPS, x: Tensor) -> None:
    shared = list(model.encoder.parameters())
    losses, z = model.losses(x)
    grads = per_task_gradients(losses, z, shared, "parameters")
    assert grads.matrix.shape == (2, sum(p.numel() for p in shared))
    for task in range(2):
        expected = torch.cat([g.reshape(-1) for g in reference_grads(model, x, task, shared)])
        torch.testing.assert_close(grads.matrix[task], expected)


def test_representation_rows_are_each_tasks_gradient_of_z(model: TinyHPS, x: Tensor) -> None:
    losses, z = model.losses(x)
    grads = per_task_gradients(losses, z, list(model.encoder.parameters()), "representation")
    assert grads.matrix.shape == (2, z.numel())
    for task in range(2):
        expected = reference_grads(model, x, task)[0].reshape(-1)
        torch.testing.assert_close(grads.matrix[task], expected)


def test_decoder_leaves_are_the_heads_not_the_encoder(model: TinyHPS, x: Tensor) -> None:
    losses, z = model.losses(x)
    found = {id(p) for p in decoder_leaves(losses, z)}
    assert found == {id(p) for p in model.heads.parameters()}


def test_parameter_apply_sets_shared_grad_and_weighted_heads(model: TinyHPS, x: Tensor) -> None:
    shared = list(model.encoder.parameters())
    losses, z = model.losses(x)
    grads = per_task_gradients(losses, z, shared, "parameters")
    combined = torch.arange(grads.matrix.shape[1], dtype=torch.float32)
    grads.apply(combined, head_weights=torch.tensor([2.0, 0.5]))
    torch.testing.assert_close(torch.cat([p.grad.reshape(-1) for p in shared]), combined)
    head0 = reference_grads(model, x, 0, list(model.heads[0].parameters()))
    head1 = reference_grads(model, x, 1, list(model.heads[1].parameters()))
    for param, expected in zip(model.heads[0].parameters(), head0, strict=True):
        torch.testing.assert_close(param.grad, 2.0 * expected)
    for param, expected in zip(model.heads[1].parameters(), head1, strict=True):
        torch.testing.assert_close(param.grad, 0.5 * expected)


def test_representation_apply_is_the_weighted_loss_gradient(model: TinyHPS, x: Tensor) -> None:
    """Encoder gets ∇θ Σ w_t L_t from one backward of wᵀΔ; heads their plain gradients."""
    shared = list(model.encoder.parameters())
    weights = torch.tensor([0.3, 0.7])
    losses, z = model.losses(x)
    expected_shared = torch.autograd.grad((weights * losses).sum(), shared, retain_graph=True)
    expected_heads = torch.autograd.grad(losses.sum(), list(model.heads.parameters()))
    losses, z = model.losses(x)
    grads = per_task_gradients(losses, z, shared, "representation")
    grads.apply(weights @ grads.matrix)
    for param, expected in zip(shared, expected_shared, strict=True):
        torch.testing.assert_close(param.grad, expected)
    for param, expected in zip(model.heads.parameters(), expected_heads, strict=True):
        torch.testing.assert_close(param.grad, expected)


def test_tuple_representation_round_trips() -> None:
    """Two representation tensors: rows concatenate both; apply backpropagates through both."""
    theta = nn.Parameter(torch.tensor([1.0, 2.0]))
    a, b = theta * 3.0, theta**2  # d a/dθ = 3, d b/dθ = 2θ
    losses = torch.stack([a.sum(), (b * torch.tensor([1.0, -1.0])).sum()])
    grads = per_task_gradients(losses, (a, b), [theta], "representation")
    torch.testing.assert_close(grads.matrix, torch.tensor([[1.0, 1, 0, 0], [0, 0, 1, -1]]))
    grads.apply(torch.tensor([1.0, 1.0, 1.0, -1.0]))  # = row 0 + row 1
    torch.testing.assert_close(theta.grad, torch.tensor([3.0 + 2.0, 3.0 - 4.0]))


def test_representation_refuses_a_decoder_that_uses_shared_parameters() -> None:
    shared = nn.Parameter(torch.tensor(2.0))
    z = shared * torch.ones(3)
    losses = torch.stack([(z * shared).sum(), z.sum()])  # decode reuses `shared`
    with pytest.raises(ValueError, match="gradients: parameters"):
        per_task_gradients(losses, z, [shared], "representation")


def test_describe_gramian_hand_computed() -> None:
    gramian = torch.tensor([[4.0, -2.0, 0.0], [-2.0, 9.0, 0.0], [0.0, 0.0, 0.0]],
                           dtype=torch.float64)
    out = describe_gramian(gramian, ["left", "right", "idle"])
    assert out["grad/norm/left"] == 2.0 and out["grad/norm/right"] == 3.0
    assert out["grad/norm/idle"] == 0.0
    assert math.isclose(out["grad/cos/left__right"], -2.0 / 6.0)
    assert out["grad/cos/left__idle"] == 0.0  # a zero gradient: reported as 0
    assert set(out) == {"grad/norm/left", "grad/norm/right", "grad/norm/idle",
                        "grad/cos/left__right", "grad/cos/left__idle", "grad/cos/right__idle"}


def test_diagnostics_keep_the_graph_for_the_step(model: TinyHPS, x: Tensor) -> None:
    shared = list(model.encoder.parameters())
    losses, _ = model.losses(x)
    out = gradient_diagnostics(losses, shared, ["left", "right"])
    g0 = torch.cat([g.reshape(-1) for g in reference_grads(model, x, 0, shared)])
    g1 = torch.cat([g.reshape(-1) for g in reference_grads(model, x, 1, shared)])
    assert math.isclose(out["grad/norm/left"], float(g0.norm()), rel_tol=1e-5)
    assert math.isclose(out["grad/cos/left__right"],
                        float(g0 @ g1 / (g0.norm() * g1.norm())), rel_tol=1e-5)
    losses.sum().backward()  # the graph is still there


def test_each_task_pass_runs_through_its_own_head_only() -> None:
    """Per-task passes start at each loss, not at ``losses[t]`` (whose stack backward would
    send zero gradients through every other head)."""
    theta = nn.Parameter(torch.ones(3))
    z = theta * 2.0
    calls = [0, 0, 0]
    outputs = []
    for task in range(3):
        out = z * float(task + 1)
        out.register_hook(lambda grad, task=task: calls.__setitem__(task, calls[task] + 1))
        outputs.append(out.sum())
    losses = torch.stack(outputs)
    grads = per_task_gradients(losses, z, [theta], "representation")
    assert calls == [1, 1, 1]
    torch.testing.assert_close(grads.matrix, torch.tensor([[1.0] * 3, [2.0] * 3, [3.0] * 3]))
