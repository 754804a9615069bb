"""The processed format, owned here: what ``preprocess`` writes and training reads.

A processed folder holds, per split (``train``, ``val``, ``test``), ``<split>_images.npy``
(N, H, W) uint8 and ``<split>_labels.npy`` (N, T) uint8, one column per task in the order of
``meta.json``'s ``tasks``, plus ``meta.json``:

- ``dataset``: the data set's name; ``tasks``: ``[{name, classes, source, class_names}]``, plus
  ``kind`` (multiclass when absent), ``loss`` and, for regression, ``target_mean``,
  ``target_std`` (training split) and ``unit`` (see :class:`multitask.tasks.Task`);
- ``splits``: ``{split: count}``; ``image_size`` (canvas side), ``channels``, ``max_shift``,
  ``seed``;
- ``pixel_mean``, ``pixel_std``: training-split statistics on the 0..1 scale, for normalisation;
- ``base_images``: base images per source and split; ``sha256``: :func:`content_hash` of the arrays.

The folder is written as one atomic swap, so a reader sees the old folder or the new one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from multitask.io import atomic_dir, read_json, write_json
from multitask.tasks import ROTATION_TASK, Task

SPLITS = ("train", "val", "test")
META_FILE = "meta.json"


def images_file(split: str) -> str:
    return f"{split}_images.npy"


def labels_file(split: str) -> str:
    return f"{split}_labels.npy"


def content_hash(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over the arrays' names, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype}:{array.shape};".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def write(out_dir: Path, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
    """Write ``arrays`` (named ``<split>_images`` / ``<split>_labels``) and ``meta`` into a
    sibling temporary folder, then swap it into place."""
    with atomic_dir(out_dir) as tmp:
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", array, allow_pickle=False)
        write_json(tmp / META_FILE, meta)


def read_meta(folder: str | Path) -> dict[str, Any]:
    """``meta.json`` of a processed folder (an error naming the file and the fix)."""
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run multitask preprocess (after download "
                                "and validate), or dvc repro, to write the processed data")
    return dict(read_json(path, remedy="rerun multitask preprocess to write it again"))


def load_split(folder: str | Path, split: str, meta: Mapping[str, Any], *,
               mapped: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The images and labels of ``split``, checked against the counts ``meta`` records.

    ``mapped``: the images are a read-only memory map of their file (:class:`numpy.memmap`),
    read from disk as they are indexed, so a split larger than memory can be opened; the
    labels (small) are read whole either way."""
    folder = Path(folder)
    images = _load_array(folder / images_file(split), mmap_mode="r" if mapped else None)
    labels = _load_array(folder / labels_file(split))
    expected = meta["splits"][split]
    if len(images) != expected or len(labels) != expected:
        raise ValueError(
            f"{folder}: {split} has {len(images)} images and {len(labels)} labels, "
            f"{META_FILE} says {expected}; rerun multitask preprocess")
    return images, labels


def _load_array(path: Path, mmap_mode: Literal["r"] | None = None) -> np.ndarray:
    """``np.load`` with errors that name the file: a truncated or foreign file is the
    preprocess stage's to write again."""
    try:
        return np.load(path, allow_pickle=False, mmap_mode=mmap_mode)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found; rerun multitask preprocess") from None
    except (ValueError, OSError, EOFError) as exc:  # cut short, not .npy, object arrays
        raise ValueError(f"{path}: not a readable .npy array ({exc}); rerun multitask "
                         "preprocess") from None


def tasks(meta: Mapping[str, Any], rotation: bool = False) -> list[Task]:
    """The tasks of a processed data set, plus the auxiliary rotation task if asked for."""
    found = [task_of(entry) for entry in meta["tasks"]]
    return [*found, ROTATION_TASK] if rotation else found


def task_of(entry: Mapping[str, Any]) -> Task:
    """The :class:`Task` a ``meta.json`` task entry declares."""
    return Task(name=entry["name"], num_classes=int(entry.get("classes", 0)),
                kind=entry.get("kind", "multiclass"), loss=entry.get("loss", ""),
                class_names=tuple(entry.get("class_names", ())),
                target_mean=float(entry.get("target_mean", 0.0)),
                target_std=float(entry.get("target_std", 1.0)), unit=entry.get("unit", ""))


def task_names(meta: Mapping[str, Any]) -> list[str]:
    """The task names in label-column order."""
    return [t["name"] for t in meta["tasks"]]


def class_names(meta: Mapping[str, Any]) -> dict[str, list[str]]:
    """``{task: [class name per class index]}`` (empty for a regression task)."""
    return {t["name"]: list(t.get("class_names", ())) for t in meta["tasks"]}
