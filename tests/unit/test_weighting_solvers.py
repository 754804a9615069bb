"""multitask.weighting.solvers on hand-computed problems."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from multitask.weighting.solvers import (
    min_norm_simplex,
    min_norm_two,
    nash_bargaining,
    nonnegative_qp,
)


def gram(*vectors: list[float]) -> Tensor:
    matrix = torch.tensor(vectors, dtype=torch.float64)
    return matrix @ matrix.T


def test_min_norm_two_closed_form() -> None:
    # a = (1, 0), b = (0, 2): γ = (b·b - a·b) / |a - b|² = 4 / 5
    assert min_norm_two(1.0, 0.0, 4.0) == pytest.approx(0.8)
    assert min_norm_two(1.0, 2.0, 4.0) == 1.0  # a = (1, 0), b = (2, 0): a itself is nearest 0
    assert min_norm_two(1.0, 1.0, 1.0) == 0.5  # a = b


@pytest.mark.parametrize(("vectors", "expected"), [
    ([[2, 0, 0], [0, 2, 0], [0, 0, 2]], [1 / 3, 1 / 3, 1 / 3]),  # interior optimum
    ([[1, 0], [0, 1], [-1, -1]], [1 / 3, 1 / 3, 1 / 3]),  # 0 in the hull
    ([[1, 0], [0, 1], [2, 2]], [0.5, 0.5, 0.0]),  # optimum on a face
])
def test_min_norm_simplex_three_tasks(vectors: list[list[float]], expected: list[float]) -> None:
    solution = min_norm_simplex(gram(*vectors))
    assert solution.converged
    torch.testing.assert_close(solution.x, torch.tensor(expected, dtype=torch.float64),
                               atol=1e-4, rtol=0)


def test_min_norm_simplex_reports_an_iteration_cap() -> None:
    gramian = gram([1.0, 0.2, 0.0, 0.3], [-0.4, 1.0, 0.1, 0.0], [0.1, -0.5, 1.0, 0.2],
                   [-0.3, -0.3, -0.2, 1.0])
    solution = min_norm_simplex(gramian, max_iter=1)
    assert not solution.converged and "duality gap" in solution.detail


def test_nonnegative_qp_hand_computed() -> None:
    # ½|s|² + cᵀs with c = (-1, 2): unconstrained minimiser (1, -2); with s >= 0: (1, 0)
    q = torch.eye(2, dtype=torch.float64)
    solution = nonnegative_qp(q, torch.tensor([-1.0, 2.0], dtype=torch.float64))
    assert solution.converged
    torch.testing.assert_close(solution.x, torch.tensor([1.0, 0.0], dtype=torch.float64))


def test_nash_bargaining_diagonal_case() -> None:
    # G = diag(1, 4): α_t² G_tt = 1, so α = (1, 1/2)
    gramian = torch.diag(torch.tensor([1.0, 4.0], dtype=torch.float64))
    solution = nash_bargaining(gramian, torch.ones(2, dtype=torch.float64))
    assert solution.converged
    torch.testing.assert_close(solution.x, torch.tensor([1.0, 0.5], dtype=torch.float64))


def test_nash_bargaining_without_solution_is_not_converged() -> None:
    solution = nash_bargaining(gram([1.0, 0.0], [-1.0, 0.0]), torch.ones(2, dtype=torch.float64))
    assert not solution.converged and "no common descent direction" in solution.detail
