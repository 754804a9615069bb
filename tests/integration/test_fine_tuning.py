"""Fine-tuning controls on real (sample) data: a frozen encoder, its own learning rate, and the
rotation-only step that self-supervised pretraining takes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from multitask.config import ModelConfig, TrainConfig
from multitask.data.processed import tasks as tasks_from_meta
from multitask.models import build_model
from multitask.tasks import ROTATION_TASK
from multitask.training.data import ProcessedData
from multitask.training.trainer import Trainer, random_turns, task_losses
from multitask.weighting import build_weighting


@pytest.fixture(scope="module")
def data(sample_composites: Callable[..., Path]) -> ProcessedData:
    return ProcessedData(sample_composites(4000, 500), torch.device("cpu"))


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    return {k for k, v in module.state_dict().items() if not torch.equal(v, before[k])}


@pytest.mark.parametrize("weighting", ["equal", "mgda"])
def test_frozen_epochs_train_the_heads_only_then_the_encoder(data: ProcessedData,
                                                             weighting: str) -> None:
    """ResNet-18 has batch norms: while frozen their running statistics must not move either."""
    tasks = tasks_from_meta(data.meta)
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="resnet18"), tasks, 1, data.image_size)
    trainer = Trainer(model, tasks, build_weighting(weighting, len(tasks)), data,
                      TrainConfig(epochs=2, batch_size=32, diagnostics_every=1,
                                  data_fraction=0.02),
                      progress=False, freeze_encoder_epochs=1)
    encoder, heads = snapshot(model.encoder), snapshot(model.heads)
    first = trainer.train_epoch(0)
    assert changed(encoder, model.encoder) == set(), "a frozen encoder changed"
    assert changed(heads, model.heads) == set(heads), "every head trains while frozen"
    assert all(p.grad is None for p in model.encoder.parameters())
    assert [first[f"weight/{t.name}"] for t in tasks] == [1.0, 1.0]
    assert not any(k.startswith("grad/") for k in first), "no gradient diagnostics while frozen"
    trainer.train_epoch(1)
    moved = changed(encoder, model.encoder)
    assert any(k.endswith("running_mean") for k in moved), "batch-norm statistics resume"
    assert any(k.endswith("conv1.weight") for k in moved), "the encoder trains once released"
    assert all(p.requires_grad for p in model.encoder.parameters())


def test_the_encoder_learns_at_its_own_rate(data: ProcessedData) -> None:
    tasks = tasks_from_meta(data.meta)
    model = build_model(ModelConfig(), tasks, 1, data.image_size)
    config = TrainConfig(epochs=3, batch_size=64, encoder_lr_scale=0.1)
    trainer = Trainer(model, tasks, build_weighting("uncertainty", len(tasks)), data, config,
                      progress=False)
    heads_group, encoder_group = trainer.optimizer.param_groups
    assert {id(p) for p in encoder_group["params"]} == {
        id(p) for p in model.shared_parameters()}
    assert {id(p) for p in heads_group["params"]} == {
        id(p) for p in [*model.task_parameters(), *trainer.method.parameters()]}
    assert encoder_group["lr"] == pytest.approx(0.1 * heads_group["lr"])
    trainer.optimizer.step()  # no gradients: nothing moves; keeps the order torch expects
    trainer.scheduler.step()
    assert encoder_group["lr"] == pytest.approx(0.1 * heads_group["lr"]), "schedule keeps it"


def test_without_a_scale_there_is_one_parameter_group(data: ProcessedData) -> None:
    """The default optimiser is the one runs had before the option: results stay identical."""
    tasks = tasks_from_meta(data.meta)
    model = build_model(ModelConfig(), tasks, 1, data.image_size)
    trainer = Trainer(model, tasks, build_weighting("equal", len(tasks)), data,
                      TrainConfig(epochs=1), progress=False)
    assert len(trainer.optimizer.param_groups) == 1


def test_rotation_alone_sees_only_the_rotated_copies(data: ProcessedData) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(), [ROTATION_TASK], 1, data.image_size)
    x, y = next(data.batches("train", 16))
    turns = random_turns(16, torch.Generator().manual_seed(0), x.device)
    losses, features = task_losses(model, [ROTATION_TASK], [None], x, y, turns)
    assert features.shape[0] == 16, "no unrotated half is encoded for nothing"
    from multitask.training.trainer import rotate_batch

    expected = torch.nn.functional.cross_entropy(model(rotate_batch(x, turns))["rotation"], turns)
    assert losses.item() == pytest.approx(expected.item(), rel=1e-6)
