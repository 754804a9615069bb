"""Parallel worker processes of one ``multitask tune``: each a spawned process with its own
data copy, CPU threads and sampler stream, stopped when its parent is gone; the parent shows a
progress bar over the study's finished trials."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing import resource_tracker
from pathlib import Path
from typing import Any

import optuna
import torch
from tqdm.auto import tqdm

from multitask.config import load_params
from multitask.layout import Layout
from multitask.processes import die_with_parent, signals_deferred
from multitask.tuning.storage import StudyStorage, count_states, finished_count
from multitask.tuning.study import Setup, setup
from multitask.tuning.trials import run_worker

log = logging.getLogger(__name__)

POLL_S = 2.0  # how often the parent of several workers refreshes its progress bar
INTERRUPT_GRACE_S = 10.0  # after Ctrl-C, how long workers may take to fail their trials


@dataclass(frozen=True)
class WorkerJob:
    """What a spawned worker process needs (picklable)."""

    params_path: str
    root: str  # the pipeline folder (its Layout)
    study_name: str
    n_trials: int
    worker: int
    threads: int
    parent_run_id: str | None
    log_level: int
    parent_pid: int  # the tune process: the worker stops when it is gone


def _worker_process(job: WorkerJob) -> None:
    """Entry point of a spawned worker: its own data copy, CPU threads and sampler stream."""
    logging.basicConfig(level=job.log_level, datefmt="%H:%M:%S",
                        format=f"%(asctime)s %(levelname)s %(name)s[worker {job.worker}]: "
                               "%(message)s")

    stopped: list[int] = []  # the signals that stop this worker

    def terminate(signum: int, frame: Any) -> None:  # the parent stops us: fail the trial
        stopped.append(signum)
        raise SystemExit(128 + signum)

    def interrupt(signum: int, frame: Any) -> None:  # Ctrl-C reaches the whole process group
        if stopped:  # and the parent passes it on: once is enough, the trial is being failed
            return
        stopped.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, interrupt)
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # see ctrl_c_deferred
        die_with_parent(job.parent_pid, f"tune worker {job.worker}")
        torch.set_num_threads(job.threads)
        params = load_params(job.params_path)
        worker_setup = setup(params, Layout(Path(job.root)))
        if worker_setup.study_name != job.study_name:
            raise RuntimeError(f"{job.params_path} changed while tuning (study "
                               f"{worker_setup.study_name}, expected {job.study_name}); rerun")
        storage = StudyStorage.of(params, worker_setup.layout)
        run_worker(worker_setup, storage, job.n_trials, job.worker, job.parent_run_id)
    except BaseException:
        if stopped:  # Ctrl-C or the parent: whatever a signal broke, the parent says it once
            raise SystemExit(128 + stopped[0]) from None
        raise


@contextlib.contextmanager
def ctrl_c_deferred() -> Iterator[None]:
    """Ctrl-C held back while this thread spawns workers, then raised once they have all
    started. Two layers: SIGINT is blocked in this thread, a mask a spawned process keeps across
    exec, so a Ctrl-C reaches each worker once it has set its handler and unblocked it (one that
    came while a worker imported torch printed its traceback); and a handler that only records
    it, because another thread of this process (the progress bar's monitor) may take the signal
    and Python then runs the handler here anyway (an interrupted spawn left a worker reading half
    its start-up data). multiprocessing's resource tracker, which the first spawn would start,
    unblocks SIGINT after starting itself: it is started first."""
    if threading.current_thread() is not threading.main_thread():  # no signals to defer here
        yield
        return
    resource_tracker.ensure_running()
    with signals_deferred(signal.SIGINT):  # then delivered again, to the handler it was meant for
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def run_workers(setup: Setup, storage: StudyStorage, study: optuna.Study, n_trials: int,
                workers: int, parent_run_id: str | None) -> None:
    """Run the study to ``n_trials`` with ``workers`` processes, a progress bar over trials."""
    def finished() -> int:
        return finished_count(count_states(study))

    remaining = n_trials - finished()
    bar = tqdm(total=n_trials, initial=n_trials - max(remaining, 0), desc="tune",
               unit="trial")
    try:
        if workers == 1:
            run_worker(setup, storage, n_trials, 0, parent_run_id,
                       on_trial=lambda trial: bar.update(1))
            return
        count = min(workers, max(remaining, 0))
        threads = max(1, torch.get_num_threads() // max(count, 1))
        context = multiprocessing.get_context("spawn")  # no inherited torch/MLflow state
        processes = [context.Process(
            target=_worker_process, name=f"tune-worker-{index}",
            args=(WorkerJob(setup.source, str(setup.layout.root), setup.study_name, n_trials,
                            index, threads, parent_run_id,
                            logging.getLogger().getEffectiveLevel(), os.getpid()),))
            for index in range(count)]
        interrupted = False
        try:
            with ctrl_c_deferred():
                for process in processes:
                    process.start()
            while running := [p for p in processes if p.exitcode is None]:
                multiprocessing.connection.wait([p.sentinel for p in running], POLL_S)
                if (done := min(n_trials, finished())) != bar.n:
                    bar.update(done - bar.n)
                if failed := [p for p in processes if p.exitcode not in (None, 0)]:
                    raise RuntimeError(
                        f"{failed[0].name} exited with code {failed[0].exitcode} (its log is "
                        "above); the study keeps every finished trial: rerun multitask tune")
        except KeyboardInterrupt:
            interrupted = True  # let the workers fail their trials
            raise
        finally:
            if interrupted:  # Ctrl-C reaches them too, but a SIGINT sent to this process alone
                for process in processes:  # (kill -INT) left them starting new trials
                    if process.pid is not None and process.exitcode is None:
                        os.kill(process.pid, signal.SIGINT)
            for process in processes:
                if process.pid is None:  # never started
                    continue
                if interrupted:
                    process.join(INTERRUPT_GRACE_S)
                if process.exitcode is None:
                    process.terminate()
                process.join()
    finally:
        bar.close()
