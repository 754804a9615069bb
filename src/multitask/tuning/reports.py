"""``reports/tuning/``: the chosen weights (read by ``train`` when ``train.weighting: tuned``),
every trial and the Pareto front as CSVs (one DVC scatter plot, the front its own series) and a
PNG, and the study summary; written atomically.

Each objective is a main task's validation primary metric in its direction (accuracy up, a
regression task's MAE down). The selection rules compare the front's trials on per-task scores
where higher is better: with classification tasks only, the accuracies themselves (as before
task kinds); when a task is judged on MAE, every task's value as a fraction of the best value
on the front (``value / best`` for accuracy, ``best / value`` for MAE; 1 is the best), so that
accuracies and errors in any unit average and compare on one scale.
"""

from __future__ import annotations

import csv
import shutil
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from multitask import keys
from multitask.io import atomic_open, atomic_path, write_json
from multitask.layout import Layout
from multitask.training.plots import save_figure
from multitask.tuning.storage import (
    DIVERGED_ATTR,
    VALUES_ATTR,
    StudyStorage,
    count_states,
)
from multitask.tuning.study import Setup


def pareto_front(points: Sequence[Sequence[float]],
                 higher_is_better: Sequence[bool] | None = None) -> list[int]:
    """Indices of the points no other point dominates (every objective maximised, or minimised
    where ``higher_is_better`` says False)."""
    array = np.asarray(points, dtype=float)
    if higher_is_better is not None:
        array = array * np.where(np.asarray(higher_is_better, dtype=bool), 1.0, -1.0)
    front = []
    for index, point in enumerate(array):
        dominated = np.any(np.all(array >= point, axis=1) & np.any(array > point, axis=1))
        if not dominated:
            front.append(index)
    return front


def select(points: Sequence[Sequence[float]], rule: str,
           preference: Sequence[float] | None = None) -> int:
    """Index of the point ``rule`` prefers (the first on ties).

    ``best_mean``: highest mean; ``best_worst``: highest minimum; ``preference``: highest mean
    weighted by ``preference`` (normalised to sum to one).
    """
    array = np.asarray(points, dtype=float)
    if rule == "best_mean":
        scores = array.mean(axis=1)
    elif rule == "best_worst":
        scores = array.min(axis=1)
    elif rule == "preference" and preference is not None:
        scores = array @ (np.asarray(preference, dtype=float) / float(np.sum(preference)))
    else:
        raise ValueError(f"selection rule '{rule}' needs a preference vector or is unknown")
    return int(np.argmax(scores))


def selection_scores(points: Sequence[Sequence[float]], higher_is_better: Sequence[bool]
                     ) -> np.ndarray:
    """What :func:`select` compares (higher is better for every task): the values themselves
    when every objective is maximised; otherwise each value as a fraction of its column's best,
    ``value / best`` where higher is better and ``best / value`` where lower is (an MAE of 0 is
    the best, 1)."""
    array = np.asarray(points, dtype=float)
    better = np.asarray(higher_is_better, dtype=bool)
    if better.all():
        return array
    best = np.where(better, array.max(axis=0), array.min(axis=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(better, array / best, best / array)
    return np.where(array == best, 1.0, ratio)


def pareto_figure(points: np.ndarray, front: Sequence[int], chosen: int, names: Sequence[str],
                  title: str, metrics: Sequence[str] | None = None) -> Any:
    """Validation primary metric (``metrics``, accuracy by default) of the first two tasks per
    trial; the front and the choice marked."""
    labels = [f"val {metric} ({name})" for name, metric in
              zip(names, metrics or [keys.ACCURACY] * len(names), strict=True)]
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5), constrained_layout=True)
    if points.shape[1] == 1:  # one task: accuracy per completed trial
        ax.scatter(np.arange(len(points)), points[:, 0], color="tab:blue")
        ax.scatter([chosen], [points[chosen, 0]], marker="*", s=250, color="tab:red",
                   label="chosen")
        ax.set_xlabel("completed trial")
        ax.set_ylabel(labels[0])
    else:
        ax.scatter(points[:, 0], points[:, 1], color="lightgray", label="trial")
        edge = points[sorted(front, key=lambda i: points[i, 0])]
        ax.plot(edge[:, 0], edge[:, 1], marker="o", color="tab:blue", label="Pareto front")
        ax.scatter([points[chosen, 0]], [points[chosen, 1]], marker="*", s=250,
                   color="tab:red", label="chosen", zorder=3)
        ax.set_xlabel(labels[0])
        ax.set_ylabel(labels[1])
    # a study's name alone runs to 60 characters: wrapped, or the figure cuts the title off
    ax.set_title("\n".join(part for line in title.splitlines()
                           for part in textwrap.wrap(line, 60, break_long_words=False)),
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _trial_row(trial: FrozenTrial, setup: Setup) -> dict[str, Any]:
    choice = trial.user_attrs["choice"]
    row: dict[str, Any] = {"trial": trial.number}
    metrics = setup.task_metrics
    row.update({keys.task_metric(keys.VAL, k, metrics.get(k, keys.ACCURACY)): v
                for k, v in trial.user_attrs[VALUES_ATTR].items()})
    row.update({keys.weight(name): (choice["weights"] or {}).get(name, "")
                for name in setup.space.tasks})
    row.update({"method": choice["method"], "lr": choice["lr"] if choice["lr"] else ""})
    return row


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_open(path, "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _seconds(trials: Sequence[FrozenTrial]) -> dict[str, float | None]:
    """Wall time per trial; ``min`` is the least disturbed by other load on the machine."""
    durations = [t.duration.total_seconds() for t in trials if t.duration is not None]
    if not durations:
        return {"min": None, "median": None, "mean": None, "total": 0.0}
    return {"min": round(min(durations), 2), "median": round(float(np.median(durations)), 2),
            "mean": round(float(np.mean(durations)), 2), "total": round(sum(durations), 1)}


def write_reports(setup: Setup, storage: StudyStorage, study: optuna.Study, n_trials: int,
                  workers: int) -> dict[str, Any]:
    """``weights.json``, ``pareto.csv``, ``pareto.png`` and ``summary.json``; returns weights."""
    tune = setup.params.tune
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    diverged = [{"trial": t.number, "reason": t.user_attrs[DIVERGED_ATTR]} for t in trials
                if t.state == TrialState.PRUNED and DIVERGED_ATTR in t.user_attrs]
    if not complete:
        why = (f"; {len(diverged)} diverged (non-finite loss): narrow tune.lr_range or "
               "tune.weight_range, or lower train.optimizer.lr" if diverged else "")
        raise RuntimeError(f"study {setup.study_name} in {storage.describe()} has no completed "
                           f"trial; raise tune.n_trials or choose a gentler tune.pruner{why}")
    names = list(setup.space.objectives)
    points = np.array([[t.user_attrs[VALUES_ATTR][n] for n in names] for t in complete])
    directions = [setup.higher_is_better[n] for n in names]
    front = pareto_front(points, directions)
    if setup.single:
        best = study.best_trial
        chosen = complete.index(next(t for t in complete if t.number == best.number))
        selection = f"highest {tune.objective} (single-objective)"
    else:
        chosen = front[select(selection_scores(points[front], directions), tune.selection,
                              tune.preference)]
        selection = tune.selection
    trial = complete[chosen]
    choice = trial.user_attrs["choice"]
    weights = {
        "weights": choice["weights"],
        "method": choice["method"],
        "lr": choice["lr"],
        "selection": selection,
        "trial": trial.number,
        "values": trial.user_attrs[VALUES_ATTR],
        "objective": dict(zip(setup.objective_names, trial.values, strict=True)),
        "mode": tune.mode,
        "study": setup.study_name,
        "split": "val",
    }
    rows = [{**_trial_row(t, setup), "on_front": int(i in front), "chosen": int(i == chosen)}
            for i, t in enumerate(complete)]
    layout = setup.layout
    _write_rows(layout.pareto_csv, rows)
    _write_rows(layout.pareto_front_csv, [row for row in rows if row["on_front"]])
    save_figure(pareto_figure(points, front, chosen, names,
                              f"{setup.study_name}\n{len(complete)} trials, {selection}",
                              [setup.task_metrics[n] for n in names]),
                layout.pareto_png)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    finished = complete + pruned
    epochs_run = sum(int(t.user_attrs.get("epochs_run", tune.epochs)) for t in finished)
    budget = len(finished) * tune.epochs
    write_json(layout.tuning_summary, {
        "study": setup.study_name,
        "storage": storage.describe(),
        "mode": tune.mode,
        "objectives": setup.objective_names,
        "n_trials": n_trials,
        "workers": workers,
        "trials": {state: n for state, n in count_states(study).items() if n},
        "pruned_share": round(len(pruned) / len(finished), 4),
        "diverged": diverged,  # pruned because their loss became NaN or infinite
        "trial_epochs": {"run": epochs_run, "budget": budget,
                         "saved_share": round(1 - epochs_run / budget, 4)},
        "seconds_per_trial": _seconds(finished),
        "pareto_front": [{"trial": complete[i].number, "val_accuracy": dict(zip(
            names, points[i].tolist(), strict=True))} for i in front],
        "best": {"trial": trial.number, "objective": weights["objective"]},
        "validation_baselines": study.user_attrs.get("validation_baselines"),
        "fingerprint": setup.fingerprint,
    })
    write_json(layout.tuned_weights, weights)
    return weights


def write_not_tuned(layout: Layout, weighting: str) -> dict[str, Any]:
    """The stage's outputs when ``train.weighting`` is not ``tuned`` (``multitask tune
    --if-used``): no study runs, and every report says so instead of holding an earlier
    study's choice that train would not read. The study journal, the stage's persistent
    output, is left as it is (a later tuned run continues it) or created empty."""
    reason = (f"no study ran: train.weighting is {weighting!r}, so train does not read tuned "
              "weights (set train.weighting: tuned, or run `multitask tune` by hand)")
    record = {"tuned": False, "weights": None, "train_weighting": weighting, "reason": reason}
    layout.tuning_dir.mkdir(parents=True, exist_ok=True)
    for path in (layout.pareto_csv, layout.pareto_front_csv):  # no trial: no row, no header
        with atomic_open(path, "w"):
            pass
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5), constrained_layout=True)
    ax.axis("off")
    ax.text(0.5, 0.5, f"No study ran:\ntrain.weighting is {weighting!r}", ha="center",
            va="center", fontsize=12)
    save_figure(fig, layout.pareto_png)
    write_json(layout.tuning_summary, record)
    if not layout.study_journal.exists():
        with atomic_open(layout.study_journal, "w"):
            pass
    write_json(layout.tuned_weights, record)
    return record


def write_snapshot(storage: StudyStorage, study_name: str, journal: Path) -> bool:
    """A copy of a study kept elsewhere (PostgreSQL, another journal file) in the journal file
    the tune stage declares to DVC, written atomically; return whether one was written.

    With the journal file as storage the study is already there. Otherwise the copy makes the
    stage's output exist (``dvc repro`` needs it), puts the shared study's trials in the DVC
    cache beside the reports, and opens with ``optuna-dashboard`` without the database. The
    journal's other studies stay: the copy replaces only its own study's earlier copy (the file
    was once rewritten from scratch, losing every other study it held).
    """
    if not storage.is_url and Path(storage.location).resolve() == journal.resolve():
        return False
    journal.parent.mkdir(parents=True, exist_ok=True)
    if journal.is_file():  # mends a record cut short, refuses an unreadable journal
        StudyStorage(str(journal), str(journal))
    with atomic_path(journal) as tmp:
        if journal.is_file():
            shutil.copyfile(journal, tmp)
        target = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(tmp)))
        if study_name in optuna.get_all_study_names(target):
            optuna.delete_study(study_name=study_name, storage=target)
        optuna.copy_study(from_study_name=study_name, from_storage=storage.optuna,
                          to_storage=target)
    return True
