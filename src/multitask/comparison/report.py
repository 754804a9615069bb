"""A comparison's results: the summary (comparison.json) and its table (the plot:
:mod:`.plot`).

Per row: each task's primary test metric (accuracy; MAE for a regression task, named in the
summary's ``metrics``) and the mean accuracy (over the classification tasks; absent without
any) as mean ± sample standard deviation over seeds, Δm% (each seed's against that seed's
single-task baselines, as ``reports/metrics.json`` holds it) with its 95% interval, the rank by
mean Δm%, whether the row is tied with the best and its Δm% minus the best row's, paired seed
by seed (:mod:`.statistics`); the per-seed values,
experiment names, MLflow run ids, commits and CPU thread counts beside them; the baselines' own
mean ± std over seeds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from multitask import keys
from multitask.comparison.rows import Row, Spec
from multitask.comparison.statistics import CONFIDENCE, Summary, paired, rank, summarise
from multitask.gate import primary_metric

METRIC_TITLES = {"mae": "MAE", "rmse": "RMSE", "macro_f1": "macro-F1", "auroc": "AUROC",
                 "f1": "F1"}


def column_title(task: str, metric: str, unit: str = "") -> str:
    """A table's column for ``task``'s ``metric``: ```left` accuracy``, ```age` MAE (years)``."""
    title = METRIC_TITLES.get(metric, metric)
    return f"`{task}` {title}" + (f" ({unit})" if unit else "")


@dataclass(frozen=True)
class Measured:
    """One finished experiment of a row: its seed, names, the two reports it wrote and the
    commit it derives from (an earlier one for a measurement read from comparison.json:
    :mod:`.records`)."""

    seed: int
    experiment: str
    run_id: str | None
    metrics: dict[str, Any]  # reports/metrics.json
    baselines: dict[str, Any]  # reports/baselines.json
    commit: str | None = None
    # CPU threads of the multi-task run and of the baselines it is measured against:
    # {"train": n, "baselines": m}; None where not recorded (a GPU, an older train.json)
    threads: dict[str, int | None] | None = None


def threads_of(train_record: dict[str, Any]) -> dict[str, int | None] | None:
    """:attr:`Measured.threads` from an experiment's ``reports/train.json``."""
    threads = {"train": train_record.get("threads"),
               "baselines": train_record.get("baselines_threads")}
    return threads if any(v is not None for v in threads.values()) else None


def primary_metrics(report: dict[str, Any]) -> dict[str, str]:
    """``{task: its primary metric}`` of a metrics report (accuracy; MAE for regression)."""
    return {task: primary_metric(values) or keys.ACCURACY
            for task, values in report[keys.TASKS].items()}


def _per_task(reports: Sequence[dict[str, Any]], metrics: dict[str, str]
              ) -> dict[str, Summary]:
    return {task: summarise([float(report[keys.TASKS][task][metric]) for report in reports])
            for task, metric in metrics.items()}


def _row(row: Row, measured: Sequence[Measured], metrics: dict[str, str], delta_m: Summary
         ) -> dict[str, Any]:
    reports = [m.metrics for m in measured]
    mean_accuracy = (summarise([float(m[keys.MEAN_ACCURACY]) for m in reports]).as_dict()
                     if all(keys.MEAN_ACCURACY in m for m in reports) else None)
    return {
        "label": row.label,
        "overrides": dict(row.overrides),
        "seeds": [m.seed for m in measured],
        "experiments": [m.experiment for m in measured],
        "run_ids": [m.run_id for m in measured],
        "commits": [m.commit for m in measured],
        "threads": [m.threads for m in measured],
        keys.TASKS: {t: s.as_dict() for t, s in _per_task(reports, metrics).items()},
        keys.MEAN_ACCURACY: mean_accuracy,
        keys.DELTA_M: delta_m.as_dict(),
        "baselines": {t: s.as_dict() for t, s in
                      _per_task([m.baselines for m in measured], metrics).items()},
    }


def summary(spec: Spec, measured: dict[str, Sequence[Measured]], *, pipeline: str,
            params_file: str) -> dict[str, Any]:
    """The content of comparison.json: rows best first (``measured``: row label -> its
    experiments in seed order)."""
    metrics = primary_metrics(next(iter(measured.values()))[0].metrics)
    tasks = list(metrics)
    delta_m = {row.label: summarise([float(m.metrics[keys.DELTA_M])
                                     for m in measured[row.label]], interval=True)
               for row in spec.rows}
    by_label = {row.label: row for row in spec.rows}
    rows = [{**_row(by_label[label], measured[label], metrics, delta_m[label]),
             "rank": position, "tied": tied}
            for position, (label, tied) in enumerate(rank(delta_m), 1)]
    for row, difference in zip(rows, paired_to_best(rows), strict=True):
        row["paired_to_best"] = difference
    shared = all(row["baselines"] == rows[0]["baselines"] for row in rows)
    return {
        "name": spec.name,
        "pipeline": pipeline,
        "params_file": params_file,
        "seeds": list(spec.seeds),
        "set": dict(spec.common),
        "confidence": CONFIDENCE,
        keys.TASKS: tasks,
        "metrics": metrics,  # each task's primary metric, what its columns hold
        "rows": rows,
        # every row against the same baselines (rows that share the seeds and the
        # regularisation), else null: each row's own are in the row
        "baselines": rows[0]["baselines"] if shared else None,
    }


def paired_to_best(rows: Sequence[dict[str, Any]], confidence: float = CONFIDENCE
                   ) -> list[dict[str, Any] | None]:
    """Each row's Δm% minus the best row's (``rows`` best first) seed by seed, with its t
    interval (:func:`.statistics.paired`); None for the best row and for a row not measured on
    the best row's seeds. Read from the rows' per-seed Δm%, so a comparison.json written before
    this field has it too."""
    best = rows[0]
    return [None if index == 0 or row.get("seeds") != best.get("seeds") else
            paired(row[keys.DELTA_M]["per_seed"], best[keys.DELTA_M]["per_seed"],
                   confidence).as_dict()
            for index, row in enumerate(rows)]


# ------------------------------------------------------------------------------------ table
def _cell(summary: dict[str, Any], digits: int = 4) -> str:
    if summary["std"] is None:
        return f"{summary['mean']:.{digits}f}"
    return f"{summary['mean']:.{digits}f} ± {summary['std']:.{digits}f}"


def _delta_m_cell(summary: dict[str, Any]) -> str:
    if summary.get("ci_low") is None:
        return f"{summary['mean']:+.2f}"
    return f"{summary['mean']:+.2f} [{summary['ci_low']:+.2f}, {summary['ci_high']:+.2f}]"


def _mean_of(per_task: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The mean over tasks of per-task summaries, seed by seed."""
    per_seed = [sum(values) / len(values) for values in
                zip(*(s["per_seed"] for s in per_task.values()), strict=True)]
    return summarise(per_seed).as_dict()


def _accuracy_cell(per_task: dict[str, dict[str, Any]], metrics: dict[str, str]) -> str:
    """The mean accuracy over the classification tasks, seed by seed (— without any)."""
    accuracies = {t: s for t, s in per_task.items() if metrics.get(t) == keys.ACCURACY}
    return _cell(_mean_of(accuracies)) if accuracies else "—"


def _baseline_row(title: str, baselines: dict[str, dict[str, Any]], tasks: Sequence[str],
                  metrics: dict[str, str], empty: int = 0) -> str:
    """The baselines' row, ``empty`` cells left blank after the mark column."""
    return (f"| | {title} | | " + " | ".join(_cell(baselines[t]) for t in tasks)
            + f" | {_accuracy_cell(baselines, metrics)} | 0 (reference) | |"
            + " |" * empty)


def _reference_commits(result: dict[str, Any]) -> dict[str, str | None]:
    """The comparisons whose baselines the rows are also measured against (in first-seen
    order), each with the commit its baselines were measured on."""
    commits: dict[str, str | None] = {}
    for row in result["rows"]:
        for name, reference in (row.get("against") or {}).items():
            commits.setdefault(name, reference.get("commit"))
    return commits


def task_metrics(result: dict[str, Any]) -> dict[str, str]:
    """``{task: metric}`` its columns hold; accuracy where the summary does not say (summaries
    written before task kinds)."""
    recorded = result.get("metrics") or {}
    return {task: recorded.get(task, keys.ACCURACY) for task in result[keys.TASKS]}


def _read_back(result: dict[str, Any]) -> str:
    """The caption's note on measurements of another commit (read back from its experiments or
    its comparison.json, :mod:`.records`), rows grouped by commit and seeds:
    `` (... inputs: `equal`, `pcgrad` (every seed) at `abc1234`; `dwa` (seed 0) at ...)``,
    else empty."""
    groups: dict[tuple[str, str], list[str]] = {}  # (commit, seeds) -> row labels
    for row in result["rows"]:
        seeds = row.get("seeds") or []
        by_commit: dict[str, list[int]] = {}
        for seed, commit in zip(seeds, row.get("commits") or [], strict=False):
            if commit and commit != result.get("commit"):
                by_commit.setdefault(commit, []).append(seed)
        for commit, earlier in by_commit.items():
            which = ("every seed" if earlier == seeds else
                     f"seed{'s' * (len(earlier) > 1)} {', '.join(map(str, earlier))}")
            groups.setdefault((commit, which), []).append(f"`{row['label']}`")
    if not groups:
        return ""
    return (" (measured on another commit with the same pipeline inputs: " + "; ".join(
        f"{', '.join(labels)} ({which}) at `{commit[:7]}`"
        for (commit, which), labels in groups.items()) + ")")


def _threads(counts: dict[str, int | None] | None) -> str:
    if counts is None:
        return "not recorded"
    train, baselines = counts.get("train"), counts.get("baselines")
    spelt = "GPU" if train is None else f"{train} CPU thread{'s' * (train != 1)}"
    if baselines == train:
        return spelt
    return f"{spelt}, its baselines {'GPU or not recorded' if baselines is None else baselines}"


def _threads_note(result: dict[str, Any]) -> str:
    """The caption's sentence on CPU thread counts: the one count every experiment and its
    baselines ran with, or the measurements that differ from the most common count (on the
    CPU the same params and seed repeat exactly only at the same count). Empty where nothing
    recorded one (summaries written before thread counts, or GPU runs alone)."""
    measured = [(row["label"], seed, counts) for row in result["rows"]
                for seed, counts in zip(row.get("seeds") or [], row.get("threads") or [],
                                        strict=False)]
    spelt = Counter(_threads(counts) for *_, counts in measured if counts is not None)
    if not spelt:
        return ""
    usual = spelt.most_common(1)[0][0]
    if len(spelt) == 1 and all(counts is not None for *_, counts in measured):
        return f" Every experiment ran on {usual}."
    others = [f"`{label}` seed {seed}: {_threads(counts)}" for label, seed, counts in measured
              if _threads(counts) != usual]
    return (f" Experiments ran on {usual} except {'; '.join(others)} (on the CPU the same "
            "params and seed repeat exactly only at the same thread count).")


def markdown(result: dict[str, Any]) -> str:
    """The ranked table with its caption (comparison.md; also the README's); the *paired −
    best* column only where a row has a paired difference (several rows on the same seeds)."""
    tasks = result[keys.TASKS]
    metrics = task_metrics(result)
    seeds = ", ".join(str(s) for s in result["seeds"])
    common = ", ".join(f"`{k}={v}`" for k, v in result["set"].items())
    percent = round(result["confidence"] * 100)
    references = _reference_commits(result)
    against = "".join(
        f"; Δm% vs `{name}`: against the single-task baselines of comparison `{name}`"
        + (f" (commit `{commit[:7]}`)" if commit else "")
        + ", seed by seed, a reference that stays put while the rows change" * (i == 0)
        for i, (name, commit) in enumerate(references.items()))
    differences = paired_to_best(result["rows"], result["confidence"])
    pairs = any(difference is not None for difference in differences)
    lines = [
        f"`multitask compare {result['name']}` on `{result['pipeline']}`"
        + (f" at commit `{result['commit'][:7]}`" if result.get("commit") else "")
        + _read_back(result) + (f" with {common}" if common else "")
        + f", seeds {seeds}: mean ± sample standard deviation over seeds; Δm% (each seed "
        f"against that seed's single-task baselines) with its {percent}% t interval; *tied*: "
        "the interval overlaps the best row's"
        + (f"; *paired*: the row's Δm% minus the best row's, seed by seed, with its {percent}% "
           "t interval (what a seed does to every row alike cancels: an interval wholly below "
           "0 shows the row worse than the best on these seeds)" if pairs else "")
        + f"{against}." + _threads_note(result),
        "",
        "| rank | row | overrides | " + " | ".join(column_title(t, metrics[t]) for t in tasks)
        + f" | mean accuracy | Δm% [{percent}% interval] | |" + " paired − best |" * pairs
        + "".join(f" Δm% vs `{name}` |" for name in references),
        "|---|---|---|" + "---|" * (len(tasks) + 3 + pairs + len(references)),
    ]
    for row, difference in zip(result["rows"], differences, strict=True):
        overrides = ", ".join(f"`{k}={v}`" for k, v in row["overrides"].items())
        mark = "best" if row["rank"] == 1 else ("tied" if row["tied"] else "")
        lines.append(f"| {row['rank']} | `{row['label']}` | {overrides} | "
                     + " | ".join(_cell(row[keys.TASKS][t]) for t in tasks)
                     + f" | {_cell(row[keys.MEAN_ACCURACY]) if row[keys.MEAN_ACCURACY] else '—'}"
                     f" | {_delta_m_cell(row[keys.DELTA_M])} | {mark} |"
                     + (f" {_delta_m_cell(difference) if difference else '—'} |" if pairs else "")
                     + "".join(f" {_delta_m_cell(row['against'][name])} |"
                               if name in (row.get("against") or {}) else " — |"
                               for name in references))
    if result["baselines"] is not None:
        lines.append(_baseline_row("single-task baselines", result["baselines"], tasks,
                                   metrics, pairs + len(references)))
    else:
        lines += [_baseline_row(f"baselines of `{row['label']}`", row["baselines"], tasks,
                                metrics, pairs + len(references)) for row in result["rows"]]
    return "\n".join(lines) + "\n"
