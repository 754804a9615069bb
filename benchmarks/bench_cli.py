"""Command latency: `multitask --help` (target <= 1 s) and a `dvc repro` with nothing to do
(target <= 3 s), each the median of several fresh processes. A pipeline that is not up to date
(`make repro-sample`, `make repro` not run yet) is a skipped row, not reproduced here."""

from __future__ import annotations

import subprocess
from typing import Any

from benchmarks.common import BIN, ROOT, median_seconds, row, tool_env


def _up_to_date(target: list[str]) -> bool:
    status = subprocess.run([str(BIN / "dvc"), "status", *target], cwd=ROOT, env=tool_env(),
                            capture_output=True, text=True)
    return status.returncode == 0 and "up to date" in status.stdout


def run() -> list[dict[str, Any]]:
    env = tool_env()
    help_s = median_seconds(lambda: subprocess.run(
        [str(BIN / "multitask"), "--help"], check=True, capture_output=True, env=env), repeat=5)
    rows = [row("multitask --help", help_s, "s", 1.0)]
    # Never reproduced here: that would rewrite the committed sample/dvc.lock and reports with
    # this machine's floats, and start MLflow runs in the checkout's store.
    for label, target, make in (("sample pipeline", ["sample/dvc.yaml"], "make repro-sample"),
                                ("main pipeline", [], "make repro")):
        if not _up_to_date(target):
            rows.append({"name": f"dvc repro, nothing changed ({label})", "value": None,
                         "unit": "s", "skipped": f"pipeline not reproduced yet: run {make}"})
            continue
        repro_s = median_seconds(lambda t=target: subprocess.run(
            [str(BIN / "dvc"), "repro", *t], cwd=ROOT, env=env, check=True, capture_output=True),
            repeat=3)
        rows.append(row(f"dvc repro, nothing changed ({label})", repro_s, "s", 3.0))
    return rows
