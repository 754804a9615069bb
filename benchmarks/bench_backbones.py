"""Training throughput (images per second) of each shared encoder: hard sharing with two
10-class heads, Adam, one forward + backward + step per batch on random data.

CPU: MultiFashion's 1x36x36 input, batch 16 (Inception v3 resized inside the network to its
75-pixel minimum), a few seconds per backbone. CUDA, when present: the same, and each
backbone at its ImageNet size (224; 299 for Inception) on 3 channels, batch 64, bf16 autocast.
The input size is in each row's name and in its ``input``/``network_input`` fields.
On a CPU that other work shares, set ``OMP_NUM_THREADS`` to the cores actually free: more
threads than free cores makes every step wait on the busiest one (measured here: ResNet-18
13 images/s with 2 threads against 25 with 1 while a third process held a core).
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import row
from multitask.config import BACKBONES, ModelConfig
from multitask.models import build_model
from multitask.tasks import Task

TASKS = [Task("left", 10), Task("right", 10)]
SECONDS = 3.0  # measuring time per backbone and setting, after one warm-up step
IMAGENET_SIZE = {"inception_v3": 299}  # others 224


def images_per_second(backbone: str, channels: int, size: int, resize_to: int | None,
                      batch: int, device: torch.device) -> float:
    """Training steps for about :data:`SECONDS` after one warm-up step; images per second."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=backbone, resize_to=resize_to), TASKS, channels,
                        size).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, channels, size, size, device=device)
    y = torch.randint(0, 10, (batch, len(TASKS)), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            outputs = model(x)
            loss = sum(F.cross_entropy(outputs[t.name].float(), y[:, i])
                       for i, t in enumerate(TASKS))
        loss.backward()
        optimizer.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step()
    sync()
    steps, start = 0, time.perf_counter()
    while steps < 2 or time.perf_counter() - start < SECONDS:
        step()
        steps += 1
    sync()
    return steps * batch / (time.perf_counter() - start)


def measure(backbone: str, channels: int, size: int, resize_to: int | None, batch: int,
            device: torch.device, where: str) -> dict[str, Any]:
    rate = images_per_second(backbone, channels, size, resize_to, batch, device)
    network = resize_to or size
    shape = f"{channels}x{size}x{size}" + (f" resized to {network}" if resize_to else "")
    return row(f"train images/s, {backbone}, {shape}, {where}", rate, "images/s",
               backbone=backbone, input=[channels, size, size], network_input=network,
               batch=batch, device=where)


def run() -> list[dict[str, Any]]:
    rows = []
    cpu = f"CPU ({torch.get_num_threads()} threads)"
    for backbone in BACKBONES:
        resize_to = 75 if backbone == "inception_v3" else None
        rows.append(measure(backbone, 1, 36, resize_to, 16, torch.device("cpu"), cpu))
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        name = torch.cuda.get_device_name(0)
        for backbone in BACKBONES:
            resize_to = 75 if backbone == "inception_v3" else None
            rows.append(measure(backbone, 1, 36, resize_to, 256, gpu, name))
            if backbone != "lenet":
                size = IMAGENET_SIZE.get(backbone, 224)
                rows.append(measure(backbone, 3, size, None, 64, gpu, name))
    return rows
