"""The study's identity (a name that hashes everything trial values depend on) and its
Optuna parts: sampler and pruner scaled to the budget, creation or loading of the study."""

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
from multitask.tasks import Task
from multitask.training import session
from multitask.training.data import ProcessedData
from multitask.tuning.space import SearchSpace
from multitask.tuning.storage import StudyStorage


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


def setup(params: Params, layout: Layout) -> Setup:
    """Load the train and validation splits (never test) and derive the study's identity."""
    data = session.load_data(params, layout, splits=("train", "val"))
    tasks = session.task_list(params, data)
    space = SearchSpace.from_params(params, tasks, str(params.source))
    tune, train = params.tune, params.train
    fingerprint = json.loads(json.dumps({
        "search_space": asdict(space),
        "mode": tune.mode,
        "objective": tune.objective if tune.mode == "single" else "accuracy per task",
        "epochs": tune.epochs,
        "data_fraction": tune.data_fraction,
        "model": params.model.model_dump(mode="json"),
        "train": train.model_dump(mode="json", include={
            "batch_size", "optimizer", "schedule", "seed", "method_params"}),
        "data_sha256": data.meta["sha256"],
    }))
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:10]
    return Setup(params, layout, data, tasks, space, f"{tune.study_name}-{digest}", fingerprint)


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
    directions = ["maximize"] * len(setup.objective_names)
    probe = optuna.create_study(storage=storage.optuna, study_name=setup.study_name,
                                directions=directions, load_if_exists=True)
    stored = probe.user_attrs.get("fingerprint")
    if stored is None:
        probe.set_user_attr("fingerprint", setup.fingerprint)
        probe.set_user_attr("objectives", setup.objective_names)
    if probe.metric_names is None:  # optuna-dashboard labels its axes with these names
        with warnings.catch_warnings():  # experimental in Optuna 5, stable in practice
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            probe.set_metric_names([
                name if setup.single else keys.task_metric(keys.VAL, name, keys.ACCURACY)
                for name in setup.objective_names])
    elif stored != setup.fingerprint:
        raise ValueError(
            f"{storage.describe()}: study '{setup.study_name}' holds trials of another search "
            f"space or training setup; set tune.study_name to a new name or delete the study")
    existing = len(probe.get_trials(deepcopy=False))
    return optuna.load_study(
        study_name=setup.study_name, storage=storage.optuna,
        sampler=make_sampler(setup.params, n_trials, (worker, existing)),
        pruner=make_pruner(setup.params, n_trials))
