"""``multitask predict``: every task's answer for a few images, through a logged or registered
model.

The logged model (see :func:`multitask.tracking.log_model`) takes float32 raw pixel values 0..255
shaped (N, C, H, W) and answers the same table as ``mlflow models serve``, per task the columns
of its kind (:func:`multitask.tasks.task_columns`): multiclass ``<task>`` (the class
name) and ``<task>_probability``; binary ``<task>`` (the decided class's name),
``<task>_decision`` (0/1) and ``<task>_probability`` (of the positive class); regression
``<task>``, the value in the target's units. This module turns files into that batch and prints
the table.

Images: any file Pillow reads (PNG, JPEG, BMP, WebP, TIFF ...: what a manifest data set
accepts), prepared by the training code itself (:func:`multitask.data.manifest.decode` and
:func:`~multitask.data.manifest.fit`): turned upright by its EXIF orientation, a 16-bit grey
image's top 8 bits kept, converted to grey for a 1-channel model and to RGB for a 3-channel one,
and an image of another size fitted into the model's square as the model's training images were
(``resize`` in the logged model's metadata: ``pad`` letterboxes on black, ``crop`` keeps the
centre; a model logged before it was recorded: ``pad``, the data's default), with a warning.
``.npy`` arrays hold pixel values 0..255, shaped (H, W), (N, H, W) or (N, 1, H, W) for 1
channel, (H, W, C), (N, H, W, C) (as the processed data stores them) or (N, C, H, W) for 3; a
float array whose values all lie within 0..1 is predicted as it is, with a warning (it looks
scaled). A folder stands for its image and ``.npy`` files, in name order (not its subfolders;
hidden files skipped).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from multitask.data.manifest import decode, fit
from multitask.tracking import DEFAULT_RESIZE
from multitask.tracking.served import pixel_problem

log = logging.getLogger(__name__)

ARRAY_SUFFIX = ".npy"
RESIZE_MODES = ("pad", "crop")  # data.resize's values (multitask.config.DataConfig)
MAX_IMAGE_PIXELS = 50_000_000  # about 7000 x 7000: far beyond any input this model takes


@cache
def image_suffixes() -> frozenset[str]:
    """The file suffixes of every image format Pillow opens (a manifest takes any of them)."""
    from PIL import Image

    return frozenset(suffix for suffix, kind in Image.registered_extensions().items()
                     if kind in Image.OPEN)


# ------------------------------------------------------------------------------ reading images
def _read_array(path: Path, channels: int, height: int, width: int) -> np.ndarray:
    """An ``.npy`` file as float32 (N, C, H, W) raw pixels; a clear error for anything else."""
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:  # object arrays, truncated or foreign files
        raise ValueError(f"{path}: not a readable .npy array of numbers ({exc})") from None
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{path}: array of {array.dtype}; save pixel values as numbers")
    floating, stored = np.issubdtype(array.dtype, np.floating), array.shape
    array = array.astype(np.float32)
    if channels == 1:
        if array.ndim == 2:
            array = array[None]
        if array.ndim == 4 and array.shape[1] == channels:
            array = array[:, 0]
        if array.shape[-2:] != (height, width) or array.ndim != 3:
            raise ValueError(f"{path}: array of shape {stored}; expected ({height}, "
                             f"{width}), (N, {height}, {width}) or (N, 1, {height}, {width})")
        array = array[:, None]
    else:
        if array.ndim == 3:
            array = array[None]
        if array.ndim == 4 and array.shape[1:] == (height, width, channels):
            array = array.transpose(0, 3, 1, 2)
        if array.ndim != 4 or array.shape[1:] != (channels, height, width):
            raise ValueError(
                f"{path}: array of shape {stored}; expected ({height}, {width}, "
                f"{channels}), (N, {height}, {width}, {channels}) or (N, {channels}, {height}, "
                f"{width})")
    if not len(array):
        raise ValueError(f"{path}: holds no image (an array of shape {stored}); save at least "
                         "one image in it, or leave the file out")
    if (problem := pixel_problem(array)) is not None:
        raise ValueError(f"{path}: {problem}; save raw pixel values 0..255, not normalised ones")
    if floating and 0 < array.max() <= 1:
        log.warning("%s: float pixel values all within 0..1 (max %.3g), predicted as nearly "
                    "black; the model takes raw pixel values 0..255: if they were scaled to "
                    "0..1, multiply them by 255", path, array.max())
    return array


def _read_image(path: Path, channels: int, height: int, width: int, resize: str
                ) -> tuple[np.ndarray, tuple[int, int]]:
    """An image file as float32 (C, H, W) raw pixels, read and fitted by the training code
    (:func:`multitask.data.manifest.decode`, :func:`~multitask.data.manifest.fit` with the
    model's ``resize``), and its own size (width, height) before fitting.

    The header is checked before any pixel is decoded: a file claiming more than
    :data:`MAX_IMAGE_PIXELS` pixels is refused (a decompression bomb would exhaust memory).
    """
    from PIL import Image, UnidentifiedImageError

    if height != width:
        raise ValueError(f"{path}: the model takes {height}x{width} images; images are fitted "
                         "into squares as in training, so give .npy arrays of that shape")
    try:
        with Image.open(path) as header:  # reads the header only
            size = header.size
        if size[0] * size[1] > MAX_IMAGE_PIXELS:
            raise ValueError(f"{path}: {size[0]}x{size[1]} pixels, more than "
                             f"{MAX_IMAGE_PIXELS:,}; refused before decoding (resize it)")
        try:
            image = decode(path, channels)
        except ValueError as exc:  # a 32-bit image's values: decode says which
            raise ValueError(f"{path}: {exc}") from None
        pixels_hwc = np.asarray(fit(image, width, resize), dtype=np.float32)
    except UnidentifiedImageError:
        raise ValueError(f"{path}: not a readable {path.suffix} image") from None
    except Image.DecompressionBombError as exc:
        raise ValueError(f"{path}: refused before decoding ({exc})") from None
    except OSError as exc:  # truncated or corrupt pixel data
        raise ValueError(f"{path}: truncated or corrupt {path.suffix} image ({exc})") from None
    return (pixels_hwc[None] if channels == 1 else pixels_hwc.transpose(2, 0, 1)), image.size


def _readable(path: Path) -> bool:
    return path.suffix.lower() == ARRAY_SUFFIX or path.suffix.lower() in image_suffixes()


def expand_folders(paths: Sequence[Path]) -> list[Path]:
    """``paths`` with each folder replaced by its image and ``.npy`` files in name order (its
    subfolders and hidden files left out); a folder holding none is an error."""
    expanded: list[Path] = []
    for path in paths:
        if not path.is_dir():
            expanded.append(path)
            continue
        found = sorted(p for p in path.iterdir()
                       if p.is_file() and not p.name.startswith(".") and _readable(p))
        if not found:
            raise ValueError(f"{path}: a folder holding no image or {ARRAY_SUFFIX} file "
                             "(subfolders are not searched); name the files, e.g. "
                             f"{path}/*.png")
        expanded.extend(found)
    return expanded


def load_images(paths: list[Path], shape: tuple[int, int, int], resize: str = DEFAULT_RESIZE
                ) -> tuple[np.ndarray, list[str]]:
    """A float32 (N, C, H, W) batch of pixel values 0..255 and a name for each image; a folder
    stands for its files (:func:`expand_folders`), images are fitted as ``resize`` says."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize {resize!r}: expected one of {', '.join(RESIZE_MODES)}")
    channels, height, width = shape
    batch: list[np.ndarray] = []
    names: list[str] = []
    fitted: dict[tuple[int, int], list[Path]] = {}  # own size -> the images fitted from it
    for path in expand_folders(paths):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such image file")
        if path.suffix.lower() == ARRAY_SUFFIX:
            array = _read_array(path, channels, height, width)
            batch.extend(array)
            names.extend([str(path)] if len(array) == 1
                         else [f"{path}[{i}]" for i in range(len(array))])
        elif path.suffix.lower() in image_suffixes():
            pixels, size = _read_image(path, channels, height, width, resize)
            batch.append(pixels)
            names.append(str(path))
            if size != (width, height):
                fitted.setdefault(size, []).append(path)
        else:
            raise ValueError(f"{path}: unsupported file type '{path.suffix}'; give images "
                             "Pillow reads (PNG, JPEG, BMP, WebP, TIFF ...), .npy arrays or "
                             "a folder of them")
    for (own_width, own_height), paths_of_size in fitted.items():  # one line per size, not
        which = (str(paths_of_size[0]) if len(paths_of_size) == 1  # one per image of a folder
                 else f"{len(paths_of_size)} images ({paths_of_size[0]}, ...)")
        log.warning("%s: %dx%d fitted into %dx%d (resize: %s, as the model's training images "
                    "were)", which, own_width, own_height, width, height, resize)
    return np.stack(batch).astype(np.float32), names


# --------------------------------------------------------------------------------- predicting
def model_info(model: Any) -> tuple[list[str], tuple[int, int, int]]:
    """Task names and input shape (C, H, W) of a loaded pyfunc model."""
    metadata = model.metadata.metadata or {}
    tasks = list(metadata.get("task_names") or [])
    if not tasks:
        raise ValueError("the model carries no task names in its metadata; log it with "
                         "multitask.tracking.StageRun.log_model")
    schema = model.metadata.get_input_schema()
    if schema is None:  # the signature, not a data set's defaults, says what the model takes
        raise ValueError("the model has no input signature; log it with "
                         "multitask.tracking.log_model, which records one")
    shape = tuple(schema.inputs[0].shape[1:])
    if len(shape) != 3:
        raise ValueError(f"the model's input signature has shape {shape}; expected (C, H, W)")
    return tasks, shape  # type: ignore[return-value]


def model_resize(model: Any) -> str:
    """How the model's training images were fitted into its size (``resize`` in its metadata;
    :data:`~multitask.tracking.DEFAULT_RESIZE` for a model logged before it was recorded)."""
    resize = (model.metadata.metadata or {}).get("resize", DEFAULT_RESIZE)
    if resize not in RESIZE_MODES:
        raise ValueError(f"the model's metadata says resize {resize!r}, not one of "
                         f"{', '.join(RESIZE_MODES)}; log it again with `multitask train`")
    return str(resize)


def prepare(model: Any, paths: Sequence[str | Path]) -> tuple[np.ndarray, list[str]]:
    """The batch a loaded pyfunc model takes for ``paths`` (files or folders), prepared as its
    training images were, and a name for each image."""
    _, shape = model_info(model)
    return load_images([Path(p) for p in paths], shape, model_resize(model))


def predict_table(model: Any, batch: np.ndarray) -> pd.DataFrame:
    """The model's answer for a (N, C, H, W) batch: per task the columns of its kind (see the
    module docstring), exactly what ``mlflow models serve`` returns."""
    tasks, _ = model_info(model)
    table = model.predict(batch.astype(np.float32))
    if not isinstance(table, pd.DataFrame) or not set(tasks) <= set(table.columns):
        raise ValueError("the model answered no table of class names per task; it was logged "
                         "by an older multitask: rerun `multitask train` to log it again")
    return table


def predict(model_uri: str, images: Sequence[str | Path], as_json: bool = False) -> int:
    """``multitask predict --model URI IMAGE... [--json]``: print each image's answers."""
    from multitask.tracking import load_model
    from multitask.tracking.store import read_only_requests

    if missing := [str(image) for image in images if not Path(image).exists()]:  # before the
        raise FileNotFoundError(f"{', '.join(missing)}: no such file or folder")  # download
    with read_only_requests():  # an unreachable server: said in seconds, not minutes
        model = load_model(model_uri)
    batch, names = prepare(model, images)
    table = predict_table(model, batch)
    table.insert(0, "image", names)
    if as_json:
        sys.stdout.write(json.dumps(table.to_dict(orient="records"), indent=2) + "\n")
        return 0
    sys.stdout.write(table.to_string(index=False, float_format=lambda p: f"{p:.3f}") + "\n")
    return 0
