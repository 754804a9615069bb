"""The trainer with regularisation on real (sample) composites: the defaults change nothing,
early stopping keeps the best validation epoch, and an interrupted regularised run resumes to
the result of an uninterrupted one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from multitask.config import ModelConfig, TrainConfig, parse_params
from multitask.data.processed import tasks as tasks_from_meta
from multitask.models import build_model
from multitask.tasks import Task
from multitask.training import trainer as trainer_module
from multitask.training.data import ProcessedData
from multitask.training.metrics import evaluate
from multitask.training.selection import STOPPED_EARLY
from multitask.training.trainer import Trainer
from multitask.weighting import build_weighting

TWO_TASKS = [Task("left", 10), Task("right", 10)]  # MultiFashion's, as the stage reads them


@pytest.fixture(scope="module")
def processed(sample_composites: Callable[..., Path]) -> Path:
    return sample_composites(4000, 500)


def make_trainer(processed: Path, model: ModelConfig, config: TrainConfig,
                 **options: Any) -> Trainer:
    data = ProcessedData(processed, torch.device("cpu"))
    tasks = tasks_from_meta(data.meta)
    torch.manual_seed(0)
    network = build_model(model, tasks, 1, data.image_size)
    return Trainer(network, tasks, build_weighting("equal", len(tasks), {}), data, config,
                   progress=False, **options)


def without_time(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in history]


SMALL = {"epochs": 2, "batch_size": 128, "diagnostics_every": 0, "data_fraction": 0.3}


def test_the_defaults_train_exactly_as_without_the_keys(processed: Path) -> None:
    """Params without any regularisation key and params spelling out their defaults give the
    same history and weights: no dropout layer, no smoothing, no draw from the generator."""
    small = SMALL | {"epochs": 1, "data_fraction": 0.2}
    absent = parse_params({"train": small})
    spelt = parse_params({
        "model": {"dropout": {"encoder": 0.0, "heads": 0.0}},
        "train": {**small, "label_smoothing": 0.0,
                  "augment": {"shift": 0, "flip": False, "crop": 0},
                  "early_stopping": {"patience": None, "select": "mean_accuracy"}}})
    runs = []
    for params in (absent, spelt):
        trainer = make_trainer(processed, params.model, params.train)
        assert trainer.selection is None and trainer.augment is None
        history = trainer.fit()
        runs.append((without_time(history), trainer.model.state_dict(),
                     trainer.generator.get_state()))
    (history_a, state_a, generator_a), (history_b, state_b, generator_b) = runs
    assert history_a == history_b
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert torch.equal(generator_a, generator_b)
    assert not any("selection" in k or "mean_accuracy" in k for k in history_a[0])


def test_early_stopping_keeps_the_best_epoch_and_stops_after_patience(processed: Path,
                                                                       tmp_path: Path) -> None:
    """After epoch 2 the weights are scrambled, so epoch 3 validates worse: with patience 1
    the run stops there and the network holds epoch 2's weights, whose validation metrics
    are the ones epoch 2 recorded. Resumed from its last checkpoint, the run stays stopped
    and holds the same weights."""
    config = TrainConfig(**SMALL | {"epochs": 6},
                         early_stopping={"patience": 1})  # type: ignore[arg-type]
    checkpoint = tmp_path / "train.pt"
    trainer = make_trainer(processed, ModelConfig(), config, checkpoint_path=checkpoint)

    def scramble(epoch: int, record: dict[str, float]) -> None:
        if epoch == 2:
            noise = torch.Generator().manual_seed(0)
            with torch.no_grad():
                for parameter in trainer.model.parameters():
                    parameter.add_(torch.randn(parameter.shape, generator=noise))

    trainer.on_epoch = scramble
    history = trainer.fit()
    assert len(history) == 3
    scores = [r["val/mean_accuracy"] for r in history]
    assert scores[2] < scores[1]
    assert trainer.selection is not None
    assert trainer.selection.summary(len(history))["kept_epoch"] == 2
    assert trainer.selection.summary(len(history))["stopped"] == STOPPED_EARLY
    kept = evaluate(trainer.model, trainer.data, "val", trainer.tasks).metrics
    for name in ("left", "right"):
        assert kept[name]["accuracy"] == history[1][f"val/accuracy/{name}"]
        assert kept[name]["loss"] == history[1][f"val/loss/{name}"]

    again = make_trainer(processed, ModelConfig(), config, checkpoint_path=checkpoint)
    assert again.try_resume() and again.start_epoch == 3
    assert without_time(again.fit()) == without_time(history)  # nothing more trained
    state, expected = again.model.state_dict(), trainer.model.state_dict()
    assert all(torch.equal(state[k], expected[k]) for k in expected)


@pytest.mark.slow
def test_a_regularised_run_resumes_after_an_interruption_to_the_same_result(
        processed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dropout, label smoothing, the shift augmentation and early stopping all draw or keep
    state; a run killed after epoch 2 and resumed from its checkpoint ends as the
    uninterrupted run: same history, same kept epoch, same weights."""
    model = ModelConfig(dropout={"encoder": 0.2, "heads": 0.1})  # type: ignore[arg-type]
    config = TrainConfig(**SMALL | {"epochs": 4}, label_smoothing=0.1,
                         augment={"shift": 2},  # type: ignore[arg-type]
                         early_stopping={"patience": 3})  # type: ignore[arg-type]
    whole = make_trainer(processed, model, config)
    whole_history = whole.fit()

    checkpoint = tmp_path / "train.pt"
    monkeypatch.setenv(trainer_module.FAIL_AFTER_EPOCH_ENV, "2")
    with pytest.raises(RuntimeError, match="injected failure"):
        make_trainer(processed, model, config, checkpoint_path=checkpoint).fit()
    monkeypatch.delenv(trainer_module.FAIL_AFTER_EPOCH_ENV)
    resumed = make_trainer(processed, model, config, checkpoint_path=checkpoint)
    assert resumed.try_resume() and resumed.start_epoch == 2
    history = resumed.fit()

    assert without_time(history) == without_time(whole_history)
    assert resumed.selection is not None and whole.selection is not None
    assert resumed.selection.summary(4) == whole.selection.summary(4)
    state, expected = resumed.model.state_dict(), whole.model.state_dict()
    assert all(torch.equal(state[k], expected[k]) for k in expected)


# ------------------------------------------------------- selection by Δm% through the stages
@pytest.mark.slow
def test_selection_by_delta_m_reads_the_baselines_validation_accuracies(
        processed: Path, tmp_path: Path,
        pipeline_folder: Callable[[Path, Path], Any]) -> None:
    """baselines records each task's kept validation accuracy; train scores its epochs by the
    validation Δm% against exactly those, and says which epoch it kept."""
    from multitask.io import read_json
    from multitask.training import stages

    layout = pipeline_folder(tmp_path, processed)
    params = parse_params({
        "train": {**SMALL, "epochs": 3, "weighting": "equal",
                  "early_stopping": {"patience": 1, "select": "delta_m"}},
        "tracking": {"enabled": False}})
    with pytest.raises(FileNotFoundError, match=r"baselines_info\.json: not found; "
                                                r"train\.early_stopping\.select: delta_m"):
        stages.validation_reference(params, layout, TWO_TASKS)
    stages.baselines(params, layout)
    info = read_json(layout.baselines_info)
    reference = stages.validation_reference(params, layout, TWO_TASKS)
    assert reference == {task: metrics["accuracy"] for task, metrics in info["validation"].items()}
    stages.train(params, layout)
    train = read_json(layout.train_json)
    kept = train["selection"]
    assert kept is not None and kept["select"] == "delta_m"
    history = {int(row["epoch"]): row for row in
               __import__("csv").DictReader(layout.history_csv.open())}
    row = history[int(kept["kept_epoch"])]
    expected = 100.0 * sum((float(row[f"val/accuracy/{t}"]) - b) / b
                           for t, b in reference.items()) / len(reference)
    assert float(row["val/delta_m_pct"]) == pytest.approx(expected, abs=1e-9)
    assert float(row["val/delta_m_pct"]) == max(float(r["val/delta_m_pct"])
                                                for r in history.values())


def test_an_old_baselines_report_is_named(processed: Path, tmp_path: Path,
                                          pipeline_folder: Callable[[Path, Path], Any]) -> None:
    from multitask.io import write_json
    from multitask.training import stages

    layout = pipeline_folder(tmp_path, processed)
    params = parse_params({"train": {"early_stopping": {"patience": 2, "select": "delta_m"}}})
    write_json(layout.baselines_info, {"backbone": "lenet"})
    with pytest.raises(ValueError, match=r"baselines_info\.json: no 'validation' metrics"):
        stages.validation_reference(params, layout, TWO_TASKS)
