"""Shared encoders: the LeNet of the MultiMNIST literature here, torchvision's classification
models (ResNet-18/34/50, Inception v3, EfficientNet-B0, MobileNet v3 small, ConvNeXt tiny) in
:mod:`multitask.models.zoo`; :func:`build_backbone` picks one by ``model.backbone``.

All also expose their parts, ``stem()``, ``stages()`` and ``readout()``, as views onto their own
modules (no new parameters): ``readout(stage_n(... stage_1(stem(x))))`` equals ``forward(x)``.
Soft-sharing architectures (MTAN, MMoE, cross-stitch) read or mix the features between stages.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from multitask.errors import unknown_name
from multitask.models.zoo import SPECS, ResNet18Encoder, TorchvisionEncoder

__all__ = ["LeNetEncoder", "ResNet18Encoder", "TorchvisionEncoder", "build_backbone",
           "output_shape", "stage_count"]


class LeNetEncoder(nn.Module):
    """LeNet as used on MultiMNIST/MultiFashion by Pareto MTL (Lin et al., NeurIPS 2019).

    conv 9x9 (1->10), max-pool 2, ReLU, conv 5x5 (10->20), max-pool 2, ReLU, fc 500->50, ReLU.
    On a 36x36 canvas the second pooling leaves 20x5x5 = 500 features. ``width``
    (``model.width``) multiplies the channels and the features, each rounded to the nearest
    whole number: width 2 is conv 1->20, 20->40 and fc 1000->100 (123,800 parameters with two
    10-way heads, against 32k); width 1.5 is conv 1->15, 15->30 and fc 750->75 (69,595 with one
    head, so a cross-stitch pair of them stays under 150k). With ``dropout`` > 0
    those 500 features pass a dropout layer before ``fc`` (appended to ``features``, so no
    parameter's key moves; with 0 there is no such layer).
    """

    name = "lenet"
    input_conv = "features.0"  # the convolution that reads the image
    num_stages = 2  # what stages() gives
    min_size = 20  # conv 9, pool 2, conv 5, pool 2: the smallest side leaving 1x1 maps

    def __init__(self, in_channels: int = 1, image_size: int = 36,
                 out_features: int | None = None, dropout: float = 0.0,
                 width: float = 1) -> None:
        super().__init__()
        first, second = _scaled(10, width), _scaled(20, width)
        out_features = lenet_fc_width(width) if out_features is None else out_features
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, first, kernel_size=9),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(first, second, kernel_size=5),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, in_channels, image_size, image_size)).shape[1]
        if dropout > 0:
            self.features.append(nn.Dropout(dropout))
        self.fc = nn.Sequential(nn.Linear(flat, out_features), nn.ReLU())
        self.out_features = out_features

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))

    def stem(self) -> nn.Module:
        """What runs before the first stage: nothing for LeNet."""
        return nn.Identity()

    def stages(self) -> list[nn.Module]:
        """The two convolutional stages (conv, max-pool, ReLU), views onto ``features``."""
        return [self.features[0:3], self.features[3:6]]

    def readout(self) -> nn.Module:
        """Last stage's maps -> the ``out_features`` vector (flatten, dropout if any, fc, ReLU)."""
        return nn.Sequential(*self.features[6:], self.fc)


def lenet_fc_width(width: float) -> int:
    """Outputs of LeNet's fc layer (its feature vector) at ``width``: 50 scaled."""
    return _scaled(50, width)


def _scaled(size: int, width: float) -> int:
    """``size`` x ``width`` to the nearest whole number (halves up), at least 1."""
    return max(1, int(size * width + 0.5))


def output_shape(module: nn.Module, input_shape: tuple[int, ...]) -> torch.Size:
    """The shape of ``module``'s output for one input of ``input_shape`` (no batch dimension).

    Runs one zero input in eval mode, so batch-norm running statistics are left untouched.
    """
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            return module(torch.zeros(1, *input_shape)).shape[1:]
    finally:
        module.train(was_training)


def stage_count(name: str) -> int:
    """How many stages backbone ``name``'s ``stages()`` gives: where soft sharing reads or mixes
    and where a branched network may branch."""
    if name == "lenet":
        return LeNetEncoder.num_stages
    if name in SPECS:
        return len(SPECS[name].stages)
    raise ValueError("model.backbone: " + unknown_name("backbone", name, ["lenet", *SPECS]))


def build_backbone(name: str, in_channels: int, image_size: int, *,
                   resize_to: int | None = None, stem: str = "auto",
                   dropout: float = 0.0, width: float = 1) -> nn.Module:
    """The encoder ``model.backbone`` names, for ``in_channels`` x ``image_size``² input.

    ``resize_to`` and ``stem`` apply to torchvision backbones (see :mod:`multitask.models.zoo`);
    ``dropout`` (``model.dropout.encoder``) to all (LeNet: before ``fc``; torchvision: on the
    pooled output); ``width`` (``model.width``) to LeNet only.
    """
    if name != "lenet" and width != 1:
        raise ValueError(f"model.width: {width}: only lenet has a width multiplier; remove it "
                         f"for {name} (or pick a larger torchvision backbone)")
    if name == "lenet":
        if resize_to is not None or stem != "auto":
            raise ValueError("model.resize_to and model.stem apply to torchvision backbones "
                             "only; remove them for lenet")
        return LeNetEncoder(in_channels, image_size, dropout=dropout, width=width)
    if name in SPECS:
        return TorchvisionEncoder(name, in_channels, image_size, resize_to=resize_to, stem=stem,
                                  dropout=dropout)
    raise ValueError("model.backbone: " + unknown_name("backbone", name, ["lenet", *SPECS]))
