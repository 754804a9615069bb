"""Every registered architecture (HPS, branched, MTAN, MMoE, cross-stitch): the model contract.

Shapes and parameter counts per backbone, the shared/task parameter partition, gradients from
every task into every shared parameter, the representation gradient, initial mixing and masks,
and a few real optimisation steps.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from multitask.config import ModelConfig
from multitask.models import ARCHITECTURES, MultiTaskModel, build_model
from multitask.models.backbones import LeNetEncoder, ResNet18Encoder
from multitask.models.branched import BranchedNetwork
from multitask.models.cross_stitch import CrossStitchNetwork, CrossStitchUnit
from multitask.models.mmoe import MultiGateMixtureOfExperts
from multitask.models.mtan import MultiTaskAttentionNetwork
from multitask.tasks import Task

ARCHS = sorted(ARCHITECTURES)  # a new architecture is held to the contract (and its counts)
TASKS = [Task("top_left", 10), Task("bottom_right", 5)]


def build(architecture: str, backbone: str = "lenet", tasks: list[Task] = TASKS,
          **config: object) -> MultiTaskModel:
    torch.manual_seed(0)
    return build_model(
        ModelConfig(architecture=architecture, backbone=backbone, **config), tasks, 1, 36)


def batch(size: int = 4, tasks: list[Task] = TASKS) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(size, 1, 36, 36, generator=generator)
    y = torch.stack(
        [torch.randint(0, t.num_classes, (size,), generator=generator) for t in tasks], dim=1)
    return x, y


def task_losses(model: MultiTaskModel, features: Tensor | tuple[Tensor, ...], y: Tensor
                ) -> list[Tensor]:
    outputs = model.decode(features)
    return [F.cross_entropy(outputs[t.name], y[:, i]) for i, t in enumerate(model.tasks)]


def as_tuple(features: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return features if isinstance(features, tuple) else (features,)


def reached(grad: Tensor | None) -> bool:
    return grad is not None and bool(grad.abs().sum() > 0)


def count(params: list[nn.Parameter] | nn.Module) -> int:
    items = params.parameters() if isinstance(params, nn.Module) else params
    return sum(p.numel() for p in items)


# ------------------------------------------------------------------------------- backbones
@pytest.mark.parametrize("encoder_class", [LeNetEncoder, ResNet18Encoder])
def test_backbone_parts_compose_to_forward_and_own_every_parameter(encoder_class: type) -> None:
    torch.manual_seed(0)
    encoder = encoder_class(1).eval()
    x = batch(2)[0]
    h = encoder.stem()(x)
    for stage in encoder.stages():
        h = stage(h)
    torch.testing.assert_close(encoder.readout()(h), encoder(x))
    parts = [encoder.stem(), *encoder.stages(), encoder.readout()]
    assert {id(p) for part in parts for p in part.parameters()} == {
        id(p) for p in encoder.parameters()}


def test_soft_sharing_architectures_are_registered_with_descriptions() -> None:
    for name in ["mtan", "mmoe", "cross_stitch"]:
        assert name in ARCHITECTURES and ARCHITECTURES[name][1]


# ----------------------------------------------------------------------------- shapes, counts
@pytest.mark.parametrize("architecture", ARCHS)
def test_lenet_forward_gives_one_logit_row_per_example_and_class(architecture: str) -> None:
    model = build(architecture)
    outputs = model(batch(3)[0])
    assert {name: tuple(o.shape) for name, o in outputs.items()} == {
        "top_left": (3, 10), "bottom_right": (3, 5)}


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ARCHS)
def test_resnet18_forward_and_backward_shapes(architecture: str) -> None:
    model = build(architecture, "resnet18")
    x, y = batch(2)
    outputs = model(x)
    assert {name: tuple(o.shape) for name, o in outputs.items()} == {
        "top_left": (2, 10), "bottom_right": (2, 5)}
    sum(task_losses(model, model.encode(x), y)).backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())


def lenet_counts(num_classes: list[int]) -> dict[str, int]:
    """Parameter counts written out layer by layer (LeNet on 1x36x36, no hidden head layers)."""
    conv1, conv2 = 1 * 10 * 9 * 9 + 10, 10 * 20 * 5 * 5 + 20

    def fc(width: int) -> int:  # 20x5x5 = 500 flattened features -> width
        return 500 * width + width

    heads = sum(50 * c + c for c in num_classes)
    tasks = len(num_classes)
    # per task: mask 1 (conv 10->10, BN, conv 10->10, BN), carrier (3x3 conv 10->20, BN),
    # mask 2 (conv 40->20, BN, conv 20->20, BN) and an own fc readout
    attention = (100 + 20 + 100 + 20) + (10 * 20 * 9 + 40) + (800 + 40 + 400 + 40) + fc(50)
    experts, gate = 4 * (conv2 + fc(50)), 10 * 14 * 14 * 4 + 4
    return {
        "hps": conv1 + conv2 + fc(50) + heads,
        "mtan": conv1 + conv2 + tasks * attention + heads,
        "mmoe": conv1 + experts + tasks * gate + heads,
        "cross_stitch": tasks * (conv1 + conv2 + fc(50)) + 3 * tasks * tasks + heads,
        "branched": conv1 + conv2 + tasks * fc(50) + heads,  # the fc layer one per task
    }


@pytest.mark.parametrize("architecture", ARCHS)
def test_lenet_parameter_counts_match_the_design(architecture: str) -> None:
    assert count(build(architecture)) == lenet_counts([10, 5])[architecture]


@pytest.mark.slow
def test_resnet18_parameter_counts_match_the_design() -> None:
    resnet = count(ResNet18Encoder(1))
    layer4 = count(ResNet18Encoder(1).net.layer4)
    assert count(build("mtan", "resnet18").shared_parameters()) == resnet
    mmoe = build("mmoe", "resnet18", num_experts=2, expert_dim=16)
    assert count(mmoe.shared_parameters()) == (resnet - layer4) + 2 * (layer4 + 512 * 16 + 16)
    cross = build("cross_stitch", "resnet18")
    assert count(cross.shared_parameters()) == 2 * resnet + 3 * 2 * 2  # 3 inner units
    branched = build("branched", "resnet18", shared_stages=3)
    assert count(branched.shared_parameters()) == resnet - layer4
    assert count(branched.task_parameters()) == 2 * layer4 + (512 * 10 + 10) + (512 * 5 + 5)


# -------------------------------------------------------------------------- parameter roles
@pytest.mark.parametrize("architecture", ARCHS)
def test_shared_and_task_parameters_partition_all_parameters(architecture: str) -> None:
    model = build(architecture)
    shared = {id(p) for p in model.shared_parameters()}
    task = {id(p) for p in model.task_parameters()}
    assert shared and task and not shared & task
    assert shared | task == {id(p) for p in model.parameters()}
    assert len(shared) == len(model.shared_parameters())  # no parameter listed twice


@pytest.mark.parametrize("architecture", ARCHS)
def test_every_task_loss_reaches_every_shared_parameter(architecture: str) -> None:
    model = build(architecture)
    x, y = batch()
    shared = model.shared_parameters()
    for loss in task_losses(model, model.encode(x), y):
        grads = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
        assert all(reached(g) for g in grads)


@pytest.mark.parametrize("architecture", ARCHS)
def test_every_task_parameter_serves_exactly_one_task(architecture: str) -> None:
    model = build(architecture)
    x, y = batch()
    task_params = model.task_parameters()
    users = torch.zeros(len(task_params), dtype=torch.long)
    for loss in task_losses(model, model.encode(x), y):
        grads = torch.autograd.grad(loss, task_params, retain_graph=True, allow_unused=True)
        users += torch.tensor([reached(g) for g in grads])
    assert users.tolist() == [1] * len(task_params)


@pytest.mark.parametrize("architecture", ARCHS)
def test_backpropagating_the_representation_trains_exactly_the_shared_part(
        architecture: str) -> None:
    model = build(architecture)
    features = as_tuple(model.encode(batch()[0]))
    torch.autograd.backward(features, [torch.randn_like(f) for f in features])
    assert all(reached(p.grad) for p in model.shared_parameters())
    assert all(p.grad is None for p in model.task_parameters())


@pytest.mark.parametrize("architecture", ARCHS)
def test_representation_gradients_backpropagated_equal_the_parameter_gradients(
        architecture: str) -> None:
    """What representation methods do: d loss_t / d features, then backward through encode.

    For MTAN and MMoE the representation holds maps computed from one another; the gradient
    w.r.t. each must be the partial one through decode, or this path counts twice.
    """
    model = build(architecture)
    x, y = batch()
    shared = model.shared_parameters()
    encoded = model.encode(x)
    features = as_tuple(encoded)
    leaves = tuple(f.detach().requires_grad_() for f in features)
    direct_losses = task_losses(model, encoded, y)
    leaf_losses = task_losses(model, leaves if len(leaves) > 1 else leaves[0], y)
    for direct, via_leaves in zip(direct_losses, leaf_losses, strict=True):
        expected = torch.autograd.grad(direct, shared, retain_graph=True)
        for loss, representation in ((direct, features), (via_leaves, leaves)):
            grads = torch.autograd.grad(loss, representation, retain_graph=True)
            got = torch.autograd.grad(features, shared, grads, retain_graph=True)
            for e, g in zip(expected, got, strict=True):
                torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------- architecture specifics
def test_cross_stitch_mixing_starts_near_identity_for_three_tasks() -> None:
    tasks = [*TASKS, Task("rotation", 4, auxiliary=True)]
    model = build("cross_stitch", tasks=tasks)
    assert isinstance(model, CrossStitchNetwork)
    units = [m for m in model.modules() if isinstance(m, CrossStitchUnit)]
    expected = torch.tensor([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]])
    assert len(units) == 2  # after each LeNet conv stage; the fc one is the final mix
    for unit in units:
        torch.testing.assert_close(unit.weight.detach(), expected)
    for i, task in enumerate(tasks):
        torch.testing.assert_close(model.final_mix[task.name].detach(), expected[i])
    assert tuple(model.encode(batch(2)[0]).shape) == (2, 3, 50)


def test_linear_stitch_units_start_computing_what_scalar_units_compute() -> None:
    """model.stitch: linear replaces each alpha[t, s] by alpha[t, s] x identity (C x C): the
    same network at initialisation, for maps and for the fc features, in either layout."""
    scalar, linear = build("cross_stitch"), build("cross_stitch", stitch="linear")
    x = batch(3)[0]
    expected = scalar(x)
    for layout in (torch.contiguous_format, torch.channels_last):
        got = linear.to(memory_format=layout)(x.contiguous(memory_format=layout))
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6)
    # units after LeNet's two stages (10 and 20 channels), the final mix per task over 2 x 50
    assert [tuple(u.weight.shape) for u in linear.units] == [(20, 20), (40, 40)]
    assert {k: tuple(v.shape) for k, v in linear.final_mix.items()} == {
        "top_left": (50, 100), "bottom_right": (50, 100)}
    assert count(linear) - count(scalar) == (400 + 1600 + 2 * 5000) - (4 + 4 + 4)


def test_linear_stitch_units_learn_cross_channel_mixing() -> None:
    model = build("cross_stitch", stitch="linear")
    x, y = batch(8)
    sum(task_losses(model, model.encode(x), y)).backward()
    first = model.units[0].weight.grad
    assert first is not None
    off_diagonal = first[:10, :10] - torch.diag(torch.diagonal(first[:10, :10]))
    assert bool(off_diagonal.abs().sum() > 0)  # not confined to alpha x identity


def test_stitch_applies_to_cross_stitch_only() -> None:
    with pytest.raises(ValueError, match=r"model\.stitch: 'matrix': one of \('scalar', 'linear'\)"):
        CrossStitchNetwork(lambda: LeNetEncoder(1), TASKS, [], stitch="matrix")


def test_cross_stitch_rejects_a_single_task() -> None:
    with pytest.raises(ValueError, match=r"model\.architecture: cross_stitch .* two tasks"):
        build("cross_stitch", tasks=TASKS[:1])


@pytest.mark.parametrize(("backbone", "stages"), [("lenet", 2), ("resnet18", 4)])
def test_mtan_masks_lie_in_the_open_unit_interval_and_match_each_stage(
        backbone: str, stages: int) -> None:
    model = build("mtan", backbone)
    assert isinstance(model, MultiTaskAttentionNetwork)
    features = model.encode(batch(2)[0])
    stage_outputs = [p for _, p in model.stage_maps(features)]
    for masks in model.attention_masks(features).values():
        assert len(masks) == stages
        for mask, gated in zip(masks, stage_outputs, strict=True):
            assert mask.shape == gated.shape
            assert bool((mask > 0).all()) and bool((mask < 1).all())


@pytest.mark.parametrize(("shared_stages", "shared_convs"), [(None, 2), (2, 2), (1, 1)])
def test_branched_lenet_shares_the_first_stages_and_gives_each_task_the_rest(
        shared_stages: int | None, shared_convs: int) -> None:
    model = build("branched", shared_stages=shared_stages)
    assert isinstance(model, BranchedNetwork)
    convs = [m for m in model.trunk.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [10, 20][:shared_convs]
    for branch in model.branches.values():
        own = [m for m in branch.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        assert [type(m) for m in own] == [nn.Conv2d] * (2 - shared_convs) + [nn.Linear]
    maps = model.encode(batch(2)[0])  # the trunk's feature maps: the shared representation
    assert tuple(maps.shape) == ((2, 20, 5, 5) if shared_convs == 2 else (2, 10, 14, 14))
    left, right = (next(m for m in b.modules() if isinstance(m, nn.Linear))
                   for b in model.branches.values())
    assert not torch.equal(left.weight, right.weight)  # each from its own initial weights


def test_branched_refuses_more_shared_stages_than_the_backbone_has() -> None:
    with pytest.raises(ValueError, match=r"model\.shared_stages: 3: lenet backbone has 2 "):
        build("branched", shared_stages=3)


def test_mmoe_gates_are_softmax_weights_over_the_configured_experts() -> None:
    model = build("mmoe", num_experts=3, expert_dim=16)
    assert isinstance(model, MultiGateMixtureOfExperts)
    features = model.encode(batch(4)[0])
    assert tuple(features[1].shape) == (4, 3, 16)
    for weights in model.gate_weights(features).values():
        assert tuple(weights.shape) == (4, 3) and bool((weights > 0).all())
        torch.testing.assert_close(weights.sum(dim=1), torch.ones(4))


# ---------------------------------------------------------------------------- optimisation
@pytest.mark.parametrize("architecture", ARCHS)
def test_adam_steps_on_a_fixed_batch_lower_every_task_loss(architecture: str) -> None:
    model = build(architecture)
    x, y = batch(32)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = [loss.item() for loss in task_losses(model, model.encode(x), y)]
    for _ in range(25):
        optimizer.zero_grad()
        sum(task_losses(model, model.encode(x), y)).backward()
        optimizer.step()
    after = [loss.item() for loss in task_losses(model, model.encode(x), y)]
    assert all(a < 0.9 * b for a, b in zip(after, before, strict=True)), (before, after)
