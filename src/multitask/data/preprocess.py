"""The ``preprocess`` stage: raw IDX files -> train/val/test composites + ``meta.json``
(``data.dataset: manifest``: the manifest's images instead, :mod:`multitask.data.manifest`).

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
from multitask.data.composites import build_composites
from multitask.data.datasets import DATASETS, MANIFEST, SOURCES
from multitask.data.idx import read_split
from multitask.data.manifest import build_manifest
from multitask.layout import Layout

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


def load_pool(folder: Path, val_fraction: float, rng: np.random.Generator,
              classes: int) -> Pool:
    """A source's IDX files (in ``folder``), ``val_fraction`` of its training images held out."""
    train_x, train_y = read_split(folder, "train")
    test_x, test_y = read_split(folder, "test")
    train_y = _checked_labels(folder, "train", train_y, classes)
    test_y = _checked_labels(folder, "test", test_y, classes)
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
    pools = {s: load_pool(layout.source_dir(s), config.val_fraction, rng, SOURCES[s].num_classes)
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


def preprocess(params: Params, layout: Layout) -> dict[str, Any]:
    """``multitask preprocess``: build the composites (or read ``data.dataset: manifest``'s
    images, :mod:`multitask.data.manifest`) and write the processed folder; returns its
    ``meta.json`` content."""
    if params.data.dataset == MANIFEST:
        return build_manifest(params.data, layout)
    return preprocess_data(params.data, layout)


def preprocess_data(config: DataConfig, layout: Layout) -> dict[str, Any]:
    """Build the composites ``config`` describes from ``layout``'s raw files and write
    ``layout``'s processed folder; return its ``meta.json`` content."""
    start = time.perf_counter()
    arrays, meta = build_dataset(config, layout)
    processed.write(layout.processed_dir, arrays, meta)
    log.info("%s: %s composites in %.1f s -> %s (sha256 %s)", meta["dataset"], meta["splits"],
             time.perf_counter() - start, layout.processed_dir, meta["sha256"][:12])
    return meta
