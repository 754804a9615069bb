"""Torchvision's classification models as shared encoders: classifier removed, feature vector out.

Each encoder holds the torchvision model as ``net`` (state_dict keys ``net.<torchvision key>``,
so torchvision's weight files load by prefix) behind an :class:`InputAdapter` that does what
ImageNet-trained weights need of the input, inside the network so that ``predict`` and
``mlflow models serve`` keep taking the data's own standardised pixels:

- normalisation: the data arrive standardised with one scalar pair (``pixel_mean``,
  ``pixel_std``, :meth:`ProcessedData.normalise`); the adapter maps them per channel to what
  the weights were trained on (identity until :func:`multitask.models.pretrained.load_encoder`
  sets it; buffers, so a saved or exported network keeps them);
- size: ``resize_to`` resizes the input bilinearly (antialiased when shrinking) to that many
  pixels. Inception v3 needs at least 75 (its last reduction leaves 1x1 there).

Small images: a ResNet's ``stem`` is ``imagenet`` (7x7 stride 2 and max-pool, as trained) or
``cifar`` (3x3 stride 1, no max-pool, the usual choice for 32-pixel inputs; that convolution
starts fresh, the rest of the network can still be pretrained); ``auto`` picks cifar below 64
pixels of (resized) input, so ``backbone: resnet18`` on 36x36 data is the CIFAR-stem ResNet-18
the project always had (same ``net.*`` keys). Other backbones keep their own first layers:
upsample with ``resize_to`` when the input is too small for them.

Every encoder exposes ``stem()``, ``stages()`` and ``readout()`` as views onto its own modules,
cut where the resolution halves (four stages; three for Inception's Mixed blocks), with
``readout(stage_n(... stage_1(stem(x))))`` equal to ``forward(x)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Inception v3's weights come from Google's model, which expects (x - 0.5) / 0.5 per channel;
# torchvision's ``transform_input`` converts ImageNet-normalised input to that. Here the adapter
# maps to it directly and ``transform_input`` stays off.
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)
CIFAR_STEM_BELOW = 64  # stem: auto picks the cifar stem below this many pixels of input
STEMS = ("auto", "cifar", "imagenet")


@dataclass(frozen=True)
class BackboneSpec:
    """How to cut one torchvision classification model into an encoder.

    Paths are attribute paths inside the torchvision model (``features.0``); ``classifier`` is
    replaced by the identity (its keys are dropped from weight files), as is ``dropped``
    (built without, e.g. Inception's auxiliary classifier).
    """

    weights: str  # torchvision's weight enum member for ``pretrained: imagenet``
    out_features: int
    first_conv: str
    classifier: str
    stem: tuple[str, ...]
    stages: tuple[tuple[str, ...], ...]
    readout: tuple[str, ...]
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    min_size: int = 1
    dropped: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)


def _resnet(weights: str, out_features: int) -> BackboneSpec:
    return BackboneSpec(
        weights, out_features, first_conv="conv1", classifier="fc",
        stem=("conv1", "bn1", "relu", "maxpool"),
        stages=(("layer1",), ("layer2",), ("layer3",), ("layer4",)), readout=("avgpool",))


def _numbered(name: str, first: int, last: int) -> tuple[str, ...]:
    return tuple(f"{name}.{i}" for i in range(first, last + 1))


SPECS: dict[str, BackboneSpec] = {
    "resnet18": _resnet("ResNet18_Weights.IMAGENET1K_V1", 512),
    "resnet34": _resnet("ResNet34_Weights.IMAGENET1K_V1", 512),
    "resnet50": _resnet("ResNet50_Weights.IMAGENET1K_V2", 2048),
    "inception_v3": BackboneSpec(
        "Inception_V3_Weights.IMAGENET1K_V1", 2048, first_conv="Conv2d_1a_3x3.conv",
        classifier="fc",
        stem=("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
              "Conv2d_4a_3x3", "maxpool2"),
        stages=(("Mixed_5b", "Mixed_5c", "Mixed_5d"),
                ("Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"),
                ("Mixed_7a", "Mixed_7b", "Mixed_7c")),
        readout=("avgpool",), mean=INCEPTION_MEAN, std=INCEPTION_STD, min_size=75,
        dropped=("AuxLogits",),
        options={"aux_logits": False, "transform_input": False, "init_weights": True}),
    "efficientnet_b0": BackboneSpec(
        "EfficientNet_B0_Weights.IMAGENET1K_V1", 1280, first_conv="features.0.0",
        classifier="classifier", stem=("features.0",),
        stages=(_numbered("features", 1, 2), ("features.3",), _numbered("features", 4, 5),
                _numbered("features", 6, 8)),
        readout=("avgpool",)),
    "mobilenet_v3_small": BackboneSpec(
        "MobileNet_V3_Small_Weights.IMAGENET1K_V1", 576, first_conv="features.0.0",
        classifier="classifier", stem=("features.0",),
        stages=(("features.1",), _numbered("features", 2, 3), _numbered("features", 4, 8),
                _numbered("features", 9, 12)),
        readout=("avgpool",)),
    # ConvNeXt's classifier is LayerNorm, flatten, linear: the norm belongs to the features
    # (pretrained, and the head expects normalised input), only the linear layer goes.
    "convnext_tiny": BackboneSpec(
        "ConvNeXt_Tiny_Weights.IMAGENET1K_V1", 768, first_conv="features.0.0",
        classifier="classifier.2", stem=("features.0",),
        stages=(("features.1",), _numbered("features", 2, 3), _numbered("features", 4, 5),
                _numbered("features", 6, 7)),
        readout=("avgpool", "classifier")),
}


class InputAdapter(nn.Module):
    """``x -> resize(x * scale + shift)``, ``scale`` and ``shift`` one value per channel.

    Starts as the identity (no resize unless ``resize_to`` differs from the data's size).
    Bilinear resizing commutes with a per-channel affine map, so the order does not matter.
    Networks saved before the adapter existed (CIFAR-stem ResNet-18) have no ``scale``/``shift``
    keys; they load as the identity, which is what they computed.
    """

    def __init__(self, channels: int, image_size: int, resize_to: int | None) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(channels))
        self.register_buffer("shift", torch.zeros(channels))
        self.size = resize_to if resize_to not in (None, image_size) else None
        self.antialias = self.size is not None and self.size < image_size
        self._register_load_state_dict_pre_hook(self._identity_when_absent)

    def _identity_when_absent(self, state_dict: dict[str, Tensor], prefix: str,
                              *args: Any) -> None:
        keys = (prefix + "scale", prefix + "shift")
        if not any(k in state_dict for k in keys):
            state_dict[keys[0]] = torch.ones_like(self.scale)
            state_dict[keys[1]] = torch.zeros_like(self.shift)

    @torch.no_grad()
    def set_affine(self, scale: Tensor, shift: Tensor) -> None:
        self.scale.copy_(scale)
        self.shift.copy_(shift)

    def forward(self, x: Tensor) -> Tensor:
        x = x * self.scale.view(1, -1, 1, 1) + self.shift.view(1, -1, 1, 1)
        if self.size is not None:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear",
                              align_corners=False, antialias=self.antialias)
        return x

    def extra_repr(self) -> str:
        return f"channels={self.scale.numel()}, resize_to={self.size}"


class Stem(nn.Sequential):
    """The adapter, then the backbone's first layers.

    The adapter is registered by name after the numbered layers, so those keep the indices
    they had before it existed (``stem.0.weight`` is the first convolution in MTAN/MMoE
    networks, as it always was); ``forward`` runs it first.
    """

    def __init__(self, adapter: InputAdapter, *layers: nn.Module) -> None:
        super().__init__(*layers)
        self.adapter = adapter

    def forward(self, x: Tensor) -> Tensor:
        x = self.adapter(x)
        for name, layer in self.named_children():
            if name != "adapter":
                x = layer(x)
        return x


def replace(net: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, name, module)


def conv_like(conv: nn.Conv2d, in_channels: int, **changes: Any) -> nn.Conv2d:
    """A fresh convolution like ``conv`` but for ``in_channels`` (and ``changes``)."""
    settings = {"out_channels": conv.out_channels, "kernel_size": conv.kernel_size,
                "stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation,
                "groups": conv.groups, "bias": conv.bias is not None, **changes}
    return nn.Conv2d(in_channels, **settings)


def resolve_stem(name: str, stem: str, input_size: int) -> str:
    """``cifar`` or ``imagenet`` for a ResNet; ``imagenet`` (its own) for other backbones."""
    if stem not in STEMS:
        raise ValueError(f"model.stem: unknown stem '{stem}' ({', '.join(STEMS)})")
    if not name.startswith("resnet"):
        if stem != "auto":
            raise ValueError(f"model.stem: {stem}: only ResNets have a choice of first layers; "
                             f"remove it for {name}")
        return "imagenet"
    if stem == "auto":
        return "cifar" if input_size < CIFAR_STEM_BELOW else "imagenet"
    return stem


class TorchvisionEncoder(nn.Module):
    """A torchvision classification model without its classifier: input -> feature vector.

    ``forward`` runs the adapter and the layers that ``stem()``, ``stages()`` and ``readout()``
    list, never the torchvision model's own forward, so the parts and the whole cannot
    disagree (and Inception's auxiliary output never runs).
    """

    def __init__(self, name: str, in_channels: int, image_size: int,
                 resize_to: int | None = None, stem: str = "auto", dropout: float = 0.0) -> None:
        super().__init__()
        import torchvision.models  # torchvision costs ~1 s to import

        if name not in SPECS:
            raise ValueError(f"model.backbone: no torchvision encoder '{name}' "
                             f"({', '.join(SPECS)})")
        spec = SPECS[name]
        input_size = resize_to or image_size
        if input_size < spec.min_size:
            raise ValueError(
                f"model.backbone: {name} needs at least {spec.min_size}x{spec.min_size} input "
                f"(got {input_size}x{input_size}); set model.resize_to to {spec.min_size} or "
                f"more (299 is its ImageNet size)")
        self.name = name
        self.spec = spec
        self.stem_kind = resolve_stem(name, stem, input_size)
        net = getattr(torchvision.models, name)(weights=None, **spec.options)
        replace(net, spec.classifier, nn.Identity())
        first = net.get_submodule(spec.first_conv)
        assert isinstance(first, nn.Conv2d)
        if self.stem_kind == "cifar":
            replace(net, spec.first_conv,
                    conv_like(first, in_channels, kernel_size=3, stride=1, padding=1))
            replace(net, "maxpool", nn.Identity())
        elif in_channels != first.in_channels:
            replace(net, spec.first_conv, conv_like(first, in_channels))
        self.adapter = InputAdapter(in_channels, image_size, resize_to)
        self.net = net
        self.in_channels = in_channels
        self.out_features = spec.out_features
        self.input_conv = f"net.{spec.first_conv}"  # the convolution that reads the image
        # The layers forward runs, in order: references to modules registered under ``net``
        # (a plain list registers nothing, so no key appears twice in the state_dict).
        self.layers = [net.get_submodule(p)
                       for p in (*spec.stem, *(p for s in spec.stages for p in s), *spec.readout)]
        # model.dropout.encoder: on the pooled vector, where torchvision's removed classifiers
        # had theirs; no parameters, so no key changes (and no layer at all at 0).
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.adapter(x)
        for layer in self.layers:
            x = layer(x)
        x = torch.flatten(x, 1)
        return x if self.dropout is None else self.dropout(x)

    def stem(self) -> nn.Module:
        """The input adapter and the layers before the first stage."""
        return Stem(self.adapter, *(self.net.get_submodule(p) for p in self.spec.stem))

    def stages(self) -> list[nn.Module]:
        """One module per resolution: a single torchvision module as is (a ResNet layer),
        several in an ``nn.Sequential``."""
        stages: list[nn.Module] = []
        for paths in self.spec.stages:
            modules = [self.net.get_submodule(p) for p in paths]
            stages.append(modules[0] if len(modules) == 1 else nn.Sequential(*modules))
        return stages

    def readout(self) -> nn.Module:
        """Last stage's maps -> the ``out_features`` vector (global pooling, flatten; and
        ConvNeXt's LayerNorm; and the dropout, if any)."""
        dropout = [] if self.dropout is None else [self.dropout]
        return nn.Sequential(*(self.net.get_submodule(p) for p in self.spec.readout), nn.Flatten(),
                             *dropout)


class ResNet18Encoder(TorchvisionEncoder):
    """The project's original encoder: ResNet-18 with the CIFAR stem on 36x36 input."""

    def __init__(self, in_channels: int = 1, image_size: int = 36) -> None:
        super().__init__("resnet18", in_channels, image_size, stem="cifar")
