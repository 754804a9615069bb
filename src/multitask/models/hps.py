"""Hard parameter sharing: one shared encoder, one head per task."""

from __future__ import annotations

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


class HardParameterSharing(MultiTaskModel):
    """``x -> encoder(x) = z -> {task: head_task(z)}``; every task reads the same ``z``."""

    name = "hps"

    def __init__(self, encoder: nn.Module, tasks: list[Task], head_hidden: list[int],
                 head_dropout: float = 0.0) -> None:
        super().__init__(tasks)
        self.encoder = encoder
        self.heads = nn.ModuleDict(
            {t.name: make_head(encoder.out_features, head_hidden, t.outputs,
                                  head_dropout) for t in tasks}
        )

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def decode(self, features: Tensor) -> dict[str, Tensor]:
        return {name: head(features) for name, head in self.heads.items()}

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())


@register_architecture("hps", "hard parameter sharing: shared encoder, one head per task")
def build_hps(config: ModelConfig, tasks: list[Task], in_channels: int, image_size: int,
              encoder_init: EncoderInit | None = None) -> HardParameterSharing:
    encoder = encoder_factory(config, in_channels, image_size, encoder_init)()
    return HardParameterSharing(encoder, tasks, config.head_hidden, config.dropout.heads)
