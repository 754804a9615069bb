"""The ``preprocess`` stage: raw IDX files -> train/val/test composites + ``meta.json``
(``data.dataset: manifest``: the manifest's images instead, :mod:`multitask.data.manifest`;
``data.dataset: cifar10``: the archive's own images, :func:`build_cifar10`).

The validation split is built from base images held out of the training composites, so no item
is seen in both. The output is the processed format of :mod:`multitask.data.processed`, swapped
into place as one directory so an interrupted run never leaves a mix of old and new files.
What the composites hold (which source each task's item comes from, its class names) is the
data set's entry in :mod:`multitask.data.datasets`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from multitask.config import DataConfig, Params
from multitask.data import processed
from multitask.data.cifar import archive_path, read_cifar10, vehicle_labels
from multitask.data.composites import build_composites
from multitask.data.datasets import CIFAR10, DATASETS, MANIFEST, SOURCES, VEHICLE_CLASSES
from multitask.data.idx import read_split
from multitask.data.manifest import build_manifest
from multitask.layout import Layout
from multitask.tasks import KIND_LOSSES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pool:
    """Base images of one source, already split into train / val (held out) / test."""

    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]


def _checked_labels(folder: Path, split: str, labels: np.ndarray, classes: int) -> np.ndarray:
    """``labels``, refused when one lies outside the source's classes: a composite must never
    carry a label its task cannot have, even when the stage runs without ``validate``."""
    outside = np.unique(labels[labels >= classes])
    if outside.size:
        raise ValueError(f"{folder}: {split} labels {outside[:5].tolist()} outside 0..{classes - 1}"
                         "; these files are not this source's, rerun multitask download and "
                         "multitask validate")
    return labels


def _checked_images(folder: Path, split: str, images: np.ndarray,
                    shape: tuple[int, ...] | None) -> np.ndarray:
    """``images``, refused when the split is empty or its items are not ``shape`` (H, W):
    the composites' canvas is laid out for that size, even when ``validate`` did not run."""
    if not len(images):
        raise ValueError(f"{folder}: the {split} split holds no images; these files are not "
                         "this source's, rerun multitask download and multitask validate")
    if shape is not None and images.shape[1:] != tuple(shape[:2]):
        raise ValueError(f"{folder}: {split} images are {images.shape[1]}x{images.shape[2]}, "
                         f"expected {shape[0]}x{shape[1]}; these files are not this source's, "
                         "rerun multitask download and multitask validate")
    return images


def load_pool(folder: Path, val_fraction: float, rng: np.random.Generator,
              classes: int, shape: tuple[int, ...] | None = None) -> Pool:
    """A source's IDX files (in ``folder``), ``val_fraction`` of its training images held out;
    ``shape``: the (H, W) every image must have."""
    train_x, train_y = read_split(folder, "train")
    test_x, test_y = read_split(folder, "test")
    train_x = _checked_images(folder, "train", train_x, shape)
    test_x = _checked_images(folder, "test", test_x, shape)
    train_y = _checked_labels(folder, "train", train_y, classes)
    test_y = _checked_labels(folder, "test", test_y, classes)
    return split_pool(train_x, train_y, test_x, test_y, val_fraction, rng)


def split_pool(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
               test_y: np.ndarray, val_fraction: float, rng: np.random.Generator) -> Pool:
    """The test split as given; ``val_fraction`` of the training images (drawn by ``rng``, kept
    in their original order) held out as val."""
    order = rng.permutation(len(train_x))
    n_val = max(1, round(val_fraction * len(train_x)))
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    return Pool(
        images={"train": train_x[train_idx], "val": train_x[val_idx], "test": test_x},
        labels={"train": train_y[train_idx], "val": train_y[val_idx], "test": test_y},
    )


def split_sizes(config: DataConfig) -> dict[str, int]:
    n_val = round(config.val_fraction * config.train_size)
    return {"train": config.train_size - n_val, "val": n_val, "test": config.test_size}


def build_dataset(config: DataConfig, layout: Layout
                  ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """All splits' arrays and their ``meta.json`` content, deterministic for ``config.seed``."""
    spec = DATASETS[config.dataset]
    left_task, right_task = spec.tasks  # the canvas has a top-left and a bottom-right item
    left_source, right_source = left_task.source, right_task.source
    rng = np.random.default_rng(config.seed)
    pools = {s: load_pool(layout.source_dir(s), config.val_fraction, rng, SOURCES[s].num_classes,
                          SOURCES[s].item_shape)
             for s in dict.fromkeys((left_source, right_source))}
    left, right = pools[left_source], pools[right_source]
    arrays: dict[str, np.ndarray] = {}
    sizes = split_sizes(config)
    for split in processed.SPLITS:
        built = build_composites(
            left.images[split], left.labels[split], right.images[split], right.labels[split],
            sizes[split], config.canvas_size, config.max_shift, rng)
        arrays[f"{split}_images"] = built.images
        arrays[f"{split}_labels"] = built.labels
    train = arrays["train_images"]
    meta = {
        "dataset": config.dataset,
        "tasks": [
            {"name": task.name, "classes": SOURCES[task.source].num_classes,
             "source": task.source, "class_names": list(SOURCES[task.source].class_names)}
            for task in spec.tasks
        ],
        "splits": sizes,
        "image_size": config.canvas_size,
        "channels": spec.channels,
        "max_shift": config.max_shift,
        "seed": config.seed,
        # training-split statistics, for input normalisation
        "pixel_mean": float(train.mean() / 255.0),
        "pixel_std": float(train.std(dtype=np.float64) / 255.0),
        "base_images": {s: {k: len(v) for k, v in p.images.items()} for s, p in pools.items()},
        "sha256": processed.content_hash(arrays),
    }
    return arrays, meta


def _channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel pixel mean and std of (N, H, W, C) uint8 images, on the 0..1 scale."""
    channels = [images[..., c] for c in range(images.shape[-1])]  # one float64 copy at a time
    return ([float(c.mean(dtype=np.float64) / 255.0) for c in channels],
            [float(c.std(dtype=np.float64) / 255.0) for c in channels])


def build_cifar10(config: DataConfig, layout: Layout
                  ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``data.dataset: cifar10``: the archive's test batch as test, ``val_fraction`` of its
    training batches held out as val (drawn with ``config.seed``); images (N, 32, 32, 3)
    uint8, labels (N, 2) uint8: ``object`` (class id 0..9) and ``vehicle`` (1: a vehicle)."""
    spec = DATASETS[CIFAR10]
    (source,) = spec.sources
    splits = read_cifar10(archive_path(layout.source_dir(source)))
    pool = split_pool(*splits["train"], *splits["test"], config.val_fraction,
                      np.random.default_rng(config.seed))
    arrays: dict[str, np.ndarray] = {}
    for split in processed.SPLITS:
        labels = pool.labels[split]
        arrays[f"{split}_images"] = pool.images[split]
        arrays[f"{split}_labels"] = np.stack([labels, vehicle_labels(labels)], axis=1)
    pixel_mean, pixel_std = _channel_stats(arrays["train_images"])
    object_task, vehicle_task = spec.tasks
    meta = {
        "dataset": CIFAR10,
        "tasks": [
            {"name": object_task.name, "classes": SOURCES[source].num_classes,
             "source": source, "class_names": list(SOURCES[source].class_names),
             "kind": object_task.kind, "loss": KIND_LOSSES[object_task.kind][0]},
            {"name": vehicle_task.name, "classes": len(VEHICLE_CLASSES), "source": source,
             "class_names": list(VEHICLE_CLASSES), "kind": vehicle_task.kind,
             "loss": KIND_LOSSES[vehicle_task.kind][0]},
        ],
        "splits": {split: len(pool.images[split]) for split in processed.SPLITS},
        "image_size": SOURCES[source].item_shape[0],
        "channels": spec.channels,
        "seed": config.seed,
        "pixel_mean": pixel_mean,  # per channel (R, G, B), training split
        "pixel_std": pixel_std,
        "base_images": {source: {k: len(v) for k, v in pool.images.items()}},
        "sha256": processed.content_hash(arrays),
    }
    return arrays, meta


def preprocess(params: Params, layout: Layout) -> dict[str, Any]:
    """``multitask preprocess``: build the composites (or read ``data.dataset: manifest``'s
    images, :mod:`multitask.data.manifest`, or CIFAR-10's, :func:`build_cifar10`) and write
    the processed folder; returns its ``meta.json`` content."""
    if params.data.dataset == MANIFEST:
        return build_manifest(params.data, layout)
    return preprocess_data(params.data, layout)


def preprocess_data(config: DataConfig, layout: Layout) -> dict[str, Any]:
    """Build the data set ``config`` describes (composites, or CIFAR-10's images) from
    ``layout``'s raw files and write ``layout``'s processed folder; return its ``meta.json``
    content."""
    start = time.perf_counter()
    build = build_cifar10 if config.dataset == CIFAR10 else build_dataset
    arrays, meta = build(config, layout)
    processed.write(layout.processed_dir, arrays, meta)
    log.info("%s: %s images in %.1f s -> %s (sha256 %s)", meta["dataset"], meta["splits"],
             time.perf_counter() - start, layout.processed_dir, meta["sha256"][:12])
    return meta
