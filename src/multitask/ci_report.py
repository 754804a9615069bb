"""Compare two sample-pipeline results per task: the pull-request report and its gate.

CI runs the sample pipeline on the pull request and on the branch it merges into, then calls
``multitask ci-report --base DIR --head DIR --output FILE``. Each DIR is a pipeline folder
(``sample/`` of a checkout, read through :class:`multitask.layout.Layout`) holding its
``params.yaml`` and the reports its stages wrote: metrics, history and confusion pairs.

The markdown report (posted as the pull-request comment and the job summary) has one row per
task and metric with base, head and delta, the aggregate rows (mean accuracy, Δm%), the params
that changed (as ``dvc params diff`` lists them) and per-epoch and per-class tables. The learning
curves and confusion matrices of both sides are drawn with matplotlib into one PNG beside the
report. matplotlib rather than ``dvc plots diff``: DVC renders HTML whose Vega charts load their
scripts from a CDN and has no offline image export, while this runs on a runner without network
and its images must open without a browser running scripts.

The gate (:class:`multitask.gate.TaskChange`, the promotion gate's rule): exit status 1 when
any task's primary metric is worse than the base's by more than ``ci.regression_tolerance`` of
the ``--params`` file (CI passes the base branch's, so a pull request cannot loosen its own
gate): a classification task's accuracy falls by more than the tolerance (absolute: 0.02 = two
percentage points), a regression task's MAE rises by more than that fraction of the base's
(relative: 0.02 = 2%). Auxiliary tasks are reported but not gated. A missing or malformed
input is exit status 2 (no report, no PNG), so a script tells "regressed" from "could not
compare".

One module, not several: loading both sides, comparing them and writing the markdown are one
report whose sections appear here in the order the comment shows them; the figure is apart.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from multitask import keys
from multitask.ci_plots import class_order, render_plots
from multitask.config import CIConfig
from multitask.errors import ConfigError, validate
from multitask.gate import EPSILON, RELATIVE_METRICS, TaskChange, primary_metric
from multitask.io import atomic_open
from multitask.layout import Layout

log = logging.getLogger(__name__)

MARKER = "<!-- multitask-ci-report -->"


@dataclass(frozen=True)
class PipelineResult:
    """What one pipeline run left in its folder."""

    folder: Path
    metrics: dict[str, Any]
    params: dict[str, Any]  # flattened, dotted keys as in `dvc params diff`
    history: pd.DataFrame | None  # reports/plots/history.csv, when the run wrote it
    confusion: dict[str, pd.DataFrame]  # task -> reports/confusion/<task>.csv (actual, predicted)

    def tasks(self) -> dict[str, dict[str, Any]]:
        return self.metrics[keys.TASKS]

    def primary(self, task: str) -> str:
        """The task's primary metric (accuracy; MAE for a regression task)."""
        return primary_metric(self.tasks().get(task, {})) or keys.ACCURACY


@dataclass(frozen=True)
class MetricRow:
    """One metric of one task (or an aggregate, task ``None``) on both sides."""

    task: str | None
    metric: str
    base: float | None
    head: float | None
    higher_is_better: bool
    gated: bool = False

    @property
    def delta(self) -> float | None:
        return None if self.base is None or self.head is None else self.head - self.base

    def is_regression(self, tolerance: float) -> bool:
        """A gated metric that got worse by more than ``tolerance`` (or vanished from head)."""
        return self.gated and TaskChange.of(self.task or "", self.metric, self.base,
                                            self.head).regressed(tolerance)


# ------------------------------------------------------------------------------------ loading
def flatten_params(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{'train': {'epochs': 5}}`` -> ``{'train.epochs': 5}``; lists stay values, as in DVC."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(flatten_params(value, dotted))
        else:
            flat[dotted] = value
    return flat


def _one_line(exc: BaseException) -> str:
    """An error's message on one line; a YAML error as ``line L, column C: problem``."""
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    if mark is not None and problem:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    text = " ".join(str(exc).split())
    return text.replace(' in "<unicode string>", ', " at ").replace(' in "<unicode string>"', "")


def _parse(path: Path, kind: str, parse: Callable[[str], Any], fix: str,
           error: type[ValueError] = ValueError) -> Any:
    """``parse`` of a file's text; a file that cannot be read or parsed is an ``error`` naming
    it and saying how to ``fix`` it (a traceback's exit status 1 would read as a failed gate)."""
    try:
        return parse(path.read_text())
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror or exc}); {fix}") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not UTF-8 text, so not valid {kind}; {fix}") from None
    except pd.errors.EmptyDataError:
        raise error(f"{path}: empty; {fix}") from None
    except (ValueError, yaml.YAMLError) as exc:
        raise error(f"{path}: not valid {kind} ({_one_line(exc)}); {fix}") from None


def _read_history(path: Path) -> pd.DataFrame:
    """reports/plots/history.csv: one row per epoch, numbers only (a cell may be empty)."""
    fix = "rerun the train stage"
    history = _parse(path, "CSV", lambda text: pd.read_csv(io.StringIO(text)), fix)
    if keys.EPOCH not in history:
        raise ValueError(f"{path}: no '{keys.EPOCH}' column (found "
                         f"{','.join(map(str, history.columns))}); {fix}")
    if history.empty:
        raise ValueError(f"{path}: no epochs, only its header; {fix}")
    if words := [str(c) for c in history if not pd.api.types.is_numeric_dtype(history[c])]:
        raise ValueError(f"{path}: column '{words[0]}' holds values that are not numbers; {fix}")
    return history


def _read_pairs(path: Path, metric: str | None) -> pd.DataFrame:
    """reports/confusion/<task>.csv: ``actual,predicted`` per test example, class labels (read
    as text) or, for a regression task (``metric`` MAE), numbers."""
    fix = "rerun the evaluate stage"
    pairs = _parse(path, "CSV", lambda text: pd.read_csv(io.StringIO(text), dtype=str,
                                                        keep_default_na=False), fix)
    if not {"actual", "predicted"} <= set(pairs.columns):
        raise ValueError(f"{path}: expected the columns actual,predicted, found "
                         f"{','.join(map(str, pairs.columns))}; {fix}")
    if pairs.empty:
        raise ValueError(f"{path}: no actual,predicted pairs, only its header; {fix}")
    blank = (pairs[["actual", "predicted"]] == "").any(axis=1)
    if blank.any():  # a cut-off last line: the evaluate stage writes no empty label
        raise ValueError(f"{path}: line {blank.to_numpy().argmax() + 2} lacks an actual or "
                         f"predicted value; {fix}")
    if metric in RELATIVE_METRICS:
        try:
            pairs[["actual", "predicted"]].astype(float)
        except ValueError as exc:
            raise ValueError(f"{path}: a regression task's pairs must be numbers "
                             f"({_one_line(exc)}); {fix}") from None
    return pairs


def load_result(folder: str | Path) -> PipelineResult:
    """Read a pipeline folder; metrics and params are required, plots are optional.

    A missing or malformed file is an error naming it (FileNotFoundError, ValueError).
    """
    folder = Path(folder)
    layout = Layout(folder)
    metrics_path = layout.metrics_json
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path}: not found; run the evaluate stage first")
    metrics = _parse(metrics_path, "JSON", json.loads, "rerun the evaluate stage")
    if (not isinstance(metrics, dict) or not isinstance(metrics.get(keys.TASKS), dict)
            or not all(isinstance(task, dict) for task in metrics[keys.TASKS].values())):
        raise ValueError(f"{metrics_path}: expected a '{keys.TASKS}' mapping of per-task "
                         "metrics; rerun the evaluate stage")
    for task, values in metrics[keys.TASKS].items():
        metric = primary_metric(values)
        if metric is not None and _number(values[metric]) is None:
            raise ValueError(f"{metrics_path}: {keys.TASKS}.{task}.{metric} is "
                             f"{json.dumps(values[metric])}, not a number; rerun the evaluate "
                             "stage")
    params_path = layout.params
    if not params_path.is_file():
        raise FileNotFoundError(f"{params_path}: not found; --base and --head take the folder "
                                "a pipeline ran in (e.g. sample/), which holds its params.yaml")
    fix = "fix it and rerun the sample pipeline"
    raw = _parse(params_path, "YAML", yaml.safe_load, fix)
    if raw is not None and not isinstance(raw, dict):
        raise ValueError(f"{params_path}: expected a mapping of params sections, got "
                         f"{type(raw).__name__}; {fix}")
    params = flatten_params(raw or {})
    history_path = layout.history_csv
    history = _read_history(history_path) if history_path.is_file() else None
    confusion = {
        path.stem: _read_pairs(path, primary_metric(metrics[keys.TASKS].get(path.stem, {})))
        for path in sorted(layout.confusion_dir.glob("*.csv"))
    }
    return PipelineResult(folder, metrics, params, history, confusion)


# --------------------------------------------------------------------------------- comparison
def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def compare_metrics(base: PipelineResult, head: PipelineResult) -> list[MetricRow]:
    """Every numeric metric of every task in either result, then the aggregates."""
    rows: list[MetricRow] = []
    base_tasks, head_tasks = base.tasks(), head.tasks()
    for task in [*base_tasks, *(t for t in head_tasks if t not in base_tasks)]:
        before, after = base_tasks.get(task, {}), head_tasks.get(task, {})
        # Only the base can exempt a task (an auxiliary one): a head that could would
        # switch off its own gate.
        auxiliary = bool(before.get("auxiliary"))
        gated = primary_metric(before) or primary_metric(after)
        for metric in [*before, *(m for m in after if m not in before)]:
            if _number(before.get(metric)) is None and _number(after.get(metric)) is None:
                continue
            rows.append(MetricRow(task, metric, _number(before.get(metric)),
                                  _number(after.get(metric)), keys.higher_is_better(metric),
                                  gated=metric == gated and not auxiliary))
    for key in [*base.metrics, *(k for k in head.metrics if k not in base.metrics)]:
        before, after = _number(base.metrics.get(key)), _number(head.metrics.get(key))
        if before is not None or after is not None:
            rows.append(MetricRow(None, key, before, after, keys.higher_is_better(key)))
    return rows


def params_diff(base: dict[str, Any], head: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(param, base value, head value) for each param that differs; ``None`` when absent."""
    keys = [*base, *(k for k in head if k not in base)]
    return [(k, base.get(k), head.get(k)) for k in keys if base.get(k) != head.get(k)]


def gate_messages(rows: list[MetricRow], tolerance: float) -> list[str]:
    """One sentence per regression: which task, from what to what, by how much."""
    messages = []
    head_tasks = {row.task for row in rows if row.task and row.head is not None}
    new_tasks = sorted({row.task for row in rows if row.task} - {
        row.task for row in rows if row.task and row.base is not None})
    for row in rows:
        if not row.is_regression(tolerance):
            continue
        if row.task not in head_tasks:
            new = f"; new in the head: {', '.join(map(repr, new_tasks))}" if new_tasks else ""
            messages.append(f"task '{row.task}': not in the head results (base {row.metric} "
                            f"{row.base:.4f}{new}): a removed or renamed task fails the gate")
        elif row.head is None:
            messages.append(f"task '{row.task}': {row.metric} missing from the head results "
                            f"(base {row.base:.4f})")
        elif not math.isfinite(row.head):
            messages.append(f"task '{row.task}': {row.metric} is {row.head} in the head results "
                            f"(base {row.base:.4f}): not a number to compare")
        elif row.metric in RELATIVE_METRICS:
            messages.append(
                f"task '{row.task}': {row.metric} rose by "
                f"{f'{100 * row.delta / row.base:.2f}%' if row.base else f'{row.delta:.4f}'} "
                f"({row.base:.4f} -> {row.head:.4f}), more than the {100 * tolerance:.2f}% "
                f"tolerance (ci.regression_tolerance = {tolerance:g}, relative for "
                f"{row.metric})")
        else:
            messages.append(
                f"task '{row.task}': {row.metric} dropped by {100 * -row.delta:.2f} pp "
                f"({row.base:.4f} -> {row.head:.4f}), more than the {100 * tolerance:.2f} pp "
                f"tolerance (ci.regression_tolerance = {tolerance:g})")
    return messages


def ungated(rows: list[MetricRow]) -> list[str]:
    """The gated metrics the gate could not judge: the base's value is not a number (and the
    head's is: one that is not fails the gate)."""
    return [f"task '{row.task}' (its base {row.metric} is {row.base})" for row in rows
            if row.gated and row.base is not None and not math.isfinite(row.base)
            and row.head is not None and math.isfinite(row.head)]


# ----------------------------------------------------------------------------------- markdown
def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    return f"`{value}`"


def _param(value: Any) -> str:
    """A param value spelt as in params.yaml (``1e-05``, not a rounded ``0.0000``)."""
    return "—" if value is None else f"`{value}`"


def _status(row: MetricRow, tolerance: float) -> str:
    if row.is_regression(tolerance):
        # missing or not a number: no amount worse, so no "> tolerance" to show
        if row.head is None:
            return "❌ **regression**: missing from the head"
        if not math.isfinite(row.head):
            return "❌ **regression**: not a number"
        allowed = (f"{100 * tolerance:g}% of base" if row.metric in RELATIVE_METRICS
                   else f"{tolerance:g}")
        return f"❌ **regression** (> {allowed})"
    if row.base is not None and not math.isfinite(row.base):
        return "base not a number: not gated" if row.gated else "base not a number"
    if row.head is not None and not math.isfinite(row.head):
        return "not a number"
    if row.delta is None or abs(row.delta) <= EPSILON:
        return "new" if row.base is None else ("removed" if row.head is None else "")
    better = (row.delta > 0) == row.higher_is_better
    return ("✅ better" if better else "worse, within tolerance") if row.gated else (
        "better" if better else "worse")


def _metrics_table(rows: list[MetricRow], tolerance: float) -> list[str]:
    lines = ["| Task | Metric | Base | Head | Δ | |", "|---|---|---:|---:|---:|---|"]
    for row in rows:
        name = {keys.DELTA_M: "Δm%", keys.MEAN_ACCURACY: "mean accuracy"}.get(row.metric,
                                                                              row.metric)
        digits = 2 if row.metric.endswith("_pct") else 4
        delta = ("—" if row.delta is None or not math.isfinite(row.delta)
                 else f"{row.delta:+.{digits}f}")
        task = f"`{row.task}`" if row.task else "**all tasks**"
        lines.append(f"| {task} | {name} | {_fmt(row.base, digits)} | {_fmt(row.head, digits)} "
                     f"| {delta} | {_status(row, tolerance)} |")
    return lines


def _sides(base: PipelineResult, head: PipelineResult,
           lacks: Callable[[PipelineResult], bool]) -> str:
    """``base (`folder`) and head (`folder`)``: the sides whose result ``lacks`` something."""
    return " and ".join(f"{name} (`{result.folder}`)" for name, result in
                        (("base", base), ("head", head)) if lacks(result))


def _curve_tables(base: PipelineResult, head: PipelineResult, tasks: list[str]) -> list[str]:
    if base.history is None or head.history is None:
        side = _sides(base, head, lambda result: result.history is None)
        return [f"_No learning curves: {Layout().history_csv} is missing in {side}._"]
    metrics = {task: base.primary(task) for task in tasks}
    shown = " and ".join(dict.fromkeys(metrics.values())) or keys.ACCURACY
    lines = [f"<details><summary>Validation {shown} per epoch</summary>", ""]
    columns = [keys.task_metric(keys.VAL, task, metric) for task, metric in metrics.items()]
    named = len(set(metrics.values())) > 1  # mixed kinds: say which metric each column holds
    header = " | ".join(f"{side} `{task}`" + (f" {metrics[task]}" if named else "")
                        for task in tasks for side in ("base", "head"))
    lines += [f"| epoch | {header} |", "|---:|" + "---:|" * (2 * len(tasks))]
    epochs = sorted(set(base.history["epoch"]) | set(head.history["epoch"]))
    for epoch in epochs:
        cells = []
        for column in columns:
            for side in (base.history, head.history):
                match = side.loc[side["epoch"] == epoch, column] if column in side else []
                cells.append(_fmt(float(match.iloc[-1])) if len(match) else "—")
        lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    return [*lines, "", "</details>"]


def _per_class_recall(confusion: pd.DataFrame) -> pd.Series:
    hits = confusion["actual"] == confusion["predicted"]
    return hits.groupby(confusion["actual"]).mean()


def _confusion_tables(base: PipelineResult, head: PipelineResult, tasks: list[str]) -> list[str]:
    lines: list[str] = []
    for task in tasks:
        if base.primary(task) in RELATIVE_METRICS:  # a regression task has no classes
            continue
        if task not in base.confusion or task not in head.confusion:
            side = _sides(base, head, lambda result, task=task: task not in result.confusion)
            lines.append(f"_No confusion data for `{task}` in {side}: "
                         f"{Layout().confusion_dir}/{task}.csv is missing._")
            continue
        before = _per_class_recall(base.confusion[task])
        after = _per_class_recall(head.confusion[task])
        lines += [f"<details><summary>Per-class accuracy (confusion diagonal), task `{task}`"
                  "</summary>", "", "| class | base | head | Δ |", "|---|---:|---:|---:|"]
        labels = class_order(base.confusion[task])
        labels += [c for c in class_order(head.confusion[task]) if c not in labels]
        for label in labels:
            b, h = before.get(label), after.get(label)
            delta = "—" if b is None or h is None else f"{h - b:+.4f}"
            lines.append(f"| {label} | {_fmt(b)} | {_fmt(h)} | {delta} |")
        lines += ["", "</details>", ""]
    return lines


def _passed(rows: list[MetricRow], tolerance: float) -> str:
    """What passing means here: per gated metric, how far it was allowed to move."""
    gated = dict.fromkeys(row.metric for row in rows if row.gated) or {keys.ACCURACY: None}
    parts = [f"no task's {metric} rose by more than {100 * tolerance:.2f}%"
             if metric in RELATIVE_METRICS else
             f"no task's {metric} dropped by more than {100 * tolerance:.2f} pp"
             for metric in gated]
    text = "; ".join(parts)
    return f"{text[0].upper()}{text[1:]} (ci.regression_tolerance = {tolerance:g})"


def render_markdown(base: PipelineResult, head: PipelineResult, rows: list[MetricRow],
                    tolerance: float, plot_name: str | None) -> str:
    """The whole report; its first line is the marker CI uses to find and update its comment."""
    failures = gate_messages(rows, tolerance)
    if failures:
        verdict = ["**Gate: failed.** A task got worse by more than the tolerance:", "",
                   *(f"- {message}" for message in failures)]
    else:
        verdict = [f"**Gate: passed.** {_passed(rows, tolerance)}."]
    if skipped := ungated(rows):
        verdict += ["", f"Not gated, nothing to compare with: {', '.join(skipped)}."]
    changed = params_diff(base.params, head.params)
    params = (["| Param | Base | Head |", "|---|---|---|",
               *(f"| `{k}` | {_param(b)} | {_param(h)} |" for k, b, h in changed)]
              if changed else ["No param changed."])
    tasks = [t for t in base.tasks() if t in head.tasks()]
    regression = any(base.primary(t) in RELATIVE_METRICS for t in tasks)
    curves, scatter = (("accuracy or MAE", " (regression: predicted vs true)") if regression
                       else ("accuracy", ""))
    plots = ([f"Learning curves (loss, validation {curves}) and confusion matrices per task"
              f"{scatter}, base dashed (hollow markers) and head solid: `{plot_name}` in this "
              "run's artifacts."]
             if plot_name else ["_No plots: history or confusion data is missing._"])
    return "\n".join([
        MARKER,
        "## Sample pipeline: this pull request vs its base",
        "",
        *verdict,
        "",
        "### Metrics per task (`dvc metrics diff`)",
        "",
        *_metrics_table(rows, tolerance),
        "",
        "### Params changed (`dvc params diff`)",
        "",
        *params,
        "",
        "### Plots",
        "",
        *plots,
        "",
        *_curve_tables(base, head, tasks),
        "",
        *_confusion_tables(base, head, tasks),
        "",
    ])


# ---------------------------------------------------------------------------------------- CLI
def regression_tolerance(params_path: str | Path) -> float:
    """``ci.regression_tolerance`` of a params file, validated as :class:`CIConfig`.

    Only the ``ci`` section is read: CI passes the base branch's params file, whose other
    sections may follow an older schema than this code's. A missing or malformed file is a
    :class:`ConfigError` naming it.
    """
    path = Path(params_path)
    if not path.is_file():
        raise ConfigError(f"{path}: not found; pass the params file that holds "
                          "ci.regression_tolerance with --params")
    fix = "pass the params file that holds ci.regression_tolerance with --params"
    raw = _parse(path, "YAML", yaml.safe_load, fix, ConfigError)
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of params sections, got "
                          f"{type(raw).__name__}; {fix}")
    section = (raw or {}).get("ci", {})
    return validate(CIConfig, section, path, "ci").regression_tolerance


def _outputs(output: str | Path) -> tuple[Path, Path]:
    """The report's path and its PNG's beside it (``<output>`` with the suffix ``.png``)."""
    output = Path(output)
    if output.is_dir():
        raise ValueError(f"{output}: is a folder; --output takes the report's file path "
                         "(e.g. reports/ci/ci_report.md)")
    plot_path = output.with_suffix(".png")
    if plot_path == output:
        raise ValueError(f"{output}: the report's PNG would be written over it; --output takes "
                         "a markdown file path (e.g. reports/ci/ci_report.md)")
    if plot_path.is_dir():
        raise ValueError(f"{plot_path}: is a folder where the report's PNG goes; remove it or "
                         "pass another --output")
    return output, plot_path


def ci_report(base_dir: str | Path, head_dir: str | Path, output: str | Path,
              params_path: str | Path) -> int:
    """``multitask ci-report``: write the report and its PNG; 1 when the gate fails."""
    tolerance = regression_tolerance(params_path)
    for flag, folder in (("--base", base_dir), ("--head", head_dir)):
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{flag} {folder}: no such folder; give the folder its "
                                    "pipeline ran in (its params.yaml and reports/, e.g. sample/ "
                                    "of a checkout)")
    base, head = load_result(base_dir), load_result(head_dir)
    rows = compare_metrics(base, head)
    output, plot_path = _outputs(output)
    drawn = False
    try:
        drawn = render_plots(base, head, plot_path)
        with atomic_open(output) as handle:
            handle.write(render_markdown(base, head, rows, tolerance,
                                         plot_path.name if drawn else None))
    except BaseException as exc:
        if drawn:  # no report, no picture: a PNG without its report would read as a result
            plot_path.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            detail = f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc)
            raise ValueError(f"{output}: cannot write the report or its PNG beside it "
                             f"({detail}); --output takes the report's file path in a folder "
                             "you can write to") from None
        raise
    log.info("wrote %s%s", output, f" and {plot_path}" if drawn else "")
    failures = gate_messages(rows, tolerance)
    for message in failures:
        log.error("gate: %s", message)
    if not failures:
        log.info("gate: passed (%s)", _passed(rows, tolerance))
    for task in ungated(rows):
        log.warning("gate: not gated, nothing to compare with: %s", task)
    return 1 if failures else 0
