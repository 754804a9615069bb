"""The multi-task network contract and the architecture registry.

Every architecture maps an input batch to one output per task through ``encode`` (the shared
representation) and ``decode`` (the task-specific part). ``shared_parameters`` and
``task_parameters`` partition the parameters: weighting methods combine per-task gradients of
the shared ones only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import Tensor, nn

from multitask.errors import unknown_name
from multitask.models.backbones import build_backbone
from multitask.tasks import Task

if TYPE_CHECKING:
    from multitask.config import ModelConfig


class MultiTaskModel(nn.Module, ABC):
    """Input -> shared encoder -> per-task heads -> per-task outputs."""

    name: str
    description: str

    def __init__(self, tasks: list[Task]) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.task_names = [t.name for t in tasks]

    @abstractmethod
    def encode(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        """The shared representation of ``x``."""

    @abstractmethod
    def decode(self, features: Tensor | tuple[Tensor, ...]) -> dict[str, Tensor]:
        """Per-task outputs (logits) from the shared representation."""

    @abstractmethod
    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters every task's loss depends on."""

    def task_parameters(self) -> list[nn.Parameter]:
        shared = {id(p) for p in self.shared_parameters()}
        return [p for p in self.parameters() if id(p) not in shared]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.decode(self.encode(x))


def separate_nodes(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Each tensor as its own node of the autograd graph, for a multi-tensor representation.

    When one element of ``encode``'s tuple was computed from another (stage 2 from stage 1),
    ``torch.autograd.grad(loss, features)`` would return, for the earlier element, the total
    derivative through the later one too, and ``torch.autograd.backward(features, grads)``
    would then count that path twice. Returning a view of each element (a new graph node that
    nothing downstream in ``encode`` reads) makes the gradient w.r.t. each element the partial
    derivative through ``decode`` alone, which is what backpropagating through ``encode`` expects.
    """
    return tuple(t.view_as(t) for t in tensors)


def make_head(in_features: int, hidden: list[int], outputs: int,
              dropout: float = 0.0) -> nn.Sequential:
    """A task head: optional hidden layers with ReLU, then (``dropout`` > 0, i.e.
    ``model.dropout.heads``) a dropout layer, then the output layer: ``outputs`` wide
    (``task.outputs``: a logit per class, one logit for binary, one value for regression)."""
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    if dropout > 0:  # none at 0: the classifier keeps its key
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(width, outputs))
    return nn.Sequential(*layers)


# Called on every encoder an architecture builds, right after construction (pretrained weights).
EncoderInit = Callable[[nn.Module], None]
Builder = Callable[["ModelConfig", list[Task], int, int, EncoderInit | None], MultiTaskModel]
ARCHITECTURES: dict[str, tuple[Builder, str]] = {}


def register_architecture(name: str, description: str) -> Callable[[Builder], Builder]:
    """Decorator: make an architecture builder selectable as ``model.architecture: <name>``."""

    def wrap(builder: Builder) -> Builder:
        if name in ARCHITECTURES:
            raise ValueError(f"architecture '{name}' registered twice")
        ARCHITECTURES[name] = (builder, description)
        return builder

    return wrap


def encoder_factory(config: ModelConfig, in_channels: int, image_size: int,
                    encoder_init: EncoderInit | None) -> Callable[[], nn.Module]:
    """A function returning a new ``config.backbone`` encoder, passed through ``encoder_init``.

    Architectures call it for every encoder they build (cross-stitch one per task, MTAN and
    MMoE extra copies for their per-task readouts and experts), so each starts the same way.
    """

    def new_encoder() -> nn.Module:
        encoder = build_backbone(config.backbone, in_channels, image_size,
                                 resize_to=config.resize_to, stem=config.stem,
                                 dropout=config.dropout.encoder, width=config.width)
        if encoder_init is not None:
            encoder_init(encoder)
        return encoder

    return new_encoder


def build_model(config: ModelConfig, tasks: list[Task], in_channels: int, image_size: int,
                encoder_init: EncoderInit | None = None) -> MultiTaskModel:
    """Instantiate ``config.architecture`` with ``config.backbone`` for ``tasks``.

    ``encoder_init`` is called on every encoder instance the architecture builds, right after
    construction and before the architecture cuts it into stages (e.g.
    :func:`multitask.models.pretrained.load_encoder` with the weights to start from).
    """
    if config.architecture not in ARCHITECTURES:
        raise ValueError("model.architecture: "
                         + unknown_name("architecture", config.architecture, ARCHITECTURES))
    builder, _ = ARCHITECTURES[config.architecture]
    return builder(config, tasks, in_channels, image_size, encoder_init)
