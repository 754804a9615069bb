"""benchmarks/run.py, the runner of ``make bench``: which benchmarks it accepts, where it
writes, and what an interrupted run leaves behind."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # benchmarks/ is a package of the repository, not installed
    sys.path.insert(0, str(ROOT))

from benchmarks import run  # noqa: E402
from benchmarks.common import tool_env  # noqa: E402
from multitask.layout import Layout  # noqa: E402

# A benchmark that gets SIGTERM while it holds something to clean up (a temporary folder, a
# child process): argv: the marker its cleanup writes, the results file.
TERMINATED = """
import os, signal, sys, time, types
from pathlib import Path
from benchmarks import run

marker, results = Path(sys.argv[1]), Path(sys.argv[2])

def terminated():
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
    finally:
        marker.write_text("cleaned up")

module = types.ModuleType("benchmarks.bench_terminated")
module.run = terminated
sys.modules[module.__name__] = module
run.available = lambda: ["terminated"]
run.RESULTS = results
sys.argv = ["run.py", "terminated"]
run.main()
"""


def test_sigterm_mid_benchmark_cleans_up_and_keeps_the_results(tmp_path: Path) -> None:
    marker, results = tmp_path / "cleaned", tmp_path / "benchmarks.json"
    results.write_text('{"data": {"rows": []}}\n')
    done = subprocess.run([sys.executable, "-c", TERMINATED, str(marker), str(results)],
                          cwd=ROOT, env={**tool_env(), "PYTHONPATH": f"{ROOT}:{ROOT / 'src'}"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 143, done.stderr  # SystemExit(128 + SIGTERM), not killed
    assert marker.read_text() == "cleaned up"
    assert results.read_text() == '{"data": {"rows": []}}\n'


def test_an_unknown_name_is_refused_before_any_benchmark_runs(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run.importlib, "import_module", lambda name: pytest.fail(f"ran {name}"))
    monkeypatch.setattr(sys, "argv", ["run.py", "data", "tracknig"])
    with pytest.raises(SystemExit) as exit_:
        run.main()
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert "usage: python -m benchmarks.run" in error
    assert "no benchmark named tracknig" in error
    assert "choose from: allocator, backbones, ci, cli" in error and "tracking" in error


def test_results_go_to_the_checkouts_reports_from_any_folder() -> None:
    assert run.RESULTS.is_absolute()
    assert Layout(ROOT).benchmarks_json == run.RESULTS  # what scripts/update_readme.py reads


def test_a_row_without_a_value_is_printed_with_its_reason() -> None:
    assert run.shown({"name": "a", "value": None, "unit": "s",
                      "skipped": "pipeline not reproduced yet: run make repro"}) == \
        "not measured (pipeline not reproduced yet: run make repro)"
    assert run.shown({"name": "b", "value": None, "unit": "s", "error": "exit 2: boom"}) == \
        "not measured (exit 2: boom)"
    assert run.shown({"name": "c", "value": 1.5, "unit": "s", "target": "<= 3 s", "ok": True}) \
        == "1.5 s (target <= 3 s)  ok"


def test_a_skipped_row_keeps_the_earlier_measurement_with_its_date_and_machine(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    earlier = {"measured_at": "2026-12-02T23:07:49+00:00", "machine": {"cpu_model": "AMD EPYC"},
               "rows": [{"name": "up to date", "value": 1.3, "unit": "s"},
                        {"name": "gone", "value": 2.0, "unit": "s"}]}
    results = tmp_path / "benchmarks.json"
    results.write_text(json.dumps({"fake": earlier, "other": {"rows": []}}))
    module = types.ModuleType("benchmarks.bench_fake")
    module.run = lambda: [  # type: ignore[attr-defined]
        {"name": "up to date", "value": None, "unit": "s", "skipped": "run make repro"},
        {"name": "new", "value": 0.5, "unit": "s"}]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(run, "available", lambda: ["fake"])
    monkeypatch.setattr(run, "keep_freed_memory", dict)
    monkeypatch.setattr(run, "RESULTS", results)
    run.main(["fake"])
    written = json.loads(results.read_text())
    assert written["other"] == {"rows": []}
    kept, new = written["fake"]["rows"]  # "gone", no longer measured at all, is dropped
    assert kept == {"name": "up to date", "value": 1.3, "unit": "s",
                    "measured_at": earlier["measured_at"], "machine": earlier["machine"],
                    "kept": "run make repro"}
    assert new == {"name": "new", "value": 0.5, "unit": "s"}
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
    assert written["fake"]["commit"].removesuffix("-dirty") == head
    assert written["fake"]["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert "up to date: 1.3 s; not measured here (run make repro): the 2026-12-02 measurement " \
        "kept" in capsys.readouterr().out


def test_a_failing_benchmark_is_reported_and_the_others_still_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "benchmarks.json"
    earlier = {"measured_at": "2026-12-02T00:00:00+00:00", "machine": {},
               "rows": [{"name": "a", "value": 1.0, "unit": "s"}]}
    results.write_text(json.dumps({"broken": earlier}))

    def broken() -> list[dict[str, object]]:
        raise FileNotFoundError("data/raw/x.gz: not found")

    for name, function in (("broken", broken),
                           ("fine", lambda: [{"name": "b", "value": 2.0, "unit": "s"}])):
        module = types.ModuleType(f"benchmarks.bench_{name}")
        module.run = function  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(run, "available", lambda: ["broken", "fine"])
    monkeypatch.setattr(run, "keep_freed_memory", dict)
    monkeypatch.setattr(run, "RESULTS", results)
    with pytest.raises(SystemExit) as exit_:
        run.main(["broken", "fine"])
    assert str(exit_.value.code).startswith("failed: broken (their earlier results are kept")
    written = json.loads(results.read_text())
    assert written["broken"] == earlier
    assert written["fine"]["rows"] == [{"name": "b", "value": 2.0, "unit": "s"}]
    assert "failed (FileNotFoundError: data/raw/x.gz: not found); earlier results kept" in \
        capsys.readouterr().out


def test_gpu_rows_survive_a_run_on_a_machine_without_one() -> None:
    gpu_machine = {"cpu_model": "AMD EPYC", "cuda": "NVIDIA H200"}
    earlier = {"measured_at": "2026-12-06T10:00:00+00:00", "machine": gpu_machine, "rows": [
        {"name": "train images/s, LeNet, CPU", "value": 5000.0, "unit": "images/s"},
        {"name": "train images/s, NVIDIA H200", "value": 1.2e6, "unit": "images/s"}]}
    cpu_only = {"cpu_model": "Intel(R) Xeon(R) Processor", "cuda": None}
    now = [{"name": "train images/s, LeNet, CPU", "value": 5200.0, "unit": "images/s"}]
    assert run.recorded(now, earlier, cpu_only) == [now[0], {
        "name": "train images/s, NVIDIA H200", "value": 1.2e6, "unit": "images/s",
        "measured_at": earlier["measured_at"], "machine": gpu_machine,
        "kept": "needs a GPU; the last run's machine had none"}]
    # a GPU machine's run stands on its own; rows of a CPU-only run are not carried along
    assert run.recorded(now, earlier, {**cpu_only, "cuda": "NVIDIA H100"}) == now
    cpu_earlier = {**earlier, "machine": cpu_only}
    assert run.recorded(now, cpu_earlier, cpu_only) == now  # a dropped CPU row is gone


def test_without_torchjd_the_peer_rows_keep_their_last_measurement() -> None:
    from benchmarks import bench_weighting

    committed = json.loads((ROOT / "reports" / "benchmarks.json").read_text())["weighting"]
    peer_names = {r["name"] for r in committed["rows"] if "torchjd" in r["name"]}
    skipped = [row for tasks in (2, 10)
               for row in bench_weighting.peer_rows(tasks, {}, "TorchJD not installed")]
    assert {row["name"] for row in skipped} == peer_names  # every peer row, by its name
    assert all(row["value"] is None and row["skipped"] == "TorchJD not installed"
               for row in skipped)
    kept = run.recorded(skipped, committed, {"cuda": None})
    assert [row["value"] for row in kept] == [
        next(r["value"] for r in committed["rows"] if r["name"] == row["name"]) for row in kept]
    assert {row["kept"] for row in kept} == {"TorchJD not installed"}


def test_a_long_benchmark_says_it_still_runs(capsys: pytest.CaptureFixture[str]) -> None:
    with run.still_running("slow", every_s=0.05):
        time.sleep(0.3)
    said = capsys.readouterr().out.splitlines()
    assert len(said) >= 3 and all(line == "  slow: still running, 0 min so far" for line in said)
    with run.still_running("quick", every_s=5):
        pass
    assert capsys.readouterr().out == ""  # a benchmark done before the first minute says nothing
