"""The tables the ``validate`` stage checks, built with vectorised numpy from the raw images.

Per source and split: ``images`` (one row per image: label, shape, dtype, pixel min / max /
mean / std, NaN flag, SHA-256 of the pixel bytes), ``classes`` (count of each class against the
balanced count) and ``statistics`` (pixel mean and std of the whole split). Test images are
marked against the training images they duplicate byte for byte.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from multitask.data.datasets import SOURCES
from multitask.data.idx import SPLIT_FILES, read_split

# What every IDX source of these data sets holds (multitask.data.datasets): 10 classes.
CLASSES = SOURCES["fashion_mnist"].num_classes


def image_table(images: np.ndarray, labels: np.ndarray, split: str) -> pd.DataFrame:
    """One row per image: what the expectations check, computed in a few numpy passes.

    Float images are accepted so that a NaN can be represented (IDX files hold only bytes); their
    statistics skip NaN, and ``has_nan`` flags the image.
    """
    count = len(images)
    flat = images.reshape(count, int(np.prod(images.shape[1:])))  # -1 fails on an empty split
    floating = np.issubdtype(flat.dtype, np.floating)
    has_nan = np.isnan(flat).any(axis=1) if floating else np.zeros(count, dtype=bool)
    stat = (np.nanmin, np.nanmax, np.nanmean, np.nanstd) if floating else (
        np.min, np.max, np.mean, np.std)
    with np.errstate(all="ignore"):  # an all-NaN image gives NaN statistics, flagged by has_nan
        minimum, maximum, mean, std = (f(flat, axis=1) for f in stat)
    return pd.DataFrame({
        "split": split,
        "index": np.arange(count),
        "label": labels.astype(np.int64),
        "height": images.shape[1],
        "width": images.shape[2],
        "dtype": str(images.dtype),
        "pixel_min": minimum.astype(np.float64),
        "pixel_max": maximum.astype(np.float64),
        "pixel_mean": mean.astype(np.float64),
        "pixel_std": std.astype(np.float64),
        "has_nan": has_nan,
        "content_hash": [hashlib.sha256(row.tobytes()).hexdigest() for row in flat],
    })


def mark_train_duplicates(train: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    """``test`` plus ``duplicate_of_train``: the index of an identical training image, else null."""
    first_index = train.drop_duplicates("content_hash").set_index("content_hash")["index"]
    marked = test.copy()
    marked["duplicate_of_train"] = test["content_hash"].map(first_index).astype("Int64")
    return marked


def class_table(images: pd.DataFrame, classes: int = CLASSES) -> pd.DataFrame:
    """Each class's image count against the balanced count (split size / classes).

    Labels outside ``[0, classes)`` are not counted here; the ``images`` suite reports them.
    """
    labels = images["label"].to_numpy()
    counts = np.bincount(labels[(labels >= 0) & (labels < classes)], minlength=classes)
    expected = len(images) / classes
    return pd.DataFrame({
        "split": images["split"].iloc[0] if len(images) else "",
        "label": np.arange(classes),
        "count": counts,
        "expected_count": expected,
        "relative_deviation": counts / expected - 1.0 if expected else np.nan,
    })


def statistics_table(images: pd.DataFrame) -> pd.DataFrame:
    """Pixel mean and std of the whole split (one row), from the per-image mean and std.

    Every image has the same pixel count, so the split's mean is the mean of the image means and
    its variance the mean of (image variance + image mean²) minus the split mean².
    """
    mean = images["pixel_mean"].mean()
    second_moment = (images["pixel_std"] ** 2 + images["pixel_mean"] ** 2).mean()
    return pd.DataFrame({
        "split": [images["split"].iloc[0] if len(images) else ""],
        "images": [len(images)],
        "pixel_mean": [mean],
        "pixel_std": [float(np.sqrt(max(second_moment - mean**2, 0.0)))],
    })


def split_tables(images_by_split: Mapping[str, pd.DataFrame],
                 classes: int = CLASSES) -> dict[str, dict[str, pd.DataFrame]]:
    """``{split: {table: DataFrame}}`` for one source, test images marked against train."""
    tables: dict[str, dict[str, pd.DataFrame]] = {}
    for split, images in images_by_split.items():
        if split == "test" and "train" in images_by_split:
            images = mark_train_duplicates(images_by_split["train"], images)
        tables[split] = {"images": images, "classes": class_table(images, classes),
                         "statistics": statistics_table(images)}
    return tables


def train_test_duplicates(tables: Mapping[str, Mapping[str, pd.DataFrame]]) -> list[dict[str, int]]:
    """Test images identical to a training image, as index pairs (what preprocess would drop)."""
    test = tables.get("test", {}).get("images")
    if test is None:
        return []
    leaked = test[test["duplicate_of_train"].notna()]
    return [{"test_index": int(t), "train_index": int(r)}
            for t, r in zip(leaked["index"], leaked["duplicate_of_train"], strict=True)]


def load_source(folder: Path) -> dict[str, pd.DataFrame]:
    """Read one source's IDX files into per-split image tables."""
    tables: dict[str, pd.DataFrame] = {}
    for split in SPLIT_FILES:
        images, labels = read_split(folder, split)
        tables[split] = image_table(images, labels, split)
    return tables
