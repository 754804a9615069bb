"""``data.dataset: cifar10`` on a generated archive of the real format (CIFAR-10 itself cannot be
downloaded here): ``cifar-10-python.tar.gz`` with ``data_batch_1`` .. ``data_batch_5``,
``test_batch`` and ``batches.meta``, pickled as the published files are, each class a colour
plus noise so that a network can learn something. The stages read it as a user's run would:
preprocess and validate through their functions, and the whole sample pipeline through
``dvc repro`` in a copy of the repository, the archive downloaded from 127.0.0.1 and checked
against its SHA-256."""

from __future__ import annotations

import hashlib
import io
import json
import math
import pickle
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from multitask.config import ValidateConfig, parse_params
from multitask.data import processed
from multitask.data.cifar import ARCHIVE, BATCH_DIR, SPLIT_BATCHES
from multitask.data.datasets import CIFAR10_CLASSES
from multitask.data.preprocess import preprocess
from multitask.data.validation import failure_messages, source_tables, validate
from multitask.layout import Layout

ROOT = Path(__file__).resolve().parents[2]
PER_CLASS = 6  # images of each class in each batch: 60 per batch, 300 training, 60 test
VEHICLES = {0, 1, 8, 9}  # airplane, automobile, ship, truck


def _pickle(obj: Any) -> bytes:
    # Protocol 2 and numpy's pre-2.0 module name, as in the published archive.
    return pickle.dumps(obj, protocol=2).replace(b"numpy._core.multiarray",
                                                 b"numpy.core.multiarray")


def class_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 32, 32, 3) uint8: each class's colour plus uniform noise of +-100 (every image
    distinct); all channels together average about 120 with a std near 64, like CIFAR-10's."""
    colours = np.array([[60 + 12 * c, 180 - 12 * c, 90 + 5 * c] for c in range(10)])
    noise = rng.integers(-100, 101, size=(len(labels), 32, 32, 3))
    return np.clip(colours[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)


def write_archive(path: Path, seed: int = 0,
                  changes: dict[str, Any] | None = None) -> dict[str, tuple[np.ndarray, ...]]:
    """``path`` as a CIFAR-10 python archive; returns ``{batch: (images, labels)}``.

    ``changes`` maps a batch name to a function ``(images, labels) -> (images, labels)``
    applied before pickling (a planted defect)."""
    rng = np.random.default_rng(seed)
    batches: dict[str, tuple[np.ndarray, ...]] = {}
    members = {}
    for name in (*SPLIT_BATCHES["train"], *SPLIT_BATCHES["test"]):
        labels = rng.permutation(np.repeat(np.arange(10), PER_CLASS))
        images = class_images(labels, rng)
        if changes and name in changes:
            images, labels = changes[name](images, labels)
        batches[name] = (images, labels)
        members[name] = _pickle({
            b"batch_label": name.encode(), b"labels": [int(x) for x in labels],
            b"data": images.transpose(0, 3, 1, 2).reshape(len(labels), 3072),
            b"filenames": [f"{name}_{i}.png".encode() for i in range(len(labels))]})
    members["batches.meta"] = _pickle({b"num_cases_per_batch": 10 * PER_CLASS,
                                       b"label_names": [c.encode() for c in CIFAR10_CLASSES],
                                       b"num_vis": 3072})
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        folder = tarfile.TarInfo(BATCH_DIR)
        folder.type = tarfile.DIRTYPE
        archive.addfile(folder)
        for name, payload in sorted(members.items()):
            info = tarfile.TarInfo(f"{BATCH_DIR}/{name}")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return batches


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------ preprocess and validate
def test_preprocess_splits_the_archive_and_labels_object_and_vehicle(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    batches = write_archive(layout.source_dir("cifar10") / ARCHIVE)
    params = parse_params({"data": {"dataset": "cifar10", "val_fraction": 0.1, "seed": 3}},
                          tmp_path / "params.yaml")
    meta = preprocess(params, layout)

    assert meta["splits"] == {"train": 270, "val": 30, "test": 60}  # 30 = 0.1 x 300
    assert (meta["channels"], meta["image_size"]) == (3, 32)
    object_task, vehicle_task = processed.tasks(meta)
    assert (object_task.name, object_task.kind, object_task.num_classes) == \
        ("object", "multiclass", 10)
    assert object_task.class_names == CIFAR10_CLASSES
    assert (vehicle_task.name, vehicle_task.kind, vehicle_task.loss) == \
        ("vehicle", "binary", "bce")
    assert vehicle_task.class_names == ("animal", "vehicle")

    train_images = np.concatenate([batches[n][0] for n in SPLIT_BATCHES["train"]])
    train_labels = np.concatenate([batches[n][1] for n in SPLIT_BATCHES["train"]])
    # the held-out rows are the first 30 of the seed's permutation, each split in archive order
    held_out = np.sort(np.random.default_rng(3).permutation(300)[:30])
    kept = np.setdiff1d(np.arange(300), held_out)
    expected = {"train": (train_images[kept], train_labels[kept]),
                "val": (train_images[held_out], train_labels[held_out]),
                "test": batches["test_batch"]}
    for split, (images, classes) in expected.items():
        got_images, got_labels = processed.load_split(layout.processed_dir, split, meta)
        assert got_images.dtype == np.uint8 and got_images.shape == (len(classes), 32, 32, 3)
        assert np.array_equal(got_images, images)
        assert got_labels.dtype == np.uint8 and got_labels.shape == (len(classes), 2)
        assert got_labels[:, 0].tolist() == classes.tolist()
        assert got_labels[:, 1].tolist() == [int(c in VEHICLES) for c in classes]
    train = expected["train"][0].astype(np.float64)
    for channel in range(3):
        assert meta["pixel_mean"][channel] == pytest.approx(train[..., channel].mean() / 255)
        assert meta["pixel_std"][channel] == pytest.approx(train[..., channel].std() / 255)
    again = preprocess(params, Layout(tmp_path))
    assert again["sha256"] == meta["sha256"]  # the same seed, the same bytes


def test_validation_passes_the_archive_and_checks_its_shape(tmp_path: Path) -> None:
    write_archive(tmp_path / ARCHIVE)
    tables = source_tables("cifar10", tmp_path)
    assert {split: len(table) for split, table in tables.items()} == {"train": 300, "test": 60}
    assert tables["train"]["index"].tolist() == list(range(300))
    summary = validate({"cifar10": tables}, ValidateConfig())
    assert summary["success"], failure_messages(summary)
    checked = {(e["column"], tuple(e["kwargs"].get("value_set", ())))
               for e in summary["sources"]["cifar10"]["splits"]["train"]["expectations"]}
    assert {("height", (32,)), ("width", (32,)), ("channels", (3,))} <= checked
    assert summary["sources"]["cifar10"]["splits"]["test"]["class_counts"] == \
        {str(c): PER_CLASS for c in range(10)}


def test_validation_names_a_leaked_test_image_and_a_class_missing_from_test(
        tmp_path: Path) -> None:
    def leak_and_drop_trucks(images: np.ndarray, labels: np.ndarray
                             ) -> tuple[np.ndarray, np.ndarray]:
        images = images.copy()
        images[7] = first_train_image
        return images, np.where(labels == 9, 8, labels)  # every truck called a ship

    first_train_image = write_archive(tmp_path / "clean" / ARCHIVE)["data_batch_1"][0][0]
    write_archive(tmp_path / ARCHIVE, changes={"test_batch": leak_and_drop_trucks})
    summary = validate({"cifar10": source_tables("cifar10", tmp_path)}, ValidateConfig())
    assert not summary["success"]
    assert summary["sources"]["cifar10"]["train_test_duplicates"] == \
        [{"test_index": 7, "train_index": 0}]
    messages = failure_messages(summary)
    assert all(m.startswith("cifar10/test ") for m in messages), messages
    text = "\n".join(messages)
    assert ("cifar10/test images: expect_column_values_to_be_null on column "
            "'duplicate_of_train' {}: 1 of 60 rows unexpected, e.g. duplicate_of_train=0 at "
            "index 7") in text
    assert "expect_column_distinct_values_to_contain_set on column 'label'" in text
    # test: 6 per class expected; ships 12 (+1.0) and trucks 0 (-1.0), beyond 0.25
    assert "cifar10/test classes: expect_column_values_to_be_between on column " \
        "'relative_deviation'" in text
    assert "2 of 10 rows unexpected" in text
    assert summary["sources"]["cifar10"]["splits"]["test"]["class_counts"]["8"] == 12


# ------------------------------------------------------------------------------ the pipeline
@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory,
           serve: Callable[[Path], AbstractContextManager[str]]) -> Iterator[tuple[str, str]]:
    """A generated ``cifar-10-python.tar.gz`` served over HTTP on 127.0.0.1: (URL, SHA-256)."""
    folder = tmp_path_factory.mktemp("mirror")
    write_archive(folder / ARCHIVE)
    with serve(folder) as url:
        yield url, sha256(folder / ARCHIVE)


def cifar_params(path: Path) -> None:
    """The sample's params switched to CIFAR-10, as the README's params file has them, sized
    for 300 images: two epochs, two tuning trials."""
    params = yaml.safe_load(path.read_text())
    params["data"] = {"dataset": "cifar10", "val_fraction": 0.1, "seed": 0}
    params["validate"]["pixel_stats"]["cifar10"] = {"mean": [108.0, 134.0],
                                                    "std": [55.0, 74.0]}
    params["train"].update(epochs=2, batch_size=64)
    params["train"]["augment"].update(flip=True, crop=2)  # natural images: allowed
    params["tune"].update(n_trials=2, epochs=1, data_fraction=1.0)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.mark.slow
def test_dvc_repro_runs_the_sample_pipeline_on_cifar10_from_a_mirror(
        tmp_path: Path, mirror: tuple[str, str], repo_copy: Callable[[Path], Path],
        dvc: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    url, digest = mirror
    repo = repo_copy(tmp_path / "repo")
    cifar_params(repo / "sample" / "params.yaml")
    sources = {"sources": {"cifar10": {"mirrors": [url], "archive_sha256": {ARCHIVE: digest}}}}
    (repo / "sample" / "data" / "sources.yaml").write_text(yaml.safe_dump(sources))
    result = dvc(repo, "repro", "sample/dvc.yaml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for stage in ("check", "download", "validate", "preprocess", "baselines", "tune", "train",
                  "evaluate"):
        assert f"Running stage 'sample/dvc.yaml:{stage}'" in result.stdout, stage

    sample = repo / "sample"
    assert sha256(sample / "data" / "raw" / "cifar10" / ARCHIVE) == digest
    summary = json.loads((sample / "reports/validation/summary.json").read_text())
    assert summary["success"] and list(summary["sources"]) == ["cifar10"]
    meta = processed.read_meta(sample / "data" / "processed")
    assert meta["splits"] == {"train": 270, "val": 30, "test": 60}
    metrics = json.loads((sample / "reports/metrics.json").read_text())
    assert set(metrics["tasks"]) == {"object", "vehicle"}
    assert 0.0 <= metrics["tasks"]["object"]["accuracy"] <= 1.0
    assert 0.0 <= metrics["tasks"]["vehicle"]["auroc"] <= 1.0
    assert math.isfinite(metrics["delta_m_pct"])
    baselines = json.loads((sample / "reports/baselines.json").read_text())
    assert set(baselines["tasks"]) == {"object", "vehicle"}
