"""The comparison's experiments through DVC: queued, run side by side, read back.

Each (row, seed) is queued with `dvc exp run <pipeline> --queue --name <name> -S ...`, which
stashes the workspace and runs it in a copy: the workspace keeps its files, but an edit made
while DVC has them stashed (about 1.5 s per experiment queued) can be lost. `dvc queue
start --jobs N` then starts N workers; they are spawned by that command and inherit its
environment, which is how ``$MULTITASK_THREADS`` reaches each stage. A worker still alive
from an earlier `dvc queue start` keeps its own and takes any task queued meanwhile, so idle
ones are stopped first (:func:`idle_workers_gone`). Results come back from
`dvc exp show --json` (the metrics of ``reports/metrics.json`` and ``reports/baselines.json``)
and `git show <experiment>:reports/train.json` (its MLflow run id and thread counts).

One module, not several: every DVC command a comparison runs and the reading of its text
answers (`queue status`, `exp show --json`, `queue logs`) are one place to fix when DVC changes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multitask.layout import Layout
from multitask.processes import alive

log = logging.getLogger(__name__)

# Each poll is a `dvc queue status` process, about a second of CPU: every 5 s that slowed a
# two-thread experiment on two cores by 14 % (4,269 against 4,909 training images/s).
POLL_S = 30.0
IDLE_WORKER_EXIT_S = 40.0
STALLED_POLLS = 2  # a worker takes a few seconds to register after `dvc queue start`
LOG_TAIL_LINES = 40
_TASK = re.compile(r"[0-9a-f]{7}")
DONE, FAILED, RUNNING, QUEUED = ("Success", "Failed"), "Failed", "Running", "Queued"
# `dvc exp show --json` executor states
SUCCESS_STATE, PENDING_STATES = "success", ("queued", "running")


@dataclass(frozen=True)
class Pipeline:
    """A pipeline of the repository at ``root``: its ``dvc.yaml`` and the params beside it."""

    root: Path
    dvc_yaml: Path  # relative to root

    @property
    def folder(self) -> Path:
        return self.dvc_yaml.parent

    @property
    def params_file(self) -> Path:
        """``params.yaml`` beside ``dvc.yaml``, relative to the root (as DVC names it)."""
        return self.folder / Layout().params

    @property
    def layout(self) -> Layout:
        return Layout(self.root / self.folder)

    def path(self, artifact: Path) -> str:
        """An artifact of :class:`Layout` (relative form) as DVC and git name it."""
        return (self.folder / artifact).as_posix()


@dataclass(frozen=True)
class Experiment:
    """One experiment of `dvc exp show --json`."""

    name: str
    rev: str
    state: str  # success | failed | queued | running
    baseline: str  # the commit it derives from (it was queued on)
    params: dict[str, Any] | None  # the pipeline's params file
    metrics: dict[str, Any] | None  # reports/metrics.json
    baselines: dict[str, Any] | None  # reports/baselines.json


# An experiment's stages run in its copy of the repository, with the pipeline's folder as the
# working directory (the root; sample/, whose code is ../src; examples/<name>/, ../../src). The
# package is installed editable from the workspace's src/, so without this the copy's
# `multitask` would import the workspace's code as it is when the stage starts, not the code
# the experiment was queued with.
COPY_SOURCES = ("src", "../src", "../../src")


def copy_sources_first(pythonpath: str = "") -> str:
    """``PYTHONPATH`` that makes a stage import the package of its own copy: relative entries,
    resolved from the stage's working directory, ahead of the editable install."""
    return os.pathsep.join([*COPY_SOURCES, *([pythonpath] if pythonpath else [])])


def run_to_files(argv: list[str], cwd: Path, env: dict[str, str]
                 ) -> subprocess.CompletedProcess[str]:
    """``argv``'s exit status and output, read from temporary files once it has exited.

    Not through pipes: `dvc queue start` returns at once but the workers it spawns inherit its
    stdout and stderr and live until the queue is empty, and a pipe reaches end-of-file only
    when every holder has closed it, so ``capture_output`` would block until the last
    experiment finished (no progress, no check for removed tasks or stalled workers)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        code = subprocess.run(argv, cwd=cwd, env=env, stdout=out, stderr=err,
                              stdin=subprocess.DEVNULL).returncode
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(argv, code, out.read(), err.read())


class Dvc:
    """DVC and git commands in the repository, with this interpreter's scripts (`dvc`,
    `multitask`, which the stages and queue workers call) first on PATH and, for the queue
    workers' stages, the copy's own sources first on PYTHONPATH (:func:`copy_sources_first`)."""

    def __init__(self, root: Path, env: dict[str, str] | None = None) -> None:
        self.root = root
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        self.env = {**os.environ, "PATH": path,
                    "PYTHONPATH": copy_sources_first(os.environ.get("PYTHONPATH", "")),
                    **(env or {})}

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = run_to_files(["dvc", *args], self.root, self.env)
        if check and done.returncode != 0:
            raise RuntimeError(f"dvc {' '.join(args)} exited {done.returncode} in {self.root}:"
                               f"\n{(done.stdout + done.stderr).strip()[-3000:]}")
        return done

    def head(self) -> str:
        """The commit checked out (what queued experiments are derived from)."""
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=self.root, check=True,
                              capture_output=True, text=True).stdout.strip()

    def git_show(self, rev: str, path: str) -> str | None:
        shown = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=self.root, env=self.env,
                               capture_output=True, text=True)
        return shown.stdout if shown.returncode == 0 else None


def queue(dvc: Dvc, pipeline: Pipeline, name: str, overrides: list[tuple[str, str]]) -> None:
    """Queue one experiment; ``++`` sets a key whether or not the params file spells it."""
    settings = [item for key, value in overrides
                for item in ("-S", f"{pipeline.params_file.as_posix()}:++{key}={value}")]
    dvc("exp", "run", pipeline.dvc_yaml.as_posix(), "--queue", "--name", name, *settings)


def queue_all(dvc: Dvc, pipeline: Pipeline, planned: list[tuple[str, list[tuple[str, str]]]],
              pending: list[str]) -> None:
    """Queue each (name, overrides) of ``planned``. Ctrl-C names those of them and of
    ``pending`` (queued earlier) that wait in the queue: no worker was started for them."""
    try:
        for name, overrides in planned:
            queue(dvc, pipeline, name, overrides)
    except KeyboardInterrupt:
        names = {name for name, _ in planned} | set(pending)
        states = _states_after_ctrl_c(dvc)
        waiting = sorted(name for name, state in (states or {}).values()
                         if name in names and state == QUEUED)
        if states is None:
            log.warning("interrupted while queueing; `dvc queue status` lists what this "
                        "comparison left in DVC's queue (`dvc queue remove <name>` removes one)")
        elif waiting:
            log.warning("interrupted while queueing: %d experiment(s) of this comparison wait "
                        "in DVC's queue, not started (dvc queue status); rerun the same command "
                        "to run them and write the comparison, or remove them with `dvc queue "
                        "remove %s`", len(waiting), " ".join(waiting))
        raise


@dataclass(frozen=True)
class QueueStatus:
    """`dvc queue status`: its tasks and how many workers are alive."""

    tasks: dict[str, tuple[str, str]]  # task id -> (experiment name, Queued | Running | ...)
    active: int
    idle: int


def queue_status(dvc: Dvc) -> QueueStatus:
    found = {}
    status = dvc("queue", "status").stdout
    for line in status.splitlines():
        parts = line.split()
        if len(parts) >= 4 and _TASK.fullmatch(parts[0]):
            found[parts[0]] = (parts[1], parts[-1])
    workers = re.search(r"Worker status: (\d+) active, (\d+) idle", status)
    return QueueStatus(found, *(map(int, workers.groups()) if workers else (0, 0)))


def task_process_runs(root: Path, task: str) -> bool:
    """Whether the process DVC started for queue task ``task`` (the id `dvc queue status`
    shows, the start of the experiment's stash revision) still runs without having reported
    its exit: DVC records ``pid`` and ``returncode`` in
    ``.dvc/tmp/exps/run/<revision>/<revision>.json``. False without such a record."""
    for folder in (root / ".dvc" / "tmp" / "exps" / "run").glob(f"{task}*"):
        try:
            record = json.loads((folder / f"{folder.name}.json").read_text())
        except (OSError, ValueError):
            continue
        pid = record.get("pid") if isinstance(record, dict) else None
        if isinstance(pid, int) and record.get("returncode") is None and alive(pid, None):
            return True
    return False


def idle_workers_gone(dvc: Dvc, timeout_s: float = IDLE_WORKER_EXIT_S) -> QueueStatus:
    """Stop idle queue workers and wait for them to exit: a worker takes any task queued while
    it lives and runs it with the environment it started with, not the one given to the next
    `dvc queue start`. An idle worker leaves by itself about ten seconds after its last task,
    but on a loaded machine one was seen still alive minutes later, so `dvc queue stop` (which
    lets a worker finish its running task first) asks them to leave once, when none is busy.
    Busy workers are neither stopped nor waited for."""
    status = queue_status(dvc)
    if status.idle and not status.active:
        dvc("queue", "stop")
    deadline = time.monotonic() + timeout_s
    while status.idle and not status.active and time.monotonic() < deadline:
        time.sleep(1.0)
        status = queue_status(dvc)
    return status


def wait(dvc: Dvc, watched: dict[str, str], jobs: int,
         on_done: Callable[[int], None] = lambda done: None, poll_s: float = POLL_S) -> None:
    """Start ``jobs`` workers and wait for the tasks ``watched`` (task id -> experiment name);
    ``on_done(count finished)`` after each poll. A failed experiment raises, naming it and the
    tail of its `dvc queue logs`.

    Workers can leave early: one can exit while tasks still wait (after a fast or a failed
    experiment, say), and a killed one is gone. Whenever fewer workers live than the work left
    could use (the busy ones and one per task waiting, at most ``jobs``) for
    :data:`STALLED_POLLS` polls in a row, `dvc queue start --jobs` starts the missing ones
    again (it starts only the worker numbers that are not alive).

    A killed worker also leaves its task marked Running for good: no worker takes it again and
    DVC never marks it failed. A running task has an active worker, so a task of ours that is
    Running while no worker is active for :data:`STALLED_POLLS` polls in a row (not one: a
    worker takes a few seconds to register) and whose process is gone
    (:func:`task_process_runs`: on a loaded machine a busy worker can miss the status query's
    one-second reply window, and one experiment was called orphaned while it ran) raises,
    naming the `dvc queue kill` that marks it failed so that the next run queues it again; but
    only once none of ours waits in the queue: until then the workers started again run those
    (and DVC sometimes marks a task Success only well after its worker has left). Ctrl-C warns
    which go on."""
    try:
        _wait(dvc, watched, jobs, on_done, poll_s)
    except KeyboardInterrupt:
        states = _states_after_ctrl_c(dvc)
        log.warning("%s", "interrupted: experiments of this comparison may go on in DVC's queue "
                    "in the background (dvc queue status); rerun the same command to wait for "
                    "them, or stop them with `dvc queue kill` / `dvc queue remove`"
                    if states is None else _interrupted(watched, states))
        raise


def _states_after_ctrl_c(dvc: Dvc) -> dict[str, tuple[str, str]] | None:
    """The queue's tasks for Ctrl-C's warning; None when `dvc queue status` fails then (the
    interruption, not that failure, is what the user should see)."""
    try:
        return queue_status(dvc).tasks
    except Exception:
        log.debug("dvc queue status failed after Ctrl-C", exc_info=True)
        return None


def _wait(dvc: Dvc, watched: dict[str, str], jobs: int, on_done: Callable[[int], None],
          poll_s: float) -> None:
    dvc("queue", "start", "--jobs", str(jobs))
    short = 0  # polls in a row with fewer workers alive than the work left could use
    orphaned = 0  # polls in a row with a task of ours Running and no worker active
    missing = 0  # polls in a row with a task of ours in no list of `dvc queue status`
    while True:
        status = queue_status(dvc)
        states = status.tasks
        # DVC lists the running tasks, then the queued: one a worker takes between the two
        # reads is in neither, for that one poll
        if gone := sorted(watched[task] for task in watched if task not in states):
            missing += 1
            if missing == STALLED_POLLS:
                raise RuntimeError(f"experiment {', '.join(gone)}: no longer in `dvc queue "
                                   "status` (removed from the queue?); rerun the same command "
                                   "to queue what is missing")
            time.sleep(poll_s)
            continue
        missing = 0
        finished = {task for task in watched if states[task][1] in DONE}
        on_done(len(finished))
        if len(finished) == len(watched):
            break
        running = {task: name for task, name in watched.items() if states[task][1] == RUNNING}
        queued = sum(states[task][1] == QUEUED for task in watched)
        suspects = ({task: name for task, name in running.items()
                     if not task_process_runs(dvc.root, task)} if not status.active else {})
        orphaned = orphaned + 1 if suspects else 0
        if orphaned >= STALLED_POLLS and not queued:
            raise RuntimeError(_orphaned(suspects))
        # the busy workers and one per waiting task (a task left Running by a worker gone
        # needs none: no worker takes it)
        wanted = min(jobs, status.active + queued)
        short = short + 1 if status.active + status.idle < wanted else 0
        if short == STALLED_POLLS:
            log.warning("%d DVC queue workers alive and %d experiments wait: starting up to %d",
                        status.active + status.idle, queued, jobs)
            dvc("queue", "start", "--jobs", str(jobs))
            short = 0
        time.sleep(poll_s)
    failed = {task: name for task, name in watched.items() if states[task][1] == FAILED}
    if failed:
        raise RuntimeError("\n\n".join(_failure(dvc, task, name) for task, name in failed.items()))


def _interrupted(watched: dict[str, str], states: dict[str, tuple[str, str]]) -> str:
    """Ctrl-C's warning: by the queue's ``states``, ours still running and not started."""
    left = {name: states.get(task, ("", QUEUED))[1] for task, name in watched.items()}
    running = sorted(name for name, state in left.items() if state == RUNNING)
    waiting = sorted(name for name, state in left.items() if state not in (*DONE, RUNNING))
    stop = [*([f"`dvc queue kill {' '.join(running)}` (running)"] if running else []),
            *([f"`dvc queue remove {' '.join(waiting)}` (not started)"] if waiting else [])]
    return (f"interrupted: {len(running) + len(waiting)} experiment(s) of this comparison go "
            "on in DVC's queue in the background (dvc queue status). Rerun the same command "
            f"to wait for them and write the comparison; stop them with "
            f"{' and '.join(stop) or 'nothing (all finished)'}")


def _orphaned(running: dict[str, str]) -> str:
    """What to do about tasks (task id -> experiment name) marked Running with no worker."""
    listed = ", ".join(f"{name} (task {task})" for task, name in running.items())
    plural, it, its, is_ = (("", "it", "its", "is") if len(running) == 1
                            else ("s", "them", "their", "are"))
    return (f"experiment{plural} {listed} {is_} marked Running in DVC's queue but no queue "
            f"worker runs {it} ({its} worker was killed?); mark {it} failed with `dvc queue "
            f"kill {' '.join(running)}` and rerun the same command: it queues "
            f"{', '.join(running.values())} again and keeps the finished experiments")


def _failure(dvc: Dvc, task: str, name: str) -> str:
    logs = dvc("queue", "logs", task, check=False)
    tail = "\n".join((logs.stdout + logs.stderr).strip().splitlines()[-LOG_TAIL_LINES:])
    return (f"experiment {name} failed (dvc queue logs {task}, last {LOG_TAIL_LINES} lines):\n"
            f"{tail}\nFix the cause and rerun the same command: finished experiments are kept.")


def _data(node: dict[str, Any], path: str) -> dict[str, Any] | None:
    data = (node or {}).get(path) or {}
    return data.get("data") if isinstance(data.get("data"), dict) else None


def _walk(shown: list[dict[str, Any]]
          ) -> Iterator[tuple[dict[str, Any], str | None, str]]:
    for commit in shown:
        for group in commit.get("experiments") or []:
            state = (group.get("executor") or {}).get("state")
            for rev in group.get("revs") or []:
                yield rev, state, commit.get("rev") or ""


def experiments(dvc: Dvc, pipeline: Pipeline, rev: str | None = None, num: int = 1
                ) -> list[Experiment]:
    """Every experiment derived from commit ``rev`` (default: HEAD) or, with ``num`` above
    one, from any of the ``num`` first-parent commits that end there, in `dvc exp show
    --json` (``rev``'s first, then each commit's parent's), with the pipeline's params and
    metrics."""
    shown = json.loads(dvc("exp", "show", "--json", *(("--rev", rev) if rev else ()),
                           *(("--num", str(num)) if num > 1 else ())).stdout)
    metrics_file, baselines_file = (pipeline.path(Layout().metrics_json),
                                    pipeline.path(Layout().baselines_json))
    found = []
    for rev, state, baseline in _walk(shown):
        data = rev.get("data") or {}
        metrics = _data(data.get("metrics"), metrics_file)
        if state is None:  # not from a queue: it ran, and either wrote its metrics or failed
            state = SUCCESS_STATE if rev.get("error") is None and metrics else "failed"
        found.append(Experiment(rev.get("name") or "", rev["rev"], state, baseline,
                                _data(data.get("params"), pipeline.params_file.as_posix()),
                                metrics, _data(data.get("metrics"), baselines_file)))
    return found


def train_record(dvc: Dvc, pipeline: Pipeline, experiment: Experiment) -> dict[str, Any]:
    """An experiment's ``reports/train.json`` (its MLflow ``run_id``, ``threads`` and
    ``baselines_threads`` ...), ``{}`` when it has none."""
    shown = dvc.git_show(experiment.rev, pipeline.path(Layout().train_json))
    record = json.loads(shown) if shown else {}
    return record if isinstance(record, dict) else {}
