"""benchmarks/bench_gpu.py runs only on a lent GPU, minutes at a time: its measuring code is
checked here on the CPU (eager step, weighting table, a failing measurement kept as a row), so
that a lease is not spent finding its bugs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # benchmarks/ is a package of the repository, not installed
    sys.path.insert(0, str(ROOT))

from benchmarks import bench_gpu  # noqa: E402


def test_no_gpu_no_rows() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert bench_gpu.run() == []


@pytest.mark.parametrize("architecture", ["hps", "cross_stitch"])
def test_a_step_rate_gathers_batches_from_resident_data(architecture: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_gpu, "STEP_SECONDS", 0.0)
    x_all, y_all = bench_gpu.resident(100, torch.device("cpu"))
    assert x_all.shape == (100, 1, 36, 36) and y_all.shape == (100, 2)
    measured = bench_gpu.step_rate(architecture, 16, "eager", x_all, y_all)
    assert measured["name"] == f"gpu/step/{architecture}/batch16/eager"
    assert measured["value"] > 0 and measured["unit"] == "images/s"
    assert measured["steps"] >= 5  # the minimum, whatever the time


def test_the_weighting_table_is_relative_to_equal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_gpu, "TIMED_STEPS", 1)
    monkeypatch.setattr(bench_gpu, "WEIGHTING_METHODS", ("equal", "pcgrad"))
    rows = {r["name"]: r for r in bench_gpu.weighting_rows(torch.device("cpu"), 3)}
    assert set(rows) == {"gpu/weighting/T3/equal/step_ms", "gpu/weighting/T3/pcgrad/step_time",
                         "gpu/weighting/T3/parameter_gradients/step_time",
                         "gpu/weighting/T3/gradients/is_grads_batched_over_loop"}
    equal_ms = rows["gpu/weighting/T3/equal/step_ms"]["value"]
    pcgrad = rows["gpu/weighting/T3/pcgrad/step_time"]
    assert pcgrad["value"] == pytest.approx(pcgrad["step_ms"] / equal_ms, rel=0.01, abs=0.002)
    batched = rows["gpu/weighting/T3/gradients/is_grads_batched_over_loop"]
    assert batched["value"] == pytest.approx(batched["batched_ms"] / batched["loop_ms"],
                                             rel=0.01, abs=0.002)


def test_a_failing_measurement_is_a_row_and_printed(capsys: pytest.CaptureFixture[str]) -> None:
    def broken() -> list[dict[str, object]]:
        raise RuntimeError("CUDA error: out of memory")

    (failed,) = bench_gpu.guarded("gpu/step/hps/batch1/graph", broken)
    assert failed == {"name": "gpu/step/hps/batch1/graph", "value": None, "unit": "",
                      "error": "RuntimeError: CUDA error: out of memory"}
    assert '"error": "RuntimeError: CUDA error: out of memory"' in capsys.readouterr().out


def test_lenet_step_rows_carry_the_h200_aim_on_an_h200_only() -> None:
    rows = [{"name": "fast", "value": 1_200_000.0}, {"name": "slow", "value": 400_000.0},
            {"name": "failed", "value": None, "error": "RuntimeError: ..."}]
    on_h200 = bench_gpu.aimed(rows, "NVIDIA H200")
    assert [r["ok"] for r in on_h200] == [True, False, False]
    assert {r["target"] for r in on_h200} == {">= 1000000 images/s"}
    assert all(r["gpu"] == "NVIDIA H200" for r in on_h200)
    elsewhere = bench_gpu.aimed(rows, "NVIDIA A100-SXM4-80GB")
    assert all("target" not in r and "ok" not in r for r in elsewhere)


def test_the_ensemble_rows_compare_each_formulation_with_sequential(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_gpu, "TIMED_STEPS", 1)
    rows = {r["name"]: r for r in bench_gpu.ensemble_rows(torch.device("cpu"), 2)}
    assert set(rows) == {f"gpu/ensemble/T2/{name}/step_ms" for name in (
        "sequential/channels_last", "sequential/contiguous", "torch_func/contiguous",
        "grouped/channels_last", "grouped/contiguous")}
    assert rows["gpu/ensemble/T2/sequential/channels_last/step_ms"]["ratio"] == 1.0
    grouped = rows["gpu/ensemble/T2/grouped/channels_last/step_ms"]
    reference = rows["gpu/ensemble/T2/sequential/channels_last/step_ms"]["value"]
    assert grouped["ratio"] == pytest.approx(grouped["value"] / reference, rel=0.01, abs=0.002)
