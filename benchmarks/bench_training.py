"""Training throughput (images per second) of the default model (params.yaml's backbone and
architecture: LeNet cross-stitch), equal weighting, batch 256, on the full MultiFashion training
split. On the CPU always; on CUDA (bf16 autocast, data resident on the GPU) when a GPU is
present."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from benchmarks.common import ROOT, default_processed, row
from multitask import keys
from multitask.config import load_params
from multitask.data import processed
from multitask.training import session
from multitask.training.data import ProcessedData
from multitask.weighting import build_weighting


def throughput(folder: Path, device: torch.device, fraction: float | None, epochs: int,
               batch: int = 256) -> float:
    """Median over epochs of training images per second (validation excluded) of the train
    stage's trainer on the processed data in ``folder`` (all of it unless ``fraction``)."""
    params = load_params(ROOT / "params.yaml")
    data = ProcessedData(folder, device, splits=("train", "val"))
    tasks = processed.tasks(data.meta)
    train = params.train.model_copy(update={"diagnostics_every": 0, "batch_size": batch})
    history = session.fit(params, data, tasks, build_weighting("equal", len(tasks)),
                          train=train, epochs=epochs, data_fraction=fraction,
                          progress=False).history
    rates = sorted(r[keys.TRAIN_IMAGES_PER_S] for r in history)
    return rates[len(rates) // 2]


def run() -> list[dict[str, Any]]:
    params = load_params(ROOT / "params.yaml")
    rows = []
    with default_processed() as folder:
        cpu = throughput(folder, torch.device("cpu"), fraction=0.5, epochs=3)
        model = f"{params.model.backbone} {params.model.architecture}, equal, batch 256"
        rows.append(row(f"train images/s, CPU ({torch.get_num_threads()} threads)", cpu,
                        "images/s", extra_note=model))
        if torch.cuda.is_available():
            gpu = throughput(folder, torch.device("cuda"), fraction=1.0, epochs=3)
            rows.append(row(f"train images/s, {torch.cuda.get_device_name(0)}", gpu, "images/s",
                            extra_note=f"{model}, bf16 autocast"))
    return rows
