"""MLflow end to end over the real sample pipeline: `dvc repro`, `dvc exp run` (workspace,
--temp, --queue), a crash in train, promotion, `multitask predict` and `mlflow models serve`.

One session-wide copy of the repository runs the sample pipeline once (:func:`sample_repo`,
also used by tests/e2e/test_mlflow_ui.py); the sample params are shrunk (fewer composites,
two epochs, one Optuna trial) so the whole module stays within a few minutes on two cores.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
import yaml

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
EXPERIMENT = "multifashion-sample"  # sample/params.yaml's tracking.experiment
MODEL = EXPERIMENT  # registered model name (promote.model_name unset -> the experiment)
TASKS = ("left", "right")
EPOCHS = 2
SMALL = {  # merged into sample/params.yaml of the copy
    "data": {"train_size": 1500, "test_size": 500},
    "train": {"epochs": EPOCHS, "diagnostics_every": 4},
    "tune": {"n_trials": 1, "epochs": 1},
}
# Each experiment changes a train-only param, so only train and evaluate run again.
EXPERIMENTS = {"workspace": ("exp-workspace", "0.9"), "temp": ("exp-temp", "0.8"),
               "queue": ("exp-queue", "0.7")}

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("sample_pipeline")]


@dataclass(frozen=True)
class SampleRepo:
    """A throw-away git+DVC copy of the repository after the sample pipeline and experiments."""

    root: Path
    env: dict[str, str]
    run_id: str  # the MLflow run of `dvc repro sample/dvc.yaml`
    experiment_runs: dict[str, str]  # "workspace" | "temp" | "queue" -> run id
    promotion: tuple[int, str]  # exit code and stdout of `multitask promote` on run_id

    @property
    def sample(self) -> Path:
        return self.root / "sample"

    @property
    def store(self) -> str:
        """The store the commands log to: the environment's tracking server when it names
        one (tests/integration/test_tracking_server.py), else the copy's SQLite file."""
        return self.env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.root / 'mlflow.db'}"

    def client(self) -> mlflow.MlflowClient:
        return mlflow.MlflowClient(tracking_uri=self.store, registry_uri=self.store)

    def run(self, *command: str, cwd: Path | None = None, timeout: float = 300,
            check: bool = True, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        started = time.perf_counter()
        done = subprocess.run(command, cwd=cwd or self.root, env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=timeout)
        log.info("%.1f s: %s", time.perf_counter() - started, " ".join(command))
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(command)} exited {done.returncode}\n"
                                 f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
        return done


def _merge(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        base[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return base


def _copy_tree(destination: Path) -> None:
    """The working tree as git sees it (tracked and untracked, not ignored), outputs left out."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if name == "sample/dvc.lock" or name.startswith(("sample/reports/", "reports/")) \
                or not source.is_file():
            continue
        (destination / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination / name)


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "tests"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "tests@example.invalid"
    # sample system metrics every second (default 10 s) so that short stages record some
    env["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = "1"
    env["MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING"] = "1"
    return env


def run_of(repo: SampleRepo, experiment_name: str) -> str:
    runs = repo.client().search_runs(
        [repo.client().get_experiment_by_name(EXPERIMENT).experiment_id],
        # the tune stage's run carries the experiment's name too; this is train + evaluate's
        filter_string=f"tags.`dvc.experiment` = '{experiment_name}' and tags.stage = 'evaluate'")
    assert len(runs) == 1, f"{experiment_name}: {len(runs)} runs in {repo.store}"
    return runs[0].info.run_id


def copy_sample_repo(root: Path, env: dict[str, str] | None = None) -> SampleRepo:
    """A git repository at ``root`` holding the working tree, the sample params shrunk to
    :data:`SMALL`, nothing run yet; ``env`` is added to its commands' environment."""
    root.mkdir(parents=True, exist_ok=True)
    _copy_tree(root)
    params_file = root / "sample" / "params.yaml"
    params_file.write_text(yaml.safe_dump(_merge(yaml.safe_load(params_file.read_text()), SMALL),
                                          sort_keys=False))
    repo = SampleRepo(root, {**_environment(), **(env or {})}, run_id="", experiment_runs={},
                      promotion=(0, ""))
    repo.run("git", "init", "-q")
    repo.run("git", "add", "-A")
    repo.run("git", "commit", "-q", "-m", "sample pipeline under test")
    return repo


def run_queue(repo: SampleRepo, names: list[str], jobs: int = 1,
              env: dict[str, str] | None = None) -> None:
    """Run the queued experiments ``names`` with ``jobs`` workers (``env`` added to theirs);
    fail with the logs of any experiment that failed."""
    repo.run("dvc", "queue", "start", "--jobs", str(jobs), env=env)
    deadline = time.monotonic() + 300
    while True:
        status = repo.run("dvc", "queue", "status").stdout
        if not any(word in status for word in ("Queued", "Running")):
            break
        assert time.monotonic() < deadline, f"dvc queue still busy:\n{status}\n" + "\n".join(
            f"{log.name}: ...{log.read_text(errors='replace')[-2000:]}"
            for log in sorted((repo.root / ".dvc" / "tmp" / "exps" / "celery").glob("*.out")))
        time.sleep(2)
    repo.run("dvc", "queue", "stop", check=False)
    assert "Failed" not in status, "\n".join(
        repo.run("dvc", "queue", "logs", name, check=False).stdout for name in names)


def _build(root: Path) -> SampleRepo:
    repo = copy_sample_repo(root)
    repo.run("dvc", "repro", "sample/dvc.yaml", timeout=600)
    run_id = json.loads((root / "sample" / "reports" / "train.json").read_text())["run_id"]
    repo.run("git", "add", "-A")
    repo.run("git", "commit", "-q", "-m", "sample results")

    fraction = "sample/params.yaml:++train.data_fraction"  # ++: add or override
    name, value = EXPERIMENTS["workspace"]
    repo.run("dvc", "exp", "run", "sample/dvc.yaml", "--name", name, "-S", f"{fraction}={value}")
    name, value = EXPERIMENTS["temp"]
    repo.run("dvc", "exp", "run", "sample/dvc.yaml", "--temp", "--name", name,
             "-S", f"{fraction}={value}")
    name, value = EXPERIMENTS["queue"]
    repo.run("dvc", "exp", "run", "sample/dvc.yaml", "--queue", "--name", name,
             "-S", f"{fraction}={value}")
    run_queue(repo, [name])
    runs = {mode: run_of(repo, name) for mode, (name, _) in EXPERIMENTS.items()}
    # Promoted here, once: the tests that need a champion may run at the same time.
    promoted = repo.run("multitask", "promote", "--run-id", run_id, cwd=root / "sample",
                        check=False)
    return SampleRepo(root, repo.env, run_id, runs, (promoted.returncode, promoted.stdout
                                                     + promoted.stderr[-3000:]))


def sample_repo(factory: pytest.TempPathFactory) -> SampleRepo:
    """The sample repository, built once per test session and shared by every test process.

    Under xdist the workers' temporary folders share a parent: the first worker to get the
    lock builds there and records the outcome (or its error) in a JSON file; the others wait
    for the lock and read it. ``make test``'s ``--dist loadgroup`` keeps these tests on one
    worker anyway; the lock keeps the fixture right under any other distribution (``-n 2``).
    """
    base = factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root, state = shared / "sample-pipeline", shared / "sample-pipeline.json"
    with open(shared / "sample-pipeline.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        if not state.exists():
            shutil.rmtree(root, ignore_errors=True)
            try:
                built = _build(root)
            except BaseException as exc:
                state.write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
                raise
            state.write_text(json.dumps({"run_id": built.run_id,
                                         "experiment_runs": built.experiment_runs,
                                         "promotion": built.promotion}))
    recorded = json.loads(state.read_text())
    if "error" in recorded:
        pytest.fail(f"the sample pipeline failed in another test process: {recorded['error']}")
    return SampleRepo(root, _environment(), recorded["run_id"], recorded["experiment_runs"],
                      tuple(recorded["promotion"]))


@pytest.fixture(scope="session")
def sample_pipeline(tmp_path_factory: pytest.TempPathFactory) -> SampleRepo:
    return sample_repo(tmp_path_factory)


def _reported_metrics(repo: SampleRepo, run_id: str) -> dict:
    """The run's own copy of reports/metrics.json (the workspace holds the last experiment's)."""
    artifacts = Path(repo.client().get_run(run_id).info.artifact_uri.removeprefix("file://"))
    return json.loads((artifacts / "metrics.json").read_text())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_http(url: str, process: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{process.args} exited {process.returncode}: "
                                 f"{process.stdout.read() if process.stdout else ''}")
        try:
            if requests.get(url, timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout} s")


# ---------------------------------------------------------------------------------------- tests
def test_repro_run_has_every_metric_at_every_epoch_the_artifacts_and_tags(
        sample_pipeline: SampleRepo) -> None:
    client = sample_pipeline.client()
    run = client.get_run(sample_pipeline.run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == EXPERIMENT
    per_epoch = [f"{split}/{metric}/{task}" for task in TASKS
                 for split, metric in (("train", "loss"), ("val", "loss"), ("val", "accuracy"))]
    per_epoch += [f"weight/{task}" for task in TASKS]
    per_epoch += [key for key in run.data.metrics if key.startswith("grad/")]
    assert any(key.startswith("grad/cos/") for key in per_epoch), sorted(run.data.metrics)
    for key in per_epoch:
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
        assert steps == list(range(1, EPOCHS + 1)), key
    test_keys = {f"test/{metric}/{task}" for task in TASKS for metric in ("accuracy", "loss")}
    assert test_keys | {"test/delta_m_pct", "test/mean_accuracy"} <= set(run.data.metrics)
    assert any(key.startswith("system/cpu_utilization") for key in run.data.metrics)
    reported = _reported_metrics(sample_pipeline, run.info.run_id)
    assert run.data.metrics["test/delta_m_pct"] == pytest.approx(reported["delta_m_pct"])
    assert run.data.metrics["test/accuracy/left"] == reported["tasks"]["left"]["accuracy"]

    def artifacts(path: str | None = None) -> set[str]:
        found = set()
        for item in client.list_artifacts(run.info.run_id, path):
            found |= artifacts(item.path) if item.is_dir else {item.path}
        return found

    assert {"confusion/left.png", "confusion/right.png", "plots/curves.png", "params.yaml",
            "metrics.json", "validation/summary.json", "tuning/weights.json"} <= artifacts()
    # train.weighting: tuned (the sample's): the run and train.json say which weights it was
    chosen = json.loads((sample_pipeline.sample / "reports" / "tuning" / "weights.json"
                         ).read_text())
    for task in TASKS:
        assert float(run.data.params[f"tuned.weights.{task}"]) == chosen["weights"][task]
    assert (run.data.params["tuned.trial"], run.data.params["tuned.study"]) == (
        str(chosen["trial"]), chosen["study"])
    record = json.loads((sample_pipeline.sample / "reports" / "train.json").read_text())
    assert record["tuned"] == {key: chosen[key]
                               for key in ("method", "weights", "lr", "study", "trial")}
    assert run.info.artifact_uri.startswith((sample_pipeline.root / "mlartifacts").as_uri())
    assert not list(sample_pipeline.root.rglob("mlruns")), "artifacts escaped to ./mlruns"

    tags = run.data.tags
    head = sample_pipeline.run("git", "rev-parse", "HEAD~1").stdout.strip()
    assert tags["git.commit"] == head  # the commit the pipeline ran on
    assert tags["git.dirty"] == "false"
    meta = json.loads((sample_pipeline.sample / "data" / "processed" / "meta.json").read_text())
    assert tags["data.sha256"] == meta["sha256"]
    assert tags["device"] == "cpu" and tags["torch.version"] and tags["cuda.version"]
    assert run.data.params["train.epochs"] == str(EPOCHS)
    assert run.data.params["data.train_size"] == "1500"
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.digest == meta["sha256"][:32]
    assert "multitask.model_uri" in tags
    assert tags["evaluated"] == "true"  # the pipeline's evaluate completed this run


def test_logged_model_reproduces_the_reported_test_accuracy(sample_pipeline: SampleRepo) -> None:
    from multitask.predict import predict_table

    uri = sample_pipeline.client().get_run(sample_pipeline.run_id).data.tags["multitask.model_uri"]
    mlflow.set_tracking_uri(sample_pipeline.store)
    model = mlflow.pyfunc.load_model(uri)
    processed = sample_pipeline.sample / "data" / "processed"
    images = np.load(processed / "test_images.npy")[:, None].astype(np.float32)
    labels = np.load(processed / "test_labels.npy")
    predicted = predict_table(model, images)
    names = {task["name"]: np.array(task["class_names"])
             for task in json.loads((processed / "meta.json").read_text())["tasks"]}
    reported = _reported_metrics(sample_pipeline, sample_pipeline.run_id)
    for column, task in enumerate(TASKS):
        truth = names[task][labels[:, column]]
        accuracy = float(np.mean(predicted[task].to_numpy() == truth))
        assert accuracy == pytest.approx(reported["tasks"][task]["accuracy"], abs=0.005), task


def test_runs_from_dvc_exp_run_temp_and_queue_land_in_the_same_store(
        sample_pipeline: SampleRepo) -> None:
    client = sample_pipeline.client()
    assert set(sample_pipeline.experiment_runs) == {"workspace", "temp", "queue"}
    for mode, run_id in sample_pipeline.experiment_runs.items():
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED", mode
        assert run.info.run_name == EXPERIMENTS[mode][0]
        assert run.data.params["train.data_fraction"] == EXPERIMENTS[mode][1], mode
        assert "test/mean_accuracy" in run.data.metrics, mode
        # artifacts in the original repository, not in the deleted temporary copy
        assert run.info.artifact_uri.startswith((sample_pipeline.root / "mlartifacts").as_uri())
        assert Path(run.info.artifact_uri.removeprefix("file://"), "metrics.json").is_file()
    assert not (sample_pipeline.sample / "mlflow.db").exists()


def test_a_crash_in_train_leaves_the_run_failed(sample_pipeline: SampleRepo) -> None:
    done = sample_pipeline.run("multitask", "train", cwd=sample_pipeline.sample, check=False,
                               env={"MULTITASK_FAIL_AFTER_EPOCH": "1"})
    (sample_pipeline.sample / "models" / "checkpoints" / "train.pt").unlink(missing_ok=True)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "MULTITASK_FAIL_AFTER_EPOCH=1: injected failure" in done.stderr
    experiment = sample_pipeline.client().get_experiment_by_name(EXPERIMENT)
    (failed,) = sample_pipeline.client().search_runs(
        [experiment.experiment_id], filter_string="attributes.status = 'FAILED'")
    assert "injected failure" in failed.data.tags["failure"]
    assert [m.step for m in sample_pipeline.client().get_metric_history(
        failed.info.run_id, "val/accuracy/left")] == [1]


def test_promote_predict_and_serve_the_champion(sample_pipeline: SampleRepo,
                                                tmp_path: Path) -> None:
    from PIL import Image

    sample = sample_pipeline.sample
    exit_code, output = sample_pipeline.promotion  # `multitask promote --run-id <repro run>`
    assert exit_code == 0, output
    assert "no champion yet: the first registered model becomes champion" in output
    assert f"{MODEL} v1 is now champion" in output
    champion = sample_pipeline.client().get_model_version_by_alias(MODEL, "champion")
    assert champion.run_id == sample_pipeline.run_id
    assert float(champion.tags["test/accuracy/left"]) == pytest.approx(
        sample_pipeline.client().get_run(sample_pipeline.run_id).data.metrics["test/accuracy/left"])
    again = sample_pipeline.run("multitask", "promote", "--run-id", sample_pipeline.run_id,
                                "--dry-run", cwd=sample)
    assert "is already the champion" in again.stdout
    processed = sample / "data" / "processed"
    images = np.load(processed / "test_images.npy")[:3]
    Image.fromarray(images[0]).save(tmp_path / "first.png")
    np.save(tmp_path / "batch.npy", images[1:])
    predicted = sample_pipeline.run("multitask", "predict", "--model", f"models:/{MODEL}@champion",
                                    str(tmp_path / "first.png"), str(tmp_path / "batch.npy"),
                                    "--json", cwd=sample)
    rows = json.loads(predicted.stdout)
    assert [row["image"] for row in rows] == [str(tmp_path / "first.png"),
                                              f"{tmp_path / 'batch.npy'}[0]",
                                              f"{tmp_path / 'batch.npy'}[1]"]
    names = {task["name"]: task["class_names"]
             for task in json.loads((processed / "meta.json").read_text())["tasks"]}
    for row in rows:  # per task: the class name and its probability
        assert set(row) == {"image", *TASKS, *(f"{task}_probability" for task in TASKS)}
        for task in TASKS:
            assert row[task] in names[task] and 0 < row[f"{task}_probability"] <= 1

    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL}@champion",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        cwd=sample, env={**sample_pipeline.env, "MLFLOW_TRACKING_URI": sample_pipeline.store},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", server)
        # the README's curl request: {"inputs": [[[[pixel, ...], ...]]]}, (N, 1, H, W) 0..255
        answer = requests.post(f"http://127.0.0.1:{port}/invocations", timeout=30,
                               json={"inputs": images[:, None].astype(np.float32).tolist()})
        assert answer.status_code == 200, answer.text
        served = answer.json()["predictions"]
        expected = [{k: v for k, v in row.items() if k != "image"} for row in rows]
        assert [{k: row[k] for k in expected[0] if "probability" not in k} for row in served] \
            == [{k: row[k] for k in expected[0] if "probability" not in k} for row in expected]
        for got, want in zip(served, expected, strict=True):
            for task in TASKS:
                key = f"{task}_probability"
                assert got[key] == pytest.approx(want[key], abs=1e-6)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_experiments_in_copies_reuse_the_tuning_study(sample_pipeline: SampleRepo) -> None:
    """`--temp` and `--queue` run in a copy; the study journal comes from the DVC cache there,
    so an experiment that does not change the tune params does not tune again."""
    client = sample_pipeline.client()
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    for mode in ("temp", "queue"):
        name = EXPERIMENTS[mode][0]
        tune_runs = client.search_runs(
            [experiment], filter_string=f"tags.`dvc.experiment` = '{name}' and tags.stage = 'tune'")
        assert tune_runs == [], f"{mode}: the tune stage ran again in the copy"
