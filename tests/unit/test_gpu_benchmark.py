"""benchmarks/bench_gpu.py runs only on a lent GPU, minutes at a time: its measuring code is
checked here on the CPU (eager step, weighting table, a failing measurement kept as a row), so
that a lease is not spent finding its bugs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # benchmarks/ is a package of the repository, not installed
    sys.path.insert(0, str(ROOT))

from benchmarks import bench_gpu, bench_gpu_repro  # noqa: E402
from benchmarks.common import tool_env  # noqa: E402


def test_no_gpu_no_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    monkeypatch.delenv("BENCH_GPU_REPRO_ANY_DEVICE", raising=False)
    assert bench_gpu.run() == [] and bench_gpu_repro.run() == []


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


STAGES = """stages:
  prepare:
    cmd: python stage.py prepare
    deps:
      - stage.py
    outs:
      - processed
  evaluate:
    cmd: python stage.py evaluate
    deps:
      - processed
    outs:
      - reports/metrics.json:
          cache: false
"""
STAGE_SCRIPT = """import json, pathlib, sys
if sys.argv[1] == "prepare":
    pathlib.Path("processed").mkdir(exist_ok=True)
    pathlib.Path("processed/x").write_text("1")
else:
    pathlib.Path("reports").mkdir(exist_ok=True)
    metrics = {"tasks": {"left": {"accuracy": 0.5}, "right": {"accuracy": 0.75}},
               "delta_m_pct": -1.5}
    pathlib.Path("reports/metrics.json").write_text(json.dumps(metrics))
"""


def _tiny_project(root: Path, git: bool) -> Path:
    """A two-stage DVC project that has run once: its outputs are in the tree."""
    root.mkdir()
    env = tool_env()
    if git:
        subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["dvc", "init", "-q", *([] if git else ["--no-scm"])], cwd=root, env=env,
                   check=True)
    (root / "dvc.yaml").write_text(STAGES)
    (root / "stage.py").write_text(STAGE_SCRIPT)
    subprocess.run(["dvc", "repro", "-q"], cwd=root, env=env, check=True)
    if git:
        subprocess.run(["git", "add", "-A"], cwd=root, check=True)
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "commit",
                        "-qm", "ran"], cwd=root, check=True)
    return root


@pytest.mark.parametrize("git", [True, False], ids=["git-clone", "no-git-copy"])
def test_the_gpu_repro_runs_every_stage_of_a_fresh_copy(git: bool, tmp_path: Path) -> None:
    source = _tiny_project(tmp_path / "source", git)
    assert (source / "processed" / "x").is_file()  # an output the copy must not carry over
    copy = bench_gpu_repro.pipeline_copy(tmp_path / "copy", source)
    assert not (copy / "processed").exists()
    assert (copy / ".git").exists() == git
    rows = {r["name"]: r for r in bench_gpu_repro.measure(copy, "dvc.yaml", tool_env())}
    assert rows["gpu_repro_s"]["stages"] == ["prepare", "evaluate"]
    assert rows["gpu_repro_s"]["target"] == "<= 120 s" and rows["gpu_repro_s"]["device"] == "cpu"
    assert rows["gpu_repro_stage_prepare_s"]["value"] > 0
    assert rows["gpu_repro_test_accuracy_left"]["value"] == 0.5
    assert rows["gpu_repro_test_accuracy_right"]["value"] == 0.75
    assert rows["gpu_repro_delta_m_pct"]["value"] == -1.5


def test_a_failing_gpu_repro_is_a_row_with_the_error(tmp_path: Path) -> None:
    source = _tiny_project(tmp_path / "source", git=False)
    copy = bench_gpu_repro.pipeline_copy(tmp_path / "copy", source)
    (copy / "stage.py").write_text("1 / 0\n")
    (failed,) = bench_gpu_repro.measure(copy, "dvc.yaml", tool_env())
    assert failed["name"] == "gpu_repro_s" and failed["value"] is None
    assert "ZeroDivisionError" in failed["error"]
