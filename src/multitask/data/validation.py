"""The ``validate`` stage: check the raw images with Great Expectations before anything trusts them.

Each source of the data set (``fashion_mnist``, ``mnist``) becomes, per split, three pandas tables
(:mod:`multitask.data.tables`): ``images``, ``classes`` and ``statistics``. A Great Expectations
suite runs on each table in an ephemeral context; ``reports/validation/`` receives
``summary.json`` (what was checked, what was observed, a few offending values per failure) and
the data docs (``data_docs/index.html``). Any failed expectation fails the stage, after the
reports are written, so people can read why.

Leakage is checked by exact content: a test image whose bytes equal a training image's is listed
in the summary (``train_test_duplicates``) and fails the stage. Near-duplicates (Geier 2019, for
Fashion-MNIST) are out of scope: they need an image-similarity search, not a hash.

``data.dataset: cifar10`` is checked like the IDX sources, from its archive
(:func:`source_tables`): labels in 0..9 and every class present, 32x32 images of 3 channels,
class balance, pixel statistics of all channels together, test images identical to a training
image. Its ``vehicle`` task is derived from the class, so it needs no check of its own.

``data.dataset: manifest`` has its own tables and suites (:mod:`multitask.data.manifest_checks`:
missing or unreadable images named by path and row, labels outside the training classes,
regression values that are not numbers, class balance, identical images across splits), run
the same way into the same summary, under source ``manifest``.

Great Expectations is imported only inside the functions that run it, so ``multitask --help``
stays fast.

One module, not several: running the suites, shaping their results into the one summary and
its failure messages, and the stage itself are one procedure over one report format; what is
checked lives beside it (:mod:`multitask.data.tables`, :mod:`multitask.data.manifest_checks`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from multitask.config import DataConfig, Params, ValidateConfig, load_sources
from multitask.data import manifest_checks
from multitask.data.cifar import archive_path, read_cifar10
from multitask.data.datasets import DATASETS, MANIFEST, SOURCES
from multitask.data.manifest_checks import manifest_tables, seeded_split
from multitask.data.tables import (
    CLASSES,
    image_table,
    load_source,
    split_tables,
    train_test_duplicates,
)
from multitask.io import atomic_dir, write_json
from multitask.layout import Layout

if TYPE_CHECKING:
    from great_expectations.expectations import Expectation

log = logging.getLogger(__name__)

# What every IDX source of these data sets holds (multitask.data.datasets): 28x28 uint8 images;
# a source declared in SOURCES is checked against its own item_shape.
IMAGE_SHAPE = SOURCES["fashion_mnist"].item_shape
TABLE_CHUNK = 5000  # images per image_table call: bounds its float64 copies (CIFAR-10: 60 MB)
IMAGE_DTYPE = "uint8"
PIXEL_RANGE = (0, 255)
TABLES = ("images", "classes", "statistics")
# The columns that locate an offending row of each table in the summary and the data docs.
ROW_KEYS: dict[str, list[str]] = {
    "images": ["split", "index"],
    "classes": ["split", "label"],
    "statistics": ["split"],
}
EXAMPLES = 5  # offending values kept per failed expectation


# ------------------------------------------------------------------------------- expectations
def expectations(table: str, split: str, config: ValidateConfig, source: str,
                 classes: int = CLASSES) -> list[Expectation]:
    """The suite for one table of one split (Great Expectations must be importable)."""
    import great_expectations.expectations as gxe

    if table == "images":
        shape = SOURCES[source].item_shape if source in SOURCES else IMAGE_SHAPE
        suite: list[Expectation] = [
            gxe.ExpectTableRowCountToBeBetween(min_value=1),  # an empty split: say so first
            gxe.ExpectColumnValuesToBeBetween(column="label", min_value=0, max_value=classes - 1),
            gxe.ExpectColumnDistinctValuesToContainSet(column="label",
                                                       value_set=list(range(classes))),
            gxe.ExpectColumnValuesToBeInSet(column="height", value_set=[shape[0]]),
            gxe.ExpectColumnValuesToBeInSet(column="width", value_set=[shape[1]]),
            gxe.ExpectColumnValuesToBeInSet(column="dtype", value_set=[IMAGE_DTYPE]),
            gxe.ExpectColumnValuesToBeBetween(column="pixel_min", min_value=PIXEL_RANGE[0],
                                              max_value=PIXEL_RANGE[1]),
            gxe.ExpectColumnValuesToBeBetween(column="pixel_max", min_value=PIXEL_RANGE[0],
                                              max_value=PIXEL_RANGE[1]),
            gxe.ExpectColumnValuesToBeInSet(column="has_nan", value_set=[False]),
        ]
        if len(shape) == 3:  # colour images: source_tables records their channels
            suite.append(gxe.ExpectColumnValuesToBeInSet(column="channels", value_set=[shape[2]]))
        if split == "test":
            suite.append(gxe.ExpectColumnValuesToBeNull(column="duplicate_of_train"))
        return suite
    if table == "classes":
        tolerance = config.class_balance_tolerance
        return [gxe.ExpectColumnValuesToBeBetween(column="relative_deviation",
                                                  min_value=-tolerance, max_value=tolerance)]
    if table == "statistics":
        if source not in config.pixel_stats:
            raise ValueError(f"validate.pixel_stats.{source}: missing; give the "
                             "expected range of this source's pixel mean and std")
        stats = config.pixel_stats[source]
        (mean_low, mean_high), (std_low, std_high) = stats.mean, stats.std
        return [
            gxe.ExpectColumnValuesToBeBetween(column="pixel_mean", min_value=mean_low,
                                              max_value=mean_high),
            gxe.ExpectColumnValuesToBeBetween(column="pixel_std", min_value=std_low,
                                              max_value=std_high),
        ]
    raise ValueError(f"unknown table {table!r}; one of {TABLES}")


def cifar_tables(folder: Path) -> dict[str, pd.DataFrame]:
    """CIFAR-10's archive in ``folder`` as per-split image tables, with a ``channels`` column
    (built :data:`TABLE_CHUNK` images at a time; ``index`` counts from the split's start)."""
    tables: dict[str, pd.DataFrame] = {}
    for split, (images, labels) in read_cifar10(archive_path(folder)).items():
        chunks = []
        for start in range(0, len(images), TABLE_CHUNK):
            chunk = image_table(images[start:start + TABLE_CHUNK],
                                labels[start:start + TABLE_CHUNK], split)
            chunk["index"] += start
            chunks.append(chunk)
        table = pd.concat(chunks, ignore_index=True) if chunks \
            else image_table(images, labels, split)
        table["channels"] = images.shape[3]
        tables[split] = table
    return tables


def source_tables(source: str, folder: Path) -> dict[str, pd.DataFrame]:
    """One raw source's per-split image tables, read with its reader (IDX files or the
    CIFAR-10 archive, :data:`multitask.data.datasets.SOURCES`)."""
    return cifar_tables(folder) if SOURCES[source].reader == "cifar" else load_source(folder)


# ---------------------------------------------------------------------- great expectations run
def _context(docs_dir: Path | None) -> Any:
    """An in-memory Great Expectations context, analytics off, data docs under ``docs_dir``."""
    os.environ["GX_ANALYTICS_ENABLED"] = "False"  # read at import: no usage statistics sent
    gx_log = logging.getLogger("great_expectations")
    if gx_log.level == logging.NOTSET:  # its INFO lines are internal registration noise
        gx_log.setLevel(logging.WARNING)
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    sites = {} if docs_dir is None else {"local_site": {
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                          "base_directory": str(docs_dir.resolve())},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    }}
    project = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(), analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False), data_docs_sites=sites)
    return gx.get_context(mode="ephemeral", project_config=project)


def _plain(value: Any) -> Any:
    """A JSON-ready Python value (numpy scalars unwrapped, NaN/NA as None)."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None
    return value


def _observed(column: pd.Series, distinct: bool) -> Any:
    """What a per-row expectation saw: the column's one value, its range, or its distinct values.

    Great Expectations reports no observed value for per-row expectations, and none for
    ``expect_column_distinct_values_to_contain_set`` on pandas, so it is computed here.
    """
    present = column.dropna()
    if present.empty:
        return None
    values = present.unique()
    if len(values) == 1:
        return _plain(values[0])
    numeric = pd.api.types.is_numeric_dtype(present) and not pd.api.types.is_bool_dtype(present)
    if numeric and not distinct:
        return {"min": _plain(present.min()), "max": _plain(present.max())}
    return sorted(_plain(v) for v in values)[:50]


def _entry(table: str, result: Any, frame: pd.DataFrame) -> dict[str, Any]:
    """One expectation's outcome for ``summary.json``: name, column, observed, offending rows."""
    raw = result.to_json_dict()
    kwargs = dict(raw["expectation_config"]["kwargs"])
    kwargs.pop("batch_id", None)
    column = kwargs.pop("column", None)
    outcome = raw.get("result") or {}
    name = raw["expectation_config"]["type"]
    observed = outcome.get("observed_value")
    if observed is None and column in frame:
        observed = _observed(frame[column], distinct="distinct_values" in name)
    entry: dict[str, Any] = {
        "table": table, "expectation": name, "column": column,
        "kwargs": kwargs, "success": bool(raw["success"]), "observed_value": observed,
    }
    if (name == "expect_column_unique_value_count_to_be_between" and column in frame
            and not entry["success"]):
        entry["distinct_values"] = sorted(str(v) for v in frame[column].dropna().unique())[:10]
    if "unexpected_count" in outcome:
        entry["unexpected_count"] = outcome["unexpected_count"]
        entry["element_count"] = outcome["element_count"]
    if not entry["success"]:
        rows = outcome.get("partial_unexpected_index_list") or []
        entry["examples"] = [
            {"value": _plain(row.get(column)),
             **{k: _plain(v) for k, v in row.items() if k not in (column, "split")}}
            for row in rows[:EXAMPLES]
        ] + [{"missing": _plain(v)} for v in (outcome.get("partial_missing_list") or [])[:EXAMPLES]]
    if raw["exception_info"].get("raised_exception"):
        entry["error"] = raw["exception_info"].get("exception_message")
    return entry


def _run_suites(context: Any, source: str, tables: Mapping[str, Mapping[str, pd.DataFrame]],
                suite_of: Callable[[str, str], list[Expectation]],
                row_keys: Mapping[str, list[str]]) -> dict[str, list[dict[str, Any]]]:
    """Each ``{split: {table: frame}}`` frame checked against ``suite_of(table, split)``;
    ``{split: [summary entry per expectation]}``, offending rows located by ``row_keys``."""
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier

    run_id = RunIdentifier(run_name="multitask-validate")
    data_source = context.data_sources.add_pandas(source)
    entries: dict[str, list[dict[str, Any]]] = {}
    for split, by_table in tables.items():
        entries[split] = []
        for table, frame in by_table.items():
            name = f"{source}.{split}.{table}"
            batch = data_source.add_dataframe_asset(f"{split}.{table}") \
                .add_batch_definition_whole_dataframe("whole table")
            suite = context.suites.add(gx.ExpectationSuite(
                name=name, expectations=suite_of(table, split)))
            definition = context.validation_definitions.add(
                gx.ValidationDefinition(name=name, data=batch, suite=suite))
            result = definition.run(
                batch_parameters={"dataframe": frame}, run_id=run_id,
                result_format={"result_format": "SUMMARY", "partial_unexpected_count": EXAMPLES,
                               "unexpected_index_column_names": row_keys[table]})
            entries[split] += [_entry(table, r, frame) for r in result.results]
    return entries


def _header(config: ValidateConfig) -> dict[str, Any]:
    import great_expectations as gx

    return {"success": True, "great_expectations": gx.__version__,
            "params": config.model_dump(by_alias=True, mode="json"), "sources": {}}


def validate(sources: Mapping[str, Mapping[str, pd.DataFrame]], config: ValidateConfig,
             docs_dir: Path | None = None, classes: int = CLASSES) -> dict[str, Any]:
    """Run the suites over each source's per-split image tables; return the summary.

    ``sources`` maps a source name to ``{split: image_table(...)}``. With ``docs_dir`` the
    Great Expectations data docs are built there. Nothing raises on a failed expectation: the
    summary's ``success`` fields say, and :func:`failure_messages` spells them out.
    """
    context = _context(docs_dir)
    summary = _header(config)
    for source, images_by_split in sources.items():
        tables = split_tables(images_by_split, classes)
        entries = _run_suites(
            context, source, tables,
            lambda table, split, source=source: expectations(table, split, config, source,
                                                             classes),
            ROW_KEYS)
        splits: dict[str, Any] = {}
        for split, by_table in tables.items():
            labels = by_table["images"]["label"].value_counts().sort_index()
            stats = by_table["statistics"].iloc[0]
            splits[split] = {
                "success": all(e["success"] for e in entries[split]),
                "rows": len(by_table["images"]),
                "class_counts": {str(k): int(v) for k, v in labels.items()},
                "pixel_mean": _plain(stats["pixel_mean"]),
                "pixel_std": _plain(stats["pixel_std"]),
                "expectations": entries[split],
            }
        summary["sources"][source] = {
            "success": all(s["success"] for s in splits.values()),
            "splits": splits,
            "train_test_duplicates": train_test_duplicates(tables),
        }
        summary["success"] &= summary["sources"][source]["success"]
    if docs_dir is not None:
        context.build_data_docs()
    return summary


def validate_manifest(data: DataConfig, config: ValidateConfig, layout: Layout,
                      docs_dir: Path | None = None) -> dict[str, Any]:
    """The summary of ``data.dataset: manifest``'s checks (:mod:`multitask.data.manifest_checks`),
    under source ``manifest``; nothing raises on a failed expectation, as in :func:`validate`."""
    path, tables = manifest_tables(data, layout)
    context = _context(docs_dir)
    summary = _header(config)
    entries = _run_suites(
        context, MANIFEST, tables,
        lambda table, split: manifest_checks.expectations(
            table, split, data.tasks, tables, config.class_balance_tolerance),
        manifest_checks.ROW_KEYS)
    extras = manifest_checks.summary_extras(tables, data.tasks)
    splits = {split: {"success": all(e["success"] for e in entries[split]),
                      "rows": len(by_table["images"]),
                      "class_counts": extras["class_counts"][split],
                      "expectations": entries[split]}
              for split, by_table in tables.items()}
    success = all(s["success"] for s in splits.values())
    summary["sources"][MANIFEST] = {"manifest": str(path), "success": success,
                                    "splits": splits,
                                    "duplicates_across_splits": extras["duplicates_across_splits"]}
    summary["success"] = success
    if docs_dir is not None:
        context.build_data_docs()
    return summary


def failure_messages(summary: Mapping[str, Any]) -> list[str]:
    """One line per failed expectation: where, which expectation and column, what was wrong."""
    messages = []
    for source, by_source in summary["sources"].items():
        for split, by_split in by_source["splits"].items():
            for entry in by_split["expectations"]:
                if entry["success"]:
                    continue
                column = entry["column"]
                if entry.get("error"):
                    detail = f"raised {entry['error']}"
                elif any("missing" in e for e in entry["examples"]):
                    detail = f"missing values {[e['missing'] for e in entry['examples']]}"
                elif entry["examples"]:
                    shown = ", ".join(
                        f"{column}={_short(e['value'])}"
                        + "".join(f" at {k} {v}" for k, v in e.items() if k != "value")
                        for e in entry["examples"])
                    count = entry.get("unexpected_count")
                    total = entry.get("element_count")
                    detail = f"{count} of {total} rows unexpected, e.g. {shown}"
                elif column is None and entry["observed_value"] == 0:  # the row count
                    detail = ("observed 0: the split is empty; the raw files of this source "
                              "hold no images for it")
                elif "distinct_values" in entry:  # a task's classes: which, and how many
                    count, low = entry["observed_value"], entry["kwargs"].get("min_value")
                    high = entry["kwargs"].get("max_value")
                    detail = (f"observed {count} distinct value{'' if count == 1 else 's'} "
                              f"({', '.join(entry['distinct_values'])}); "
                              + (f"{low} expected" if low == high else
                                 f"at least {low} expected" if high is None else
                                 f"{low} to {high} expected"))
                else:
                    detail = f"observed {entry['observed_value']}"
                where = "" if column is None else f" on column '{column}'"
                messages.append(f"{source}/{split} {entry['table']}: {entry['expectation']}"
                                f"{where} {entry['kwargs']}: {detail}")
    return messages


def _short(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def _seeded_split_advice(summary: Mapping[str, Any]) -> str:
    """What to do about the failures that data.seed's split, not a row, causes."""
    absent = any(not entry["success"] and entry["column"] == "absent"
                 for by_split in summary["sources"][MANIFEST]["splits"].values()
                 for entry in by_split["expectations"])
    return ("\nA label training lacks is no row's fault here: data.seed chose the splits (the "
            "manifest has no split column); add a split column that puts some of its rows in "
            "train, or try another data.seed"
            + ("\nA class absent from val or test is no row's fault either: the seeded split "
               "is stratified on the first classification task only, the others get their "
               "classes by chance; try another data.seed, or add a split column that puts "
               "some of that class's rows there"
               if absent else ""))


# ---------------------------------------------------------------------------------- the stage
def validate_raw(params: Params, layout: Layout) -> dict[str, Any]:
    """``multitask validate``: validate every source of ``data.dataset``, write the reports.

    Returns the summary; raises naming every failed expectation after writing the reports.
    """
    config = params.validate_
    start = time.perf_counter()
    with atomic_dir(layout.data_docs) as docs_dir:
        if params.data.dataset == MANIFEST:
            summary = validate_manifest(params.data, config, layout, docs_dir=docs_dir)
        else:
            sources = {s: source_tables(s, layout.source_dir(s))
                       for s in DATASETS[params.data.dataset].sources}
            summary = validate(sources, config, docs_dir=docs_dir)
    report_dir = layout.validation_dir
    summary = {"dataset": params.data.dataset, "raw_dir": str(layout.raw_dir),
               "data_docs": f"{layout.data_docs.relative_to(report_dir).as_posix()}/index.html",
               **summary}
    write_json(layout.validation_summary, summary)
    for source, by_source in summary["sources"].items():
        for split, by_split in by_source["splits"].items():
            passed = sum(e["success"] for e in by_split["expectations"])
            log.info("%s/%s: %d images, %d/%d expectations met", source, split,
                     by_split["rows"], passed, len(by_split["expectations"]))
    log.info("validated in %.1f s -> %s", time.perf_counter() - start, report_dir)
    failures = failure_messages(summary)
    if failures:
        todo = ""
        if params.data.dataset == MANIFEST:
            todo = (f"\nTo fix: correct the rows named (row = line of "
                    f"{summary['sources'][MANIFEST]['manifest']}) or the images they point to"
                    + (f", rebuild the archive and put its new digest in {layout.sources}"
                       if MANIFEST in load_sources(layout.sources) else
                       "; read in place: then `dvc repro <its dvc.yaml>` if the manifest's "
                       "folder is among validate's deps (check warns when not), else `dvc "
                       "repro -f <its dvc.yaml>:preprocess`")
                    + (_seeded_split_advice(summary) if seeded_split(params.data, layout)
                       else ""))
        raise ValueError(
            f"{len(failures)} expectation(s) failed; details in {layout.validation_summary} and "
            f"{layout.data_docs / 'index.html'}:\n  " + "\n  ".join(failures) + todo)
    return summary
