"""Where the study lives and who may add a trial to it.

A journal file (several processes on one machine) or PostgreSQL (several machines). Workers
claim trials under a lock -- ``flock`` on the journal file, a PostgreSQL advisory lock -- so that
finished plus running trials never exceed ``n_trials``.

A worker killed mid-trial leaves it RUNNING. The next claim finds it lost, marks it FAIL and
queues its parameters once more (Optuna's ``RetryHeartbeatStaleTrialCallback``, at most
:data:`RETRIES` times, so parameters that kill their worker are not tried for ever). Lost means:

- PostgreSQL: Optuna's own RDB heartbeat (``RDBStorage(heartbeat_interval=..., grace_period=...)``
  from ``tune.heartbeat_interval_s`` and ``tune.grace_period_s``) has been silent for the grace
  period. Optuna runs that heartbeat inside ``Study.optimize``; our workers ask and tell under the
  claim lock instead, so they start Optuna's heartbeat thread and its ``fail_stale_trials``
  themselves, exactly where ``Study.optimize`` does.
- Journal file (Optuna has no heartbeat for it): its worker's process is gone (same host: pid and
  start time), or, for a worker on another host sharing the file, its ``heartbeat`` user attribute
  is older than the grace period.
- Either: the trial has no owner yet. Claims happen under the lock we hold, so its worker died
  while claiming it.

One module, not several: the claim lock, the heartbeats and the rules that find lost trials are
one protocol between workers; read apart, none of them shows why the others are safe.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.trial import FrozenTrial, Trial, TrialState

from multitask import tracking
from multitask.config import Params
from multitask.io import exclusive_lock, recorded_lock
from multitask.layout import Layout
from multitask.processes import HOST, alive, signals_deferred, this_process

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what counts towards n_trials
RETRIES = 1  # a lost trial's parameters run once more; lost twice, they are left FAIL
# The trial attribute holding each main task's validation primary metric (accuracy; MAE for a
# regression task). Its name predates task kinds; stored studies are read with it.
VALUES_ATTR = "val_accuracy"
DIVERGED_ATTR = "diverged"  # a trial stopped by a non-finite loss: the trainer's message
# what one attempt of a trial recorded, as opposed to its parameters (a retry starts afresh)
ATTEMPT_ATTRS = ("owner", "heartbeat", "mlflow_run_id", VALUES_ATTR, "epochs_run")
LOCK_TIMEOUT_S = 300.0  # the claim lock is held for milliseconds; this long means a hung holder
LOCK_POLL_S = 0.05
SCHEMA_LOCK = "multitask: create Optuna's tables"  # an advisory lock's name, not a study's


class LostTrials:
    """What happens to a lost trial once it is marked FAIL: its parameters are queued again
    (Optuna's ``RetryHeartbeatStaleTrialCallback``) and it is remembered, so that
    :func:`fail_stale_trials` can log it and end its MLflow run.

    On PostgreSQL this is the storage's ``heartbeat_stale_trial_callback``.
    """

    def __init__(self) -> None:
        with warnings.catch_warnings():  # experimental in Optuna 5, stable in practice
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=RETRIES)
        self.found: list[FrozenTrial] = []

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.found.append(trial)
        again = copy.copy(trial)  # the retry is a new attempt: not this worker, not this run
        again.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in ATTEMPT_ATTRS}
        self._retry(study, again)

    def take(self) -> list[FrozenTrial]:
        found, self.found = self.found, []
        return found


class FlockJournalLock:
    """Optuna's journal-file lock as an ``flock`` on ``path``, which the kernel drops when its
    holder dies. Optuna's default lock is a file created with O_EXCL and removed on release: a
    tune killed while holding it (SIGKILL, a lost host) left it behind, and every later run
    waited for it forever."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._held = contextlib.ExitStack()

    def acquire(self) -> bool:
        self._held.enter_context(exclusive_lock(self.path))
        return True

    def release(self) -> None:
        self._held.close()


def check_tail(journal: Path) -> None:
    """Make the journal file ``journal`` safe to append to, under the journal's lock: a last
    record that lacks its newline (its writer was killed mid-append) is cut off, with a warning;
    a last line that is not a JSON record is a ValueError. Optuna's reader passes over either,
    but the next record appended to it would make a line that is not JSON, and the journal could
    no longer be read at all."""
    if not journal.is_file():
        return
    with exclusive_lock(f"{journal}.lock"), journal.open("rb+") as handle:
        size = start = handle.seek(0, 2)
        tail = b""
        while start > 0 and tail.count(b"\n") < 2:  # the last line whole, a block at a time
            start = max(0, start - 65536)
            handle.seek(start)
            tail = handle.read(size - start)
        if not tail.endswith(b"\n") and tail:
            kept = tail.rfind(b"\n") + 1
            handle.truncate(start + kept)
            log.warning("%s: dropped an incomplete last record (%d bytes, a write cut short); "
                        "the records before it are kept", journal, len(tail) - kept)
            tail = tail[:kept]
    line = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    if line and not isinstance(json.loads(line), dict):
        raise ValueError(f"the last line is not a record: {line[:80]!r}")


class StudyStorage:
    """Where the study lives (journal file or PostgreSQL) and the lock that serialises claims."""

    def __init__(self, location: str, source: str, lock_timeout_s: float = LOCK_TIMEOUT_S, *,
                 heartbeat_interval_s: int | None = None, grace_period_s: int | None = None
                 ) -> None:
        """Without ``heartbeat_interval_s`` and ``grace_period_s`` (readers, reports) no trial
        records a heartbeat and only the journal file's same-host rule finds lost trials."""
        self.location = location
        self.lock_timeout_s = lock_timeout_s
        self.heartbeat_interval_s = heartbeat_interval_s
        self.grace_period_s = grace_period_s
        self.lost = LostTrials()
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
            self._engine = sqlalchemy.create_engine(location, poolclass=sqlalchemy.pool.NullPool)
            try:
                # Workers that start together on an empty database would race to create
                # Optuna's tables (a duplicate-type error in PostgreSQL): one creates them, the
                # others wait.
                with (self._advisory_lock(SCHEMA_LOCK, "the lock that creates Optuna's tables"),
                      warnings.catch_warnings()):  # the heartbeat is experimental in Optuna 5
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    self.optuna: optuna.storages.BaseStorage = optuna.storages.RDBStorage(
                        location, engine_kwargs={"pool_pre_ping": True},
                        heartbeat_interval=heartbeat_interval_s, grace_period=grace_period_s,
                        heartbeat_stale_trial_callback=self.lost)
            except sqlalchemy.exc.OperationalError as exc:  # refused, unknown host, bad login
                cause = str(exc.orig or exc).strip().splitlines()[0]
                raise RuntimeError(
                    f"{source}: tune.storage: {self.describe()}: cannot connect ({cause}); "
                    "check that the PostgreSQL server runs and the URL (host, port, user, "
                    "database) is right") from None
        else:
            Path(location).parent.mkdir(parents=True, exist_ok=True)
            backend = optuna.storages.journal.JournalFileBackend(
                location, lock_obj=FlockJournalLock(f"{location}.lock"))
            try:
                check_tail(Path(location))
                self.optuna = optuna.storages.JournalStorage(backend)
                self.optuna.get_all_studies()  # every record read now, not in a later call
            except (ValueError, KeyError, TypeError) as exc:  # not JSON, or not a record
                raise ValueError(
                    f"{location}: not a readable Optuna journal ({type(exc).__name__}: {exc}); "
                    "only multitask tune writes it: restore it (dvc checkout, or git for a "
                    "committed one), or delete it to start the study over") from None

    @classmethod
    def of(cls, params: Params, layout: Layout) -> StudyStorage:
        """``tune.storage`` (or the layout's journal file) with ``tune``'s heartbeat settings;
        a journal file's path is the pipeline folder's (beside the params file), wherever the
        command runs."""
        tune = params.tune
        location = tune.storage or str(layout.study_journal)
        if tune.storage and "://" not in location and not Path(location).is_absolute():
            location = str(layout.root / location)
        return cls(location, str(params.source), heartbeat_interval_s=tune.heartbeat_interval_s,
                   grace_period_s=tune.grace_period_s)

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
        with self._advisory_lock(study_name, f"the claim lock of study {study_name}"):
            yield

    @contextlib.contextmanager
    def _advisory_lock(self, name: str, what: str) -> Iterator[None]:
        """A PostgreSQL advisory lock keyed by ``name``; ``what`` names it in the timeout."""
        import sqlalchemy

        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
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
                        f"{self.describe()}: {what} is held by {who} for over "
                        f"{self.lock_timeout_s:g} s; stop that worker or end its session, "
                        "then rerun multitask tune")
                time.sleep(LOCK_POLL_S)
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"),
                                   {"key": key})

    @contextlib.contextmanager
    def heartbeat(self, trial: Trial) -> Iterator[None]:
        """Tell other workers that ``trial`` is alive while the block runs: Optuna's heartbeat
        thread on PostgreSQL (as ``Study.optimize`` runs it), on a journal file a ``heartbeat``
        user attribute every ``heartbeat_interval_s``."""
        interval = self.heartbeat_interval_s
        if interval is None:
            yield
            return
        if self.is_url:
            with get_heartbeat_thread(trial._trial_id, self.optuna):
                yield
            return
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(interval):
                trial.set_user_attr("heartbeat", time.time())

        thread = threading.Thread(target=beat, name=f"heartbeat-trial-{trial.number}",
                                  daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        """An exclusive lock on ``<journal>.claim``, which also records who holds it."""
        claim = Path(f"{self.location}.claim")  # Optuna's own journal lock is another file

        def busy(who: str) -> TimeoutError:
            return TimeoutError(f"{claim}: the claim lock is held by {who} for over "
                                f"{self.lock_timeout_s:g} s; stop that process, then rerun "
                                "multitask tune")

        with recorded_lock(claim, busy, wait_s=self.lock_timeout_s, poll_s=LOCK_POLL_S):
            yield

# ------------------------------------------------------------------------- liveness of trials
def _owner() -> dict[str, Any]:
    """Who runs a trial: enough for another worker to tell later whether it still runs."""
    pid, start = this_process()
    return {"host": HOST, "pid": pid, "start": start, "since": time.time()}


def _where(trial: FrozenTrial) -> str:
    owner = trial.user_attrs.get("owner") or {}
    return f"pid {owner.get('pid')} on {owner.get('host')}"


def _journal_stale_reason(trial: FrozenTrial, grace_period_s: int | None) -> str | None:
    """Why a RUNNING trial of a journal file is lost, or None while its worker may run it."""
    owner = trial.user_attrs["owner"]
    if owner["host"] == HOST:
        return None if alive(owner["pid"], owner["start"]) else (
            f"its worker ({_where(trial)}) is gone")
    if grace_period_s is None:
        return None
    silent = time.time() - max(owner["since"], trial.user_attrs.get("heartbeat", 0.0))
    return f"no heartbeat from its worker ({_where(trial)}) for {silent:.0f} s" if (
        silent > grace_period_s) else None


def fail_stale_trials(study: optuna.Study, storage: StudyStorage,
                      tracking_enabled: bool) -> list[int]:
    """Mark lost RUNNING trials FAIL, queue their parameters again, end their MLflow runs.

    Called under the claim lock. Returns the numbers of the trials marked FAIL.
    """
    reasons: dict[int, str] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if "owner" not in trial.user_attrs:
            reason: str | None = "its worker died while claiming it"
        elif storage.is_url:
            continue  # Optuna's heartbeat decides, below
        else:
            reason = _journal_stale_reason(trial, storage.grace_period_s)
        if reason is not None:
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            storage.lost(study, trial)
            reasons[trial.number] = reason
    if storage.is_url:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # calls storage.lost for each one
    failed = []
    for trial in storage.lost.take():
        reason = reasons.get(trial.number) or (
            f"no heartbeat from its worker ({_where(trial)}) for over {storage.grace_period_s} s")
        log.warning("trial %d: %s; marked FAIL, its parameters run again as a new trial",
                    trial.number, reason)
        run_id = trial.user_attrs.get("mlflow_run_id")
        if tracking_enabled and run_id:
            _end_lost_run(trial.number, run_id, reason)
        failed.append(trial.number)
    return failed


def _end_lost_run(number: int, run_id: str, reason: str) -> None:
    """End a lost trial's MLflow run FAILED, if this worker's store holds it. A worker on
    another machine with a store of its own (no shared ``MLFLOW_TRACKING_URI``) logged it
    elsewhere: that is said, and this worker goes on with the study rather than fail on it."""
    try:
        tracking.get_run(run_id)
    except ValueError:
        log.warning("trial %d: its MLflow run %s is not in this worker's store %s (its worker "
                    "logged to another one): end it FAILED there, and give every machine one "
                    "tracking server (MLFLOW_TRACKING_URI)", number, run_id,
                    tracking.describe_uri())
        return
    tracking.end_run(run_id, "FAILED", f"tune: {reason}")


def finished_count(counts: dict[str, int]) -> int:
    """The trials that count towards ``n_trials`` (complete or pruned) in :func:`count_states`'s
    counts."""
    return sum(counts[state.name] for state in FINISHED)


def count_states(study: optuna.Study) -> dict[str, int]:
    counts = {state.name: 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] += 1
    return counts


def claim_trial(study: optuna.Study, storage: StudyStorage, n_trials: int,
                tracking_enabled: bool, on_claim: Callable[[Trial], None] = lambda trial: None
                ) -> Trial | None:
    """A new trial if finished plus running trials number fewer than ``n_trials``, else None.

    A queued retry of a lost trial is handed out first. Its first heartbeat is recorded before
    the lock is released, so that no other worker can see it RUNNING without one. The trial
    goes to ``on_claim`` as soon as it is made: a Ctrl-C or SIGTERM is held back from the
    trial's making to that hand-over (not while the lock is awaited), so a worker that a
    signal stops always knows the trial it has to fail (one that landed as the claim
    returned left it RUNNING for good).
    """
    with storage.claim_lock(study.study_name):
        fail_stale_trials(study, storage, tracking_enabled)
        counts = count_states(study)
        if counts["COMPLETE"] + counts["PRUNED"] + counts["RUNNING"] >= n_trials:
            return None
        with signals_deferred(signal.SIGINT, signal.SIGTERM):
            with warnings.catch_warnings():  # we run the heartbeat that Study.optimize would
                warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used")
                trial = study.ask()
            try:
                if storage.is_url and storage.heartbeat_interval_s is not None:
                    storage.optuna.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]
                trial.set_user_attr("owner", _owner())
            except BaseException:  # not left RUNNING with no owner
                with contextlib.suppress(Exception):
                    study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                raise
            on_claim(trial)
        return trial
