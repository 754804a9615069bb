"""Hard parameter sharing: shapes, and the heads share every encoder parameter and nothing else."""

from __future__ import annotations

import pytest
import torch

from multitask.config import BACKBONES, ModelConfig
from multitask.models import ARCHITECTURES, build_model
from multitask.models.backbones import LeNetEncoder
from multitask.tasks import Task

TASKS = [Task("left", 10), Task("right", 10)]


@pytest.mark.parametrize("backbone", ["lenet", "resnet18"])
def test_output_shapes(backbone: str) -> None:
    model = build_model(ModelConfig(backbone=backbone), TASKS, 1, 36)
    outputs = model(torch.zeros(3, 1, 36, 36))
    assert {k: tuple(v.shape) for k, v in outputs.items()} == {"left": (3, 10), "right": (3, 10)}


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_builds_the_model_for_multifashion_input(backbone: str) -> None:
    """1x36x36 input as MultiFashion's; Inception resized to its 75-pixel minimum."""
    config = ModelConfig(backbone=backbone, resize_to=75 if backbone == "inception_v3" else None)
    model = build_model(config, TASKS, 1, 36)
    outputs = model(torch.zeros(2, 1, 36, 36))
    assert {k: tuple(v.shape) for k, v in outputs.items()} == {"left": (2, 10), "right": (2, 10)}


def test_encoder_init_sees_the_encoder_before_the_model_uses_it() -> None:
    def init(encoder: torch.nn.Module) -> None:
        torch.nn.init.zeros_(encoder.fc[0].weight)
        torch.nn.init.zeros_(encoder.fc[0].bias)

    model = build_model(ModelConfig(), TASKS, 1, 36, encoder_init=init)
    assert not model.encoder(torch.randn(2, 1, 36, 36)).any()


def test_a_rebuilt_network_restores_the_input_normalisation_from_its_state_dict() -> None:
    """What load_network does: build without weights, load the saved state_dict; the adapter's
    normalisation (set when the encoder started from ImageNet weights) comes back with it."""
    config = ModelConfig(backbone="resnet18")

    def imagenet_like(encoder: torch.nn.Module) -> None:
        encoder.adapter.set_affine(torch.tensor([1.5]), torch.tensor([-0.5]))

    saved = build_model(config, TASKS, 1, 36, encoder_init=imagenet_like).state_dict()
    rebuilt = build_model(config, TASKS, 1, 36)
    rebuilt.load_state_dict(saved)
    assert (rebuilt.encoder.adapter.scale.item(), rebuilt.encoder.adapter.shift.item()) == (
        1.5, -0.5)


def test_lenet_matches_the_published_layout() -> None:
    encoder = LeNetEncoder(1, 36)
    convs = [m for m in encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (1, 10, (9, 9)), (10, 20, (5, 5))]
    assert (encoder.fc[0].in_features, encoder.fc[0].out_features) == (500, 50)


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_lenet_width_multiplies_channels_and_features_in_every_architecture(
        architecture: str) -> None:
    """model.width 2: conv 1->20 and 20->40, fc 1000->100: hard sharing with two 10-way heads
    has 123,800 parameters, within the long profile's 150k."""
    encoder = LeNetEncoder(1, 36, width=2)
    convs = [m for m in encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 20), (20, 40)]
    assert (encoder.fc[0].in_features, encoder.fc[0].out_features) == (1000, 100)
    model = build_model(ModelConfig(width=2, architecture=architecture), TASKS, 1, 36)
    assert {k: tuple(v.shape) for k, v in model(torch.zeros(2, 1, 36, 36)).items()} == {
        "left": (2, 10), "right": (2, 10)}
    if architecture == "hps":
        conv1, conv2, fc, head = 20 * 81 + 20, 40 * 20 * 25 + 40, 1000 * 100 + 100, 100 * 10 + 10
        assert sum(p.numel() for p in model.parameters()) == conv1 + conv2 + fc + 2 * head


def test_a_fractional_width_rounds_channels_and_keeps_a_cross_stitch_pair_under_150k() -> None:
    """model.width 1.5: conv 1->15 and 15->30, fc 750->75; two such LeNets joined by
    cross-stitch units (12 mixing weights) hold 139,202 parameters."""
    config = ModelConfig(width=1.5, architecture="cross_stitch")
    model = build_model(config, TASKS, 1, 36)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 15), (15, 30)] * 2
    conv1, conv2, fc, head = 15 * 81 + 15, 30 * 15 * 25 + 30, 750 * 75 + 75, 75 * 10 + 10
    assert sum(p.numel() for p in model.parameters()) == 2 * (conv1 + conv2 + fc + head) + 12
    assert {k: tuple(v.shape) for k, v in model(torch.zeros(2, 1, 36, 36)).items()} == {
        "left": (2, 10), "right": (2, 10)}


def test_a_whole_width_stays_an_int_and_a_tiny_one_is_refused() -> None:
    """1 reads back as 1, not 1.0 (params hashed into names stay as they were); a width that
    would round a layer to nothing names the field."""
    assert type(ModelConfig(width=1).width) is int
    assert ModelConfig(width=1.5).width == 1.5
    with pytest.raises(ValueError, match="width"):
        ModelConfig(width=0.01)


def test_width_is_refused_for_torchvision_backbones_by_name() -> None:
    with pytest.raises(ValueError, match="width: 2: only lenet"):
        ModelConfig(backbone="resnet18", width=2)


def test_heads_share_every_encoder_parameter_and_nothing_else() -> None:
    model = build_model(ModelConfig(head_hidden=[32]), TASKS, 1, 36)
    shared = {id(p) for p in model.shared_parameters()}
    assert shared == {id(p) for p in model.encoder.parameters()}
    outputs = model(torch.randn(4, 1, 36, 36))
    for name, other in (("left", "right"), ("right", "left")):
        model.zero_grad()
        outputs[name].sum().backward(retain_graph=True)
        # every shared parameter receives this task's gradient ...
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.shared_parameters())
        # ... its own head too, the other task's head nothing
        assert all(p.grad is not None for p in model.heads[name].parameters())
        assert all(p.grad is None for p in model.heads[other].parameters())
    task = {id(p) for p in model.task_parameters()}
    assert not shared & task
    assert shared | task == {id(p) for p in model.parameters()}


def test_head_hidden_layers() -> None:
    model = build_model(ModelConfig(head_hidden=[64, 32]), TASKS, 1, 36)
    sizes = [m.out_features for m in model.heads["left"] if isinstance(m, torch.nn.Linear)]
    assert sizes == [64, 32, 10]


def test_unknown_architecture_is_named() -> None:
    expected = r"model\.architecture: unknown architecture 'hsp'; did you"
    with pytest.raises(ValueError, match=expected):
        build_model(ModelConfig(architecture="hsp"), TASKS, 1, 36)
