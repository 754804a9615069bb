"""The validate stage passes real Fashion-MNIST and catches each planted defect on its own.

Each defect is planted in small IDX gzip files (or, for NaN, which IDX cannot hold, in the
per-image table) and must fail exactly the expectations it breaks, naming the offending rows.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from multitask.cli import main as cli_main
from multitask.config import PixelStats, ValidateConfig
from multitask.data.idx import SPLIT_FILES, read_idx_pair
from multitask.data.tables import image_table, load_source
from multitask.data.validation import failure_messages, validate
from multitask.layout import Layout

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "sample" / "fashion-mnist"
# Uniform random pixels have mean 127.5 and std 73.9, outside the Fashion-MNIST ranges.
# uniform random pixels: mean ~127.5, std ~73.9
RANDOM_PIXEL_STATS = {"fashion_mnist": {"mean": [100.0, 160.0], "std": [50.0, 100.0]}}
RANDOM_PIXELS = ValidateConfig(pixel_stats=RANDOM_PIXEL_STATS)


def failed(summary: dict[str, Any]) -> set[tuple[str, str, str, str]]:
    """(split, table, expectation, column) of every failed expectation."""
    return {(split, e["table"], e["expectation"], e["column"])
            for source in summary["sources"].values()
            for split, by_split in source["splits"].items()
            for e in by_split["expectations"] if not e["success"]}


def entry(summary: dict[str, Any], split: str, column: str, expectation: str) -> dict[str, Any]:
    (found,) = [e for e in summary["sources"]["fashion_mnist"]["splits"][split]["expectations"]
                if e["column"] == column and e["expectation"] == expectation]
    return found


@pytest.fixture
def source_with(tmp_path: Path, idx_dataset: Callable, write_idx: Callable) -> Callable:
    """``source_with(plant) -> folder``: a 100/50-image source where ``plant`` edits the arrays.

    ``plant(arrays)`` gets ``{split: (images, labels)}`` (writable copies) and changes them in
    place before they are written back as IDX gzip files.
    """

    def make(plant: Callable[[dict[str, tuple[np.ndarray, np.ndarray]]], None]) -> Path:
        folder = Layout(tmp_path).source_dir("fashion_mnist")
        idx_dataset(folder, n_train=100, n_test=50)
        arrays = {split: tuple(a.copy() for a in read_idx_pair(*(folder / n for n in names)))
                  for split, names in SPLIT_FILES.items()}
        plant(arrays)
        for split, names in SPLIT_FILES.items():
            for name, array in zip(names, arrays[split], strict=True):
                write_idx(folder / name, array)
        return folder

    return make


def run(folder: Path, config: ValidateConfig = RANDOM_PIXELS) -> dict[str, Any]:
    return validate({"fashion_mnist": load_source(folder)}, config)


def test_clean_source_passes(source_with: Callable) -> None:
    summary = run(source_with(lambda arrays: None))
    assert summary["success"], failure_messages(summary)
    train = summary["sources"]["fashion_mnist"]["splits"]["train"]
    assert train["rows"] == 100
    assert train["class_counts"] == {str(c): 10 for c in range(10)}
    assert summary["sources"]["fashion_mnist"]["train_test_duplicates"] == []


def test_label_out_of_range_is_caught(source_with: Callable) -> None:
    def plant(arrays: dict) -> None:
        arrays["train"][1][3] = 12

    summary = run(source_with(plant))
    assert failed(summary) == {
        ("train", "images", "expect_column_values_to_be_between", "label")}
    label = entry(summary, "train", "label", "expect_column_values_to_be_between")
    assert label["examples"] == [{"value": 12, "index": 3}]
    assert label["observed_value"] == {"min": 0, "max": 12}


def test_train_test_duplicate_is_caught(source_with: Callable) -> None:
    def plant(arrays: dict) -> None:
        arrays["test"][0][2] = arrays["train"][0][7]

    summary = run(source_with(plant))
    assert failed(summary) == {
        ("test", "images", "expect_column_values_to_be_null", "duplicate_of_train")}
    source = summary["sources"]["fashion_mnist"]
    assert source["train_test_duplicates"] == [{"test_index": 2, "train_index": 7}]
    leak = entry(summary, "test", "duplicate_of_train", "expect_column_values_to_be_null")
    assert leak["examples"] == [{"value": 7, "index": 2}]


def test_missing_class_is_caught(source_with: Callable) -> None:
    def plant(arrays: dict) -> None:
        labels = arrays["train"][1]
        labels[labels == 3] = 4

    summary = run(source_with(plant))
    assert failed(summary) == {
        ("train", "images", "expect_column_distinct_values_to_contain_set", "label"),
        ("train", "classes", "expect_column_values_to_be_between", "relative_deviation"),
    }
    present = entry(summary, "train", "label", "expect_column_distinct_values_to_contain_set")
    assert present["examples"] == [{"missing": 3}]
    balance = entry(summary, "train", "relative_deviation", "expect_column_values_to_be_between")
    assert balance["examples"] == [{"value": -1.0, "label": 3}, {"value": 1.0, "label": 4}]


def test_an_empty_split_is_caught_and_said_to_be_empty(source_with: Callable) -> None:
    def plant(arrays: dict) -> None:
        images, labels = arrays["test"]
        arrays["test"] = (images[:0], labels[:0])

    summary = run(source_with(plant))
    assert ("test", "images", "expect_table_row_count_to_be_between", None) in failed(summary)
    assert all(split == "test" for split, *_ in failed(summary))
    assert ("fashion_mnist/test images: expect_table_row_count_to_be_between {'min_value': 1}: "
            "observed 0: the split is empty") in "\n".join(failure_messages(summary))


def test_pixel_statistics_outside_their_range_are_caught(source_with: Callable) -> None:
    config = ValidateConfig(
        pixel_stats={"fashion_mnist": PixelStats(mean=(40.0, 120.0), std=(50.0, 100.0))})
    summary = run(source_with(lambda arrays: None), config)
    assert failed(summary) == {
        (split, "statistics", "expect_column_values_to_be_between", "pixel_mean")
        for split in ("train", "test")}
    mean = entry(summary, "train", "pixel_mean", "expect_column_values_to_be_between")
    assert 120.0 < mean["observed_value"] < 135.0


def test_nan_pixel_is_caught_at_the_table_level() -> None:
    rng = np.random.default_rng(0)
    labels = np.arange(100) % 10
    images = rng.integers(0, 256, size=(100, 28, 28)).astype(np.float32)
    images[5, 10, 10] = np.nan
    table = image_table(images, labels, "train")
    assert table["has_nan"].tolist() == [i == 5 for i in range(100)]
    assert not table["pixel_mean"].isna().any()  # NaN is flagged, not spread into the stats

    summary = validate({"fashion_mnist": {"train": table}}, RANDOM_PIXELS)
    assert failed(summary) == {
        ("train", "images", "expect_column_values_to_be_in_set", "has_nan"),
        ("train", "images", "expect_column_values_to_be_in_set", "dtype"),  # float32, not uint8
    }
    assert entry(summary, "train", "has_nan", "expect_column_values_to_be_in_set")[
        "examples"] == [{"value": True, "index": 5}]


# ------------------------------------------------------------------------------- the stage
def write_params(tmp_path: Path, **validate_section: Any) -> Path:
    """The sample pipeline's params in pipeline folder ``tmp_path`` (raw data and reports
    under it, as its layout says)."""
    params = yaml.safe_load((ROOT / "sample" / "params.yaml").read_text())
    params["validate"].update(**validate_section)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_stage_passes_the_real_sample_and_writes_reports(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    shutil.copytree(SAMPLE, layout.source_dir("fashion_mnist"))
    params = write_params(tmp_path)
    stale = layout.data_docs / "stale.html"
    stale.parent.mkdir(parents=True)
    stale.write_text("from an earlier run")

    assert cli_main(["validate", "--params", str(params)]) == 0

    reports = layout.validation_dir
    summary = json.loads(layout.validation_summary.read_text())
    assert summary["success"]
    splits = summary["sources"]["fashion_mnist"]["splits"]
    assert {s: splits[s]["rows"] for s in splits} == {"train": 4000, "test": 1000}
    assert splits["train"]["class_counts"] == {str(c): 400 for c in range(10)}
    assert (reports / "data_docs" / "index.html").is_file()
    pages = list((reports / "data_docs" / "validations").rglob("*.html"))
    assert len(pages) == 6  # images, classes, statistics for each split
    assert not stale.exists()  # data docs are replaced as a whole, not merged with old ones
    assert [p.name for p in reports.iterdir() if p.name.startswith(".")] == []


def test_stage_fails_naming_expectation_column_and_values(
        tmp_path: Path, source_with: Callable, capsys: pytest.CaptureFixture[str]) -> None:
    def plant(arrays: dict) -> None:
        arrays["test"][1][[4, 9]] = 250

    source_with(plant)
    params = write_params(tmp_path, pixel_stats=RANDOM_PIXEL_STATS)

    assert cli_main(["validate", "--params", str(params)]) == 1

    error = capsys.readouterr().err
    assert "fashion_mnist/test images: expect_column_values_to_be_between on column 'label'" \
        in error
    assert "2 of 50 rows unexpected, e.g. label=250 at index 4, label=250 at index 9" in error
    summary = json.loads(Layout(tmp_path).validation_summary.read_text())
    assert summary["success"] is False  # written even though the stage failed


def test_interrupted_stage_keeps_the_previous_reports(
        tmp_path: Path, source_with: Callable, monkeypatch: pytest.MonkeyPatch) -> None:
    source_with(lambda arrays: None)
    params = write_params(tmp_path, pixel_stats=RANDOM_PIXEL_STATS)
    layout = Layout(tmp_path)
    previous = layout.data_docs / "index.html"
    previous.parent.mkdir(parents=True)
    previous.write_text("previous run")

    def crash(sources: Any, config: Any, docs_dir: Path) -> None:
        (docs_dir / "index.html").write_text("half-built")
        raise RuntimeError("interrupted while building the data docs")

    monkeypatch.setattr("multitask.data.validation.validate", crash)
    assert cli_main(["validate", "--params", str(params)]) == 1
    assert previous.read_text() == "previous run"
    assert sorted(p.name for p in layout.validation_dir.iterdir()) == ["data_docs"]
