"""``multitask predict``'s input files: every bad one is refused with a line naming the file."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from multitask.predict import load_images

SHAPE = (1, 36, 36)


def png_header_claiming(path: Path, width: int, height: int) -> None:
    """A tiny PNG whose header claims ``width x height`` pixels (a decompression bomb's look)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_a_good_png_and_array_load(tmp_path: Path) -> None:
    Image.fromarray(np.full((36, 36), 200, dtype=np.uint8)).save(tmp_path / "ok.png")
    np.save(tmp_path / "ok.npy", np.zeros((2, 36, 36), dtype=np.uint8))
    batch, names = load_images([tmp_path / "ok.png", tmp_path / "ok.npy"], SHAPE)
    assert batch.shape == (3, 1, 36, 36) and batch[0].max() == 200
    assert names[1:] == [f"{tmp_path / 'ok.npy'}[0]", f"{tmp_path / 'ok.npy'}[1]"]


def test_nan_pixels_are_refused(tmp_path: Path) -> None:
    array = np.zeros((36, 36), dtype=np.float32)
    array[3, 4] = np.nan
    np.save(tmp_path / "nan.npy", array)
    with pytest.raises(ValueError, match=r"nan\.npy: 1 NaN or infinite values"):
        load_images([tmp_path / "nan.npy"], SHAPE)


def test_object_arrays_are_refused_without_unpickling(tmp_path: Path) -> None:
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}, None], dtype=object),
            allow_pickle=True)
    with pytest.raises(ValueError, match=r"objects\.npy: not a readable \.npy array of numbers"):
        load_images([tmp_path / "objects.npy"], SHAPE)


def test_a_truncated_png_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (36, 36), dtype=np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.png: truncated or corrupt \.png image"):
        load_images([tmp_path / "cut.png"], SHAPE)


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    png_header_claiming(tmp_path / "bomb.png", 30000, 30000)
    with pytest.raises(ValueError, match=r"bomb\.png: .*refused before decoding"):
        load_images([tmp_path / "bomb.png"], SHAPE)
    png_header_claiming(tmp_path / "large.png", 8000, 8000)  # below PIL's own limit, above ours
    with pytest.raises(ValueError, match=r"large\.png: 8000x8000 pixels, more than 50,000,000"):
        load_images([tmp_path / "large.png"], SHAPE)
