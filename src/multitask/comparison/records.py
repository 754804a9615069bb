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
  ``pyproject.toml``). (``multitask compare`` queues nothing while an input has uncommitted
  changes, so new experiments run that commit as it is.) Dependencies that are another
  stage's outputs (``data/processed``, ``reports/baselines.json`` ...) follow from these, and
  the same params, seed and thread count give the same metrics on CPU (a tested promise).

Anything else runs again. Each row of the new comparison.json names, seed by seed, the commit
its measurement comes from (``commits``), so a record read back stays traceable.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

from multitask import keys
from multitask.comparison.experiments import Experiment, Pipeline
from multitask.comparison.report import Measured
from multitask.comparison.rows import Spec
from multitask.io import read_json

__all__ = [
    "changed_between",
    "commits_alike",
    "head_branch",
    "measures_commit",
    "off_commit",
    "pipeline_inputs",
    "reattach_head",
    "recorded",
    "resolve_commit",
    "restore_inputs",
    "unchanged_since",
    "uncommitted",
]

log = logging.getLogger(__name__)

ENVIRONMENT_FILES = ("requirements.lock", "pyproject.toml")
# How far back `multitask compare` looks for experiments of commits alike (each commit adds
# about 0.3 s to its `dvc exp show`)
SEARCH_COMMITS = 20


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


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)


def changed_between(root: Path, commit: str, rev: str, paths: list[str]) -> list[str] | None:
    """The ``paths`` git shows changed from ``commit`` to ``rev``; None when ``commit`` is not
    a commit here."""
    if _git(root, "cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        return None
    return _git(root, "diff", "--name-only", commit, rev, "--", *paths).stdout.split()


def uncommitted(root: Path, commit: str, paths: list[str]) -> list[str]:
    """The ``paths`` whose working tree differs from ``commit``: edited, deleted, or new and
    untracked (not ignored)."""
    edited = _git(root, "diff", "--name-only", commit, "--", *paths).stdout.split()
    untracked = _git(root, "ls-files", "--others", "--exclude-standard", "--", *paths)
    return sorted({*edited, *untracked.stdout.split()})


def restore_inputs(root: Path, commit: str, paths: list[str]) -> list[str]:
    """Put back, as ``commit`` has them (working tree and index), the ``paths`` that now
    differ from it, and return them. For Ctrl-C while `dvc exp run --queue` is writing an
    experiment's params into the workspace: DVC stops there and leaves the params file
    rewritten (and staged). Queueing starts only when the pipeline's inputs have no
    uncommitted change (:func:`measures_commit`), so the commit's version is what the
    workspace held."""
    changed = [path for path in uncommitted(root, commit, paths)
               if _git(root, "cat-file", "-e", f"{commit}:{path}").returncode == 0]
    if changed and (done := _git(root, "checkout", commit, "--", *changed)).returncode != 0:
        raise RuntimeError(f"could not put back {', '.join(changed)} as commit {commit[:7]} "
                           f"has them ({done.stderr.strip()}): `git checkout {commit[:7]} -- "
                           f"{' '.join(changed)}` does it")
    return changed


def head_branch(root: Path) -> str | None:
    """The branch checked out (``refs/heads/main``); None on a detached HEAD."""
    found = _git(root, "symbolic-ref", "-q", "HEAD")
    return found.stdout.strip() if found.returncode == 0 else None


def reattach_head(root: Path, branch: str | None, commit: str) -> bool:
    """Check ``branch`` out again where DVC left HEAD detached at ``commit`` (`dvc exp run
    --queue` checks the commit out and puts the branch back when done; stopped midway it does
    not, and the next commits would be made on no branch). Only when HEAD and the branch both
    still point at ``commit``: the working tree stays as it is. Returns whether it did."""
    if branch is None or head_branch(root) is not None:
        return False
    if [resolve_commit(root, ref) for ref in ("HEAD", branch)] != [commit, commit]:
        return False
    return _git(root, "symbolic-ref", "HEAD", branch).returncode == 0


def resolve_commit(root: Path, rev: str) -> str | None:
    """The full hash of commit ``rev`` (hash, branch, tag, ``HEAD~1`` ...); None if none."""
    found = _git(root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    return found.stdout.strip() if found.returncode == 0 else None


def measures_commit(pipeline: Pipeline, commit: str, done: list[Experiment],
                    inputs: list[str], queueing: bool) -> None:
    """Refuse what would not measure ``commit`` as it is: with ``queueing``, uncommitted
    changes to the pipeline's ``inputs`` (:func:`pipeline_inputs`: queued experiments would
    run them, those run before did not); and finished experiments (``done``) that ran other
    code than the commit's."""
    if queueing and (dirty := uncommitted(pipeline.root, commit, inputs)):
        raise ValueError(
            f"uncommitted changes to the pipeline's inputs ({', '.join(dirty)}): a comparison "
            f"measures one commit ({commit[:7]}), and experiments queued now would run these "
            "changes while those run before did not. Commit them (the comparison then runs on "
            "the new commit) or set them aside (git stash), then rerun; --collect-only reads "
            "back without running anything")
    if stale := off_commit(pipeline, commit, done, inputs):
        raise ValueError("\n".join(
            f"experiment {name} ran with uncommitted changes to {', '.join(files)} (queued "
            f"from an edited working tree), so it does not measure commit {commit[:7]}: "
            f"remove it (dvc exp remove {name}) and rerun" for name, files in stale.items()))


def off_commit(pipeline: Pipeline, commit: str, experiments: list[Experiment],
               inputs: list[str]) -> dict[str, list[str]]:
    """The experiments (derived from ``commit``) that ran other code than ``commit`` holds:
    name -> those of the pipeline's ``inputs`` that differ, the params file aside (it carries
    each experiment's overrides). Such an experiment was queued from a working tree with
    uncommitted changes, so it does not measure the commit."""
    code = [path for path in inputs if path != pipeline.params_file.as_posix()]
    found = {}
    for experiment in experiments:
        if changed := changed_between(pipeline.root, commit, experiment.rev, code):
            found[experiment.name] = changed
    return found


def unchanged_since(root: Path, commit: str, rev: str, paths: list[str]) -> bool:
    """Whether ``commit`` exists here and git shows no difference in ``paths`` from it to
    ``rev``."""
    return changed_between(root, commit, rev, paths) == []


def commits_alike(root: Path, rev: str, paths: list[str], limit: int = SEARCH_COMMITS
                  ) -> list[str]:
    """``rev`` and the first-parent commits before it, newest first, up to the last one whose
    ``paths`` git shows the same as ``rev``'s (at most ``limit``): experiments queued on any
    of them ran what an experiment queued on ``rev`` would run."""
    listed = _git(root, "rev-list", "--first-parent", f"--max-count={limit}", rev)
    alike = []
    for commit in listed.stdout.split():
        if not unchanged_since(root, commit, rev, paths):
            break
        alike.append(commit)
    return alike


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
    run_ids, threads = row.get("run_ids") or [], row.get("threads") or []
    return Measured(row["seeds"][index], row["experiments"][index],
                    run_ids[index] if index < len(run_ids) else None,
                    report, {keys.TASKS: per_task(row["baselines"])}, commit=commit,
                    threads=threads[index] if index < len(threads) else None)


def recorded(spec: Spec, pipeline: Pipeline, rev: str, wanted: set[str],
             inputs: list[str] | None = None) -> dict[str, Measured]:
    """The experiments named in ``wanted`` that the comparison's comparison.json holds and
    that still stand for commit ``rev`` (see the module), by name. ``inputs``: the pipeline's
    (:func:`pipeline_inputs`) where the caller has them, else read when first needed."""
    path = pipeline.layout.comparison_json(spec.name)
    if not wanted or not path.is_file():
        return {}
    result = read_json(path, required=(), remedy=f"delete it and rerun `multitask compare "
                       f"{spec.name} ...`")
    if (result.get("pipeline") != pipeline.dvc_yaml.as_posix()
            or result.get("set", {}) != dict(spec.common)):
        return {}
    rows = {row["label"]: row for row in result.get("rows") or []}
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
            standing[commit] = unchanged_since(pipeline.root, commit, rev, inputs)
            if not standing[commit]:
                log.info("%s: measured on commit %s, whose pipeline inputs differ from %s's: "
                         "run again", path, commit[:7], rev[:7])
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
