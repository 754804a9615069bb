"""T single-task LeNet networks that read the same batch, computed as one batched network.

The baselines stage trains one hard-sharing network per task. Two formulations compute all T
members' forward and backward at once, exactly (to float rounding) what the members compute
one by one; with one Adam over their parameters, whose update is elementwise, they take the
same training steps:

- :class:`GroupedLeNet`: one wide LeNet. The first convolution has T x 10 output channels (the
  input is shared, so one convolution serves every member), the second has ``groups=T`` (member
  ``t`` reads only its own 10 channels), and the fully connected layers and heads are batched
  matrix products over weights stacked ``[T, out, in]``. Member ``t``'s convolution filters are
  rows ``t x out .. (t + 1) x out`` of the wide filters. What ``train.ensemble`` trains
  (:mod:`multitask.training.ensemble`).
- :class:`StackedMembers`: torch.func, ``stack_module_state`` + ``functional_call`` +
  ``vmap`` over the members' stacked parameters (input shared, ``in_dims=None``); measured
  about twice the sequential step's cost on the CPU (``benchmarks/bench_ensemble.py``), so
  kept as the reference formulation, not trained with.

Both give every member's logits ``[T, B, classes]``, scored by :func:`member_losses`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from multitask.models.backbones import LeNetEncoder
from multitask.models.base import MultiTaskModel
from multitask.models.hps import HardParameterSharing


def member_parts(network: HardParameterSharing) -> tuple[LeNetEncoder, nn.Sequential]:
    """The LeNet encoder and the one head of a single-task hard-sharing network; an error
    naming what is not so."""
    if not isinstance(network, HardParameterSharing) or len(network.heads) != 1:
        raise ValueError(f"{type(network).__name__} with tasks {network.task_names}: a batched "
                         "ensemble member is a hard-sharing network with one head")
    if not isinstance(network.encoder, LeNetEncoder):
        raise ValueError(f"backbone {getattr(network.encoder, 'name', network.encoder)}: only "
                         "LeNet members have a grouped formulation")
    return network.encoder, next(iter(network.heads.values()))


def member_losses(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Each member's mean cross-entropy, ``[T]``, from its logits ``[T, B, classes]`` and its
    targets ``[T, B]``: what ``F.cross_entropy`` gives member by member."""
    members, batch, classes = logits.shape
    return F.cross_entropy(logits.reshape(members * batch, classes), targets.reshape(-1),
                           reduction="none", label_smoothing=label_smoothing
                           ).view(members, batch).mean(dim=1)


class BatchedLinear(nn.Module):
    """T linear layers applied to their own inputs: ``y[t] = x[t] W[t]^T + b[t]``, with ``x``
    ``[T, B, in]`` and ``W`` ``[T, out, in]``, as one ``baddbmm``."""

    def __init__(self, layers: Sequence[nn.Linear]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.stack([layer.weight.detach() for layer in layers]))
        self.bias = nn.Parameter(torch.stack([layer.bias.detach() for layer in layers]))

    def forward(self, x: Tensor) -> Tensor:
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))

    def split_into(self, layers: Sequence[nn.Linear]) -> None:
        with torch.no_grad():
            for t, layer in enumerate(layers):
                layer.weight.copy_(self.weight[t])
                layer.bias.copy_(self.bias[t])


def _wide_conv(convs: Sequence[nn.Conv2d], groups: int) -> nn.Conv2d:
    """One convolution whose output channels are the members' in order (filters concatenated)."""
    first = convs[0]
    wide = nn.Conv2d(first.in_channels * groups, first.out_channels * len(convs),
                     first.kernel_size, groups=groups)
    with torch.no_grad():
        wide.weight.copy_(torch.cat([conv.weight.detach() for conv in convs]))
        wide.bias.copy_(torch.cat([conv.bias.detach() for conv in convs]))
    return wide.to(first.weight.device)


def _split_conv(wide: nn.Conv2d, convs: Sequence[nn.Conv2d]) -> None:
    with torch.no_grad():
        for conv, weight, bias in zip(convs, wide.weight.chunk(len(convs)),
                                      wide.bias.chunk(len(convs)), strict=True):
            conv.weight.copy_(weight)
            conv.bias.copy_(bias)


class GroupedLeNet(MultiTaskModel):
    """T single-task LeNet hard-sharing networks as one wide network (see the module docstring).

    Built from the members' current weights; :meth:`split_into` writes the trained weights
    back. A multi-task model whose tasks are the members' (so the trainer trains it as it
    trains any): ``encode`` gives every member's features ``[T, B, features]``, :meth:`logits`
    every member's logits ``[T, B, classes]``, ``decode`` the same per task. Its "shared"
    parameters are the members' encoders (what ``model.freeze_encoder_epochs`` freezes and
    ``train.encoder_lr_scale`` scales); no parameter is shared between members. Dropout
    (``model.dropout``) and hidden head layers (``model.head_hidden``) carry over.
    """

    name = "grouped_lenet"

    def __init__(self, networks: Sequence[HardParameterSharing]) -> None:
        parts = [member_parts(network) for network in networks]
        super().__init__([network.tasks[0] for network in networks])
        if len({task.outputs for task in self.tasks}) > 1:
            widths = [t.outputs for t in self.tasks]
            raise ValueError(f"tasks {self.task_names} have heads of {widths} outputs: the "
                             "members of a grouped ensemble need heads of one size")
        encoders = [encoder for encoder, _ in parts]
        self.members = len(networks)
        self.conv1 = _wide_conv([e.features[0] for e in encoders], groups=1)
        self.conv2 = _wide_conv([e.features[3] for e in encoders], groups=self.members)
        dropouts = [m for m in encoders[0].features[6:] if isinstance(m, nn.Dropout)]
        self.encoder_dropout = dropouts[0].p if dropouts else 0.0
        self.fc = BatchedLinear([e.fc[0] for e in encoders])
        # Each head is [Linear, ReLU]* [Dropout] Linear; position i is the same kind in all.
        heads = [head for _, head in parts]
        self.head = nn.ModuleList(
            BatchedLinear([h[i] for h in heads]) if isinstance(layer, nn.Linear) else
            copy.deepcopy(layer) for i, layer in enumerate(heads[0]))

    def encode(self, x: Tensor) -> Tensor:
        h = F.relu(F.max_pool2d(self.conv1(x), 2))
        h = F.relu(F.max_pool2d(self.conv2(h), 2))
        # [B, T x C, H, W] -> member t's flattened C x H x W features, [T, B, C x H x W]
        h = h.reshape(len(x), self.members, -1).transpose(0, 1)
        h = F.dropout(h, self.encoder_dropout, self.training)
        return F.relu(self.fc(h))

    def stacked_logits(self, features: Tensor) -> Tensor:
        """Every member's logits ``[T, B, classes]`` from :meth:`encode`'s features."""
        for layer in self.head:
            features = layer(features)
        return features

    def logits(self, x: Tensor) -> Tensor:
        """Every member's logits ``[T, B, classes]``."""
        return self.stacked_logits(self.encode(x))

    def decode(self, features: Tensor | tuple[Tensor, ...]) -> dict[str, Tensor]:
        assert isinstance(features, Tensor)
        return dict(zip(self.task_names, self.stacked_logits(features).unbind(0), strict=True))

    def shared_parameters(self) -> list[nn.Parameter]:
        return [*self.conv1.parameters(), *self.conv2.parameters(), *self.fc.parameters()]

    def split_into(self, networks: Sequence[HardParameterSharing]) -> None:
        """Copy each member's current weights into ``networks`` (built alike, same order)."""
        parts = [member_parts(network) for network in networks]
        encoders = [encoder for encoder, _ in parts]
        _split_conv(self.conv1, [e.features[0] for e in encoders])
        _split_conv(self.conv2, [e.features[3] for e in encoders])
        self.fc.split_into([e.fc[0] for e in encoders])
        for i, layer in enumerate(self.head):
            if isinstance(layer, BatchedLinear):
                layer.split_into([head[i] for _, head in parts])


class StackedMembers:
    """T networks of one architecture as torch.func stacked parameters, called through
    ``vmap``: ``self(x)`` is every member's logits ``[T, B, classes]`` for a shared ``x``.

    ``parameters`` are the stacked leaves (``[T, ...]`` each) to optimise; dropout draws
    differently per member (``randomness="different"``).
    """

    def __init__(self, networks: Sequence[HardParameterSharing]) -> None:
        members = [nn.Sequential(*member_parts(network)) for network in networks]
        self.parameters, self.buffers = stack_module_state(members)
        template = copy.deepcopy(members[0]).to("meta")

        def member(parameters: dict[str, Tensor], buffers: dict[str, Tensor],
                   x: Tensor) -> Tensor:
            return functional_call(template, (parameters, buffers), (x,))

        self._batched = vmap(member, in_dims=(0, 0, None), randomness="different")

    def __call__(self, x: Tensor) -> Tensor:
        return self._batched(self.parameters, self.buffers, x)
