"""The ``preprocess`` stage: raw IDX files -> train/val/test composites + ``meta.json``.

The validation split is built from base images held out of the training composites, so no item
is seen in both. Output (``data.processed_dir``): ``<split>_images.npy`` (N, H, W) uint8,
``<split>_labels.npy`` (N, T) uint8 and ``meta.json``, swapped into place as one directory so
an interrupted run never leaves a mix of old and new files.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from multitask.config import DataConfig, load_params
from multitask.data.composites import build_composites
from multitask.data.idx import read_split
from multitask.data.sources import COMPOSITIONS, source_dir
from multitask.io import atomic_dir, write_json

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DIGIT_CLASSES = tuple(str(d) for d in range(10))
CLASS_NAMES = {"fashion_mnist": FASHION_CLASSES, "mnist": DIGIT_CLASSES}



@dataclass(frozen=True)
class Pool:
    """Base images of one source, already split into train / val (held out) / test."""

    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]


def load_pool(folder: Path, val_fraction: float, rng: np.random.Generator) -> Pool:
    """A source's IDX files (in ``folder``), ``val_fraction`` of its training images held out."""
    train_x, train_y = read_split(folder, "train")
    test_x, test_y = read_split(folder, "test")
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


def content_hash(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the arrays' names, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype}:{array.shape};".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def build_dataset(config: DataConfig) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """All splits' arrays and their ``meta.json`` content, deterministic for ``config.seed``."""
    left_source, right_source = COMPOSITIONS[config.dataset]
    rng = np.random.default_rng(config.seed)
    pools = {s: load_pool(source_dir(config, s), config.val_fraction, rng)
             for s in dict.fromkeys((left_source, right_source))}
    left, right = pools[left_source], pools[right_source]
    arrays: dict[str, np.ndarray] = {}
    sizes = split_sizes(config)
    for split in SPLITS:
        built = build_composites(
            left.images[split], left.labels[split], right.images[split], right.labels[split],
            sizes[split], config.canvas_size, config.max_shift, rng)
        arrays[f"{split}_images"] = built.images
        arrays[f"{split}_labels"] = built.labels
    train = arrays["train_images"]
    meta = {
        "dataset": config.dataset,
        "tasks": [
            {"name": "left", "classes": 10, "source": left_source,
             "class_names": list(CLASS_NAMES[left_source])},
            {"name": "right", "classes": 10, "source": right_source,
             "class_names": list(CLASS_NAMES[right_source])},
        ],
        "splits": sizes,
        "image_size": config.canvas_size,
        "channels": 1,
        "max_shift": config.max_shift,
        "seed": config.seed,
        # training-split statistics, for input normalisation
        "pixel_mean": float(train.mean() / 255.0),
        "pixel_std": float(train.std(dtype=np.float64) / 255.0),
        "base_images": {s: {k: len(v) for k, v in p.images.items()} for s, p in pools.items()},
        "sha256": content_hash(arrays),
    }
    return arrays, meta


def write_dataset(out_dir: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write into a sibling temporary folder, then swap it into place."""
    with atomic_dir(out_dir) as tmp:
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", array, allow_pickle=False)
        write_json(tmp / "meta.json", meta)


def main(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    start = time.perf_counter()
    arrays, meta = build_dataset(params.data)
    write_dataset(Path(params.data.processed_dir), arrays, meta)
    log.info("%s: %s composites in %.1f s -> %s (sha256 %s)", meta["dataset"], meta["splits"],
             time.perf_counter() - start, params.data.processed_dir, meta["sha256"][:12])
    return 0
