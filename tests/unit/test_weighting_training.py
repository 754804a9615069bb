"""Every weighting method trains LeNet HPS on real MultiFashion-style composites.

One fixed batch of 64 two-item composites from ``data/sample/fashion-mnist`` (left item at the
top-left, right item at the bottom-right of a 36x36 canvas, overlap by pixel maximum; labels
left, right), 12 Adam steps the way the trainer runs them (``after_step`` for FAMO); every
task's loss on that batch must fall, and the method's state must survive a checkpoint. Also: the
task-specific parameters the gradient module finds are each architecture's ``task_parameters()``.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from multitask.config import ModelConfig
from multitask.data.idx import read_idx
from multitask.models import ARCHITECTURES, MultiTaskModel, build_model
from multitask.tasks import Task
from multitask.weighting import METHODS, StepContext, build_weighting
from multitask.weighting.gradients import decoder_leaves

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample" / "fashion-mnist"
TASKS = [Task(name="left", num_classes=10), Task(name="right", num_classes=10)]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """A model this small gains nothing from a second thread, and on a busy machine two
    threads wait for each other at every operation (several times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def batch() -> tuple[Tensor, Tensor]:
    images = torch.from_numpy(read_idx(SAMPLE / "train-images-idx3-ubyte.gz")[:128].copy())
    labels = torch.from_numpy(read_idx(SAMPLE / "train-labels-idx1-ubyte.gz")[:128].copy())
    canvas = torch.zeros(64, 36, 36, dtype=torch.uint8)
    canvas[:, :28, :28] = images[:64]
    canvas[:, 8:, 8:] = torch.maximum(canvas[:, 8:, 8:], images[64:])
    x = (canvas.float() / 255.0).unsqueeze(1)
    y = torch.stack([labels[:64], labels[64:]], dim=1).long()
    return x, y


def losses_of(model: MultiTaskModel, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    features = model.encode(x)
    outputs = model.decode(features)
    return torch.stack([F.cross_entropy(outputs[t.name], y[:, i])
                        for i, t in enumerate(TASKS)]), features


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_lowers_every_task_loss(name: str, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch
    torch.manual_seed(0)
    model = build_model(ModelConfig(), TASKS, 1, 36)
    method = build_weighting(name, 2, {"static": {"weights": [1.0, 1.0]}})
    optimizer = torch.optim.Adam([*model.parameters(), *method.parameters()], lr=2e-3)
    shared = model.shared_parameters()
    with torch.no_grad():
        before = losses_of(model, x, y)[0]
    for step in range(12):
        losses, features = losses_of(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        weights = method.backward(StepContext(losses, features, shared, step, 0))
        optimizer.step()
        if method.needs_losses_after_step:
            with torch.no_grad():
                method.after_step(losses_of(model, x, y)[0])
        assert weights.shape == (2,) and bool(torch.isfinite(weights).all())
    with torch.no_grad():
        after = losses_of(model, x, y)[0]
    assert bool((after < 0.95 * before).all()), f"{name}: {before.tolist()} -> {after.tolist()}"
    # The trainer checkpoints method.state_dict() and reloads it with weights_only=True.
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    restored = build_weighting(name, 2, {"static": {"weights": [1.0, 1.0]}})
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert repr(restored.state_dict()) == repr(method.state_dict())


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_decoder_leaves_are_the_task_parameters(architecture: str,
                                                batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch
    model = build_model(ModelConfig(architecture=architecture), TASKS, 1, 36)
    losses, features = losses_of(model, x[:4], y[:4])
    found = {id(p) for p in decoder_leaves(losses, features)}
    assert found == {id(p) for p in model.task_parameters() if p.requires_grad}
