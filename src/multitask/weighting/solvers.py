"""Small solvers on the T x T Gramian ``G = J Jᵀ`` of the per-task gradients.

Each returns a :class:`Solution` that says whether it converged; none substitutes another answer.
What a method does when its solver fails is its own documented decision (see
:class:`multitask.weighting.gramian.GramianWeighting`). They take and return float64 tensors and
iterate in NumPy: T is a handful, and torch's per-operation overhead would dominate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


class SolverError(RuntimeError):
    """A weighting method's solver failed and ``on_solver_failure`` is ``raise``."""


def cpu64(tensor: Tensor | None) -> Tensor | None:
    """``tensor`` as float64 on the CPU (solver inputs, weighting state from a checkpoint)."""
    return None if tensor is None else tensor.to("cpu", torch.float64)


@dataclass(frozen=True)
class Solution:
    x: Tensor
    converged: bool
    iterations: int
    detail: str = ""


def min_norm_two(g11: float, g12: float, g22: float) -> float:
    """``γ`` in [0, 1] minimising ``|γ a + (1 - γ) b|²`` given ``a·a``, ``a·b``, ``b·b``.

    ``γ = (b·b - a·b) / |a - b|²`` clipped to [0, 1] (Sener & Koltun 2018, Algorithm 1); when
    ``a = b`` every ``γ`` gives the same point and 1/2 is returned.
    """
    distance = g11 + g22 - 2.0 * g12
    if distance <= 1e-12 * max(g11, g22, 1e-300):
        return 0.5
    return min(1.0, max(0.0, (g22 - g12) / distance))


def min_norm_simplex(gramian: Tensor, max_iter: int = 250, tol: float = 1e-8) -> Solution:
    """``argmin_w wᵀ G w`` over the simplex: the min-norm point of the gradients' convex hull.

    T = 2: the closed form of :func:`min_norm_two`. T > 2: Wolfe's algorithm ("Finding the
    nearest point in a polytope", Math. Programming 1976), an active-set method over the faces of
    the simplex that is exact after finitely many steps. It keeps a support S of affinely
    independent gradients and ``w`` on it. A major step adds the vertex ``j = argmin_t (G w)_t``
    when ``(G w)_j < wᵀGw``; a minor step moves ``w`` towards the minimiser ``v`` of the norm over
    the affine hull of S (``[G_SS 1; 1ᵀ 0] [v; μ] = [0; 1]``), as far as ``w >= 0`` allows,
    dropping the vertex that reaches 0, until ``v > 0``. Optimal when the duality gap
    ``wᵀGw - min_t (G w)_t`` (an upper bound on ``|d|² - |d*|²``, so ``|d - d*|² <= gap``) is at
    most ``tol · wᵀGw`` or within rounding (``16 T ε`` with G scaled to a largest diagonal of 1,
    which also covers ``d* = 0``). ``max_iter`` caps the minor steps (each one T' x T' solve;
    about T are needed). The Frank-Wolfe solver with away steps used before needed up to 7,300
    iterations on strongly conflicting gradients (T = 10) and stopped at 250 up to 110% of |d*|
    away from d*.
    """
    g = gramian.to(torch.float64).numpy()
    n = g.shape[0]
    scale = float(g.diagonal().max()) if n else 0.0
    if n == 1 or scale <= 0.0:  # one task, or all gradients zero: any w is optimal
        return _solution(np.full(n, 1.0 / n), True, 0)
    g = g / scale
    if n == 2:
        gamma = min_norm_two(g[0, 0], g[0, 1], g[1, 1])
        return _solution(np.array([gamma, 1.0 - gamma]), True, 0)
    rounding = 16 * n * float(np.finfo(np.float64).eps)
    start = int(g.diagonal().argmin())
    support = [start]
    w = np.zeros(n)
    w[start] = 1.0
    iterations = 0
    while True:
        gw = g @ w
        value = float(w @ gw)
        entering = int(gw.argmin())
        gap = value - float(gw[entering])
        if gap <= max(tol * value, rounding):
            return _solution(w, True, iterations)
        if iterations >= max_iter:
            return _solution(w, False, iterations, f"duality gap {gap:.2e} > {tol:g} · |d|² "
                             f"after {max_iter} iterations")
        if entering in support:  # only rounding can make a support vertex improve on w
            return _solution(w, False, iterations, f"duality gap {gap:.2e} stuck on the active "
                             "set: gradients too nearly dependent for float64")
        support.append(entering)
        while iterations < max_iter:
            iterations += 1
            try:
                v = _affine_minimiser(g, support)
            except np.linalg.LinAlgError:
                return _solution(w, False, iterations, f"singular affine system on tasks "
                                 f"{sorted(support)}: gradients affinely dependent in float64")
            current = w[support]
            if (v > 0).all():
                w[:] = 0.0
                w[support] = v
                break
            blocked = np.flatnonzero(v <= 0)
            # current >= 0 >= v here; 0/0 (a vertex just added, v = 0) blocks at once
            ratios = current[blocked] / np.maximum(current[blocked] - v[blocked], 1e-300)
            current = current + ratios.min() * (v - current)
            current[blocked[ratios.argmin()]] = 0.0  # exactly, whatever the rounding
            w[:] = 0.0
            support = [task for task, weight in zip(support, current, strict=True) if weight > 0]
            w[support] = current[current > 0]


def _affine_minimiser(g: np.ndarray, support: list[int]) -> np.ndarray:
    """The weights (summing to 1) of the min-norm point of the affine hull of ``support``."""
    n = len(support)
    system = np.ones((n + 1, n + 1))
    system[:n, :n] = g[np.ix_(support, support)]
    system[n, n] = 0.0
    rhs = np.zeros(n + 1)
    rhs[n] = 1.0
    return np.linalg.solve(system, rhs)[:n]


def nonnegative_qp(q: Tensor, c: Tensor, max_iter: int = 100, tol: float = 1e-12) -> Solution:
    """``argmin_{s >= 0} ½ sᵀ Q s + cᵀ s`` for positive definite ``Q``: an active-set method.

    Lawson & Hanson's NNLS algorithm written for a quadratic: free a variable whose constraint
    blocks descent, solve the equality-constrained problem on the free set, step back to the
    boundary where a free variable would turn negative. Exact after finitely many steps; a
    ``max_iter`` cap (counting inner steps) guards against cycling.
    """
    qn, cn = q.to(torch.float64).numpy(), c.to(torch.float64).numpy()
    n = len(cn)
    s = np.zeros(n)
    free = np.zeros(n, dtype=bool)
    iterations = 0
    while iterations < max_iter:
        candidate = np.where(free, -np.inf, -(qn @ s + cn))
        j = int(candidate.argmax())
        if candidate[j] <= tol:
            return _solution(s, True, iterations)
        free[j] = True
        while iterations < max_iter and free.any():
            iterations += 1
            index = np.flatnonzero(free)
            z = np.zeros(n)
            z[index] = np.linalg.solve(qn[np.ix_(index, index)], -cn[index])
            if (z[index] > 0).all():
                s = z
                break
            blocking = free & (z <= 0)
            gap = s[blocking] - z[blocking]
            ratio = np.where(gap > 0, s[blocking] / np.maximum(gap, 1e-300), 0.0)
            s = s + ratio.min() * (z - s)
            free &= s > tol
            s = np.where(free, s, 0.0)
    return _solution(s, False, iterations, f"active set not settled after {max_iter} steps")


def nash_bargaining(gramian: Tensor, start: Tensor, max_iter: int = 50, tol: float = 1e-10,
                    bound: float = 1e6) -> Solution:
    """``α > 0`` with ``(G α)_i = 1 / α_i`` for every i (Navon et al. 2022, eq. 2).

    These are the stationarity conditions of the convex ``F(α) = ½ αᵀGα - Σ_i log α_i``;
    damped Newton steps (Hessian ``G + diag(1/α²)``, backtracking that keeps ``α > 0``) minimise
    it from ``start`` moved to the minimum of F on its ray (so a warm start from weights of
    another scale costs nothing), stopping when the Newton decrement ``λ²/2 <= tol``. There
    Newton converges quadratically, so up to two more full steps, each taken while the decrement
    still falls, bring ``α`` to rounding level (at ``tol`` alone ``α_i (Gα)_i`` was off 1 by up to
    1e-5 at T = 10). When 0 lies in the convex hull of the gradients (for instance two opposite
    gradients, or a zero gradient), F is unbounded below, no solution exists and ``α`` grows past
    ``bound``: reported as not converged.
    """
    g = gramian.to(torch.float64).numpy()
    alpha = start.to(torch.float64).numpy().copy()
    curvature = float(alpha @ g @ alpha)
    if curvature > 0:  # the best start on its ray: F(sα) is least at s² = T / αᵀGα
        alpha *= np.sqrt(len(alpha) / curvature)

    def objective(a: np.ndarray) -> float:
        return float(0.5 * a @ g @ a - np.log(a).sum())

    def newton(a: np.ndarray) -> tuple[np.ndarray, float]:  # the step and the decrement λ²
        gradient = g @ a - 1.0 / a
        step = np.linalg.solve(g + np.diag(1.0 / a**2), -gradient)
        return step, float(-(gradient @ step))

    decrement = np.inf
    for iteration in range(1, max_iter + 1):
        step, decrement = newton(alpha)
        if decrement / 2.0 <= tol:
            for _ in range(2):
                polished = alpha + step
                if not (polished > 0).all():
                    break
                polished_step, polished_decrement = newton(polished)
                if not polished_decrement < decrement:
                    break
                alpha, step, decrement = polished, polished_step, polished_decrement
            return _solution(alpha, True, iteration)
        shrinking = step < 0
        t = 1.0
        if shrinking.any():  # stay inside α > 0
            t = min(1.0, 0.99 * float((-alpha[shrinking] / step[shrinking]).min()))
        current = objective(alpha)
        while objective(alpha + t * step) > current - 0.25 * t * decrement:
            t *= 0.5
            if t < 1e-12:
                return _solution(alpha, False, iteration, "line search stalled")
        alpha = alpha + t * step
        if not np.isfinite(alpha).all() or alpha.max() > bound:
            return _solution(alpha, False, iteration,
                             f"weights diverge (max {alpha.max():.3g}): no α > 0 solves "
                             "Gα = 1/α, the task gradients have no common descent direction")
    return _solution(alpha, False, max_iter, f"Newton decrement {decrement:.2e} > {tol:g} after "
                     f"{max_iter} iterations")


def _solution(x: np.ndarray, converged: bool, iterations: int, detail: str = "") -> Solution:
    return Solution(torch.from_numpy(np.asarray(x, dtype=np.float64)), converged, iterations,
                    detail)
