"""Task kinds in what reads results: the gates, predict/serve, tuning objectives, the README.

Every expected value here is worked out by hand in the test's comment.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import optuna
import pytest
import torch
import yaml
from matplotlib.colors import to_hex
from PIL import Image

from multitask import ci_plots, ci_report, keys, promotion, tracking, tuning
from multitask.comparison.report import markdown as comparison_markdown
from multitask.comparison.report import primary_metrics
from multitask.config import ModelConfig, Params, TrackingConfig, load_params, parse_params
from multitask.data import processed
from multitask.gate import TaskChange, primary_metric, primary_values
from multitask.layout import Layout
from multitask.models import build_model
from multitask.models.serving import KindPredictions
from multitask.predict import load_images, predict, predict_table
from multitask.promotion import Scores, decide, scores_from
from multitask.tasks import Task
from multitask.tracking import served
from multitask.training import stages
from multitask.training.plots import learning_curves
from multitask.tuning.reports import pareto_figure, pareto_front, select, selection_scores
from multitask.tuning.space import SearchSpace
from multitask.tuning.study import Setup
from multitask.tuning.trials import Objective, describe_choice

ROOT = Path(__file__).resolve().parents[2]
MIXED = [Task("species", 3, class_names=("cat", "dog", "owl")),
         Task("smiling", 2, "binary", class_names=("no", "yes")),
         Task("age", kind="regression", target_mean=40.0, target_std=10.0, unit="years")]


# ------------------------------------------------------------------------------------ gates
def test_mae_and_rmse_are_lower_is_better_by_their_declaration() -> None:
    # MAE has no "loss" in its name: its direction comes from multitask.tasks.METRICS
    assert not keys.higher_is_better("mae") and not keys.higher_is_better("rmse")
    assert keys.higher_is_better("accuracy") and keys.higher_is_better("auroc")
    assert not keys.higher_is_better("loss") and keys.higher_is_better("delta_m_pct")
    assert not TaskChange.of("age", "mae", 4.0, 3.0).higher_is_better


def test_each_task_is_judged_on_its_kinds_primary_metric() -> None:
    assert primary_metric({"accuracy": 0.9, "auroc": 0.8, "f1": 0.7, "loss": 0.3}) == "accuracy"
    assert primary_metric({"rmse": 4.0, "mae": 3.0, "loss": 0.5}) == "mae"
    assert primary_metric({"loss": 0.5}) is None
    flat = {"test/accuracy/species": 0.9, "test/macro_f1/species": 0.8, "test/mae/age": 3.0,
            "test/rmse/age": 4.0, "test/accuracy/smiling": 0.7, "test/auroc/smiling": 0.75}
    assert primary_values(flat, keys.TEST) == (
        {"species": 0.9, "smiling": 0.7, "age": 3.0},
        {"species": "accuracy", "smiling": "accuracy", "age": "mae"})


def test_an_mae_regresses_when_it_rises_by_more_than_the_relative_tolerance() -> None:
    # base MAE 4.0, tolerance 0.05: the MAE may rise by 5% of 4.0 = 0.2, to 4.2
    assert not TaskChange.of("age", "mae", 4.0, 4.2).regressed(0.05)
    assert TaskChange.of("age", "mae", 4.0, 4.25).regressed(0.05)
    assert not TaskChange.of("age", "mae", 4.0, 1.0).regressed(0.0)  # falling is better
    # the same tolerance on accuracy stays absolute: 0.80 -> 0.75 is exactly 0.05 worse
    assert not TaskChange.of("species", "accuracy", 0.80, 0.75).regressed(0.05)
    assert TaskChange.of("species", "accuracy", 0.80, 0.749).regressed(0.05)


def test_promotion_gate_reads_mae_from_run_metrics_and_refuses_a_rise() -> None:
    metrics = {"test/accuracy/species": 0.90, "test/mae/age": 4.0, "test/rmse/age": 5.0,
               "test/delta_m_pct": 1.0}
    champion = scores_from(metrics, "delta_m", "champion")
    assert champion.tasks == {"species": 0.90, "age": 4.0}
    assert champion.metrics == {"species": "accuracy", "age": "mae"}
    # age MAE 4.0 -> 4.1: +2.5% > 1% tolerance (0.04 allowed); species and Δm% improve
    worse = Scores({"species": 0.95, "age": 4.1}, 2.0, {"species": "accuracy", "age": "mae"})
    decision = decide(worse, champion, 0.01, "delta_m")
    assert not decision.promote
    assert decision.reasons[0] == ("age: mae 4.1000 vs champion 4.0000 (+0.1000): worse by "
                                   "0.1000 > tolerance 0.0400 (1.00% of 4.0000)")
    # 4.0 -> 4.03: +0.75%, within the 1% tolerance
    within = Scores({"species": 0.90, "age": 4.03}, 2.0, {"species": "accuracy", "age": "mae"})
    assert decide(within, champion, 0.01, "delta_m").promote
    better = Scores({"species": 0.90, "age": 3.5}, 2.0, {"species": "accuracy", "age": "mae"})
    assert decide(better, champion, 0.01, "delta_m").reasons[0].endswith("(-0.5000): not worse")


def test_mean_accuracy_aggregate_without_classification_tasks_points_to_delta_m() -> None:
    with pytest.raises(ValueError, match=r"no classification task.*promote\.aggregate to delta_m"):
        scores_from({"test/mae/age": 4.0, "test/delta_m_pct": 1.0}, "mean_accuracy", "run x")



def test_registry_status_lists_each_tasks_primary_metric(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    tags = {"champion": {"test/accuracy/species": "0.9", "test/mae/age": "4.0",
                         "test/rmse/age": "5.0", "test/delta_m_pct": "1.0"},
            "challenger": {"test/accuracy/species": "0.92", "test/mae/age": "4.5",
                           "test/rmse/age": "5.5", "test/delta_m_pct": "2.0"}}
    versions = {alias: tracking.ModelVersion("kinds", str(i), f"run{i}", "src", tags[alias],
                                             (alias,))
                for i, alias in enumerate(("champion", "challenger"), 1)}
    monkeypatch.setattr(tracking, "version_by_alias", lambda name, alias: versions.get(alias))
    monkeypatch.setattr(tracking, "describe_uri", lambda: "the store")
    # a store of its own: the repository's may not exist yet (a fresh clone)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracking.client()
    params = _params(tmp_path)
    assert promotion.status(params) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines[2:4]] == [["age", "mae"], ["species", "accuracy"]]
    assert lines[2].split()[-1] == "+0.5000"  # the MAE rose by 0.5


def _result(folder: Path, tasks: dict[str, dict[str, float]]) -> Path:
    (folder / "reports").mkdir(parents=True)
    (folder / "reports" / "metrics.json").write_text(json.dumps(
        {"tasks": tasks, "delta_m_pct": 0.5}))
    (folder / "params.yaml").write_text(yaml.safe_dump({"ci": {"regression_tolerance": 0.02}}))
    return folder


def test_ci_gate_fails_on_a_relative_mae_rise_and_gates_nothing_else_of_the_task(
        tmp_path: Path) -> None:
    base = _result(tmp_path / "base", {
        "species": {"accuracy": 0.80, "macro_f1": 0.70, "loss": 0.5},
        "smiling": {"accuracy": 0.90, "auroc": 0.95, "f1": 0.85, "loss": 0.3},
        "age": {"mae": 5.0, "rmse": 6.0, "loss": 0.4}})
    head = _result(tmp_path / "head", {
        # accuracy -0.01 (within 0.02); auroc -0.5 is not gated (not the primary metric)
        "species": {"accuracy": 0.79, "macro_f1": 0.60, "loss": 0.6},
        "smiling": {"accuracy": 0.90, "auroc": 0.45, "f1": 0.85, "loss": 0.3},
        # MAE 5.0 -> 5.2: +4% > 2%; RMSE 6.0 -> 9.0 is not gated
        "age": {"mae": 5.2, "rmse": 9.0, "loss": 0.5}})
    rows = ci_report.compare_metrics(ci_report.load_result(base), ci_report.load_result(head))
    assert {(r.task, r.metric) for r in rows if r.gated} == {
        ("species", "accuracy"), ("smiling", "accuracy"), ("age", "mae")}
    assert [(r.metric, r.higher_is_better) for r in rows if r.task == "age"] == [
        ("mae", False), ("rmse", False), ("loss", False)]
    assert ci_report.gate_messages(rows, 0.02) == [
        "task 'age': mae rose by 4.00% (5.0000 -> 5.2000), more than the 2.00% tolerance "
        "(ci.regression_tolerance = 0.02, relative for mae)"]
    # 5.0 -> 5.1 is +2%, exactly the tolerance: passes, and the verdict names both rules
    head_ok = _result(tmp_path / "ok", {**json.loads(
        (head / "reports" / "metrics.json").read_text())["tasks"],
        "age": {"mae": 5.1, "rmse": 9.0, "loss": 0.5}})
    rows = ci_report.compare_metrics(ci_report.load_result(base), ci_report.load_result(head_ok))
    assert ci_report.gate_messages(rows, 0.02) == []
    markdown = ci_report.render_markdown(ci_report.load_result(base),
                                         ci_report.load_result(head_ok), rows, 0.02, None)
    assert ("**Gate: passed.** No task's accuracy dropped by more than 2.00 pp; no task's mae "
            "rose by more than 2.00% (ci.regression_tolerance = 0.02).") in markdown



def test_ci_report_curves_show_the_mae_and_a_regression_task_has_no_class_table(
        tmp_path: Path) -> None:
    sides = {}
    for name, mae in (("base", 5.0), ("head", 4.0)):
        folder = _result(tmp_path / name, {"species": {"accuracy": 0.8, "loss": 0.5},
                                           "age": {"mae": mae, "rmse": 6.0, "loss": 0.4}})
        (folder / "reports" / "plots").mkdir()
        (folder / "reports" / "plots" / "history.csv").write_text(
            "epoch,val/accuracy/species,val/mae/age\n1,0.7,6.5\n2,0.8,5.5\n")
        (folder / "reports" / "confusion").mkdir()
        (folder / "reports" / "confusion" / "species.csv").write_text(
            "actual,predicted\ncat,cat\ndog,cat\n")
        (folder / "reports" / "confusion" / "age.csv").write_text(
            "actual,predicted\n30.0,33.5\n41.0,40.0\n")
        sides[name] = ci_report.load_result(folder)
    rows = ci_report.compare_metrics(sides["base"], sides["head"])
    markdown = ci_report.render_markdown(sides["base"], sides["head"], rows, 0.02, "x.png")
    assert "<summary>Validation accuracy and mae per epoch</summary>" in markdown
    assert ("| epoch | base `species` accuracy | head `species` accuracy | base `age` mae | "
            "head `age` mae |") in markdown
    assert "| 2 | 0.8000 | 0.8000 | 5.5000 | 5.5000 |" in markdown
    assert "task `species`</summary>" in markdown and "task `age`</summary>" not in markdown
    assert "| `age` | mae | 5.0000 | 4.0000 | -1.0000 | ✅ better |" in markdown
    assert ci_plots.render_plots(sides["base"], sides["head"], tmp_path / "plots.png")
    assert (tmp_path / "plots.png").read_bytes()[:4] == b"\x89PNG"


def test_learning_curves_draw_a_regression_task_in_its_legend_colour() -> None:
    # The legend (first panel) shows left in C0 and height in C1; the accuracy panel has only
    # left, the MAE panel only height: its line must be C1, not the first colour again.
    history = [{"epoch": e, "train/loss/left": 0.7, "train/loss/height": 0.9,
                "val/loss/left": 0.6, "val/loss/height": 0.8, "val/accuracy/left": 0.5 + e / 10,
                "val/mae/height": 5.0 - e, "weight/left": 0.5, "weight/height": 0.5}
               for e in (1, 2)]
    figure = learning_curves(history, ["left", "height"])
    panels = {ax.get_title(): {line.get_label(): to_hex(line.get_color())
                               for line in ax.get_lines()} for ax in figure.axes}
    legend = panels["training loss"]
    assert legend["left"] != legend["height"]
    assert panels["validation MAE (target units)"] == {"height": legend["height"]}
    assert panels["validation accuracy"] == {"left": legend["left"]}


def test_learning_curves_of_regression_tasks_only_have_no_empty_accuracy_panel() -> None:
    history = [{"epoch": e, "train/loss/height": 0.9, "val/loss/height": 0.8,
                "val/mae/height": 5.0 - e, "weight/height": 1.0} for e in (1, 2)]
    titles = [ax.get_title() for ax in learning_curves(history, ["height"]).axes]
    assert titles == ["training loss", "validation loss", "validation MAE (target units)",
                      "task weight"]


def test_learning_curves_title_the_mae_with_the_tasks_unit() -> None:
    # README: a regression task's unit labels its MAE in reports
    history = [{"epoch": 1, "train/loss/height": 0.5, "train/loss/width": 0.4,
                "val/mae/height": 4.0, "val/mae/width": 3.0}]

    def mae_title(units: dict[str, str]) -> str:
        figure = learning_curves(history, ["height", "width"], units)
        return next(ax.get_title() for ax in figure.axes if "MAE" in ax.get_title())

    assert mae_title({"height": "px", "width": "px"}) == "validation MAE (px)"
    assert mae_title({"height": "px", "width": "mm"}) == "validation MAE (target units)"
    assert mae_title({"height": "px", "width": ""}) == "validation MAE (target units)"


# ----------------------------------------------------------------------------------- tuning
def _params(folder: Path, **tune: Any) -> Params:
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump({"data": {"dataset": "multifashion"}, "tune": tune,
                                    "tracking": {"enabled": False}}))
    return load_params(path)


def _setup(params: Params, tasks: list[Task]) -> Setup:
    space = SearchSpace.from_params(params, tasks, "params.yaml")
    return Setup(params, Layout(), None, tasks, space, "study", {}, "0" * 64)  # type: ignore[arg-type]


def test_a_regression_objective_is_minimised_and_named_by_its_metric(tmp_path: Path) -> None:
    setup = _setup(_params(tmp_path), MIXED)
    assert setup.task_metrics == {"species": "accuracy", "smiling": "accuracy", "age": "mae"}
    assert setup.metric_names == ["val/accuracy/species", "val/accuracy/smiling", "val/mae/age"]
    assert setup.directions == ["maximize", "maximize", "minimize"]
    single = _setup(_params(tmp_path, mode="single", objective="delta_m"), MIXED)
    assert single.directions == ["maximize"] and single.metric_names == ["delta_m"]


def test_single_mode_mean_accuracy_refuses_a_regression_task_naming_it(tmp_path: Path) -> None:
    params = _params(tmp_path, mode="single", objective="mean_accuracy")
    with pytest.raises(ValueError, match=r"\['age'\] are regression tasks.*tune.mode: multi"):
        SearchSpace.from_params(params, MIXED, "params.yaml")
    SearchSpace.from_params(params, MIXED[:2], "params.yaml")  # binary and multiclass: fine


def test_single_mode_delta_m_signs_the_mae_change(tmp_path: Path) -> None:
    setup = _setup(_params(tmp_path, mode="single", objective="delta_m"), MIXED)
    objective = Objective(setup, {"species": 0.80, "smiling": 0.50, "age": 4.0}, None)
    # species +0.08/0.80 = +10%; smiling 0%; age MAE 4.0 -> 3.0 is -25% of 4.0, better: +25%
    # Δm% = (10 + 0 + 25) / 3
    value = objective.values({"species": 0.88, "smiling": 0.50, "age": 3.0})
    assert value == [pytest.approx(35 / 3)]


def test_a_pareto_plots_title_of_a_study_name_fits_in_the_figure() -> None:
    # the title the tune stage writes: a study's name, the trials and the selection
    title = "task-weights (multi-objective, hps/lenet, static) #1adb44\n2 trials, best_mean"
    figure = pareto_figure(np.array([[0.47, 496.8], [0.47, 496.9]]), [0], 0,
                           ["left", "level"], title, ["accuracy", "mae"])
    figure.canvas.draw()
    shown = figure.axes[0].title
    box = shown.get_window_extent()
    assert box.x0 >= 0 and box.x1 <= figure.bbox.x1
    assert shown.get_text().split() == title.split()


def test_pareto_front_minimises_where_lower_is_better() -> None:
    # (accuracy, MAE): (0.9, 5) and (0.8, 3) trade off; (0.8, 4) is dominated by (0.8, 3);
    # (0.7, 3) is dominated by (0.8, 3)
    points = [[0.9, 5.0], [0.8, 4.0], [0.8, 3.0], [0.7, 3.0]]
    assert pareto_front(points, [True, False]) == [0, 2]
    assert pareto_front(points) == [0]  # both maximised: (0.9, 5) dominates all


def test_selection_on_mixed_kinds_compares_fractions_of_the_best() -> None:
    front = [[0.9, 5.0], [0.8, 3.0]]
    scores = selection_scores(front, [True, False])
    # accuracy / 0.9 and 3.0 / MAE: (1, 0.6) and (0.8889, 1)
    assert scores.ravel().tolist() == pytest.approx([1.0, 0.6, 0.8 / 0.9, 1.0])
    assert select(scores, "best_mean") == 1  # means 0.8 and 0.9444
    assert select(scores, "best_worst") == 1  # minima 0.6 and 0.8889
    # weights 0.9 / 0.1: 0.9 * 1 + 0.1 * 0.6 = 0.96 against 0.9 * 0.8889 + 0.1 * 1 = 0.90
    assert select(scores, "preference", [9.0, 1.0]) == 0
    # classification only: the accuracies themselves, as before task kinds
    assert selection_scores([[0.9, 0.5]], [True, True]).tolist() == [[0.9, 0.5]]


def test_trial_descriptions_name_the_metric_when_a_task_is_not_judged_on_accuracy() -> None:
    choice = {"method": "static", "weights": {"species": 0.4, "age": 0.6}, "lr": None}
    assert describe_choice(choice, {"species": 0.81, "age": 3.2},
                           {"species": "accuracy", "age": "mae"}) == (
        "static species=0.400 age=0.600 -> val species accuracy=0.8100 age mae=3.2000")
    assert describe_choice(choice, {"species": 0.81, "age": 0.7}) == (
        "static species=0.400 age=0.600 -> val accuracy species=0.8100 age=0.7000")


# -------------------------------------------------------------------------- predict / serve
class KnownOutputs(torch.nn.Module):
    """Head outputs fixed by each image's mean normalised pixel m (0 or 1 here): species logits
    (0, ln 3, 0); smiling logit ln 3 * (2m - 1); age output 1.5 * (2m - 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        sign = 2 * x.mean(dim=(1, 2, 3)) - 1
        species = torch.stack([0 * sign, math.log(3) + 0 * sign, 0 * sign], dim=1)
        return {"species": species * self.scale, "smiling": (math.log(3) * sign)[:, None],
                "age": (1.5 * sign)[:, None]}


KINDS = {t.name: t.kind for t in MIXED}
TARGETS = {"age": (40.0, 10.0)}
CLASSES = {"species": ["cat", "dog", "owl"], "smiling": ["no", "yes"]}
WHITE_AND_BLACK = np.stack([np.full((1, 4, 4), 255.0), np.zeros((1, 4, 4))]).astype(np.float32)


def test_the_program_answers_each_kind_on_hand_computed_outputs() -> None:
    program = KindPredictions(KnownOutputs(), list(KINDS), KINDS, TARGETS).eval()
    with torch.no_grad():
        indices, values = program(torch.from_numpy(WHITE_AND_BLACK))
    # species: softmax(0, ln 3, 0) = (1/5, 3/5, 1/5): class 1 at 0.6 for both images
    # smiling: sigmoid(ln 3) = 3/4 -> decision 1; sigmoid(-ln 3) = 1/4 -> decision 0
    # age: 40 + 10 * 1.5 = 55 and 40 - 10 * 1.5 = 25 years
    assert indices.tolist() == [[1, 1, 0], [1, 0, 0]]
    assert values.numpy() == pytest.approx(np.array([[0.6, 0.75, 55.0], [0.6, 0.25, 25.0]]))


def test_the_served_table_has_each_kinds_columns() -> None:
    program = KindPredictions(KnownOutputs(), list(KINDS), KINDS, TARGETS).eval()
    table = served.NamedTaskOutput(program, list(KINDS), CLASSES, KINDS).predict(WHITE_AND_BLACK)
    assert list(table.columns) == ["species", "species_probability", "smiling",
                                   "smiling_decision", "smiling_probability", "age"]
    assert table["species"].tolist() == ["dog", "dog"]
    assert table["smiling"].tolist() == ["yes", "no"]
    assert table["smiling_decision"].tolist() == [1, 0]
    assert table["smiling_probability"].tolist() == pytest.approx([0.75, 0.25])  # P(yes)
    assert table["age"].tolist() == pytest.approx([55.0, 25.0])
    assert served.describe_output(list(KINDS), KINDS) == (
        "per task: multiclass <task> (class name), <task>_probability; binary <task> (class "
        "name), <task>_decision (0/1), <task>_probability (of the positive class); regression "
        "<task> (value in the target's units)")


@pytest.mark.parametrize(("defect", "message"), [
    (np.nan, r"1 NaN or infinite pixel value\(s\), in image\(s\) at index \[1\]"),
    (np.inf, r"1 NaN or infinite pixel value\(s\), in image\(s\) at index \[1\]"),
    (-1.5, r"pixel values outside 0\.\.255 \(min -1\.5, max 255\)"),
    (256.0, r"pixel values outside 0\.\.255 \(min 0, max 256\)"),
])
def test_the_served_model_refuses_pixels_it_would_answer_with_nonsense(
        defect: float, message: str) -> None:
    """A NaN made every task answer its first class with probability NaN, HTTP 200; what
    `multitask predict` refuses in a file, `mlflow models serve` refuses too (HTTP 400)."""
    from mlflow.exceptions import MlflowException

    program = KindPredictions(KnownOutputs(), list(KINDS), KINDS, TARGETS).eval()
    model = served.NamedTaskOutput(program, list(KINDS), CLASSES, KINDS)
    pixels = WHITE_AND_BLACK.copy()
    pixels[1, 0, 2, 3] = defect
    with pytest.raises(MlflowException, match=message) as error:
        model.predict(pixels)
    assert error.value.get_http_status_code() == 400
    assert len(model.predict(WHITE_AND_BLACK[:0])) == 0  # an empty batch: an empty table


def test_multiclass_answers_are_the_argmax_and_its_softmax_probability() -> None:
    torch.manual_seed(0)
    tasks = [Task("left", 10), Task("right", 10)]
    network = build_model(ModelConfig(), tasks, in_channels=1, image_size=36).eval()
    pixels = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 1, 36, 36))
                              .astype(np.float32))
    with torch.no_grad():
        indices, values = KindPredictions(network, ["left", "right"], pixel_mean=0.3,
                                          pixel_std=0.3)(pixels)
        outputs = network((pixels / 255.0 - 0.3) / 0.3)
    for column, task in enumerate(("left", "right")):
        probabilities = torch.softmax(outputs[task].float(), dim=1)
        assert torch.equal(indices[:, column], probabilities.argmax(dim=1))
        assert torch.allclose(values[:, column], probabilities.max(dim=1).values)


def test_three_channel_statistics_normalise_each_channel() -> None:
    seen: list[torch.Tensor] = []

    class Record(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            seen.append(x)
            return {"age": x.mean(dim=(1, 2, 3))[:, None]}

    program = KindPredictions(Record(), ["age"], {"age": "regression"}, {"age": (0.0, 1.0)},
                              pixel_mean=[0.0, 0.5, 1.0], pixel_std=[1.0, 0.5, 0.25])
    program(torch.full((1, 3, 2, 2), 255.0))
    # (1 - 0) / 1 = 1; (1 - 0.5) / 0.5 = 1; (1 - 1) / 0.25 = 0
    assert seen[0][0, :, 0, 0].tolist() == [1.0, 1.0, 0.0]


def test_a_logged_model_of_every_kind_serves_its_columns_and_signature(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    torch.manual_seed(0)
    model = build_model(ModelConfig(), MIXED, in_channels=1, image_size=36).eval()
    images = np.random.default_rng(0).integers(0, 256, size=(3, 36, 36)).astype(np.uint8)
    params = _params(tmp_path).model_copy(update={"tracking": TrackingConfig(
        enabled=True, experiment="kinds", system_metrics=False)})
    with tracking.stage_run(params, "train") as run, warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        # no tasks=: the network's own declarations (model.tasks) give the kinds
        uri = run.log_model(model, images[:2], list(KINDS), class_names=CLASSES,
                            pixel_mean=0.5, pixel_std=0.25)
    # a binary task's 0/1 decision column: no MLflow hint about missing integer values
    assert not [w for w in seen if "integer column" in str(w.message)]
    loaded = tracking.load_model(uri)
    batch = images[:, None].astype(np.float32)
    table = predict_table(loaded, batch)
    with torch.no_grad():
        outputs = model((torch.from_numpy(batch) / 255.0 - 0.5) / 0.25)
    species = outputs["species"].softmax(1)
    assert table["species"].tolist() == [CLASSES["species"][i] for i in species.argmax(1)]
    positive = torch.sigmoid(outputs["smiling"][:, 0])
    assert table["smiling_probability"].to_numpy() == pytest.approx(positive.numpy(), abs=1e-5)
    assert table["smiling_decision"].tolist() == (positive > 0.5).long().tolist()
    assert table["age"].to_numpy() == pytest.approx(
        (outputs["age"][:, 0] * 10.0 + 40.0).numpy(), abs=1e-4)
    schema = [(o["name"], o["type"]) for o in loaded.metadata.get_output_schema().to_dict()]
    assert schema == [("species", "string"), ("species_probability", "float"),
                      ("smiling", "string"), ("smiling_decision", "long"),
                      ("smiling_probability", "float"), ("age", "float")]
    assert loaded.metadata.metadata["kinds"] == KINDS
    assert loaded.metadata.metadata["units"] == {"age": "years"}


def test_log_model_refuses_tasks_that_do_not_match_the_task_names() -> None:
    with pytest.raises(ValueError, match=r"tasks \['species', 'smiling', 'age'\] do not match"):
        tracking.log_model("run", torch.nn.Linear(1, 1), np.zeros((2, 1, 4, 4)), ["age"],
                           tasks=MIXED)


def test_three_channel_images_and_arrays_load_channels_first(tmp_path: Path) -> None:
    rgb = np.zeros((36, 36, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 2] = 200, 50
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.save(tmp_path / "stored.npy", np.stack([rgb, rgb]))  # (N, H, W, C) as processed data
    batch, _ = load_images([tmp_path / "rgb.png", tmp_path / "stored.npy"], (3, 36, 36))
    assert batch.shape == (3, 3, 36, 36)
    assert batch[:, :, 5, 5].tolist() == [[200.0, 0.0, 50.0]] * 3
    np.save(tmp_path / "grey.npy", np.zeros((36, 36), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"grey\.npy: array of shape \(36, 36\); expected "
                                         r"\(36, 36, 3\)"):
        load_images([tmp_path / "grey.npy"], (3, 36, 36))


# --------------------------------------------------------------------------- README tables
def _renderer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("update_readme_kinds",
                                                  ROOT / "scripts" / "update_readme.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_results_show_each_tasks_primary_metric_with_its_unit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    renderer = _renderer()
    layout = Layout(tmp_path)
    monkeypatch.setattr(renderer, "ROOT", tmp_path)
    layout.metrics_json.parent.mkdir(parents=True)
    layout.metrics_json.write_text(json.dumps({"tasks": {
        "category": {"accuracy": 0.81234, "macro_f1": 0.8, "loss": 0.5},
        "on_left": {"accuracy": 0.9, "auroc": 0.95, "f1": 0.9, "loss": 0.2},
        "height_px": {"mae": 1.23456, "rmse": 2.0, "loss": 0.3}},
        "mean_accuracy": 0.85617, "delta_m_pct": 1.5}))
    layout.baselines_json.write_text(json.dumps({"tasks": {
        "category": {"accuracy": 0.8, "macro_f1": 0.79, "loss": 0.5},
        "on_left": {"accuracy": 0.91, "auroc": 0.96, "f1": 0.9, "loss": 0.2},
        "height_px": {"mae": 1.3, "rmse": 2.1, "loss": 0.3}}}))
    layout.train_json.write_text(json.dumps({"weighting": "equal", "epochs": 2,
                                             "device": "cpu", "seconds": 12.0,
                                             "train_images_per_s": 900.0}))
    layout.params.write_text(yaml.safe_dump({"data": {"dataset": "manifest", "tasks": {
        "category": {"kind": "multiclass"}, "on_left": {"kind": "binary"},
        "height_px": {"kind": "regression", "unit": "px"}}}}))
    lines = renderer.results().splitlines()
    assert lines[0].endswith("cpu; test split:")  # no composite count for a manifest
    assert lines[2] == ("| | task `category` accuracy | task `on_left` accuracy | task "
                        "`height_px` MAE (px) | Δm% |")
    assert lines[4] == "| multi-task (one network) | 0.8123 | 0.9000 | 1.2346 | +1.50 |"
    assert lines[5] == ("| single-task baselines (one network per task) | 0.8000 | 0.9100 | "
                        "1.3000 | 0 (reference) |")


def test_comparison_table_names_the_mae_column_and_averages_accuracies_only() -> None:
    per_seed = {"mean": 0.8, "std": None, "per_seed": [0.8]}
    mae = {"mean": 3.0, "std": None, "per_seed": [3.0]}
    result = {"name": "kinds", "pipeline": "dvc.yaml", "seeds": [0], "set": {},
              "confidence": 0.95, "tasks": ["species", "age"],
              "metrics": {"species": "accuracy", "age": "mae"},
              "rows": [{"label": "equal", "overrides": {}, "rank": 1, "tied": False,
                        "tasks": {"species": per_seed, "age": mae},
                        "mean_accuracy": per_seed,
                        "delta_m_pct": {"mean": 1.0, "ci_low": None}}],
              "baselines": {"species": {"mean": 0.7, "std": None, "per_seed": [0.7]},
                            "age": {"mean": 4.0, "std": None, "per_seed": [4.0]}}}
    lines = comparison_markdown(result).splitlines()
    assert lines[2] == ("| rank | row | overrides | `species` accuracy | `age` MAE | mean "
                        "accuracy | Δm% [95% interval] | |")
    assert lines[4] == "| 1 | `equal` |  | 0.8000 | 3.0000 | 0.8000 | +1.00 | best |"
    # the baselines' mean accuracy is species' alone (0.7), not (0.7 + 4.0) / 2
    assert lines[5] == ("| | single-task baselines | | 0.7000 | 4.0000 | 0.7000 | "
                        "0 (reference) | |")
    assert primary_metrics({"tasks": {"species": {"accuracy": 0.8}, "age": {"mae": 3.0}}}) == {
        "species": "accuracy", "age": "mae"}


# ----------------------------------------------------- a real study on all three kinds at once
def _three_kinds(folder: Path, counts: tuple[int, int, int] = (96, 32, 32)) -> None:
    """A processed folder: squares of side 6..19 px (``side``, regression, px) in one of three
    corners (``corner``, multiclass), bright or dim (``bright``, binary); float32 labels."""
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {}
    for split, count in zip(processed.SPLITS, counts, strict=True):
        corner, bright, side = (rng.integers(0, 3, count), rng.integers(0, 2, count),
                                rng.integers(6, 20, count))
        canvas = np.zeros((count, 28, 28), np.uint8)
        for i in range(count):
            rows = slice(0, side[i]) if corner[i] == 0 else slice(28 - side[i], 28)
            cols = slice(28 - side[i], 28) if corner[i] == 1 else slice(0, side[i])
            canvas[i, rows, cols] = 250 if bright[i] else 120
        arrays[f"{split}_images"] = canvas
        arrays[f"{split}_labels"] = np.stack([corner, bright, side], axis=1).astype(np.float32)
    side = arrays["train_labels"][:, 2]
    pixels = arrays["train_images"] / 255.0
    tasks = [{"name": "corner", "classes": 3, "class_names": ["tl", "br", "bl"]},
             {"name": "bright", "classes": 2, "class_names": ["dim", "bright"],
              "kind": "binary"},
             {"name": "side", "kind": "regression", "target_mean": float(side.mean()),
              "target_std": float(side.std()), "unit": "px"}]
    processed.write(folder, arrays, {
        "dataset": "synthetic", "image_size": 28, "channels": 1, "tasks": tasks,
        "splits": dict(zip(processed.SPLITS, counts, strict=True)),
        "pixel_mean": float(pixels.mean()), "pixel_std": float(pixels.std()), "seed": 0,
        "sha256": processed.content_hash(arrays)})


def _tuned_on_three_kinds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                          tune: dict[str, Any]) -> tuple[Params, Layout, dict[str, Any]]:
    """The tune stage run with ``tune`` on the synthetic three-kind data set in ``tmp_path``:
    its params, layout and chosen weights."""
    monkeypatch.chdir(tmp_path)
    layout = Layout(tmp_path)
    _three_kinds(layout.processed_dir)
    params = parse_params({
        "train": {"epochs": 1, "batch_size": 32, "diagnostics_every": 0, "device": "cpu"},
        "tune": tune, "tracking": {"enabled": False}}, str(tmp_path / "params.yaml"))
    return params, layout, tuning.tune(params, layout)


@pytest.mark.slow
def test_a_study_on_three_kinds_minimises_the_mae_and_reports_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params, layout, chosen = _tuned_on_three_kinds(tmp_path, monkeypatch, {
        "n_trials": 3, "epochs": 1, "sampler": "random", "selection": "best_worst"})
    assert set(chosen["values"]) == {"corner", "bright", "side"}
    study = optuna.load_study(study_name=chosen["study"], storage=tuning.StudyStorage.of(
        params, layout).optuna)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["val/accuracy/corner", "val/accuracy/bright", "val/mae/side"]
    assert "primary metric per task: accuracy, accuracy, mae" in json.dumps(
        json.loads(layout.tuning_summary.read_text())["fingerprint"])
    rows = read_csv_rows(layout.pareto_csv)
    assert {"val/accuracy/corner", "val/accuracy/bright", "val/mae/side"} <= set(rows[0])
    # the choice is the front's trial whose worst fraction of the best is highest
    front = [r for r in rows if r["on_front"] == "1"]
    points = [[float(r[c]) for c in ("val/accuracy/corner", "val/accuracy/bright",
                                     "val/mae/side")] for r in front]
    best = select(selection_scores(points, [True, True, False]), "best_worst")
    assert front[best]["chosen"] == "1"



@pytest.mark.slow
def test_a_single_objective_delta_m_study_on_three_kinds_signs_the_mae(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, layout, chosen = _tuned_on_three_kinds(tmp_path, monkeypatch, {
        "n_trials": 2, "epochs": 1, "sampler": "random", "mode": "single",
        "objective": "delta_m", "pruner": "none"})
    baselines = json.loads(layout.tuning_summary.read_text())["validation_baselines"]
    values = chosen["values"]  # the chosen trial's validation accuracy, accuracy, MAE
    expected = 100 / 3 * ((values["corner"] - baselines["corner"]) / baselines["corner"]
                          + (values["bright"] - baselines["bright"]) / baselines["bright"]
                          - (values["side"] - baselines["side"]) / baselines["side"])
    assert chosen["objective"]["delta_m"] == pytest.approx(expected)



@pytest.mark.slow
@pytest.mark.filterwarnings("error:No complete tensor found in the group:UserWarning")
def test_the_trained_three_kind_model_predicts_each_kinds_answer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    layout = Layout(tmp_path)
    _three_kinds(layout.processed_dir)
    params = parse_params({
        "train": {"epochs": 1, "batch_size": 32, "diagnostics_every": 0, "device": "cpu"},
        "tracking": {"enabled": True, "experiment": "kinds", "system_metrics": False}},
        str(tmp_path / "params.yaml"))
    stages.train(params, layout)
    run_id = json.loads(layout.train_json.read_text())["run_id"]
    uri = tracking.get_run(run_id).data.tags[tracking.MODEL_URI_TAG]
    images = np.load(layout.processed_dir / processed.images_file("test"))[:2]
    np.save(tmp_path / "two.npy", images)
    assert predict(uri, [tmp_path / "two.npy"], as_json=True) == 0
    records = json.loads(capsys.readouterr().out)
    assert [sorted(r) for r in records] == [sorted(
        ["image", "corner", "corner_probability", "bright", "bright_decision",
         "bright_probability", "side"])] * 2
    for record in records:
        assert record["corner"] in ("tl", "br", "bl") and 0 < record["corner_probability"] <= 1
        assert record["bright"] == ("bright" if record["bright_decision"] else "dim")
        assert (record["bright_probability"] > 0.5) == bool(record["bright_decision"])
        # a value in pixels, de-standardised (a standardised output would sit near 0)
        assert isinstance(record["side"], float) and 0 < record["side"] < 40


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))
