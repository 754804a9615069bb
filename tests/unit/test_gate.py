"""The per-task rule both gates share, and the metric keys they read."""

from __future__ import annotations

from pathlib import Path

import pytest

from multitask import keys
from multitask.ci_report import MetricRow
from multitask.gate import TaskChange, task_regressions
from multitask.promotion import Scores, decide


def test_only_tasks_worse_by_more_than_the_tolerance_regress() -> None:
    base = {"left": 0.80, "right": 0.80, "extra": 0.5}
    head = {"left": 0.79, "right": 0.77, "extra": 0.9}
    assert [c.task for c in task_regressions(base, head, tolerance=0.02)] == ["right"]


def test_a_task_missing_on_the_new_side_regresses() -> None:
    [missing] = task_regressions({"left": 0.8, "right": 0.8}, {"left": 0.8}, tolerance=0.5)
    assert missing.task == "right" and missing.head is None


@pytest.mark.parametrize("metric", ["accuracy", "mae"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_value_that_is_not_a_number_on_the_new_side_regresses(metric: str,
                                                                value: float) -> None:
    assert TaskChange.of("left", metric, 0.8, value).regressed(tolerance=1.0)
    assert not TaskChange.of("left", metric, 0.8, 0.8).regressed(tolerance=1.0)


@pytest.mark.parametrize("metric", ["accuracy", "mae"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_reference_that_is_not_a_number_gates_nothing(metric: str, value: float) -> None:
    """NaN and infinite alike: nothing to compare with (promotion says 'not gated')."""
    assert not TaskChange.of("left", metric, value, 0.5).regressed(tolerance=0.01)
    decision = decide(Scores({"left": 0.5}, 1.0), Scores({"left": value}, 0.0), 0.01, "delta_m")
    assert decision.promote, decision.reasons
    assert "not gated" in decision.reasons[0]


@pytest.mark.parametrize("after", [float("nan"), None])
def test_a_new_side_that_is_not_a_number_regresses_even_against_a_reference_that_is_not(
        after: float | None) -> None:
    assert TaskChange.of("left", "accuracy", float("nan"), after).regressed(tolerance=0.01)


def test_float_noise_at_the_tolerance_is_not_a_regression() -> None:
    assert task_regressions({"left": 0.81}, {"left": 0.79}, tolerance=0.02) == []


def test_lower_is_better_metrics_regress_upwards() -> None:
    change = TaskChange("left", base=0.50, head=0.60, higher_is_better=False)
    assert change.worse_by == pytest.approx(0.10) and change.regressed(0.05)
    assert task_regressions({"left": 0.5}, {"left": 0.4}, 0.05, {"left": False}) == []


def test_promotion_and_ci_gates_agree_task_by_task() -> None:
    champion = {"left": 0.800, "right": 0.800}
    candidate = {"left": 0.790, "right": 0.815}
    for tolerance in (0.005, 0.01 + 1e-12, 0.02):
        promotion = decide(Scores(candidate, 1.0), Scores(champion, 0.0), tolerance, "delta_m")
        ci_rows = [MetricRow(task, keys.ACCURACY, champion[task], candidate[task], True,
                             gated=True) for task in champion]
        ci_fails = any(row.is_regression(tolerance) for row in ci_rows)
        assert promotion.promote == (not ci_fails), tolerance


def test_both_gates_apply_the_rule_the_readme_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README names the one rule promotion and CI share; both must call it."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "The rule itself,\n`multitask.gate.TaskChange.regressed`, is the one" in readme
    monkeypatch.setattr(TaskChange, "regressed", lambda self, tolerance: True)
    same = {"left": 0.8}
    assert not decide(Scores(same, 1.0), Scores(same, 0.0), 0.5, "delta_m").promote
    assert MetricRow("left", keys.ACCURACY, 0.8, 0.8, True, gated=True).is_regression(0.5)


def test_keys_round_trip() -> None:
    key = keys.task_metric(keys.VAL, "left", keys.ACCURACY)
    assert key == "val/accuracy/left"
    assert keys.parse_task_metric(key) == ("val", "left", "accuracy")
    assert keys.parse_task_metric(keys.weight("left")) is None
    assert keys.parse_task_metric(keys.EPOCH_SECONDS) is None
    flat = keys.flat_test_metrics({keys.TASKS: {"left": {"accuracy": 0.8, "loss": 0.5}},
                                   keys.MEAN_ACCURACY: 0.8, keys.DELTA_M: 1.5})
    assert flat == {"test/accuracy/left": 0.8, "test/loss/left": 0.5,
                    "test/mean_accuracy": 0.8, "test/delta_m_pct": 1.5}
    assert keys.task_values(flat, keys.TEST, keys.ACCURACY) == {"left": 0.8}
    assert keys.higher_is_better("accuracy") and not keys.higher_is_better("loss")
