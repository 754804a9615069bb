"""``multitask predict``'s input files: every bad one is refused with a line naming the file."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from multitask.config import parse_params
from multitask.data.manifest import build_manifest
from multitask.layout import Layout
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
    with pytest.raises(ValueError, match=r"nan\.npy: 1 NaN or infinite pixel value\(s\), in "
                                         r"image\(s\) at index \[0\]; save raw pixel values "
                                         r"0\.\.255"):
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


def test_a_float_image_scaled_to_one_is_refused_naming_the_file(tmp_path: Path) -> None:
    # it was predicted as a black image
    Image.fromarray(np.full((36, 36), 0.5, dtype=np.float32)).save(tmp_path / "scaled.tif")
    with pytest.raises(ValueError, match=r"scaled\.tif: a 32-bit floating-point image, values "
                                         r"0\.5\.\.0\.5: within 0\.\.1, which would turn "
                                         r"black; multiply them by 255"):
        load_images([tmp_path / "scaled.tif"], SHAPE)


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    png_header_claiming(tmp_path / "bomb.png", 30000, 30000)
    with pytest.raises(ValueError, match=r"bomb\.png: .*refused before decoding"):
        load_images([tmp_path / "bomb.png"], SHAPE)
    png_header_claiming(tmp_path / "large.png", 8000, 8000)  # below PIL's own limit, above ours
    with pytest.raises(ValueError, match=r"large\.png: 8000x8000 pixels, more than 50,000,000"):
        load_images([tmp_path / "large.png"], SHAPE)


# ------------------------------------------------------- the same pixels as training's
def training_pixels(tmp_path: Path, images: list[str], resize: str) -> np.ndarray:
    """The training split a manifest of ``images`` (in tmp_path/mine) becomes, as float32
    (N, 1, 16, 16): what ``multitask preprocess`` writes, read back."""
    rows = [{"image": name, "species": "ab"[i % 2], "split": "train"}
            for i, name in enumerate(images)]
    rows += [{"image": images[0], "species": "a", "split": split} for split in ("val", "test")]
    pd.DataFrame(rows).to_csv(tmp_path / "mine" / "manifest.csv", index=False)
    params = parse_params({"data": {"dataset": "manifest", "manifest": str(tmp_path / "mine" /
                                                                          "manifest.csv"),
                                    "tasks": {"species": {"kind": "multiclass"}}, "channels": 1,
                                    "image_size": 16, "resize": resize}}, "p.yaml")
    layout = Layout(tmp_path / resize)
    build_manifest(params.data, layout)
    return np.load(layout.processed_dir / "train_images.npy").astype(np.float32)[:, None]


@pytest.fixture
def awkward_images(tmp_path: Path) -> list[str]:
    """Images training reads differently from a plain Pillow conversion, or that predict used
    to refuse: 16-bit grey, EXIF-rotated JPEG, wider than high, BMP and WebP."""
    folder = tmp_path / "mine"
    folder.mkdir()
    rng = np.random.default_rng(0)
    deep = rng.integers(0, 65536, (16, 16), dtype=np.uint16)
    Image.fromarray(deep).save(folder / "deep.png")
    assert Image.open(folder / "deep.png").mode.startswith("I;16")
    tall = np.zeros((24, 16, 3), dtype=np.uint8)
    tall[:8] = 255  # white top third; upright (turned clockwise), the right third of 24x16
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(tall).save(folder / "rotated.jpg", exif=exif, quality=95)
    wide = rng.integers(0, 256, (16, 40), dtype=np.uint8)
    Image.fromarray(wide).save(folder / "wide.png")
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / "a.bmp")
    Image.fromarray(rng.integers(0, 256, (20, 16, 3), dtype=np.uint8)).save(folder / "a.webp")
    return ["deep.png", "rotated.jpg", "wide.png", "a.bmp", "a.webp"]


@pytest.mark.parametrize("resize", ["pad", "crop"])
def test_images_are_prepared_as_training_prepares_them(tmp_path: Path, awkward_images: list[str],
                                                       resize: str) -> None:
    expected = training_pixels(tmp_path, awkward_images, resize)
    batch, _ = load_images([tmp_path / "mine" / name for name in awkward_images], (1, 16, 16),
                           resize)
    for name, got, want in zip(awkward_images, batch, expected, strict=True):
        assert np.array_equal(got, want), name
    deep = np.asarray(Image.open(tmp_path / "mine" / "deep.png"), dtype=np.uint16)
    assert np.array_equal(batch[0, 0], (deep >> 8).astype(np.float32))  # not clipped to white


def test_an_exif_rotated_photo_is_turned_upright(tmp_path: Path, awkward_images: list[str]
                                                 ) -> None:
    batch, _ = load_images([tmp_path / "mine" / "rotated.jpg"], (1, 16, 16), "crop")
    # upright the photo is 24 wide, 16 high, columns 16..23 white: crop keeps columns 4..19,
    # so the last 4 are white (as stored, 16 wide, it would be white rows instead)
    assert batch[0, 0, :, 13:].min() > 200 and batch[0, 0, :, :11].max() < 50


def test_a_folder_stands_for_its_images_in_name_order(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for value, name in ((30, "b.png"), (10, "a.png"), (20, "sub/c.png"), (40, ".hidden.png")):
        Image.fromarray(np.full((36, 36), value, dtype=np.uint8)).save(folder / name)
    np.save(folder / "c.npy", np.full((36, 36), 50, dtype=np.uint8))
    (folder / "notes.txt").write_text("not an image")
    batch, names = load_images([folder], SHAPE)
    assert names == [str(folder / "a.png"), str(folder / "b.png"), str(folder / "c.npy")]
    assert batch[:, 0, 0, 0].tolist() == [10, 30, 50]
    with pytest.raises(ValueError, match=r"empty: a folder holding no image or \.npy file"):
        (tmp_path / "empty").mkdir()
        load_images([tmp_path / "empty"], SHAPE)


def test_float_pixels_scaled_to_one_are_warned_about(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    np.save(tmp_path / "scaled.npy", np.full((36, 36), 0.8, dtype=np.float32))
    np.save(tmp_path / "raw.npy", np.full((36, 36), 0.8 * 255, dtype=np.float32))
    np.save(tmp_path / "dark.npy", np.ones((36, 36), dtype=np.uint8))  # integers: raw values
    load_images([tmp_path / "raw.npy", tmp_path / "dark.npy"], SHAPE)
    assert "0..1" not in caplog.text
    load_images([tmp_path / "scaled.npy"], SHAPE)
    assert "scaled.npy: float pixel values all within 0..1 (max 0.8)" in caplog.text
    assert "multiply them by 255" in caplog.text


def test_an_empty_array_is_named(tmp_path: Path) -> None:
    np.save(tmp_path / "empty.npy", np.zeros((0, 36, 36), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"empty\.npy: holds no image \(an array of shape "
                                         r"\(0, 36, 36\)\)"):
        load_images([tmp_path / "empty.npy"], SHAPE)


def test_a_wrong_shape_is_reported_as_the_file_stores_it(tmp_path: Path) -> None:
    np.save(tmp_path / "small.npy", np.zeros((28, 28), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"small\.npy: array of shape \(28, 28\); expected "
                                         r"\(36, 36\)"):
        load_images([tmp_path / "small.npy"], (1, 36, 36))


def test_a_missing_input_is_named_before_any_model_is_fetched(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from multitask import tracking
    from multitask.cli import main

    def fetch(uri: str) -> None:
        raise AssertionError("the model was fetched before the inputs were checked")

    monkeypatch.setattr(tracking, "load_model", fetch)
    (tmp_path / "here.png").write_bytes(b"")
    missing = tmp_path / "gone.png"
    assert main(["predict", "--model", "models:/any@champion", str(tmp_path / "here.png"),
                 str(missing)]) == 1
    assert f"{missing}: no such file or folder" in capsys.readouterr().err


def test_a_folder_of_other_sized_images_warns_once_per_size(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # a data set's own folder: every image 40x30, one 50x50, one already 36x36
    folder = tmp_path / "photos"
    folder.mkdir()
    for index in range(5):
        Image.new("L", (40, 30), 10 * index).save(folder / f"{index}.png")
    Image.new("L", (50, 50), 100).save(folder / "square.png")
    Image.new("L", (36, 36), 100).save(folder / "same.png")
    batch, _ = load_images([folder], SHAPE)
    assert batch.shape == (7, 1, 36, 36)
    lines = [r.getMessage() for r in caplog.records if "fitted into" in r.getMessage()]
    assert lines == [
        f"5 images ({folder / '0.png'}, ...): 40x30 fitted into 36x36 (resize: pad, as the "
        "model's training images were)",
        f"{folder / 'square.png'}: 50x50 fitted into 36x36 (resize: pad, as the model's "
        "training images were)"]
