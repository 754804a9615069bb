"""``multitask predict``: every task's answer for a few images, through a logged or registered
model.

The logged model (see :func:`multitask.tracking.log_model`) takes float32 raw pixel values 0..255
shaped (N, C, H, W) and answers the same table as ``mlflow models serve``, per task the columns
of its kind (:func:`multitask.tracking.served.task_columns`): multiclass ``<task>`` (the class
name) and ``<task>_probability``; binary ``<task>`` (the decided class's name),
``<task>_decision`` (0/1) and ``<task>_probability`` (of the positive class); regression
``<task>``, the value in the target's units. This module turns files into that batch and prints
the table.

Images: PNG/JPEG (converted to grayscale for a 1-channel model, to RGB for a 3-channel one; any
other size is scaled to fit the model's canvas, keeping the aspect ratio, and padded with black
-- the data's background -- with a warning) and ``.npy`` arrays of pixel values 0..255, shaped
(H, W), (N, H, W) or (N, 1, H, W) for 1 channel, (H, W, C), (N, H, W, C) (as the processed data
stores them) or (N, C, H, W) for 3.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
MAX_IMAGE_PIXELS = 50_000_000  # about 7000 x 7000: far beyond any input this model takes


# ------------------------------------------------------------------------------ reading images
def _letterbox(image: Any, size: tuple[int, int], source: Path) -> np.ndarray:
    """Scale a PIL image (mode L or RGB) to fit ``size`` (H, W) keeping its aspect ratio; pad
    with black."""
    from PIL import Image

    height, width = size
    if image.size == (width, height):
        return np.asarray(image, dtype=np.float32)
    log.warning("%s: %dx%d resized to fit %dx%d (aspect kept, padded with black)",
                source, image.size[0], image.size[1], width, height)
    scale = min(width / image.size[0], height / image.size[1])
    fitted = image.resize((max(1, round(image.size[0] * scale)),
                           max(1, round(image.size[1] * scale))), Image.Resampling.BILINEAR)
    canvas = Image.new(image.mode, (width, height), 0)
    canvas.paste(fitted, ((width - fitted.size[0]) // 2, (height - fitted.size[1]) // 2))
    return np.asarray(canvas, dtype=np.float32)


def _read_array(path: Path, channels: int, height: int, width: int) -> np.ndarray:
    """An ``.npy`` file as float32 (N, C, H, W) raw pixels; a clear error for anything else."""
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:  # object arrays, truncated or foreign files
        raise ValueError(f"{path}: not a readable .npy array of numbers ({exc})") from None
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{path}: array of {array.dtype}; save pixel values as numbers")
    array = array.astype(np.float32)
    if channels == 1:
        if array.ndim == 2:
            array = array[None]
        if array.ndim == 4 and array.shape[1] == channels:
            array = array[:, 0]
        if array.shape[-2:] != (height, width) or array.ndim != 3:
            raise ValueError(f"{path}: array of shape {array.shape}; expected ({height}, "
                             f"{width}), (N, {height}, {width}) or (N, 1, {height}, {width})")
        array = array[:, None]
    else:
        if array.ndim == 3:
            array = array[None]
        if array.ndim == 4 and array.shape[1:] == (height, width, channels):
            array = array.transpose(0, 3, 1, 2)
        if array.ndim != 4 or array.shape[1:] != (channels, height, width):
            raise ValueError(
                f"{path}: array of shape {array.shape}; expected ({height}, {width}, "
                f"{channels}), (N, {height}, {width}, {channels}) or (N, {channels}, {height}, "
                f"{width})")
    if not np.isfinite(array).all():
        raise ValueError(f"{path}: {int((~np.isfinite(array)).sum())} NaN or infinite values; "
                         "save raw pixel values 0..255")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(f"{path}: values outside 0..255 (min {array.min()}, max "
                         f"{array.max()}); save raw pixel values, not normalised ones")
    return array


def _read_image(path: Path, channels: int, height: int, width: int) -> np.ndarray:
    """A PNG/JPEG file as float32 (C, H, W) raw pixels (grey for 1 channel, RGB for 3),
    letterboxed to the model's size.

    The header is checked before any pixel is decoded: a file claiming more than
    :data:`MAX_IMAGE_PIXELS` pixels is refused (a decompression bomb would exhaust memory).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            pixels = image.size[0] * image.size[1]
            if pixels > MAX_IMAGE_PIXELS:
                raise ValueError(f"{path}: {image.size[0]}x{image.size[1]} pixels, more than "
                                 f"{MAX_IMAGE_PIXELS:,}; refused before decoding (resize it)")
            pixels_hwc = _letterbox(image.convert("L" if channels == 1 else "RGB"),
                                    (height, width), path)
            return pixels_hwc[None] if channels == 1 else pixels_hwc.transpose(2, 0, 1)
    except UnidentifiedImageError:
        raise ValueError(f"{path}: not a readable {path.suffix} image") from None
    except Image.DecompressionBombError as exc:
        raise ValueError(f"{path}: refused before decoding ({exc})") from None
    except OSError as exc:  # truncated or corrupt pixel data
        raise ValueError(f"{path}: truncated or corrupt {path.suffix} image ({exc})") from None


def load_images(paths: list[Path], shape: tuple[int, int, int]) -> tuple[np.ndarray, list[str]]:
    """A float32 (N, C, H, W) batch of pixel values 0..255 and a name for each image."""
    channels, height, width = shape
    batch: list[np.ndarray] = []
    names: list[str] = []
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such image file")
        if path.suffix.lower() == ".npy":
            array = _read_array(path, channels, height, width)
            batch.extend(array)
            names.extend([str(path)] if len(array) == 1
                         else [f"{path}[{i}]" for i in range(len(array))])
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            batch.append(_read_image(path, channels, height, width))
            names.append(str(path))
        else:
            raise ValueError(f"{path}: unsupported file type '{path.suffix}'; give PNG, JPEG "
                             "or .npy files")
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

    model = load_model(model_uri)
    _, shape = model_info(model)
    batch, names = load_images([Path(p) for p in images], shape)
    table = predict_table(model, batch)
    table.insert(0, "image", names)
    if as_json:
        sys.stdout.write(json.dumps(table.to_dict(orient="records"), indent=2) + "\n")
        return 0
    sys.stdout.write(table.to_string(index=False, float_format=lambda p: f"{p:.3f}") + "\n")
    return 0
