"""Per-task gradient norms and pairwise cosines, logged every ``train.diagnostics_every`` steps."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from multitask.weighting.gradients import Collective, gramian64, local_task_gradients


def describe_gramian(gramian: Tensor, task_names: Sequence[str]) -> dict[str, float]:
    """``grad/norm/<task>`` and ``grad/cos/<a>__<b>`` (each pair once, 0 if a norm is 0)."""
    if gramian.shape != (len(task_names), len(task_names)):
        raise ValueError(
            f"task_names: {len(task_names)} names for a {tuple(gramian.shape)} Gramian")
    norms = gramian.diagonal().clamp_min(0).sqrt().tolist()
    out = {f"grad/norm/{name}": norm for name, norm in zip(task_names, norms, strict=True)}
    for i, left in enumerate(task_names):
        for j in range(i + 1, len(task_names)):
            scale = norms[i] * norms[j]
            out[f"grad/cos/{left}__{task_names[j]}"] = (
                float(gramian[i, j]) / scale if scale > 0 else 0.0)
    return out


def gradient_diagnostics(losses: Tensor, shared_parameters: Sequence[Tensor],
                         task_names: Sequence[str], collective: Collective | None = None
                         ) -> dict[str, float]:
    """Per-task gradient norms and pairwise cosines w.r.t. the shared parameters (the global
    batch's with a ``collective``).

    Costs T backward passes through the encoder; the graph is kept, so call it before the
    weighting method's ``backward`` of the same step.
    """
    matrix, _ = local_task_gradients(losses, tuple(shared_parameters), (), keep_graph=True)
    if collective is not None and collective.world > 1:
        matrix = collective.mean(matrix)
    return describe_gramian(gramian64(matrix), task_names)
