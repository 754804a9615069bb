"""Task kinds in what reads results: the gates, predict/serve, tuning objectives, the README.

Every expected value here is worked out by hand in the test's comment.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from multitask import ci_report, keys
from multitask.gate import TaskChange, higher_is_better, primary_metric, primary_values
from multitask.promotion import Scores, decide, scores_from

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------ gates
def test_mae_and_rmse_are_lower_is_better_by_their_declaration() -> None:
    # keys.higher_is_better guesses from the name ("loss" in it); MAE has no "loss" in its name
    assert not higher_is_better("mae") and not higher_is_better("rmse")
    assert higher_is_better("accuracy") and higher_is_better("auroc")
    assert not higher_is_better("loss") and higher_is_better("delta_m_pct")


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
