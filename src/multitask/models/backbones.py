"""Shared encoders: the LeNet of the MultiMNIST literature and a ResNet-18 for 1x36x36 input.

Both also expose their parts, ``stem()``, ``stages()`` and ``readout()``, as views onto their own
modules (no new parameters): ``readout(stage_n(... stage_1(stem(x))))`` equals ``forward(x)``.
Soft-sharing architectures (MTAN, MMoE, cross-stitch) read or mix the features between stages.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LeNetEncoder(nn.Module):
    """LeNet as used on MultiMNIST/MultiFashion by Pareto MTL (Lin et al., NeurIPS 2019).

    conv 9x9 (1->10), max-pool 2, ReLU, conv 5x5 (10->20), max-pool 2, ReLU, fc 500->50, ReLU.
    On a 36x36 canvas the second pooling leaves 20x5x5 = 500 features.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 36, out_features: int = 50) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 10, kernel_size=9),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(10, 20, kernel_size=5),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, in_channels, image_size, image_size)).shape[1]
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
        """Last stage's maps -> the ``out_features`` vector (flatten, fc, ReLU)."""
        return nn.Sequential(self.features[6], self.fc)


class ResNet18Encoder(nn.Module):
    """torchvision's ResNet-18, adapted to small single-channel images.

    The 7x7 stride-2 stem and its max-pool would shrink 36x36 to 9x9 before the first block;
    as is usual for 32-pixel inputs (CIFAR), the stem is a 3x3 stride-1 convolution without
    pooling. The classifier is dropped: the encoder outputs the 512 pooled features.
    """

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        from torchvision.models import resnet18  # torchvision costs ~1 s to import

        net = resnet18(weights=None)
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        net.fc = nn.Identity()
        self.net = net
        self.out_features = 512

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def stem(self) -> nn.Module:
        """The 3x3 convolution, batch norm and ReLU before the first residual stage."""
        return nn.Sequential(self.net.conv1, self.net.bn1, self.net.relu, self.net.maxpool)

    def stages(self) -> list[nn.Module]:
        """The four residual stages (two basic blocks each; 64, 128, 256, 512 channels)."""
        return [self.net.layer1, self.net.layer2, self.net.layer3, self.net.layer4]

    def readout(self) -> nn.Module:
        """Last stage's maps -> the 512 features (global average pooling; no parameters)."""
        return nn.Sequential(self.net.avgpool, nn.Flatten())


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


def build_backbone(name: str, in_channels: int, image_size: int) -> nn.Module:
    if name == "lenet":
        return LeNetEncoder(in_channels, image_size)
    if name == "resnet18":
        return ResNet18Encoder(in_channels)
    raise ValueError(f"model.backbone: unknown backbone '{name}' (lenet, resnet18)")
