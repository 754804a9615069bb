"""The self-supervised encoder: ``resolve_start`` (the one place ``model.pretrained`` becomes
weights), the ``pretrain`` stage called directly, and the pretrain -> fine-tune chain through
real DVC and MLflow on a copy of the sample pipeline."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
import yaml
from test_tracking_pipeline import SampleRepo, copy_sample_repo

from multitask import keys, tracking
from multitask.config import Params, load_params
from multitask.layout import Layout
from multitask.models.base import MultiTaskModel
from multitask.models.pretrained import weights_sha256
from multitask.pretraining import (
    NEWEST,
    NOT_TRAINED,
    pretrain,
    resolve_start,
    rotation_accuracy,
)
from multitask.tasks import ROTATION_TASK
from multitask.training import session
from multitask.training.trainer import rotate_batch

ROOT = Path(__file__).resolve().parents[2]


def weights_digest(path: Path) -> str:
    """The digest of the weights a network file holds, as its bytes would not tell (the
    registered program of the same network has other bytes)."""
    return weights_sha256(torch.load(path, weights_only=True)["state_dict"])


@pytest.fixture(scope="module")
def processed(sample_composites: Callable[..., Path]) -> Path:
    return sample_composites(400, 100)


def write_params(layout: Layout, **sections: dict) -> Params:
    """The sample params with ``sections`` merged in, no MLflow, in ``layout``'s folder."""
    raw = yaml.safe_load((ROOT / "sample" / "params.yaml").read_text())
    raw["tracking"] = {"enabled": False}
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    layout.params.write_text(yaml.safe_dump(raw))
    return load_params(layout.params)


@pytest.fixture
def layout(tmp_path: Path, processed: Path,
           pipeline_folder: Callable[[Path, Path], Layout]) -> Layout:
    return pipeline_folder(tmp_path / "pipeline", processed)


# ---------------------------------------------------------------------------- rotation accuracy
class TurnReader(MultiTaskModel):
    """Names an image's turn from where its one bright corner went (a perfect rotation head),
    or always answers ``constant``."""

    name = description = "turn reader"

    def __init__(self, constant: int | None = None) -> None:
        super().__init__([ROTATION_TASK])
        self.constant = constant

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        # the corner the top-left pixel goes to after k counter-clockwise quarter turns
        corners = torch.stack([x[:, 0, 0, 0], x[:, 0, -1, 0], x[:, 0, -1, -1], x[:, 0, 0, -1]], 1)
        return corners

    def decode(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.constant is not None:
            features = torch.nn.functional.one_hot(
                torch.full((len(features),), self.constant), 4).float()
        return {ROTATION_TASK.name: features}

    def shared_parameters(self) -> list[torch.nn.Parameter]:
        return []


class Corners:
    """Stands in for ProcessedData: images dark but for their top-left pixel."""

    device = torch.device("cpu")

    def __init__(self, count: int) -> None:
        images = torch.zeros(count, 1, 6, 6)
        images[:, 0, 0, 0] = 1.0
        self.images = images
        self.splits = {keys.VAL: images}

    def batches(self, split: str, batch_size: int) -> Iterator[tuple[torch.Tensor, None]]:
        for start in range(0, len(self.images), batch_size):
            yield self.images[start:start + batch_size], None


def test_rotation_accuracy_scores_every_image_at_every_turn() -> None:
    data = Corners(10)
    turned = rotate_batch(data.images[:4], torch.arange(4))  # the trainer's turns, k = 0..3
    assert [int(TurnReader()(turned[k:k + 1])[ROTATION_TASK.name].argmax()) for k in range(4)] \
        == [0, 1, 2, 3]
    assert rotation_accuracy(TurnReader(), data, keys.VAL, batch_size=3) == 1.0
    for constant in range(4):  # one answer for all: right on one turn in four
        assert rotation_accuracy(TurnReader(constant), data, keys.VAL) == 0.25


# -------------------------------------------------------------------------------- resolve_start
def test_pretrained_none_is_a_random_start(layout: Layout) -> None:
    assert resolve_start(write_params(layout), layout) is None


def test_a_missing_self_supervised_encoder_says_how_to_make_it(layout: Layout) -> None:
    params = write_params(layout, model={"pretrained": "self_supervised"})
    with pytest.raises(FileNotFoundError) as error:
        resolve_start(params, layout)
    message = str(error.value)
    assert str(layout.pretrained_encoder) in message
    assert "multitask pretrain" in message and "dvc repro" in message


def test_a_relative_file_is_read_from_the_pipeline_folder(layout: Layout) -> None:
    params = write_params(layout, model={"pretrained": "weights/absent.pt"})
    with pytest.raises(FileNotFoundError) as error:
        resolve_start(params, layout)
    message = str(error.value)
    assert "model.pretrained" in message and str(params.source) in message
    assert str(layout.root / "weights" / "absent.pt") in message


# ------------------------------------------------------------------------------ the stage itself
def test_pretrained_none_trains_nothing_and_writes_the_same_record(layout: Layout) -> None:
    params = write_params(layout)
    layout.pretrained_encoder.parent.mkdir(parents=True)
    layout.pretrained_encoder.write_bytes(b"left from an earlier self-supervised run")
    assert pretrain(params, layout) == NOT_TRAINED
    first = layout.pretrain_json.read_bytes()
    assert list(layout.pretrain_dir.iterdir()) == []  # the stale encoder is gone
    assert not layout.checkpoints_dir.exists()
    pretrain(params, layout)
    assert layout.pretrain_json.read_bytes() == first
    assert json.loads(first)["trained"] is False


@pytest.mark.slow
def test_the_stage_trains_on_rotations_alone_and_the_next_stages_start_from_it(
        layout: Layout) -> None:
    params = write_params(layout, model={"pretrained": "self_supervised"},
                          pretrain={"epochs": 2, "batch_size": 64, "data_fraction": 0.5})
    record = pretrain(params, layout)
    assert record["trained"] is True and record["epochs"] == 2
    assert record["registered"] is None and record["run_id"] is None  # tracking disabled
    assert record["sha256"] == weights_digest(layout.pretrained_encoder)
    assert json.loads(layout.pretrain_json.read_text()) == record
    accuracy = record["final"][keys.task_metric(keys.VAL, ROTATION_TASK.name, keys.ACCURACY)]
    assert 0.25 < accuracy <= 1.0  # better than chance after two epochs
    network, payload = session.load_network(layout.pretrained_encoder)
    assert [t.name for t in network.tasks] == [ROTATION_TASK.name]
    assert payload["model"]["architecture"] == "hps"
    assert payload["model"]["pretrained"] == "none"  # the encoder itself started at random
    assert not layout.checkpoint("pretrain").exists()
    start = resolve_start(params, layout)
    assert start is not None and start.sha256 == record["sha256"]
    assert start.origin == record["origin"] and start.backbone == params.model.backbone
    encoder_keys = {k.removeprefix("encoder.") for k in payload["state_dict"]
                    if k.startswith("encoder.")}
    assert set(start.state) == encoder_keys
    # the encoder is a lenet: a pipeline on another backbone is told so, never half-loaded
    other = write_params(layout, model={"pretrained": "self_supervised", "backbone": "resnet18"})
    with pytest.raises(ValueError, match=r"holds a lenet encoder .* model\.backbone is resnet18"):
        resolve_start(other, layout)


@pytest.mark.slow
def test_an_interrupted_pretraining_resumes(
        tmp_path: Path, processed: Path, pipeline_folder: Callable[[Path, Path], Layout],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from multitask.training.trainer import FAIL_AFTER_EPOCH_ENV

    recipe = {"epochs": 2, "batch_size": 64, "data_fraction": 0.25}
    interrupted, uninterrupted = (pipeline_folder(tmp_path / name, processed)
                                  for name in ("interrupted", "uninterrupted"))
    monkeypatch.setenv(FAIL_AFTER_EPOCH_ENV, "1")
    params = write_params(interrupted, model={"pretrained": "self_supervised"}, pretrain=recipe)
    with pytest.raises(RuntimeError, match=FAIL_AFTER_EPOCH_ENV):
        pretrain(params, interrupted)
    assert interrupted.checkpoint("pretrain").is_file()
    assert not interrupted.pretrained_encoder.exists()
    monkeypatch.delenv(FAIL_AFTER_EPOCH_ENV)
    resumed = pretrain(params, interrupted)
    again = pretrain(write_params(uninterrupted, model={"pretrained": "self_supervised"},
                                  pretrain=recipe), uninterrupted)
    assert resumed["final"] == again["final"]  # on the CPU, bit for bit
    first, second = (session.load_network(layout.pretrained_encoder)[0].state_dict()
                     for layout in (interrupted, uninterrupted))
    assert all(torch.equal(tensor, second[name]) for name, tensor in first.items())


# ------------------------------------------------------------------------ through DVC and MLflow
PRETRAIN_SMALL = {"train": {"epochs": 1}, "pretrain": {"epochs": 1, "batch_size": 128}}


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> SampleRepo:
    """A copy of the repository after `dvc repro` of the sample with pretrained: none."""
    repo = copy_sample_repo(tmp_path_factory.mktemp("pretrain-chain"))
    params_file = repo.sample / "params.yaml"
    raw = yaml.safe_load(params_file.read_text())
    for section, values in PRETRAIN_SMALL.items():
        raw[section] = {**raw.get(section, {}), **values}
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    repo.run("git", "commit", "-qam", "one epoch")
    repo.run("dvc", "repro", "sample/dvc.yaml", timeout=900)
    return repo


def ran(output: str) -> set[str]:
    """The stages DVC says it ran."""
    return set(re.findall(r"Running stage 'sample/dvc\.yaml:([\w-]+)'", output))


@pytest.mark.slow
@pytest.mark.xdist_group("sample_pipeline")
def test_with_pretrained_none_the_stage_trains_nothing_and_reruns_nothing(
        chain: SampleRepo) -> None:
    sample = chain.sample
    assert json.loads((sample / "reports/pretrain.json").read_text()) == NOT_TRAINED
    assert list((sample / "models/pretrain").iterdir()) == []
    assert json.loads((sample / "reports/train.json").read_text())["pretrained"] is None
    assert not chain.client().search_registered_models(
        f"name = '{load_params(sample / 'params.yaml').pretrain.registered_name}'")
    # Forced to run again, it writes the same outputs: nothing after it is out of date.
    chain.run("dvc", "repro", "--force", "--single-item", "sample/dvc.yaml:pretrain")
    status = chain.run("dvc", "status", "sample/dvc.yaml")
    assert "up to date" in status.stdout, status.stdout


@pytest.mark.slow
@pytest.mark.xdist_group("sample_pipeline")
def test_self_supervised_pretraining_then_fine_tuning_through_dvc_exp_run(
        chain: SampleRepo, monkeypatch: pytest.MonkeyPatch) -> None:
    done = chain.run("dvc", "exp", "run", "sample/dvc.yaml",
                     "-S", "sample/params.yaml:model.pretrained=self_supervised", timeout=900)
    assert {"pretrain", "baselines", "tune", "train", "evaluate"} <= ran(done.stdout)
    sample = chain.sample
    encoder = sample / "models/pretrain/encoder.pt"
    assert encoder.is_file()
    record = json.loads((sample / "reports/pretrain.json").read_text())
    assert record["trained"] is True and record["sha256"] == weights_digest(encoder)
    # registered, with alias newest, from the pretrain stage's run
    name = load_params(sample / "params.yaml").pretrain.registered_name
    version = chain.client().get_model_version_by_alias(name, NEWEST)
    assert record["registered"] == {"name": name, "version": str(version.version),
                                    "alias": NEWEST}
    assert version.run_id == record["run_id"]
    pretrain_run = chain.client().get_run(record["run_id"])
    assert pretrain_run.data.tags["stage"] == "pretrain"
    assert pretrain_run.data.tags["encoder.sha256"] == record["sha256"]
    # one encoder, one digest: started from the registered version, a run records the same
    monkeypatch.setenv("MLFLOW_TRACKING_URI", chain.store)
    assert tracking.network_state(f"models:/{name}@{NEWEST}").sha256 == record["sha256"]
    assert keys.task_metric(keys.TRAIN, "rotation", keys.LOSS) in pretrain_run.data.metrics
    # the multi-task run and its baselines started from that encoder, and say so
    started = {"origin": record["origin"], "sha256": record["sha256"]}
    assert json.loads((sample / "reports/train.json").read_text())["pretrained"] == started
    assert json.loads((sample / "reports/baselines_info.json").read_text())["pretrained"] \
        == started
    _, payload = session.load_network(sample / "models/model.pt")
    assert payload["pretrained"] == started


# --------------------------------------------------------------------------- the study script
def study_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "pretraining_study", ROOT / "scripts" / "pretraining_study.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_study_compares_both_starts_per_fraction_and_seed_and_resumes(
        layout: Layout, tmp_path: Path) -> None:
    study = study_script()
    params = write_params(layout, train={"weighting": "equal", "diagnostics_every": 0})
    output = Layout(tmp_path / "out")
    heard: list[dict] = []
    options = {"seeds": [0], "fractions": [0.2, 1.0], "epochs": 1, "pretrain_epochs": 1,
               "progress": False}
    rows = study.run_study(params, layout, output, on_row=heard.append, **options)
    assert sorted(study.row_key(r) for r in rows) == [
        ("scratch", 0.2, 0), ("scratch", 1.0, 0), ("self_supervised", 0.2, 0),
        ("self_supervised", 1.0, 0)]
    assert heard == rows
    encoders = {r["encoder_sha256"] for r in rows if r["start"] == "self_supervised"}
    assert len(encoders) == 1 and None not in encoders  # one encoder per seed, all fractions
    assert {r["encoder_sha256"] for r in rows if r["start"] == "scratch"} == {None}
    for row in rows:  # Δm% against the baselines of the same fraction, seed and start
        assert row[keys.DELTA_M] == pytest.approx(100 * sum(
            (row["accuracy"][t] - row["baseline_accuracy"][t]) / row["baseline_accuracy"][t]
            for t in ("left", "right")) / 2)
    stored = json.loads(output.pretraining_study_json.read_text())
    assert stored["rows"] == rows and stored["config"]["epochs"] == 1
    table = output.pretraining_study_md.read_text()
    assert "| 0.2 | scratch |" in table and "| 1 | self_supervised |" in table
    assert output.pretraining_study_png.stat().st_size > 0
    # rerun: every row is there already, nothing trains
    again = study.run_study(params, layout, output, on_row=heard.append, **options)
    assert again == rows and len(heard) == len(rows)
    with pytest.raises(SystemExit, match="other settings"):
        study.run_study(params, layout, output, **{**options, "epochs": 2})


@pytest.mark.slow
def test_the_study_script_help_tells_the_truth() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "pretraining_study.py"),
                           "--help"], capture_output=True, text=True, check=True)
    for option in ("--seeds", "--fractions", "--epochs", "--pretrain-epochs", "--output"):
        assert option in done.stdout
    assert "0.05 0.2 1.0" in done.stdout and "reports/pretraining/study.json" in done.stdout
