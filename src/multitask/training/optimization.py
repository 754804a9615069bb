"""The optimiser and the per-epoch learning-rate schedule of ``train.optimizer``/``schedule``."""

from __future__ import annotations

import math
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
    """A per-epoch learning-rate factor: optional linear warm-up, then constant/step/cosine."""
    warmup = config.warmup_epochs

    def factor(epoch: int) -> float:
        if epoch < warmup:
            return (epoch + 1) / (warmup + 1)
        done = epoch - warmup
        if config.name == "step":
            return config.gamma ** (done // config.step_size)
        if config.name == "cosine":
            span = max(1, epochs - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * done / span))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
