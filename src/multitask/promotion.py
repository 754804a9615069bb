"""``multitask promote`` and ``multitask registry``: the task-aware gate over MLflow aliases.

A multi-task model is not better because its average is: the gate protects every task
(:meth:`multitask.gate.TaskChange.regressed`, the rule the CI gate applies too). The candidate
(the evaluated run of ``reports/train.json``, or ``--run-id``) is registered as a new
version of the registered model ``promote.model_name`` (default: the experiment, i.e. the data
set) with its test metrics as version tags. It takes the ``champion`` alias only if

* no task's primary test metric is worse than the champion's by more than
  ``promote.tolerance``: a classification task's accuracy may not fall by more than the
  tolerance (absolute: 0.01 = one percentage point), a regression task's MAE may not rise by
  more than that fraction of the champion's (relative: 0.01 = 1%; see :mod:`multitask.gate`),
  and
* the aggregate ``promote.aggregate`` improves on the champion's: ``delta_m`` (Δm% against the
  single-task baselines, higher is better; below) or ``mean_accuracy``, and
* both were trained and tested on the same processed data (its sha256: the run's and the
  version's ``data.sha256`` tag); metrics on other test images do not compare.

Each run's own Δm% is against the baselines of its own params: a run trained longer, or with
another seed or learning rate, has other baselines, and its Δm% can fall while every task
improves. Where the two runs' baselines differ, both Δm% are taken against the champion's
baselines (each run's ``baselines.json``, recorded on its version as
``baselines/test/<metric>/<task>`` tags), and the decision says so; where either side has none
recorded, each is against its own, as the decision says too. A value that is not a number never
wins: a candidate's fails its task (and keeps a first model challenger); a champion's task is
not gated and its aggregate is beaten by any number.

Otherwise it takes the ``challenger`` alias and the command says, task by task, why. The first
registered model becomes champion. Exit codes (for CI): 0 promoted (or already champion),
3 kept as challenger, 1 error. ``--dry-run`` prints the same decision and exit code and changes
nothing; it, ``--status`` and ``registry`` only read, so MLflow's HTTP retries are bounded for
them (:func:`multitask.tracking.store.read_only_requests`). A champion registered with the
earlier tag layout ``test/<task>/<metric>`` is read as today's ``test/<metric>/<task>``.

One module, not several: the decision, the registry writes and the status table all read the
version tags the decision writes, spelt here once.
"""

from __future__ import annotations

import logging
import math
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from multitask import keys, tracking
from multitask.config import MODEL_NAME_RULE, Params, registrable
from multitask.gate import PRIMARY_METRICS, TaskChange, primary_values
from multitask.io import read_json
from multitask.layout import Layout
from multitask.tasks import METRICS
from multitask.tracking.store import read_only_requests

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
BASELINES = "baselines/"  # version tags and run metrics: baselines/test/<metric>/<task>
BASELINES_FILE = "baselines.json"  # what evaluate logs: the baselines' test metrics
EXIT_PROMOTED = 0
EXIT_CHALLENGER = 3


@dataclass(frozen=True)
class Scores:
    """What the gate compares: each task's primary test metric and the aggregate."""

    tasks: dict[str, float]
    aggregate: float
    metrics: dict[str, str] = field(default_factory=dict)  # task -> metric; absent: accuracy
    data: str | None = None  # sha256 of the processed data it was trained and tested on
    # its single-task baselines' primary test metric per task (its Δm%'s reference); None:
    # not recorded
    baselines: dict[str, float] | None = None

    def metric(self, task: str) -> str:
        return self.metrics.get(task, keys.ACCURACY)


@dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: list[str]  # one line per task and one for the aggregate


def scores_from(metrics: dict[str, float], aggregate: str, where: str,
                data: str | None = None) -> Scores:
    """Each task's primary test metric (accuracy, or MAE for a regression task), the
    aggregate and the baselines' (where recorded), from test metrics (run metrics or version
    tags, which hold the baselines as ``baselines/test/<metric>/<task>``)."""
    tasks, names = primary_values(metrics, keys.TEST)
    key = keys.AGGREGATES[aggregate]
    if tasks and key not in metrics and aggregate == "mean_accuracy":
        raise ValueError(f"{where}: no {key}: it has no classification task to average; set "
                         "promote.aggregate to delta_m")
    if not tasks or key not in metrics:
        pattern = " or ".join(keys.task_metric(keys.TEST, "<task>", m) for m in PRIMARY_METRICS)
        raise ValueError(
            f"{where}: no test metrics ({pattern} and {key}); run "
            "`multitask evaluate` on it first"
        )
    recorded = {key.removeprefix(BASELINES): value for key, value in metrics.items()
                if key.startswith(BASELINES)}
    return Scores(tasks=tasks, aggregate=float(metrics[key]), metrics=names, data=data,
                  baselines=_primary_baselines(recorded, names) or None)


def _primary_baselines(recorded: dict[str, float], names: dict[str, str]) -> dict[str, float]:
    """``{task: value}`` of each task's primary metric (``names``) among ``test/<metric>/<task>``
    keys of the baselines, when every task has one; else empty."""
    values = {task: recorded.get(keys.task_metric(keys.TEST, task, metric))
              for task, metric in names.items()}
    if any(value is None for value in values.values()):
        return {}
    return {task: float(value) for task, value in values.items()}  # type: ignore[arg-type]


def decide(candidate: Scores, champion: Scores | None, tolerance: float, aggregate: str
           ) -> Decision:
    """The gate. With no champion the candidate is promoted, unless a value of it is not a
    number. A task the champion has no value for cannot be gated: the decision names it and
    passes over it."""
    if champion is None:
        broken = sorted(task for task, value in candidate.tasks.items()
                        if not math.isfinite(value))
        if broken or not math.isfinite(candidate.aggregate):
            what = ", ".join(broken + ([] if math.isfinite(candidate.aggregate) else [aggregate]))
            return Decision(False, [f"no champion yet, but the candidate's {what} is not a "
                                    "number: it is kept as challenger, not made champion"])
        return Decision(True, ["no champion yet: the first registered model becomes champion"])
    reasons: list[str] = []
    passed = True
    if (champion.data is None) != (candidate.data is None):
        side = "champion" if champion.data is None else "candidate"
        reasons.append(f"data: not recorded for the {side}: compared as if the same")
    elif candidate.data != champion.data:
        passed = False  # other test images: no difference of metrics means anything
        reasons.append(f"data: the candidate was trained and tested on other data (sha256 "
                       f"{candidate.data[:12]}) than the champion ({champion.data[:12]}): "
                       "their metrics are not comparable; evaluate both on the same data, or "
                       "move the champion alias by hand (MLflow UI, the model's Aliases)")
    for task, best in sorted(champion.tasks.items()):
        metric = champion.metric(task)
        mismatch = task in candidate.tasks and candidate.metric(task) != metric
        change = TaskChange.of(task, metric, best,
                               None if mismatch else candidate.tasks.get(task))
        worse = change.regressed(tolerance)
        passed &= not worse
        if mismatch:
            reasons.append(f"{task}: the candidate reports {candidate.metric(task)}, the "
                           f"champion {metric} (another task kind): not comparable")
            continue
        if change.delta is None or change.worse_by is None:
            reasons.append(f"{task}: missing from the candidate's test metrics")
            continue
        if not math.isfinite(best):
            reasons.append(f"{task}: the champion's {metric} is not a number ({best}): not "
                           f"gated (the candidate's: {change.head:.4f})")
            continue
        allowed = (f"{change.allowance(tolerance):.4f} ({tolerance:.2%} of {best:.4f})"
                   if change.relative else f"{tolerance:.4f}")
        verdict = (f"worse by {change.worse_by:.4f} > tolerance {allowed}" if worse
                   else "within tolerance" if change.worse_by > 0 else "not worse")
        reasons.append(f"{task}: {metric} {change.head:.4f} vs champion {best:.4f} "
                       f"({change.delta:+.4f}): {verdict}")
    for task in sorted(set(candidate.tasks) - set(champion.tasks)):
        reasons.append(f"{task}: new task, {candidate.metric(task)} "
                       f"{candidate.tasks[task]:.4f}: not gated, the champion has no value for it")
    ours, theirs, reference = candidate.aggregate, champion.aggregate, ""
    if aggregate == "delta_m":
        ours, theirs, reference = _common_reference(candidate, champion)
    improved = math.isfinite(ours) and (not math.isfinite(theirs) or ours > theirs)
    passed &= improved
    verdict = "improves" if improved else "does not improve"
    if not math.isfinite(theirs) and improved:
        verdict += " (the champion's is not a number)"
    reasons.append(f"{aggregate}: {ours:.4f} vs champion {theirs:.4f} ({ours - theirs:+.4f})"
                   f"{reference}: {verdict}")
    return Decision(passed, reasons)


def _common_reference(candidate: Scores, champion: Scores) -> tuple[float, float, str]:
    """The two Δm% to compare, and what they are against (a note for the decision): each run's
    own where both have the same baselines, else both against the champion's baselines; each
    its own, said so, where either side's baselines are not recorded."""
    missing = [side for side, scores in (("candidate", candidate), ("champion", champion))
               if scores.baselines is None]
    if missing:
        return (candidate.aggregate, champion.aggregate,
                ", each against its own single-task baselines (not recorded for the "
                f"{' and the '.join(missing)}: the two may differ)")
    if candidate.baselines == champion.baselines:
        return candidate.aggregate, champion.aggregate, ""
    tasks = set(champion.tasks)
    if (set(candidate.tasks) != tasks or set(champion.baselines) != tasks
            or any(candidate.metric(t) != champion.metric(t) for t in tasks)):
        return (candidate.aggregate, champion.aggregate,
                ", each against its own single-task baselines (other tasks: no common one)")
    from multitask.training.metrics import delta_m  # torch: promote has loaded it already

    better = {task: keys.higher_is_better(champion.metric(task)) for task in tasks}
    ours = delta_m(candidate.tasks, champion.baselines, better)
    theirs = delta_m(champion.tasks, champion.baselines, better)
    return (ours, theirs, f", both against the champion's single-task baselines (the "
                          f"candidate's own baselines differ; against them its Δm% is "
                          f"{candidate.aggregate:.4f})")


def model_name(params: Params) -> str:
    """The registered model: ``promote.model_name``, else the experiment (the data set)."""
    return params.promote.model_name or tracking.experiment_name(params)


def _version_metrics(version: tracking.ModelVersion) -> dict[str, float]:
    """Test metrics recorded on a version's tags (falling back to its run's metrics), in
    today's key layout, with its baselines' (tags, else its run's ``baselines.json``)."""
    metrics = {k: float(v) for k, v in version.tags.items() if k.startswith(f"{keys.TEST}/")}
    if not metrics and version.run_id:
        metrics = dict(tracking.get_run(version.run_id).data.metrics)
    baselines = {k: float(v) for k, v in version.tags.items() if k.startswith(BASELINES)}
    if not baselines and version.run_id:
        baselines = _run_baselines(version.run_id)
    return current_layout(metrics) | baselines


def _run_baselines(run_id: str) -> dict[str, float]:
    """The test metrics of the single-task baselines a run's Δm% is against (the
    ``baselines.json`` evaluate logs), as ``baselines/test/<metric>/<task>``; empty where the
    run has none."""
    logged = tracking.run_json(run_id, BASELINES_FILE)
    per_task = logged.get(keys.TASKS) if isinstance(logged, dict) else None
    if not isinstance(per_task, dict):
        return {}
    try:
        return {BASELINES + key: value for key, value in keys.split_metrics(
            keys.TEST, per_task).items()}
    except (TypeError, ValueError, AttributeError):  # not {task: {metric: number}}
        return {}


def current_layout(metrics: dict[str, float]) -> dict[str, float]:
    """Per-task keys of the earlier layout, ``test/<task>/<metric>`` (versions registered
    before the metric moved ahead of the task), renamed ``test/<metric>/<task>``.

    A key is the earlier layout when its last part is a metric name and its middle one is not;
    a version holds one layout or the other, and the champion's metrics must still gate.
    """
    renamed = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[2] in METRICS and parts[1] not in METRICS:
            split, task, metric = parts
            key = keys.task_metric(split, task, metric)
        renamed[key] = value
    return renamed


def _version_data(version: tracking.ModelVersion) -> str | None:
    """The sha256 of the data a version was trained and tested on: its tag, else its run's
    (versions registered before the tag existed); None when neither holds it."""
    if tracking.DATA_TAG in version.tags:
        return str(version.tags[tracking.DATA_TAG])
    if not version.run_id:
        return None
    try:
        return tracking.get_run(version.run_id).data.tags.get(tracking.DATA_TAG)
    except ValueError:  # its run is gone from this store
        return None


def _candidate_run_id(layout: Layout, run_id: str | None) -> str:
    if run_id:
        return str(run_id)
    recorded = read_json(layout.train_json).get("run_id")
    if not recorded:
        raise ValueError(f"{layout.train_json}: no run_id (trained with tracking.enabled "
                         "false?); enable tracking and rerun `multitask train`, or pass --run-id")
    return str(recorded)


def promote(params: Params, layout: Layout, *, run_id: str | None = None,
            dry_run: bool = False) -> int:
    """``multitask promote [--dry-run] [--run-id ID]``: the exit code says the outcome. A dry
    run only reads: MLflow's HTTP retries are bounded (:func:`~.store.read_only_requests`)."""
    tracking.require_pipeline_store(Path(params.source).parent)
    if dry_run:
        with read_only_requests():
            return _promote(params, layout, run_id=run_id, dry_run=True)
    return _promote(params, layout, run_id=run_id, dry_run=False)


def _promote(params: Params, layout: Layout, *, run_id: str | None, dry_run: bool) -> int:
    name = model_name(params)
    if not registrable(name):
        raise ValueError(f"{params.source}: the registered model's name {name!r} (promote."
                         "model_name, else tracking.experiment, else data.dataset) cannot be "
                         f"registered: {MODEL_NAME_RULE}; set promote.model_name")
    aggregate = params.promote.aggregate
    given = run_id
    run_id = _candidate_run_id(layout, run_id)
    try:
        run = tracking.get_run(run_id)
    except (ValueError, tracking.StoreError) as exc:
        if given or (isinstance(exc, tracking.StoreError) and not tracking.missing_store()):
            raise
        # A fresh clone: reports/train.json is committed, its run lives in the store of the
        # machine that last ran the pipeline, not in this clone's mlflow.db.
        raise ValueError(
            f"{exc}.\n{layout.train_json} names the run that trained the committed model, "
            "which lives in the MLflow store of whoever ran the pipeline last. Run the pipeline "
            f"here first (`dvc repro {layout.root / 'dvc.yaml'}`), then promote; or set "
            "MLFLOW_TRACKING_URI to the store that holds that run (the team's server)") from None
    if run.info.status != "FINISHED":
        raise ValueError(f"run {run_id} is {run.info.status}; only a finished, evaluated run "
                         "can be promoted (rerun `multitask evaluate`)")
    if "optuna.trial" in run.data.tags:
        raise ValueError(f"run {run_id} is trial {run.data.tags['optuna.trial']} of the tuning "
                         f"study {run.data.tags.get('optuna.study', '?')}: trials are scored on "
                         "the validation split and never tested; promote the run `multitask "
                         "train` logged (reports/train.json names it)")
    metrics = dict(run.data.metrics) | _run_baselines(run_id)
    data = run.data.tags.get(tracking.DATA_TAG)
    candidate = scores_from(metrics, aggregate, f"run {run_id}", data)
    model_uri = run.data.tags.get(tracking.MODEL_URI_TAG)
    if not model_uri:
        raise ValueError(f"run {run_id} has no logged model (tracking.log_model false?); "
                         "rerun `multitask train` with it enabled")
    with tempfile.TemporaryDirectory(prefix="multitask-promote-") as tmp:
        tracking.fetch_checked_model(model_uri, Path(tmp))  # never register what predict refuses

    champion_version = tracking.version_by_alias(name, CHAMPION)
    if champion_version is not None and champion_version.run_id == run_id:
        _write(f"{name} v{champion_version.version} (run {run_id}) is already the champion\n")
        return EXIT_PROMOTED
    champion = (scores_from(_version_metrics(champion_version), aggregate,
                            f"{name} v{champion_version.version}",
                            _version_data(champion_version))
                if champion_version is not None else None)
    decision = decide(candidate, champion, params.promote.tolerance, aggregate)
    outcome = CHAMPION if decision.promote else CHALLENGER
    against = f" against champion v{champion_version.version}" if champion_version else ""
    lines = [f"candidate: run {run_id}{against} ({name})", *(f"  {r}" for r in decision.reasons)]
    logged_in = tracking.client(create=False).get_experiment(run.info.experiment_id).name
    expected = tracking.experiment_name(params)
    if logged_in != expected:  # --run-id of another pipeline's run, or --params of another
        lines.insert(1, f"  note: the run was logged in experiment {logged_in!r}, not "
                        f"{expected!r} ({params.source}'s); check --run-id and --params")

    if dry_run:
        lines.append(f"dry run: would become {outcome}; nothing registered, no alias moved")
        _write("\n".join(lines) + "\n")
        return EXIT_PROMOTED if decision.promote else EXIT_CHALLENGER

    existing = tracking.versions_of_run(name, run_id)
    tags = {key: str(value) for key, value in metrics.items()
            if key.startswith((f"{keys.TEST}/", BASELINES))}
    tags.update({"gate.decision": outcome, "gate.reason": "; ".join(decision.reasons)[:5000],
                 tracking.MODEL_FORMAT_TAG: tracking.MODEL_FORMAT})
    if data:
        tags[tracking.DATA_TAG] = data
    if existing:  # promoting the same run again reuses its version
        version = existing[-1]
        tracking.set_version_tags(name, version.version, tags)
    else:
        version = tracking.register_version(model_uri, name, tags)
    if decision.promote:  # before the champion alias: a rerun after Ctrl-C between the two
        challenger = tracking.version_by_alias(name, CHALLENGER)  # stops at "already champion"
        if challenger is not None and challenger.version == version.version:
            tracking.delete_alias(name, CHALLENGER)
    tracking.set_alias(name, outcome, version.version)
    lines.append(f"{name} v{version.version} is now {outcome}")
    _write("\n".join(lines) + "\n")
    return EXIT_PROMOTED if decision.promote else EXIT_CHALLENGER


def status(params: Params) -> int:
    """``multitask registry``: champion and challenger side by side, per task. It only reads:
    MLflow's HTTP retries are bounded (:func:`~.store.read_only_requests`)."""
    tracking.require_pipeline_store(Path(params.source).parent)
    with read_only_requests():
        return _status(params)


def _status(params: Params) -> int:
    name = model_name(params)
    aggregate = params.promote.aggregate
    versions = {alias: tracking.version_by_alias(name, alias) for alias in (CHAMPION, CHALLENGER)}
    if not any(versions.values()):
        if name not in (names := tracking.registered_names()):  # the params of another pipeline?
            held = f"it holds {', '.join(names)}" if names else "it holds no registered model"
            raise ValueError(f"no registered model '{name}' (named by {params.source}) in "
                             f"{tracking.describe_uri()} ({held}); run `multitask promote` in "
                             "the pipeline's folder first, or give that pipeline's --params")
        raise ValueError(f"registered model '{name}' has no champion or challenger in "
                         f"{tracking.describe_uri()}; run `multitask promote` first")
    columns = {alias: _version_metrics(v) if v else {} for alias, v in versions.items()}
    gated: dict[str, str] = {}  # task -> its primary metric
    for metrics in columns.values():
        for task, metric in primary_values(metrics, keys.TEST)[1].items():
            gated.setdefault(task, metric)
    rows = [(f"{task} {metric}", keys.task_metric(keys.TEST, task, metric))
            for task, metric in sorted(gated.items())]
    rows += [("Δm%", keys.AGGREGATES["delta_m"]),
             ("mean accuracy", keys.AGGREGATES["mean_accuracy"])]

    def cell(alias: str, key: str) -> str:
        value = columns[alias].get(key)
        return "-" if value is None else f"{value:.4f}"

    def header(alias: str) -> str:
        version = versions[alias]
        return f"{alias} v{version.version}" if version else f"{alias} (none)"

    table = [("", header(CHAMPION), header(CHALLENGER), "challenger - champion")]
    for label, key in rows:
        champion_value = columns[CHAMPION].get(key)
        challenger_value = columns[CHALLENGER].get(key)
        delta = ("-" if champion_value is None or challenger_value is None
                 else f"{challenger_value - champion_value:+.4f}")
        table.append((label, cell(CHAMPION, key), cell(CHALLENGER, key), delta))
    table.append(("run", *((versions[a].run_id or "-") if versions[a] else "-"
                           for a in (CHAMPION, CHALLENGER)), ""))
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    lines = [f"registered model '{name}' (gate: {aggregate}, tolerance "
             f"{params.promote.tolerance}) in {tracking.describe_uri()}"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
              for row in table]
    champion, challenger = versions[CHAMPION], versions[CHALLENGER]
    if champion is not None and challenger is not None:
        data = {alias: _version_data(v) for alias, v in ((CHAMPION, champion),
                                                           (CHALLENGER, challenger))}
        if None not in data.values() and data[CHAMPION] != data[CHALLENGER]:
            lines.append(f"note: challenger v{challenger.version} was trained and tested on other "
                         f"data (sha256 {str(data[CHALLENGER])[:12]}) than champion "
                         f"v{champion.version} ({str(data[CHAMPION])[:12]}): its deltas compare "
                         "other test images")
    _write("\n".join(lines) + "\n")
    return 0


def _write(text: str) -> None:
    """The command's result goes to stdout (logging carries progress and warnings)."""
    sys.stdout.write(text)
    sys.stdout.flush()
