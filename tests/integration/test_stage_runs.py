"""The train and evaluate stages with MLflow on a real SQLite store: what the logged model
serves (deliverable tasks only, its images fitted as training fitted them) and the run a
failing evaluate leaves behind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from multitask import tracking
from multitask.config import Params, load_params
from multitask.data.manifest import build_manifest
from multitask.layout import Layout
from multitask.predict import predict_table, prepare
from multitask.training import stages

ROOT = Path(__file__).resolve().parents[2]


def write_manifest(folder: Path) -> Path:
    """40x32 grey images (wider than high: crop and pad differ), species a/b, split column."""
    rng = np.random.default_rng(0)
    rows = []
    for index, split in enumerate(["train"] * 24 + ["val"] * 4 + ["test"] * 4):
        name = f"img/{index}.png"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 40), dtype=np.uint8)).save(folder / name)
        rows.append({"image": name, "species": "ab"[index % 2], "split": split})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Params, Layout]]:
    """One epoch of ``train`` with the rotation task on a manifest cropped to 32x32, logged
    to a SQLite store (the environment points at it while the module's tests run)."""
    root = tmp_path_factory.mktemp("stage-runs")
    raw = yaml.safe_load((ROOT / "examples" / "fashion-manifest" / "params.yaml").read_text())
    raw["data"].update({"manifest": str(write_manifest(root / "mine")), "image_size": 32,
                        "resize": "crop", "tasks": {"species": {"kind": "multiclass"}},
                        "val_fraction": 0.1})
    raw["model"]["rotation_task"] = True
    raw["train"].update({"epochs": 1, "diagnostics_every": 0, "batch_size": 8})
    raw["tracking"] = {"enabled": True, "experiment": "stage-runs", "system_metrics": False}
    layout = Layout(root / "pipeline")
    layout.root.mkdir()
    layout.params.write_text(yaml.safe_dump(raw))
    params = load_params(layout.params)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        patch.delenv("DVC_EXP_NAME", raising=False)
        build_manifest(params.data, layout)
        stages.train(params, layout)
        yield params, layout


def train_run(layout: Layout) -> str:
    return str(yaml.safe_load(layout.train_json.read_text())["run_id"])


def test_the_served_model_answers_the_deliverable_tasks_only(trained: tuple[Params, Layout]
                                                             ) -> None:
    _, layout = trained
    uri = tracking.get_run(train_run(layout)).data.tags[tracking.MODEL_URI_TAG]
    model = tracking.load_model(uri)
    assert model.metadata.metadata["task_names"] == ["species"]
    batch = np.load(layout.processed_dir / "test_images.npy")[:, None].astype(np.float32)
    assert list(predict_table(model, batch).columns) == ["species", "species_probability"]
    outputs = [o["name"] for o in model.metadata.get_output_schema().to_dict()]
    assert outputs == ["species", "species_probability"]  # what mlflow models serve answers


def test_predict_fits_images_as_the_model_was_trained(trained: tuple[Params, Layout]) -> None:
    params, layout = trained
    uri = tracking.get_run(train_run(layout)).data.tags[tracking.MODEL_URI_TAG]
    model = tracking.load_model(uri)
    assert model.metadata.metadata["resize"] == "crop"
    training = np.load(layout.processed_dir / "train_images.npy")
    images = [Path(params.data.manifest).parent / f"img/{i}.png" for i in range(3)]
    batch, _ = prepare(model, images)
    assert np.array_equal(batch[:, 0], training[:3].astype(np.float32))
    del model.metadata.metadata["resize"]  # as a model logged before it was recorded
    padded, _ = prepare(model, images[:1])
    assert tracking.DEFAULT_RESIZE == "pad"
    assert (padded[0, 0, :3] == 0).all()  # 40x32 letterboxed into 32x32: black bars on top


def test_evaluate_without_the_model_ends_the_run_failed(trained: tuple[Params, Layout],
                                                        tmp_path: Path) -> None:
    params, _ = trained  # its params and store; a pipeline folder of its own
    layout = Layout(tmp_path / "pipeline")
    layout.train_json.parent.mkdir(parents=True)
    with tracking.stage_run(params, "train") as run:  # train.json names it, no models/model.pt
        pass
    layout.train_json.write_text(f'{{"run_id": "{run.run_id}"}}')
    with pytest.raises(FileNotFoundError):
        stages.evaluate(params, layout)
    logged = mlflow.MlflowClient().get_run(str(run.run_id))
    assert logged.info.status == "FAILED"
    assert logged.data.tags["failure"].startswith("evaluate: FileNotFoundError")


def test_a_crash_in_the_test_pass_ends_the_run_failed(trained: tuple[Params, Layout],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    params, layout = trained
    run_id = train_run(layout)
    assert mlflow.MlflowClient().get_run(run_id).info.status == "FINISHED"  # train ended it

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("injected failure in the test pass")

    monkeypatch.setattr(stages, "evaluate_split", crash)
    layout.baselines_json.write_text('{"tasks": {}}')  # read before the test pass
    with pytest.raises(RuntimeError, match="injected failure"):
        stages.evaluate(params, layout)
    logged = mlflow.MlflowClient().get_run(run_id)
    assert logged.info.status == "FAILED"
    assert logged.data.tags["failure"] == ("evaluate: RuntimeError: injected failure in the "
                                           "test pass")


def test_a_train_run_says_it_is_unevaluated_until_an_evaluate_completes(
        trained: tuple[Params, Layout]) -> None:
    """A pipeline stopped between train and evaluate leaves the run FINISHED without test
    metrics; its ``evaluated`` tag is what tells it from an evaluated one in the runs table."""
    params, layout = trained
    run_id = train_run(layout)
    client = mlflow.MlflowClient()
    experiment = client.get_run(run_id).info.experiment_id
    assert client.get_run(run_id).data.tags[tracking.EVALUATED_TAG] == "false"
    unevaluated = client.search_runs([experiment], filter_string="tags.evaluated = 'false'")
    assert run_id in [run.info.run_id for run in unevaluated]
    layout.baselines_json.write_text('{"tasks": {"species": {"accuracy": 0.5}}}')
    stages.evaluate(params, layout)
    logged = client.get_run(run_id)
    assert logged.info.status == "FINISHED"
    assert logged.data.tags[tracking.EVALUATED_TAG] == "true"
    assert "test/accuracy/species" in logged.data.metrics


def test_a_resumed_train_is_a_new_run_with_every_epoch_and_the_interrupted_one_failed(
        trained: tuple[Params, Layout], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
        ) -> None:
    """What the README says of a train interrupted after its first epoch (the checkpoint is
    written before the epoch is logged) and run again."""
    params, _ = trained  # its store; a pipeline folder of its own
    params = params.model_copy(update={"train": params.train.model_copy(update={"epochs": 2})})
    layout = Layout(tmp_path / "pipeline")
    layout.root.mkdir()
    build_manifest(params.data, layout)
    logged_epoch = tracking.StageRun.log_epoch

    def interrupted(self: tracking.StageRun, epoch: int, metrics: dict[str, float]) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(tracking.StageRun, "log_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        stages.train(params, layout)
    assert layout.checkpoint("train").is_file()
    monkeypatch.setattr(tracking.StageRun, "log_epoch", logged_epoch)
    stages.train(params, layout)
    client = mlflow.MlflowClient()
    resumed = client.get_run(train_run(layout))
    assert resumed.data.tags["resumed_after_epoch"] == "1"
    history = client.get_metric_history(resumed.info.run_id, "train/loss/species")
    assert sorted(metric.step for metric in history) == [1, 2]
    first = client.search_runs([resumed.info.experiment_id],
                               filter_string="attributes.status = 'FAILED'",
                               order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert first.data.tags["failure"] == "train: KeyboardInterrupt: "
    assert first.info.start_time < resumed.info.start_time
