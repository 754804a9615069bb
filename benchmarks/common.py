"""Helpers shared by the benchmarks: timing and getting the full raw data in place."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def median_seconds(function: Callable[[], Any], repeat: int = 3) -> float:
    """Median wall time of ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def tool_env() -> dict[str, str]:
    """The environment with this interpreter's scripts (multitask, dvc) first on PATH."""
    return {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}


def ensure_raw_data() -> None:
    """Run ``multitask download`` in the repository root (a no-op when files are verified)."""
    subprocess.run([str(BIN / "multitask"), "download"], cwd=ROOT, env=tool_env(), check=True,
                   stdout=subprocess.DEVNULL)


def row(name: str, value: float, unit: str, target: float | None = None,
        higher_is_better: bool = False, **extra: Any) -> dict[str, Any]:
    """A result row; with a target, ``ok`` says whether it was met."""
    out: dict[str, Any] = {"name": name, "value": round(value, 3), "unit": unit, **extra}
    if target is not None:
        out["target"] = f"{'>=' if higher_is_better else '<='} {target} {unit}"
        out["ok"] = value >= target if higher_is_better else value <= target
    return out
