"""Readers for the IDX format of (Fashion-)MNIST, gzip-compressed or not.

IDX: a 4-byte magic (two zero bytes, a type code, the number of dimensions), one big-endian
uint32 per dimension, then the payload. Only unsigned bytes (type 0x08) occur in these data sets.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

UBYTE = 0x08
# The four files of MNIST and Fashion-MNIST: split -> (images, labels).
SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_bytes(path: str | Path) -> bytes:
    """The file's payload, decompressed when it is gzip; errors name the file."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(
            f"{path}: corrupt gzip stream ({exc}); delete it and rerun multitask download"
        ) from None


def parse_idx(payload: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse an IDX payload into an array, checking the header against the payload size."""
    if len(payload) < 4:
        raise ValueError(f"{source}: too short to be an IDX file ({len(payload)} bytes)")
    zero, dtype_code, ndim = payload[:2], payload[2], payload[3]
    if zero != b"\x00\x00" or dtype_code != UBYTE or not 1 <= ndim <= 4:
        raise ValueError(
            f"{source}: wrong magic number 0x{payload[:4].hex()} (expected 0x000008NN, "
            "an unsigned-byte IDX file); is this the right file?"
        )
    header_size = 4 + 4 * ndim
    if len(payload) < header_size:
        raise ValueError(f"{source}: truncated header ({len(payload)} bytes)")
    shape = struct.unpack(f">{ndim}I", payload[4:header_size])
    expected = int(np.prod(shape, dtype=np.int64))
    actual = len(payload) - header_size
    if actual != expected:
        what = "truncated payload" if actual < expected else "payload longer than its header"
        raise ValueError(
            f"{source}: {what}: header says {shape} = {expected} bytes, file has {actual}; "
            "delete it and rerun multitask download"
        )
    return np.frombuffer(payload, dtype=np.uint8, offset=header_size).reshape(shape)


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (``.gz`` or plain)."""
    return parse_idx(read_bytes(path), str(path))


def read_idx_pair(images_path: str | Path, labels_path: str | Path
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W) and labels (N,), checked to agree on N."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise ValueError(
            f"{images_path}: expected 3 dimensions (N, rows, cols), got {images.shape}")
    if labels.ndim != 1:
        raise ValueError(f"{labels_path}: expected 1 dimension (N,), got {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels"
        )
    return images, labels


def read_split(folder: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of ``split`` ("train" or "test") from a source's folder."""
    images_path, labels_path = (Path(folder) / name for name in SPLIT_FILES[split])
    for path in (images_path, labels_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; run multitask download first")
    return read_idx_pair(images_path, labels_path)
