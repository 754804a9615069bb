"""What the ``validate`` stage checks of a manifest data set: its tables and expectations.

Per split (the manifest's ``split`` column or the seeded split of :mod:`multitask.data.manifest`,
the same one preprocess makes):

- ``images``: one row per manifest row: its ``row`` number (as the manifest's errors give it:
  the line of the file it starts on), the ``image`` path as written, ``problem`` (null,
  ``missing: <path>`` or ``unreadable: <why>``), the decoded size, the SHA-256 of the decoded
  pixels (in ``data.channels``' mode, before resizing) and
  ``duplicate_of`` (val, test: the first ``<split> row <n>`` of an earlier split with the same
  pixels), plus each task's column as text. Expectations: no problem; no duplicate across
  splits; a classification label within the training split's classes (an empty one never is);
  a regression value that is a finite number as preprocess reads it (not among the column's
  cells that :func:`~multitask.data.manifest.regression_values` refuses); on train, two
  classes for a binary task and at least two for a multiclass one.
- ``classes`` (val and test, every classification task): each training class's count
  against the count its training share predicts. Every task: ``absent`` false, i.e. no class
  that its share predicts at least :data:`MIN_EXPECTED` times is missing from the split (its
  metrics would be undefined there: an AUROC needs both classes). The first classification
  task, the one the seeded split is stratified on, also has its ``relative_deviation`` within
  ``validate.class_balance_tolerance``; the other tasks' shares vary by chance under a seeded
  split, so their deviation is left null, as is that of a class predicted fewer than
  :data:`MIN_EXPECTED` times (too rare to judge).

No pixel-statistics expectation: a user's images have no known range of means.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from multitask.config import DataConfig, ManifestTask
from multitask.data import processed
from multitask.data.manifest import (
    Manifest,
    binary_classes,
    decode,
    read_configured,
    regression_values,
    separator_advice,
    sorted_classes,
)
from multitask.layout import Layout

if TYPE_CHECKING:
    from great_expectations.expectations import Expectation

MIN_EXPECTED = 5
ROW_KEYS: dict[str, list[str]] = {"images": ["split", "row", "image"],
                                  "classes": ["split", "task", "label"]}


def inspect(path: Path, channels: int) -> tuple[str | None, int, int, str | None]:
    """(problem, width, height, pixel hash) of one image file."""
    if not path.is_file():
        return f"missing: {path}{separator_advice(path)}", 0, 0, None
    try:
        image = decode(path, channels)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        return f"unreadable: {exc}", 0, 0, None
    pixels = np.asarray(image)
    digest = hashlib.sha256(f"{pixels.shape}".encode() + pixels.tobytes()).hexdigest()
    return None, image.width, image.height, digest


def image_tables(manifest: Manifest, tasks: Mapping[str, ManifestTask],
                 channels: int) -> dict[str, pd.DataFrame]:
    """``{split: images table}``, duplicates across splits marked."""
    found = [inspect(manifest.image_path(i), channels)
             for i in tqdm(range(len(manifest.frame)), desc="manifest images", unit="img",
                           disable=None)]
    problem, width, height, digest = (list(column) for column in zip(*found, strict=True))
    frame = pd.DataFrame({
        "split": manifest.split, "row": [manifest.row(i) for i in range(len(manifest.frame))],
        "image": manifest.frame["image"], "problem": problem, "width": width,
        "height": height, "content_hash": digest,
        **{name: manifest.frame[name] for name in tasks},
    })
    first_seen: dict[str, str] = {}
    tables: dict[str, pd.DataFrame] = {}
    for split in processed.SPLITS:
        table = frame[frame["split"] == split].reset_index(drop=True)
        table["duplicate_of"] = [None if h is None else first_seen.get(h)
                                 for h in table["content_hash"]]
        for digest_, row in zip(table["content_hash"], table["row"], strict=True):
            if digest_ is not None:
                first_seen.setdefault(digest_, f"{split} row {row}")
        tables[split] = table
    return tables


def class_table(tables: Mapping[str, pd.DataFrame], split: str, task: str,
                balance: bool = True) -> pd.DataFrame:
    """Counts of ``task``'s training classes in ``split`` against their training shares;
    ``relative_deviation`` only where ``balance`` (the task the split is stratified on)."""
    train = tables["train"][task].value_counts()
    train = train[train.index != ""].sort_index()
    counts = tables[split][task].value_counts().reindex(train.index, fill_value=0)
    expected = train / train.sum() * len(tables[split])
    judged = expected >= MIN_EXPECTED
    deviation = (counts / expected - 1.0).where(judged & balance)
    return pd.DataFrame({"split": split, "task": task, "label": train.index.astype(str),
                         "count": counts.to_numpy(), "expected_count": expected.to_numpy(),
                         "relative_deviation": deviation.to_numpy(),
                         "absent": (judged & (counts == 0)).to_numpy()})


def manifest_tables(config: DataConfig, layout: Layout
                    ) -> tuple[Path, dict[str, dict[str, pd.DataFrame]]]:
    """The manifest's path and ``{split: {table: frame}}``; ManifestError when the file itself
    cannot be read (no file, a missing column, a bad split value) or a binary task's
    ``positive`` names neither of its training values."""
    manifest = read_configured(config, layout)
    images = image_tables(manifest, config.tasks, config.channels)
    for name, task in config.tasks.items():  # a positive naming neither value: preprocess's error
        values = images["train"][name].to_numpy(dtype=str)
        classes = sorted_classes(values[values != ""])
        if task.kind == "binary" and len(classes) == 2:  # other counts: an expectation fails
            binary_classes(manifest.path, name, task.positive, classes)
    classified = [n for n, t in config.tasks.items() if t.kind != "regression"]
    tables: dict[str, dict[str, pd.DataFrame]] = {}
    for split in processed.SPLITS:
        tables[split] = {"images": images[split]}
        if classified and split != "train":  # the first is the one a seeded split stratifies
            tables[split]["classes"] = pd.concat(
                [class_table(images, split, name, balance=name == classified[0])
                 for name in classified], ignore_index=True)
    return manifest.path, tables


def seeded_split(config: DataConfig, layout: Layout) -> bool:
    """Whether ``data.seed`` chose the manifest's splits (it has no split column)."""
    return read_configured(config, layout).split_from == "seed"


def training_classes(tables: Mapping[str, Mapping[str, pd.DataFrame]], task: str) -> list[str]:
    """The classes training holds for ``task`` (what every split's labels must be among)."""
    values = tables["train"]["images"][task]
    return sorted(set(values[values != ""]))


def not_numbers(column: pd.Series) -> list[str]:
    """The distinct cells of a regression column that are not a finite number, as preprocess
    reads them (:func:`~multitask.data.manifest.regression_values`)."""
    text = column.to_numpy(dtype=str)
    return sorted(set(text[np.isnan(regression_values(text))].tolist()))


def expectations(table: str, split: str, tasks: Mapping[str, ManifestTask],
                 tables: Mapping[str, Mapping[str, pd.DataFrame]],
                 tolerance: float) -> list[Expectation]:
    """The suite for one table of one split (Great Expectations must be importable)."""
    import great_expectations.expectations as gxe

    if table == "classes":
        return [gxe.ExpectColumnValuesToBeBetween(column="relative_deviation",
                                                  min_value=-tolerance, max_value=tolerance),
                gxe.ExpectColumnValuesToBeInSet(column="absent", value_set=[False])]
    suite: list[Expectation] = [gxe.ExpectColumnValuesToBeNull(column="problem")]
    if split != "train":
        suite.append(gxe.ExpectColumnValuesToBeNull(column="duplicate_of"))
    for name, task in tasks.items():
        if task.kind == "regression":
            # preprocess's own rule, so validate passes exactly what preprocess accepts
            suite.append(gxe.ExpectColumnValuesToNotBeInSet(
                column=name, value_set=not_numbers(tables[split]["images"][name])))
            continue
        suite.append(gxe.ExpectColumnValuesToBeInSet(column=name,
                                                     value_set=training_classes(tables, name)))
        if split == "train":
            most = 2 if task.kind == "binary" else None
            suite.append(gxe.ExpectColumnUniqueValueCountToBeBetween(
                column=name, min_value=2, max_value=most))
    return suite


def class_counts(images: pd.DataFrame, tasks: Mapping[str, ManifestTask]
                 ) -> dict[str, dict[str, int]]:
    """``{task: {label: count}}`` of the classification tasks, for the summary."""
    return {name: {str(k): int(v) for k, v in images[name].value_counts().sort_index().items()}
            for name, task in tasks.items() if task.kind != "regression"}


def summary_extras(tables: Mapping[str, Mapping[str, pd.DataFrame]],
                   tasks: Mapping[str, ManifestTask]) -> dict[str, Any]:
    """What the summary reports beside the expectations: class counts per split, and the
    images repeated across splits as (later, earlier) pairs."""
    duplicates = [{"image": f"{split} row {row}", "duplicate_of": earlier}
                  for split, by_table in tables.items()
                  for row, earlier in zip(by_table["images"]["row"],
                                          by_table["images"]["duplicate_of"], strict=True)
                  if pd.notna(earlier)]
    return {"class_counts": {s: class_counts(t["images"], tasks) for s, t in tables.items()},
            "duplicates_across_splits": duplicates}
