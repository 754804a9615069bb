"""The manifest data set: its params, reader, splits, class inference, image fitting and each
bad input, on small PNG files written here."""

from __future__ import annotations

import io
import re
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from multitask.config import ConfigError, DataConfig, ManifestTask, parse_params
from multitask.data import manifest as mf
from multitask.data.manifest_checks import image_tables
from multitask.data.unpack import archive_folder, unpack, unpack_all
from multitask.layout import Layout

KINDS = {"species": {"kind": "multiclass"}, "smiling": {"kind": "binary"},
         "age": {"kind": "regression", "unit": "years"}}


def tasks(raw: dict[str, dict[str, Any]]) -> dict[str, ManifestTask]:
    return {name: ManifestTask(**entry) for name, entry in raw.items()}


def png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(path)


def write_csv(folder: Path, rows: Sequence[dict[str, Any]], images: bool = True) -> Path:
    """manifest.csv in ``folder`` with ``rows``; each row's image an 8x8 grey PNG of value
    ``10 * row index`` unless ``images`` is False."""
    folder.mkdir(parents=True, exist_ok=True)
    for number, row in enumerate(rows):
        row.setdefault("image", f"img/{number}.png")
        if images:
            png(folder / row["image"], np.full((8, 8), 10 * number))
    path = folder / "manifest.csv"
    pd.DataFrame(list(rows)).to_csv(path, index=False)
    return path


def config(path: Path, raw_tasks: dict[str, dict[str, Any]], **data: Any) -> DataConfig:
    params = parse_params({"data": {"dataset": "manifest", "manifest": str(path),
                                    "tasks": raw_tasks, **data}}, "p.yaml")
    return params.data


def read(path: Path, raw_tasks: dict[str, dict[str, Any]], val: float = 0.1,
         test: float = 0.1, seed: int = 0) -> mf.Manifest:
    return mf.read_manifest(path, tasks(raw_tasks), val, test, seed)


def split_rows(n: int = 3) -> list[dict[str, Any]]:
    """``n`` train rows then one val and one test row (species a/b alternating)."""
    splits = ["train"] * n + ["val", "test"]
    return [{"species": "ab"[i % 2], "split": s} for i, s in enumerate(splits)]


# ----------------------------------------------------------------------------------- params
def test_manifest_params_keep_the_task_order_and_declarations(tmp_path: Path) -> None:
    data = config(tmp_path / "m.csv", KINDS, channels=1, image_size=32, resize="crop",
                  test_fraction=0.2)
    assert list(data.tasks) == ["species", "smiling", "age"]
    assert [t.kind for t in data.tasks.values()] == ["multiclass", "binary", "regression"]
    assert data.tasks["age"].unit == "years"
    assert (data.channels, data.image_size, data.resize, data.test_fraction) == (1, 32, "crop",
                                                                                 0.2)


def test_a_manifest_defaults_to_colour_64_pixels_padded() -> None:
    data = DataConfig(dataset="manifest", manifest="m.csv", tasks=KINDS)
    assert (data.channels, data.image_size, data.resize, data.test_fraction) == (3, 64, "pad",
                                                                                 0.1)


def test_composite_data_sets_have_no_manifest_values() -> None:
    data = DataConfig()
    assert (data.manifest, data.tasks, data.channels, data.image_size, data.resize,
            data.test_fraction) == (None, {}, None, None, None, None)


@pytest.mark.parametrize(("data", "message"), [
    ({"canvas_size": 36}, "canvas_size: apply to composite data sets only; remove it for "
                          "manifest"),
    ({"train_size": 10, "test_size": 5}, "train_size, test_size: apply to composite data sets "
                                         "only; remove them"),
    ({"manifest": None}, "dataset: manifest needs manifest: <path"),
    ({"manifest": "m.txt"}, "manifest: m.txt: expected a .csv or .parquet file"),
    ({"tasks": {}}, "dataset: manifest needs tasks:"),
    ({"tasks": {"split": {"kind": "binary"}}}, "tasks.split: a task name is an ASCII letter"),
    # "a letter" was false for Âge, a letter that the name's pattern refuses
    ({"tasks": {"Âge": {"kind": "regression"}}},
     "tasks.Âge: a task name is an ASCII letter (a-z, A-Z) then ASCII letters, digits or _"),
    # predict's table had one species_probability column, the regression value
    ({"tasks": {**KINDS, "species_probability": {"kind": "regression"}}},
     "tasks.species_probability: predict and the served model name a column of task species "
     "so (species, species_probability); rename the task (and its manifest column)"),
    ({"tasks": {**KINDS, "smiling_decision": {"kind": "binary"}}},
     "tasks.smiling_decision: predict and the served model name a column of task smiling so "
     "(smiling, smiling_decision, smiling_probability)"),
    # pydantic's "Input should be a valid dictionary or instance of ManifestTask" named a class
    ({"tasks": {**KINDS, "species": "multiclass"}},
     "p.yaml: data.tasks.species: a task is a mapping: {kind: multiclass}, {kind: binary} or "
     "{kind: regression} (see the README, Task kinds) (got 'multiclass')"),
    ({"tasks": {**KINDS, "species": None}}, "data.tasks.species: a task is a mapping"),
    ({"tasks": {"age": {"kind": "regression", "loss": "bce"}}},
     "loss: 'bce' is not a loss of a regression task; use one of mse, huber"),
    ({"tasks": {"age": {"kind": "regression", "positive": "1"}}},
     "positive applies to binary tasks only"),
    ({"tasks": {"species": {"kind": "multiclass", "unit": "kg"}}},
     "unit applies to regression tasks only"),
])
def test_bad_manifest_params_are_refused_naming_the_key(data: dict[str, Any],
                                                        message: str) -> None:
    raw = {"dataset": "manifest", "manifest": "m.csv", "tasks": KINDS, **data}
    with pytest.raises(ConfigError, match=r"p\.yaml: data") as caught:
        parse_params({"data": raw}, "p.yaml")
    assert message in str(caught.value)


def test_a_misspelt_key_of_a_task_names_the_keys_a_task_takes() -> None:
    # data.tasks is a mapping of tasks: its entries' keys are ManifestTask's, not none at all
    raw = {"dataset": "manifest", "manifest": "m.csv",
           "tasks": {**KINDS, "smiling": {"knd": "binary"}}}
    with pytest.raises(ConfigError) as caught:
        parse_params({"data": raw}, "p.yaml")
    assert "p.yaml: data.tasks.smiling.knd: unknown key; did you mean 'kind'?" in str(
        caught.value)
    assert "takes no keys" not in str(caught.value)


def test_manifest_keys_are_refused_for_composite_data_sets() -> None:
    with pytest.raises(ConfigError, match=r"channels, image_size: apply to data\.dataset: "
                                          r"manifest only; remove them for multifashion"):
        parse_params({"data": {"channels": 3, "image_size": 32}}, "p.yaml")


@pytest.mark.parametrize(("data", "message"), [
    ({"canvas_size": None}, "canvas_size: null; give a value (default 36)"),
    ({"dataset": "manifest", "manifest": "m.csv", "tasks": KINDS, "image_size": None},
     "image_size: null; give a value (default 64)"),
])
def test_a_null_value_of_the_data_sets_own_keys_is_refused(data: dict[str, Any],
                                                           message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_params({"data": data}, "p.yaml")
    assert message in str(caught.value)


def test_binary_positive_given_as_a_number_is_compared_as_text() -> None:
    assert ManifestTask(kind="binary", positive=1).positive == "1"


# ----------------------------------------------------------------------------------- splits
def test_seeded_split_takes_the_fractions_of_each_class() -> None:
    strata = np.array(["a"] * 10 + ["b"] * 20)
    split = mf.seeded_split(strata, val_fraction=0.2, test_fraction=0.1, seed=0)
    # a: round(1.0) test, round(2.0) val, 7 train; b: 2 test, 4 val, 14 train
    for stratum, counts in (("a", (7, 2, 1)), ("b", (14, 4, 2))):
        picked = split[strata == stratum]
        assert tuple(int((picked == s).sum()) for s in ("train", "val", "test")) == counts


def test_seeded_split_depends_on_the_seed_only() -> None:
    strata = np.array(list("ab") * 20)
    first = mf.seeded_split(strata, 0.2, 0.2, seed=3)
    assert (mf.seeded_split(strata, 0.2, 0.2, seed=3) == first).all()
    assert (mf.seeded_split(strata, 0.2, 0.2, seed=4) != first).any()


def test_seeded_split_leaves_one_row_of_each_class_in_training() -> None:
    # 2 rows at 0.4 / 0.4: round(0.8) = 1 each would leave none; val gives one back.
    split = mf.seeded_split(np.array(["a", "a"]), 0.4, 0.4, seed=0)
    assert sorted(split) == ["test", "train"]


def test_the_split_column_decides_when_present(tmp_path: Path) -> None:
    path = write_csv(tmp_path, split_rows(), images=False)
    found = read(path, {"species": {"kind": "multiclass"}})
    assert found.split.tolist() == ["train", "train", "train", "val", "test"]
    assert found.split_from == "column"


def test_a_bad_split_value_names_row_and_value(tmp_path: Path) -> None:
    rows = split_rows()
    rows[2]["split"] = "training"
    path = write_csv(tmp_path, rows, images=False)
    with pytest.raises(mf.ManifestError, match=r"manifest.csv: row 4, column 'split': value "
                                               r"'training'; use train, val or test"):
        read(path, {"species": {"kind": "multiclass"}})


def test_a_split_column_without_test_rows_is_refused(tmp_path: Path) -> None:
    rows = split_rows()[:-1]
    path = write_csv(tmp_path, rows, images=False)
    with pytest.raises(mf.ManifestError, match="column 'split' has no test row"):
        read(path, {"species": {"kind": "multiclass"}})


# ----------------------------------------------------------------------------------- labels
def labelled(tmp_path: Path, values: dict[str, list[str]], splits: list[str],
             raw_tasks: dict[str, dict[str, Any]]) -> tuple[list[dict[str, Any]], np.ndarray]:
    rows = [{**{k: v[i] for k, v in values.items()}, "split": s} for i, s in enumerate(splits)]
    path = write_csv(tmp_path, rows, images=False)
    return mf.encode_tasks(read(path, raw_tasks), tasks(raw_tasks))


def test_classes_come_from_training_sorted_numerically_when_numbers(tmp_path: Path) -> None:
    entries, labels = labelled(tmp_path, {"digit": ["10", "2", "1", "2", "10"]},
                               ["train", "train", "train", "val", "test"],
                               {"digit": {"kind": "multiclass"}})
    assert entries[0]["class_names"] == ["1", "2", "10"]
    assert entries[0]["classes"] == 3 and entries[0]["loss"] == "cross_entropy"
    assert labels.dtype == np.uint8
    assert labels[:, 0].tolist() == [2, 1, 0, 1, 2]


def test_text_classes_sort_as_text(tmp_path: Path) -> None:
    entries, _ = labelled(tmp_path, {"species": ["dog", "cat", "eel", "cat", "dog"]},
                          ["train", "train", "train", "val", "test"],
                          {"species": {"kind": "multiclass"}})
    assert entries[0]["class_names"] == ["cat", "dog", "eel"]


def test_binary_positive_is_the_sorted_second_unless_declared(tmp_path: Path) -> None:
    values = {"smiling": ["yes", "no", "no", "yes", "no"]}
    splits = ["train", "train", "train", "val", "test"]
    entries, labels = labelled(tmp_path / "a", values, splits, {"smiling": {"kind": "binary"}})
    assert entries[0]["class_names"] == ["no", "yes"] and entries[0]["loss"] == "bce"
    assert labels[:, 0].tolist() == [1, 0, 0, 1, 0]
    entries, labels = labelled(tmp_path / "b", values, splits,
                               {"smiling": {"kind": "binary", "positive": "no"}})
    assert entries[0]["class_names"] == ["yes", "no"]
    assert labels[:, 0].tolist() == [0, 1, 1, 0, 1]


@pytest.mark.parametrize(("read_as", "positive"), [(True, "yes"), (False, "no")])
def test_binary_positive_read_by_yaml_as_a_boolean_names_the_value_spelt_so(
        tmp_path: Path, read_as: bool, positive: str) -> None:
    """`dvc exp run -S` writes a quoted 'yes' back bare, which YAML reads as true: the value
    the manifest spells yes (or true, on, y; no, false, off, n) is meant."""
    assert ManifestTask(kind="binary", positive=read_as).positive is read_as
    entries, _ = labelled(tmp_path, {"smiling": ["yes", "no", "no", "yes", "no"]},
                          ["train", "train", "train", "val", "test"],
                          {"smiling": {"kind": "binary", "positive": read_as}})
    assert entries[0]["class_names"][1] == positive


def test_a_boolean_positive_matching_no_value_is_refused(tmp_path: Path) -> None:
    with pytest.raises(mf.ManifestError, match=r"data\.tasks\.side\.positive True is not one "
                                               r"of its values 'left', 'right'"):
        labelled(tmp_path, {"side": ["left", "right", "left", "right", "left"]},
                 ["train", "train", "train", "val", "test"],
                 {"side": {"kind": "binary", "positive": True}})


def test_regression_targets_are_raw_with_training_statistics(tmp_path: Path) -> None:
    entries, labels = labelled(
        tmp_path, {"species": ["a", "b", "a", "b", "a"], "age": ["1", "3", "5", "100", "-2.5"]},
        ["train", "train", "train", "val", "test"],
        {"species": {"kind": "multiclass"},
         "age": {"kind": "regression", "loss": "huber", "unit": "years"}})
    age = entries[1]
    # training values 1, 3, 5: mean 3, population variance (4 + 0 + 4) / 3
    assert age["target_mean"] == pytest.approx(3.0)
    assert age["target_std"] == pytest.approx((8 / 3) ** 0.5)
    assert (age["kind"], age["loss"], age["unit"], age["classes"]) == ("regression", "huber",
                                                                      "years", 0)
    assert labels.dtype == np.float32
    assert labels.tolist() == [[0, 1], [1, 3], [0, 5], [1, 100], [0, -2.5]]


@pytest.mark.parametrize(("values", "raw_tasks", "message"), [
    ({"species": ["a", "a", "a", "a", "a"]}, {"species": {"kind": "multiclass"}},
     "column 'species': one class ('a') in the training split; a task needs at least two"),
    ({"smiling": ["no", "yes", "maybe", "no", "yes"]}, {"smiling": {"kind": "binary"}},
     "column 'smiling': a binary task has two values, the training split has 3"),
    ({"smiling": ["no", "yes", "no", "no", "yes"]},
     {"smiling": {"kind": "binary", "positive": "Yes"}},
     "data.tasks.smiling.positive 'Yes' is not one of its values 'no', 'yes'; set it to one "
     "of them, or remove it for the default 'yes'"),
    ({"species": ["a", "b", "a", "c", "b"]}, {"species": {"kind": "multiclass"}},
     "row 5, column 'species': value 'c' (val split) never occurs in training (a, b)"),
    ({"species": ["a", "", "b", "a", "b"]}, {"species": {"kind": "multiclass"}},
     "row 3, column 'species': empty; give every row a label"),
    ({"age": ["1", "2", "old", "3", "4"]}, {"age": {"kind": "regression"}},
     "row 4, column 'age': value 'old' is not a number"),
    ({"age": ["1", "nan", "2", "3", "4"]}, {"age": {"kind": "regression"}},
     "row 3, column 'age': value 'nan' is not a number"),
    ({"age": ["1", "2", "3", "", "4"]}, {"age": {"kind": "regression"}},
     "row 5, column 'age': value '' is not a number"),
    ({"age": ["7", "7", "7", "1", "2"]}, {"age": {"kind": "regression"}},
     "column 'age': every training value is 7; a constant target cannot be learnt"),
])
def test_each_bad_label_is_an_error_naming_row_column_and_value(
        tmp_path: Path, values: dict[str, list[str]], raw_tasks: dict[str, dict[str, Any]],
        message: str) -> None:
    with pytest.raises(mf.ManifestError, match=r"manifest\.csv") as caught:
        labelled(tmp_path, values, ["train", "train", "train", "val", "test"], raw_tasks)
    assert message in str(caught.value)


@pytest.mark.parametrize(("raw_tasks", "rare", "message"), [
    ({"smiling": {"kind": "binary"}}, "yes",
     r"column 'smiling': one class \('no'\) in the training split; a task needs at least two"),
    ({"colour": {"kind": "multiclass"}}, "blue",
     r"column 'colour': value 'blue' \((val|test) split\) never occurs in training \(g, r\)"),
])
def test_a_label_a_seeded_split_left_out_of_training_says_how_to_put_it_there(
        tmp_path: Path, raw_tasks: dict[str, dict[str, Any]], rare: str, message: str) -> None:
    """Without a split column the rows are not the user's to move: the advice names the split
    column and data.seed (the second task is not stratified, so its one rare row may land in
    val or test)."""
    name, kind = next(iter(raw_tasks)), next(iter(raw_tasks.values()))["kind"]
    common = ["no"] if kind == "binary" else ["r", "g"]
    rows = [{"species": "ab"[i % 2], name: common[i % len(common)]} for i in range(20)]
    rows[7][name] = rare
    path = write_csv(tmp_path, rows, images=False)
    both = {"species": {"kind": "multiclass"}, **raw_tasks}
    seed = next(seed for seed in range(100)
                if read(path, both, 0.2, 0.2, seed).split[7] != "train")
    with pytest.raises(mf.ManifestError, match=message) as caught:
        mf.encode_tasks(read(path, both, 0.2, 0.2, seed), tasks(both))
    assert str(caught.value).endswith(
        "; data.seed split the rows (the manifest has no split column): add a split column "
        f"that puts some rows of {rare!r} in train, or try another data.seed")


def test_a_manifest_not_found_names_one_of_its_name_a_folder_below(tmp_path: Path) -> None:
    # an archive packed with its folder at the top unpacks to <name>/<folder>/manifest.csv
    path = write_csv(tmp_path / "photos" / "photos", split_rows(), images=False)
    expected = tmp_path / "photos" / "manifest.csv"
    with pytest.raises(mf.ManifestError) as caught:
        read(expected, {"species": {"kind": "multiclass"}})
    assert str(caught.value) == (
        f"{expected}: manifest not found; check data.manifest (relative paths start at the "
        f"pipeline folder); there is {path}: set data.manifest to it, or pack an archive's "
        "files without their folder (manifest.csv at its top)")


def test_a_manifest_without_a_declared_column_names_it(tmp_path: Path) -> None:
    path = write_csv(tmp_path, split_rows(), images=False)
    with pytest.raises(mf.ManifestError, match=r"manifest.csv: no column 'age' .* the file has "
                                               r"'species', 'split', 'image'"):
        read(path, {"species": {"kind": "multiclass"}, "age": {"kind": "regression"}})


def test_a_misspelt_task_column_gets_the_nearest_spare_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path, split_rows(), images=False)
    with pytest.raises(mf.ManifestError, match=r"no column 'specis' .*; did you mean 'species' "
                                               r"for 'specis'\?"):
        read(path, {"specis": {"kind": "multiclass"}})


def test_parquet_values_are_read_as_their_text(tmp_path: Path) -> None:
    frame = pd.DataFrame({"image": [f"{i}.png" for i in range(5)], "label": [1, 0, 1, 0, 1],
                          "split": ["train", "train", "train", "val", "test"]})
    frame.to_parquet(tmp_path / "m.parquet")
    raw_tasks = {"label": {"kind": "binary"}}
    entries, labels = mf.encode_tasks(read(tmp_path / "m.parquet", raw_tasks), tasks(raw_tasks))
    assert entries[0]["class_names"] == ["0", "1"]
    assert labels[:, 0].tolist() == [1, 0, 1, 0, 1]


# ----------------------------------------------------------------------------------- images
def test_pad_letterboxes_the_whole_image_on_black() -> None:
    wide = Image.fromarray(np.full((10, 20), 255, dtype=np.uint8))  # 20 wide, 10 high
    fitted = np.asarray(mf.fit(wide, 10, "pad"))
    # scaled to 10 x 5, pasted at row (10 - 5) // 2 = 2
    expected = np.zeros((10, 10), dtype=np.uint8)
    expected[2:7] = 255
    assert (fitted == expected).all()


def test_crop_keeps_the_centre_square() -> None:
    halves = np.zeros((10, 20), dtype=np.uint8)
    halves[:, 10:] = 255  # left half black, right half white
    fitted = np.asarray(mf.fit(Image.fromarray(halves), 10, "crop"))
    # already 10 high: columns 5..14 kept, 5 black then 5 white
    assert (fitted[:, :5] == 0).all() and (fitted[:, 5:] == 255).all()


def test_a_16_bit_grey_image_keeps_its_top_8_bits(tmp_path: Path) -> None:
    deep = np.array([[0, 255, 256, 4000], [32768, 65535, 511, 512]], dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert np.asarray(mf.decode(tmp_path / "deep.png", 1)).tolist() == [[0, 0, 1, 15],
                                                                        [128, 255, 1, 2]]


def test_a_16_bit_netpbm_image_keeps_its_top_8_bits_too(tmp_path: Path) -> None:
    # Pillow opens a 16-bit PGM in mode I (not I;16): converting it clipped all above 255
    deep = np.array([[0, 255, 256, 4000], [32768, 65535, 511, 512]], dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.pgm")
    assert Image.open(tmp_path / "deep.pgm").mode == "I"
    assert np.asarray(mf.decode(tmp_path / "deep.pgm", 1)).tolist() == [[0, 0, 1, 15],
                                                                        [128, 255, 1, 2]]


@pytest.mark.parametrize(("pixels", "message"), [
    (np.full((4, 4), 0.5, dtype=np.float32), r"values 0\.5\.\.0\.5: .*multiply them by 255"),
    (np.full((4, 4), 300.0, dtype=np.float32), r"values 300\.0\.\.300\.0: outside 0\.\.255"),
    (np.full((4, 4), 70000, dtype=np.int32), r"values 70000\.\.70000: outside 0\.\.255"),
])
def test_a_32_bit_image_whose_values_would_not_survive_conversion_is_refused(
        tmp_path: Path, pixels: np.ndarray, message: str) -> None:
    # a float image of 0..1 became black, values above 255 white, without a word
    Image.fromarray(pixels).save(tmp_path / "wide.tif")
    with pytest.raises(ValueError, match=r"^a 32-bit .*image, " + message):
        mf.decode(tmp_path / "wide.tif", 1)
    Image.fromarray(np.full((4, 4), 200.0, dtype=np.float32)).save(tmp_path / "plain.tif")
    assert (np.asarray(mf.decode(tmp_path / "plain.tif", 1)) == 200).all()


@pytest.mark.parametrize("separator", [";", "\t"])
def test_a_csv_separated_by_other_than_commas_says_so(tmp_path: Path, separator: str) -> None:
    # a spreadsheet's export in a locale whose decimal mark is a comma, or a TSV file: the
    # error listed the whole header as the one column the file has
    path = tmp_path / "manifest.csv"
    path.write_text(separator.join(["image", "species", "split"]) + "\n"
                    + separator.join(["a.png", "cat", "train"]) + "\n")
    with pytest.raises(mf.ManifestError, match=(
            rf"manifest\.csv: the header is one column, .*: its cells are separated by "
            rf"{re.escape(repr(separator))}; a manifest's are separated by commas \(save it "
            r"as CSV with commas\)")):
        read(path, {"species": {"kind": "multiclass"}})


def test_a_csv_not_in_utf_8_says_to_save_it_so(tmp_path: Path) -> None:
    path = tmp_path / "manifest.csv"
    path.write_bytes("image,species\na.png,chât\n".encode("latin-1"))
    with pytest.raises(mf.ManifestError, match=r"manifest\.csv: not a readable CSV file "
                                               r"\('utf-8' codec .*\); save it as UTF-8"):
        read(path, {"species": {"kind": "multiclass"}})


def test_a_csv_with_a_byte_order_mark_reads_its_first_column(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_bytes("image,species,split\na.png,a,train\nb.png,b,train\nc.png,a,val\n"
                     "d.png,b,test\n".encode("utf-8-sig"))
    assert read(path, {"species": {"kind": "multiclass"}}).frame["image"].tolist() == [
        "a.png", "b.png", "c.png", "d.png"]


# Line 3 is blank, the note of lines 4-5 is one quoted cell, line 6 a row of empty cells.
SPACED = ('image,note,species,split\n'
          'a.png,,a,train\n'
          '\n'
          'b.png,"two\nlines",b,train\n'
          ',,,\n'
          'c.png,,a,{split}\n'
          'd.png,,b,test\n')


def test_rows_are_numbered_by_the_line_they_start_on(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text(SPACED.format(split="tran"))
    with pytest.raises(mf.ManifestError, match=r"m\.csv: row 7, column 'split': value 'tran'"):
        read(path, {"species": {"kind": "multiclass"}})
    path.write_text(SPACED.format(split="val"))
    manifest = read(path, {"species": {"kind": "multiclass"}})
    assert manifest.frame["image"].tolist() == ["a.png", "b.png", "c.png", "d.png"]
    assert [manifest.row(i) for i in range(4)] == [2, 4, 7, 8]


def test_validate_tables_number_rows_as_the_errors_do(tmp_path: Path) -> None:
    for name in "abcd":
        png(tmp_path / f"{name}.png", np.full((8, 8), ord(name)))
    path = tmp_path / "m.csv"
    path.write_text(SPACED.format(split="val"))
    raw_tasks = {"species": {"kind": "multiclass"}}
    tables = image_tables(read(path, raw_tasks), tasks(raw_tasks), channels=1)
    assert {split: table["row"].tolist() for split, table in tables.items()} == {
        "train": [2, 4], "val": [7], "test": [8]}


def test_column_names_are_stripped_like_cells(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("image , species,split\na.png, a ,train\nb.png,b,train\nc.png,a,val\n"
                    "d.png,b,test\n")
    manifest = read(path, {"species": {"kind": "multiclass"}})
    assert manifest.frame["species"].tolist() == ["a", "b", "a", "b"]


def test_a_task_column_given_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("image,age,age,split\na.png,1,2,train\nb.png,3,4,val\nc.png,5,6,test\n")
    with pytest.raises(mf.ManifestError, match=r"m\.csv: column 'age' appears 2 times in the "
                                               r"header; keep one, or rename the others"):
        read(path, {"age": {"kind": "regression"}})


def test_a_row_with_more_cells_than_the_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("image,species,split\na.png,a,train,\nb.png,b,train,x\n")
    with pytest.raises(mf.ManifestError, match=r"m\.csv: row 3: 4 cells, the header has 3; "
                                               r"quote a cell that holds a comma"):
        read(path, {"species": {"kind": "multiclass"}})


def test_an_image_of_the_size_is_taken_as_it_is() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    assert (np.asarray(mf.fit(Image.fromarray(pixels), 8, "pad")) == pixels).all()


def build(tmp_path: Path, rows: list[dict[str, Any]], raw_tasks: dict[str, dict[str, Any]],
          images: bool = True, **data: Any) -> tuple[dict[str, Any], Layout]:
    path = write_csv(tmp_path / "mine", rows, images=images)
    layout = Layout(tmp_path / "pipeline")
    data.setdefault("image_size", 8)
    return mf.build_manifest(config(path, raw_tasks, **data), layout), layout


def test_build_writes_the_processed_format(tmp_path: Path) -> None:
    meta, layout = build(tmp_path, split_rows(), {"species": {"kind": "multiclass"}},
                         channels=1)
    folder = layout.processed_dir
    train = np.load(folder / "train_images.npy")
    assert train.shape == (3, 8, 8) and train.dtype == np.uint8
    assert [int(image[0, 0]) for image in train] == [0, 10, 20]
    assert np.load(folder / "test_images.npy")[0, 0, 0] == 40
    assert np.load(folder / "train_labels.npy").tolist() == [[0], [1], [0]]
    assert meta["splits"] == {"train": 3, "val": 1, "test": 1}
    # training pixels 0, 10, 20 (64 each): mean 10, population std sqrt(200 / 3)
    assert meta["pixel_mean"] == pytest.approx(10 / 255)
    assert meta["pixel_std"] == pytest.approx((200 / 3) ** 0.5 / 255)
    assert (meta["dataset"], meta["channels"], meta["image_size"]) == ("manifest", 1, 8)


def test_three_channels_repeat_a_grey_image_with_stats_per_channel(tmp_path: Path) -> None:
    meta, layout = build(tmp_path, split_rows(), {"species": {"kind": "multiclass"}},
                         channels=3)
    train = np.load(layout.processed_dir / "train_images.npy")
    assert train.shape == (3, 8, 8, 3)
    assert (train[1] == 10).all()
    assert meta["pixel_mean"] == pytest.approx([10 / 255] * 3)


def test_a_missing_image_names_row_and_path_and_writes_nothing(tmp_path: Path) -> None:
    rows = split_rows()
    with pytest.raises(mf.ManifestError, match=r"manifest.csv: rows 2, 3, 4, 5, 6, column "
                                               r"'image': image file not found: .*img/0.png"):
        build(tmp_path, rows, {"species": {"kind": "multiclass"}}, images=False)
    assert not (tmp_path / "pipeline" / "data").exists()


def test_a_windows_path_in_the_image_column_says_to_use_slashes(tmp_path: Path) -> None:
    # a manifest written on Windows: img\\0.png named a file that does not exist here
    rows = split_rows()
    write_csv(tmp_path / "mine", rows)
    table = pd.read_csv(tmp_path / "mine" / "manifest.csv")
    table.loc[0, "image"] = "img\\0.png"
    table.to_csv(tmp_path / "mine" / "manifest.csv", index=False)
    hint = "; separate folders with / (a \\ is part of a file's name here)"
    with pytest.raises(mf.ManifestError) as caught:
        mf.build_manifest(config(tmp_path / "mine" / "manifest.csv",
                                 {"species": {"kind": "multiclass"}}, image_size=8),
                          Layout(tmp_path / "pipeline"))
    assert str(caught.value).endswith("img\\0.png; paths are relative to the manifest's "
                                      "folder" + hint)
    manifest = read(tmp_path / "mine" / "manifest.csv", {"species": {"kind": "multiclass"}})
    problems = image_tables(manifest, tasks({"species": {"kind": "multiclass"}}), 1)["train"]
    assert problems["problem"].iat[0].endswith("img\\0.png" + hint)


def test_an_unreadable_image_names_row_and_path_and_writes_nothing(tmp_path: Path) -> None:
    rows = split_rows()
    write_csv(tmp_path / "mine", rows)
    (tmp_path / "mine" / "img" / "2.png").write_bytes(b"not a png")
    layout = Layout(tmp_path / "pipeline")
    with pytest.raises(mf.ManifestError, match=r"manifest.csv: row 4, column 'image': "
                                               r".*img/2.png: unreadable image"):
        mf.build_manifest(config(tmp_path / "mine" / "manifest.csv",
                                 {"species": {"kind": "multiclass"}}, image_size=8), layout)
    assert not layout.processed_dir.exists()
    assert not any(layout.processed_dir.parent.iterdir())


# --------------------------------------------------------------------------------- archives
@pytest.fixture(params=["data_filter", "own_checks"])
def tar_checks(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Tar files unpacked through Python's ``data`` filter, and as on an interpreter without
    it (before 3.11.4: Debian 12's python3), through the module's own checks."""
    if request.param == "own_checks":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    elif not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python's tarfile has no data filter")
    return str(request.param)


def _tar(path: Path, *members: tuple[str, bytes | None, dict[str, Any]]) -> Path:
    """A tar file of (name, content or None, TarInfo attributes) members."""
    with tarfile.open(path, "w") as packed:
        for name, content, attributes in members:
            member = tarfile.TarInfo(name)
            for key, value in attributes.items():
                setattr(member, key, value)
            if content is not None:
                member.size = len(content)
            packed.addfile(member, io.BytesIO(content) if content is not None else None)
    return path


@pytest.mark.usefixtures("tar_checks")
def test_archives_unpack_beside_themselves_named_without_their_suffix(tmp_path: Path) -> None:
    assert archive_folder(tmp_path / "photos.tar.gz") == tmp_path / "photos"
    assert archive_folder(tmp_path / "photos.tgz") == tmp_path / "photos"
    assert archive_folder(tmp_path / "photos.zip") == tmp_path / "photos"
    assert archive_folder(tmp_path / "notes.txt") is None
    with tarfile.open(tmp_path / "a.tar.gz", "w:gz") as packed:
        data = b"image,label\n"
        member = tarfile.TarInfo("sub/manifest.csv")
        member.size = len(data)
        packed.addfile(member, io.BytesIO(data))
    with zipfile.ZipFile(tmp_path / "b.zip", "w") as packed:
        packed.writestr("manifest.csv", "image\n")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "stale.txt").write_text("from an older archive")
    assert unpack_all(tmp_path) == [tmp_path / "a", tmp_path / "b"]
    assert (tmp_path / "a" / "sub" / "manifest.csv").read_text() == "image,label\n"
    assert not (tmp_path / "a" / "stale.txt").exists()
    assert (tmp_path / "b" / "manifest.csv").read_text() == "image\n"


@pytest.mark.usefixtures("tar_checks")
def test_archive_members_outside_their_folder_are_refused(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "evil.tar", "w") as packed:
        member = tarfile.TarInfo("../outside.txt")
        packed.addfile(member, io.BytesIO(b""))
    with pytest.raises(ValueError, match=r"evil\.tar: cannot unpack .*outside.*; rebuild the "
                                         r"archive with relative paths and plain files$"):
        unpack(tmp_path / "evil.tar")
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as packed:
        packed.writestr("../outside.txt", "")
    with pytest.raises(ValueError, match=r"evil\.zip: member '\.\./outside\.txt' would land "
                                         r"outside"):
        unpack(tmp_path / "evil.zip")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar", "evil.zip"]
    assert not (tmp_path.parent / "outside.txt").exists()


@pytest.mark.usefixtures("tar_checks")
@pytest.mark.parametrize(("name", "attributes"), [
    ("abs", {"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}),
    ("sub/up", {"type": tarfile.SYMTYPE, "linkname": "../../outside.txt"}),
    ("hard", {"type": tarfile.LNKTYPE, "linkname": "../outside.txt"}),
    ("pipe", {"type": tarfile.FIFOTYPE}),
], ids=["absolute-symlink", "symlink-out", "hardlink-out", "fifo"])
def test_tar_links_out_and_special_files_are_refused(name: str, attributes: dict[str, Any],
                                                     tmp_path: Path) -> None:
    archive = _tar(tmp_path / "evil.tar", ("fine.txt", b"x", {}), (name, None, attributes))
    # downloading it again would fail the same way: the advice is to rebuild it
    with pytest.raises(ValueError, match=rf"evil\.tar: cannot unpack \(.*{name.split('/')[-1]}"
                                         r".*\); rebuild the archive with relative paths and "
                                         r"plain files$"):
        unpack(archive)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar"]


@pytest.mark.usefixtures("tar_checks")
def test_tar_members_lose_set_id_and_shared_write_bits_and_keep_inner_links(
        tmp_path: Path) -> None:
    archive = _tar(tmp_path / "tools.tar", ("bin/run.sh", b"#!/bin/sh\n", {"mode": 0o6777}),
                   ("run", None, {"type": tarfile.SYMTYPE, "linkname": "bin/run.sh"}))
    folder = unpack(archive)
    assert (folder / "bin" / "run.sh").stat().st_mode & 0o7777 == 0o755
    assert (folder / "run").read_text() == "#!/bin/sh\n"
