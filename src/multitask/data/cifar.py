"""Reader for the CIFAR-10 "python version" archive (``cifar-10-python.tar.gz``).

The archive holds ``cifar-10-batches-py/data_batch_1`` .. ``data_batch_5`` (the 50,000 training
images) and ``test_batch`` (10,000), each a pickled dict with ``data``, a uint8 array of shape
(N, 3072) whose rows are the red, green and blue 32x32 planes one after the other (row-major),
and ``labels``, N integers in 0..9. See https://www.cs.toronto.edu/~kriz/cifar.html.

Images are returned channels-last, uint8 (N, 32, 32, 3), like the IDX readers' (N, H, W) with a
channel axis added, and labels as uint8 (N,). The batches are unpickled with an unpickler that
only admits the few numpy names an array needs, so a tampered archive cannot run code.

``data.dataset: cifar10`` reads the archive where the download stage put it
(:func:`archive_path`); its second task's label, animal or vehicle, is :func:`vehicle_labels`.
"""

from __future__ import annotations

import codecs
import io
import pickle
import tarfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from multitask.data.datasets import CIFAR10_CLASSES, CIFAR10_VEHICLES

BATCH_DIR = "cifar-10-batches-py"
SPLIT_BATCHES: Mapping[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
SIDE, CHANNELS = 32, 3
ARCHIVE = "cifar-10-python.tar.gz"  # the file data/sources.yaml's cifar10 entry lists
# class id -> 1 for the four vehicles, 0 for the six animals
_IS_VEHICLE = np.array([name in CIFAR10_VEHICLES for name in CIFAR10_CLASSES], dtype=np.uint8)
MAX_BATCH_BYTES = 64 << 20  # each batch pickles 10,000 x 3,072 bytes (about 30 MB)
_FIX = "delete it and rerun multitask download --source cifar10"

# (module, name) -> the object an array pickle may reference; nothing else is loaded.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes and numpy arrays; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):  # how protocol-2 pickles spell bytes
            return codecs.encode
        if (module, name) in _ALLOWED:
            return super().find_class(*_ALLOWED[module, name])
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _parse_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``data`` as (N, 32, 32, 3) uint8 and ``labels`` as (N,) uint8, shapes checked."""
    try:
        # bytes: the batches were pickled by Python 2, whose str keys and buffers are bytes.
        batch = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # pickle raises many types on garbage; all mean "not a batch"
        raise ValueError(f"{where}: not a CIFAR-10 batch ({type(exc).__name__}: {exc}); "
                         f"{_FIX}") from None
    if not isinstance(batch, dict):
        raise ValueError(f"{where}: expected a pickled dict, got {type(batch).__name__}; {_FIX}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    missing = {"data", "labels"} - set(batch)
    if missing:
        raise ValueError(f"{where}: missing key(s) {sorted(missing)}; {_FIX}")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 \
            or data.ndim != 2 or data.shape[1] != CHANNELS * SIDE * SIDE:
        shape = getattr(data, "shape", type(data).__name__)
        raise ValueError(f"{where}: data must be uint8 of shape (N, {CHANNELS * SIDE * SIDE}), "
                         f"got {getattr(data, 'dtype', '?')} {shape}; {_FIX}")
    labels = np.asarray(batch["labels"])
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{where}: expected {len(data)} integer labels, got {labels.dtype} "
                         f"{labels.shape}; {_FIX}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CIFAR10_CLASSES)):
        raise ValueError(f"{where}: labels must lie in 0..9, found {labels.min()}..{labels.max()}; "
                         f"{_FIX}")
    images = data.reshape(-1, CHANNELS, SIDE, SIDE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.uint8)


def read_cifar10(path: str | Path) -> dict[Literal["train", "test"], tuple[np.ndarray, np.ndarray]]:
    """``{"train": (images, labels), "test": (images, labels)}`` from the python-version archive.

    Images are uint8 (N, 32, 32, 3) channels-last; labels uint8 (N,) indexing
    :data:`CIFAR10_CLASSES`. Training batches are concatenated in order 1..5.
    """
    path = Path(path)
    wanted = {f"{BATCH_DIR}/{name}" for names in SPLIT_BATCHES.values() for name in names}
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    try:
        # "r|gz": one sequential pass over the stream, no seeking back through the gzip.
        with tarfile.open(path, "r|gz") as archive:
            for member in archive:
                if member.name in wanted and member.isfile():
                    if member.size > MAX_BATCH_BYTES:  # a batch is 30 MB: refuse before reading
                        raise ValueError(f"{path}: {member.name} is {member.size:,} bytes, "
                                         f"more than a CIFAR-10 batch can be; {_FIX}")
                    handle = archive.extractfile(member)
                    raw = handle.read() if handle is not None else b""
                    found[member.name] = _parse_batch(raw, f"{path}: {member.name}")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found; run multitask download --source cifar10") \
            from None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise ValueError(f"{path}: corrupt or not a tar.gz archive ({exc}); {_FIX}") from None
    missing = sorted(wanted - set(found))
    if missing:
        raise ValueError(f"{path}: missing {', '.join(missing)} in the archive; is this "
                         f"cifar-10-python.tar.gz? {_FIX}")
    splits: dict[Literal["train", "test"], tuple[np.ndarray, np.ndarray]] = {}
    for split, names in (("train", SPLIT_BATCHES["train"]), ("test", SPLIT_BATCHES["test"])):
        parts = [found[f"{BATCH_DIR}/{name}"] for name in names]
        splits[split] = (np.concatenate([images for images, _ in parts]),
                         np.concatenate([labels for _, labels in parts]))
    return splits


def archive_path(folder: str | Path) -> Path:
    """The archive in a source folder (``data/raw/cifar10``)."""
    return Path(folder) / ARCHIVE


def vehicle_labels(labels: np.ndarray) -> np.ndarray:
    """1 where a class id (0..9) is a vehicle (airplane, automobile, ship, truck), 0 where it is
    an animal; uint8, the shape of ``labels``."""
    return _IS_VEHICLE[labels]
