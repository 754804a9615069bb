"""multitask.training.optimization: the learning-rate schedules against their formulas."""

from __future__ import annotations

import math

import pytest
import torch

from multitask.config import ScheduleConfig
from multitask.training.optimization import build_scheduler

EPOCHS, LR = 12, 0.1


def expected(config: ScheduleConfig, epoch: int) -> float:
    """The factor the docstring promises for ``epoch`` (0-based)."""
    warmup = config.warmup_epochs
    if epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    done = epoch - warmup
    if config.name == "step":
        return config.gamma ** (done // config.step_size)
    if config.name == "cosine":
        return 0.5 * (1 + math.cos(math.pi * done / max(1, EPOCHS - warmup)))
    return 1.0


def rates(scheduler: torch.optim.lr_scheduler.LRScheduler, optimizer: torch.optim.Optimizer,
          epochs: range) -> list[float]:
    out = []
    for _ in epochs:
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def fresh(config: ScheduleConfig) -> tuple[torch.optim.Optimizer,
                                           torch.optim.lr_scheduler.LRScheduler]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    return optimizer, build_scheduler(optimizer, config, EPOCHS)


@pytest.mark.parametrize("name", ["none", "step", "cosine"])
@pytest.mark.parametrize("warmup", [0, 1, 3])
def test_each_epoch_gets_the_documented_rate(name: str, warmup: int) -> None:
    config = ScheduleConfig(name=name, warmup_epochs=warmup, step_size=4, gamma=0.5)
    optimizer, scheduler = fresh(config)
    got = rates(scheduler, optimizer, range(EPOCHS))
    assert got == pytest.approx([LR * expected(config, e) for e in range(EPOCHS)], abs=1e-12)


@pytest.mark.parametrize("name", ["step", "cosine"])
def test_a_resumed_schedule_continues_where_it_stopped(name: str) -> None:
    config = ScheduleConfig(name=name, warmup_epochs=2, step_size=3, gamma=0.5)
    optimizer, scheduler = fresh(config)
    straight = rates(scheduler, optimizer, range(EPOCHS))
    optimizer, scheduler = fresh(config)
    first = rates(scheduler, optimizer, range(5))
    states = optimizer.state_dict(), scheduler.state_dict()
    optimizer, scheduler = fresh(config)
    optimizer.load_state_dict(states[0])
    scheduler.load_state_dict(states[1])
    assert first + rates(scheduler, optimizer, range(5, EPOCHS)) == pytest.approx(straight,
                                                                                abs=1e-12)


def test_the_encoder_group_keeps_its_ratio_under_every_schedule() -> None:
    from multitask.config import OptimizerConfig
    from multitask.training.optimization import build_optimizer

    encoder, head = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    optimizer = build_optimizer([encoder, head], OptimizerConfig(name="sgd", lr=LR),
                                encoder=[encoder], encoder_lr_scale=0.25)
    scheduler = build_scheduler(optimizer, ScheduleConfig(name="cosine", warmup_epochs=2), EPOCHS)
    for _ in range(EPOCHS - 1):
        heads_lr, encoder_lr = (g["lr"] for g in optimizer.param_groups)
        assert encoder_lr == pytest.approx(0.25 * heads_lr, abs=1e-15)
        optimizer.step()
        scheduler.step()


@pytest.mark.parametrize(("architecture", "scaled", "unscaled"), [
    ("hps", ["encoder."], ["heads."]),
    ("branched", ["trunk."], ["branches.", "heads."]),
    ("mmoe", ["stem.", "experts."], ["gates.", "towers."]),
])
def test_the_encoder_group_is_what_the_readme_says_per_architecture(
        architecture: str, scaled: list[str], unscaled: list[str]) -> None:
    """README, Fine-tuning controls: train.encoder_lr_scale (and model.freeze_encoder_epochs)
    act on the shared parameters: a branched network's per-task stages keep lr, and a
    ResNet's fresh CIFAR stem convolution is in the encoder group."""
    from multitask.config import ModelConfig, OptimizerConfig
    from multitask.models import build_model
    from multitask.tasks import Task
    from multitask.training.optimization import build_optimizer, freeze_shared

    config = ModelConfig(backbone="resnet18", architecture=architecture, stem="cifar",
                         **({"shared_stages": 3} if architecture == "branched" else {}))
    model = build_model(config, [Task("left", 10), Task("right", 10)], 1, 36)
    optimizer = build_optimizer(list(model.parameters()), OptimizerConfig(name="sgd", lr=LR),
                                encoder=model.shared_parameters(), encoder_lr_scale=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    heads_group, encoder_group = ({names[id(p)] for p in g["params"]}
                                  for g in optimizer.param_groups)
    assert encoder_group and all(n.startswith(tuple(scaled)) for n in encoder_group)
    assert heads_group and all(n.startswith(tuple(unscaled)) for n in heads_group)
    stem_conv = {"hps": "encoder.net.conv1.weight", "branched": "trunk.0.0.weight",
                 "mmoe": "stem.0.0.weight"}[architecture]
    assert stem_conv in encoder_group
    freeze_shared(model, True)
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == encoder_group
