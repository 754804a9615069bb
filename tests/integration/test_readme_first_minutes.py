"""The README's "First 10 minutes" section, run verbatim in a fresh copy of the repository.

Every command of the section's ``bash`` blocks runs as written, in order, in a copy of the
working tree made by :func:`copy_sample_repo` (the sample params shrunk, so that the pipeline
takes a minute), with a PATH that holds no virtual environment: a new user's shell. ``cd`` and
``source`` lines carry over to the commands after them, as in a terminal. Each command must
exit 0 and leave what the section says it does (checked below, command by command).

Two liberties, both outside the commands' text:
- ``.venv`` in the copy is a folder of links to the repository's virtual environment with a
  fresh ``.installed`` stamp, so ``make setup`` finds it set up instead of installing torch
  again (and never reinstalls the shared environment);
- a command whose comment reads ``# serves http://127.0.0.1:PORT until Ctrl-C`` is started in
  the background, on a free port through the variable it reads (``MLFLOW_PORT`` for mlflow's
  servers, ``DASHBOARD_PORT`` for ``make dashboard``), checked over HTTP, then stopped.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from test_tracking_pipeline import ROOT, copy_sample_repo, free_port

SECTION = "## First 10 minutes"
SERVES = re.compile(r"#\s*serves http://127\.0\.0\.1:\d+ until Ctrl-C")
MODEL = "multifashion-sample"

pytestmark = [pytest.mark.slow]


def section_commands(readme: str) -> list[str]:
    """The commands of the section's ``bash`` blocks, one per line, comments kept."""
    start = readme.index(f"\n{SECTION}\n")
    end = readme.find("\n## ", start + 1)
    section = readme[start:end if end != -1 else None]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert blocks, f"README.md: no ```bash block in {SECTION!r}"
    return [line.strip() for block in blocks for line in block.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def shell_environment() -> dict[str, str]:
    """A new user's environment: no virtual environment on PATH, no MLflow or DVC settings."""
    venv_bin = str(ROOT / ".venv" / "bin")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "DVC_")) and k != "VIRTUAL_ENV"}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and p != venv_bin)
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "tests"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "tests@example.invalid"
    return env


def link_virtual_environment(root: Path) -> None:
    """``root/.venv``: links to the repository's environment and an up-to-date stamp."""
    venv = root / ".venv"
    venv.mkdir()
    for entry in (ROOT / ".venv").iterdir():
        if entry.name != ".installed":
            (venv / entry.name).symlink_to(entry)
    (venv / ".installed").touch()
    assert subprocess.run(["make", "-q", ".venv/.installed"], cwd=root).returncode == 0


# What each command leaves behind, as the section says: (words in the command, check).
Check = Callable[[Path, subprocess.CompletedProcess[str]], None]


def _pipeline_ran(root: Path, done: subprocess.CompletedProcess[str]) -> None:
    metrics = json.loads((root / "sample/reports/metrics.json").read_text())
    assert set(metrics["tasks"]) == {"left", "right"}
    assert (root / "mlflow.db").is_file()  # the one store, at the repository root


def _experiment_ran(root: Path, done: subprocess.CompletedProcess[str]) -> None:
    assert "Ran experiment(s)" in done.stdout + done.stderr
    params = yaml.safe_load((root / "sample/params.yaml").read_text())
    assert params["train"]["weighting"] == "pcgrad"  # applied to the workspace


def _experiments_shown(root: Path, done: subprocess.CompletedProcess[str]) -> None:
    assert "sample/params.yaml:train.weighting" in done.stdout
    assert "pcgrad" in done.stdout and "tuned" in done.stdout  # the experiment and its base
    assert "tasks.left.accuracy" in done.stdout and "tasks.right.accuracy" in done.stdout


def _promoted(root: Path, done: subprocess.CompletedProcess[str]) -> None:
    assert f"{MODEL} v1 is now champion" in done.stdout


def _predicted(root: Path, done: subprocess.CompletedProcess[str]) -> None:
    header, *rows = done.stdout.splitlines()
    assert "left" in header and "right" in header
    assert rows and "test_images.npy[0]" in rows[0]


CHECKS: list[tuple[tuple[str, ...], Check]] = [
    (("make", "repro-sample"), _pipeline_ran),
    (("dvc", "exp", "run"), _experiment_ran),
    (("dvc", "exp", "show"), _experiments_shown),
    (("multitask", "promote"), _promoted),
    (("multitask", "predict"), _predicted),
]


def check_server(command: str, url: str, root: Path) -> None:
    """What the section's servers must answer once up."""
    if "models serve" in command:
        wait_path = "/ping"
    elif "dashboard" in command:
        wait_path = "/api/studies"
    else:
        wait_path = "/health"
    deadline = time.monotonic() + 120
    while True:
        try:
            if requests.get(url + wait_path, timeout=2).ok:
                break
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, f"{command}: {url}{wait_path} never answered"
        time.sleep(0.5)
    if "models serve" in command:
        images = np.load(root / "sample/data/processed/test_images.npy")[:2]
        answer = requests.post(f"{url}/invocations", timeout=60,
                               json={"inputs": images[:, None].astype(np.float32).tolist()})
        assert answer.status_code == 200, answer.text
    elif "dashboard" in command:
        names = [s["study_name"] for s in requests.get(f"{url}/api/studies", timeout=10)
                 .json()["study_summaries"]]
        assert any(name.startswith("task-weights (multi-objective") for name in names), names
    else:  # make ui: the root's store, with the sample's experiment in it
        answer = requests.get(f"{url}/ajax-api/2.0/mlflow/experiments/get-by-name",
                              params={"experiment_name": MODEL}, timeout=10)
        assert answer.ok and answer.json()["experiment"]["name"] == MODEL, answer.text


def test_the_first_10_minutes_run_verbatim_on_a_fresh_copy(tmp_path: Path) -> None:
    commands = section_commands((ROOT / "README.md").read_text())
    root = tmp_path / "multitask"
    copy_sample_repo(root)
    link_virtual_environment(root)
    env = shell_environment()
    carried: list[str] = []  # cd and source lines: a terminal keeps them
    checked: set[str] = set()
    for command in commands:
        if command.startswith(("cd ", "source ", ". ")):
            carried.append(command)
            continue
        script = "\n".join(["set -e", *carried, command])
        if SERVES.search(command):
            port = free_port()
            server = subprocess.Popen(
                ["bash", "-c", script], cwd=root, start_new_session=True,
                env={**env, "MLFLOW_PORT": str(port), "DASHBOARD_PORT": str(port)},
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            try:
                check_server(command, f"http://127.0.0.1:{port}", root)
            except AssertionError:
                os.killpg(server.pid, signal.SIGKILL)
                raise AssertionError(f"{command}:\n{server.communicate()[0][-3000:]}") from None
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=20)
            checked.add(command)
            continue
        done = subprocess.run(["bash", "-c", script], cwd=root, env=env, capture_output=True,
                              text=True, timeout=900)
        assert done.returncode == 0, (f"{command} exited {done.returncode}\n"
                                      f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
        for words, check in CHECKS:
            if all(word in command.split() for word in words):
                check(root, done)
                checked.add(command)
    for words, _ in CHECKS:  # the section still shows every step a new user takes
        assert any(all(w in c.split() for w in words) for c in checked), words
    assert sum(bool(SERVES.search(c)) for c in commands) >= 2  # mlflow models serve, make ui
    assert any(c.startswith("source .venv/bin/activate") for c in carried)
    # one MLflow store at the root: nothing stray in sample/
    for stray in ("sample/mlflow.db", "sample/mlruns", "mlruns", "sample/mlartifacts"):
        assert not (root / stray).exists(), f"{stray} left behind"
