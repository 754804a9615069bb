"""MultiFashion-style composites: placement, labels and determinism."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from multitask.config import DataConfig
from multitask.data import processed
from multitask.data.composites import ITEM, build_composites, sample_pairs
from multitask.data.idx import SPLIT_FILES
from multitask.data.preprocess import build_dataset, split_sizes
from multitask.io import read_json
from multitask.layout import Layout

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "sample" / "fashion-mnist"


def items(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Solid squares, so a placed item's footprint is easy to find."""
    images = np.full((count, ITEM, ITEM), 200, dtype=np.uint8)
    return images, rng.integers(0, 10, size=count).astype(np.uint8)


def test_labels_differ_and_items_stay_within_bounds() -> None:
    rng = np.random.default_rng(1)
    images, labels = items(300, rng)
    built = build_composites(images, labels, images, labels, 2000, 36, 4, rng)
    assert built.images.shape == (2000, 36, 36) and built.images.dtype == np.uint8
    assert np.all(built.labels[:, 0] != built.labels[:, 1])
    top, left, bottom, right = built.offsets.T
    assert top.min() >= 0 and top.max() <= 4 and left.min() >= 0 and left.max() <= 4
    assert bottom.min() >= 4 and bottom.max() <= 8 and right.min() >= 4 and right.max() <= 8
    # all shifts occur, not just the extremes
    assert set(np.unique(top)) == set(range(5))


def test_items_are_placed_at_their_offsets_with_pixelwise_max() -> None:
    rng = np.random.default_rng(2)
    left = np.zeros((1, ITEM, ITEM), np.uint8)
    left[0, 0, 0] = 100  # top-left pixel of the left item
    right = np.zeros((1, ITEM, ITEM), np.uint8)
    right[0, -1, -1] = 50  # bottom-right pixel of the right item
    right[0, 10, 10] = 7
    built = build_composites(left, np.array([1]), right, np.array([2]), 1, 36, 4, rng)
    r0, c0, r1, c1 = built.offsets[0]
    image = built.images[0]
    assert image[r0, c0] == 100
    assert image[r1 + ITEM - 1, c1 + ITEM - 1] == 50
    assert image[r1 + 10, c1 + 10] == max(7, left[0, r1 + 10 - r0, c1 + 10 - c0]
                                          if 0 <= r1 + 10 - r0 < ITEM and 0 <= c1 + 10 - c0 < ITEM
                                          else 0)
    assert int(image.astype(int).sum()) == 100 + 50 + 7


def test_pairs_need_two_classes() -> None:
    with pytest.raises(ValueError, match="two different classes"):
        sample_pairs(np.zeros(5), np.zeros(5), 3, np.random.default_rng(0))


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    layout = Layout(tmp_path)
    layout.raw_dir.mkdir(parents=True)
    layout.source_dir("fashion_mnist").symlink_to(SAMPLE)
    return layout


@pytest.fixture
def sample_config() -> DataConfig:
    return DataConfig(
        dataset="multifashion",
        train_size=1000, test_size=200, val_fraction=0.1, seed=0,
    )


def test_same_seed_same_bytes_other_seed_differs(sample_config: DataConfig,
                                                 layout: Layout) -> None:
    first, meta1 = build_dataset(sample_config, layout)
    second, meta2 = build_dataset(sample_config, layout)
    other, meta3 = build_dataset(sample_config.model_copy(update={"seed": 1}), layout)
    assert meta1["sha256"] == meta2["sha256"] == processed.content_hash(second)
    for name in first:
        assert np.array_equal(first[name], second[name])
    assert meta3["sha256"] != meta1["sha256"]
    assert not np.array_equal(first["train_images"], other["train_images"])


def test_validation_items_are_held_out_of_training(layout: Layout) -> None:
    from multitask.data.preprocess import load_pool

    folder = layout.source_dir("fashion_mnist")
    pool = load_pool(folder, 0.1, np.random.default_rng(0), classes=10)
    train = {img.tobytes() for img in pool.images["train"]}
    val = {img.tobytes() for img in pool.images["val"]}
    assert len(pool.images["val"]) == 400  # 10% of the 4,000 sample training images
    assert not train & val


def test_written_dataset_and_meta(sample_config: DataConfig, layout: Layout) -> None:
    arrays, meta = build_dataset(sample_config, layout)
    out = layout.processed_dir
    processed.write(out, arrays, meta)
    processed.write(out, arrays, meta)  # replacing an existing folder works too
    saved = read_json(out / "meta.json")
    assert saved["splits"] == split_sizes(sample_config) == {"train": 900, "val": 100, "test": 200}
    assert [t["name"] for t in saved["tasks"]] == ["left", "right"]
    assert all(t["classes"] == 10 for t in saved["tasks"])
    assert saved["seed"] == 0
    loaded = {p.stem: np.load(p) for p in out.glob("*.npy")}
    assert processed.content_hash(loaded) == saved["sha256"]
    assert loaded["train_labels"].shape == (900, 2)
    assert not list(out.parent.glob(".processed.*")), "temporary folders left behind"


def test_out_of_range_labels_stop_preprocess_on_its_own(
        sample_config: DataConfig, tmp_path: Path, write_idx: Callable[..., str],
        idx_dataset: Callable[..., dict[str, str]]) -> None:
    layout = Layout(tmp_path / "bad")
    folder = layout.source_dir("fashion_mnist")
    idx_dataset(folder, n_train=40, n_test=20)
    labels = np.arange(20, dtype=np.uint8) % 10
    labels[[3, 7]] = [12, 250]
    write_idx(folder / SPLIT_FILES["test"][1], labels)
    with pytest.raises(ValueError, match=r"test labels \[12, 250\] outside 0\.\.9"):
        build_dataset(sample_config, layout)
    assert not layout.processed_dir.exists()


@pytest.mark.parametrize("defect", ["32x32 images", "an empty test split"])
def test_a_pool_of_the_wrong_size_is_refused_naming_folder_and_split(
        tmp_path: Path, idx_dataset: Callable, write_idx: Callable, defect: str) -> None:
    """Without validate, preprocess must not fail deep in the canvas arithmetic."""
    from multitask.data.preprocess import load_pool

    folder = tmp_path / "fashion_mnist"
    idx_dataset(folder, n_train=40, n_test=20)
    images_name = SPLIT_FILES["train" if defect == "32x32 images" else "test"][0]
    labels_name = SPLIT_FILES["test"][1]
    if defect == "32x32 images":
        write_idx(folder / images_name, np.zeros((40, 32, 32), np.uint8))
        expected = r"fashion_mnist: train images are 32x32, expected 28x28"
    else:
        write_idx(folder / images_name, np.zeros((0, 28, 28), np.uint8))
        write_idx(folder / labels_name, np.zeros(0, np.uint8))
        expected = r"fashion_mnist: the test split holds no images"
    with pytest.raises(ValueError, match=expected):
        load_pool(folder, 0.1, np.random.default_rng(0), classes=10, shape=(28, 28))
