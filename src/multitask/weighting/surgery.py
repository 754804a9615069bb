"""Methods that reshape conflicting task gradients: PCGrad, IMTL-G, Aligned-MTL, GradDrop.

The first three are functions of the Gramian (:mod:`multitask.weighting.gramian`); GradDrop
masks the gradients elementwise at the shared representation, so it works on them directly.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from multitask.weighting.base import StepContext, WeightingMethod, register
from multitask.weighting.gramian import GradientSource, GramianParams, GramianWeighting


@register
class PCGrad(GramianWeighting):
    """PCGrad (Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020).

    For each task i and the other tasks j in a random order: if ``g_i^PC · g_j < 0``, project
    onto the normal plane of ``g_j``: ``g_i^PC <- g_i^PC - (g_i^PC · g_j / |g_j|²) g_j``; the
    update is ``d = Σ_i g_i^PC`` (the paper's sum). Every ``g_i^PC`` stays a combination
    ``Σ_k C[i, k] g_k`` of the original gradients with ``g_i^PC · g_j = (C G)[i, j]``, so the
    surgery runs on the Gramian and ``w = Σ_i C[i]``.
    """

    name = "pcgrad"
    description = "project away conflicting gradient components (Yu et al. 2020)"

    def weigh(self, gramian: Tensor, ctx: StepContext) -> Tensor:
        n = gramian.shape[0]
        orders = [torch.randperm(n).tolist() for _ in range(n)]
        return torch.from_numpy(pcgrad_combinations(gramian.numpy(), orders).sum(0))


def pcgrad_combinations(gramian: np.ndarray, orders: list[list[int]]) -> np.ndarray:
    """``C`` with ``g_i^PC = Σ_k C[i, k] g_k``: task i projected against ``orders[i]`` in turn.

    Small T x T loops, so NumPy rather than torch's per-operation overhead. Tasks with a zero
    gradient have no normal plane and are skipped.
    """
    n = gramian.shape[0]
    combination = np.eye(n)
    for i in range(n):
        for j in orders[i]:
            if j == i or gramian[j, j] <= 0:
                continue
            dot = combination[i] @ gramian[:, j]
            if dot < 0:
                combination[i, j] -= dot / gramian[j, j]
    return combination


class IMTLParams(GramianParams):
    gradients: GradientSource = "representation"


@register
class IMTLG(GramianWeighting):
    """IMTL-G (Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021).

    ``d = Σ_t α_t g_t`` with ``Σ_t α_t = 1`` and equal projections ``d · u_t`` onto every unit
    gradient ``u_t = g_t / |g_t|``: with ``D = [g_1 - g_t]_{t>=2}`` and ``U = [u_1 - u_t]_{t>=2}``
    (rows), ``α_{2:T} = g_1 Uᵀ (D Uᵀ)⁻¹`` and ``α_1 = 1 - Σ α_{2:T}``; like the paper, on the
    gradients w.r.t. the shared representation. Every product is a Gramian entry
    (``g_s · u_t = G[s, t] / |g_t|``). Linearly dependent gradients make ``D Uᵀ`` singular; it
    is then solved by the pseudo-inverse, which equals the inverse whenever that exists. A zero
    gradient counts as norm 1e-15, so its unit vector is 0 and its projection ``d · u_t`` is 0.
    Hence when one task's gradient is exactly zero the shared update is zero: equal projections
    make every ``d · u_t = 0``, and the only ``d`` in the span of the gradients orthogonal to all
    of them is 0 (with linearly independent gradients α is then that task's unit vector). The
    heads still get their gradients.
    """

    name = "imtl"
    description = "update with equal projections on all task gradients, IMTL-G (Liu et al. 2021)"
    gradients = "representation"
    Params = IMTLParams

    def weigh(self, gramian: Tensor, ctx: StepContext) -> Tensor:
        if gramian.shape[0] == 1:
            return torch.ones(1, dtype=torch.float64)
        on_units = gramian / gramian.diagonal().clamp_min(1e-30).sqrt()  # [s, t] = g_s · u_t
        first = on_units[0, 0] - on_units[0, 1:]  # g_1 · (u_1 - u_t)
        # [s, t] = (g_1 - g_s) · (u_1 - u_t), for s, t >= 2
        system = first.unsqueeze(0) - (on_units[1:, :1] - on_units[1:, 1:])
        rest = first @ torch.linalg.pinv(system)
        return torch.cat([1.0 - rest.sum().reshape(1), rest])


@register
class AlignedMTL(GramianWeighting):
    """Aligned-MTL (Senushkin et al., "Independent Component Alignment for Multi-Task
    Learning", CVPR 2023).

    Makes the gradient system perfectly conditioned: with ``G = V Λ Vᵀ`` (eigenvalues above
    ``λ_max · T · eps`` kept, as the authors do), ``B = √λ_min V Λ^(-1/2) Vᵀ``; the aligned
    gradients ``Jᵀ B`` share one singular value ``√λ_min``, and the update is their sum
    (the authors' code), ``w = B 1``. All-zero gradients give ``w = 0``.
    """

    name = "alignedmtl"
    description = "align the task gradients to equal singular values (Senushkin et al. 2023)"

    def weigh(self, gramian: Tensor, ctx: StepContext) -> Tensor:
        return aligned_balance(gramian).sum(1)


def aligned_balance(gramian: Tensor) -> Tensor:
    """Aligned-MTL's ``B`` (T x T): the aligned gradients ``B J`` have Gramian ``λ_min Π``.

    ``Π`` projects onto the eigenvectors of G that are kept; all-zero gradients give ``B = 0``.
    """
    n = gramian.shape[0]
    eigenvalues, vectors = torch.linalg.eigh(gramian)
    keep = eigenvalues > eigenvalues.max() * n * torch.finfo(torch.float32).eps
    if not bool(keep.any()):
        return torch.zeros(n, n, dtype=torch.float64)
    kept, basis = eigenvalues[keep], vectors[:, keep]
    return kept.min().sqrt() * (basis / kept.sqrt()) @ basis.T


@register
class GradDrop(WeightingMethod):
    """GradDrop (Chen et al., "Just Pick a Sign: Optimizing Deep Multitask Models with Gradient
    Sign Dropout", NeurIPS 2020).

    At each element of the shared representation A, with ``∇_t`` task t's gradient and
    ``S_t = Σ_batch sign(A) ∘ ∇_t``: the sign purity ``P = ½ (1 + Σ_t S_t / Σ_t |S_t|)``; with
    ``U ~ Uniform(0, 1)`` per element, task t's gradient is kept where ``P > U`` and ``S_t > 0``
    or ``P < U`` and ``S_t < 0``; the encoder receives ``Σ_t M_t ∘ ∇_t`` (Algorithm 1 with its
    batch-summed purity, identity ``f``, no leak). Heads get their plain gradients. The returned
    weights are the fraction of representation elements at which each task's gradient was kept.
    """

    name = "graddrop"
    description = "randomly keep one gradient sign per representation element (Chen et al. 2020)"
    gradients = "representation"

    def backward(self, ctx: StepContext) -> Tensor:
        grads = ctx.per_task_gradients("representation")
        combined, kept = [], []
        for feature, gradient in zip(grads.values, grads.unflatten(grads.matrix), strict=True):
            signed = (gradient * feature.sign()).sum(dim=1)  # [T, ...]: batch summed
            purity = 0.5 * (1.0 + signed.sum(0) / signed.abs().sum(0).clamp_min(1e-30))
            draw = torch.rand(purity.shape, device=purity.device)
            mask = ((purity > draw) & (signed > 0)) | ((purity < draw) & (signed < 0))
            combined.append((gradient * mask.unsqueeze(1)).sum(0).reshape(-1))
            kept.append(mask.reshape(self.num_tasks, -1))
        grads.apply(torch.cat(combined))
        return torch.cat(kept, dim=1).float().mean(1)
