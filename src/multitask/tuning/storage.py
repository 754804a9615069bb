"""Where the study lives and who may add a trial to it.

A journal file (several processes on one machine) or PostgreSQL (several machines). Workers
claim trials under a lock -- ``flock`` on the journal file, a PostgreSQL advisory lock -- so that
finished plus running trials never exceed ``n_trials``. A worker killed mid-trial leaves it
RUNNING; the next claim sees its process gone (same host: pid and start time; another host: no
heartbeat for :data:`STALE_AFTER_S`) and marks it FAIL, and a new trial takes its place.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from multitask import tracking
from multitask.config import Params
from multitask.layout import Layout
from multitask.processes import HOST, alive, this_process

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what counts towards n_trials
HEARTBEAT_S = 60.0  # how often a running trial says it is alive (for workers on other hosts)
STALE_AFTER_S = 600.0  # silence after which another host's running trial counts as lost
LOCK_TIMEOUT_S = 300.0  # the claim lock is held for milliseconds; this long means a hung holder
LOCK_POLL_S = 0.05


class StudyStorage:
    """Where the study lives (journal file or PostgreSQL) and the lock that serialises claims."""

    def __init__(self, location: str, source: str,
                 lock_timeout_s: float = LOCK_TIMEOUT_S) -> None:
        self.location = location
        self.lock_timeout_s = lock_timeout_s
        self.is_url = "://" in location
        if self.is_url and not location.startswith(("postgresql://", "postgresql+")):
            raise ValueError(
                f"{source}: tune.storage: '{self.describe()}' is not supported; use a journal "
                "file path (several processes on one machine) or a postgresql:// URL (several "
                "machines)")
        if self.is_url:
            import sqlalchemy

            url = sqlalchemy.engine.make_url(location)
            if url.drivername == "postgresql":  # SQLAlchemy 2.1 defaults to psycopg 3; we ship 2
                location = url.set(drivername="postgresql+psycopg2").render_as_string(
                    hide_password=False)
            self.optuna: optuna.storages.BaseStorage = optuna.storages.RDBStorage(
                location, engine_kwargs={"pool_pre_ping": True})
            self._engine = sqlalchemy.create_engine(location, poolclass=sqlalchemy.pool.NullPool)
        else:
            Path(location).parent.mkdir(parents=True, exist_ok=True)
            backend = optuna.storages.journal.JournalFileBackend(location)
            self.optuna = optuna.storages.JournalStorage(backend)

    @classmethod
    def of(cls, params: Params, layout: Layout) -> StudyStorage:
        """``tune.storage``, or the layout's journal file when it names none."""
        return cls(params.tune.storage or str(layout.study_journal), str(params.source))

    def describe(self) -> str:
        """The location with any password masked (for logs, summaries and MLflow)."""
        if not self.is_url:
            return self.location
        import sqlalchemy

        return sqlalchemy.engine.make_url(self.location).render_as_string(hide_password=True)

    @contextlib.contextmanager
    def claim_lock(self, study_name: str) -> Iterator[None]:
        """Held while counting trials and asking for one, by every worker of every host.

        Held for well under a second; waiting ``lock_timeout_s`` for it means its holder hangs,
        so the wait ends in a :class:`TimeoutError` that names the holder.
        """
        if not self.is_url:
            with self._file_lock():
                yield
            return
        import sqlalchemy

        key = int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], "big", signed=True)
        with self._engine.connect() as connection:  # released with the session at the latest
            deadline = time.monotonic() + self.lock_timeout_s
            while not connection.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:key)"),
                                         {"key": key}).scalar():
                if time.monotonic() > deadline:
                    holder = connection.execute(sqlalchemy.text(
                        "SELECT a.pid, a.client_addr, a.backend_start FROM pg_locks l JOIN "
                        "pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND "
                        "l.granted AND l.classid::bigint = :high AND l.objid::bigint = :low"),
                        {"high": (key >> 32) & 0xFFFFFFFF, "low": key & 0xFFFFFFFF}).first()
                    who = (f"PostgreSQL backend {holder[0]} of client {holder[1]}, connected "
                           f"{holder[2]}" if holder else "another session")
                    raise TimeoutError(
                        f"{self.describe()}: the claim lock of study {study_name} is held by "
                        f"{who} for over {self.lock_timeout_s:.0f} s; stop that worker or end "
                        "its session, then rerun multitask tune")
                time.sleep(LOCK_POLL_S)
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"),
                                   {"key": key})

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        """An exclusive lock on ``<journal>.claim``, which also records who holds it."""
        claim = Path(f"{self.location}.claim")  # Optuna's own journal lock is another file
        with open(claim, "a+") as handle:
            deadline = time.monotonic() + self.lock_timeout_s
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        handle.seek(0)
                        who = handle.read().strip() or "an unknown process"
                        raise TimeoutError(
                            f"{claim}: the claim lock is held by {who} for over "
                            f"{self.lock_timeout_s:.0f} s; stop that process, then rerun "
                            "multitask tune") from None
                    time.sleep(LOCK_POLL_S)
            try:
                handle.seek(0)
                handle.truncate()
                pid, _ = this_process()
                handle.write(f"pid {pid} on {HOST}")
                handle.flush()
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


# ------------------------------------------------------------------------- liveness of trials
def _owner() -> dict[str, Any]:
    """Who runs a trial: enough for another worker to tell later whether it still runs."""
    pid, start = this_process()
    return {"host": HOST, "pid": pid, "start": start, "since": time.time()}


def _stale_reason(trial: FrozenTrial) -> str | None:
    """Why a RUNNING trial is lost, or None while its worker may still be running it."""
    owner = trial.user_attrs.get("owner")
    if owner is None:  # claims happen under the lock we hold: this claim's process died in it
        return "its worker died while claiming it"
    where = f"pid {owner['pid']} on {owner['host']}"
    if owner["host"] == HOST:
        return None if alive(owner["pid"], owner["start"]) else f"its worker ({where}) is gone"
    silent = time.time() - max(owner["since"], trial.user_attrs.get("heartbeat", 0.0))
    return f"no heartbeat from its worker ({where}) for {silent:.0f} s" if (
        silent > STALE_AFTER_S) else None


def fail_stale_trials(study: optuna.Study, tracking_enabled: bool) -> list[int]:
    """Mark RUNNING trials whose worker is gone as FAIL (and end their MLflow runs)."""
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = _stale_reason(trial)
        if reason is None:
            continue
        log.warning("trial %d: %s; marking it FAIL, a new trial takes its place",
                    trial.number, reason)
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        run_id = trial.user_attrs.get("mlflow_run_id")
        if tracking_enabled and run_id:
            tracking.end_run(run_id, "FAILED", f"tune: {reason}")
        failed.append(trial.number)
    return failed


@contextlib.contextmanager
def heartbeat(trial: Trial) -> Iterator[None]:
    """Record ``heartbeat`` on the trial every :data:`HEARTBEAT_S` while the block runs."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            trial.set_user_attr("heartbeat", time.time())

    thread = threading.Thread(target=beat, name=f"heartbeat-trial-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def count_states(study: optuna.Study) -> dict[str, int]:
    counts = {state.name: 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] += 1
    return counts


def claim_trial(study: optuna.Study, storage: StudyStorage, n_trials: int,
                tracking_enabled: bool) -> Trial | None:
    """A new trial if finished plus running trials number fewer than ``n_trials``, else None."""
    with storage.claim_lock(study.study_name):
        fail_stale_trials(study, tracking_enabled)
        counts = count_states(study)
        if counts["COMPLETE"] + counts["PRUNED"] + counts["RUNNING"] >= n_trials:
            return None
        trial = study.ask()
        trial.set_user_attr("owner", _owner())
        return trial
