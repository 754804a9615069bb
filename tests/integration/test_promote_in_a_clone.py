"""`multitask promote` in a fresh clone: reports/train.json is committed, but the run it names
lives in the MLflow store of whoever ran the pipeline last. The error says so and what to do."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_promote_of_a_run_from_another_store_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text((ROOT / "sample" / "params.yaml").read_text())
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "train.json").write_text(json.dumps({"run_id": "ab" * 16}))
    (tmp_path / ".git").mkdir()  # the clone's root: its own, empty mlflow.db
    env = {"PATH": str(ROOT / ".venv" / "bin"), "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "multitask", "promote"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert (f"MLflow store sqlite:///{tmp_path}/mlflow.db: no such file (the repository's "
            "store; no pipeline here has logged a run yet)") in done.stderr
    assert not (tmp_path / "mlflow.db").exists()  # none created to look in
    assert "reports/train.json names the run that trained the committed model" in done.stderr
    assert "Run the pipeline here first (`dvc repro dvc.yaml`), then promote" in done.stderr
    assert "set MLFLOW_TRACKING_URI to the store that holds that run" in done.stderr
    # --run-id names the run itself: no word about reports/train.json
    done = subprocess.run([sys.executable, "-m", "multitask", "promote", "--run-id", "cd" * 16],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "mlflow.db: no such file" in done.stderr
    assert "names the run that trained" not in done.stderr
    # a store that exists but holds no such run: the same advice for the committed run
    subprocess.run([sys.executable, "-c", "from multitask import tracking; tracking.client()"],
                   cwd=tmp_path, env=env, check=True, timeout=120)
    done = subprocess.run([sys.executable, "-m", "multitask", "promote"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert f"run {'ab' * 16} not found in the MLflow store sqlite:///{tmp_path}/mlflow.db" \
        in done.stderr
    assert "Run the pipeline here first (`dvc repro dvc.yaml`), then promote" in done.stderr
