"""benchmarks/bench_cli.py measures what is there and changes nothing in the checkout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # benchmarks/ is a package of the repository, not installed
    sys.path.insert(0, str(ROOT))

from benchmarks import bench_cli  # noqa: E402


def test_a_pipeline_not_up_to_date_is_skipped_not_reproduced_in_the_checkout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    commands: list[list[str]] = []

    def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        commands.append([Path(command[0]).name, *command[1:]])
        changed = "changed outs:\n\tnot in cache: sample/models/model.pt\n"
        return subprocess.CompletedProcess(command, 0, stdout=changed, stderr="")

    monkeypatch.setattr(bench_cli.subprocess, "run", run)
    rows = bench_cli.run()
    assert not [c for c in commands if c[:2] == ["dvc", "repro"]], commands
    assert [(r["name"], r["value"], r.get("skipped")) for r in rows[1:]] == [
        ("dvc repro, nothing changed (sample pipeline)", None,
         "pipeline not reproduced yet: run make repro-sample"),
        ("dvc repro, nothing changed (main pipeline)", None,
         "pipeline not reproduced yet: run make repro")]
