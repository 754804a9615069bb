"""A fresh clone agrees with dvc.lock about the code: nothing reruns because of files git does
not track (bytecode in ``__pycache__``, ``*.egg-info``), which DVC would otherwise hash into the
code dependencies (src/multitask/models, weighting, ...)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_fresh_clone_sees_no_modified_dependency(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    # the clone has no bytecode; compile some into it, as running the stages would
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(clone / "src")], check=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=clone,
                            env=env, check=True, capture_output=True, text=True)
    modified = {
        (stage, dep)
        for stage, changes in json.loads(status.stdout).items()
        for change in changes if isinstance(change, dict)
        for dep, state in change.get("changed deps", {}).items() if state == "modified"
    }
    # data and models are not in the clone ("deleted"); the code must read as committed
    assert modified == set()
