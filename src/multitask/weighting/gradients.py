"""Per-task gradients, computed once per step, and the write-back of a combined update.

The one place that differentiates each task's loss on its own. Two kinds (``wrt``):

* ``"representation"``: w.r.t. the shared representation (``model.encode``'s output, a tensor or
  a tuple of tensors). ``T`` backward passes through the heads only, which are cheap; row ``t``
  of the ``T x D`` matrix is task ``t``'s gradient flattened over batch and tensors.
* ``"parameters"``: w.r.t. the shared parameters, ``T x P``. ``T`` backward passes through the
  encoder, the graph released after the last.

Each pass also yields its task's gradients of the task-specific parameters (heads, attention,
gates), found as TorchJD's ``mtl_backward`` finds them: the leaves between the losses and the
representation. :meth:`TaskGradients.apply` writes a combined update back: for parameters by
setting ``.grad``, for the representation by one ``backward`` through the encoder; the
task-specific parameters get ``sum_t w_t grad_t`` (``w_t = 1`` unless a method weights them).

Why a loop and not ``torch.autograd.grad(losses, inputs, grad_outputs=eye(T),
is_grads_batched=True)``: on torch 2.14 (CPU) the vmapped backward has no batching rule for
``convolution_backward`` and ``max_pool2d_with_indices_backward`` and falls back to slicing and
``cat``; for LeNet HPS (batch 256, T = 10) it took 129 ms against 90 ms for T plain passes.
The exact per-task gradients of P parameters need T backward passes whatever the batching;
methods that only need the Gramian ``J Jᵀ`` avoid a further pass by using ``wᵀ J`` directly.
Sharing the passes' work was measured as well: one sweep of the encoder's graph carrying all T
cotangents (every task's kernel gradients from one convolution call with the tasks' output
gradients stacked as channels, T x B batches for the rest) gave the same gradients but took
2.2x as long as the T passes (LeNet, T = 10, batch 256, one thread): oneDNN's kernels are
already efficient at batch 256 and its stacked-channel weight gradient is slower than ten
small ones. The loop is what a CPU runs best; the benchmark's ``parameter_gradients`` row is
that floor.

Data-parallel training (several processes, each with a shard of the global batch) plugs in a
:class:`Collective`. Every quantity a method decides on is then the global batch's: parameter
gradients are averaged over the processes, representation gradients (and the representation)
are gathered in the global batch's order, so a method sees exactly what it would see in one
process; the update is handed back as each process's share, which the trainer averages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor
from torch.autograd.graph import GradientEdge

Features = Tensor | tuple[Tensor, ...]
Wrt = Literal["representation", "parameters"]


class Collective(Protocol):
    """The operations over the training processes that per-task gradients need.

    Each process holds a shard of the global batch: consecutive rows, in process order.
    """

    world: int  # number of processes

    def mean(self, tensor: Tensor) -> Tensor:
        """The element-wise average of ``tensor`` over the processes (a new tensor)."""
        ...

    def gather(self, tensor: Tensor, dim: int) -> tuple[Tensor, slice]:
        """Every process's ``tensor`` concatenated along ``dim`` in process order, and the
        slice of that dimension that holds this process's part."""
        ...


def as_tuple(features: Features) -> tuple[Tensor, ...]:
    return features if isinstance(features, tuple) else (features,)


def decoder_leaves(losses: Tensor, features: Features) -> list[Tensor]:
    """The leaf tensors ``losses`` reach without passing through the representation.

    Walks the autograd graph from the losses and stops at each representation tensor's node, so
    what it collects (``AccumulateGrad`` nodes' variables) are the parameters of ``decode``.
    """
    stops = {f.grad_fn for f in as_tuple(features) if f.grad_fn is not None}
    representation = {id(f) for f in as_tuple(features)}
    found: dict[int, Tensor] = {}
    seen = set()
    pending = [losses.grad_fn]
    while pending:
        node = pending.pop()
        if node is None or node in stops or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None:
            if id(variable) not in representation:
                found.setdefault(id(variable), variable)
            continue
        pending.extend(next_node for next_node, _ in node.next_functions)
    return list(found.values())


def task_outputs(losses: Tensor) -> list[Tensor | GradientEdge]:
    """Where each task's backward pass starts: its own loss's graph when ``losses`` is a stack.

    ``losses[t]`` would do, but the backward of ``torch.stack`` hands every other task's branch
    a zero gradient, which autograd still propagates: each per-task pass would run through all
    T heads (T² head backwards a step). The edges into the stack reach task t's graph alone.
    """
    node = losses.grad_fn
    if (node is not None and type(node).__name__ == "StackBackward0" and losses.dim() == 1
            and len(node.next_functions) == len(losses)):
        return [GradientEdge(edge, index) if edge is not None else losses[task]
                for task, (edge, index) in enumerate(node.next_functions)]
    return list(losses)


def local_task_gradients(losses: Tensor, targets: Sequence[Tensor], extra: Sequence[Tensor],
              keep_graph: bool, scales: Tensor | None = None
              ) -> tuple[Tensor, list[tuple[Tensor | None, ...]]]:
    """Row t: ``scales[t] · d losses[t] / d targets`` flattened (float32); the ``extra`` grads.

    Computed on this process's data alone (see :func:`per_task_gradients` for the global ones).
    """
    if losses.dim() != 1 or len(losses) == 0:
        raise ValueError(
            f"losses: expected one loss per task, shape [T], got {tuple(losses.shape)}")
    inputs = (*targets, *extra)
    width = sum(t.numel() for t in targets)
    matrix = torch.empty(len(losses), width, device=losses.device, dtype=torch.float32)
    seeds = torch.ones_like(losses) if scales is None else scales.detach().to(losses)
    extra_grads = []
    for task, output in enumerate(task_outputs(losses)):
        retain = keep_graph or task < len(losses) - 1
        grads = torch.autograd.grad([output], inputs, [seeds[task]], retain_graph=retain,
                                    allow_unused=True)
        start = 0
        for target, grad in zip(targets, grads, strict=False):
            row = matrix[task, start:start + target.numel()]
            if grad is None:
                row.zero_()
            else:
                row.copy_(grad.reshape(-1))
            start += target.numel()
        extra_grads.append(grads[len(targets):])
    return matrix, extra_grads


def gramian64(matrix: Tensor, block: int = 1 << 20) -> Tensor:
    """``G = J Jᵀ`` of the ``T x D`` gradients ``matrix``: float64, on the CPU, exactly symmetric.

    Accumulated over blocks of ``block`` columns so that no float64 copy of the whole of J is made
    (J can hold every shared parameter). On float32 gradients 1% apart (D = 1000, T <= 10) the
    float32 product moved IMTL-G's weights by up to 0.6% and Aligned-MTL's and MGDA's by 0.09%;
    at 0.1% apart IMTL-G's by 66%.
    """
    rows = matrix.shape[0]
    gramian = torch.zeros(rows, rows, dtype=torch.float64, device=matrix.device)
    for columns in matrix.split(block, dim=1):
        columns = columns.to(torch.float64)
        gramian += columns @ columns.T
    return ((gramian + gramian.T) / 2).cpu()


@dataclass
class TaskGradients:
    """One step's per-task gradients: ``matrix[t]`` is task ``t``'s, w.r.t. ``targets``.

    With a :class:`Collective`, ``matrix`` and ``values`` are the global batch's (identical in
    every process) while ``targets`` stay this process's tensors; ``rows`` is this process's
    part of the global batch (representation only).
    """

    wrt: Wrt
    matrix: Tensor  # [T, D] float32: D = representation elements or shared parameters
    targets: tuple[Tensor, ...]  # the representation tensors or the shared parameters
    task_parameters: list[Tensor]
    task_gradients: list[tuple[Tensor | None, ...]]  # [task][task parameter], this process's
    values: tuple[Tensor, ...] = ()  # the targets' detached values (global batch); () = targets
    world: int = 1
    rows: slice | None = None  # this process's rows of the global batch (representation)

    def __post_init__(self) -> None:
        if not self.values:
            self.values = tuple(t.detach() for t in self.targets)

    def gramian(self) -> Tensor:
        """``G = J Jᵀ`` (``G[i, j] = g_i · g_j``), float64 on the CPU for the solvers."""
        return gramian64(self.matrix)

    def unflatten(self, flat: Tensor) -> list[Tensor]:
        """``[..., D]`` -> one ``[..., *value.shape]`` piece per target (global shapes)."""
        lead = flat.shape[:-1]
        pieces = flat.split([v.numel() for v in self.values], dim=-1)
        return [p.reshape(*lead, *v.shape) for p, v in zip(pieces, self.values, strict=True)]

    def apply(self, combined: Tensor, head_weights: Tensor | None = None) -> None:
        """Write the update: ``combined`` ([D]) for the shared part, and for each task-specific
        parameter ``sum_t head_weights[t] * grad_t`` (the plain sum when ``None``).

        Gradients accumulate into ``.grad`` as ``backward`` does. With several processes each
        writes its share, scaled so that the trainer's average over processes is the update.
        """
        pieces = self.unflatten(combined)
        if self.wrt == "representation":
            if self.rows is not None:  # this process's rows; the average divides by world
                pieces = [p[self.rows] * self.world for p in pieces]
            torch.autograd.backward(
                self.targets, [p.to(t.dtype) for p, t in zip(pieces, self.targets, strict=True)])
        else:
            for param, piece in zip(self.targets, pieces, strict=True):
                _accumulate(param, piece.to(param.dtype))
        for index, param in enumerate(self.task_parameters):
            total: Tensor | None = None
            for task, grads in enumerate(self.task_gradients):
                grad = grads[index]
                if grad is None:
                    continue
                if head_weights is not None:
                    grad = grad * head_weights[task].to(grad.dtype)
                total = grad if total is None else total + grad
            if total is not None:
                _accumulate(param, total)


def _accumulate(param: Tensor, grad: Tensor) -> None:
    if param.grad is None:
        param.grad = grad.detach().clone()
    else:
        param.grad.add_(grad.detach())


def _gather_rows(matrix: Tensor, targets: Sequence[Tensor], collective: Collective
                 ) -> tuple[Tensor, tuple[Tensor, ...], slice]:
    """This process's representation gradients -> the global batch's, and the global values.

    Row ``t`` here is ``world ×`` the gradient of the global loss (each process's loss is its
    share scaled by ``world``, see the trainer), hence the division.
    """
    rows_here = slice(None)
    pieces, values = [], []
    start = 0
    for target in targets:
        width = target.numel()
        local = matrix[:, start:start + width].reshape(len(matrix), *target.shape)
        # one gather for both: rows 0..T-1 the tasks' gradients, row T the representation
        both = torch.cat([local, target.detach().to(local.dtype).unsqueeze(0)])
        gathered, rows_here = collective.gather(both, dim=1)
        pieces.append(gathered[:-1].reshape(len(matrix), -1) / collective.world)
        values.append(gathered[-1].to(target.dtype))
        start += width
    return torch.cat(pieces, dim=1), tuple(values), rows_here


def per_task_gradients(losses: Tensor, features: Features, shared_parameters: Sequence[Tensor],
                       wrt: Wrt, scales: Tensor | None = None,
                       collective: Collective | None = None) -> TaskGradients:
    """Each task's gradient of ``losses[t]`` w.r.t. the representation or the shared parameters.

    ``scales``: rows (and head gradients) multiplied by ``scales[t]``, as if differentiating
    ``f_t(L_t)`` with ``f_t' = scales[t]`` (DB-MTL's log losses) without a graph for ``f``.
    The graph is kept for :meth:`TaskGradients.apply` with ``wrt="representation"`` and released
    with ``"parameters"`` (the update is then written to ``.grad`` directly). ``collective``:
    several processes share the batch; the rows returned are the global batch's.
    """
    features = as_tuple(features)
    shared_ids = {id(p) for p in shared_parameters}
    leaves = decoder_leaves(losses, features)
    task_parameters = [p for p in leaves if id(p) not in shared_ids and p.requires_grad]
    if wrt == "representation":
        if len(task_parameters) != len([p for p in leaves if p.requires_grad]):
            raise ValueError(
                "gradients: representation: the model's decode uses shared parameters, so "
                "gradients w.r.t. the representation miss part of the shared update; set "
                "train.method_params.<method>.gradients: parameters"
            )
        targets = features
    elif wrt == "parameters":
        targets = tuple(shared_parameters)
    else:
        raise ValueError(f"wrt: expected 'representation' or 'parameters', got {wrt!r}")
    matrix, task_gradients = local_task_gradients(losses, targets, task_parameters,
                                       keep_graph=wrt == "representation", scales=scales)
    if collective is None or collective.world == 1:
        return TaskGradients(wrt, matrix, targets, task_parameters, task_gradients)
    if wrt == "parameters":
        return TaskGradients(wrt, collective.mean(matrix), targets, task_parameters,
                             task_gradients, world=collective.world)
    matrix, values, rows = _gather_rows(matrix, targets, collective)
    return TaskGradients(wrt, matrix, targets, task_parameters, task_gradients, values=values,
                         world=collective.world, rows=rows)
