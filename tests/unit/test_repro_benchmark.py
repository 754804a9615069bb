"""benchmarks/bench_repro.py's machine row: the LeNet step it records beside every ``make repro``
time is the weighting benchmark's own measurement, taken with one thread, and leaves the
process's thread count as it found it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # benchmarks/ is a package of the repository, not installed
    sys.path.insert(0, str(ROOT))

from benchmarks import bench_repro, bench_weighting  # noqa: E402


def test_the_machine_row_is_the_weighting_benchmarks_step_with_one_thread(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, int]] = []

    def measure(tasks: int) -> list[dict[str, Any]]:
        seen.append((tasks, torch.get_num_threads()))
        return [{"name": "weighting/T2/equal/step_cpu_ms", "value": 41.5, "unit": "ms"},
                {"name": "weighting/T2/pcgrad/step_time", "value": 1.6, "unit": "x equal"}]

    monkeypatch.setattr(bench_weighting, "measure", measure)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        row = bench_repro.machine_row()
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(before)
    assert seen == [(2, bench_weighting.THREADS)]
    assert row["name"] == "make_repro_machine_lenet_step_cpu_ms"
    assert (row["value"], row["unit"]) == (41.5, "ms")
    assert row["measured_as"] == "weighting/T2/equal/step_cpu_ms"


@pytest.mark.slow
def test_the_machine_row_measures_a_real_step() -> None:
    row = bench_repro.machine_row()
    # a LeNet step at batch 256 on one thread: milliseconds, not microseconds or seconds
    assert 1.0 < row["value"] < 2000.0
