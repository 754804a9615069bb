"""GPU paths: device choice, data resident on the GPU, bf16 autocast training, resume.

Skipped cleanly without CUDA; benchmarks/gpu_check.sh runs them on a GPU machine.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from multitask.config import ModelConfig, TrainConfig
from multitask.data.processed import tasks as tasks_from_meta
from multitask.device import autocast, select_device
from multitask.models import build_model
from multitask.training.data import ProcessedData
from multitask.training.trainer import Trainer
from multitask.weighting import build_weighting

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


def trainer(processed: Path, checkpoint: Path | None = None, epochs: int = 2) -> Trainer:
    device = select_device("auto")
    data = ProcessedData(processed, device)
    tasks = tasks_from_meta(data.meta)
    torch.manual_seed(0)
    model = build_model(ModelConfig(), tasks, 1, data.image_size)
    return Trainer(model, tasks, build_weighting("equal", 2), data,
                   TrainConfig(epochs=epochs, batch_size=256, diagnostics_every=0),
                   checkpoint_path=checkpoint, fingerprint="cuda-test", progress=False)


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
