"""Measurements of an earlier run of the same comparison, read from its comparison.json where
its DVC experiments are gone.

DVC keeps an experiment as a git ref of the clone that ran it (``refs/exps/...``), which a
push of the branch does not carry: a fresh clone of the repository has the comparison's
comparison.json (committed under ``reports/comparisons/``) but none of its experiments, and
adding a seed or a row would run every old one again. A (row, seed) that comparison.json holds
is read from there instead when nothing the experiment would read has changed since it was
measured:

- the comparison's ``--set`` overrides and the row's overrides are the same (so are the
  params: the params file is one of the inputs below);
- git shows no difference between the commit it was measured on and the commit the new
  experiments derive from in any input of the pipeline: its ``dvc.yaml``, params file, the
  files its stages depend on, and the locked requirements (``requirements.lock``,
  ``pyproject.toml``), nor, when new experiments are queued, between it and the working
  tree they run from (an uncommitted edit of an input, or a new untracked file among them,
  counts as a difference). Dependencies that are another stage's outputs (``data/processed``,
  ``reports/baselines.json`` ...) follow from these, and the same params and seed give the
  same metrics on CPU (a tested promise).

Anything else runs again. Each row of the new comparison.json names, seed by seed, the commit
its measurement comes from (``commits``), so a record read back stays traceable.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

from multitask import keys
from multitask.comparison.experiments import Pipeline
from multitask.comparison.report import Measured
from multitask.comparison.rows import Spec
from multitask.io import read_json

__all__ = ["pipeline_inputs", "recorded", "unchanged_since"]

log = logging.getLogger(__name__)

ENVIRONMENT_FILES = ("requirements.lock", "pyproject.toml")


def pipeline_inputs(pipeline: Pipeline) -> list[str]:
    """The paths (relative to the repository root) whose content decides what the
    pipeline's experiments measure: its dvc.yaml and params file, every stage dependency
    that no stage of the pipeline writes (an experiment writes those afresh, whatever the
    commit holds: ``reports/baselines.json`` ...), and the environment files."""
    from dvc.repo import Repo

    root = pipeline.root.resolve()
    with Repo(str(root)) as repo:
        stages = repo.stage.collect(str(root / pipeline.dvc_yaml))
    outs = [Path(out.fs_path).resolve() for stage in stages for out in stage.outs]
    paths = {pipeline.dvc_yaml.as_posix(), pipeline.params_file.as_posix(), *ENVIRONMENT_FILES}
    for stage in stages:
        for dep in stage.deps:
            path = Path(dep.fs_path).resolve()
            if path.is_relative_to(root) and not any(path.is_relative_to(o) for o in outs):
                paths.add(path.relative_to(root).as_posix())
    return sorted(paths)


def unchanged_since(root: Path, commit: str, rev: str, paths: list[str],
                    workspace: bool = False) -> bool:
    """Whether ``commit`` exists here and git shows no difference in ``paths`` from it to
    ``rev``; with ``workspace`` (``rev`` is the commit checked out, and the experiments run
    from the working tree as it is), none to the working tree either: no uncommitted edit and
    no new untracked file among ``paths``."""
    def git(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["git", *args], cwd=root, capture_output=True)

    if git("cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        return False
    if git("diff", "--quiet", commit, rev, "--", *paths).returncode != 0:
        return False
    if not workspace:
        return True
    untracked = git("ls-files", "--others", "--exclude-standard", "--", *paths)
    return (git("diff", "--quiet", commit, "--", *paths).returncode == 0
            and untracked.returncode == 0 and not untracked.stdout.strip())


def _measured(result: dict[str, Any], row: dict[str, Any], index: int, commit: str
              ) -> Measured:
    """The ``index``-th seed of a recorded ``row``, in the shape :func:`.report.summary`
    reads (each task's primary metric, the mean accuracy and Δm%)."""
    metrics = result.get("metrics") or {}
    tasks = result[keys.TASKS]

    def per_task(values: dict[str, Any]) -> dict[str, Any]:
        return {task: {metrics.get(task, keys.ACCURACY): values[task]["per_seed"][index]}
                for task in tasks}

    report: dict[str, Any] = {keys.TASKS: per_task(row[keys.TASKS]),
                              keys.DELTA_M: row[keys.DELTA_M]["per_seed"][index]}
    if row.get(keys.MEAN_ACCURACY):
        report[keys.MEAN_ACCURACY] = row[keys.MEAN_ACCURACY]["per_seed"][index]
    run_ids = row.get("run_ids") or []
    return Measured(row["seeds"][index], row["experiments"][index],
                    run_ids[index] if index < len(run_ids) else None,
                    report, {keys.TASKS: per_task(row["baselines"])}, commit=commit)


def recorded(spec: Spec, pipeline: Pipeline, rev: str, wanted: set[str],
             workspace: bool = False) -> dict[str, Measured]:
    """The experiments named in ``wanted`` that the comparison's comparison.json holds and
    that still stand for commit ``rev`` (see the module), by name; with ``workspace`` (new
    experiments will be queued from the working tree) they must stand for its uncommitted
    changes too."""
    path = pipeline.layout.comparison_json(spec.name)
    if not wanted or not path.is_file():
        return {}
    result = read_json(path, required=(), remedy=f"delete it and rerun `multitask compare "
                       f"{spec.name} ...`")
    if (result.get("pipeline") != pipeline.dvc_yaml.as_posix()
            or result.get("set", {}) != dict(spec.common)):
        return {}
    rows = {row["label"]: row for row in result.get("rows") or []}
    inputs: list[str] | None = None
    standing: dict[str, bool] = {}  # commit -> its measurements stand for rev
    found: dict[str, Measured] = {}
    for row, seed, name in spec.experiments():
        old = rows.get(row.label)
        if name not in wanted or old is None or old.get("overrides") != dict(row.overrides):
            continue
        seeds = old.get("seeds") or []
        if seed not in seeds:
            continue
        index = seeds.index(seed)
        commit = (old.get("commits") or [result.get("commit")] * len(seeds))[index]
        if not commit:
            continue
        if commit not in standing:
            inputs = inputs if inputs is not None else pipeline_inputs(pipeline)
            standing[commit] = unchanged_since(pipeline.root, commit, rev, inputs, workspace)
            if not standing[commit]:
                log.info("%s: measured on commit %s, whose pipeline inputs differ from %s: "
                         "run again", path, commit[:7],
                         "the working tree's" if workspace else f"{rev[:7]}'s")
        if standing[commit]:
            try:
                found[name] = _measured(result, old, index, commit)
            except (KeyError, IndexError, TypeError) as error:
                raise ValueError(
                    f"{path}: row {row.label!r}, seed {seed}: no {error} where multitask "
                    "compare writes one; restore the file from git, or delete it to run its "
                    "experiments again") from None
    if found:
        log.info("%d experiments read back from %s (their inputs unchanged since): %s",
                 len(found), path, ", ".join(found))
    return found
