"""The tune stage on real (sample) composites: a short study, resumption after SIGKILL, parallel
workers on a journal file and on a real PostgreSQL (also as separate `multitask tune` processes,
as on several machines, one of them SIGKILLed), MLflow nested runs, search-space errors."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
import yaml

from multitask import tuning
from multitask.config import ConfigError, load_params
from multitask.data.processed import tasks as tasks_from_meta
from multitask.layout import Layout
from multitask.processes import HOST, start_ticks
from multitask.training import session
from multitask.training.data import ProcessedData
from multitask.tuning.storage import LOCK_TIMEOUT_S, fail_stale_trials
from multitask.tuning.study import open_study, setup
from multitask.tuning.workers import INTERRUPT_GRACE_S
from multitask.weighting import METHODS, LossWeighting

ROOT = Path(__file__).resolve().parents[2]
JOURNAL = "reports/tuning/study.journal"


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def processed(sample_composites: Callable[..., Path]) -> Path:
    """MultiFashion composites from the shipped sample: 720 train, 80 val, 100 test."""
    return sample_composites(800, 100)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, processed: Path,
            pipeline_folder: Callable[[Path, Path], Layout]) -> Path:
    """The test's pipeline folder and working directory (its data/processed is the shared
    composites; reports/ and the journal land here); the MLflow store is its own."""
    pipeline_folder(tmp_path, processed)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def write_params(folder: Path, processed: Path, tracking: dict[str, Any] | None = None,
                 **tune: Any) -> Path:
    """A params.yaml for ``processed``: one-epoch trials, CPU, no MLflow unless asked."""
    sample = yaml.safe_load((ROOT / "sample" / "params.yaml").read_text())
    raw = {
        "data": {"dataset": sample["data"]["dataset"]},
        "model": {"backbone": "lenet", "architecture": "hps"},
        "train": {"epochs": 1, "batch_size": 64, "optimizer": {"name": "adam", "lr": 0.003},
                  "device": "cpu", "seed": 0, "diagnostics_every": 0},
        "tune": {"n_trials": 4, "epochs": 1, "data_fraction": 1.0, "sampler": "random",
                 "storage": JOURNAL, **tune},
        "tracking": tracking or {"enabled": False},
    }
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def tracking_on(experiment: str) -> dict[str, Any]:
    """``tracking`` params that log to the test's store (see ``workdir``)."""
    return {"enabled": True, "experiment": experiment, "system_metrics": False}


def tuned_method(params: Path, processed: Path) -> Any:
    """The weighting method the train stage builds with ``train.weighting: tuned``."""
    loaded = load_params(params)
    loaded = loaded.model_copy(update={"train": loaded.train.model_copy(
        update={"weighting": "tuned"})})
    return session.build_method(loaded, tasks_from_meta(
        ProcessedData(processed, torch.device("cpu"), ("val",)).meta), Layout(params.parent))


def run_tune(params: Path, **args: Any) -> dict[str, Any]:
    return tuning.tune(load_params(params), Layout(params.parent), workers=args.get("workers"),
                       n_trials=args.get("n_trials"))


def interrupt(*args: Any, **kwargs: Any) -> Any:
    raise KeyboardInterrupt


def tune_process(folder: Path, params: Path, *args: str) -> subprocess.Popen[str]:
    """``multitask tune`` in its own process, as DVC or a user would start it."""
    return subprocess.Popen([sys.executable, "-m", "multitask", "tune", "--params", str(params),
                             *args], cwd=folder, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@contextlib.contextmanager
def study_storage(storage: str, lock_timeout_s: float = LOCK_TIMEOUT_S
                  ) -> Iterator[tuning.StudyStorage]:
    """``storage`` opened as a worker would, its PostgreSQL connections closed after the block.

    The tests poll the study many times a second; an undisposed RDBStorage keeps its pooled
    connections until the garbage collector breaks its reference cycles, and a few hundred
    polls exhaust the server's connection slots (it happened in CI).
    """
    opened = tuning.StudyStorage(storage, "test", lock_timeout_s)
    try:
        yield opened
    finally:
        if isinstance(opened.optuna, optuna.storages.RDBStorage):
            opened.optuna.engine.dispose()


def trials_in(opened: tuning.StudyStorage) -> list[optuna.trial.FrozenTrial]:
    """The trials of the (one) study in the open storage, as they stand now."""
    names = optuna.get_all_study_names(opened.optuna)
    if not names:
        return []
    assert len(names) == 1, names
    return optuna.load_study(study_name=names[0], storage=opened.optuna).get_trials()


def stored_trials(storage: str) -> list[optuna.trial.FrozenTrial]:
    """The trials of the (one) study in ``storage``, read as any other process would."""
    with study_storage(storage) as opened:
        return trials_in(opened)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


# ------------------------------------------------------------------------ search space math
@pytest.mark.parametrize(("count", "low", "high"), [(2, 0.05, 1.0), (3, 0.1, 0.6), (4, 0.0, 1.0)])
def test_simplex_weights_sum_to_one_within_the_bounds(count: int, low: float, high: float
                                                      ) -> None:
    rng = np.random.default_rng(0)
    for coordinates in [*rng.random((500, count - 1)), np.zeros(count - 1), np.ones(count - 1)]:
        weights = tuning.simplex_weights(list(coordinates), low, high)
        assert len(weights) == count
        assert sum(weights) == pytest.approx(1.0)
        assert min(weights) >= low - 1e-9 and max(weights) <= high + 1e-9


def test_unbounded_simplex_coordinates_are_uniform_on_the_simplex() -> None:
    """Uniform coordinates -> Dirichlet(1, 1, 1): each weight has mean 1/3, P(w < 1/2) = 3/4."""
    samples = np.array([tuning.simplex_weights(list(u), 0.0, 1.0)
                        for u in np.random.default_rng(1).random((20_000, 2))])
    assert samples.mean(axis=0) == pytest.approx([1 / 3] * 3, abs=0.01)
    assert (samples < 0.5).mean(axis=0) == pytest.approx([0.75] * 3, abs=0.015)


def test_pareto_front_and_selection_rules_on_hand_computed_points() -> None:
    points = [[0.9, 0.5], [0.7, 0.7], [0.6, 0.6], [0.5, 0.9], [0.9, 0.4], [0.7, 0.7]]
    front = tuning.pareto_front(points)
    assert front == [0, 1, 3, 5]  # (0.6, 0.6) and (0.9, 0.4) are dominated; ties both stay
    on_front = [points[i] for i in front]
    assert tuning.select(on_front, "best_mean") == 0  # 0.7 mean; first on ties (0.7, 0.7, 0.7)
    assert tuning.select(on_front, "best_worst") == 1  # min 0.7
    assert tuning.select(on_front, "preference", [1.0, 3.0]) == 2  # 0.25*0.5 + 0.75*0.9


def test_multi_objective_studies_never_prune(processed: Path, tmp_path: Path) -> None:
    multi = load_params(write_params(tmp_path, processed, pruner="median"))
    single = multi.model_copy(update={"tune": multi.tune.model_copy(update={"mode": "single"})})
    assert isinstance(tuning.make_pruner(multi, 8), optuna.pruners.NopPruner)
    assert isinstance(tuning.make_pruner(single, 8), optuna.pruners.MedianPruner)


# ------------------------------------------------------------------------- invalid settings
@pytest.mark.parametrize(("tune", "message"), [
    ({"weight_range": [-0.1, 1.0]}, "tune.weight_range"),
    ({"lr_range": [0.0, 0.1], "tune_lr": True}, "tune.lr_range"),
    ({"methods": []}, "tune.methods: empty list"),
    ({"selection": "preference"}, "needs tune.preference"),
    ({"preference": [1.0, -1.0], "selection": "preference"}, "tune.preference"),
    ({"heartbeat_interval_s": 60, "grace_period_s": 60},
     r"grace_period_s \(60\) must exceed heartbeat_interval_s \(60\)"),
])
def test_invalid_search_space_is_a_config_error(processed: Path, tmp_path: Path,
                                                tune: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_params(write_params(tmp_path, processed, **tune))


@pytest.mark.parametrize(("tune", "message"), [
    ({"methods": ["static", "pcgard"]}, "tune.methods: unknown weighting method 'pcgard'"),
    ({"selection": "preference", "preference": [1.0, 1.0, 1.0]},
     r"tune.preference: 3 values for 2 tasks \['left', 'right'\]"),
    ({"weight_range": [0.6, 1.0]}, r"cannot hold 2 weights that sum to one"),
    ({"storage": "sqlite:///study.db"}, "tune.storage: 'sqlite:///study.db' is not supported"),
])
def test_invalid_search_space_fails_before_any_trial(processed: Path, workdir: Path,
                                                     tune: dict[str, Any], message: str) -> None:
    params = write_params(workdir, processed, **tune)
    with pytest.raises(ValueError, match=message):
        run_tune(params)
    assert not (workdir / JOURNAL).exists()  # no study was even created
    assert not (workdir / "reports/tuning/weights.json").exists()


class NeedsThreeTasks(LossWeighting):
    """A method that fits some setups only: what params validation cannot see alone."""

    name = "needs_three_tasks"
    description = "equal weights, for three tasks or more"

    def __init__(self, num_tasks: int, params: Any = None) -> None:
        if num_tasks < 3:
            raise ValueError(f"needs_three_tasks: needs 3 tasks or more, got {num_tasks}")
        super().__init__(num_tasks, params)

    def weights(self, losses: torch.Tensor) -> torch.Tensor:
        return torch.full_like(losses, 1.0 / self.num_tasks)


def test_a_tune_that_cannot_train_leaves_no_study_and_no_mlflow_run(
        processed: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    store = mlflow.MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    # An architecture typo: refused when params load, before data, study or run.
    params = write_params(workdir, processed, tracking=tracking_on("tuning-tests"))
    raw = yaml.safe_load(params.read_text())
    raw["model"]["architecture"] = "hsp"
    params.write_text(yaml.safe_dump(raw))
    done = subprocess.run([sys.executable, "-m", "multitask", "tune", "--params", str(params)],
                          cwd=workdir, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "model.architecture: unknown architecture 'hsp'" in done.stderr
    assert "did you mean 'hps'" in done.stderr
    # A method that cannot train with these tasks: the trial's first step is tried first.
    monkeypatch.setitem(METHODS, NeedsThreeTasks.name, NeedsThreeTasks)
    params = write_params(workdir, processed, tracking=tracking_on("tuning-tests"),
                          methods=["static", "needs_three_tasks"])
    with pytest.raises(ValueError, match=r"a trial with method 'needs_three_tasks' and "
                       r"model.architecture 'hps' cannot train: .*needs 3 tasks or more"):
        run_tune(params)
    assert not (workdir / JOURNAL).exists()  # no study was created
    assert not (workdir / "reports/tuning").exists()
    if (workdir / "mlflow.db").exists():
        experiment = store.get_experiment_by_name("tuning-tests")
        assert experiment is None or not store.search_runs([experiment.experiment_id])


# ------------------------------------------------------------------ the study's identity
def test_the_study_has_a_readable_name_named_objectives_and_its_hash(processed: Path,
                                                                      workdir: Path) -> None:
    layout = Layout(workdir)
    first = setup(load_params(write_params(workdir, processed)), layout)
    assert first.study_name == ("task-weights (multi-objective, hps/lenet, static) "
                                f"#{first.parameter_hash[:6]}")
    # Another weight range: the same readable part, another hash, so another study.
    other = setup(load_params(write_params(workdir, processed, weight_range=[0.2, 0.8])),
                         layout)
    assert other.study_name.split("#")[0] == first.study_name.split("#")[0]
    assert other.parameter_hash != first.parameter_hash
    assert other.study_name != first.study_name
    # The run's regularisation, which trials train with: another study each.
    for key, value in (("label_smoothing", 0.1), ("augment", {"shift": 2})):
        path = write_params(workdir, processed)
        raw = yaml.safe_load(path.read_text())
        raw["train"][key] = value
        path.write_text(yaml.safe_dump(raw))
        regularised = setup(load_params(path), layout)
        assert regularised.study_name.split("#")[0] == first.study_name.split("#")[0], key
        assert regularised.parameter_hash != first.parameter_hash, key
    searched = setup(load_params(write_params(
        workdir, processed, mode="single", objective="delta_m", methods=["static", "pcgrad"],
        tune_lr=True)), layout)
    assert searched.study_name.startswith(
        "task-weights (delta-m%, hps/lenet, static+pcgrad+lr) #")
    # What optuna-dashboard shows: the objectives by name, the hash and fingerprint as attrs.
    storage = tuning.StudyStorage(str(workdir / JOURNAL), "test")
    study = open_study(first, storage, n_trials=2)
    assert study.study_name == first.study_name
    assert study.metric_names == ["val/accuracy/left", "val/accuracy/right"]
    assert study.user_attrs["parameter_hash"] == first.parameter_hash
    assert study.user_attrs["fingerprint"] == first.fingerprint
    single = open_study(searched, storage, n_trials=2)
    assert single.metric_names == ["delta_m"]
    assert sorted(optuna.get_all_study_names(storage.optuna)) == sorted(
        [first.study_name, searched.study_name])


# ------------------------------------------------------------------- only when train reads it
def test_if_used_runs_no_study_when_train_weighting_is_not_tuned(processed: Path,
                                                                workdir: Path) -> None:
    """The DVC stage's ``multitask tune --if-used``: a study only for ``train.weighting:
    tuned``; otherwise reports that say no study ran, the journal (a persistent output) left
    as it was, and no MLflow run."""
    import mlflow

    params = write_params(workdir, processed, n_trials=1, tracking=tracking_on("if-used"))
    raw = yaml.safe_load(params.read_text())
    raw["train"]["weighting"] = "tuned"
    params.write_text(yaml.safe_dump(raw))
    first = tune_process(workdir, params, "--if-used")
    assert first.wait(timeout=300) == 0, first.stdout.read() if first.stdout else ""
    assert len(stored_trials(str(workdir / JOURNAL))) == 1  # tuned: the study ran
    journal = (workdir / JOURNAL).read_bytes()
    store = mlflow.MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = store.get_experiment_by_name("if-used")
    runs_before = len(store.search_runs([experiment.experiment_id]))

    raw["train"]["weighting"] = "equal"
    params.write_text(yaml.safe_dump(raw))
    done = subprocess.run([sys.executable, "-m", "multitask", "tune", "--params", str(params),
                           "--if-used"], cwd=workdir, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "train.weighting is 'equal': no study" in done.stderr
    for name in ("weights.json", "summary.json"):
        record = json.loads((workdir / "reports/tuning" / name).read_text())
        assert record["tuned"] is False and record["weights"] is None
        assert record["train_weighting"] == "equal"
        assert "no study ran: train.weighting is 'equal'" in record["reason"]
    assert (workdir / "reports/tuning/pareto.csv").read_text() == ""
    assert (workdir / "reports/tuning/pareto_front.csv").read_text() == ""
    assert (workdir / "reports/tuning/pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert (workdir / JOURNAL).read_bytes() == journal  # the study kept for a tuned run
    assert len(store.search_runs([experiment.experiment_id])) == runs_before

    # Without --if-used (by hand) it tunes whatever train.weighting says.
    assert run_tune(params)["trial"] == 0
    assert json.loads((workdir / "reports/tuning/weights.json").read_text())["weights"]


def test_if_used_creates_an_empty_journal_where_none_was(processed: Path,
                                                          workdir: Path) -> None:
    params = write_params(workdir, processed)  # train.weighting: equal (the default)
    record = tuning.tune(load_params(params), Layout(workdir), if_used=True)
    assert record["weights"] is None
    assert (workdir / JOURNAL).read_bytes() == b""
    assert stored_trials(str(workdir / JOURNAL)) == []  # an empty journal is a valid storage


# ------------------------------------------------------------------------------ real studies
@pytest.mark.slow
def test_a_short_study_yields_a_pareto_front_and_weights_train_uses(
        processed: Path, workdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    params = write_params(workdir, processed, n_trials=5, weight_range=[0.1, 0.9])
    assert run_tune(params)["trial"] >= 0
    summary = json.loads((workdir / "reports/tuning/summary.json").read_text())
    study = optuna.load_study(study_name=summary["study"],
                              storage=tuning.StudyStorage(str(workdir / JOURNAL), "test").optuna)
    assert study.metric_names == ["val/accuracy/left", "val/accuracy/right"]  # dashboard axes
    assert summary["trials"] == {"COMPLETE": 5}
    rows = read_csv(workdir / "reports/tuning/pareto.csv")
    assert [int(r["trial"]) for r in rows] == [0, 1, 2, 3, 4]
    points = np.array([[float(r["val/accuracy/left"]), float(r["val/accuracy/right"])]
                       for r in rows])
    front = [i for i, r in enumerate(rows) if r["on_front"] == "1"]
    for i in range(len(rows)):
        dominated = any((points[j] >= points[i]).all() and (points[j] > points[i]).any()
                        for j in range(len(rows)))
        assert dominated == (i not in front), f"trial {i} wrongly {'on' if dominated else 'off'}"
    front_rows = read_csv(workdir / "reports/tuning/pareto_front.csv")  # the plot's 2nd series
    assert [r["trial"] for r in front_rows] == [rows[i]["trial"] for i in front]
    chosen = json.loads((workdir / "reports/tuning/weights.json").read_text())
    best_mean = max(front, key=lambda i: points[i].mean())
    assert chosen["trial"] == int(rows[best_mean]["trial"])
    assert chosen["values"] == pytest.approx({"left": points[best_mean][0],
                                              "right": points[best_mean][1]})
    assert sum(chosen["weights"].values()) == pytest.approx(1.0)
    assert all(0.1 - 1e-9 <= w <= 0.9 + 1e-9 for w in chosen["weights"].values())
    assert (workdir / "reports/tuning/pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert not (workdir / "mlflow.db").exists()  # tracking.enabled false: no MLflow at all

    # Another selection rule re-selects from the stored study without running a trial.
    reselect = write_params(workdir, processed, n_trials=5, weight_range=[0.1, 0.9],
                            selection="best_worst", preference=[1.0, 3.0])
    with caplog.at_level(logging.WARNING, logger="multitask.tuning"):
        assert run_tune(reselect)["trial"] >= 0
    assert ("tune.preference is set but tune.selection is best_worst, which does not read it"
            in caplog.text)  # a preference given to a rule that ignores it is not silent
    again = json.loads((workdir / "reports/tuning/weights.json").read_text())
    assert again["trial"] == int(rows[max(front, key=lambda i: points[i].min())]["trial"])
    assert len(stored_trials(str(workdir / JOURNAL))) == 5

    # The train stage with train.weighting: tuned trains with exactly these weights.
    method = tuned_method(params, processed)
    assert method.name == "static"
    assert method.weights(torch.zeros(2)).tolist() == pytest.approx(
        [again["weights"]["left"], again["weights"]["right"]])


@pytest.mark.slow
def test_the_method_and_learning_rate_can_be_searched_too(processed: Path,
                                                          workdir: Path) -> None:
    params = write_params(workdir, processed, n_trials=4, methods=["static", "equal",
                          "uncertainty"], tune_lr=True, lr_range=[0.0005, 0.02])
    assert run_tune(params)["trial"] >= 0
    trials = stored_trials(str(workdir / JOURNAL))
    assert len({t.user_attrs["choice"]["method"] for t in trials}) > 1  # seed 0 draws several
    for trial in trials:
        choice = trial.user_attrs["choice"]
        assert choice["method"] in {"static", "equal", "uncertainty"}
        assert (choice["weights"] is not None) == (choice["method"] == "static")
        assert 0.0005 <= choice["lr"] <= 0.02
    # When the chosen trial used another method, train builds that method.
    chosen = json.loads((workdir / "reports/tuning/weights.json").read_text())
    chosen.update({"method": "uncertainty", "weights": None})
    (workdir / "reports/tuning/weights.json").write_text(json.dumps(chosen))
    assert tuned_method(params, processed).name == "uncertainty"


@pytest.mark.slow
def test_changed_search_space_starts_a_new_study_instead_of_mixing(processed: Path,
                                                                    workdir: Path) -> None:
    storage = tuning.StudyStorage(str(workdir / JOURNAL), "test").optuna
    assert run_tune(write_params(workdir, processed, n_trials=2))["trial"] >= 0
    assert run_tune(write_params(workdir, processed, n_trials=2,
                                 weight_range=[0.2, 0.8]))["trial"] >= 0
    names = optuna.get_all_study_names(storage)
    assert len(names) == 2 and all(n.startswith("task-weights (multi-objective") for n in names)
    for name in names:  # each study holds its own two trials
        assert len(optuna.load_study(study_name=name, storage=storage).trials) == 2
    summary = json.loads((workdir / "reports/tuning/summary.json").read_text())
    assert summary["fingerprint"]["search_space"]["weight_range"] == [0.2, 0.8]
    # A study of the same name made with another setup is refused, not extended.
    study = optuna.load_study(study_name=summary["study"], storage=storage)
    study.set_user_attr("fingerprint", {"search_space": "something else"})
    with pytest.raises(ValueError, match="holds trials of another search space"):
        run_tune(write_params(workdir, processed, n_trials=3, weight_range=[0.2, 0.8]))


class PruneOddTrials(optuna.pruners.BasePruner):
    """Deterministic stand-in for the median pruner: stops every odd-numbered trial."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.number % 2 == 1


@pytest.mark.slow
def test_single_objective_delta_m_prunes_from_per_epoch_reports(
        processed: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tuning.study, "make_pruner", lambda params, n_trials: PruneOddTrials())
    params = write_params(workdir, processed, mode="single", objective="delta_m", n_trials=4,
                          epochs=2, data_fraction=0.5)
    assert run_tune(params)["trial"] >= 0
    trials = stored_trials(str(workdir / JOURNAL))
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED", "COMPLETE", "PRUNED"]
    assert [t.user_attrs["epochs_run"] for t in trials] == [2, 1, 2, 1]
    summary = json.loads((workdir / "reports/tuning/summary.json").read_text())
    assert summary["trial_epochs"] == {"run": 6, "budget": 8, "saved_share": 0.25}
    assert summary["pruned_share"] == 0.5
    # Δm% is measured against single-task models trained here on the validation split.
    baselines = summary["validation_baselines"]
    assert set(baselines) == {"left", "right"}
    chosen = json.loads((workdir / "reports/tuning/weights.json").read_text())
    expected = 100 * np.mean([(chosen["values"][t] - baselines[t]) / baselines[t]
                              for t in ("left", "right")])
    assert chosen["objective"]["delta_m"] == pytest.approx(expected)
    assert chosen["trial"] == max((t for t in trials if t.state.name == "COMPLETE"),
                                  key=lambda t: t.value).number


@pytest.mark.slow
def test_mlflow_parent_run_holds_one_nested_run_per_trial(processed: Path,
                                                          workdir: Path) -> None:
    import mlflow

    params = write_params(workdir, processed, n_trials=2, epochs=2,
                          tracking=tracking_on("tuning-tests"))
    assert run_tune(params)["trial"] >= 0
    client = mlflow.MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tuning-tests").experiment_id
    runs = client.search_runs([experiment])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == ["trial-0", "trial-1"]
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["optuna.state"] == "COMPLETE"
        assert float(child.data.params["weight/left"]) + float(
            child.data.params["weight/right"]) == pytest.approx(1.0)
        history = client.get_metric_history(child.info.run_id, "val/accuracy/right")
        assert [m.step for m in history] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "tuning")}
    assert artifacts == {"tuning/weights.json", "tuning/pareto.png", "tuning/pareto.csv",
                         "tuning/summary.json"}
    chosen = json.loads((workdir / "reports/tuning/weights.json").read_text())
    assert parent.data.metrics["tune/chosen/weight/left"] == pytest.approx(
        chosen["weights"]["left"])


def test_the_parent_run_records_the_trials_and_workers_given_on_the_command_line(
        processed: Path, workdir: Path) -> None:
    """``--n-trials``/``--workers`` override tune.n_trials/tune.workers: the parent run's params
    say what this invocation ran (they said params.yaml's values: 2 trials, 1 worker)."""
    import mlflow

    params = write_params(workdir, processed, n_trials=2, tracking=tracking_on("tuning-tests"))
    run_tune(params, n_trials=3, workers=1)
    client = mlflow.MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tuning-tests").experiment_id
    [parent] = [r for r in client.search_runs([experiment])
                if "mlflow.parentRunId" not in r.data.tags]
    assert parent.data.params["tune.n_trials"] == "3"
    assert parent.data.metrics["tune/trials/complete"] == 3
    run_tune(params)  # params.yaml's 2: a run of its own, not the one that says 3
    assert len([r for r in client.search_runs([experiment])
                if "mlflow.parentRunId" not in r.data.tags]) == 2


@pytest.mark.slow
def test_rerun_on_a_finished_study_reopens_its_mlflow_run(
        processed: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DVC reruns the stage (its code changed) on a study with no trial left: the run that
    holds the trials is reopened, not an empty parent added beside it in the runs table."""
    import mlflow

    params = write_params(workdir, processed, n_trials=2, tracking=tracking_on("tuning-tests"))
    first = run_tune(params)
    client = mlflow.MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tuning-tests").experiment_id

    def parents() -> list[Any]:
        return [r for r in client.search_runs([experiment])
                if "mlflow.parentRunId" not in r.data.tags]

    [parent] = parents()
    again_chosen = run_tune(params)  # nothing to run: the same choice, reported again
    assert (again_chosen["trial"], again_chosen["weights"]) == (first["trial"], first["weights"])
    [again] = parents()
    assert again.info.run_id == parent.info.run_id and again.info.status == "FINISHED"
    nested = client.search_runs(
        [experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(r.info.run_name for r in nested) == ["trial-0", "trial-1"]
    assert again.data.metrics["tune/trials/complete"] == 2
    # Ctrl-C while that rerun rewrites the reports: the run keeps FINISHED, and the next
    # rerun finds and reopens it again
    with monkeypatch.context() as patch:
        patch.setattr(tuning, "write_reports", interrupt)
        with pytest.raises(KeyboardInterrupt):
            run_tune(params)
    [interrupted] = parents()
    assert interrupted.info.run_id == parent.info.run_id
    assert interrupted.info.status == "FINISHED" and "failure" not in interrupted.data.tags
    run_tune(params)
    assert [r.info.run_id for r in parents()] == [parent.info.run_id]
    # a changed param the stage reads (the selection rule) is a new run: the old one's
    # params, which MLflow cannot change, would misstate it
    write_params(workdir, processed, n_trials=2, tracking=tracking_on("tuning-tests"),
                 selection="best_worst")
    run_tune(params)
    assert len(parents()) == 2


def finished(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """Complete or pruned: what counts towards tune.n_trials (not FAIL)."""
    return [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]


def wait_until_mid_trial(storage: str, count: int, process: subprocess.Popen[str],
                         timeout: float = 180.0) -> None:
    """Until ``count`` trials have finished and the next one is being trained (its MLflow run
    is open: the trial records the run's id just before training starts)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[0][-3000:]
        trials = stored_trials(storage) if Path(storage).exists() else []
        if len(finished(trials)) >= count and any(
                t.state.name == "RUNNING" and "mlflow_run_id" in t.user_attrs for t in trials):
            return
        time.sleep(0.1)
    process.kill()
    pytest.fail(f"{count} finished trials and a running one did not appear in {storage}")


@pytest.mark.slow
def test_a_study_killed_midway_continues_where_it_stopped(processed: Path,
                                                          workdir: Path) -> None:
    params = write_params(workdir, processed, n_trials=5, epochs=3,
                          tracking=tracking_on("tuning-kill"))
    storage = str(workdir / JOURNAL)
    process = tune_process(workdir, params)
    wait_until_mid_trial(storage, 2, process)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    before = {t.number: t for t in stored_trials(storage)}
    finished_before = {t.number for t in finished(list(before.values()))}
    interrupted = {n for n, t in before.items() if t.state.name == "RUNNING"}
    assert 2 <= len(finished_before) < 5 and len(interrupted) == 1

    assert run_tune(params)["trial"] >= 0
    after = {t.number: t for t in stored_trials(storage)}
    assert sorted(after) == list(range(len(after)))  # numbering continues, no gaps
    for number in finished_before:  # kept as they were, not rerun
        assert after[number].state == before[number].state
        assert after[number].values == before[number].values
        assert after[number].datetime_complete == before[number].datetime_complete
    for number in interrupted:  # the killed trial is recorded as failed and run again
        assert after[number].state.name == "FAIL"
        assert_retried_once(after, number)
    new = set(after) - set(before)
    assert min(new) > max(before)
    assert len(finished(list(after.values()))) == 5
    assert len(after) == 5 + len(interrupted)
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    for number in interrupted:
        run = client.get_run(before[number].user_attrs["mlflow_run_id"])
        assert run.info.status == "FAILED"
        assert "is gone" in run.data.tags["failure"]


def assert_retried_once(trials: dict[int, optuna.trial.FrozenTrial], lost: int) -> None:
    """Trial ``lost``'s parameters ran again, to completion, as exactly one later trial."""
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == lost]
    assert len(retries) == 1 and retries[0].number > lost
    assert retries[0].state.name == "COMPLETE"
    assert retries[0].params == trials[lost].params


def assert_each_trial_once(trials: list[optuna.trial.FrozenTrial], n_trials: int) -> None:
    assert [t.number for t in trials] == list(range(n_trials))
    assert all(t.state.name == "COMPLETE" for t in trials)
    assert len({t.user_attrs["owner"]["pid"] for t in trials}) == 2  # both workers took trials


@pytest.mark.slow
def test_two_workers_record_every_trial_exactly_once(processed: Path, workdir: Path) -> None:
    params = write_params(workdir, processed, n_trials=8, epochs=2)
    process = tune_process(workdir, params, "--workers", "2")
    make_two_workers_take_trials(str(workdir / JOURNAL), [process])
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 0, output[-3000:]
    assert_each_trial_once(stored_trials(str(workdir / JOURNAL)), 8)
    summary = json.loads((workdir / "reports/tuning/summary.json").read_text())
    assert summary["trials"] == {"COMPLETE": 8} and summary["workers"] == 2


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
def test_workers_stop_when_their_parent_is_sigkilled(processed: Path, workdir: Path) -> None:
    params = write_params(workdir, processed, n_trials=500, epochs=3)  # minutes of work left
    # not a pipe: once the parent is gone nobody would read it, and a full pipe blocks a writer
    process = subprocess.Popen([sys.executable, "-m", "multitask", "tune", "--params",
                                str(params), "--workers", "2"], cwd=workdir,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    workers: list[int] = []
    while time.monotonic() < deadline and process.poll() is None:
        workers = [p for p in children(process.pid)
                   if "tune-worker" in Path(f"/proc/{p}/cmdline").read_text(errors="replace")
                   or "multiprocessing" in Path(f"/proc/{p}/cmdline").read_text(errors="replace")]
        if len(workers) >= 2 and stored_trials(str(workdir / JOURNAL)):
            break
        time.sleep(0.2)
    assert len(workers) >= 2, "the workers never started"
    process.kill()
    process.wait()
    deadline = time.monotonic() + 90  # generous: a loaded CI machine may be slow to stop them
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in workers):
        time.sleep(0.2)
    alive = [p for p in workers if Path(f"/proc/{p}").exists()
             and Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]
    assert alive == [], "workers outlived their SIGKILLed parent"


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["while the workers start", "during trials"])
def test_ctrl_c_stops_the_workers_with_one_message_not_their_tracebacks(
        processed: Path, workdir: Path, moment: str) -> None:
    """Ctrl-C in a terminal sends SIGINT to the whole process group: the parent and every
    worker. The command says it was interrupted once, with no worker's traceback (whatever
    the signal broke in the worker, even its start-up), and no trial is left running."""
    params = write_params(workdir, processed, n_trials=500, epochs=3)  # minutes of work left
    process = subprocess.Popen([sys.executable, "-m", "multitask", "tune", "--params",
                                str(params), "--workers", "2"], cwd=workdir,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)  # its own group, as a terminal's job

    def ready() -> bool:
        if moment == "during trials":
            return len(stored_trials(str(workdir / JOURNAL))) >= 2
        return len(children(process.pid)) >= 2  # spawned, still importing torch

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and not ready():
        time.sleep(0.05 if moment == "while the workers start" else 0.2)
    assert process.poll() is None, "tune ended before it could be interrupted"
    os.killpg(process.pid, signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0
    assert "interrupted" in output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-3000:]
    assert "Skipped telling trial" not in output, output[-3000:]  # Optuna's, once per worker
    states = {t.state.name for t in stored_trials(str(workdir / JOURNAL))}
    assert "RUNNING" not in states, states


@pytest.mark.slow
def test_sigint_to_the_tune_process_alone_stops_its_workers_at_once(processed: Path,
                                                                     workdir: Path) -> None:
    """``kill -INT`` of the tune process (not its group, as a terminal's Ctrl-C): its workers
    are interrupted too. They went on starting trials until the parent's grace period ran out
    and SIGTERM failed them."""
    params = write_params(workdir, processed, n_trials=500, epochs=3)  # minutes of work left
    process = tune_process(workdir, params, "--workers", "2")
    storage = str(workdir / JOURNAL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None and not (
            Path(storage).exists() and len(finished(stored_trials(storage))) >= 1):
        time.sleep(0.2)
    assert process.poll() is None, "tune ended before it could be interrupted"
    process.send_signal(signal.SIGINT)
    started = time.monotonic()
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0 and "interrupted" in output
    assert time.monotonic() - started < INTERRUPT_GRACE_S, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    states = [t.state.name for t in stored_trials(storage)]
    assert "RUNNING" not in states and states.count("FAIL") <= 2, states


@pytest.mark.parametrize("moment", ["as the trial is made", "as the claim returns"])
def test_ctrl_c_as_a_trial_is_claimed_fails_that_trial(processed: Path, workdir: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        moment: str) -> None:
    """A SIGINT that lands while a worker claims its next trial (in Optuna's ask, or as the
    claim lock is let go) fails that trial, as it fails one it interrupts in training. It was
    left RUNNING for good (kill -INT of a two-worker tune on a loaded machine)."""
    params = write_params(workdir, processed, n_trials=4, epochs=1)
    owner, function = ((optuna.Study, "ask") if moment == "as the trial is made"
                       else (tuning.trials, "claim_trial"))
    real = getattr(owner, function)

    def then_ctrl_c(*args: Any, **kwargs: Any) -> Any:
        made = real(*args, **kwargs)
        if made is not None:
            os.kill(os.getpid(), signal.SIGINT)  # Python raises it before this returns
        return made

    monkeypatch.setattr(owner, function, then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        run_tune(params, workers=1)
    assert [t.state.name for t in stored_trials(str(workdir / JOURNAL))] == ["FAIL"]


def descendants(pid: int) -> list[int]:
    """The processes below ``pid``, children first (Linux /proc)."""
    found = children(pid)
    return found + [p for child in found for p in descendants(child)]


@pytest.mark.slow
def test_killing_the_dvc_repro_that_runs_tune_stops_tune_too(processed: Path,
                                                             workdir: Path) -> None:
    """SIGTERM to ``dvc repro`` (``timeout``, a CI runner's cancel, ``kill``) kills DVC alone,
    whose stage command would train on unseen, with no run to show for it. The stage's command
    stops too: the trial it was training fails, its MLflow run ends FAILED."""
    write_params(workdir, processed, n_trials=500, epochs=3,  # minutes of work left
                 tracking=tracking_on("tuning-dvc-killed"))
    (workdir / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"tune": {
        "cmd": f"{sys.executable} -m multitask tune --params params.yaml"}}}))
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=workdir,
                   check=True)
    log = workdir / "dvc.log"
    with log.open("w") as output:
        dvc = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=workdir,
                               stdout=output, stderr=subprocess.STDOUT)
    storage = str(workdir / JOURNAL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and dvc.poll() is None and not any(
            t.state.name == "RUNNING" and "mlflow_run_id" in t.user_attrs
            for t in (stored_trials(storage) if Path(storage).exists() else [])):
        time.sleep(0.2)
    assert dvc.poll() is None, log.read_text()[-3000:]
    stage = descendants(dvc.pid)
    assert stage, "dvc repro runs no command"
    dvc.terminate()
    dvc.wait()
    deadline = time.monotonic() + 90  # a loaded CI machine may be slow to stop it
    while time.monotonic() < deadline and any(start_ticks(p) for p in stage):
        time.sleep(0.2)
    if outlived := [p for p in stage if start_ticks(p)]:
        for pid in outlived:  # not left training for the rest of the test run
            os.kill(pid, signal.SIGKILL)
        pytest.fail("tune outlived the dvc repro that ran it")
    trials = stored_trials(storage)
    assert "RUNNING" not in {t.state.name for t in trials}
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert len(failed) == 1
    # the trial interrupted may be one started after the watched one finished, stopped before
    # its MLflow run existed or was recorded on it; whatever it had, nothing is left RUNNING
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert {r.info.run_name: r.info.status for r in runs if r.info.status == "RUNNING"} == {}
    assert [r.info.status for r in runs if r.data.tags.get("stage") == "tune"] == ["FAILED"]
    if "mlflow_run_id" in failed[0].user_attrs:
        assert client.get_run(failed[0].user_attrs["mlflow_run_id"]).info.status == "FAILED"
    assert "the dvc process that runs stage tune" in log.read_text()


# ------------------------------------------------------------------ PostgreSQL (many hosts)
@pytest.mark.slow
def test_two_workers_share_a_study_in_postgresql(processed: Path, workdir: Path,
                                                 postgres_url: str) -> None:
    params = write_params(workdir, processed, n_trials=6, storage=postgres_url)
    process = tune_process(workdir, params, "--workers", "2")
    make_two_workers_take_trials(postgres_url, [process])
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 0, output[-3000:]
    assert_each_trial_once(stored_trials(postgres_url), 6)
    # the stage's DVC output: a copy of the shared study, the same trials
    copied = stored_trials(str(workdir / JOURNAL))
    assert [(t.params, t.values) for t in copied] == [
        (t.params, t.values) for t in stored_trials(postgres_url)]
    summary = json.loads((workdir / "reports/tuning/summary.json").read_text())
    assert summary["storage"].startswith("postgresql://postgres@127.0.0.1:")


def test_a_hung_claim_lock_times_out_naming_its_holder(tmp_path: Path) -> None:
    journal = str(tmp_path / "study.journal")
    holder = tuning.StudyStorage(journal, "test")
    waiter = tuning.StudyStorage(journal, "test", lock_timeout_s=0.3)
    with holder.claim_lock("s"):
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=rf"held by pid {os.getpid()} on "), \
                waiter.claim_lock("s"):
            pass
        assert time.monotonic() - started < 5
    with waiter.claim_lock("s"):  # free again once the holder lets go
        pass


@pytest.mark.slow
def test_a_hung_postgresql_claim_lock_times_out_naming_its_holder(postgres_url: str) -> None:
    holder = tuning.StudyStorage(postgres_url, "test")
    waiter = tuning.StudyStorage(postgres_url, "test", lock_timeout_s=0.5)
    with (holder.claim_lock("s"),
          pytest.raises(TimeoutError, match=r"held by PostgreSQL backend \d+"),
          waiter.claim_lock("s")):
        pass
    with waiter.claim_lock("s"):
        pass


@pytest.fixture
def postgres_study_db(postgres_url: str) -> str:
    """A database of its own on the session's PostgreSQL server (so that its only study is this
    test's)."""
    import sqlalchemy

    name = f"study_{os.getpid()}_{time.monotonic_ns()}"
    engine = sqlalchemy.create_engine(
        postgres_url.replace("postgresql://", "postgresql+psycopg2://"),
        isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    return postgres_url.rsplit("/", 1)[0] + f"/{name}"


class StudyWatch:
    """``storage`` as a test polls it: opened once, when it exists, and kept open. Opening a
    PostgreSQL storage takes seconds on a loaded machine (Optuna checks its tables), time in
    which a worker finished every short trial of a study before the test saw its first claim
    (it happened in CI)."""

    def __init__(self, storage: str) -> None:
        self.storage = storage
        self._held = contextlib.ExitStack()
        self._reader: tuning.StudyStorage | None = None
        self._locker: tuning.StudyStorage | None = None

    def __enter__(self) -> StudyWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self._held.close()

    def _open(self, lock_timeout_s: float) -> tuning.StudyStorage | None:
        if "://" not in self.storage and not Path(self.storage).exists():
            return None  # the journal file is the tune process's to create
        return self._held.enter_context(study_storage(self.storage, lock_timeout_s))

    def owners(self) -> set[int]:
        """The pids of the processes that have claimed trials of the study."""
        self._reader = self._reader or self._open(LOCK_TIMEOUT_S)
        if self._reader is None:
            return set()
        return {t.user_attrs["owner"]["pid"] for t in trials_in(self._reader)
                if "owner" in t.user_attrs}

    def locker(self) -> tuning.StudyStorage:
        """The storage :meth:`locks_free` takes locks through, opened on the first call: while
        every worker runs (opening a journal file waits for its write lock, which a paused
        worker might hold)."""
        if self._locker is None:
            self._locker = self._open(LOCK_TIMEOUT_S)  # a worker may be creating the tables
            assert self._locker is not None, f"{self.storage} does not exist"
            self._locker.lock_timeout_s = 0.2  # a claim lock held that long: a worker holds it
        return self._locker

    @contextlib.contextmanager
    def locks_free(self) -> Iterator[None]:
        """Hold, for the block, the locks a worker takes on the storage: the claim lock, and
        for a journal file Optuna's own write lock; TimeoutError/BlockingIOError when one is
        held."""
        locker = self.locker()
        (study_name,) = optuna.get_all_study_names(locker.optuna)
        with contextlib.ExitStack() as held:
            held.enter_context(locker.claim_lock(study_name))
            if "://" not in self.storage:
                handle = held.enter_context(open(f"{self.storage}.lock", "a"))
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when closed
            yield


def wait_for_claim(watch: StudyWatch, processes: list[subprocess.Popen[str]], exclude: set[int],
                   timeout: float = 180.0) -> int:
    """The pid of a worker, not in ``exclude``, once it has claimed a trial of the watched
    study (``processes``: the tune processes, which must stay alive meanwhile)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if claimed := watch.owners() - exclude:
            return claimed.pop()
        for process in processes:
            assert process.poll() is None, process.communicate()[0][-3000:]
        time.sleep(0.05)
    pytest.fail(f"no worker but {sorted(exclude)} claimed a trial of {watch.storage} in "
                f"{timeout:.0f} s")


def pause_outside_locks(watch: StudyWatch, pid: int) -> None:
    """SIGSTOP ``pid`` at a moment it holds none of the study's locks (a stalled machine that
    held one would stall every other worker, by design)."""
    watch.locker()
    for _ in range(100):
        os.kill(pid, signal.SIGSTOP)
        try:
            with watch.locks_free():
                return
        except (TimeoutError, BlockingIOError):
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.05)
    pytest.fail(f"worker {pid} held a lock of {watch.storage} whenever it was paused")


def make_two_workers_take_trials(storage: str, processes: list[subprocess.Popen[str]]) -> None:
    """Make sure two workers of one study each claim a trial: the first to claim one is
    paused (SIGSTOP, a stalled machine) until another has claimed one too. On a loaded machine
    one worker could otherwise finish every short trial while the other was still importing
    torch (it happened in CI)."""
    with StudyWatch(storage) as watch:
        first = wait_for_claim(watch, processes, set())
        pause_outside_locks(watch, first)
        try:
            wait_for_claim(watch, processes, {first})
        finally:
            os.kill(first, signal.SIGCONT)


def machine(link: Callable[[Path, Path], Layout], root: Path, name: str, processed: Path,
            storage: str, **tune: Any) -> Path:
    """The params of one "machine": a pipeline folder of its own (data/processed ``link``ed,
    its own reports/ and params.yaml), the study in the shared ``storage``."""
    folder = root / name
    folder.mkdir()
    link(folder, processed)
    return write_params(folder, processed, storage=storage, **tune)


@pytest.mark.slow
def test_two_tune_processes_on_two_machines_share_a_postgresql_study(
        processed: Path, workdir: Path, postgres_study_db: str,
        pipeline_folder: Callable[[Path, Path], Layout]) -> None:
    """Started independently, in separate folders: n_trials trials between them, each once,
    and each process returns only when the study is complete (same reports in both)."""
    folders = [machine(pipeline_folder, workdir, name, processed, postgres_study_db, n_trials=6)
               for name in ("host-a", "host-b")]
    processes = [tune_process(params.parent, params) for params in folders]
    make_two_workers_take_trials(postgres_study_db, processes)
    for process in processes:
        output = process.communicate(timeout=300)[0]
        assert process.returncode == 0, output[-3000:]
    trials = stored_trials(postgres_study_db)
    assert_each_trial_once(trials, 6)
    assert {t.user_attrs["owner"]["pid"] for t in trials} == {p.pid for p in processes}
    summaries = [json.loads((params.parent / "reports/tuning/summary.json").read_text())
                 for params in folders]
    assert all(summary["trials"] == {"COMPLETE": 6} for summary in summaries)
    chosen = [json.loads((params.parent / "reports/tuning/weights.json").read_text())
              for params in folders]
    assert chosen[0] == chosen[1]
    for params in folders:  # each folder's DVC output holds the whole shared study
        assert_each_trial_once(stored_trials(str(params.parent / JOURNAL)), 6)


@pytest.mark.slow
def test_a_sigkilled_machine_s_trial_fails_and_the_other_runs_it_again(
        processed: Path, workdir: Path, postgres_study_db: str,
        pipeline_folder: Callable[[Path, Path], Layout]) -> None:
    """Optuna's RDB heartbeat: the killed process's trial goes silent, the surviving process
    marks it FAIL after tune.grace_period_s, runs its parameters again and completes the
    study; the killed trial's MLflow run (in the shared store) ends FAILED."""
    tune = {"n_trials": 4, "epochs": 3, "heartbeat_interval_s": 1, "grace_period_s": 4,
            "tracking": tracking_on("tuning-machines")}
    killed_params, survivor_params = (
        machine(pipeline_folder, workdir, name, processed, postgres_study_db, **tune)
        for name in ("host-a", "host-b"))
    import mlflow

    # The shared store stands for a tracking server: create its tables once, before two
    # processes race to migrate the same SQLite file.
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    client.search_experiments()
    # The second machine starts once the first is lost: started together, the second took
    # every trial in CI while the first was still importing torch.
    killed = tune_process(killed_params.parent, killed_params)
    deadline = time.monotonic() + 180
    lost = None
    # Each look at the study is taken with the first process paused (SIGSTOP), so a trial seen
    # running is still running when SIGKILL comes; one storage serves every look (cheap reads:
    # in CI the process once finished its short trials between two slow ones).
    with study_storage(postgres_study_db) as opened:
        while lost is None and time.monotonic() < deadline:
            assert killed.poll() is None, killed.communicate()[0][-3000:]
            killed.send_signal(signal.SIGSTOP)
            lost = next((t for t in trials_in(opened) if t.state.name == "RUNNING"
                         and t.user_attrs.get("owner", {}).get("pid") == killed.pid
                         and "mlflow_run_id" in t.user_attrs), None)
            if lost is None:
                killed.send_signal(signal.SIGCONT)
                time.sleep(0.05)
    assert lost is not None, "the first process never started training a trial"
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    survivor = tune_process(survivor_params.parent, survivor_params)

    output = survivor.communicate(timeout=300)[0]
    assert survivor.returncode == 0, output[-3000:]
    assert f"trial {lost.number}: no heartbeat from its worker (pid {killed.pid} on " in output
    trials = {t.number: t for t in stored_trials(postgres_study_db)}
    assert trials[lost.number].state.name == "FAIL"
    assert_retried_once(trials, lost.number)
    assert len(finished(list(trials.values()))) == 4
    assert sorted(t.state.name for t in trials.values()) == ["COMPLETE"] * 4 + ["FAIL"]
    summary = json.loads((survivor_params.parent / "reports/tuning/summary.json").read_text())
    assert summary["trials"] == {"COMPLETE": 4, "FAIL": 1}
    run = client.get_run(lost.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert "no heartbeat" in run.data.tags["failure"]


def test_a_lost_trial_whose_run_is_in_another_store_is_failed_and_the_study_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Machines that share a study but each log to their own MLflow store (no shared
    MLFLOW_TRACKING_URI): the worker that finds another machine's trial lost cannot end that
    trial's run. It marks the trial FAIL, says where the run is not, and goes on; it used to
    stop its own tune with "Run with id=... not found"."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.MlflowClient(uri).search_experiments()  # this worker's store exists
    gone = subprocess.Popen(["true"])
    gone.wait()
    elsewhere = "0" * 32  # the lost worker's run, in its own store
    with study_storage(str(tmp_path / "study.journal")) as storage:
        study = optuna.create_study(storage=storage.optuna, study_name="shared")
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0.0, 1.0)})
        trial.set_user_attr("owner", {"host": HOST, "pid": gone.pid, "start": None,
                                      "since": time.time()})
        trial.set_user_attr("mlflow_run_id", elsewhere)
        with caplog.at_level(logging.WARNING, logger="multitask.tuning.storage"):
            assert fail_stale_trials(study, storage, tracking_enabled=True) == [trial.number]
        states = [t.state.name for t in study.get_trials()]
    assert states == ["FAIL", "WAITING"]  # marked FAIL, its parameters queued again
    assert f"its MLflow run {elsewhere} is not in this worker's store" in caplog.text


def test_a_diverging_trial_is_pruned_and_the_study_goes_on(processed: Path,
                                                           workdir: Path) -> None:
    """A trial whose own learning rate (drawn from tune.lr_range) makes the loss NaN stops
    like a pruned one, named as diverged; the other trials still run and one is chosen."""
    path = write_params(workdir, processed, tune_lr=True, lr_range=[1e-3, 1e4], n_trials=6)
    raw = yaml.safe_load(path.read_text())
    raw["train"]["optimizer"] = {"name": "sgd", "lr": 0.01}
    path.write_text(yaml.safe_dump(raw))
    chosen = run_tune(path)
    trials = stored_trials(str(workdir / JOURNAL))
    states = {t.number: t.state.name for t in trials}
    diverged = {t.number: t.user_attrs["diverged"] for t in trials if "diverged" in t.user_attrs}
    assert 0 < len(diverged) < len(trials) == 6
    assert all(states[n] == "PRUNED" for n in diverged)
    assert all(re.fullmatch(r"epoch 1: the training loss of task\(s\) \[.+\] is not finite "
                            r"\(NaN or inf\)", why) for why in diverged.values())
    assert chosen["trial"] not in diverged
    summary = json.loads((workdir / "reports/tuning/summary.json").read_text())
    assert summary["diverged"] == [{"trial": n, "reason": why} for n, why in diverged.items()]
