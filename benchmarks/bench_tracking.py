"""Tracking overhead: the same training with MLflow tracking on and off, as a ratio.

"On" is what the train stage pays for MLflow while it trains: opening the run (params, tags,
git and device provenance), every epoch's per-task metrics and gradient diagnostics sent as
asynchronous batches, system-metrics sampling, and the flush and end of the run. "Off" is the
same code with ``tracking.enabled: false`` (every call a no-op). Both train the same model from
the same seed on the same synthetic two-task data set, on an SQLite store that already exists
(as after the first run: creating the tables is a one-off). The workload is the sample
pipeline's training (7,200 composites, 5 epochs, ~9 s on two idle cores): the shortest training
the project runs, so the hardest case for a mostly fixed cost. The default pipeline trains 15
times as many images per epoch for twice the epochs (several minutes per run on this machine,
too long to repeat here), so its ratio is smaller still.

The headline is CPU time (``time.process_time``: every thread of the process, MLflow's logging
threads included), the wall-time ratio is reported beside it. On a shared two-core machine both
grow with other processes' load (the same training took 9 to 35 s here; PyTorch's worker
threads spin while they wait), so runs alternate off/on and each ratio compares the fastest run
of each side, the one least disturbed. The cost per run is mostly fixed (opening and closing
the run), so the ratio shrinks as training grows. Logging the model (a torch.export of the
network) is reported apart.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from multitask import tracking
from multitask.config import Params, TrackingConfig, load_params
from multitask.data import processed
from multitask.device import select_device
from multitask.training import session
from multitask.training.data import ProcessedData
from multitask.weighting import build_weighting

ROOT = Path(__file__).resolve().parents[1]
# (name, training images, epochs, gradient diagnostics every N steps), as in sample/params.yaml
WORKLOADS = [("sample training (sample/params.yaml)", 7_200, 5, 20)]
REPEATS = 3
TARGET_RATIO = 1.02


@dataclass
class Timing:
    """One training: wall and CPU seconds (model logging excluded), and model logging's wall."""

    wall_s: float
    cpu_s: float
    model_logging_s: float


def _synthetic_data(folder: Path, train_images: int, rng: np.random.Generator) -> None:
    """A processed data set in the layout ``multitask preprocess`` writes (random pixels)."""
    sizes = {"train": train_images, "val": max(500, train_images // 9), "test": 500}
    arrays = {}
    for split, count in sizes.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, size=(count, 36, 36), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 10, size=(count, 2))
    processed.write(folder, arrays, {
        "dataset": "multifashion", "splits": sizes, "image_size": 36, "channels": 1,
        "pixel_mean": 0.5, "pixel_std": 0.29, "sha256": "0" * 64,
        "tasks": [{"name": name, "classes": 10, "class_names": [str(i) for i in range(10)]}
                  for name in ("left", "right")],
    })


def _params(tracked: bool, epochs: int, diagnostics_every: int) -> Params:
    params = load_params(ROOT / "params.yaml")
    train = params.train.model_copy(update={"epochs": epochs, "device": "cpu",
                                            "diagnostics_every": diagnostics_every})
    tracking_config = TrackingConfig(enabled=tracked, experiment="bench-tracking")
    return params.model_copy(update={"train": train, "tracking": tracking_config})


def _timed_training(data: ProcessedData, params: Params) -> Timing:
    """One training inside ``stage_run``, the model logged after it (timed apart)."""
    tasks = processed.tasks(data.meta)
    wall, cpu = time.perf_counter(), time.process_time()  # process_time: all its threads
    with tracking.stage_run(params, "train") as run:
        fitted = session.fit(params, data, tasks, build_weighting("equal", len(tasks)),
                             on_epoch=run.log_epoch, progress=False)
        trained_wall, trained_cpu = time.perf_counter(), time.process_time()
        run.log_model(fitted.model, data.splits["test"].images[:4].numpy(),
                      [t.name for t in tasks])
        logged_wall, logged_cpu = time.perf_counter(), time.process_time()
    end_wall, end_cpu = time.perf_counter(), time.process_time()
    return Timing(wall_s=(trained_wall - wall) + (end_wall - logged_wall),
                  cpu_s=(trained_cpu - cpu) + (end_cpu - logged_cpu),
                  model_logging_s=logged_wall - trained_wall)


def _workload(folder: Path, name: str, train_images: int, epochs: int,
              diagnostics_every: int) -> list[dict[str, Any]]:
    data_dir = folder / f"data-{train_images}"
    data_dir.mkdir()
    _synthetic_data(data_dir, train_images, np.random.default_rng(0))
    data = ProcessedData(data_dir, select_device("cpu"))
    off: list[Timing] = []
    on: list[Timing] = []
    for _ in range(REPEATS):  # alternating, so that other processes' load hits both
        off.append(_timed_training(data, _params(False, epochs, diagnostics_every)))
        on.append(_timed_training(data, _params(True, epochs, diagnostics_every)))
    cpu_ratio = min(t.cpu_s for t in on) / min(t.cpu_s for t in off)
    wall_ratio = min(t.wall_s for t in on) / min(t.wall_s for t in off)
    workload = (f"{train_images} images x {epochs} epoch(s), LeNet HPS, CPU, diagnostics every "
                f"{diagnostics_every} steps, {REPEATS} runs each way")
    return [
        {"name": f"tracking overhead, {name} (CPU time on / off)",
         "value": round(cpu_ratio, 4), "unit": "ratio", "target": TARGET_RATIO,
         "ok": cpu_ratio <= TARGET_RATIO, "workload": workload,
         "cpu_s_off": [round(t.cpu_s, 2) for t in off],
         "cpu_s_on": [round(t.cpu_s, 2) for t in on]},
        {"name": f"tracking overhead, {name} (wall time on / off; noisy on a shared machine)",
         "value": round(wall_ratio, 4), "unit": "ratio",
         "wall_s_off": [round(t.wall_s, 2) for t in off],
         "wall_s_on": [round(t.wall_s, 2) for t in on]},
        {"name": f"tracking cost per training run, {name} (CPU)",
         "value": round(min(t.cpu_s for t in on) - min(t.cpu_s for t in off), 3), "unit": "s"},
        {"name": f"logging the model after training, {name} (torch.export + artifacts)",
         "value": round(statistics.median(t.model_logging_s for t in on), 2), "unit": "s"},
    ]


def run() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as tmp:
        folder = Path(tmp)
        previous = os.environ.get(tracking.URI_ENV)
        os.environ[tracking.URI_ENV] = f"sqlite:///{folder / 'mlflow.db'}"
        try:
            with tracking.stage_run(_params(True, 1, 0), "warm-up"):
                pass  # creates the tables and the experiment: not part of any training
            for workload in WORKLOADS:
                rows += _workload(folder, *workload)
        finally:
            if previous is None:
                os.environ.pop(tracking.URI_ENV, None)
            else:
                os.environ[tracking.URI_ENV] = previous
    return rows
