"""The batched ensemble formulations compute what the single-task networks compute one by one:
the same logits, the same gradients and, with one Adam over their parameters, the same training
steps (to float32 rounding), and refuse members they cannot batch; ``train.ensemble`` chooses
the batched baselines where it should, and each member stops early on its own. (The stage,
trained: tests/integration/test_batched_baselines.py.)"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from multitask import keys
from multitask.config import EarlyStoppingConfig, ModelConfig, OptimizerConfig, parse_params
from multitask.models import build_model
from multitask.models.ensemble import GroupedLeNet, StackedMembers, member_losses
from multitask.models.hps import HardParameterSharing
from multitask.tasks import Task
from multitask.training.ensemble import MemberSelections, member_history, trains_together
from multitask.training.optimization import build_optimizer
from multitask.training.selection import STOPPED_EARLY

MEMBERS, BATCH = 3, 8
TOLERANCE = {"rtol": 1e-4, "atol": 1e-6}
CONFIGS = {
    "default": ModelConfig(),
    "wide+hidden+dropout": ModelConfig(width=2, head_hidden=[16],
                                       dropout={"encoder": 0.3, "heads": 0.2}),
}


def members(config: ModelConfig) -> list[HardParameterSharing]:
    """Single-task networks, each from its own seed (so a member mix-up would show)."""
    networks = []
    for t in range(MEMBERS):
        torch.manual_seed(t)
        network = build_model(config, [Task(f"task{t}", 10)], 1, 36)
        assert isinstance(network, HardParameterSharing)
        networks.append(network.eval())  # eval: dropout off, so the outputs are comparable
    return networks


def batch() -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(1)
    return (torch.randn(BATCH, 1, 36, 36, generator=generator),
            torch.randint(0, 10, (MEMBERS, BATCH), generator=generator))


def one_by_one(networks: list[HardParameterSharing], x: Tensor, targets: Tensor
               ) -> tuple[Tensor, list[dict[str, Tensor]]]:
    """Each member's logits (stacked) and its parameter gradients, the sequential way."""
    logits, grads = [], []
    for network, target in zip(networks, targets, strict=True):
        network.zero_grad(set_to_none=True)
        out = network(x)[network.task_names[0]]
        F.cross_entropy(out, target, label_smoothing=0.1).backward()
        logits.append(out.detach())
        grads.append({name: p.grad for name, p in network.named_parameters()})
    return torch.stack(logits), grads


def member_gradient(grads: dict[str, Tensor], suffix: str) -> Tensor:
    return next(g for name, g in grads.items() if name.endswith(suffix))


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last],
                         ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("config", CONFIGS.values(), ids=list(CONFIGS))
def test_grouped_lenet_gives_each_members_logits_and_gradients(
        config: ModelConfig, memory_format: torch.memory_format) -> None:
    networks = members(config)
    x, targets = batch()
    expected, grads = one_by_one(networks, x, targets)
    grouped = GroupedLeNet(networks).eval().to(memory_format=memory_format)
    logits = grouped.logits(x.contiguous(memory_format=memory_format))
    torch.testing.assert_close(logits, expected, **TOLERANCE)
    member_losses(logits, targets, label_smoothing=0.1).sum().backward()
    for t in range(MEMBERS):
        pairs = [(grouped.conv1.weight.grad.chunk(MEMBERS)[t], "features.0.weight"),
                 (grouped.conv1.bias.grad.chunk(MEMBERS)[t], "features.0.bias"),
                 (grouped.conv2.weight.grad.chunk(MEMBERS)[t], "features.3.weight"),
                 (grouped.conv2.bias.grad.chunk(MEMBERS)[t], "features.3.bias"),
                 (grouped.fc.weight.grad[t], "fc.0.weight"),
                 (grouped.fc.bias.grad[t], "fc.0.bias"),
                 (grouped.head[-1].weight.grad[t], f"heads.task{t}.{len(grouped.head) - 1}.weight")]
        for batched, suffix in pairs:
            torch.testing.assert_close(batched, member_gradient(grads[t], suffix), **TOLERANCE)


@pytest.mark.parametrize("config", CONFIGS.values(), ids=list(CONFIGS))
def test_torch_func_members_give_each_members_logits_and_gradients(config: ModelConfig) -> None:
    networks = members(config)
    x, targets = batch()
    expected, grads = one_by_one(networks, x, targets)
    stacked = StackedMembers([copy.deepcopy(n) for n in networks])
    logits = stacked(x)
    torch.testing.assert_close(logits, expected, **TOLERANCE)
    member_losses(logits, targets, label_smoothing=0.1).sum().backward()
    for t, network in enumerate(networks):
        names = [name for name, _ in network.named_parameters()]
        stacked_grads = [p.grad[t] for p in stacked.parameters.values()]
        assert len(names) == len(stacked_grads)  # same order: encoder, then the head
        for name, batched in zip(names, stacked_grads, strict=True):
            torch.testing.assert_close(batched, grads[t][name], **TOLERANCE)


def test_one_adam_over_the_grouped_network_trains_each_member_as_its_own_adam() -> None:
    """Adam (with weight decay) is elementwise: three steps of the wide network, split back,
    give the networks three sequential steps give."""
    networks = members(CONFIGS["default"])
    x, targets = batch()
    optimizer_config = OptimizerConfig(lr=1e-2, weight_decay=1e-3)
    sequential = [copy.deepcopy(n) for n in networks]
    optimizers = [build_optimizer(n.parameters(), optimizer_config) for n in sequential]
    grouped = GroupedLeNet(networks).eval()
    optimizer = build_optimizer(grouped.parameters(), optimizer_config)
    for _ in range(3):
        for network, member_optimizer, target in zip(sequential, optimizers, targets,
                                                     strict=True):
            member_optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(network(x)[network.task_names[0]], target).backward()
            member_optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        member_losses(grouped.logits(x), targets).sum().backward()
        optimizer.step()
    grouped.split_into(networks)
    for trained, expected in zip(networks, sequential, strict=True):
        for (name, value), reference in zip(trained.state_dict().items(),
                                            expected.state_dict().values(), strict=True):
            torch.testing.assert_close(value, reference, rtol=1e-4, atol=1e-5, msg=name)


def test_split_into_round_trips_the_members_weights() -> None:
    networks = members(CONFIGS["wide+hidden+dropout"])
    originals = [copy.deepcopy(n.state_dict()) for n in networks]
    fresh = members(CONFIGS["wide+hidden+dropout"])
    for network in fresh:
        for parameter in network.parameters():
            parameter.data.zero_()
    GroupedLeNet(networks).split_into(fresh)
    for network, original in zip(fresh, originals, strict=True):
        for name, value in network.state_dict().items():
            assert torch.equal(value, original[name]), name


def test_members_that_cannot_be_batched_are_refused_by_name() -> None:
    two_heads = build_model(ModelConfig(), [Task("left", 10), Task("right", 10)], 1, 36)
    with pytest.raises(ValueError, match="one head"):
        GroupedLeNet([two_heads])
    resnet = build_model(ModelConfig(backbone="resnet18"), [Task("left", 10)], 1, 36)
    with pytest.raises(ValueError, match="backbone resnet18: only LeNet"):
        GroupedLeNet([resnet])


# ------------------------------------------------------------------- train.ensemble's choice
def test_auto_batches_lenet_baselines_on_the_cpu_only(caplog: pytest.LogCaptureFixture) -> None:
    tasks = [Task("left", 10), Task("right", 10)]
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    auto = parse_params({"train": {"ensemble": "auto"}})
    assert trains_together(auto, tasks, cpu)
    with caplog.at_level(logging.INFO, logger="multitask.training.ensemble"):
        assert not trains_together(auto, tasks, cuda)
        assert not trains_together(auto, tasks[:1], cpu)
        resnet = parse_params({"model": {"backbone": "resnet18"}})
        assert not trains_together(resnet, tasks, cpu)
        assert not trains_together(auto, [Task("left", 10), Task("right", 4)], cpu)
    said = caplog.text
    assert "on cuda the batched step is not measured faster" in said
    assert "one task" in said and "model.backbone: resnet18 has no grouped formulation" in said
    assert "different numbers of classes" in said
    assert not trains_together(parse_params({"train": {"ensemble": "sequential"}}), tasks, cpu)
    assert trains_together(parse_params({"train": {"ensemble": "batched"}}), tasks, cuda)


def test_batched_where_it_cannot_be_is_an_error_naming_the_param() -> None:
    params = parse_params({"model": {"backbone": "resnet18"}, "train": {"ensemble": "batched"}},
                          "experiment/params.yaml")
    with pytest.raises(ValueError, match=r"experiment/params\.yaml: train\.ensemble: batched: "
                                         r"model\.backbone: resnet18 has no grouped"):
        trains_together(params, [Task("left", 10), Task("right", 10)], torch.device("cpu"))


# ------------------------------------------------------------------ early stopping per member
def test_each_member_keeps_its_own_best_epoch_and_stops_on_its_own_patience() -> None:
    """Member 0 peaks at epoch 1 and stops after epoch 2; member 1 peaks at epoch 2 and stops
    after epoch 3, when the run stops. Each network ends with its own best epoch's weights
    (told apart by a bias set to the epoch number), also after a checkpoint round trip."""
    networks = members(CONFIGS["default"])[:2]
    grouped = GroupedLeNet(networks)
    selections = MemberSelections(EarlyStoppingConfig(patience=1), networks)
    accuracies = [(0.5, 0.5), (0.4, 0.6), (0.9, 0.55)]  # member 0's 0.9 comes after its stop
    history = []
    for epoch, (first, second) in enumerate(accuracies, start=1):
        with torch.no_grad():
            grouped.conv1.bias.fill_(float(epoch))
        record = {keys.EPOCH: epoch, keys.task_metric(keys.VAL, "task0", keys.ACCURACY): first,
                  keys.task_metric(keys.VAL, "task1", keys.ACCURACY): second,
                  keys.task_metric(keys.TRAIN, "task1", keys.LOSS): 1.0, keys.weight("task0"): 1.0}
        assert selections.observe(epoch, record, grouped) == {}
        history.append(record)
        assert selections.stopped == (epoch == 3)
    assert selections.epochs_run == [2, 3]

    resumed = MemberSelections(EarlyStoppingConfig(patience=1), networks)
    resumed.load_state_dict(selections.state_dict())
    resumed.restore(grouped)
    for network, kept in zip(networks, (1.0, 2.0), strict=True):
        assert torch.equal(network.encoder.features[0].bias, torch.full((10,), kept))
    summaries = [member.summary(epochs) for member, epochs
                 in zip(resumed.members, resumed.epochs_run, strict=True)]
    assert [(s["kept_epoch"], s["epochs_run"], s["stopped"]) for s in summaries] == [
        (1, 2, STOPPED_EARLY), (2, 3, STOPPED_EARLY)]
    own = member_history(history[:2], Task("task0", 10), resumed.members[0])
    score = keys.aggregate(keys.VAL, keys.MEAN_ACCURACY)  # a single task's: its accuracy
    assert own == [{keys.EPOCH: 1, keys.task_metric(keys.VAL, "task0", keys.ACCURACY): 0.5,
                    keys.weight("task0"): 1.0, score: 0.5},
                   {keys.EPOCH: 2, keys.task_metric(keys.VAL, "task0", keys.ACCURACY): 0.4,
                    keys.weight("task0"): 1.0, score: 0.4}]
