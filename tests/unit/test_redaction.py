"""Credentials in URLs never reach a log line, an error message or an MLflow param."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from multitask.config import flatten, parse_params
from multitask.redaction import redact

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("text", "masked"), [
    ("postgresql://alice:s3cret@db:5432/optuna", "postgresql://alice:***@db:5432/optuna"),
    ("at http://token123@127.0.0.1:5000/ now", "at http://***@127.0.0.1:5000/ now"),
    ("sqlite:////work/mlflow.db", "sqlite:////work/mlflow.db"),
    ("a@b.c and https://host/path", "a@b.c and https://host/path"),
    ("x postgresql+psycopg2://u:p%40ss@h/d y http://v:w@h2", "x postgresql+psycopg2://u:***@h/d y "
     "http://v:***@h2"),
])
def test_redact_masks_userinfo_only(text: str, masked: str) -> None:
    assert redact(text) == masked


def test_a_storage_password_is_not_an_mlflow_param() -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["tune"]["storage"] = "postgresql://alice:s3cret@127.0.0.1/optuna"
    flat = flatten(parse_params(raw))
    assert flat["tune.storage"] == "postgresql://alice:***@127.0.0.1/optuna"
    assert not any("s3cret" in str(value) for value in flat.values())


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
def test_an_unreachable_server_is_named_without_its_password(tmp_path: Path) -> None:
    uri = f"http://alice:s3cret@127.0.0.1:{closed_port()}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    result = subprocess.run([sys.executable, "-m", "multitask", "promote", "--params",
                             str(ROOT / "sample" / "params.yaml"), "--run-id", "0" * 32],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "http://alice:***@127.0.0.1" in result.stderr
    assert "s3cret" not in result.stderr + result.stdout
