"""Branched hard sharing: the backbone's first stages shared, the rest one copy per task.

Where a network branches decides what the tasks share (Vandenhende, Georgoulis, De Brabandere
& Van Gool, "Branched Multi-Task Networks: Deciding What Layers To Share", BMVC 2020).
``model.shared_stages: k`` shares the stem and the first ``k`` stages of ``model.backbone``;
each task gets its own copy of the later stages and of the readout, then its head. With
``k`` = every stage (``null``, the default) only the readout is per task: for LeNet the two
convolutional stages are shared and each task has its own fully connected layer (500 -> 50,
most of LeNet's parameters), so the tasks share the filters that find an item wherever it
lies while each keeps the capacity that reads its own item out. For a ResNet, whose readout
(global pooling) has no parameters, ``k`` = 3 gives each task its own last stage.

The shared representation (``encode``) is the trunk's output: feature maps ``[B, C, H, W]``;
``decode`` runs each task's branch and head on them, so every branch parameter is a task
parameter and weighting methods that differentiate the representation apply.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import Tensor, nn

from multitask.models.base import (
    EncoderInit,
    MultiTaskModel,
    encoder_factory,
    make_head,
    register_architecture,
)
from multitask.tasks import Task

if TYPE_CHECKING:
    from multitask.config import ModelConfig


class BranchedNetwork(MultiTaskModel):
    """Stem and the first ``shared_stages`` stages shared; per task, the remaining stages, the
    readout and the head."""

    name = "branched"

    def __init__(self, make_backbone: Callable[[], nn.Module], tasks: list[Task],
                 head_hidden: list[int], head_dropout: float = 0.0,
                 shared_stages: int | None = None, backbone_name: str = "") -> None:
        super().__init__(tasks)
        trunk = make_backbone()
        stages = len(trunk.stages())
        shared = stages if shared_stages is None else shared_stages
        if not 1 <= shared <= stages:
            raise ValueError(
                f"params.yaml: model.shared_stages: {shared_stages}: {backbone_name or 'the'} "
                f"backbone has {stages} stages; share 1 to {stages} of them (null: all, only "
                "the readout per task)")
        self.trunk = nn.Sequential(trunk.stem(), *trunk.stages()[:shared])
        branches = {}
        for task in tasks:  # each from a backbone of its own: its own initial weights
            own = make_backbone()
            branches[task.name] = nn.Sequential(*own.stages()[shared:], own.readout())
        self.branches = nn.ModuleDict(branches)
        width = trunk.out_features
        self.heads = nn.ModuleDict(
            {t.name: make_head(width, head_hidden, t.outputs, head_dropout) for t in tasks})

    def encode(self, x: Tensor) -> Tensor:
        """The shared trunk's feature maps."""
        return self.trunk(x)

    def decode(self, features: Tensor) -> dict[str, Tensor]:
        return {name: head(self.branches[name](features)) for name, head in self.heads.items()}

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.trunk.parameters())


@register_architecture(
    "branched", "hard sharing of the first model.shared_stages backbone stages (default all), "
                "the later stages and the readout one copy per task")
def build_branched(config: ModelConfig, tasks: list[Task], in_channels: int, image_size: int,
                   encoder_init: EncoderInit | None = None) -> BranchedNetwork:
    return BranchedNetwork(
        encoder_factory(config, in_channels, image_size, encoder_init), tasks,
        config.head_hidden, config.dropout.heads, config.shared_stages, config.backbone)
