"""The ``tune`` stage: an Optuna study over the task-loss weights, judged on the validation split.

**Search space** (``params.yaml: tune``, :mod:`.space`): the task weights on the simplex
(T-1 stick-breaking coordinates, every normalised weight within ``tune.weight_range``),
optionally the learning rate (``tune.tune_lr``, log-uniform in ``tune.lr_range``) and the
weighting method itself (``tune.methods``; ``static`` means the searched weights).

**Modes.** ``multi`` (default): one objective per main task, its validation primary metric in
its direction (accuracy maximised; a regression task's MAE minimised); the study yields a Pareto
front and ``tune.selection`` picks one trial on it (``best_mean``, ``best_worst``, or the highest
``preference``-weighted mean: of the accuracies, or, when a task is judged on MAE, of each
task's value as a fraction of the front's best, :func:`.reports.selection_scores`). ``single``:
one scalar, the mean validation accuracy (classification tasks only: refused with a regression
task) or Δm% against single-task models trained here with the same budget on the same validation
split, each task's relative change signed by its metric's direction -- never
``reports/baselines.json``, which holds *test* metrics. Only single-objective studies prune
(Optuna cannot prune several objectives): each epoch reports the scalar and ``median`` or
``hyperband`` stops poor trials. The test split is never loaded.

**Storage, resumption, workers** (:mod:`.study`, :mod:`.storage`): a journal file or a
``postgresql://`` URL holds the study ``<tune.study_name> (<objective>, <architecture>/<backbone>,
<methods>) #<hash>``, the hash covering all that makes trial values comparable, so changed
params start a new study instead of mixing trials. A setup whose trials cannot train stops
before the study or any MLflow run is created (:func:`.study.check_trials_can_run`).
A rerun continues until the study holds ``n_trials`` finished (complete or pruned) trials;
finished trials are never rerun. ``--workers N`` starts N processes that claim trials under a
lock: exactly ``n_trials`` trials between them, each recorded once. So do separate ``multitask
tune`` processes on several machines sharing one PostgreSQL study; each returns once the study
holds ``n_trials`` finished trials. A trial whose worker died (no heartbeat for
``tune.grace_period_s``) is marked FAIL and its parameters run again.

**Only when used.** The DVC stage runs ``multitask tune --if-used``: with ``train.weighting``
other than ``tuned`` no study runs (train would not read its weights) and ``reports/tuning/``
says so; by hand, ``multitask tune`` always tunes.

**MLflow** (:mod:`.trials`): one parent run per invocation, one nested run per trial (params,
per-epoch per-task metrics, final state); the Pareto figure, chosen weights and summary go on
the parent. Nothing at all with ``tracking.enabled: false``.
"""

from __future__ import annotations

import logging
from typing import Any

from multitask import keys, tracking
from multitask.config import ConfigError, Params, frozen_trials_problem
from multitask.layout import Layout
from multitask.tuning.reports import (
    pareto_front,
    select,
    write_not_tuned,
    write_reports,
    write_snapshot,
)
from multitask.tuning.space import SearchSpace, simplex_weights
from multitask.tuning.storage import (
    StudyStorage,
    count_states,
    fail_stale_trials,
    finished_count,
)
from multitask.tuning.study import make_pruner, make_sampler, open_study, setup
from multitask.tuning.trials import describe_choice, validation_baselines
from multitask.tuning.workers import run_workers
from multitask.weighting import TUNED

__all__ = [
    "SearchSpace",
    "StudyStorage",
    "make_pruner",
    "make_sampler",
    "pareto_front",
    "select",
    "simplex_weights",
    "tune",
]

log = logging.getLogger(__name__)


def tune(params: Params, layout: Layout, *, workers: int | None = None,
         n_trials: int | None = None, if_used: bool = False) -> dict[str, Any]:
    """``multitask tune``: run or resume the study to ``n_trials``, then write the reports.

    ``workers``/``n_trials`` default to ``tune.workers``/``tune.n_trials``. Returns the chosen
    weights as written to ``reports/tuning/weights.json``. ``if_used`` (the DVC stage's
    ``--if-used``): when ``train.weighting`` is not ``tuned`` no study runs and the reports say
    so (:func:`.reports.write_not_tuned`), since train would not read the weights.
    """
    if if_used and params.train.weighting != TUNED:
        log.info("train.weighting is %r: no study (train reads no tuned weights); "
                 "reports/tuning/ says so", params.train.weighting)
        return write_not_tuned(layout, params.train.weighting)
    if problem := frozen_trials_problem(params, params.source):
        raise ConfigError(problem)  # train.weighting: tuned was refused on loading already
    if params.tune.preference is not None and params.tune.selection != "preference":
        log.warning("%s: tune.preference is set but tune.selection is %s, which does not read "
                    "it; set tune.selection: preference to choose by it", params.source,
                    params.tune.selection)
    n_trials = params.tune.n_trials if n_trials is None else n_trials
    workers = params.tune.workers if workers is None else workers
    if n_trials < 1 or workers < 1:
        raise ValueError(f"--n-trials ({n_trials}) and --workers ({workers}) must be at least 1")
    # the run's params say what this invocation runs, not the values the command line overrode
    params = params.model_copy(update={"tune": params.tune.model_copy(
        update={"n_trials": n_trials, "workers": workers})})
    study_setup = setup(params, layout)
    storage = StudyStorage.of(params, layout)
    study = open_study(study_setup, storage, n_trials)
    with storage.claim_lock(study.study_name):
        fail_stale_trials(study, storage, params.tracking.enabled)
    counts = count_states(study)
    log.info("study %s in %s: %s; target %d finished trials, %d worker(s)", study.study_name,
             storage.describe(), {k: v for k, v in counts.items() if v} or "new", n_trials,
             workers)
    study_tags = {"optuna.study": study.study_name, "optuna.storage": storage.describe()}
    # no trial left to run (DVC reran the stage, the study is done): the study's last run
    # (with these params) is reopened rather than an empty one added beside it in the UI, and
    # stays FINISHED if this rerun is interrupted
    done = finished_count(counts) >= n_trials
    earlier = tracking.rerun_of(params, "tune", study_tags) if done else None
    with tracking.stage_run(params, "tune", run_id=earlier,
                            records_nothing_new=earlier is not None) as run:
        run.set_tags(study_tags)
        if study_setup.single and params.tune.objective == "delta_m":
            baselines = validation_baselines(study_setup, study)
            metrics = study_setup.task_metrics
            run.log_metrics({f"tune/baseline/{keys.task_metric(keys.VAL, k, metrics[k])}": v
                             for k, v in baselines.items()})
        run_workers(study_setup, storage, study, n_trials, workers, run.run_id)
        weights = write_reports(study_setup, storage, study, n_trials, workers)
        if write_snapshot(storage, study.study_name, layout.study_journal):
            log.info("a copy of the study is in %s (the stage's DVC output)",
                     layout.study_journal)
        run.log_metrics({
            **{f"tune/chosen/{keys.weight(k)}": v for k, v in (weights["weights"] or {}).items()},
            **{f"tune/chosen/{keys.task_metric(keys.VAL, k, study_setup.task_metrics[k])}": v
               for k, v in weights["values"].items()},
            **{f"tune/trials/{k.lower()}": v for k, v in count_states(study).items() if v},
        })
        for path in (layout.tuned_weights, layout.tuning_summary, layout.pareto_csv,
                     layout.pareto_png):
            run.log_artifact(path, "tuning")
    log.info("chosen: trial %d (%s): %s", weights["trial"], weights["selection"],
             describe_choice(weights, weights["values"], study_setup.task_metrics))
    if weights["lr"] is not None:
        log.info("tuned learning rate %.3g is reported, not applied: train uses "
                 "train.optimizer.lr (set it with dvc exp run -S train.optimizer.lr=%.3g)",
                 weights["lr"], weights["lr"])
    return weights
