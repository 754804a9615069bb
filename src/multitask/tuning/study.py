"""The study's identity and its Optuna parts.

Identity: a readable name that also separates incompatible studies, ``task-weights
(multi-objective, hps/lenet, static) #3f9a0c``: ``tune.study_name``, what the study searches,
and the first hex digits of a hash over everything trial values depend on (the fingerprint,
stored on the study with the whole hash). Changed params give another name, so a new study,
never a mix of incomparable trials; a study of that name with another fingerprint is refused.

Before any study or MLflow run exists, :func:`setup` checks that trials can run at all: every
candidate method is built with the network and takes one real optimisation step. A setup that
cannot train (a method that does not fit the architecture, weights that do not fit the task
count ...) stops there, leaving no junk study or FAILED runs behind.

Then the sampler and pruner scaled to the budget, and the creation or loading of the study."""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import optuna

from multitask import keys
from multitask.config import Params
from multitask.layout import Layout
from multitask.models.pretrained import EncoderWeights
from multitask.pretraining import resolve_start
from multitask.tasks import METRICS, Task, main_tasks
from multitask.training import session
from multitask.training.data import ProcessedData
from multitask.training.trainer import Trainer
from multitask.tuning.space import TRIAL_TRAIN_KEYS, Choice, SearchSpace, trial_config
from multitask.tuning.storage import StudyStorage

HASH_DIGITS = 6  # 16.7 million names per readable part; a clash is refused by the fingerprint
PREFLIGHT_ROWS = 8  # training examples of the one step each candidate method takes first


@dataclass(frozen=True)
class Setup:
    """Everything a worker derives from the params and the data, identically in every process."""

    params: Params
    layout: Layout
    data: ProcessedData
    tasks: list[Task]
    space: SearchSpace
    study_name: str
    fingerprint: dict[str, Any]  # what the study name's hash covers, stored on the study
    parameter_hash: str  # sha256 of the fingerprint; its first digits end the study name
    start: EncoderWeights | None = None  # where every trial's encoder starts (model.pretrained)

    @property
    def source(self) -> str:
        """The params file, for error messages and spawned workers."""
        return str(self.params.source)

    @property
    def single(self) -> bool:
        return self.params.tune.mode == "single"

    @property
    def objective_names(self) -> list[str]:
        return [self.params.tune.objective] if self.single else list(self.space.objectives)

    @property
    def task_metrics(self) -> dict[str, str]:
        """Each main task's primary metric, what its objective is judged on: ``{task:
        metric}`` (accuracy; MAE for a regression task)."""
        return {task.name: task.metric for task in main_tasks(self.tasks)}

    @property
    def higher_is_better(self) -> dict[str, bool]:
        """``{task: whether a larger primary metric is better}`` (MAE: no)."""
        return {task: METRICS[metric] for task, metric in self.task_metrics.items()}

    @property
    def metric_names(self) -> list[str]:
        """The objectives as the study names them: ``val/<metric>/<task>`` per task
        (``val/accuracy/left``, ``val/mae/age``), or the single objective (``mean_accuracy``,
        ``delta_m``)."""
        return [name if self.single else keys.task_metric(keys.VAL, name, self.task_metrics[name])
                for name in self.objective_names]

    @property
    def directions(self) -> list[str]:
        """Optuna's direction per objective: a single objective (mean accuracy, Δm%) and each
        task's accuracy are maximised, a regression task's MAE minimised."""
        if self.single:
            return ["maximize"]
        better = self.higher_is_better
        return ["maximize" if better[name] else "minimize" for name in self.objective_names]


def setup(params: Params, layout: Layout) -> Setup:
    """Load the train and validation splits (never test), derive the study's identity and check
    that a trial of every candidate method can train (:func:`check_trials_can_run`)."""
    data = session.load_data(params, layout, splits=("train", "val"))
    tasks = session.task_list(params, data)
    start = resolve_start(params, layout)
    space = SearchSpace.from_params(params, tasks, str(params.source))
    tune, train = params.tune, params.train
    fingerprint = json.loads(json.dumps({
        "search_space": asdict(space),
        "mode": tune.mode,
        "objective": tune.objective if tune.mode == "single" else _per_task_objective(tasks),
        "epochs": tune.epochs,
        "data_fraction": tune.data_fraction,
        "model": params.model.model_dump(mode="json"),
        "train": train.model_dump(mode="json", include=set(TRIAL_TRAIN_KEYS)),
        "data_sha256": data.meta["sha256"],
        "pretrained": session.start_record(start),
    }))
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()
    check_trials_can_run(params, data, tasks, space, start)
    return Setup(params, layout, data, tasks, space, study_name(params, space, digest),
                 fingerprint, digest, start)


def _per_task_objective(tasks: list[Task]) -> str:
    """The fingerprint's words for a multi-objective study: ``accuracy per task`` (the words
    studies had before task kinds, so that their names and hashes stay), or each task's
    primary metric when one is not accuracy (``primary metric per task: accuracy, mae``)."""
    metrics = [task.metric for task in main_tasks(tasks)]
    if set(metrics) <= {keys.ACCURACY}:
        return "accuracy per task"
    return "primary metric per task: " + ", ".join(metrics)


def study_name(params: Params, space: SearchSpace, parameter_hash: str) -> str:
    """``task-weights (multi-objective, hps/lenet, static) #3f9a0c``: ``tune.study_name``, the
    objective, the model, the searched methods (``+lr`` when the learning rate is searched too)
    and the parameter hash's first :data:`HASH_DIGITS` hex digits, which separate studies whose
    readable parts agree (another weight range, epochs, data ...)."""
    tune, model = params.tune, params.model
    objective = ("multi-objective" if tune.mode == "multi"
                 else {"mean_accuracy": "mean accuracy", "delta_m": "delta-m%"}[tune.objective])
    searched = "+".join(space.methods) + ("+lr" if space.lr_range is not None else "")
    return (f"{tune.study_name} ({objective}, {model.architecture}/{model.backbone}, "
            f"{searched}) #{parameter_hash[:HASH_DIGITS]}")


def check_trials_can_run(params: Params, data: ProcessedData, tasks: list[Task],
                         space: SearchSpace, start: EncoderWeights | None = None) -> None:
    """Build the network with every method a trial may choose and take one optimisation step on
    at most :data:`PREFLIGHT_ROWS` training examples (milliseconds; what a trial does first).

    Params are validated when they load (names of architectures, methods, their params), but
    some errors only show when the parts meet: static weights or method params that do not fit
    the task count, gradients w.r.t. a representation that the architecture's heads share.
    Found here, they stop ``multitask tune`` before it creates a study or an MLflow run.
    """
    n_train = len(data.splits["train"])
    trial_rows = max(1, int(params.tune.data_fraction * n_train))  # as the trainer subsets
    rows = min(PREFLIGHT_ROWS, params.train.batch_size, trial_rows)
    config = trial_config(params).model_copy(update={"batch_size": rows})
    for method in space.methods:
        weights = ({task.name: 1.0 / len(tasks) for task in tasks} if method == "static"
                   else None)
        try:
            weighting = Choice(method, weights, None).weighting_method(tasks, params)
            network = session.build_network(params.model, params.train.seed, tasks, data,
                                            start)
            trainer = Trainer(network, tasks, weighting, data, config, epochs=params.tune.epochs,
                              data_fraction=min(1.0, (rows + 0.5) / n_train), progress=False,
                              group=None)
            trainer.train_epoch(0)
        except Exception as exc:
            raise ValueError(
                f"{params.source}: tune: a trial with method '{method}' and "
                f"model.architecture '{params.model.architecture}' cannot train: {exc}. Fix "
                "params before tuning; no study or MLflow run was created") from exc


def make_sampler(params: Params, n_trials: int, stream: Sequence[int]
                 ) -> optuna.samplers.BaseSampler:
    """The configured sampler, seeded from ``tune.seed`` and ``stream``.

    ``stream`` (worker index, trials already stored) keeps workers and resumed runs from
    replaying the same random proposals. Start-up and population sizes scale with the budget:
    the defaults (10 random trials for TPE, 50 per NSGA-II generation) would leave a study of a
    few trials purely random.
    """
    seed = int(np.random.SeedSequence([params.tune.seed, *stream]).generate_state(1)[0])
    kind = params.tune.sampler
    if kind == "tpe":
        with warnings.catch_warnings():  # multivariate/group are stable in practice
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=max(1, min(10, n_trials // 2)), multivariate=True,
                group=True, constant_liar=True)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed,
                                             population_size=max(2, min(50, n_trials // 2)))
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(params: Params, n_trials: int) -> optuna.pruners.BasePruner:
    """``tune.pruner`` for single-objective studies; none for multi-objective ones."""
    tune = params.tune
    if tune.mode == "multi" or tune.pruner == "none":
        return optuna.pruners.NopPruner()
    if tune.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=max(1, min(5, n_trials // 4)))
    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=tune.epochs,
                                          reduction_factor=3)


def open_study(setup: Setup, storage: StudyStorage, n_trials: int, worker: int = 0
               ) -> optuna.Study:
    """Create or load the study; refuse one of the same name with another search space."""
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    directions = setup.directions
    probe = optuna.create_study(storage=storage.optuna, study_name=setup.study_name,
                                directions=directions, load_if_exists=True)
    stored = probe.user_attrs.get("fingerprint")
    if stored is None:  # a new study: what it is, for readers and optuna-dashboard
        probe.set_user_attr("fingerprint", setup.fingerprint)
        probe.set_user_attr("parameter_hash", setup.parameter_hash)
        probe.set_user_attr("objectives", setup.objective_names)
        probe.set_user_attr("params_file", setup.source)
    elif stored != setup.fingerprint:
        raise ValueError(
            f"{storage.describe()}: study '{setup.study_name}' holds trials of another search "
            f"space or training setup; set tune.study_name to a new name or delete the study")
    if probe.metric_names is None:  # optuna-dashboard labels objectives and axes with these
        with warnings.catch_warnings():  # experimental in Optuna 5, stable in practice
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            probe.set_metric_names(setup.metric_names)
    existing = len(probe.get_trials(deepcopy=False))
    return optuna.load_study(
        study_name=setup.study_name, storage=storage.optuna,
        sampler=make_sampler(setup.params, n_trials, (worker, existing)),
        pruner=make_pruner(setup.params, n_trials))
