"""The IDX readers accept well-formed (Fashion-)MNIST files and reject malformed ones clearly."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from multitask.data.idx import read_idx, read_idx_pair


@pytest.mark.parametrize("name", ["images-idx3-ubyte.gz", "images-idx3-ubyte"])
def test_valid_file_round_trips(tmp_path: Path, write_idx: Callable, name: str) -> None:
    images = np.random.default_rng(0).integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / name, images)
    result = read_idx(tmp_path / name)
    assert result.dtype == np.uint8
    np.testing.assert_array_equal(result, images)


def test_valid_pair_round_trips(tmp_path: Path, write_idx: Callable) -> None:
    images = np.arange(5 * 4 * 3, dtype=np.uint8).reshape(5, 4, 3)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    write_idx(tmp_path / "images.gz", images)
    write_idx(tmp_path / "labels.gz", labels)
    got_images, got_labels = read_idx_pair(tmp_path / "images.gz", tmp_path / "labels.gz")
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


def test_wrong_magic_number_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bad.gz"
    # 0x0D is the IDX type code of float32, not unsigned bytes.
    path.write_bytes(gzip.compress(bytes([0, 0, 0x0D, 1]) + struct.pack(">I", 2) + b"\0" * 8))
    with pytest.raises(ValueError, match=r"bad\.gz: wrong magic number 0x00000d01"):
        read_idx(path)


def test_truncated_payload_is_rejected(tmp_path: Path, write_idx: Callable) -> None:
    path = tmp_path / "labels"
    write_idx(path, np.arange(10, dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ValueError, match=r"labels: truncated payload: header says \(10,\) = "
                                         r"10 bytes, file has 7"):
        read_idx(path)


def test_payload_longer_than_header_counts_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "images.gz"
    header = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2, 2, 2)
    path.write_bytes(gzip.compress(header + b"\x01" * 12))  # header says 8 bytes
    with pytest.raises(ValueError, match=r"payload longer than its header: header says "
                                         r"\(2, 2, 2\) = 8 bytes, file has 12"):
        read_idx(path)


def test_images_and_labels_count_mismatch_is_rejected(tmp_path: Path,
                                                      write_idx: Callable) -> None:
    write_idx(tmp_path / "images.gz", np.zeros((4, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / "labels.gz", np.zeros(3, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"images\.gz has 4 images but .*labels\.gz has 3"):
        read_idx_pair(tmp_path / "images.gz", tmp_path / "labels.gz")


def test_labels_with_image_dimensions_are_rejected(tmp_path: Path, write_idx: Callable) -> None:
    write_idx(tmp_path / "images.gz", np.zeros((4, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / "labels.gz", np.zeros((4, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"labels\.gz: expected 1 dimension"):
        read_idx_pair(tmp_path / "images.gz", tmp_path / "labels.gz")


def test_corrupt_gzip_stream_is_rejected(tmp_path: Path, write_idx: Callable) -> None:
    path = tmp_path / "images.gz"
    write_idx(path, np.zeros((4, 28, 28), dtype=np.uint8))
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2:] = b"\xff" * (len(raw) - len(raw) // 2)  # keeps the gzip magic
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"images\.gz: corrupt gzip stream .*rerun multitask "
                                         r"download"):
        read_idx(path)
