"""Running trials: the objective (train on the trial's choice, report, prune, one nested MLflow
run) and the worker loop that claims trials until the study is full (:mod:`.workers` runs
several such loops in parallel processes).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from multitask import keys, tracking
from multitask.tasks import main_tasks
from multitask.training import session, trainer
from multitask.training.metrics import delta_m
from multitask.tuning.space import trial_config
from multitask.tuning.storage import (
    DIVERGED_ATTR,
    VALUES_ATTR,
    StudyStorage,
    claim_trial,
    count_states,
    finished_count,
)
from multitask.tuning.study import Setup, open_study
from multitask.weighting import build_weighting

log = logging.getLogger(__name__)

WAIT_POLL_S = 2.0  # how often a worker with nothing to claim looks at others' running trials


def _primary(record: dict[str, float], metrics: Mapping[str, str]) -> dict[str, float]:
    """``{task: value}`` of each task's metric in ``metrics`` (``{task: metric}``) from one
    epoch's record."""
    return {name: float(record[keys.task_metric(keys.VAL, name, metric)])
            for name, metric in metrics.items()}


@dataclass
class Objective:
    """Trains one trial on its choice and returns its objective values.

    Multi-objective: each main task's validation primary metric after the last epoch (accuracy,
    maximised; MAE for a regression task, minimised). Single: their mean accuracy (refused with
    a regression task, :class:`.space.SearchSpace`) or Δm% against ``baselines`` (each task's
    relative change with its metric's sign), also reported after every epoch so that the pruner
    can stop the trial there. Every epoch's record goes to the trial's nested MLflow run.
    """

    setup: Setup
    baselines: dict[str, float] | None  # validation baselines, single mode with delta_m only
    parent_run_id: str | None

    def scalar(self, values: dict[str, float]) -> float:
        if self.baselines is None:
            return float(np.mean(list(values.values())))
        return delta_m(values, self.baselines, self.setup.higher_is_better)

    def values(self, values: dict[str, float]) -> list[float]:
        if self.setup.single:
            return [self.scalar(values)]
        return [values[name] for name in self.setup.space.objectives]

    def __call__(self, trial: Trial) -> list[float]:
        setup, params = self.setup, self.setup.params
        choice = setup.space.suggest(trial)
        trial.set_user_attr("choice", asdict(choice))
        epochs = params.tune.epochs
        last: dict[str, float] = {}
        state = "FAIL"
        run_params = {"trial": trial.number, "method": choice.method,
                      "lr": choice.lr or params.train.optimizer.lr,
                      **{keys.weight(k): v for k, v in (choice.weights or {}).items()}}
        with tracking.nested_run(
                self.parent_run_id, f"trial-{trial.number}", params=run_params,
                tags={"optuna.study": setup.study_name, "optuna.trial": str(trial.number),
                      "stage": "tune-trial"},
                finished_on=(optuna.TrialPruned,)) as run:
            if run.enabled:
                trial.set_user_attr("mlflow_run_id", run.run_id)

            def on_epoch(epoch: int, record: dict[str, float]) -> None:
                last.clear()
                last.update(record)
                run.log_epoch(epoch, record)
                if not setup.single:
                    return  # Optuna prunes single-objective studies only
                value = self.scalar(_primary(record, setup.task_metrics))
                trial.report(value, epoch)
                if epoch < epochs and trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after epoch {epoch} ({value:.4f})")

            try:
                session.fit(params, setup.data, setup.tasks,
                            choice.weighting_method(setup.tasks, params),
                            train=trial_config(params, choice.lr), epochs=epochs,
                            data_fraction=params.tune.data_fraction, on_epoch=on_epoch,
                            progress=False, start=setup.start)
                state = "COMPLETE"
            except optuna.TrialPruned:
                state = "PRUNED"
                raise
            except trainer.NonFiniteLossError as error:
                # The trial's own choice diverged (its lr from tune.lr_range, its weights): a
                # hopeless trial, stopped like a pruned one, and the study goes on.
                state = "PRUNED"
                trial.set_user_attr(DIVERGED_ATTR, error.what)
                log.warning("trial %d diverged with %s (%s); pruned, the study goes on (if "
                            "many do: narrow tune.lr_range or tune.weight_range)", trial.number,
                            describe_choice(asdict(choice), None), error.what)
                raise optuna.TrialPruned(f"diverged: {error.what}") from None
            finally:
                if last:
                    values = _primary(last, setup.task_metrics)
                    trial.set_user_attr(VALUES_ATTR, values)
                    trial.set_user_attr("epochs_run", int(last["epoch"]))
                    run.log_metrics({f"objective/{name}": value for name, value in zip(
                        setup.objective_names, self.values(values), strict=True)}, step=epochs)
                run.set_tags({"optuna.state": state})
        return self.values(_primary(last, setup.task_metrics))


def run_trial(study: optuna.Study, storage: StudyStorage, trial: Trial, objective: Objective
              ) -> FrozenTrial:
    """Run ``trial`` and record how it ended; an error fails the trial and propagates.

    A trial that another worker declared lost meanwhile (no heartbeat for the grace period)
    stays FAIL: its parameters already run again elsewhere.
    """
    with storage.heartbeat(trial):
        try:
            values = objective(trial)
        except optuna.TrialPruned:
            return _tell(study, trial, state=TrialState.PRUNED)
        except BaseException:
            _tell(study, trial, state=TrialState.FAIL)
            raise
    return _tell(study, trial, values=values)


def _not_skipped_telling(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Skipped telling trial")


def _tell(study: optuna.Study, trial: Trial, **outcome: Any) -> FrozenTrial:
    # Optuna's own message says less than ours: an INFO log line in Optuna 5 (each worker
    # printed it for the trial Ctrl-C failed, told FAIL twice)
    tell_log = logging.getLogger("optuna.study._tell")
    tell_log.addFilter(_not_skipped_telling)
    try:
        frozen = study.tell(trial, skip_if_finished=True, **outcome)
    finally:
        tell_log.removeFilter(_not_skipped_telling)
    if frozen.state == TrialState.FAIL and outcome.get("state") != TrialState.FAIL:
        log.warning("trial %d was declared lost by another worker while this one ran it (no "
                    "heartbeat for tune.grace_period_s); its result is dropped", trial.number)
    return frozen


def validation_baselines(setup: Setup, study: optuna.Study) -> dict[str, float]:
    """Validation primary metric (accuracy; MAE for a regression task) of one single-task
    model per main task, at the per-trial budget.

    Δm% needs a reference; ``reports/baselines.json`` holds test metrics, which tuning must not
    see. Computed once per study and stored on it, so workers and reruns share it.
    """
    stored = study.user_attrs.get("validation_baselines")
    if stored is not None:
        return dict(stored)
    params, result = setup.params, {}
    for task in main_tasks(setup.tasks):
        log.info("Δm%% reference: single-task model for task '%s'", task.name)
        history = session.fit(params, setup.data, [task], build_weighting("equal", 1),
                              train=trial_config(params), epochs=params.tune.epochs,
                              data_fraction=params.tune.data_fraction, progress=False,
                              start=setup.start).history
        result[task.name] = _primary(history[-1], {task.name: task.metric})[task.name]
    study.set_user_attr("validation_baselines", result)
    return result


def run_worker(setup: Setup, storage: StudyStorage, n_trials: int, worker: int,
               parent_run_id: str | None, on_trial: Callable[[FrozenTrial], None] | None = None
               ) -> int:
    """Claim and run trials until the study has ``n_trials``; return how many this one ran."""
    study = open_study(setup, storage, n_trials, worker)
    baselines = (study.user_attrs.get("validation_baselines")
                 if setup.single and setup.params.tune.objective == "delta_m" else None)
    objective = Objective(setup, baselines, parent_run_id)
    ran, waiting = 0, False
    current: dict[str, Trial] = {}  # the trial this worker runs, from the moment it is made
    with _epoch_logs_at_debug(), _failing_on_the_way_out(study, lambda: current.get("trial")):
        while True:
            trial = claim_trial(study, storage, n_trials, setup.params.tracking.enabled,
                                on_claim=lambda made: current.update(trial=made))
            if trial is None:
                counts = count_states(study)
                if finished_count(counts) >= n_trials:
                    break
                if not waiting:  # the study is not done until they finish or are replaced
                    log.info("worker %d: waiting for %d trial(s) running in other workers "
                             "(a lost one is replaced here after tune.grace_period_s)", worker,
                             counts["RUNNING"])
                    waiting = True
                time.sleep(WAIT_POLL_S)
                continue
            waiting = False
            started = time.perf_counter()
            frozen = run_trial(study, storage, trial, objective)
            ran += 1
            log.info("worker %d: trial %d %s in %.1f s: %s", worker, frozen.number,
                     frozen.state.name, time.perf_counter() - started,
                     describe_choice(frozen.user_attrs["choice"],
                                     frozen.user_attrs.get(VALUES_ATTR), setup.task_metrics))
            if on_trial is not None:
                on_trial(frozen)
    return ran


@contextlib.contextmanager
def _failing_on_the_way_out(study: optuna.Study, claimed: Callable[[], Trial | None]
                            ) -> Iterator[None]:
    """Fail the ``claimed()`` trial if it is still running when the block ends in an error: a
    Ctrl-C or SIGTERM between the claim and :func:`run_trial`'s own handler (the heartbeat's
    thread starting, say), or while its result was told, left it RUNNING."""
    try:
        yield
    except BaseException:
        if (trial := claimed()) is not None:
            with contextlib.suppress(Exception):  # the store may be what failed
                _tell(study, trial, state=TrialState.FAIL)
        raise


@contextlib.contextmanager
def _epoch_logs_at_debug() -> Iterator[None]:
    """Silence the trainer's per-epoch lines (one line per trial says enough) unless -v."""
    trainer_log = logging.getLogger(trainer.__name__)
    level = trainer_log.level
    if not log.isEnabledFor(logging.DEBUG):
        trainer_log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        trainer_log.setLevel(level)


def describe_choice(choice: dict[str, Any], values: dict[str, float] | None,
                    metrics: Mapping[str, str] | None = None) -> str:
    """``static left=0.412 right=0.588 -> val accuracy left=0.8123 right=0.7911``; with a
    task judged on another metric (``metrics``: ``{task: metric}``) each value says its metric:
    ``-> val species accuracy=0.8123 age mae=3.2100``."""
    parts = [choice["method"]]
    parts += [f"{name}={weight:.3f}" for name, weight in (choice["weights"] or {}).items()]
    if choice["lr"] is not None:
        parts.append(f"lr={choice['lr']:.3g}")
    named = metrics or {}
    if values and set(named.values()) <= {keys.ACCURACY}:
        parts.append("-> val accuracy")
        parts += [f"{name}={value:.4f}" for name, value in values.items()]
    elif values:
        parts.append("-> val")
        parts += [f"{name} {named.get(name, keys.ACCURACY)}={value:.4f}"
                  for name, value in values.items()]
    return " ".join(parts)
