"""Multi-gate Mixture-of-Experts, MMoE (Ma, Zhao, Yi, Chen, Hong & Chi, "Modeling Task
Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts", KDD 2018).

``model.num_experts`` experts are shared by all tasks; each task mixes them with its own softmax
gate over the input, ``f_t(x) = sum_i g_t(x)_i e_i(x)`` with ``g_t(x) = softmax(W_t x)``, and
reads the mixture through its own tower. Tasks that agree can pick the same experts, tasks that
conflict different ones.

Experts here sit on a shared stem, the backbone up to its last stage (for a ResNet: through
layer 3; for LeNet: the first convolution), and each is a fresh copy of the last stage and the
readout, ``model.expert_dim`` wide. Two reasons: the gates must read something every task shares
(``decode`` sees only the shared representation, and the paper's gates read the shared input
embedding), and ``num_experts`` full ResNet-18s would cost ``num_experts`` times the compute.

The shared representation (``encode``) is ``(stem output, expert outputs [B, E, expert_dim])``,
each its own graph node; ``shared_parameters`` are the stem's and the experts'. Gates and towers
are task parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from multitask.models.backbones import LeNetEncoder, output_shape
from multitask.models.base import (
    EncoderInit,
    MultiTaskModel,
    encoder_factory,
    make_head,
    register_architecture,
    separate_nodes,
)
from multitask.tasks import Task

if TYPE_CHECKING:
    from multitask.config import ModelConfig


def make_expert(config: ModelConfig, in_channels: int, image_size: int,
                encoder_init: EncoderInit | None = None) -> nn.Module:
    """A fresh copy of the backbone's last stage and readout, ``config.expert_dim`` features out.

    LeNet's readout is its fc layer, so ``expert_dim`` is that layer's width (50, as in HPS, by
    default); a torchvision backbone's readout is a pooling, so a linear layer and ReLU project
    its features to ``expert_dim``. The copy goes through ``encoder_init`` like every encoder.
    """
    if config.backbone == "lenet":
        lenet = LeNetEncoder(in_channels, image_size, out_features=config.expert_dim,
                             dropout=config.dropout.encoder, width=config.width)
        if encoder_init is not None:
            encoder_init(lenet)
        return nn.Sequential(lenet.stages()[-1], lenet.readout())
    encoder = encoder_factory(config, in_channels, image_size, encoder_init)()
    return nn.Sequential(encoder.stages()[-1], encoder.readout(),
                         nn.Linear(encoder.out_features, config.expert_dim), nn.ReLU())


class MultiGateMixtureOfExperts(MultiTaskModel):
    """Shared stem and experts; per task, a softmax gate over the experts and a tower."""

    name = "mmoe"

    def __init__(self, stem: nn.Module, new_expert: Callable[[], nn.Module], num_experts: int,
                 expert_dim: int, tasks: list[Task], head_hidden: list[int],
                 input_shape: tuple[int, int, int], head_dropout: float = 0.0) -> None:
        super().__init__(tasks)
        self.stem = stem
        self.experts = nn.ModuleList(new_expert() for _ in range(num_experts))
        gate_inputs = output_shape(stem, input_shape).numel()
        self.gates = nn.ModuleDict(
            {t.name: nn.Sequential(nn.Flatten(), nn.Linear(gate_inputs, num_experts))
             for t in tasks})
        self.towers = nn.ModuleDict(
            {t.name: make_head(expert_dim, head_hidden, t.outputs, head_dropout)
             for t in tasks})

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(stem output, expert outputs stacked [B, E, expert_dim])``."""
        shared = self.stem(x)
        experts = torch.stack([expert(shared) for expert in self.experts], dim=1)
        stem_out, expert_out = separate_nodes(shared, experts)
        return stem_out, expert_out

    def gate_weights(self, features: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        """Each task's softmax weights over the experts, ``[B, E]`` (rows sum to 1)."""
        stem_out, _ = features
        return {name: gate(stem_out).softmax(dim=-1) for name, gate in self.gates.items()}

    def decode(self, features: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        _, experts = features
        return {
            name: self.towers[name](torch.einsum("be,bed->bd", weights, experts))
            for name, weights in self.gate_weights(features).items()
        }

    def shared_parameters(self) -> list[nn.Parameter]:
        return [*self.stem.parameters(), *self.experts.parameters()]


@register_architecture(
    "mmoe", "multi-gate mixture of experts: shared experts, one softmax gate and tower per task")
def build_mmoe(config: ModelConfig, tasks: list[Task], in_channels: int, image_size: int,
               encoder_init: EncoderInit | None = None) -> MultiGateMixtureOfExperts:
    backbone = encoder_factory(config, in_channels, image_size, encoder_init)()
    stem = nn.Sequential(backbone.stem(), *backbone.stages()[:-1])
    return MultiGateMixtureOfExperts(
        stem,
        lambda: make_expert(config, in_channels, image_size, encoder_init),
        config.num_experts, config.expert_dim, tasks, config.head_hidden,
        (in_channels, image_size, image_size), config.dropout.heads)
