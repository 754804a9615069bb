"""The team's tracking server (scripts/tracking_server.py: `mlflow server` over PostgreSQL with
artifacts served from its folder), used over HTTP by the real sample pipeline.

One server for the module, started and stopped by the script's ``start``/``stop`` as a person
would, in a folder user postgres can reach. Over it: the sample pipeline (`dvc repro` with its
nested Optuna trial runs, artifacts and logged model, then `multitask promote` and
`multitask predict --model models:/...@champion`); two queued experiments running at once
(`dvc queue start -j 2`); and the server killed and started again while `multitask train` logs
per-epoch metrics. The sample params are shrunk as in test_tracking_pipeline.py.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
import yaml
from test_tracking_pipeline import (
    EPOCHS,
    EXPERIMENT,
    MODEL,
    TASKS,
    SampleRepo,
    copy_sample_repo,
    free_port,
    run_of,
    run_queue,
)

from multitask.layout import Layout
from multitask.tracking import fetch_checked_model
from multitask.training.trainer import BARRIER_ENV

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "tracking_server.py"
UNAVAILABLE_EXIT = 4  # the script's exit status when PostgreSQL cannot run on this machine
FRACTION = "sample/params.yaml:++train.data_fraction"
QUEUED = {"exp-server-a": "0.5", "exp-server-b": "0.4"}  # name -> train.data_fraction
RESTART_EPOCHS = 30  # long enough that the server goes down mid-run, even on a busy machine
PER_EPOCH = [f"{split}/{metric}/{task}" for task in TASKS
             for split, metric in (("train", "loss"), ("val", "loss"), ("val", "accuracy"))]

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("tracking-server")]


@dataclass(frozen=True)
class Server:
    """A tracking server run by scripts/tracking_server.py from ``folder`` on ``port``."""

    folder: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, action: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(SCRIPT), action, "--dir", str(self.folder),
                               "--port", str(self.port), "--workers", "2"],
                              capture_output=True, text=True, timeout=300)

    def answers(self) -> bool:
        try:
            return requests.get(f"{self.url}/health", timeout=2).ok
        except requests.RequestException:
            return False

    def crash(self) -> None:
        """SIGKILL the server and its workers, as a crash or an OOM kill would end them."""
        os.killpg(int((self.folder / "mlflow.pid").read_text()), signal.SIGKILL)
        deadline = time.monotonic() + 30
        while self.answers():
            assert time.monotonic() < deadline, "the killed server still answers"
            time.sleep(0.2)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    folder = Path(tempfile.mkdtemp(prefix="multitask-server-"))
    folder.chmod(0o755)  # user postgres (the script runs PostgreSQL as it under root) enters
    running = Server(folder, free_port())
    try:
        started = running.script("start")
        if started.returncode == UNAVAILABLE_EXIT:
            pytest.skip(started.stderr.strip())
        assert started.returncode == 0, started.stderr[-3000:]
        assert running.script("status").returncode == 0
        unnamed = subprocess.run([sys.executable, str(SCRIPT), "status", "--dir", str(folder)],
                                 capture_output=True, text=True, timeout=300)
        assert unnamed.returncode == 0, unnamed.stderr  # the port it was started on, recorded
        yield running
    finally:
        stopped = running.script("stop")
        status = running.script("status")
        shutil.rmtree(folder, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stderr
    assert status.returncode == 3, status.stderr  # both PostgreSQL and mlflow are down


@pytest.fixture(scope="module")
def served(server: Server, tmp_path_factory: pytest.TempPathFactory) -> SampleRepo:
    """The sample pipeline run once (`dvc repro`) against the server, then promoted."""
    repo = copy_sample_repo(tmp_path_factory.mktemp("served"),
                            {"MLFLOW_TRACKING_URI": server.url})
    repo.run("dvc", "repro", "sample/dvc.yaml", timeout=600)
    run_id = json.loads((repo.sample / "reports" / "train.json").read_text())["run_id"]
    repo.run("git", "add", "-A")
    repo.run("git", "commit", "-q", "-m", "sample results")
    promoted = repo.run("multitask", "promote", "--run-id", run_id, cwd=repo.sample,
                        check=False)
    return SampleRepo(repo.root, repo.env, run_id, {},
                      (promoted.returncode, promoted.stdout + promoted.stderr[-3000:]))


@pytest.fixture(scope="module")
def queued(served: SampleRepo, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two experiments queued with different params and run by two workers at once (each
    train stage waits after its first epoch for the other: on a loaded machine one finished
    training before the other started); experiment name -> MLflow run id."""
    for name, fraction in QUEUED.items():
        served.run("dvc", "exp", "run", "sample/dvc.yaml", "--queue", "--name", name,
                   "-S", f"{FRACTION}={fraction}")
    barrier = tmp_path_factory.mktemp("barrier")
    run_queue(served, list(QUEUED), jobs=2, env={BARRIER_ENV: f"{barrier}:{len(QUEUED)}"})
    return {name: run_of(served, name) for name in QUEUED}


def _steps(client: mlflow.MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(metric.step for metric in client.get_metric_history(run_id, key))


def _artifacts(client: mlflow.MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found: set[str] = set()
    for item in client.list_artifacts(run_id, path):
        found |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


# ---------------------------------------------------------------------------------------- tests
def test_the_pipeline_runs_land_on_the_server_and_are_read_back_through_it(
        server: Server, served: SampleRepo, tmp_path: Path) -> None:
    client = served.client()
    assert served.store == server.url
    run = client.get_run(served.run_id)
    assert run.info.status == "FINISHED"
    for key in PER_EPOCH:
        assert _steps(client, served.run_id, key) == list(range(1, EPOCHS + 1)), key
    assert {f"test/accuracy/{task}" for task in TASKS} | {"test/delta_m_pct"} \
        <= set(run.data.metrics)

    # artifacts go through the server to its --artifacts-destination, never to the clone
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    assert {"metrics.json", "params.yaml", "plots/curves.png", "confusion/left.png",
            "validation/summary.json"} <= _artifacts(client, served.run_id)
    mlflow.set_tracking_uri(server.url)
    downloaded = mlflow.artifacts.download_artifacts(run_id=served.run_id,
                                                     artifact_path="metrics.json",
                                                     dst_path=str(tmp_path))
    reported = json.loads((served.sample / "reports" / "metrics.json").read_text())
    assert json.loads(Path(downloaded).read_text()) == reported
    assert list((server.folder / "artifacts").rglob("metrics.json"))
    for local in ("mlflow.db", "mlartifacts", "mlruns"):
        assert not list(served.root.rglob(local)), f"{local} written in the clone"

    # the tune stage's run and its nested trial runs
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    (tune,) = client.search_runs([experiment], "tags.stage = 'tune'")
    trials = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{tune.info.run_id}'")
    assert len(trials) == 1  # SMALL: tune.n_trials 1
    assert all(trial.info.status == "FINISHED" for trial in trials)
    assert all(f"val/accuracy/{task}" in trial.data.metrics for task in TASKS for trial in trials)


def test_promote_and_predict_with_a_models_uri_through_the_server(
        server: Server, served: SampleRepo) -> None:
    exit_code, output = served.promotion
    assert exit_code == 0, output
    assert f"{MODEL} v1 is now champion" in output
    champion = served.client().get_model_version_by_alias(MODEL, "champion")
    assert champion.run_id == served.run_id
    status = served.run("multitask", "promote", "--status", cwd=served.sample)
    assert "champion" in status.stdout

    # the champion, fetched through the server by its alias, scores what evaluate reported
    processed = served.sample / "data" / "processed"
    predicted = served.run("multitask", "predict", "--model", f"models:/{MODEL}@champion",
                           str(processed / "test_images.npy"), "--json", cwd=served.sample)
    rows = json.loads(predicted.stdout)
    labels = np.load(processed / "test_labels.npy")
    assert len(rows) == len(labels)
    reported = json.loads((served.sample / "reports" / "metrics.json").read_text())
    names = {task["name"]: np.array(task["class_names"])
             for task in json.loads((processed / "meta.json").read_text())["tasks"]}
    for column, task in enumerate(TASKS):  # each row names every task's class
        truth = names[task][labels[:, column]]
        accuracy = np.mean(np.array([row[task] for row in rows]) == truth)
        assert accuracy == pytest.approx(reported["tasks"][task]["accuracy"], abs=0.005), task


def test_two_pipelines_logging_at_once_lose_nothing(served: SampleRepo, queued: dict[str, str],
                                                    tmp_path: Path) -> None:
    client = served.client()
    runs = {name: client.get_run(run_id) for name, run_id in queued.items()}
    first, second = (run.info for run in runs.values())
    assert first.start_time < second.end_time and second.start_time < first.end_time, \
        "the two queued experiments did not run at the same time"
    mlflow.set_tracking_uri(served.store)
    for name, run in runs.items():
        assert run.info.status == "FINISHED", name
        assert run.info.run_name == name
        assert run.data.params["train.data_fraction"] == QUEUED[name]
        for key in PER_EPOCH + [f"weight/{task}" for task in TASKS]:
            assert _steps(client, run.info.run_id, key) == list(range(1, EPOCHS + 1)), (name, key)
        assert {f"test/accuracy/{task}" for task in TASKS} <= set(run.data.metrics), name
        assert {"metrics.json", "plots/curves.png"} <= _artifacts(client, run.info.run_id)
        model = fetch_checked_model(run.data.tags["multitask.model_uri"], tmp_path / name)
        assert (model / "MLmodel").is_file(), name


def test_a_server_killed_mid_run_and_restarted_still_gets_the_later_metrics(
        server: Server, served: SampleRepo, pipeline_folder: Callable[[Path, Path], Layout],
        tmp_path: Path) -> None:
    """MLflow's HTTP client retries a refused request (MLFLOW_HTTP_REQUEST_MAX_RETRIES=7,
    backoff factor 2: about four minutes in all); a server back within that time receives
    every batch logged while it was down, and the run ends FINISHED, not RUNNING."""
    folder = tmp_path / "restart"
    pipeline_folder(folder, served.sample / "data" / "processed")
    params = yaml.safe_load((served.sample / "params.yaml").read_text())
    params["train"].update(epochs=RESTART_EPOCHS, weighting="equal")
    params["tracking"]["experiment"] = "server-restart"
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    client = served.client()
    training = subprocess.Popen(["multitask", "train"], cwd=folder, env=served.env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while True:  # until the first epoch's metrics reach the server
            assert training.poll() is None, training.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "no epoch logged within 180 s"
            experiment = client.get_experiment_by_name("server-restart")
            found = client.search_runs([experiment.experiment_id]) if experiment else []
            if found and (before := _steps(client, found[0].info.run_id, "val/accuracy/left")):
                break
            time.sleep(0.3)
        server.crash()
        down_at = time.monotonic()
        restarted = server.script("start")
        assert restarted.returncode == 0, restarted.stderr[-3000:]
        down_for = time.monotonic() - down_at
        output, _ = training.communicate(timeout=400)
    finally:
        if training.poll() is None:
            training.kill()
    assert training.returncode == 0, output[-3000:]
    assert max(before) < RESTART_EPOCHS, "training ended before the server went down"
    run = client.get_run(found[0].info.run_id)
    assert run.info.status == "FINISHED"
    for key in PER_EPOCH:
        assert _steps(client, run.info.run_id, key) == list(range(1, RESTART_EPOCHS + 1)), key
    log.info("server down %.1f s after epoch %d of %d", down_for, max(before), RESTART_EPOCHS)


def run_in_the_foreground(server: Server) -> subprocess.Popen[str]:
    """`make server`'s `run`, once the server answers."""
    foreground = subprocess.Popen(
        [sys.executable, str(SCRIPT), "run", "--dir", str(server.folder), "--port",
         str(server.port), "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    while not server.answers():
        if foreground.poll() is not None or time.monotonic() > deadline:
            foreground.kill()
            pytest.fail(f"`run` did not answer within 180 s: {foreground.communicate()[0]}")
        time.sleep(0.5)
    return foreground


def test_run_in_the_foreground_stops_the_server_and_postgresql_on_ctrl_c(server: Server) -> None:
    """`make server`'s way: `run` until Ctrl-C, which stops mlflow's workers and PostgreSQL."""
    assert server.script("stop").returncode == 0
    assert server.script("status").returncode == 3
    foreground = run_in_the_foreground(server)
    try:
        assert server.script("status").returncode == 0
        group = int((server.folder / "mlflow.pid").read_text())
        foreground.send_signal(signal.SIGINT)
        output, _ = foreground.communicate(timeout=60)
    finally:
        if foreground.poll() is None:
            foreground.kill()
    assert foreground.returncode == 0, output[-3000:]
    assert "PostgreSQL stopped" in output
    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)  # no worker left behind
    assert server.script("status").returncode == 3


def test_stop_from_another_shell_ends_a_foreground_run_as_ctrl_c_would(server: Server) -> None:
    """`make server` in one terminal, `tracking_server.py stop` in another: the foreground run
    stops mlflow and PostgreSQL and exits 0 (it used to say the server "exited on its own" and
    exit 1)."""
    assert server.script("stop").returncode == 0
    foreground = run_in_the_foreground(server)
    try:
        group = int((server.folder / "mlflow.pid").read_text())
        stopped = server.script("stop")
        output, _ = foreground.communicate(timeout=120)
    finally:
        if foreground.poll() is None:
            foreground.kill()
    assert stopped.returncode == 0, stopped.stderr
    assert "the foreground run" in stopped.stderr
    assert foreground.returncode == 0, output[-3000:]
    assert "on its own" not in output
    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)  # no worker left behind
    assert server.script("status").returncode == 3
