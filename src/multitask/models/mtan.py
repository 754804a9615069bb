"""Multi-Task Attention Network, MTAN (Liu, Johns & Davison, "End-to-End Multi-Task Learning
with Attention", CVPR 2019).

One shared backbone computes a global feature pool; each task owns a chain of soft-attention
modules that read the shared maps at every stage and gate them element-wise, so a task selects
the shared features it needs rather than owning a copy of the network. Per stage ``j`` the
backbone gives two maps: ``u_j``, read by the attention, and ``p_j``, the stage output it gates.
The paper takes ``u_j`` after a block's first layer and ``p_j`` after its last; a ResNet
stage is split the same way, before its last residual block. A LeNet stage is a single
convolution, so there ``u_j = p_j``, as for the other torchvision backbones' stages.

The shared representation (``encode``) is every ``u_j`` and ``p_j`` the attention reads, each its
own graph node (:func:`separate_nodes`); ``shared_parameters`` are the backbone's stem and
stages. Everything in ``decode`` (attention, carriers, readout, head) belongs to one task.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from multitask.models.backbones import output_shape
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


def attention_mask(in_channels: int, channels: int) -> nn.Sequential:
    """``a = sigmoid(BN(conv1x1(ReLU(BN(conv1x1(input))))))``: the paper's g then h."""
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, kernel_size=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.Conv2d(channels, channels, kernel_size=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.Sigmoid(),
    )


def split_stage(stage: nn.Module) -> tuple[nn.Module, nn.Module]:
    """``(first part, last part)`` of a stage: ``u = first(x)``, ``p = last(u)``.

    A ResNet stage splits before its last residual block; any other stage (a LeNet
    convolution, an EfficientNet stage) is one piece, and its last part is the identity
    (``u = p``).
    """
    from torchvision.models.resnet import BasicBlock, Bottleneck  # ~1 s to import

    if (isinstance(stage, nn.Sequential) and len(stage) > 1
            and all(isinstance(block, BasicBlock | Bottleneck) for block in stage)):
        return stage[:-1], stage[-1]
    return stage, nn.Identity()


class AttentionPath(nn.Module):
    """One task's attention chain, readout and head over the shared maps ``(u_j, p_j)``.

    ``a_1 = mask_1(u_1)``, ``a_j = mask_j([u_j ; f_{j-1}(â_{j-1})])`` for ``j > 1`` (channel
    concatenation), ``â_j = a_j ⊙ p_j``; ``f_j`` (3x3 conv, BN, ReLU, max-pool to stage ``j+1``'s
    resolution) carries the task's features to the next stage; logits ``= head(readout(â_J))``.
    The paper's code applies one ``f_j`` to every task's features; here each task has its own,
    so that no parameter outside ``encode`` is shared by several tasks.
    """

    def __init__(self, shapes: list[tuple[torch.Size, torch.Size]], readout: nn.Module,
                 readout_features: int, head_hidden: list[int], outputs: int,
                 head_dropout: float = 0.0) -> None:
        super().__init__()
        u_channels = [u[0] for u, _ in shapes]
        p_channels = [p[0] for _, p in shapes]
        self.masks = nn.ModuleList(
            attention_mask(u_channels[j] * (1 if j == 0 else 2), p_channels[j])
            for j in range(len(shapes))
        )
        self.carriers = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(p_channels[j], u_channels[j + 1], kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(u_channels[j + 1]),
                nn.ReLU(),
            )
            for j in range(len(shapes) - 1)
        )
        self.readout = readout
        self.head = make_head(readout_features, head_hidden, outputs, head_dropout)

    def attend(self, maps: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, list[Tensor]]:
        """The task's gated last-stage features ``â_J`` and every stage's mask ``a_j``."""
        masks: list[Tensor] = []
        attended: Tensor | None = None
        for j, (u, p) in enumerate(maps):
            if attended is None:
                mask_input = u
            else:
                carried = F.adaptive_max_pool2d(self.carriers[j - 1](attended), u.shape[-2:])
                mask_input = torch.cat([u, carried], dim=1)
            masks.append(self.masks[j](mask_input))
            attended = masks[-1] * p
        assert attended is not None  # a backbone has at least one stage
        return attended, masks

    def forward(self, maps: list[tuple[Tensor, Tensor]]) -> Tensor:
        return self.head(self.readout(self.attend(maps)[0]))


class MultiTaskAttentionNetwork(MultiTaskModel):
    """Shared backbone stages; per task, soft attention over each stage's maps and a head."""

    name = "mtan"

    def __init__(self, make_backbone: Callable[[], nn.Module], tasks: list[Task],
                 head_hidden: list[int], input_shape: tuple[int, int, int],
                 head_dropout: float = 0.0) -> None:
        super().__init__(tasks)
        backbone = make_backbone()
        self.stem = backbone.stem()
        firsts, lasts = zip(*(split_stage(stage) for stage in backbone.stages()), strict=True)
        self.firsts = nn.ModuleList(firsts)
        self.lasts = nn.ModuleList(lasts)
        # Where each stage's (u, p) sits in the representation tuple; u is p when unsplit.
        self._layout: list[tuple[int, int]] = []
        shapes: list[tuple[torch.Size, torch.Size]] = []
        shape = output_shape(self.stem, input_shape)
        for first, last in zip(self.firsts, self.lasts, strict=True):
            u_shape = output_shape(first, tuple(shape))
            shape = output_shape(last, tuple(u_shape))
            shapes.append((u_shape, shape))
            start = self._layout[-1][1] + 1 if self._layout else 0
            split = not isinstance(last, nn.Identity)
            self._layout.append((start, start + 1) if split else (start, start))
        self.paths = nn.ModuleDict()
        for task in tasks:
            # A fresh backbone per task supplies an independently initialised readout
            # (LeNet's fc layer; ConvNeXt's LayerNorm; a ResNet's parameter-free pooling).
            readout = make_backbone().readout()
            width = output_shape(readout, tuple(shape))[0]
            self.paths[task.name] = AttentionPath(
                shapes, readout, width, head_hidden, task.outputs, head_dropout)

    def encode(self, x: Tensor) -> tuple[Tensor, ...]:
        """``(u_1, p_1, ..., u_J, p_J)``, without duplicates where ``u_j = p_j``."""
        maps: list[Tensor] = []
        x = self.stem(x)
        for first, last in zip(self.firsts, self.lasts, strict=True):
            u = first(x)
            x = last(u)
            maps += [u] if u is x else [u, x]
        return separate_nodes(*maps)

    def stage_maps(self, features: tuple[Tensor, ...]) -> list[tuple[Tensor, Tensor]]:
        """``(u_j, p_j)`` per stage from the representation (the same tensor twice for LeNet)."""
        return [(features[u], features[p]) for u, p in self._layout]

    def decode(self, features: tuple[Tensor, ...]) -> dict[str, Tensor]:
        maps = self.stage_maps(features)
        return {name: path(maps) for name, path in self.paths.items()}

    def attention_masks(self, features: tuple[Tensor, ...]) -> dict[str, list[Tensor]]:
        """Each task's masks ``a_j`` (values in (0, 1)), one per stage, for inspection."""
        maps = self.stage_maps(features)
        return {name: path.attend(maps)[1] for name, path in self.paths.items()}

    def shared_parameters(self) -> list[nn.Parameter]:
        return [*self.stem.parameters(), *self.firsts.parameters(), *self.lasts.parameters()]


@register_architecture(
    "mtan", "multi-task attention network: per-task soft attention over a shared backbone's stages")
def build_mtan(config: ModelConfig, tasks: list[Task], in_channels: int, image_size: int,
               encoder_init: EncoderInit | None = None) -> MultiTaskAttentionNetwork:
    return MultiTaskAttentionNetwork(
        encoder_factory(config, in_channels, image_size, encoder_init),
        tasks, config.head_hidden, (in_channels, image_size, image_size), config.dropout.heads)
