"""multitask.tracking against a real MLflow SQLite store in a temporary folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import matplotlib
import mlflow
import numpy as np
import pytest
import torch

from multitask.config import Params, TrackingConfig, flatten, load_params
from multitask.models import build_model
from multitask.predict import predict_table
from multitask.tasks import Task
from multitask.tracking import (
    MODEL_URI_TAG,
    StageRun,
    artifact_root,
    end_run,
    filter_literal,
    load_model,
    nested_run,
    repo_root,
    stage_run,
    tracking_uri,
    versions_of_run,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parents[2]


def sample_params(**tracking: object) -> Params:
    params = load_params(ROOT / "sample" / "params.yaml")
    settings = {"experiment": "unit-tests", "system_metrics": False, **tracking}
    return params.model_copy(update={"tracking": TrackingConfig(**settings)})


# ------------------------------------------------------------------------------- where the store is
def test_repo_root_is_the_original_repository_from_sample_and_temp_experiment_copies(
        tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / ".dvc").mkdir(parents=True)
    (repo / "sample").mkdir()
    temp_copy = repo / ".dvc" / "tmp" / "exps" / "tmpab12cd" / "sample"
    (temp_copy.parent / ".dvc").mkdir(parents=True)  # the copy has a .dvc of its own
    temp_copy.mkdir()
    assert repo_root(repo / "sample") == repo.resolve()
    assert repo_root(temp_copy) == repo.resolve()
    assert repo_root(temp_copy.parent) == repo.resolve()


def test_tracking_uri_defaults_to_sqlite_at_the_root_and_obeys_the_env_var(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    (repo / ".dvc").mkdir(parents=True)
    (repo / "sample").mkdir()
    monkeypatch.chdir(repo / "sample")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri() == f"sqlite:///{repo.resolve() / 'mlflow.db'}"
    assert artifact_root(tracking_uri()) == repo.resolve() / "mlartifacts"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking_uri() == "http://127.0.0.1:5999"
    assert artifact_root(tracking_uri()) is None


# -------------------------------------------------------------------------------------- the run
def test_a_dvc_experiments_runs_are_named_after_it_and_their_stage(
        store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``dvc exp run`` opens a pretrain, a tune and a train run: the train run carries the
    experiment's name, the others say which stage they are."""
    monkeypatch.setenv("DVC_EXP_NAME", "exp-unit")
    names = {}
    for stage in ("pretrain", "tune", "train"):
        with stage_run(sample_params(), stage) as run:
            pass
        names[stage] = mlflow.MlflowClient(store).get_run(run.run_id).info.run_name
    assert names == {"pretrain": "exp-unit pretrain", "tune": "exp-unit tune",
                     "train": "exp-unit"}


def test_train_run_logs_params_tags_epochs_and_finishes(
        store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DVC_EXP_NAME", "exp-unit")
    params = sample_params()
    with stage_run(params, "train") as run:
        for epoch in range(3):
            run.log_epoch(epoch, {"train/loss/left": 1.0 / (epoch + 1), "val/accuracy/right": 0.5,
                                  "weight/left": 0.5, "grad/cos/left__right": -0.1})
        run.log_metrics({"test/accuracy/left": 0.9})
    client = mlflow.MlflowClient(store)
    logged = client.get_run(run.run_id)
    assert logged.info.status == "FINISHED"
    assert client.get_experiment(logged.info.experiment_id).name == "unit-tests"
    assert logged.info.run_name == "exp-unit"
    assert set(logged.data.params) == set(flatten(params))
    assert logged.data.params["train.optimizer.lr"] == "0.002"
    assert logged.data.params["tracking.enabled"] == "true"
    assert logged.data.params["data.dataset"] == "multifashion"
    tags = logged.data.tags
    assert tags["dvc.experiment"] == "exp-unit"
    assert tags["stage"] == "train"
    assert tags["device"] in {"cpu", "cuda"}
    assert tags["torch.version"] == torch.__version__
    assert tags["git.dirty"] in {"true", "false", "unknown"}
    assert {"git.commit", "cuda.version"} <= set(tags)
    history = client.get_metric_history(run.run_id, "grad/cos/left__right")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [0, 1, 2]
    losses = {m.step: m.value for m in client.get_metric_history(run.run_id, "train/loss/left")}
    assert losses == pytest.approx({0: 1.0, 1: 0.5, 2: 1 / 3})
    # artifacts beside the store, not in ./mlruns of whatever folder the stage ran in
    assert logged.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())


def test_evaluate_reopens_the_train_run_and_a_missing_run_is_a_clear_error(store: str) -> None:
    params = sample_params()
    with stage_run(params, "train") as run:
        run.log_epoch(0, {"val/accuracy/left": 0.4})
    with stage_run(params, "evaluate", run_id=run.run_id) as reopened:
        reopened.log_metrics({"test/accuracy/left": 0.8, "test/delta_m_pct": 1.5})
    assert reopened.run_id == run.run_id
    logged = mlflow.MlflowClient(store).get_run(run.run_id)
    assert logged.info.status == "FINISHED"
    assert logged.data.metrics["test/delta_m_pct"] == 1.5
    assert logged.data.tags["stage"] == "evaluate"
    with pytest.raises(ValueError, match=r"run 0{32} not found in the MLflow store"), \
            stage_run(params, "evaluate", run_id="0" * 32):
        pass
    with pytest.raises(ValueError, match=r"'not-a-run' is not an MLflow run id"), \
            stage_run(params, "evaluate", run_id="not-a-run"):
        pass


@pytest.mark.parametrize("error", [RuntimeError("diverged"), KeyboardInterrupt()])
def test_a_crash_or_ctrl_c_ends_the_run_failed_with_the_reason(
        store: str, error: BaseException) -> None:
    with pytest.raises(type(error)), stage_run(sample_params(), "train") as run:
        run.log_epoch(0, {"train/loss/left": 2.0})
        raise error
    logged = mlflow.MlflowClient(store).get_run(run.run_id)
    assert logged.info.status == "FAILED"
    assert logged.data.tags["failure"].startswith(f"train: {type(error).__name__}")
    assert logged.data.metrics["train/loss/left"] == 2.0  # flushed before ending


def test_sigterm_ends_the_run_failed(store: str, tmp_path: Path) -> None:
    script = tmp_path / "stage.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal, time
        from multitask.config import TrackingConfig, load_params
        from multitask.tracking import stage_run
        params = load_params({str(ROOT / "sample" / "params.yaml")!r})
        params = params.model_copy(update={{"tracking": TrackingConfig(
            experiment="unit-tests", system_metrics=False)}})
        with stage_run(params, "train") as run:
            print(run.run_id, flush=True)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, env=os.environ.copy())
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    run_id = done.stdout.split()[0]
    logged = mlflow.MlflowClient(store).get_run(run_id)
    assert logged.info.status == "FAILED"
    assert "SystemExit" in logged.data.tags["failure"]


class Pruned(Exception):
    """Stands for optuna.TrialPruned: an exception that is not a failure."""


def test_nested_runs_end_finished_pruned_or_failed_under_their_parent(store: str) -> None:
    client = mlflow.MlflowClient(store)
    with stage_run(sample_params(), "tune") as parent:
        with nested_run(parent.run_id, "trial-0", params={"weight/left": 0.3},
                        tags={"optuna.trial": "0"}) as trial:
            trial.log_epoch(1, {"val/accuracy/left": 0.5})
            with pytest.raises(RuntimeError, match="not the active stage run"):
                trial.log_model(torch.nn.Linear(1, 1), np.zeros((2, 1)), ["left"])
        with pytest.raises(Pruned), nested_run(parent.run_id, "trial-1",
                                               finished_on=(Pruned,)) as pruned:
            raise Pruned
        with pytest.raises(ValueError), nested_run(parent.run_id, "trial-2") as failed:
            raise ValueError("nan loss")
        with nested_run(parent.run_id, "trial-3") as stale:
            pass
    end_run(str(stale.run_id), "FAILED", "tune: worker 3 is gone")
    runs = {r: client.get_run(r) for r in (trial.run_id, pruned.run_id, failed.run_id)}
    assert {r.data.tags["mlflow.parentRunId"] for r in runs.values()} == {parent.run_id}
    assert [r.info.status for r in runs.values()] == ["FINISHED", "FINISHED", "FAILED"]
    assert runs[trial.run_id].data.params == {"weight/left": "0.3"}
    assert runs[trial.run_id].data.metrics == {"val/accuracy/left": 0.5}
    assert runs[failed.run_id].data.tags["failure"] == "trial-2: ValueError: nan loss"
    assert client.get_run(stale.run_id).info.status == "FAILED"
    assert client.get_run(stale.run_id).data.tags["failure"] == "tune: worker 3 is gone"
    assert client.get_run(parent.run_id).info.status == "FINISHED"
    with nested_run(None, "trial-4") as disabled:
        disabled.log_epoch(1, {"x": 1.0})
    assert disabled.run_id is None


def test_a_nested_run_interrupted_while_its_params_are_logged_ends_failed(
        store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A signal (SIGTERM raises SystemExit) between creating a trial's run and entering it."""
    client = mlflow.MlflowClient(store)
    with stage_run(sample_params(), "tune") as parent:
        def stopped(self: object, params: dict[str, object]) -> None:
            raise SystemExit(143)

        monkeypatch.setattr(StageRun, "log_params", stopped)
        with pytest.raises(SystemExit), nested_run(parent.run_id, "trial-0", params={"a": 1}):
            pytest.fail("the trial's body ran")
        monkeypatch.undo()
    [trial] = client.search_runs([client.get_run(parent.run_id).info.experiment_id],
                                 filter_string="tags.mlflow.runName = 'trial-0'")
    assert trial.info.status == "FAILED"
    assert trial.data.tags["failure"] == "trial-0: SystemExit: 143"


def test_a_signal_while_a_nested_run_is_created_ends_it_failed(
        store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM (a stage run turns it into SystemExit) just as MLflow created the trial's run."""
    client = mlflow.MlflowClient(store)
    create_run = mlflow.MlflowClient.create_run

    def created_then_signalled(self: mlflow.MlflowClient, *args: object, **kwargs: object
                               ) -> object:
        created = create_run(self, *args, **kwargs)
        signal.raise_signal(signal.SIGTERM)
        return created

    with pytest.raises(SystemExit), stage_run(sample_params(), "tune") as parent:
        monkeypatch.setattr(mlflow.MlflowClient, "create_run", created_then_signalled)
        with nested_run(parent.run_id, "trial-0"):
            pytest.fail("the trial's body ran")
    monkeypatch.undo()
    [trial] = client.search_runs([client.get_run(parent.run_id).info.experiment_id],
                                 filter_string="tags.mlflow.runName = 'trial-0'")
    assert trial.info.status == "FAILED"
    assert client.get_run(parent.run_id).info.status == "FAILED"


def test_disabled_tracking_does_nothing(store: str, tmp_path: Path) -> None:
    with stage_run(sample_params(enabled=False), "train") as run:
        run.log_epoch(0, {"train/loss/left": 1.0})
        run.set_tags({"a": "b"})
        run.log_artifact(tmp_path / "missing.txt")
        assert run.log_model(torch.nn.Linear(1, 1), np.zeros((1, 1)), ["left"]) is None
    assert run.run_id is None
    assert not (tmp_path / "mlflow.db").exists()


def test_log_model_false_logs_no_model(store: str) -> None:
    with stage_run(sample_params(log_model=False), "train") as run:
        assert run.log_model(torch.nn.Linear(1, 1), np.zeros((2, 1)), ["left"]) is None
    assert MODEL_URI_TAG not in mlflow.MlflowClient(store).get_run(run.run_id).data.tags
    # asked for as a model, the run is named as one that logged none, with where to look
    with pytest.raises(ValueError, match=f"check the run: {run.run_id} logged no model .* its "
                                         "reports/train.json"):
        load_model(f"runs:/{run.run_id}/model")


def test_a_train_run_that_failed_before_its_model_is_named_as_failed(store: str) -> None:
    with pytest.raises(RuntimeError), stage_run(sample_params(), "train") as run:
        raise RuntimeError("diverged")  # before the model was logged
    with pytest.raises(ValueError, match=f"check the run: {run.run_id} is FAILED \\(its "
                                         "'failure' tag says why\\) and logged no model"):
        load_model(f"runs:/{run.run_id}/model")


def test_system_metrics_are_sampled_when_enabled(store: str) -> None:
    mlflow.set_system_metrics_sampling_interval(0.2)
    try:
        with stage_run(sample_params(system_metrics=True), "train") as run:
            import time

            time.sleep(1.5)
    finally:
        mlflow.set_system_metrics_sampling_interval(None)
    metrics = mlflow.MlflowClient(store).get_run(run.run_id).data.metrics
    assert any(key.startswith("system/cpu_utilization") for key in metrics), sorted(metrics)


# ---------------------------------------------------------------------------------- artifacts
def test_artifacts_figure_and_dataset_input(store: str, tmp_path: Path) -> None:
    (tmp_path / "reports" / "validation").mkdir(parents=True)
    (tmp_path / "reports" / "metrics.json").write_text("{}")
    (tmp_path / "reports" / "validation" / "summary.json").write_text("{}")
    figure, axis = plt.subplots()
    axis.plot([0, 1], [1, 0])
    meta = {"dataset": "multifashion", "sha256": "ab" * 32, "splits": {"train": 10}}
    with stage_run(sample_params(), "train") as run:
        run.log_artifact(tmp_path / "reports" / "metrics.json")
        run.log_artifact(tmp_path / "reports" / "validation")
        run.log_figure(figure, "plots/curves.png")
        run.log_dataset(meta, str(tmp_path / "data" / "processed"))
        with pytest.raises(FileNotFoundError, match=r"missing\.json: not found"):
            run.log_artifact(tmp_path / "missing.json")
        with pytest.raises(ValueError, match=r"must end in \.png"):
            run.log_figure(figure, "plots/curves.svg")
    plt.close(figure)
    client = mlflow.MlflowClient(store)
    paths = {a.path for a in client.list_artifacts(run.run_id)}
    assert {"metrics.json", "validation", "plots"} <= paths
    assert [a.path for a in client.list_artifacts(run.run_id, "plots")] == ["plots/curves.png"]
    png = Path(client.download_artifacts(run.run_id, "plots/curves.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    logged = client.get_run(run.run_id)
    (dataset_input,) = logged.inputs.dataset_inputs
    assert dataset_input.dataset.name == "multifashion"
    assert dataset_input.dataset.digest == "ab" * 16
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"
    assert logged.data.tags["data.sha256"] == "ab" * 32


def test_logged_model_loads_with_pyfunc_and_names_every_task_class_and_probability(
        store: str) -> None:
    torch.manual_seed(0)
    tasks = [Task("left", 10), Task("right", 10)]
    model = build_model(sample_params().model, tasks, in_channels=1, image_size=36).eval()
    images = np.random.default_rng(0).integers(0, 256, size=(4, 36, 36)).astype(np.uint8)
    classes = {t.name: [f"{t.name}-{i}" for i in range(10)] for t in tasks}
    with stage_run(sample_params(), "train") as run:
        run.log_metrics({"system/cpu_utilization_percentage": 12.0})  # as a sample at step 0
        run.flush()
        uri = run.log_model(model, images[:2], ["left", "right"], class_names=classes,
                            pixel_mean=0.3, pixel_std=0.3)
    tags = mlflow.MlflowClient(store).get_run(run.run_id).data.tags
    assert tags[MODEL_URI_TAG] == uri
    loaded = load_model(uri)
    batch = images[:, None].astype(np.float32)
    table = predict_table(loaded, batch)
    assert list(table.columns) == ["left", "left_probability", "right", "right_probability"]
    with torch.no_grad():
        logits = model((torch.from_numpy(batch) / 255.0 - 0.3) / 0.3)
    for task in ("left", "right"):
        probabilities = logits[task].softmax(1)
        assert table[task].tolist() == [classes[task][i] for i in probabilities.argmax(1)]
        assert table[f"{task}_probability"].to_numpy() == pytest.approx(
            probabilities.max(1).values.numpy(), abs=1e-5)
    assert loaded.metadata.metadata["class_names"] == classes
    # the signature names the columns; the logged model carries the run's params
    outputs = loaded.metadata.get_output_schema().to_dict()
    assert [(o["name"], o["type"]) for o in outputs] == [
        ("left", "string"), ("left_probability", "float"),
        ("right", "string"), ("right_probability", "float")]
    logged = mlflow.MlflowClient(store).get_logged_model(uri.removeprefix("models:/"))
    assert set(logged.params) == set(flatten(sample_params()))
    # what the run logged at step 0 (system samples) is not linked to the model
    assert not logged.metrics
    # the run's own URI resolves to the same model
    assert load_model(f"runs:/{run.run_id}/model").predict(batch).equals(table)
    with pytest.raises(ValueError, match="cannot load model models:/nope@champion"):
        load_model("models:/nope@champion")


# ------------------------------------------------------------------- runs a SIGKILL left behind
HOLD_RUN = """
import sys, time
from pathlib import Path
from multitask.config import TrackingConfig, load_params
from multitask.tracking import stage_run
params = load_params(sys.argv[1])
params = params.model_copy(update={"tracking": TrackingConfig(experiment="unit-tests",
                                                              system_metrics=False)})
with stage_run(params, "train") as run:
    Path("run_id").write_text(run.run_id)
    time.sleep(600)
"""


def hold_run(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A process in ``folder`` holding a sample train run open (HOLD_RUN), and that run's id
    once it is open."""
    held = subprocess.Popen([sys.executable, "-c", HOLD_RUN,
                             str(ROOT / "sample" / "params.yaml")], cwd=folder)
    deadline = time.monotonic() + 120
    while not (folder / "run_id").exists() and time.monotonic() < deadline:
        assert held.poll() is None, "the holding process died before opening its run"
        time.sleep(0.1)
    return held, (folder / "run_id").read_text()


def test_a_sigkilled_stage_run_is_ended_by_the_next_run_of_that_stage(store: str,
                                                                      tmp_path: Path) -> None:
    held, held_id = hold_run(tmp_path)
    client = mlflow.MlflowClient(store)
    with stage_run(sample_params(), "train"):
        pass
    assert client.get_run(held_id).info.status == "RUNNING", "its process is alive: left alone"

    held.send_signal(signal.SIGKILL)
    held.wait()
    with stage_run(sample_params(), "tune") as other_stage:  # another stage leaves it alone
        pass
    assert client.get_run(held_id).info.status == "RUNNING"
    with stage_run(sample_params(), "train") as rerun:
        assert client.get_run(held_id).info.status == "KILLED"
    assert f"pid {held.pid}" in client.get_run(held_id).data.tags["failure"]
    assert client.get_run(rerun.run_id).info.status == "FINISHED"
    assert client.get_run(other_stage.run_id).info.status == "FINISHED"


def test_a_sigkilled_run_of_a_removed_experiment_copy_is_ended_by_the_next_run_anywhere(
        store: str, tmp_path: Path) -> None:
    """A ``dvc exp run --temp``/``--queue`` copy is removed when its experiment stops: no
    later run can start in that folder, so the next run of the stage in another one ends it."""
    import shutil

    copy = tmp_path / "exps" / "tmp1234" / "sample"
    copy.mkdir(parents=True)
    held, held_id = hold_run(copy)
    held.send_signal(signal.SIGKILL)
    held.wait()
    client = mlflow.MlflowClient(store)
    with stage_run(sample_params(), "train"):  # its folder still exists: a rerun there may come
        pass
    assert client.get_run(held_id).info.status == "RUNNING"
    shutil.rmtree(tmp_path / "exps")
    with stage_run(sample_params(), "train"):
        pass
    assert client.get_run(held_id).info.status == "KILLED"
    assert f"and so is {copy}" in client.get_run(held_id).data.tags["failure"]


@pytest.mark.parametrize("value", ["x' or name != '", 'a"b', "back\\slash", "new\nline", ""])
def test_filter_values_that_could_rewrite_a_search_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="cannot be used in an MLflow search"):
        filter_literal(value)
    assert filter_literal("multifashion-sample") == "'multifashion-sample'"


def test_a_quote_in_a_model_name_cannot_widen_the_version_search(store: str) -> None:
    with pytest.raises(ValueError, match="cannot be used in an MLflow search"):
        versions_of_run("x' or name != '", "0" * 32)


def test_processes_starting_together_on_a_new_sqlite_store_all_get_it(tmp_path: Path) -> None:
    """Queued experiments start side by side on a store that may not exist yet: each process
    lets MLflow create the tables in turn (an flock beside the file), so none fails with
    'table ... already exists' and every one can log."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    script = textwrap.dedent("""
        import sys, time
        from multitask.tracking.store import client
        time.sleep(max(0.0, float(sys.argv[1]) - time.time()))  # start together
        client().create_experiment(f"e{sys.argv[2]}")
    """)
    start = time.time() + 15  # after every interpreter has imported MLflow
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    workers = [subprocess.Popen([sys.executable, "-c", script, str(start), str(i)], env=env,
                                stderr=subprocess.PIPE, text=True) for i in range(4)]
    errors = [w.communicate(timeout=120)[1] for w in workers]
    assert [w.returncode for w in workers] == [0] * 4, errors
    names = {e.name for e in mlflow.MlflowClient(uri).search_experiments()}
    assert {"e0", "e1", "e2", "e3"} <= names


def test_ctrl_c_while_the_model_is_logged_leaves_no_pending_model(
        store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow finalises a logged model FAILED on an Exception only: Ctrl-C (or SIGTERM's
    SystemExit) during the upload would leave it PENDING in the Models tab for good."""
    torch.manual_seed(0)
    tasks = [Task("left", 10), Task("right", 10)]
    model = build_model(sample_params().model, tasks, in_channels=1, image_size=36).eval()
    images = np.zeros((2, 36, 36), dtype=np.uint8)

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(mlflow.MlflowClient, "log_model_artifacts", interrupted)
    with pytest.raises(KeyboardInterrupt), stage_run(sample_params(), "train") as run:
        run.log_model(model, images, ["left", "right"])
    client = mlflow.MlflowClient(store)
    logged = client.search_logged_models(
        [client.get_run(run.run_id).info.experiment_id],
        filter_string=f"source_run_id = {filter_literal(run.run_id)}")
    assert [str(m.status) for m in logged] == ["FAILED"]
    assert client.get_run(run.run_id).info.status == "FAILED"


def test_ending_a_run_killed_fails_its_pending_models(store: str) -> None:
    """A SIGKILL during model logging: the next run ends the orphan KILLED, its model FAILED."""
    client = mlflow.MlflowClient(store)
    experiment = client.get_experiment_by_name("unit-tests") or None
    experiment_id = (experiment.experiment_id if experiment
                     else client.create_experiment("unit-tests"))
    run = client.create_run(experiment_id)
    pending = client.create_logged_model(experiment_id, source_run_id=run.info.run_id)
    end_run(run.info.run_id, "KILLED", "train: its process is gone")
    assert str(client.get_logged_model(pending.model_id).status) == "FAILED"


@pytest.mark.parametrize("error", [KeyboardInterrupt(), SystemExit(143)])
def test_a_signal_while_the_run_logs_its_params_ends_it_failed(
        store: str, monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    """Ctrl-C (or SIGTERM's SystemExit) right after the run is created: not left RUNNING, and
    not ended FINISHED by MLflow's exit hook as if the stage had done its work."""
    from multitask.tracking.runs import StageRun

    def interrupted(self: StageRun, params: dict) -> None:
        raise error

    monkeypatch.setattr(StageRun, "log_params", interrupted)
    client = mlflow.MlflowClient(store)
    with pytest.raises(type(error)), stage_run(sample_params(), "train"):
        pass  # never reached
    experiment = client.get_experiment_by_name("unit-tests").experiment_id
    latest = client.search_runs([experiment], order_by=["attributes.start_time DESC"],
                                max_results=1)[0]
    assert latest.info.status == "FAILED"
    assert mlflow.active_run() is None


@pytest.mark.parametrize("stop", [KeyboardInterrupt, SystemExit(143), RuntimeError("disk full")])
def test_a_reopened_run_that_records_nothing_new_stays_finished_when_the_rerun_stops(
        store: str, stop: BaseException | type[BaseException]) -> None:
    """tune reopening the run of a finished study: Ctrl-C, SIGTERM or an error in the rerun
    leave the run FINISHED (FAILED would hide the study's run from the next rerun)."""
    with stage_run(sample_params(), "tune") as run:
        pass
    with pytest.raises(stop if isinstance(stop, type) else type(stop)), stage_run(
            sample_params(), "tune", run_id=run.run_id, records_nothing_new=True):
        raise stop
    reopened = mlflow.MlflowClient(store).get_run(run.run_id)
    assert reopened.info.status == "FINISHED"
    assert "failure" not in reopened.data.tags
    assert mlflow.active_run() is None


def test_a_reopened_run_that_finishes_drops_the_failure_of_an_earlier_attempt(
        store: str) -> None:
    with stage_run(sample_params(), "train") as run:
        pass
    with pytest.raises(KeyboardInterrupt), stage_run(sample_params(), "evaluate",
                                                     run_id=run.run_id):
        raise KeyboardInterrupt
    client = mlflow.MlflowClient(store)
    assert client.get_run(run.run_id).data.tags["failure"].startswith("evaluate")
    with stage_run(sample_params(), "evaluate", run_id=run.run_id):
        pass
    finished = client.get_run(run.run_id)
    assert finished.info.status == "FINISHED"
    assert "failure" not in finished.data.tags
