"""The optimiser and the per-epoch learning-rate schedule of ``train.optimizer``/``schedule``."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from multitask.config import OptimizerConfig, ScheduleConfig


def build_optimizer(parameters: Iterable[nn.Parameter], config: OptimizerConfig
                    ) -> torch.optim.Optimizer:
    params = list(parameters)
    if config.name == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    cls = torch.optim.Adam if config.name == "adam" else torch.optim.AdamW
    return cls(params, lr=config.lr, weight_decay=config.weight_decay)


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
