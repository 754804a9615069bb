"""Torchvision backbones as shared encoders: the same features as torchvision's own forward,
parts that compose to the whole, stems, resizing, Inception's minimum size, and every
architecture built on them (with the encoder initialiser called on every encoder)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from multitask.config import BACKBONES, ModelConfig
from multitask.models import ARCHITECTURES, build_model
from multitask.models.backbones import build_backbone, stage_count
from multitask.models.zoo import SPECS, TorchvisionEncoder, replace
from multitask.tasks import Task

TASKS = [Task("left", 10), Task("right", 3)]
SMALLEST = {"inception_v3": 75}  # the smallest input each backbone is tried at (default 32)


def size_for(name: str) -> int:
    return SMALLEST.get(name, 32)


def test_the_zoo_is_every_configurable_torchvision_backbone() -> None:
    assert set(SPECS) == set(BACKBONES) - {"lenet"}


@pytest.mark.parametrize("name", list(SPECS))
def test_features_are_torchvision_forward_without_the_classifier(name: str) -> None:
    """Same weights, same input: our encoder (identity adapter) equals torchvision's own forward
    with the classifier replaced by the identity, and its parts compose to it."""
    import torchvision.models

    torch.manual_seed(0)
    size = size_for(name)
    stem = "imagenet" if name.startswith("resnet") else "auto"
    encoder = build_backbone(name, 3, size, stem=stem).eval()
    reference = getattr(torchvision.models, name)(weights=None, **SPECS[name].options)
    reference.load_state_dict(
        {k.removeprefix("net."): v for k, v in encoder.state_dict().items()
         if k.startswith("net.")}, strict=False)
    replace(reference, SPECS[name].classifier, nn.Identity())
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        features = encoder(x)
        h = encoder.stem()(x)
        for stage in encoder.stages():
            h = stage(h)
        torch.testing.assert_close(features, reference.eval()(x), rtol=0, atol=0)
        torch.testing.assert_close(encoder.readout()(h), features, rtol=0, atol=0)
    assert features.shape == (2, encoder.out_features)
    parts = [encoder.stem(), *encoder.stages(), encoder.readout()]
    assert {id(p) for part in parts for p in part.parameters()} == {
        id(p) for p in encoder.parameters()}
    assert stage_count(name) == len(encoder.stages())  # what params validation counts


def test_lenet_stage_count_is_what_its_stages_give() -> None:
    assert stage_count("lenet") == len(build_backbone("lenet", 1, 36).stages()) == 2


def test_resnet18_by_default_is_the_projects_cifar_stem_resnet18() -> None:
    encoder = build_backbone("resnet18", 1, 36)
    assert isinstance(encoder, TorchvisionEncoder) and encoder.stem_kind == "cifar"
    conv1 = encoder.net.conv1
    assert (conv1.in_channels, conv1.kernel_size, conv1.stride) == (1, (3, 3), (1, 1))
    assert isinstance(encoder.net.maxpool, nn.Identity)
    keys = set(encoder.state_dict())
    assert {k for k in keys if not k.startswith("net.")} == {"adapter.scale", "adapter.shift"}
    import torchvision.models

    torchvision_keys = set(torchvision.models.resnet18().state_dict()) - {"fc.weight", "fc.bias"}
    assert {k.removeprefix("net.") for k in keys if k.startswith("net.")} == torchvision_keys


def test_a_network_saved_before_the_adapter_existed_loads_as_identity() -> None:
    encoder = build_backbone("resnet18", 1, 36)
    old = {k: v for k, v in encoder.state_dict().items() if not k.startswith("adapter.")}
    fresh = build_backbone("resnet18", 1, 36)
    fresh.adapter.set_affine(torch.full((1,), 3.0), torch.full((1,), 1.0))
    fresh.load_state_dict(old)
    assert fresh.adapter.scale.tolist() == [1.0] and fresh.adapter.shift.tolist() == [0.0]


@pytest.mark.parametrize(("size", "resize_to", "stem", "expected"), [
    (36, None, "auto", "cifar"), (36, 64, "auto", "imagenet"), (64, None, "auto", "imagenet"),
    (224, None, "cifar", "cifar"), (36, None, "imagenet", "imagenet")])
def test_resnet_stem_auto_is_cifar_below_64_pixels_of_input(
        size: int, resize_to: int | None, stem: str, expected: str) -> None:
    encoder = build_backbone("resnet18", 1, size, resize_to=resize_to, stem=stem)
    assert encoder.stem_kind == expected
    assert isinstance(encoder.net.maxpool, nn.Identity) == (expected == "cifar")


def test_resize_to_resizes_inside_the_network() -> None:
    torch.manual_seed(0)
    resized = build_backbone("mobilenet_v3_small", 1, 36, resize_to=64).eval()
    plain = build_backbone("mobilenet_v3_small", 1, 64).eval()
    plain.load_state_dict(resized.state_dict())
    x = torch.randn(2, 1, 36, 36)
    up = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(resized(x), plain(up))
    assert build_backbone("mobilenet_v3_small", 1, 64, resize_to=64).adapter.size is None


def test_inception_below_75_pixels_names_model_resize_to() -> None:
    with pytest.raises(ValueError, match=r"inception_v3 needs at least 75x75 input \(got "
                                         r"36x36\); set model\.resize_to to 75"):
        build_backbone("inception_v3", 1, 36)
    encoder = build_backbone("inception_v3", 1, 36, resize_to=75)
    assert encoder(torch.zeros(2, 1, 36, 36)).shape == (2, 2048)


def test_stem_and_resize_are_refused_where_they_do_not_apply() -> None:
    with pytest.raises(ValueError, match="only ResNets have a choice of first layers"):
        build_backbone("convnext_tiny", 3, 32, stem="cifar")
    with pytest.raises(ValueError, match="torchvision backbones only; remove them for lenet"):
        build_backbone("lenet", 1, 36, resize_to=64)
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet19'; did you mean"):
        build_backbone("resnet19", 1, 36)


# ------------------------------------------------------------------------- architectures
@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_every_architecture_trains_on_a_torchvision_backbone_and_inits_every_encoder(
        architecture: str) -> None:
    """MobileNet (the cheapest) under each architecture: forward, backward, and encoder_init
    called once per encoder built (HPS 1; MTAN 1 + a readout copy per task; MMoE 1 + one per
    expert; cross-stitch one column per task; branched the trunk's and one per task)."""
    torch.manual_seed(0)
    seen: list[nn.Module] = []
    config = ModelConfig(architecture=architecture, backbone="mobilenet_v3_small",
                         num_experts=2, expert_dim=8)
    model = build_model(config, TASKS, 1, 32, encoder_init=seen.append)
    assert len(seen) == {"hps": 1, "mtan": 3, "mmoe": 3, "cross_stitch": 2,
                         "branched": 3}[architecture]
    assert all(isinstance(e, TorchvisionEncoder) for e in seen)
    outputs = model(torch.randn(2, 1, 32, 32))
    assert {k: tuple(v.shape) for k, v in outputs.items()} == {"left": (2, 10), "right": (2, 3)}
    sum(o.sum() for o in outputs.values()).backward()
    assert all(p.grad is not None for p in model.shared_parameters())


def test_mtan_splits_bottleneck_stages_before_their_last_block() -> None:
    model = build_model(ModelConfig(architecture="mtan", backbone="resnet50"), TASKS, 3, 32)
    features = model.encode(torch.randn(1, 3, 32, 32))
    assert len(features) == 8  # (u, p) for each of four residual stages
