"""What trains and how fast: the optimiser and the per-epoch learning-rate schedule of
``train.optimizer``/``schedule``, and freezing the shared encoder
(``model.freeze_encoder_epochs``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from multitask.config import OptimizerConfig, ScheduleConfig
from multitask.models.base import MultiTaskModel


def build_optimizer(parameters: Iterable[nn.Parameter], config: OptimizerConfig, *,
                    encoder: Iterable[nn.Parameter] = (), encoder_lr_scale: float = 1.0
                    ) -> torch.optim.Optimizer:
    """``config``'s optimiser over ``parameters``; those also in ``encoder`` (the shared
    encoder) learn at ``lr x encoder_lr_scale`` in a second parameter group.

    The task-specific parameters stay group 0 (its learning rate is the one reported); with a
    scale of 1 there is one group, as without the option. Schedulers scale every group alike,
    so the ratio holds all along.
    """
    params = list(parameters)
    groups: list[dict[str, Any]] = [{"params": params}]
    if encoder_lr_scale != 1.0:
        ids = {id(p) for p in encoder}
        groups = [{"params": [p for p in params if id(p) not in ids]},
                  {"params": [p for p in params if id(p) in ids],
                   "lr": config.lr * encoder_lr_scale}]
    if config.name == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    cls = torch.optim.Adam if config.name == "adam" else torch.optim.AdamW
    return cls(groups, lr=config.lr, weight_decay=config.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, config: ScheduleConfig, epochs: int
                    ) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-epoch learning rate, from torch's schedulers: an optional linear warm-up (factor
    ``(e + 1) / (w + 1)`` in epoch ``e < w``), then constant, step (``gamma`` every
    ``step_size`` epochs) or cosine (to 0 over the remaining epochs), chained by ``SequentialLR``.
    """
    schedulers = torch.optim.lr_scheduler
    warmup = config.warmup_epochs
    main: torch.optim.lr_scheduler.LRScheduler
    if config.name == "step":
        main = schedulers.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    elif config.name == "cosine":
        main = schedulers.CosineAnnealingLR(optimizer, T_max=max(1, epochs - warmup))
    else:
        main = schedulers.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if warmup == 0:
        return main
    ramp = schedulers.LinearLR(optimizer, start_factor=1 / (warmup + 1),
                               end_factor=warmup / (warmup + 1), total_iters=max(1, warmup - 1))
    return schedulers.SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def freeze_shared(model: MultiTaskModel, frozen: bool) -> None:
    """Freeze (or release) ``model``'s shared parameters: no gradient, and the batch norms made
    of them keep their running statistics (eval mode; ``model.train()`` releases them)."""
    shared = model.shared_parameters()
    for parameter in shared:
        parameter.requires_grad_(not frozen)
    if not frozen:
        return
    ids = {id(p) for p in shared}
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and own and all(
                id(p) in ids for p in own):
            module.eval()
