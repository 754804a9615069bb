"""Cross-stitch networks (Misra, Shrivastava, Gupta & Hebert, "Cross-stitch Networks for
Multi-task Learning", CVPR 2016).

One backbone column per task; after each stage, a cross-stitch unit replaces every column's
features by a learned linear combination of all columns' features, so the network learns how
much to share at each depth instead of fixing it. Units sit after each LeNet stage and after its
fc layer (the paper's placement: after pooling and fully connected layers) and after each
stage of a torchvision backbone (the last one joined with its readout when that has no
parameters, like a ResNet's pooling). ``model.stitch: linear`` widens each unit from one weight
per pair of columns to a channels x channels matrix (:class:`LinearStitchUnit`), and the last
unit to a matrix per task over all columns' features.

The shared representation (``encode``) is every column's output before the last unit, stacked
``[B, T, D]``: with the last unit each task reads all columns, so every column parameter and
every inner unit is shared. The last unit's rows are task parameters: row ``t`` mixes the
columns for task ``t`` only.
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
)
from multitask.tasks import Task

if TYPE_CHECKING:
    from multitask.config import ModelConfig

SELF_WEIGHT = 0.9  # the paper's initialisation: 0.9 for a column's own features
STITCHES = ("scalar", "linear")  # model.stitch


def stitch_init(num_tasks: int, self_weight: float = SELF_WEIGHT) -> Tensor:
    """``T x T`` mixing near identity: ``self_weight`` on the diagonal, rows summing to 1."""
    weight = torch.full((num_tasks, num_tasks), (1.0 - self_weight) / (num_tasks - 1))
    weight.fill_diagonal_(self_weight)
    return weight


class CrossStitchUnit(nn.Module):
    """``x'_t = sum_s alpha[t, s] x_s`` for every task ``t``: one learned ``T x T`` matrix.

    One scalar per pair of columns, shared over channels and positions (the paper also tries
    one per channel). The paper raises these parameters' learning rate by 10^2-10^3; here they
    use the optimiser's, like every other parameter.
    """

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(stitch_init(num_tasks))

    def forward(self, columns: list[Tensor]) -> list[Tensor]:
        mixed = torch.einsum("ts,s...->t...", self.weight, torch.stack(columns))
        return list(mixed.unbind(0))


class LinearStitchUnit(nn.Module):
    """``x'_t = sum_s A[t, s] x_s`` with ``A[t, s]`` a ``C x C`` matrix (``model.stitch:
    linear``): every output channel of column ``t`` a learned combination of every channel of
    every column, one ``T·C x T·C`` matrix over the columns stacked along the channels (a 1x1
    convolution on feature maps). Starts at the scalar unit's ``alpha[t, s]`` times the
    identity, so at initialisation it computes what the scalar unit computes. The linear
    fusion of NDDR-CNN (Gao et al., CVPR 2019) without its normalisation and ReLU.
    """

    def __init__(self, num_tasks: int, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.weight = nn.Parameter(torch.kron(stitch_init(num_tasks), torch.eye(channels)))

    def forward(self, columns: list[Tensor]) -> list[Tensor]:
        stacked = torch.cat(columns, dim=1)
        if stacked.dim() == 4:
            mixed = F.conv2d(stacked, self.weight[:, :, None, None])
        else:
            mixed = stacked @ self.weight.T
        return list(mixed.split(self.channels, dim=1))


def column_segments(backbone: nn.Module) -> list[nn.Module]:
    """The backbone cut where cross-stitch units go: after each stage and after the readout.

    The stem joins the first stage; a readout without parameters (a ResNet's pooling) joins
    the last stage, as a unit on either side of a pooling would mix the same features.
    """
    segments = [*backbone.stages(), backbone.readout()]
    segments[0] = nn.Sequential(backbone.stem(), segments[0])
    if not any(True for _ in segments[-1].parameters()):
        segments[-2:] = [nn.Sequential(segments[-2], segments[-1])]
    return segments


class CrossStitchNetwork(MultiTaskModel):
    """One backbone column per task, mixed by cross-stitch units after each stage."""

    name = "cross_stitch"

    def __init__(self, make_backbone: Callable[[], nn.Module], tasks: list[Task],
                 head_hidden: list[int], head_dropout: float = 0.0, stitch: str = "scalar",
                 input_shape: tuple[int, int, int] = (1, 36, 36)) -> None:
        super().__init__(tasks)
        if len(tasks) < 2:
            raise ValueError(
                f"params.yaml: model.architecture: cross_stitch mixes one column per task and "
                f"needs at least two tasks (got {len(tasks)}: {', '.join(self.task_names)}); "
                f"use hps for a single task")
        backbones = [make_backbone() for _ in tasks]
        self.columns = nn.ModuleList(nn.ModuleList(column_segments(b)) for b in backbones)
        if stitch not in STITCHES:
            raise ValueError(f"params.yaml: model.stitch: {stitch!r}: one of {STITCHES}")
        self.stitch = stitch
        width = backbones[0].out_features
        init = stitch_init(len(tasks))
        units: list[nn.Module]
        if stitch == "scalar":
            units = [CrossStitchUnit(len(tasks)) for _ in range(len(self.columns[0]) - 1)]
            final = {t.name: init[i].clone() for i, t in enumerate(tasks)}
        else:
            units = [LinearStitchUnit(len(tasks), c) for c in _stage_channels(
                self.columns[0], input_shape)]
            final = {t.name: torch.kron(init[i:i + 1], torch.eye(width))
                     for i, t in enumerate(tasks)}
        self.units = nn.ModuleList(units)
        self.final_mix = nn.ParameterDict({k: nn.Parameter(v) for k, v in final.items()})
        self.heads = nn.ModuleDict(
            {t.name: make_head(width, head_hidden, t.outputs, head_dropout) for t in tasks})

    def encode(self, x: Tensor) -> Tensor:
        """Each column's readout before the last unit, stacked ``[B, T, D]``."""
        columns = [x] * len(self.columns)
        for depth, unit in enumerate(self.units):
            columns = unit([col[depth](h) for col, h in zip(self.columns, columns, strict=True)])
        return torch.stack(
            [col[-1](h) for col, h in zip(self.columns, columns, strict=True)], dim=1)

    def decode(self, features: Tensor) -> dict[str, Tensor]:
        if self.stitch == "scalar":
            return {name: head(torch.einsum("bsd,s->bd", features, self.final_mix[name]))
                    for name, head in self.heads.items()}
        flat = features.flatten(1)  # [B, T x D], the columns side by side
        return {name: head(flat @ self.final_mix[name].T) for name, head in self.heads.items()}

    def shared_parameters(self) -> list[nn.Parameter]:
        return [*self.columns.parameters(), *self.units.parameters()]


def _stage_channels(segments: nn.ModuleList, input_shape: tuple[int, int, int]) -> list[int]:
    """The channels (features) each segment but the last outputs, for ``input_shape`` input."""
    channels, shape = [], tuple(input_shape)
    for segment in list(segments)[:-1]:
        shape = tuple(output_shape(segment, shape))
        channels.append(shape[0])
    return channels


@register_architecture(
    "cross_stitch", "cross-stitch network: one backbone per task, learned mixing after each stage")
def build_cross_stitch(config: ModelConfig, tasks: list[Task], in_channels: int, image_size: int,
                       encoder_init: EncoderInit | None = None) -> CrossStitchNetwork:
    return CrossStitchNetwork(
        encoder_factory(config, in_channels, image_size, encoder_init), tasks,
        config.head_hidden, config.dropout.heads, config.stitch,
        (in_channels, image_size, image_size))
