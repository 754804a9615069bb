"""Transfer inside the project: a registered model's encoder (and heads) start a new network,
read back from a real MLflow SQLite store through ``model.pretrained: models:/<name>@<alias>``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from multitask import tracking
from multitask.config import load_params
from multitask.data.processed import tasks as tasks_from_meta
from multitask.layout import Layout
from multitask.models import build_model
from multitask.pretraining import resolve_start
from multitask.tasks import Task
from multitask.training import session, stages
from multitask.training.data import ProcessedData

ROOT = Path(__file__).resolve().parents[2]
REGISTERED = "encoders-under-test"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
            sample_composites: Callable[..., Path],
            pipeline_folder: Callable[[Path, Path], Layout]) -> Path:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    pipeline_folder(tmp_path, sample_composites(400, 100))
    raw = yaml.safe_load((ROOT / "sample" / "params.yaml").read_text())
    raw["tracking"]["system_metrics"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path


def registered(model: torch.nn.Module, task_names: list[str], backbone: str) -> str:
    """Log ``model`` from a train stage run, register it and point the alias ``champion`` at it."""
    params = load_params("params.yaml")
    params = params.model_copy(update={"model": params.model.model_copy(
        update={"backbone": backbone})})
    with tracking.stage_run(params, "train") as run:
        uri = run.log_model(model, np.zeros((2, 36, 36), dtype=np.uint8), task_names)
    version = tracking.register_version(uri, REGISTERED, {})
    tracking.set_alias(REGISTERED, "champion", version.version)
    return f"models:/{REGISTERED}@champion"


def with_model(path: Path, **model: object) -> None:
    raw = yaml.safe_load(path.read_text())
    raw["model"].update(model)
    path.write_text(yaml.safe_dump(raw))


@pytest.mark.parametrize("backbone", ["lenet", "resnet18"])
def test_a_registered_champion_starts_the_encoder(workdir: Path, backbone: str) -> None:
    tasks = [Task("left", 10), Task("right", 10)]
    torch.manual_seed(123)
    source = build_model(load_params("params.yaml").model.model_copy(
        update={"backbone": backbone}), tasks, 1, 36).eval()
    uri = registered(source, ["left", "right"], backbone)

    state = tracking.network_state(uri)
    assert state.backbone == backbone and state.architecture == "hps"
    assert "version 1" in state.origin and uri in state.origin
    assert set(state.state_dict) == set(source.state_dict())
    assert all(torch.equal(state.state_dict[k], v) for k, v in source.state_dict().items())

    with_model(workdir / "params.yaml", backbone=backbone, pretrained=uri, reuse_heads=True)
    params = load_params("params.yaml")
    start = resolve_start(params, Layout(workdir))
    assert start is not None and start.sha256 == state.sha256
    data = ProcessedData(Layout(workdir).processed_dir, torch.device("cpu"))
    network = session.build_network(params.model, seed=0, tasks=tasks_from_meta(data.meta),
                                    data=data, start=start)
    for key, value in source.state_dict().items():  # same data statistics: nothing adapted
        assert torch.equal(network.state_dict()[key], value), key


def test_heads_start_fresh_unless_reuse_heads(workdir: Path) -> None:
    tasks = [Task("left", 10), Task("right", 10)]
    torch.manual_seed(7)
    source = build_model(load_params("params.yaml").model, tasks, 1, 36).eval()
    uri = registered(source, ["left", "right"], "lenet")
    with_model(workdir / "params.yaml", pretrained=uri)
    params = load_params("params.yaml")
    data = ProcessedData(Layout(workdir).processed_dir, torch.device("cpu"))
    network = session.build_network(params.model, seed=0, tasks=tasks_from_meta(data.meta),
                                    data=data, start=resolve_start(params, Layout(workdir)))
    assert torch.equal(network.encoder.fc[0].weight, source.encoder.fc[0].weight)
    assert not torch.equal(network.heads["left"][0].weight, source.heads["left"][0].weight)


def test_the_train_run_records_which_heads_started_from_the_weights(workdir: Path) -> None:
    torch.manual_seed(11)
    source = build_model(load_params("params.yaml").model,
                         [Task("left", 10), Task("elsewhere", 10)], 1, 36).eval()
    uri = registered(source, ["left", "elsewhere"], "lenet")
    with_model(workdir / "params.yaml", pretrained=uri, reuse_heads=True)
    raw = yaml.safe_load((workdir / "params.yaml").read_text())
    raw["train"].update(epochs=1, weighting="equal", diagnostics_every=0)
    (workdir / "params.yaml").write_text(yaml.safe_dump(raw))
    layout = Layout(workdir)
    stages.train(load_params("params.yaml"), layout)

    record = json.loads(layout.train_json.read_text())
    assert record["pretrained"]["reused_heads"] == ["left"]  # "right" is not in the source
    tags = tracking.client().get_run(record["run_id"]).data.tags
    assert tags[stages.REUSED_HEADS_TAG] == "left"
    assert tags[stages.PRETRAINED_ORIGIN_TAG] == record["pretrained"]["origin"]


def test_without_reuse_heads_the_record_names_no_heads(workdir: Path) -> None:
    source = build_model(load_params("params.yaml").model,
                         [Task("left", 10), Task("right", 10)], 1, 36).eval()
    uri = registered(source, ["left", "right"], "lenet")
    with_model(workdir / "params.yaml", pretrained=uri)
    params = load_params("params.yaml")
    start = resolve_start(params, Layout(workdir))
    data = ProcessedData(Layout(workdir).processed_dir, torch.device("cpu"))
    network = session.build_network(params.model, seed=0, tasks=tasks_from_meta(data.meta),
                                    data=data, start=start)
    assert session.reused_heads(params.model, network, start) is None
    assert session.start_record(start, None) == {"origin": start.origin, "sha256": start.sha256}
    with_model(workdir / "params.yaml", pretrained=uri, reuse_heads=True)
    assert session.reused_heads(load_params("params.yaml").model, network, start) == [
        "left", "right"]


def test_an_unknown_alias_is_a_clear_error(workdir: Path) -> None:
    with_model(workdir / "params.yaml", pretrained=f"models:/{REGISTERED}@nowhere")
    params = load_params("params.yaml")
    with pytest.raises(ValueError,
                       match=rf"models:/{REGISTERED}@nowhere.*Models page lists both"):
        resolve_start(params, Layout(workdir))


def test_the_same_weights_save_to_the_same_bytes(workdir: Path) -> None:
    """The encoder's sha256 (recorded as the start's provenance) depends on the weights only."""
    params = load_params("params.yaml")
    data = ProcessedData(Layout(workdir).processed_dir, torch.device("cpu"))
    tasks = tasks_from_meta(data.meta)
    network = session.build_network(params.model, seed=0, tasks=tasks, data=data)
    first, second = workdir / "a.pt", workdir / "b" / "other-name.pt"
    session.save_network(first, network, params, data)
    session.save_network(second, network, params, data)
    assert first.read_bytes() == second.read_bytes()


def test_a_soft_sharing_network_is_refused_with_its_architecture(workdir: Path) -> None:
    params = load_params("params.yaml")
    mtan = params.model.model_copy(update={"architecture": "mtan"})
    source = build_model(mtan, [Task("left", 10), Task("right", 10)], 1, 36).eval()
    with tracking.stage_run(params.model_copy(update={"model": mtan}), "train") as run:
        uri = run.log_model(source, np.zeros((2, 36, 36), dtype=np.uint8), ["left", "right"])
    with_model(workdir / "params.yaml", pretrained=uri)
    with pytest.raises(ValueError, match=r"is a mtan network; only a hard-parameter-sharing"):
        resolve_start(load_params("params.yaml"), Layout(workdir))
