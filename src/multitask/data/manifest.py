"""A manifest data set (``data.dataset: manifest``): a user's own images and labels, no code.

The manifest is a CSV file (or Parquet) with a column ``image`` (the image file's path,
relative to the manifest's folder), one column per task of ``data.tasks`` (named as the task)
and, optionally, a column ``split`` (train, val or test on every row). Without ``split`` the
rows are split with ``data.seed``: ``data.val_fraction`` and ``data.test_fraction`` of each
class of the first classification task (stratified; plain shuffling when every task is a
regression), at least one row of each class left in training.

Labels, from the training split only:

- multiclass: the class list is the training split's distinct values, sorted (numerically
  when every value is a number, else as text); the label is the class's index;
- binary: exactly two distinct values; ``positive`` (else the second in sorted order) is the
  positive class (label 1), the other the negative (label 0);
- regression: a number per row, standardising ``target_mean`` / ``target_std`` (population
  std) from the training split; the label is the raw value, in its units.

A val or test label that training never saw, a task with one class, an empty label, a
regression value that is text, NaN or infinite, a missing column, a missing or unreadable
image, a task column given twice: each is a :class:`ManifestError` naming the file, the row
(the line of the file it starts on, as an editor numbers them: the header is row 1; blank
lines, skipped like rows whose cells are all empty, still count; a Parquet file's header is
row 1, its first row 2), the column and the value. Column names and cells are stripped of
surrounding blanks.
Everything is checked before the first image is decoded, so nothing is written then; an
image found unreadable while streaming aborts the atomic folder, so nothing half-written
stays either.

Images are read with Pillow (EXIF orientation applied), converted to grey (``L``) or RGB
per ``data.channels`` and fitted into ``data.image_size`` squares with their aspect kept:
``resize: pad`` (the default) scales the longer side to the size and centres the image on
black bars, so nothing of it is lost; ``crop`` scales the shorter side and keeps the centre
square. An image already of the size is taken as it is. They stream into memory-mapped
``.npy`` files inside the processed folder's atomic swap, so a data set larger than memory
never has to fit in it; labels follow the processed format (:mod:`multitask.data.processed`):
uint8 when every task classifies, float32 when one is a regression.

One module, not several: reading, splitting, labelling and streaming are the steps of one
file format, each relying on what the one before checked, and they share its row numbering
and the wording of its errors.
"""

from __future__ import annotations

import csv
import difflib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageOps
from tqdm import tqdm

from multitask.config import DataConfig, ManifestTask
from multitask.data import processed
from multitask.data.datasets import MANIFEST
from multitask.io import atomic_dir, write_json
from multitask.layout import Layout

log = logging.getLogger(__name__)

IMAGE_COLUMN = "image"
SPLIT_COLUMN = "split"
HEADER_ROWS = 1  # a Parquet file's rows are numbered as a CSV file's: the header is row 1
SHOWN = 5  # offending rows named per error


class ManifestError(ValueError):
    """A manifest, one of its rows or one of its images that cannot be used as it is."""


@dataclass(frozen=True)
class Manifest:
    """The manifest's rows as read: text cells, one column per task, and the split of each."""

    path: Path
    frame: pd.DataFrame  # IMAGE_COLUMN and one text column per task, a RangeIndex
    split: np.ndarray  # "train" | "val" | "test" per row
    split_from: str  # "column" (the manifest's) or "seed"
    rows: np.ndarray  # each row's number in the file: the line it starts on

    def row(self, index: int) -> int:
        """The number errors give ``frame``'s row ``index``: the file's line it starts on."""
        return int(self.rows[index])

    def image_path(self, index: int) -> Path:
        return self.path.parent / self.frame[IMAGE_COLUMN].iat[index]

    def rows_text(self, indices: Sequence[int]) -> str:
        """``row 4`` / ``rows 4, 9, 12 (and 3 more)``."""
        shown = ", ".join(str(self.row(i)) for i in indices[:SHOWN])
        more = f" (and {len(indices) - SHOWN} more)" if len(indices) > SHOWN else ""
        return f"row{'s' if len(indices) > 1 else ''} {shown}{more}"


# What YAML 1.1 (PyYAML, DVC) reads as a boolean: a bare yes/no in params.yaml, or a quoted
# 'yes' that `dvc exp run -S` wrote back without its quotes.
YAML_BOOLEANS = {True: ("y", "yes", "true", "on"), False: ("n", "no", "false", "off")}


def positive_value(positive: bool | str, classes: list[str]) -> str | None:
    """The value of ``classes`` that ``data.tasks.<task>.positive`` names: itself when text; for
    a boolean, the one value spelt as YAML spells that boolean (``yes``, ``True``, ``on`` ...).
    None when no value (or, for a boolean, both) matches."""
    if not isinstance(positive, bool):
        return positive if positive in classes else None
    spelt = [c for c in classes if c.strip().lower() in YAML_BOOLEANS[positive]]
    return spelt[0] if len(spelt) == 1 else None


def binary_classes(path: Path, name: str, positive: bool | str | None, classes: list[str]
                   ) -> list[str]:
    """A binary task's two sorted training values in label order (negative, positive), the
    positive one named by ``data.tasks.<name>.positive`` (:func:`positive_value`; without it
    the second); ManifestError naming both values when it names neither."""
    if positive is None:
        return classes
    value = positive_value(positive, classes)
    if value is None:
        raise ManifestError(f"{path}: column {name!r}: data.tasks.{name}.positive "
                            f"{positive!r} is not one of its values "
                            f"{classes[0]!r}, {classes[1]!r}; set it to one of them, "
                            f"or remove it for the default {classes[1]!r}")
    return [c for c in classes if c != value] + [value]


def manifest_path(config: DataConfig, layout: Layout) -> Path:
    """``data.manifest``, relative paths taken from the pipeline folder."""
    path = Path(str(config.manifest)).expanduser()
    return path if path.is_absolute() else layout.root / path


def read_configured(config: DataConfig, layout: Layout) -> Manifest:
    """The manifest ``config`` names, read and split as ``config`` says (:func:`read_manifest`)."""
    return read_manifest(manifest_path(config, layout), config.tasks, config.val_fraction,
                         config.test_fraction, config.seed)


# ------------------------------------------------------------------------------ reading
def _as_text(column: pd.Series) -> pd.Series:
    """Cells as the text a CSV would hold (a Parquet file's typed values converted; a missing
    value is the empty text), stripped of surrounding blanks."""
    def text(value: Any) -> str:
        if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
            return ""
        return str(value)
    return column.map(text).astype(object).str.strip()


def _read_csv(path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """The CSV file's cells as text, and the line each row starts on (a quoted cell may span
    lines). Blank lines and rows of empty cells are skipped; a short row is padded with
    empty cells."""
    records: list[list[str]] = []
    lines: list[int] = []
    try:
        # utf-8-sig: a spreadsheet's "CSV UTF-8" export starts with a byte-order mark, which
        # would otherwise become part of the first column's name.
        with open(path, newline="", encoding="utf-8-sig") as file:
            reader = csv.reader(file)
            start = 1
            for record in reader:
                if any(cell.strip() for cell in record):
                    records.append(record)
                    lines.append(start)
                start = reader.line_num + 1
    except (csv.Error, UnicodeDecodeError) as exc:
        advice = "; save it as UTF-8" if isinstance(exc, UnicodeDecodeError) else ""
        raise ManifestError(f"{path}: not a readable CSV file ({exc}){advice}") from None
    if not records:
        raise ManifestError(f"{path}: empty; write a header row (image and one column per "
                            "task) and one row per image")
    header, *rows = records
    if len(header) == 1 and (other := next((s for s in ";\t|" if s in header[0]), None)):
        raise ManifestError(f"{path}: the header is one column, {header[0]!r}: its cells are "
                            f"separated by {other!r}; a manifest's are separated by commas "
                            "(save it as CSV with commas)")
    for line, record in zip(lines[1:], rows, strict=True):
        if any(cell.strip() for cell in record[len(header):]):
            raise ManifestError(f"{path}: row {line}: {len(record)} cells, the header has "
                                f"{len(header)}; quote a cell that holds a comma")
        record[len(header):] = []
        record.extend([""] * (len(header) - len(record)))
    return pd.DataFrame(rows, columns=header, dtype=object), np.array(lines[1:], dtype=np.int64)


def _read_table(path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """The manifest's cells, its column names stripped, and each row's number."""
    if not path.is_file():
        below = sorted(path.parent.glob(f"*/{path.name}")) if path.parent.is_dir() else []
        raise ManifestError(f"{path}: manifest not found; check data.manifest (relative "
                            "paths start at the pipeline folder)"
                            + (f"; there is {below[0]}: set data.manifest to it, or pack an "
                               "archive's files without their folder (manifest.csv at its "
                               "top)" if below else ""))
    if path.suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ManifestError(f"{path}: reading Parquet needs pyarrow, which is not "
                                "installed; install it or save the manifest as CSV") from None
        table = pd.read_parquet(path)
        rows = np.arange(len(table), dtype=np.int64) + HEADER_ROWS + 1
    else:
        table, rows = _read_csv(path)
    table.columns = [str(column).strip() for column in table.columns]
    return table.reset_index(drop=True), rows


def read_manifest(path: Path, tasks: Mapping[str, ManifestTask], val_fraction: float,
                  test_fraction: float, seed: int) -> Manifest:
    """The manifest's image and task columns, checked, and each row's split."""
    table, rows = _read_table(path)
    wanted = [IMAGE_COLUMN, *tasks]
    if missing := [c for c in wanted if c not in table.columns]:
        spare = [str(c) for c in table.columns if c not in wanted]
        close = {c: near[0] for c in missing if (near := difflib.get_close_matches(c, spare, 1))}
        hint = "".join(f"; did you mean {near!r} for {name!r}?" for name, near in close.items())
        raise ManifestError(
            f"{path}: no column {', '.join(repr(c) for c in missing)} (the image paths are "
            f"column {IMAGE_COLUMN!r}, each task of data.tasks a column of its name); the "
            f"file has {', '.join(repr(str(c)) for c in table.columns)}{hint}")
    names = list(table.columns)
    if twice := [c for c in [*wanted, SPLIT_COLUMN] if names.count(c) > 1]:
        raise ManifestError(f"{path}: column {twice[0]!r} appears {names.count(twice[0])} "
                            "times in the header; keep one, or rename the others")
    if table.empty:
        raise ManifestError(f"{path}: no rows; list one image per row")
    frame = pd.DataFrame({c: _as_text(table[c]) for c in wanted})
    empty = np.flatnonzero(frame[IMAGE_COLUMN].to_numpy() == "")
    probe = Manifest(path, frame, np.array([]), "", rows)
    if empty.size:
        raise ManifestError(f"{path}: {probe.rows_text(empty)}, column {IMAGE_COLUMN!r}: "
                            "empty; give each row an image path")
    if SPLIT_COLUMN in table.columns:
        split = _as_text(table[SPLIT_COLUMN]).to_numpy(dtype=object)
        bad = np.flatnonzero(~np.isin(split, processed.SPLITS))
        if bad.size:
            raise ManifestError(
                f"{path}: {probe.rows_text(bad)}, column {SPLIT_COLUMN!r}: value "
                f"{split[bad[0]]!r}; use train, val or test (or drop the column for a "
                "seeded split)")
        if absent := [s for s in processed.SPLITS if not (split == s).any()]:
            raise ManifestError(f"{path}: column {SPLIT_COLUMN!r} has no {' or '.join(absent)} "
                                "row; every split needs images")
        return Manifest(path, frame, split.astype(str), "column", rows)
    stratify = next((name for name, task in tasks.items() if task.kind != "regression"), None)
    strata = frame[stratify].to_numpy(dtype=str) if stratify else np.zeros(len(frame), str)
    split = seeded_split(strata, val_fraction, test_fraction, seed)
    if absent := [s for s in processed.SPLITS if not (split == s).any()]:
        raise ManifestError(f"{path}: {len(frame)} rows leave no {' or '.join(absent)} image "
                            f"at val_fraction {val_fraction}, test_fraction {test_fraction}; "
                            "add images or raise the fractions")
    return Manifest(path, frame, split, "seed", rows)


def seeded_split(strata: np.ndarray, val_fraction: float, test_fraction: float,
                 seed: int) -> np.ndarray:
    """Each row's split: per stratum (in sorted order), a seeded permutation of its rows gives
    ``round(fraction * count)`` to test, then to val, the rest to train; at least one row of a
    stratum always stays in train, so training sees every class."""
    rng = np.random.default_rng(seed)
    split = np.full(len(strata), "train", dtype="<U5")
    for stratum in np.unique(strata):
        rows = rng.permutation(np.flatnonzero(strata == stratum))
        n_test = round(test_fraction * len(rows))
        n_val = round(val_fraction * len(rows))
        while n_test + n_val >= len(rows) and n_test + n_val > 0:
            if n_val >= n_test:
                n_val -= 1
            else:
                n_test -= 1
        split[rows[:n_test]] = "test"
        split[rows[n_test:n_test + n_val]] = "val"
    return split


# ------------------------------------------------------------------------------- labels
def sorted_classes(values: np.ndarray) -> list[str]:
    """Distinct values, numerically sorted when all are numbers (2 before 10), else as text."""
    distinct = sorted(set(values.tolist()))
    try:
        return sorted(distinct, key=float)
    except ValueError:
        return distinct


def regression_values(text: np.ndarray) -> np.ndarray:
    """A regression column's cells as float64 numbers, NaN for each cell that is not a finite
    number (empty, text, ``nan``, ``inf``, or too large for a float: ``1e400``). Preprocess
    refuses such a row and validate flags it (:mod:`multitask.data.manifest_checks`)."""
    values = pd.to_numeric(pd.Series(text, dtype=object), errors="coerce")
    values = values.to_numpy(dtype=np.float64)
    return np.where(np.isfinite(values), values, np.nan)


def _task_entry(manifest: Manifest, name: str, task: ManifestTask
                ) -> tuple[dict[str, Any], np.ndarray]:
    """One task's ``meta.json`` entry and its label per row (float64)."""
    path, where = manifest.path, f"column {name!r}"
    text = manifest.frame[name].to_numpy(dtype=str)
    train = manifest.split == "train"
    loss = task.loss or ""
    if task.kind == "regression":
        values = regression_values(text)
        bad = np.flatnonzero(np.isnan(values))
        if bad.size:
            raise ManifestError(f"{path}: {manifest.rows_text(bad)}, {where}: value "
                                f"{str(text[bad[0]])!r} is not a number; a regression target "
                                "needs a finite number on every row")
        mean, std = float(values[train].mean()), float(values[train].std())
        if not std > 0:
            raise ManifestError(f"{path}: {where}: every training value is {mean:g}; a "
                                "constant target cannot be learnt")
        entry = {"name": name, "classes": 0, "class_names": [], "kind": "regression",
                 "loss": loss or "mse", "target_mean": mean, "target_std": std,
                 "unit": task.unit, "source": MANIFEST}
        return entry, values
    empty = np.flatnonzero(text == "")
    if empty.size:
        raise ManifestError(f"{path}: {manifest.rows_text(empty)}, {where}: empty; give "
                            "every row a label")
    classes = sorted_classes(text[train])
    if len(classes) < 2:
        rest = sorted_classes(text[text != classes[0]]) if manifest.split_from == "seed" else []
        raise ManifestError(f"{path}: {where}: one class ({classes[0]!r}) in the training "
                            "split; a task needs at least two"
                            + (_seeded_advice(rest[0]) if rest else ""))
    if task.kind == "binary":
        if len(classes) != 2:
            raise ManifestError(f"{path}: {where}: a binary task has two values, the training "
                                f"split has {len(classes)} ({', '.join(classes[:10])}); "
                                "declare it multiclass or fix the labels")
        classes = binary_classes(path, name, task.positive, classes)
    elif len(classes) > 255:
        raise ManifestError(f"{path}: {where}: {len(classes)} classes; at most 255 fit the "
                            "processed format's uint8 labels")
    index = {c: i for i, c in enumerate(classes)}
    unseen = np.flatnonzero(~np.isin(text, classes))
    if unseen.size:
        first = unseen[0]
        raise ManifestError(f"{path}: {manifest.rows_text(unseen)}, {where}: value "
                            f"{str(text[first])!r} ({manifest.split[first]} split) never occurs in "
                            f"training ({', '.join(classes[:10])})"
                            + (_seeded_advice(str(text[first])) if manifest.split_from == "seed"
                               else "; move such rows to training or drop them"))
    entry = {"name": name, "classes": len(classes), "class_names": classes, "kind": task.kind,
             "loss": loss or ("bce" if task.kind == "binary" else "cross_entropy"),
             "source": MANIFEST}
    return entry, np.array([index[v] for v in text], dtype=np.float64)


def _seeded_advice(value: str) -> str:
    """What to do when ``data.seed``'s split left ``value`` out of training."""
    return ("; data.seed split the rows (the manifest has no split column): add a split column "
            f"that puts some rows of {value!r} in train, or try another data.seed")


def encode_tasks(manifest: Manifest, tasks: Mapping[str, ManifestTask]
                 ) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The tasks' ``meta.json`` entries and the (N, T) labels in the processed format's dtype
    (uint8 when every task classifies, float32 when one is a regression)."""
    entries, columns = [], []
    for name, task in tasks.items():
        entry, values = _task_entry(manifest, name, task)
        entries.append(entry)
        columns.append(values)
    labels = np.stack(columns, axis=1)
    regression = any(e["kind"] == "regression" for e in entries)
    return entries, labels.astype(np.float32 if regression else np.uint8)


# ------------------------------------------------------------------------------- images
def separator_advice(path: Path) -> str:
    """What to add to "not found" for ``path`` written with Windows' separator."""
    return ("; separate folders with / (a \\ is part of a file's name here)"
            if "\\" in str(path) else "")


def missing_images(manifest: Manifest) -> np.ndarray:
    """Rows whose image file does not exist."""
    return np.flatnonzero([not manifest.image_path(i).is_file()
                           for i in range(len(manifest.frame))])


def decode(path: Path, channels: int) -> Image.Image:
    """The image at ``path``, upright and in mode L (1 channel) or RGB (3); OSError, ValueError
    or DecompressionBombError when Pillow cannot read it.

    A 16-bit grey image keeps its top 8 bits (Pillow's own conversion would clip every value
    above 255 to white), also a 16-bit PGM, which Pillow opens in mode I scaled to 0..65535.
    Any other 32-bit image (mode I or F: no fixed range) converts only when its values lie
    within 0..255, and a floating-point one not when they all lie within 0..1 (a scaled
    image, which would turn black); else ValueError saying so."""
    with Image.open(path) as image:
        upright = ImageOps.exif_transpose(image)
        if upright.mode.startswith("I;16") or (upright.mode == "I" and image.format == "PPM"):
            upright = Image.fromarray((np.asarray(upright).astype(np.uint16) >> 8)
                                      .astype(np.uint8))
        elif upright.mode in ("I", "F"):
            low, high = upright.getextrema()
            kind = "integer" if upright.mode == "I" else "floating-point"
            if low < 0 or high > 255:
                raise ValueError(f"a 32-bit {kind} image, values {low}..{high}: "
                                 "outside 0..255, which conversion would clip; save it as an "
                                 "8-bit or 16-bit image")
            if upright.mode == "F" and 0 < high <= 1:
                raise ValueError(f"a 32-bit {kind} image, values {low}..{high}: "
                                 "within 0..1, which would turn black; multiply them by 255, "
                                 "or save it as an 8-bit or 16-bit image")
        return upright.convert("L" if channels == 1 else "RGB")


def fit(image: Image.Image, size: int, resize: str) -> Image.Image:
    """``image`` in a ``size`` square, aspect kept: ``pad`` letterboxes it on black, ``crop``
    keeps its centre. Antialiased bilinear resampling; an image of the size is left as it is."""
    width, height = image.size
    if (width, height) == (size, size):
        return image
    scale = size / (max if resize == "pad" else min)(width, height)
    scaled = image.resize((max(1, round(width * scale)), max(1, round(height * scale))),
                          Image.Resampling.BILINEAR)
    if resize == "crop":
        left, top = (scaled.width - size) // 2, (scaled.height - size) // 2
        return scaled.crop((left, top, left + size, top + size))
    canvas = Image.new(image.mode, (size, size))
    canvas.paste(scaled, ((size - scaled.width) // 2, (size - scaled.height) // 2))
    return canvas


def load_image(manifest: Manifest, index: int, channels: int, size: int,
               resize: str) -> np.ndarray:
    """Row ``index``'s image as a uint8 array, (size, size) or (size, size, 3)."""
    path = manifest.image_path(index)
    try:
        return np.asarray(fit(decode(path, channels), size, resize), dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ManifestError(f"{manifest.path}: row {manifest.row(index)}, column "
                            f"{IMAGE_COLUMN!r}: {path}: unreadable image ({exc}); replace or "
                            "remove it") from None


# -------------------------------------------------------------------------------- stage
def _stream_split(tmp: Path, split: str, rows: np.ndarray, manifest: Manifest,
                  config: DataConfig, bar: tqdm) -> tuple[np.ndarray, np.ndarray]:
    """Write ``split``'s images into a memory-mapped ``.npy`` file; return the per-channel
    sums of pixels and of squared pixels (exact integers)."""
    size, channels = config.image_size, config.channels
    shape = (len(rows), size, size) if channels == 1 else (len(rows), size, size, channels)
    images = np.lib.format.open_memmap(tmp / processed.images_file(split), mode="w+",
                                       dtype=np.uint8, shape=shape)
    sums = np.zeros(channels, dtype=np.int64)
    squares = np.zeros(channels, dtype=np.int64)
    for position, index in enumerate(rows):
        pixels = load_image(manifest, int(index), channels, size, config.resize)
        images[position] = pixels
        flat = pixels.reshape(-1, channels).astype(np.int64)
        sums += flat.sum(axis=0)
        squares += (flat * flat).sum(axis=0)
        bar.update(1)
    images.flush()
    del images
    return sums, squares


def _pixel_stats(sums: np.ndarray, squares: np.ndarray, count: int) -> tuple[Any, Any]:
    """Mean and population std on the 0..1 scale: a float for one channel, else a list."""
    mean = sums / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    mean, std = mean / 255.0, std / 255.0
    if len(mean) == 1:
        return float(mean[0]), float(std[0])
    return [float(m) for m in mean], [float(s) for s in std]


def build_manifest(config: DataConfig, layout: Layout) -> dict[str, Any]:
    """Read, check and write ``config``'s manifest as ``layout``'s processed folder; return
    its ``meta.json`` content. Every row and label is checked before any image is read."""
    start = time.perf_counter()
    manifest = read_configured(config, layout)
    path = manifest.path
    entries, labels = encode_tasks(manifest, config.tasks)
    missing = missing_images(manifest)
    if missing.size:
        raise ManifestError(f"{path}: {manifest.rows_text(missing)}, column "
                            f"{IMAGE_COLUMN!r}: image file not found: "
                            f"{manifest.image_path(int(missing[0]))}; paths are relative to "
                            "the manifest's folder" + separator_advice(
                                manifest.image_path(int(missing[0]))))
    rows = {split: np.flatnonzero(manifest.split == split) for split in processed.SPLITS}
    with atomic_dir(layout.processed_dir) as tmp:
        with tqdm(total=len(manifest.frame), desc="manifest images", unit="img",
                  disable=None) as bar:
            sums, squares = {}, {}
            for split in processed.SPLITS:
                sums[split], squares[split] = _stream_split(tmp, split, rows[split], manifest,
                                                            config, bar)
                np.save(tmp / processed.labels_file(split), labels[rows[split]],
                        allow_pickle=False)
        arrays = {f"{split}_{kind}": np.load(tmp / f"{split}_{kind}.npy", mmap_mode="r")
                  for split in processed.SPLITS for kind in ("images", "labels")}
        pixels = len(rows["train"]) * config.image_size**2
        pixel_mean, pixel_std = _pixel_stats(sums["train"], squares["train"], pixels)
        meta = {
            "dataset": MANIFEST,
            "manifest": str(config.manifest),
            "tasks": entries,
            "splits": {split: len(rows[split]) for split in processed.SPLITS},
            "split_from": manifest.split_from,
            "image_size": config.image_size,
            "channels": config.channels,
            "resize": config.resize,
            "seed": config.seed,
            "pixel_mean": pixel_mean,
            "pixel_std": pixel_std,
            "sha256": processed.content_hash(arrays),
        }
        del arrays
        write_json(tmp / processed.META_FILE, meta)
    log.info("%s: %s images in %.1f s -> %s (sha256 %s)", path, meta["splits"],
             time.perf_counter() - start, layout.processed_dir, meta["sha256"][:12])
    return meta
