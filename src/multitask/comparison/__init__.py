"""`multitask compare`: rows of params compared over several seeds, through DVC experiments.

Each (row, seed) is one DVC experiment, ``<name>-<row>-s<seed>``, queued in a copy of the
workspace (which stays as it is) and run by ``--jobs`` queue workers side by side, each stage
limited to its share of the CPUs (``$MULTITASK_THREADS``, in each experiment's train.json: on
CPU the thread count changes the order of float sums, so the same params and seed repeat
exactly only at the same count). The single-task baselines run with every seed too
(``train.seed`` is one of their params); rows that share a seed and the regularisation
share them through DVC's run cache (the first experiment trains them, later ones restore
them), and each experiment's Δm% is against its own seed's baselines. Experiments already
there with the same params are read back, not run again: those queued on the commit checked
out or on an earlier one whose pipeline inputs git shows unchanged (a commit to the README
while a comparison runs does not make its rerun start over), and those the comparison's
comparison.json recorded on such a commit (:mod:`.records`: a fresh clone has no
experiments). A comparison measures one commit:
nothing is queued while an input of the pipeline has uncommitted changes, and an experiment
that ran such changes is refused by name. The summary
(:mod:`.report`) goes to ``reports/comparisons/<name>/`` of the pipeline folder, and to one
MLflow parent run under which the experiments' runs are nested (:mod:`.recording`,
:mod:`multitask.tracking.groups`).

    compare(Spec("methods", expand_rows([["train.weighting", "equal", "pcgrad"]])), jobs=2)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from multitask.comparison.experiments import (
    PENDING_STATES,
    QUEUED,
    RUNNING,
    SUCCESS_STATE,
    Dvc,
    Experiment,
    Pipeline,
    experiments,
    idle_workers_gone,
    queue_all,
    queue_status,
    train_record,
    wait,
)
from multitask.comparison.recording import parent_run, record, write
from multitask.comparison.records import (
    commits_alike,
    head_branch,
    measures_commit,
    pipeline_inputs,
    reattach_head,
    recorded,
    resolve_commit,
    restore_inputs,
)
from multitask.comparison.references import add_references, read_references
from multitask.comparison.report import Measured, summary, threads_of
from multitask.comparison.rows import Row, Spec, apply_overrides, expand_rows, row_params
from multitask.config import ConfigError, flatten, parse_params, read_yaml
from multitask.cpus import available_cpus
from multitask.device import THREADS_ENV
from multitask.io import read_json
from multitask.tracking import repo_root

__all__ = ["Spec", "compare", "expand_rows", "resolve_pipeline"]

log = logging.getLogger(__name__)


def resolve_pipeline(dvc_yaml: str | Path) -> Pipeline:
    """The pipeline of ``dvc_yaml`` (``dvc.yaml``, ``sample/dvc.yaml``) in its repository."""
    path = Path(dvc_yaml).resolve()
    if not path.is_file() or path.name != "dvc.yaml":
        raise FileNotFoundError(f"{dvc_yaml}: not a dvc.yaml file; give a pipeline of this "
                                "repository, e.g. --pipeline dvc.yaml or sample/dvc.yaml")
    root = repo_root(path.parent)
    if repo_root() != root:  # the MLflow store is found from the current folder
        raise ValueError(f"{dvc_yaml}: not a pipeline of the repository here ({repo_root()}); "
                         f"run multitask compare inside {root}")
    return Pipeline(root, path.relative_to(root))


def threads_per_experiment(jobs: int) -> int:
    """The CPU threads each of ``jobs`` experiments running side by side may use."""
    return max(1, available_cpus() // jobs)


def _differences(found: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    return [f"{key}: {found.get(key)!r} there, {expected.get(key)!r} now"
            for key in sorted(set(found) | set(expected)) if found.get(key) != expected.get(key)]


def _finished(experiment: Experiment) -> bool:
    """Whether an experiment succeeded and wrote both reports a comparison reads."""
    return (experiment.state == SUCCESS_STATE and experiment.metrics is not None
            and experiment.baselines is not None)


def _plan(spec: Spec, pipeline: Pipeline, raw: dict[str, Any], present: list[Experiment],
          earlier: set[str]) -> tuple[list[tuple[Row, int, str]], list[str]]:
    """What to queue (row, seed, name), and the names already queued or running; an
    experiment of the same name that ran with other params is an error; those in ``earlier``
    (read from comparison.json) need nothing."""
    to_queue, pending = [], []
    for row, seed, name in spec.experiments():
        if name in earlier:
            continue
        same_name = [e for e in present if e.name == name]
        done = [e for e in same_name if e.state == SUCCESS_STATE]
        if done:
            expected = flatten(parse_params(apply_overrides(raw, spec.overrides(row, seed)),
                                            pipeline.params_file))
            found = flatten(parse_params(done[0].params or {}, pipeline.params_file))
            if changed := _differences(found, expected):
                raise ValueError(
                    f"experiment {name} already ran with other params ({'; '.join(changed)}); "
                    f"remove it (dvc exp remove {name}) or give the comparison another name")
        elif any(e.state in PENDING_STATES for e in same_name):
            pending.append(name)
        else:
            to_queue.append((row, seed, name))
    return to_queue, pending


def run_queued(dvc: Dvc, pipeline: Pipeline, spec: Spec, to_queue: list[tuple[Row, int, str]],
               pending: list[str], jobs: int, base: str, inputs: list[str]) -> None:
    """Queue the missing experiments, start the workers and wait for ours to finish. Ctrl-C
    while queueing puts the pipeline's ``inputs`` back as commit ``base`` has them
    (:func:`.records.restore_inputs`) and checks the branch out again where DVC left HEAD
    detached (:func:`.records.reattach_head`)."""
    before = idle_workers_gone(dvc)
    if before.active + before.idle:
        log.warning("%d DVC queue workers from an earlier start are still alive: any of our "
                    "experiments they take runs with their environment, not MULTITASK_THREADS=%s",
                    before.active + before.idle, dvc.env[THREADS_ENV])
    if to_queue:
        log.info("queueing %d experiments: DVC stashes and restores the workspace's uncommitted "
                 "changes for each, so leave its files alone until 'running' shows (an edit "
                 "made meanwhile can be lost)", len(to_queue))
    branch = head_branch(pipeline.root)
    try:
        queue_all(dvc, pipeline,
                  [(name, spec.overrides(row, seed)) for row, seed, name in to_queue], pending)
    except KeyboardInterrupt:
        if restored := restore_inputs(pipeline.root, base, inputs):
            log.warning("put back %s as commit %s has them: Ctrl-C stopped DVC while it was "
                        "writing an experiment's params into the workspace",
                        ", ".join(restored), base[:7])
        if reattach_head(pipeline.root, branch, base):
            log.warning("checked out %s again: Ctrl-C stopped DVC while it had commit %s "
                        "checked out detached", branch.removeprefix("refs/heads/"), base[:7])
        raise
    names = {name for *_, name in to_queue} | set(pending)
    watched = {task: name for task, (name, state) in queue_status(dvc).tasks.items()
               if name in names and (task not in before.tasks or state in (QUEUED, RUNNING))}
    log.info("running %d experiments (%d already queued) with %d workers, %s threads each",
             len(to_queue), len(pending), min(jobs, len(watched)), dvc.env[THREADS_ENV])
    with tqdm(total=len(watched), desc=f"compare {spec.name}", unit="experiment") as bar:
        wait(dvc, watched, jobs, on_done=lambda done: bar.update(done - bar.n))


def _latest(found: list[Experiment]) -> dict[str, Experiment]:
    """The finished experiments by name, the newest commit's where a name ran on several
    (:func:`.experiments.experiments` lists the newest commit first)."""
    latest: dict[str, Experiment] = {}
    for experiment in found:
        if _finished(experiment):
            latest.setdefault(experiment.name, experiment)
    return latest


def _alike(dvc: Dvc, pipeline: Pipeline, rev: str, alike: list[str]) -> list[Experiment]:
    """The experiments derived from ``rev`` or from the commits ``alike`` it
    (:func:`.records.commits_alike`: the first-parent commits before it with the same
    pipeline inputs), in one `dvc exp show --rev REV --num N`."""
    return [e for e in experiments(dvc, pipeline, rev, len(alike)) if e.baseline in alike]


def _collect(dvc: Dvc, pipeline: Pipeline, spec: Spec, rev: str, alike: list[str],
             found: list[Experiment], earlier: dict[str, Measured]
             ) -> dict[str, list[Measured]]:
    """Each row's measurements, seed by seed: from the experiments ``found`` (:func:`_alike`
    ``rev``), else from ``earlier`` (read from comparison.json)."""
    present = _latest(found)
    missing = [name for *_, name in spec.experiments()
               if name not in present and name not in earlier]
    if missing:
        raise RuntimeError(f"no results for experiment {', '.join(missing)} in `dvc exp show "
                           f"--rev {rev[:7]} --num {len(alike)}` (not run yet, or run on a "
                           "commit whose pipeline inputs differ: --rev names it); run "
                           "`multitask compare` without --collect-only")
    from_earlier = sorted({present[name].baseline[:7] for *_, name in spec.experiments()
                           if name in present and present[name].baseline != rev})
    if from_earlier:
        log.info("read back experiments of earlier commit(s) %s, whose pipeline inputs are "
                 "those of %s", ", ".join(from_earlier), rev[:7])
    measured: dict[str, list[Measured]] = {row.label: [] for row in spec.rows}
    for row, seed, name in spec.experiments():
        if name not in present:
            measured[row.label].append(earlier[name])
            continue
        found = present[name]
        record = train_record(dvc, pipeline, found)
        measured[row.label].append(Measured(seed, name, record.get("run_id"),
                                            found.metrics or {}, found.baselines or {},
                                            found.baseline, threads_of(record)))
    return measured


def compare(spec: Spec, pipeline_file: str | Path = "dvc.yaml", *, jobs: int = 1,
            collect_only: bool = False, rev: str | None = None,
            against: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run (or with ``collect_only`` only read back) every experiment of ``spec`` on the
    pipeline ``pipeline_file``; write ``reports/comparisons/<name>/`` (comparison.json, .md,
    .png) beside it and group the runs in MLflow; return the summary (comparison.json).
    ``against``: comparisons whose single-task baselines each row's Δm% is also taken
    against, seed by seed (:func:`.references.add_references`).

    The experiments are those derived from the commit checked out when the command starts
    (or ``rev``, with ``collect_only``), or from the first-parent commits before it with the
    same pipeline inputs: a commit made while they run does not hide them."""
    if jobs < 1:
        raise ValueError(f"--jobs {jobs}: run at least one experiment at a time")
    if not spec.seeds or len(set(spec.seeds)) != len(spec.seeds):
        raise ValueError(f"--seeds {' '.join(map(str, spec.seeds))}: give distinct seeds, "
                         "at least one (three or more for an interval worth reading)")
    if negative := [seed for seed in spec.seeds if seed < 0]:
        raise ValueError(f"--seeds {' '.join(map(str, spec.seeds))}: {negative[0]} is "
                         "negative; train.seed takes 0 or more")
    pipeline = resolve_pipeline(pipeline_file)
    params_path = pipeline.root / pipeline.params_file
    raw = read_yaml(params_path, "the pipeline's params file")
    if not isinstance(raw, dict):
        raise ConfigError(f"{pipeline.params_file}: expected a mapping of sections")
    parsed = row_params(spec, raw, pipeline.params_file)
    references = read_references(pipeline, spec.name, against, spec.seeds)
    if jobs > available_cpus() and not collect_only:
        log.warning("--jobs %d on %d available CPUs: the experiments take turns on the cores, "
                    "one thread each, no sooner done than with --jobs %d", jobs,
                    available_cpus(), available_cpus())
    threads = os.environ.get(THREADS_ENV) or str(threads_per_experiment(jobs))
    dvc = Dvc(pipeline.root, env={THREADS_ENV: threads})
    if rev is not None and not collect_only:
        raise ValueError(f"--rev {rev}: experiments are queued on the commit checked out; "
                         "--rev only reads back (with --collect-only)")
    base = dvc.head() if rev is None else resolve_commit(pipeline.root, rev)
    if base is None:
        raise ValueError(f"--rev {rev}: not a commit of {pipeline.root}; give a commit hash, "
                         "branch or tag, e.g. the commit a comparison.json records")
    inputs = pipeline_inputs(pipeline)
    alike = commits_alike(pipeline.root, base, inputs)
    present = _alike(dvc, pipeline, base, alike)
    names = {name for *_, name in spec.experiments()}
    measures_commit(pipeline, base, [e for e in present if e.name in names and _finished(e)],
                    inputs, queueing=not collect_only)
    done = {e.name for e in present if _finished(e)}
    earlier = recorded(spec, pipeline, base, {name for name in names if name not in done},
                       inputs)
    to_queue, pending = _plan(spec, pipeline, raw, present, set(earlier))
    first = parsed[spec.rows[0].label]
    if collect_only:
        log.info("--collect-only: reading back %d experiments", len(spec.experiments()))
    elif to_queue or pending:
        parent_run(spec.name, first)  # before the experiments, which may share a new store
        run_queued(dvc, pipeline, spec, to_queue, pending, jobs, base, inputs)
        present = _alike(dvc, pipeline, base, alike)  # with those that ran meanwhile
    else:
        log.info("all %d experiments already ran: reading them back", len(spec.experiments()))
    try:
        measured = _collect(dvc, pipeline, spec, base, alike, present, earlier)
    except RuntimeError as error:
        summary_file = pipeline.layout.comparison_json(spec.name)
        written = read_json(summary_file).get("commit") if summary_file.is_file() else None
        if collect_only and written and written != base:
            raise RuntimeError(f"{error}\n{summary_file} was written from the experiments of "
                               f"commit {written[:7]}: add --rev {written} to read them back"
                               ) from None
        raise
    result = summary(spec, measured,
                     pipeline=pipeline.dvc_yaml.as_posix(),
                     params_file=pipeline.params_file.as_posix())
    result["commit"] = base
    add_references(result, references)
    parent = parent_run(spec.name, first)
    result["mlflow"] = {"experiment": first.tracking.experiment or first.data.dataset,
                        "parent_run_id": parent}
    layout = pipeline.layout
    files = [layout.comparison_json(spec.name), layout.comparison_md(spec.name),
             layout.comparison_png(spec.name)]
    if parent is None:
        write(result, files)
    else:
        record(result, parent, files)
    log.info("%s", files[1])
    return result
