"""Task kinds in training and evaluation (multiclass, binary, regression): heads, losses,
metrics, Δm% signs and early stopping on hand-computed cases, the processed data of each kind,
and the baselines, train and evaluate stages on a small synthetic data set with all three."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from multitask import keys
from multitask.config import EarlyStoppingConfig, ModelConfig, parse_params
from multitask.data import processed
from multitask.layout import Layout
from multitask.models import ARCHITECTURES, build_model
from multitask.models.base import MultiTaskModel
from multitask.tasks import Task
from multitask.training import stages
from multitask.training.data import ProcessedData, targets
from multitask.training.ensemble import trains_together, unbatchable
from multitask.training.metrics import (
    Evaluation,
    auroc,
    binary_f1,
    delta_m,
    evaluate,
    macro_f1,
)
from multitask.training.selection import Selection
from multitask.training.trainer import task_loss

SHAPE = Task("shape", 3, class_names=("top-left", "bottom-right", "bottom-left"))
BRIGHT = Task("bright", 2, kind="binary", class_names=("dim", "bright"))
SIDE = Task("side", kind="regression", target_mean=25.0, target_std=5.0, unit="px")
HUBER = Task("side", kind="regression", loss="huber", target_mean=10.0, target_std=2.0)


# --------------------------------------------------------------------------------- metrics
def test_macro_f1_counts_a_class_never_predicted_as_zero() -> None:
    # rows = actual. class 0: TP 2, 2 actual, 3 predicted -> 4 / 5 = 0.8; class 1: actual once,
    # never predicted -> 0; class 2: TP 1 of 1, predicted once -> 1. Mean (0.8 + 0 + 1) / 3.
    confusion = torch.tensor([[2, 0, 0], [1, 0, 0], [0, 0, 1]])
    assert macro_f1(confusion) == pytest.approx(0.6)


def test_macro_f1_leaves_out_a_class_absent_from_targets_and_predictions() -> None:
    confusion = torch.zeros(4, 4, dtype=torch.int64)
    confusion[:3, :3] = torch.tensor([[2, 0, 0], [1, 0, 0], [0, 0, 1]])
    assert macro_f1(confusion) == pytest.approx(0.6)


def test_binary_f1_is_the_positive_class_f1() -> None:
    # TP 4, FP 1 (actual 0 predicted 1), FN 2: 2 * 4 / (8 + 1 + 2) = 8 / 11
    assert binary_f1(torch.tensor([[3, 1], [2, 4]])) == pytest.approx(8 / 11)
    assert binary_f1(torch.tensor([[5, 0], [0, 0]])) == 0.0  # no positive anywhere


def test_auroc_counts_a_tie_as_one_half() -> None:
    # positives 0.4 and 0.8, negatives 0.1 and 0.4: pairs 1 + 0.5 (the tie) + 1 + 1 = 3.5 of 4
    scores = torch.tensor([0.1, 0.4, 0.4, 0.8])
    assert auroc(scores, torch.tensor([0.0, 0.0, 1.0, 1.0])) == pytest.approx(0.875)


def test_auroc_of_a_perfect_and_a_reversed_ranking() -> None:
    labels = torch.tensor([0, 1, 0, 1])
    assert auroc(torch.tensor([1.0, 3.0, 2.0, 4.0]), labels) == 1.0
    assert auroc(torch.tensor([4.0, 1.0, 3.0, 2.0]), labels) == 0.0


def test_auroc_of_one_class_is_undefined() -> None:
    assert math.isnan(auroc(torch.tensor([0.2, 0.9]), torch.tensor([1, 1])))


def test_a_metric_not_defined_on_a_split_is_warned_about_naming_task_and_report(
        caplog: pytest.LogCaptureFixture) -> None:
    one_class = Evaluation({"shape": {"accuracy": 0.9, "loss": 0.3},
                            "bright": {"accuracy": 1.0, "auroc": math.nan, "loss": 0.1}}, {})
    one_class.warn_undefined("test", "reports/metrics.json")
    assert caplog.messages == [
        "test split, task bright: auroc not defined (an AUROC needs both classes in the split; "
        "the validate stage's summary counts each split's classes); written as NaN in "
        "reports/metrics.json"]
    caplog.clear()
    Evaluation({"bright": {"accuracy": 0.5, "auroc": 0.5, "loss": 0.7}}, {}).warn_undefined(
        "test", "reports/metrics.json")
    assert caplog.messages == []


def test_delta_m_rewards_a_lower_mae_and_penalises_a_higher_one() -> None:
    higher = {"shape": True, "side": False}
    # accuracy (0.9 - 0.8) / 0.8 = +12.5%; MAE 1.5 against 2.0: -(1.5 - 2) / 2 = +25%; mean
    assert delta_m({"shape": 0.9, "side": 1.5}, {"shape": 0.8, "side": 2.0},
                   higher) == pytest.approx(18.75)
    # MAE 2.5 against 2.0: -25%, accuracy unchanged: mean -12.5%
    assert delta_m({"shape": 0.8, "side": 2.5}, {"shape": 0.8, "side": 2.0},
                   higher) == pytest.approx(-12.5)


def test_keys_know_mae_and_rmse_are_lower_is_better() -> None:
    assert [keys.higher_is_better(m) for m in ("accuracy", "macro_f1", "auroc", "f1")] == [
        True] * 4
    assert not keys.higher_is_better("mae") and not keys.higher_is_better("rmse")
    assert not keys.higher_is_better("loss") and not keys.higher_is_better("train_loss")


# ---------------------------------------------------------------------------------- losses
def test_multiclass_loss_is_cross_entropy_with_label_smoothing() -> None:
    logits, target = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0])
    assert torch.equal(task_loss(SHAPE, logits, target, 0.1),
                       F.cross_entropy(logits, target, label_smoothing=0.1))


def test_binary_loss_is_bce_with_logits() -> None:
    # logit 0 is p = 1/2: -ln(1/2) whatever the target
    loss = task_loss(BRIGHT, torch.tensor([[0.0], [0.0]]), torch.tensor([1.0, 0.0]))
    assert float(loss) == pytest.approx(math.log(2))


def test_binary_label_smoothing_moves_targets_towards_one_half() -> None:
    # ε = 0.2: target 1 -> 0.9; logit 2: -(0.9 ln σ(2) + 0.1 ln(1 - σ(2)))
    p = 1 / (1 + math.exp(-2.0))
    expected = -(0.9 * math.log(p) + 0.1 * math.log(1 - p))
    loss = task_loss(BRIGHT, torch.tensor([[2.0]]), torch.tensor([1.0]), label_smoothing=0.2)
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_regression_mse_is_on_the_standardised_target() -> None:
    # mean 25, std 5: targets 35 and 20 are 2 and -1; outputs 1.5 and -1: (0.25 + 0) / 2
    loss = task_loss(SIDE, torch.tensor([[1.5], [-1.0]]), torch.tensor([35.0, 20.0]))
    assert float(loss) == pytest.approx(0.125)


def test_regression_huber_is_quadratic_within_one_and_linear_beyond() -> None:
    # mean 10, std 2: targets 16 and 11 are 3 and 0.5; outputs 0 and 0:
    # |3| > 1: 3 - 1/2 = 2.5; |0.5| <= 1: 0.5^2 / 2 = 0.125; mean 1.3125
    loss = task_loss(HUBER, torch.tensor([[0.0], [0.0]]), torch.tensor([16.0, 11.0]))
    assert float(loss) == pytest.approx(1.3125)


def test_regression_ignores_label_smoothing() -> None:
    output, target = torch.tensor([[1.5]]), torch.tensor([35.0])
    assert torch.equal(task_loss(SIDE, output, target, 0.3), task_loss(SIDE, output, target))


def test_targets_come_in_each_loss_dtype() -> None:
    integer = torch.tensor([[2, 1]])
    assert targets(integer, 0, SHAPE) is not None
    assert targets(integer, 0, SHAPE).data_ptr() == integer[:, 0].data_ptr()  # no copy
    mixed = torch.tensor([[2.0, 1.0, 17.5]])
    assert targets(mixed, 0, SHAPE).dtype == torch.int64 and int(targets(mixed, 0, SHAPE)) == 2
    assert targets(mixed, 1, BRIGHT).dtype == torch.float32
    assert float(targets(mixed, 2, SIDE)) == 17.5


# ------------------------------------------------------------------------------- the heads
@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_each_head_is_as_wide_as_its_task_outputs(architecture: str) -> None:
    model = build_model(ModelConfig(architecture=architecture), [SHAPE, BRIGHT, SIDE], 3, 28)
    outputs = model.eval()(torch.zeros(2, 3, 28, 28))
    assert {name: tuple(value.shape) for name, value in outputs.items()} == {
        "shape": (2, 3), "bright": (2, 1), "side": (2, 1)}


# ------------------------------------------------------------------------ processed data
def write_folder(folder: Path, images: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                 tasks: list[dict[str, object]], pixel_mean: object = 0.0,
                 pixel_std: object = 1.0) -> None:
    arrays = {**{f"{s}_images": a for s, a in images.items()},
              **{f"{s}_labels": a for s, a in labels.items()}}
    first = next(iter(images.values()))
    meta = {"dataset": "synthetic", "image_size": first.shape[1],
            "channels": 1 if first.ndim == 3 else first.shape[3], "tasks": tasks,
            "splits": {s: len(a) for s, a in images.items()}, "pixel_mean": pixel_mean,
            "pixel_std": pixel_std, "seed": 0, "sha256": processed.content_hash(arrays)}
    processed.write(folder, arrays, meta)


ENTRIES = [{"name": "shape", "classes": 3, "class_names": list(SHAPE.class_names)},
           {"name": "bright", "classes": 2, "class_names": ["dim", "bright"], "kind": "binary"},
           {"name": "side", "kind": "regression", "loss": "mse", "target_mean": 25.0,
            "target_std": 5.0, "unit": "px"}]


def test_three_channel_images_are_normalised_per_channel_channels_last(tmp_path: Path) -> None:
    images = np.zeros((1, 2, 2, 3), np.uint8)
    images[0, 0, 1] = (51, 102, 255)  # 0.2, 0.4, 1.0 on the 0..1 scale
    labels = np.array([[0]], np.uint8)
    write_folder(tmp_path / "p", {"test": images}, {"test": labels}, ENTRIES[:1],
                 pixel_mean=[0.2, 0.0, 0.5], pixel_std=[0.1, 0.2, 0.25])
    data = ProcessedData(tmp_path / "p", torch.device("cpu"), splits=("test",))
    assert data.splits["test"].labels.dtype == torch.int64  # classification only
    x, _ = next(data.batches("test", 4))
    assert x.shape == (1, 3, 2, 2) and x.is_contiguous(memory_format=torch.channels_last)
    # pixel (0, 1): (0.2 - 0.2) / 0.1 = 0, (0.4 - 0) / 0.2 = 2, (1 - 0.5) / 0.25 = 2;
    # pixel (0, 0): (0 - 0.2) / 0.1 = -2, 0, (0 - 0.5) / 0.25 = -2
    torch.testing.assert_close(x[0, :, 0, 1], torch.tensor([0.0, 2.0, 2.0]))
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([-2.0, 0.0, -2.0]))
    served = data.served_example("test")  # raw pixels, channels first, as served models take
    assert served.shape == (1, 3, 2, 2) and served[0, :, 0, 1].tolist() == [51, 102, 255]


def test_a_per_channel_statistic_of_the_wrong_length_is_named(tmp_path: Path) -> None:
    images = np.zeros((1, 2, 2, 3), np.uint8)
    write_folder(tmp_path / "p", {"test": images}, {"test": np.zeros((1, 1), np.uint8)},
                 ENTRIES[:1], pixel_mean=[0.2, 0.1], pixel_std=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"meta\.json: pixel_mean has 2 values for 3 channel"):
        ProcessedData(tmp_path / "p", torch.device("cpu"), splits=("test",))


class PixelModel(MultiTaskModel):
    """Outputs read off each image's top-left pixel p (0..255): shape logits one-hot on
    p mod 3, the bright logit p - 22, the side output (p - 25) / 5, i.e. the value p."""

    name = "pixel"

    def __init__(self) -> None:
        super().__init__([SHAPE, BRIGHT, SIDE])
        self.unused = nn.Linear(1, 1)

    def encode(self, x: Tensor) -> Tensor:
        return torch.round(x[:, 0, 0, 0] * 255.0)

    def decode(self, features: Tensor | tuple[Tensor, ...]) -> dict[str, Tensor]:
        assert isinstance(features, Tensor)
        return {"shape": 5.0 * F.one_hot(features.long() % 3, 3).float(),
                "bright": (features - 22.0).unsqueeze(1),
                "side": ((features - 25.0) / 5.0).unsqueeze(1)}

    def shared_parameters(self) -> list[nn.Parameter]:
        return []


def test_evaluate_scores_each_kind_by_hand(tmp_path: Path) -> None:
    pixels = np.array([12, 20, 25, 40], np.uint8)
    images = np.zeros((4, 4, 4), np.uint8)
    images[:, 0, 0] = pixels
    labels = np.array([[0, 0, 10], [2, 1, 20], [2, 0, 30], [0, 1, 40]], np.float32)
    write_folder(tmp_path / "p", {"test": images}, {"test": labels}, ENTRIES)
    data = ProcessedData(tmp_path / "p", torch.device("cpu"), splits=("test",))
    assert data.splits["test"].labels.dtype == torch.float32  # a regression task
    result = evaluate(PixelModel(), data, "test", [SHAPE, BRIGHT, SIDE])
    shape, bright, side = (result.metrics[n] for n in ("shape", "bright", "side"))
    # shape: predicted p mod 3 = 0, 2, 1, 1 against 0, 2, 2, 0: two right. Per class F1:
    # 0: TP 1, actual 2, predicted 1 -> 2/3; 1: predicted twice, never actual -> 0;
    # 2: TP 1, actual 2, predicted 1 -> 2/3. Macro (4/3) / 3.
    assert shape[keys.ACCURACY] == 0.5
    assert shape[keys.MACRO_F1] == pytest.approx(4 / 9)
    assert result.confusion["shape"].tolist() == [[1, 1, 0], [0, 0, 0], [0, 1, 1]]
    # bright: logits -10, -2, 3, 18 -> decisions 0, 0, 1, 1 against 0, 1, 0, 1: TP 1, FP 1,
    # FN 1 -> F1 2 / 4; AUROC: positive -2 beats -10 only, 18 beats both: 3 of 4 pairs
    assert bright[keys.ACCURACY] == 0.5
    assert bright[keys.F1] == pytest.approx(0.5)
    assert bright[keys.AUROC] == pytest.approx(0.75)
    expected_bce = float(F.binary_cross_entropy_with_logits(
        torch.tensor([-10.0, -2.0, 3.0, 18.0]), torch.tensor([0.0, 1.0, 0.0, 1.0])))
    assert bright[keys.LOSS] == pytest.approx(expected_bce, rel=1e-6)
    assert result.confusion["bright"].tolist() == [[1, 1], [1, 1]]
    # side: values 12, 20, 25, 40 against 10, 20, 30, 40: errors 2, 0, -5, 0
    assert side[keys.MAE] == pytest.approx(7 / 4)
    assert side[keys.RMSE] == pytest.approx(math.sqrt(29 / 4))
    # standardised errors 0.4, 0, -1, 0: MSE (0.16 + 1) / 4
    assert side[keys.LOSS] == pytest.approx(0.29, rel=1e-6)
    assert set(shape) == {"accuracy", "macro_f1", "loss"}
    assert set(bright) == {"accuracy", "auroc", "f1", "loss"}
    assert set(side) == {"mae", "rmse", "loss"}
    assert "side" not in result.confusion
    torch.testing.assert_close(  # (value, target); the head's float32 output rounds
        result.predictions["side"],
        torch.tensor([[12, 10], [20, 20], [25, 30], [40, 40]], dtype=torch.float64))


# ------------------------------------------------------------------------- early stopping
def record(**values: float) -> dict[str, float]:
    """``record(accuracy_shape=0.5)`` -> ``{"val/accuracy/shape": 0.5}``."""
    out = {}
    for name, value in values.items():
        metric, task = name.rsplit("_", 1)
        out[keys.task_metric(keys.VAL, task, metric)] = value
    return out


def test_mean_accuracy_leaves_regression_tasks_out() -> None:
    selection = Selection(EarlyStoppingConfig(patience=1), [SHAPE, BRIGHT, SIDE])
    assert selection.key == "val/mean_accuracy"
    assert selection.score(record(accuracy_shape=0.6, accuracy_bright=0.8, mae_side=3.0)
                           ) == pytest.approx(0.7)


def test_mean_accuracy_without_a_classification_task_is_refused() -> None:
    other = Task("weight", kind="regression", target_std=2.0)
    with pytest.raises(ValueError, match=r"mean_accuracy: tasks \['side', 'weight'\] have no "
                                         r"classification task.*select delta_m"):
        Selection(EarlyStoppingConfig(patience=1), [SIDE, other])


def test_a_regression_baseline_keeps_its_lowest_validation_mae() -> None:
    selection = Selection(EarlyStoppingConfig(patience=2), [SIDE])
    model = nn.Linear(1, 1)
    for epoch, mae in enumerate([3.0, 2.0, 2.5, 2.2], start=1):
        selection.observe(epoch, record(mae_side=mae), model)
    assert selection.key == "val/mae/side"
    assert (selection.best_epoch, selection.best_score) == (2, 2.0)
    assert selection.stopped  # epochs 3 and 4 were no better


def test_delta_m_selection_uses_each_primary_metric_with_its_direction() -> None:
    reference = {"shape": 0.5, "bright": 0.8, "side": 4.0}
    selection = Selection(EarlyStoppingConfig(patience=1, select="delta_m"),
                          [SHAPE, BRIGHT, SIDE], reference)
    # shape +20%, bright 0%, side MAE 3 against 4: +25%: mean 15%
    assert selection.score(record(accuracy_shape=0.6, accuracy_bright=0.8, mae_side=3.0,
                                  rmse_side=9.0)) == pytest.approx(15.0)


def test_the_delta_m_reference_is_each_baselines_primary_validation_metric(tmp_path: Path
                                                                           ) -> None:
    layout = Layout(tmp_path)
    layout.baselines_info.parent.mkdir(parents=True)
    layout.baselines_info.write_text(json.dumps({"validation": {
        "shape": {"accuracy": 0.7, "macro_f1": 0.6, "loss": 0.9},
        "side": {"mae": 2.5, "rmse": 3.0, "loss": 0.4}}}))
    params = parse_params({"train": {"early_stopping": {"patience": 1, "select": "delta_m"}}})
    assert stages.validation_reference(params, layout, [SHAPE, SIDE]) == {"shape": 0.7,
                                                                          "side": 2.5}
    with pytest.raises(ValueError, match=r"no validation accuracy of task 'bright'.*rerun "
                                         r"multitask baselines"):
        stages.validation_reference(params, layout, [SHAPE, BRIGHT])


# ------------------------------------------------------------------- baselines together
def test_only_heads_of_one_width_and_loss_train_together(caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    auto = parse_params({"train": {"ensemble": "auto"}})
    cpu = torch.device("cpu")
    assert unbatchable(auto, [BRIGHT, Task("smiling", 2, kind="binary")]) is None
    assert "heads differ in width or loss" in str(unbatchable(auto, [SHAPE, BRIGHT]))
    assert "side: regression, 1 output(s), mse" in str(unbatchable(auto, [BRIGHT, SIDE]))
    assert not trains_together(auto, [SHAPE, BRIGHT, SIDE], cpu)
    batched = parse_params({"train": {"ensemble": "batched"}}, "p.yaml")
    with pytest.raises(ValueError, match=r"p\.yaml: train\.ensemble: batched: the tasks' heads "
                                         r"differ in width or loss"):
        trains_together(batched, [SHAPE, SIDE], cpu)


# ----------------------------------------------------- the stages, on all three kinds at once
def synthetic(folder: Path, channels: int, counts: tuple[int, int, int] = (96, 32, 32),
              size: int = 28) -> None:
    """Squares of side 6..19 px (``side``, regression) in one of three corners (``shape``,
    multiclass), bright or dim (``bright``, binary); float32 labels; 3 channels: the image
    and two darker copies."""
    rng = np.random.default_rng(0)
    images, labels = {}, {}
    for split, count in zip(processed.SPLITS, counts, strict=True):
        corner, bright, side = (rng.integers(0, 3, count), rng.integers(0, 2, count),
                                rng.integers(6, 20, count))
        canvas = np.zeros((count, size, size), np.uint8)
        for i in range(count):
            rows = slice(0, side[i]) if corner[i] == 0 else slice(size - side[i], size)
            cols = slice(size - side[i], size) if corner[i] == 1 else slice(0, side[i])
            canvas[i, rows, cols] = 250 if bright[i] else 120
        images[split] = (canvas if channels == 1
                         else np.stack([canvas, canvas // 2, canvas // 3], axis=-1))
        labels[split] = np.stack([corner, bright, side], axis=1).astype(np.float32)
    train_side = labels["train"][:, 2]
    pixels = images["train"] / 255.0
    entries = [dict(entry) for entry in ENTRIES]
    entries[2].update(target_mean=float(train_side.mean()), target_std=float(train_side.std()))
    axes = (0, 1, 2)
    write_folder(folder, images, labels, entries,
                 float(pixels.mean()) if channels == 1 else pixels.mean(axis=axes).tolist(),
                 float(pixels.std()) if channels == 1 else pixels.std(axis=axes).tolist())


@pytest.mark.slow
@pytest.mark.parametrize("channels", [1, 3])
def test_baselines_train_evaluate_on_three_kinds(tmp_path: Path, channels: int) -> None:
    layout = Layout(tmp_path)
    synthetic(layout.processed_dir, channels)
    params = parse_params({"train": {"epochs": 2, "batch_size": 32, "diagnostics_every": 0,
                                     "weighting": "equal", "label_smoothing": 0.1},
                           "tracking": {"enabled": False}})
    threads = torch.get_num_threads()
    try:  # the baselines at one CPU thread, the multi-task run at two: each report says so
        torch.set_num_threads(1)
        baselines = stages.baselines(params, layout)
        torch.set_num_threads(2)
        final = stages.train(params, layout)
    finally:
        torch.set_num_threads(threads)
    assert set(baselines["side"]) == {"mae", "rmse", "loss"}
    info = json.loads(layout.baselines_info.read_text())
    assert info["ensemble"] == "sequential"  # three heads of two widths and three losses
    assert set(info["validation"]["bright"]) == {"accuracy", "auroc", "f1", "loss"}
    assert info["threads"] == 1
    record = json.loads(layout.train_json.read_text())
    assert (record["threads"], record["baselines_threads"]) == (2, 1)
    assert {"val/macro_f1/shape", "val/auroc/bright", "val/mae/side", "train/loss/side"
            } <= set(final)
    metrics = stages.evaluate(params, layout)
    assert json.loads(layout.metrics_json.read_text()) == metrics
    tasks = metrics["tasks"]
    assert set(tasks["shape"]) == {"accuracy", "macro_f1", "loss"}
    assert set(tasks["bright"]) == {"accuracy", "auroc", "f1", "loss"}
    assert set(tasks["side"]) == {"mae", "rmse", "loss"}
    assert all(math.isfinite(v) for values in tasks.values() for v in values.values())
    assert metrics["mean_accuracy"] == pytest.approx(
        (tasks["shape"]["accuracy"] + tasks["bright"]["accuracy"]) / 2)
    expected = 100 / 3 * sum(
        sign * (tasks[t][m] - baselines[t][m]) / baselines[t][m]
        for t, m, sign in (("shape", "accuracy", 1), ("bright", "accuracy", 1),
                           ("side", "mae", -1)))
    assert metrics["delta_m_pct"] == pytest.approx(expected)
    # confusion data for the classification tasks, predicted-vs-true for the regression one
    assert layout.confusion_csv("shape").read_text().startswith("actual,predicted\n")
    rows = layout.confusion_csv("side").read_text().splitlines()
    assert rows[0] == "actual,predicted" and len(rows) == 1 + 32
    assert {float(row.split(",")[0]) for row in rows[1:]} <= set(range(6, 20))
    assert all(layout.confusion_png(t).stat().st_size > 0 for t in ("shape", "bright", "side"))


@pytest.mark.slow
def test_binary_baselines_train_batched(tmp_path: Path) -> None:
    """Heads of one width and loss (two binary tasks) train as one grouped LeNet."""
    layout = Layout(tmp_path)
    synthetic(tmp_path / "three", channels=1)
    entries = [ENTRIES[1], {"name": "top", "classes": 2, "class_names": ["no", "yes"],
                            "kind": "binary"}]
    images, labels = {}, {}
    for split in processed.SPLITS:
        images[split] = np.load(tmp_path / "three" / processed.images_file(split))
        three = np.load(tmp_path / "three" / processed.labels_file(split))
        labels[split] = np.stack([three[:, 1], three[:, 0] == 0], axis=1).astype(np.uint8)
    meta = processed.read_meta(tmp_path / "three")
    write_folder(layout.processed_dir, images, labels, entries, meta["pixel_mean"],
                 meta["pixel_std"])
    params = parse_params({"train": {"epochs": 1, "batch_size": 32, "diagnostics_every": 0,
                                     "ensemble": "batched"}, "tracking": {"enabled": False}})
    baselines = stages.baselines(params, layout)
    assert json.loads(layout.baselines_info.read_text())["ensemble"] == "batched"
    assert {task: set(values) for task, values in baselines.items()} == {
        "bright": {"accuracy", "auroc", "f1", "loss"}, "top": {"accuracy", "auroc", "f1", "loss"}}
    assert all(math.isfinite(v) for values in baselines.values() for v in values.values())
