"""``train.ensemble: batched`` through the real baselines stage on sample composites: the
baselines trained together are the sequential ones (same weights to float rounding after a
few steps, test accuracies within a stated tolerance after whole epochs), saved the same way;
a batched run killed after an epoch resumes to the uninterrupted run's result; and each member
stops early on its own."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from multitask.config import Params, parse_params
from multitask.layout import Layout
from multitask.training import session, stages
from multitask.training import trainer as trainer_module
from multitask.training.selection import STOPPED_EARLY

TASKS = ("left", "right")
# Weights after nine steps, absolute: most agree to 1e-7; Adam divides a gradient by its own
# size, so a weight whose gradient is nearly 0 (a channel ReLU leaves dark) turns rounding noise
# into up to a step of lr = 2e-3 (measured: 4e-5). Batches in another order would differ by
# about lr x steps = 2e-2.
WEIGHT_TOLERANCE = 2e-4
# Test accuracy, absolute: a grouped convolution rounds otherwise than two small ones, and over
# two epochs (about 60 Adam steps) that rounding grows to ~1e-3 in the weights, enough to flip
# a few of the 500 test images.
ACCURACY_TOLERANCE = 0.02


@pytest.fixture(scope="module")
def processed(sample_composites: Callable[..., Path]) -> Path:
    return sample_composites(4000, 500)


def baselines_params(ensemble: str, model: dict[str, Any] | None = None, **train: Any
                     ) -> Params:
    """Small, regularised runs: every key the batched trainer must honour is away from its
    default (weight decay, label smoothing, augmentation, cosine schedule)."""
    return parse_params({
        "model": model or {},
        "train": {"epochs": 2, "batch_size": 128, "diagnostics_every": 0, "ensemble": ensemble,
                  "label_smoothing": 0.1, "augment": {"shift": 2},
                  "optimizer": {"name": "adam", "lr": 0.002, "weight_decay": 1e-4}} | train,
        "tracking": {"enabled": False}})


def run_baselines(params: Params, folder: Path, processed: Path,
                  pipeline_folder: Callable[[Path, Path], Layout]
                  ) -> tuple[Layout, dict[str, Any], dict[str, dict[str, torch.Tensor]]]:
    layout = pipeline_folder(folder, processed)
    stages.baselines(params, layout)
    weights = {task: session.load_network(layout.baseline_model(task))[0].state_dict()
               for task in TASKS}
    return layout, json.loads(layout.baselines_info.read_text()), weights


FEW_STEPS = {  # nine steps in all
    "regularised": ({}, {"epochs": 1, "data_fraction": 0.3}),
    "frozen encoder, then a scaled encoder lr": (
        {"freeze_encoder_epochs": 1}, {"epochs": 2, "data_fraction": 0.15,
                                       "encoder_lr_scale": 0.5}),
}


@pytest.mark.slow
@pytest.mark.parametrize(("model", "train"), FEW_STEPS.values(), ids=list(FEW_STEPS))
def test_a_few_batched_steps_train_the_sequential_weights(
        processed: Path, tmp_path: Path, pipeline_folder: Callable[[Path, Path], Layout],
        model: dict[str, Any], train: dict[str, Any]) -> None:
    """The same batches, augmentation, schedule, weight decay, smoothing, freezing and
    encoder learning rate give each member the weights its sequential run gets, to float
    rounding; the saved networks have the same keys."""
    runs = {mode: run_baselines(baselines_params(mode, model, **train),
                                tmp_path / mode, processed, pipeline_folder)
            for mode in ("sequential", "batched")}
    (_, sequential_info, sequential), (layout, batched_info, batched) = runs.values()
    assert (sequential_info["ensemble"], batched_info["ensemble"]) == ("sequential", "batched")
    for task in TASKS:
        assert batched[task].keys() == sequential[task].keys()
        for name, value in batched[task].items():
            torch.testing.assert_close(value, sequential[task][name], rtol=1e-3,
                                       atol=WEIGHT_TOLERANCE, msg=f"{task}: {name}")
    assert not layout.checkpoint(stages.BATCHED_CHECKPOINT).exists()


@pytest.mark.slow
def test_batched_baselines_score_as_the_sequential_ones(
        processed: Path, tmp_path: Path, pipeline_folder: Callable[[Path, Path], Layout]) -> None:
    scores = {}
    for mode in ("sequential", "batched"):
        layout, _, _ = run_baselines(baselines_params(mode), tmp_path / mode, processed,
                                     pipeline_folder)
        scores[mode] = json.loads(layout.baselines_json.read_text())["tasks"]
    for task in TASKS:
        assert scores["batched"][task]["accuracy"] == pytest.approx(
            scores["sequential"][task]["accuracy"], abs=ACCURACY_TOLERANCE)


@pytest.mark.slow
def test_a_killed_batched_run_resumes_to_the_uninterrupted_result(
        processed: Path, tmp_path: Path, pipeline_folder: Callable[[Path, Path], Layout],
        monkeypatch: pytest.MonkeyPatch) -> None:
    params = baselines_params("batched", epochs=3, data_fraction=0.3,
                              early_stopping={"patience": 2})
    whole_layout, whole_info, whole = run_baselines(params, tmp_path / "whole", processed,
                                                    pipeline_folder)
    layout = pipeline_folder(tmp_path / "killed", processed)
    monkeypatch.setenv(trainer_module.FAIL_AFTER_EPOCH_ENV, "2")
    with pytest.raises(RuntimeError, match="injected failure"):
        stages.baselines(params, layout)
    assert layout.checkpoint(stages.BATCHED_CHECKPOINT).is_file()
    assert not layout.baseline_model("left").exists()
    monkeypatch.delenv(trainer_module.FAIL_AFTER_EPOCH_ENV)
    _, info, resumed = run_baselines(params, tmp_path / "killed", processed, pipeline_folder)
    for task in TASKS:
        for name, value in resumed[task].items():
            assert torch.equal(value, whole[task][name]), f"{task}: {name}"
    assert info["validation"] == whole_info["validation"]
    assert info["selection"] == whole_info["selection"]
    assert (json.loads(layout.baselines_json.read_text())
            == json.loads(whole_layout.baselines_json.read_text()))
    assert not layout.checkpoint(stages.BATCHED_CHECKPOINT).exists()


@pytest.mark.slow
def test_each_member_stops_early_on_its_own(
        processed: Path, tmp_path: Path, pipeline_folder: Callable[[Path, Path], Layout]) -> None:
    """Patience 1 and a learning rate at which one task learns for a few epochs and the other
    collapses to chance at once: the members stop after different epochs, each keeps its own
    best epoch (its saved network scores that epoch's validation accuracy), and each stops
    where its sequential run stops."""
    from multitask.training.metrics import evaluate

    runs = {}
    for mode in ("sequential", "batched"):
        params = baselines_params(mode, epochs=8, data_fraction=0.3, label_smoothing=0.0,
                                  augment={"shift": 0}, early_stopping={"patience": 1},
                                  optimizer={"name": "adam", "lr": 0.02})
        runs[mode] = run_baselines(params, tmp_path / mode, processed, pipeline_folder)
    layout, info, _ = runs["batched"]
    for task in TASKS:  # where each stopped (the scores differ by rounding: a few images)
        assert ({k: info["selection"][task][k] for k in ("kept_epoch", "epochs_run", "stopped")}
                == {k: runs["sequential"][1]["selection"][task][k]
                    for k in ("kept_epoch", "epochs_run", "stopped")})
    assert info["selection"]["left"]["epochs_run"] != info["selection"]["right"]["epochs_run"]
    data = session.load_data(params, layout, splits=("val",))
    for task in TASKS:
        selection = info["selection"][task]
        assert selection["stopped"] == STOPPED_EARLY
        assert selection["epochs_run"] == selection["kept_epoch"] + 1  # patience 1
        assert selection["best_score"] == info["validation"][task]["accuracy"]
        network, _ = session.load_network(layout.baseline_model(task))
        accuracy = evaluate(network, data, "val", network.tasks).metrics[task]["accuracy"]
        assert accuracy == pytest.approx(selection["best_score"], abs=2 / 400)  # 2 images


@pytest.mark.slow
def test_an_interrupted_sequential_run_resumes_without_training_the_finished_tasks(
        processed: Path, tmp_path: Path, pipeline_folder: Callable[[Path, Path], Layout],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One single-task network after another: interrupted while the second trains, the rerun
    takes the first from its checkpoint (no epoch trained again) and ends where an
    uninterrupted run ends."""
    params = baselines_params("sequential", data_fraction=0.3)
    _, whole_info, whole = run_baselines(params, tmp_path / "whole", processed, pipeline_folder)
    layout = pipeline_folder(tmp_path / "killed", processed)
    fit = session.fit

    def interrupted_at_right(*args: Any, **kwargs: Any) -> Any:
        if [task.name for task in args[2]] == ["right"]:
            raise RuntimeError("interrupted")
        return fit(*args, **kwargs)

    monkeypatch.setattr(session, "fit", interrupted_at_right)
    with pytest.raises(RuntimeError, match="interrupted"):
        stages.baselines(params, layout)
    monkeypatch.setattr(session, "fit", fit)
    trained: list[list[str]] = []
    train_epoch = trainer_module.Trainer.train_epoch

    def counted(self: trainer_module.Trainer, epoch: int) -> Any:
        trained.append([task.name for task in self.tasks])
        return train_epoch(self, epoch)

    monkeypatch.setattr(trainer_module.Trainer, "train_epoch", counted)
    _, info, resumed = run_baselines(params, tmp_path / "killed", processed, pipeline_folder)
    assert trained == [["right"], ["right"]]
    for task in TASKS:
        for name, value in resumed[task].items():
            assert torch.equal(value, whole[task][name]), f"{task}: {name}"
    assert info["validation"] == whole_info["validation"]
    assert not list(layout.checkpoints_dir.glob("*.pt"))
