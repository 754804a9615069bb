"""GPU paths: device choice, data resident on the GPU, bf16 autocast training, resume, every
weighting method and architecture training there, the baselines stage (one after another and
as a grouped ensemble).

Skipped cleanly without CUDA; benchmarks/gpu_check.sh runs them on a GPU machine. The bodies of
the method, architecture and baselines tests were run on the CPU when they were written (the
trainer picks the CPU there), which is where their accuracy bound comes from.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from multitask.config import ModelConfig, TrainConfig
from multitask.data.processed import tasks as tasks_from_meta
from multitask.device import autocast, select_device
from multitask.layout import Layout
from multitask.models import ARCHITECTURES, build_model
from multitask.training.data import ProcessedData
from multitask.training.trainer import Trainer
from multitask.weighting import METHODS, build_weighting

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_cuda_request_without_a_gpu_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(RuntimeError, match=r"train\.device: 'cuda' requested but no CUDA device"):
        select_device("cuda")
    assert select_device("auto").type == "cpu"


@pytest.fixture(scope="module")
def processed(sample_composites: Callable[..., Path]) -> Path:
    return sample_composites(4000, 500)


def trainer(processed: Path, checkpoint: Path | None = None, epochs: int = 2,
            method: str = "equal", model: ModelConfig | None = None) -> Trainer:
    device = select_device("auto")
    data = ProcessedData(processed, device)
    tasks = tasks_from_meta(data.meta)
    torch.manual_seed(0)
    network = build_model(model or ModelConfig(), tasks, 1, data.image_size)
    weighting = build_weighting(method, 2, {"static": {"weights": [1.0, 1.0]}})
    return Trainer(network, tasks, weighting, data,
                   TrainConfig(epochs=epochs, batch_size=256, diagnostics_every=0),
                   checkpoint_path=checkpoint, fingerprint="cuda-test", progress=False)


def assert_learned(history: list[dict[str, Any]]) -> None:
    """Finite losses, and well above chance (0.1) on both tasks after three epochs (on the CPU
    every method and architecture reached 0.34 to 0.54 on this data)."""
    last = history[-1]
    for key in ("train/loss/left", "train/loss/right", "val/loss/left", "val/loss/right"):
        assert math.isfinite(last[key]), (key, last[key])
    assert min(last["val/accuracy/left"], last["val/accuracy/right"]) > 0.25, last


@pytest.mark.cuda
@needs_cuda
def test_auto_picks_the_gpu_and_keeps_data_there(processed: Path) -> None:
    run = trainer(processed)
    assert run.device.type == "cuda"
    assert run.data.splits["train"].images.is_cuda
    assert run.data.splits["train"].images.dtype == torch.uint8
    assert all(p.is_cuda for p in run.model.parameters())


@pytest.mark.cuda
@needs_cuda
def test_bf16_autocast_training_learns(processed: Path) -> None:
    run = trainer(processed)
    x, _ = next(run.data.batches("train", 8))
    with autocast(run.device):
        assert run.model.encode(x).dtype == torch.bfloat16
    history = run.fit()
    assert history[-1]["val/accuracy/left"] > 0.4
    assert history[-1]["train/loss/right"] < history[0]["train/loss/right"]


@pytest.mark.cuda
@needs_cuda
def test_gpu_checkpoint_resumes(processed: Path, tmp_path: Path) -> None:
    first = trainer(processed, tmp_path / "ckpt.pt", epochs=1)
    first.fit()
    resumed = trainer(processed, tmp_path / "ckpt.pt", epochs=2)
    assert resumed.try_resume() and resumed.start_epoch == 1
    assert len(resumed.fit()) == 2


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_weighting_method_trains_on_the_gpu(name: str, processed: Path) -> None:
    """bf16 autocast forward, the method's own arithmetic (Gramians, solvers, learned
    weights) on GPU tensors: no device mismatch, finite losses, learning."""
    run = trainer(processed, epochs=3, method=name)
    assert all(p.is_cuda for p in run.method.parameters())
    assert_learned(run.fit())


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_every_architecture_trains_on_the_gpu(architecture: str, processed: Path) -> None:
    assert_learned(trainer(processed, epochs=3,
                           model=ModelConfig(architecture=architecture)).fit())


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("ensemble", ["sequential", "batched"])
def test_the_baselines_stage_trains_on_the_gpu(
        ensemble: str, processed: Path, tmp_path: Path,
        pipeline_folder: Callable[[Path, Path], Layout]) -> None:
    """The single-task networks, one after another or as one grouped network (train.ensemble),
    with the data resident on the GPU."""
    from multitask.config import parse_params
    from multitask.training import stages

    params = parse_params({"train": {"epochs": 3, "ensemble": ensemble},
                           "tracking": {"enabled": False}})
    metrics = stages.baselines(params, pipeline_folder(tmp_path, processed))
    assert set(metrics) == {"left", "right"}
    assert min(m["accuracy"] for m in metrics.values()) > 0.25, metrics
