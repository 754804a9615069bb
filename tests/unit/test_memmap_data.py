"""Training from memory-mapped processed data: the same batches, order and values as from data
loaded whole, without loading the images; ``MULTITASK_MEMMAP`` decides (auto by size)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from multitask.config import ModelConfig, TrainConfig
from multitask.data import processed
from multitask.models import build_model
from multitask.training import data as data_module
from multitask.training.data import MEMMAP_ENV, ProcessedData, memory_mapped
from multitask.training.trainer import Trainer
from multitask.weighting import build_weighting

CPU = torch.device("cpu")
ENTRIES = [{"name": "shape", "classes": 3, "class_names": ["a", "b", "c"]},
           {"name": "bright", "classes": 2, "class_names": ["dim", "bright"], "kind": "binary"},
           {"name": "side", "kind": "regression", "loss": "mse", "target_mean": 25.0,
            "target_std": 5.0, "unit": "px"}]


def write_folder(folder: Path, counts: dict[str, int], size: int = 16) -> None:
    """3-channel images whose every pixel of image i starts at i (so a row is recognisable),
    plus seeded noise; labels of a multiclass, a binary and a regression task (float32)."""
    rng = np.random.default_rng(7)
    arrays, splits = {}, {}
    for split, count in counts.items():
        images = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
        images[:, 0, 0, 0] = np.arange(count) % 256
        labels = np.stack([rng.integers(0, 3, count), rng.integers(0, 2, count),
                           rng.normal(25.0, 5.0, count)], axis=1).astype(np.float32)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
        splits[split] = count
    meta = {"dataset": "synthetic", "image_size": size, "channels": 3, "tasks": ENTRIES,
            "splits": splits, "pixel_mean": [0.5, 0.4, 0.3], "pixel_std": [0.25, 0.2, 0.3],
            "seed": 0, "sha256": processed.content_hash(arrays)}
    processed.write(folder, arrays, meta)


def open_data(folder: Path, monkeypatch: pytest.MonkeyPatch, mapped: bool,
              splits: tuple[str, ...] = processed.SPLITS) -> ProcessedData:
    monkeypatch.setenv(MEMMAP_ENV, "1" if mapped else "0")
    data = ProcessedData(folder, CPU, splits)
    assert data.mapped is mapped
    return data


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_folder(tmp_path / "p", {"train": 70, "val": 20, "test": 10})
    return tmp_path / "p"


def test_a_mapped_split_keeps_its_images_in_the_file(folder: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    data = open_data(folder, monkeypatch, mapped=True)
    train = data.splits["train"]
    assert train.mapped and isinstance(train.images, np.memmap)
    assert Path(train.images.filename) == folder / processed.images_file("train")
    assert len(train) == 70 and train.labels.dtype == torch.float32
    images, _ = processed.load_split(folder, "val", data.meta, mapped=True)
    assert isinstance(images, np.memmap) and images.shape == (20, 16, 16, 3)
    in_memory = open_data(folder, monkeypatch, mapped=False)
    assert not in_memory.splits["train"].mapped
    assert isinstance(in_memory.splits["train"].images, torch.Tensor)


def test_a_mapped_split_whose_file_disagrees_with_meta_is_still_refused(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    meta = processed.read_meta(folder)
    meta["splits"]["test"] = 11
    with pytest.raises(ValueError, match=r"test has 10 images and 10 labels, meta\.json says 11"):
        processed.load_split(folder, "test", meta, mapped=True)


def test_shuffled_batches_of_a_subset_are_the_same_rows_order_and_values(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mapped = open_data(folder, monkeypatch, mapped=True)
    whole = open_data(folder, monkeypatch, mapped=False)
    subset = torch.tensor([3, 5, 8, 13, 21, 34, 55, 60, 61, 69])
    generators = [torch.Generator().manual_seed(11) for _ in range(2)]
    seen = 0
    for _epoch in range(2):  # the generator carries on: the second epoch's order differs
        pairs = zip(mapped.batch_rows("train", 4, generator=generators[0], subset=subset),
                    whole.batch_rows("train", 4, generator=generators[1], subset=subset),
                    strict=True)
        for rows_mapped, rows_whole in pairs:
            assert isinstance(rows_mapped, torch.Tensor) and isinstance(rows_whole, torch.Tensor)
            assert rows_mapped.tolist() == rows_whole.tolist()
            x_mapped, y_mapped = mapped.take("train", rows_mapped)
            x_whole, y_whole = whole.take("train", rows_whole)
            assert torch.equal(x_mapped, x_whole) and torch.equal(y_mapped, y_whole)
            assert x_mapped.is_contiguous(memory_format=torch.channels_last)
            seen += len(rows_mapped)
    assert seen == 2 * len(subset)


def test_unshuffled_batches_are_the_same_and_cover_the_split_in_order(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mapped = open_data(folder, monkeypatch, mapped=True)
    whole = open_data(folder, monkeypatch, mapped=False)
    sizes = []
    for (x_mapped, y_mapped), (x_whole, y_whole) in zip(
            mapped.batches("val", 8), whole.batches("val", 8), strict=True):
        assert torch.equal(x_mapped, x_whole) and torch.equal(y_mapped, y_whole)
        sizes.append(len(x_mapped))
    assert sizes == [8, 8, 4]
    assert np.array_equal(mapped.served_example("test", 3), whole.served_example("test", 3))


def test_unsorted_rows_come_back_in_the_batch_order(folder: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    data = open_data(folder, monkeypatch, mapped=True, splits=("train",))
    rows = torch.tensor([42, 5, 17, 5, 0])  # read as 0, 5, 5, 17, 42, placed back
    x, y = data.take("train", rows, augment=lambda images: images)
    # pixel (0, 0), red, of image i is i: (i / 255 - 0.5) / 0.25
    expected = (torch.tensor([42.0, 5.0, 17.0, 5.0, 0.0]) / 255.0 - 0.5) / 0.25
    torch.testing.assert_close(x[:, 0, 0, 0], expected)
    labels = np.load(folder / processed.labels_file("train"))
    assert torch.equal(y, torch.from_numpy(labels[[42, 5, 17, 5, 0]]))


def test_training_from_the_map_gives_the_same_network(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "p32"
    write_folder(folder, {"train": 70, "val": 20, "test": 10}, size=32)  # LeNet's input size
    states, histories = [], []
    for mapped in (True, False):
        data = open_data(folder, monkeypatch, mapped)
        tasks = processed.tasks(data.meta)
        torch.manual_seed(0)
        model = build_model(ModelConfig(), tasks, 3, data.image_size)
        trainer = Trainer(model, tasks, build_weighting("equal", 3), data,
                          TrainConfig(epochs=2, batch_size=16, diagnostics_every=0,
                                      data_fraction=0.8),
                          fingerprint="memmap-test", progress=False)
        trainer.fit()
        states.append(model.state_dict())
        histories.append([{k: v for k, v in record.items() if not k.startswith("time/")}
                          for record in trainer.history])  # all but the timings
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert histories[0] == histories[1]


def mapped_resident_kib(path: Path) -> int:
    """KiB of ``path``'s memory maps resident in this process (``/proc/self/smaps``)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):
            inside = line.endswith(str(path.resolve()))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").is_file(), reason="no /proc/self/smaps")
def test_batches_are_read_without_mapping_the_file_into_the_process(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = open_data(folder, monkeypatch, mapped=True, splits=("train",))
    path = folder / processed.images_file("train")
    x, _ = data.take("train", torch.tensor([40, 20, 30, 31, 32]))  # 30-32: one read
    whole, _ = data.take("train", slice(0, 70))
    assert mapped_resident_kib(path) == 0  # read, not mapped: no page of it is resident
    through_map = np.array(data.splits["train"].images[[40, 20, 30, 31, 32]])
    assert mapped_resident_kib(path) > 0  # what indexing the map would have left behind
    assert torch.equal(x, data.normalise(torch.from_numpy(through_map)))
    assert torch.equal(whole, data.normalise(torch.from_numpy(
        np.load(path, allow_pickle=False))))


def test_an_empty_batch_is_empty_on_both_paths(folder: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    none = torch.tensor([], dtype=torch.int64)
    for mapped in (True, False):
        x, y = open_data(folder, monkeypatch, mapped, splits=("train",)).take("train", none)
        assert x.shape == (0, 3, 16, 16) and y.shape == (0, 3)


def test_a_file_shorter_than_its_header_is_named(folder: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    data = open_data(folder, monkeypatch, mapped=True, splits=("train",))
    path = folder / processed.images_file("train")
    with path.open("r+b") as file:  # the last image cut off after the map was opened
        file.truncate(path.stat().st_size - 16 * 16 * 3)
    with pytest.raises(OSError, match=r"train_images\.npy: read 0 of 768 bytes at row 69; "
                                      r"the file is shorter than its header says"):
        data.take("train", torch.tensor([69]))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_on_cuda_mapped_batches_come_through_pinned_memory_the_same(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = torch.device("cuda")
    monkeypatch.setenv(MEMMAP_ENV, "1")
    mapped = ProcessedData(folder, cuda)
    monkeypatch.setenv(MEMMAP_ENV, "0")
    whole = ProcessedData(folder, cuda)
    assert mapped.mapped and whole.splits["train"].images.is_cuda
    generators = [torch.Generator().manual_seed(3) for _ in range(2)]
    for rows_mapped, rows_whole in zip(mapped.batch_rows("train", 16, generator=generators[0]),
                                       whole.batch_rows("train", 16, generator=generators[1]),
                                       strict=True):
        x_mapped, y_mapped = mapped.take("train", rows_mapped)
        x_whole, y_whole = whole.take("train", rows_whole)
        assert x_mapped.is_cuda and y_mapped.is_cuda
        assert torch.equal(x_mapped, x_whole) and torch.equal(y_mapped, y_whole)


def test_auto_maps_when_the_images_exceed_half_the_available_memory(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MEMMAP_ENV, raising=False)
    files = [folder / processed.images_file("test")]
    # 10 images of 16 x 16 x 3 bytes, after numpy's 128-byte header: 7,808 bytes
    assert files[0].stat().st_size == 128 + 10 * 16 * 16 * 3 == 7808
    monkeypatch.setattr(data_module, "available_memory", lambda: 2 * 7808)
    assert not memory_mapped(files, CPU)  # exactly half: still loaded whole
    monkeypatch.setattr(data_module, "available_memory", lambda: 2 * 7808 - 1)
    assert memory_mapped(files, CPU)
    monkeypatch.setenv(MEMMAP_ENV, "0")
    assert not memory_mapped(files, CPU)  # the variable overrides the size
    monkeypatch.setenv(MEMMAP_ENV, "auto")
    monkeypatch.setattr(data_module, "available_memory", lambda: 10**12)
    assert not memory_mapped(files, CPU)


def test_the_available_memory_is_at_most_the_physical_memory() -> None:
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert 0 < data_module.available_memory() <= physical


def test_an_unknown_memmap_setting_is_named(folder: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MEMMAP_ENV, "yes")
    with pytest.raises(ValueError, match=r"MULTITASK_MEMMAP='yes': expected one of auto, 1, 0"):
        ProcessedData(folder, CPU)


@pytest.mark.parametrize("mapped", [False, True], ids=["loaded", "mapped"])
def test_a_truncated_array_names_its_file_and_the_stage(folder: Path, mapped: bool) -> None:
    path = folder / processed.images_file("test")
    path.write_bytes(path.read_bytes()[:300])  # a copy cut short
    meta = processed.read_meta(folder)
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: not a readable .npy array "
                                         r"\(.*\); rerun multitask preprocess"):
        processed.load_split(folder, "test", meta, mapped=mapped)
