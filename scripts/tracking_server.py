"""One MLflow tracking server for a team: PostgreSQL backend store, artifacts served by MLflow.

    python scripts/tracking_server.py run      # in the foreground (`make server`); Ctrl-C stops
    python scripts/tracking_server.py start    # in the background; returns once it answers
    python scripts/tracking_server.py status   # exit 0 when PostgreSQL and MLflow are both up
    python scripts/tracking_server.py stop

Then ``export MLFLOW_TRACKING_URI=http://127.0.0.1:5000`` points the pipeline, tuning,
``multitask promote`` and ``multitask predict`` at it.

Everything lives in one git-ignored folder (``--dir``, default ``.server/``): PostgreSQL's
cluster in ``postgres/data`` (created by ``initdb`` on the first start, database ``mlflow``),
its log and socket in ``postgres/``, ``mlflow.log`` of a background server, ``mlflow.pid`` and
``mlflow.address`` of a running one (``status`` and ``stop`` read its host and port there), and
``artifacts/``, the default ``--artifacts-destination`` (``s3://bucket/path`` or
``gs://bucket/path`` instead keep artifacts in object storage; clients upload and download
through the server either way, so only the server needs the bucket's credentials).

PostgreSQL listens on 127.0.0.1 only, on a free port picked at start (``--db-port`` fixes it),
with trust authentication: it is reachable from this machine alone, like the MLflow server,
which binds 127.0.0.1 unless ``--host`` says otherwise. PostgreSQL refuses to run as root, so
as root its commands run as the ``postgres`` user (``runuser``) and it owns ``postgres/``.

The test suite's ``postgres_url`` fixture (tests/conftest.py) starts its throw-away database
with :class:`Postgres`, and tests/integration/test_tracking_server.py runs this script's
``start``/``stop``: the start-up logic is written once.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("tracking_server")

DEFAULT_DIR = Path(".server")
ADDRESS_FILE = "mlflow.address"  # "HOST PORT" of the server started from a folder
DATABASE = "mlflow"
HEALTH_TIMEOUT_S = 180.0  # the first start creates MLflow's tables (alembic migrations)
STOP_TIMEOUT_S = 30.0
JOB_EXECUTION_ENV = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"
UNAVAILABLE_EXIT = 4


class ServerError(RuntimeError):
    """A step of starting or stopping failed; the message says which and what to do."""


class Unavailable(ServerError):
    """This machine cannot run PostgreSQL as things stand (not installed, no user for it)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def runuser() -> str:
    """util-linux's ``runuser``, which root runs PostgreSQL's programs through (as user
    postgres); it lives in ``/usr/sbin``, which a non-login root's PATH may lack."""
    found = shutil.which("runuser") or next(
        (str(path) for path in (Path("/usr/sbin/runuser"), Path("/sbin/runuser"))
         if path.is_file()), None)
    if found is None:
        raise Unavailable("running as root needs runuser (util-linux) to run PostgreSQL as user "
                          "postgres; none on PATH or in /usr/sbin: install util-linux or run as "
                          "another user")
    return found


def _postgres_bin() -> Path:
    """The folder of Debian's PostgreSQL programs (initdb, pg_ctl, createdb)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    initdb = shutil.which("initdb") or (str(found[-1]) if found else None)
    if initdb is None:
        raise Unavailable("PostgreSQL is not installed (no initdb on PATH or under "
                          "/usr/lib/postgresql); as root: bash scripts/system_deps.sh test")
    return Path(initdb).resolve().parent


@dataclass(frozen=True)
class Postgres:
    """A PostgreSQL cluster in ``folder/data`` on 127.0.0.1, run as ``postgres`` under root."""

    folder: Path

    def __post_init__(self) -> None:
        # absolute: postgres runs in its data folder, and the socket path is given to it
        object.__setattr__(self, "folder", Path(self.folder).resolve())

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def logfile(self) -> Path:
        return self.folder / "server.log"

    def _as_owner(self) -> list[str]:
        return [runuser(), "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self._as_owner(), *command], capture_output=True, text=True)

    def _checked(self, what: str, *command: str) -> None:
        done = self._run(*command)
        if done.returncode != 0:
            raise ServerError(f"{what} failed (exit {done.returncode}): "
                              f"{(done.stderr or done.stdout).strip()[-1500:]}; "
                              f"see {self.logfile}")

    def _prepare_folder(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            return
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise Unavailable("running as root and there is no 'postgres' user to run "
                              "PostgreSQL as (it refuses root); create one or run as "
                              "another user") from None
        os.chown(self.folder, owner.pw_uid, owner.pw_gid)
        if self._run("test", "-w", str(self.folder)).returncode != 0:
            raise ServerError(f"{self.folder}: user postgres cannot reach it (a folder above "
                              "it is not searchable by others): `chmod o+x` that folder or "
                              "choose another --dir")

    def port(self) -> int | None:
        """The port of the running server (from postmaster.pid), None when it is down."""
        if not (self.data / "PG_VERSION").exists():
            return None
        if self._run(str(_postgres_bin() / "pg_ctl"), "-D", str(self.data),
                     "status").returncode != 0:
            return None
        lines = (self.data / "postmaster.pid").read_text().splitlines()
        return int(lines[3])

    def url(self, port: int, database: str = DATABASE, scheme: str = "postgresql") -> str:
        """The database URL; SQLAlchemy 2.1 needs ``postgresql+psycopg2`` for the driver
        requirements.lock ships (plain ``postgresql`` means psycopg 3 to it)."""
        return f"{scheme}://postgres@127.0.0.1:{port}/{database}"

    def start(self, port: int | None = None) -> int:
        """Start the cluster (created, with database ``mlflow``, on first use); its port.

        Already running: its current port, whatever ``port`` says.
        """
        bindir = _postgres_bin()
        self._prepare_folder()
        if not (self.data / "PG_VERSION").exists():
            log.info("creating a PostgreSQL cluster in %s", self.data)
            self._checked("initdb", str(bindir / "initdb"), "-D", str(self.data),
                          "-U", "postgres", "--auth=trust", "--encoding=UTF8")
        running = self.port()
        if running is not None:
            return running
        port = port or free_port()
        self._checked(f"starting PostgreSQL on 127.0.0.1:{port}", str(bindir / "pg_ctl"),
                      "-D", str(self.data), "-l", str(self.logfile), "-w", "-o",
                      f"-p {port} -k {shlex.quote(str(self.folder))} "
                      "-c listen_addresses=127.0.0.1", "start")
        created = self._run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port),
                            "-U", "postgres", DATABASE)
        if created.returncode != 0 and "already exists" not in created.stderr:
            raise ServerError(f"createdb {DATABASE} on 127.0.0.1:{port} failed: "
                              f"{created.stderr.strip()[-1500:]}")
        log.info("PostgreSQL is up: %s", self.url(port))
        return port

    def stop(self, mode: str = "fast") -> None:
        """Stop the cluster (``fast``: roll back open transactions, then a clean shutdown)."""
        if self.port() is None:
            return
        self._checked("stopping PostgreSQL", str(_postgres_bin() / "pg_ctl"), "-D",
                      str(self.data), "-m", mode, "-w", "stop")
        log.info("PostgreSQL stopped")


@dataclass(frozen=True)
class TrackingServer:
    """``mlflow server`` over :class:`Postgres` with served artifacts, all under ``folder``."""

    folder: Path
    host: str = "127.0.0.1"
    port: int = 5000
    artifacts_destination: str | None = None  # default: <folder>/artifacts
    workers: int = 4
    db_port: int | None = None
    extra_args: tuple[str, ...] = ()

    @property
    def postgres(self) -> Postgres:
        return Postgres(self.folder / "postgres")

    @property
    def pidfile(self) -> Path:
        return self.folder / "mlflow.pid"

    @property
    def logfile(self) -> Path:
        return self.folder / "mlflow.log"

    @property
    def runnerfile(self) -> Path:
        """The pid of a foreground ``run``, which ``stop`` asks to stop everything."""
        return self.folder / "run.pid"

    @property
    def addressfile(self) -> Path:
        """``HOST PORT`` of the server started from this folder, for ``status`` and ``stop``."""
        return self.folder / ADDRESS_FILE

    def _started(self, pid: int) -> None:
        self.pidfile.write_text(str(pid))
        self.addressfile.write_text(f"{self.host} {self.port}")

    def _ended(self) -> None:
        self.pidfile.unlink(missing_ok=True)
        self.addressfile.unlink(missing_ok=True)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    def _command(self, db_port: int) -> list[str]:
        beside = Path(sys.executable).parent / "mlflow"
        mlflow = str(beside) if beside.exists() else shutil.which("mlflow")
        if mlflow is None:
            raise ServerError("no `mlflow` beside this Python or on PATH; run `make setup` and "
                              "use .venv/bin/python")
        destination = self.artifacts_destination or str((self.folder / "artifacts").resolve())
        return [mlflow, "server", "--backend-store-uri",
                self.postgres.url(db_port, scheme="postgresql+psycopg2"),
                "--artifacts-destination", destination, "--host", self.host,
                "--port", str(self.port), "--workers", str(self.workers), *self.extra_args]

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer:
                return bool(answer.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def _refuse_taken_port(self) -> None:
        """Stop before anything starts when another process listens on host:port: mlflow
        server would exit 0 there, and its /health would be the other server's answer."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((self.host, self.port))
            except OSError as exc:
                raise ServerError(
                    f"{self.host}:{self.port} is already in use ({exc.strerror}): another "
                    "server listens there (`make ui` also defaults to 5000); stop it, or "
                    "choose another port with --port (make server SERVER_ARGS=\"--port "
                    "5001\")") from None

    def _wait_healthy(self, process: subprocess.Popen[bytes]) -> None:
        """Until /health answers while ``process`` still runs (an answer after it exited
        would come from some other server)."""
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        while process.poll() is not None or not self.healthy():
            if process.poll() is not None:
                raise ServerError(f"mlflow server exited {process.returncode} while starting; "
                                  f"see {self.logfile} (port {self.port} already taken?)")
            if time.monotonic() > deadline:
                raise ServerError(f"mlflow server did not answer {self.url}/health within "
                                  f"{HEALTH_TIMEOUT_S:.0f} s; see {self.logfile}")
            time.sleep(0.5)

    def pid(self) -> int | None:
        """The background server's process id, None when there is none (a stale file is)."""
        return _live_pid(self.pidfile)

    def start(self) -> None:
        """PostgreSQL, then ``mlflow server`` in its own session; return once it answers."""
        if self.pid() is not None:
            raise ServerError(f"an mlflow server from {self.folder} already runs (pid "
                              f"{self.pid()}); `stop` it first")
        self._refuse_taken_port()
        self.folder.mkdir(parents=True, exist_ok=True)
        db_port = self.postgres.start(self.db_port)
        with open(self.logfile, "ab") as output:
            process = subprocess.Popen(self._command(db_port), stdout=output,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=_server_environment(), start_new_session=True)
        self._started(process.pid)
        try:
            self._wait_healthy(process)
        except BaseException:
            _end_group(process.pid)
            self._ended()
            raise
        log.info("MLflow tracking server is up: %s (pid %d, log %s)", self.url, process.pid,
                 self.logfile)

    def stop(self) -> None:
        """Stop the background ``mlflow server`` (its whole process group), then PostgreSQL.
        A foreground ``run`` gets SIGTERM instead, and stops both itself, as on Ctrl-C."""
        runner = _live_pid(self.runnerfile)
        if runner is not None and runner != os.getpid():
            os.kill(runner, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_S + 30
            while _live_pid(self.runnerfile) == runner and time.monotonic() < deadline:
                time.sleep(0.2)
            if _live_pid(self.runnerfile) is None:
                log.info("the foreground run (pid %d) stopped mlflow server and PostgreSQL",
                         runner)
                return
        pid = self.pid()
        if pid is not None:
            _end_group(pid)
            log.info("mlflow server (pid %d) stopped", pid)
        self._ended()
        self.postgres.stop()

    def run(self) -> int:
        """PostgreSQL and ``mlflow server`` in the foreground until Ctrl-C or SIGTERM (both
        then stop cleanly) or until the server exits; the server's exit status."""
        if self.pid() is not None:
            raise ServerError(f"an mlflow server from {self.folder} already runs (pid "
                              f"{self.pid()}); `stop` it first")
        self._refuse_taken_port()
        stopping: list[int] = []
        previous = {s: signal.signal(s, lambda signum, frame: stopping.append(signum))
                    for s in (signal.SIGINT, signal.SIGTERM)}
        process: subprocess.Popen[bytes] | None = None
        self.folder.mkdir(parents=True, exist_ok=True)
        self.runnerfile.write_text(str(os.getpid()))
        try:
            db_port = self.postgres.start(self.db_port)
            if not stopping:
                # its own session: Ctrl-C reaches this script only, which then stops both
                process = subprocess.Popen(self._command(db_port), env=_server_environment(),
                                           start_new_session=True)
                self._started(process.pid)
                log.info("MLflow tracking server starting on %s; Ctrl-C stops it and "
                         "PostgreSQL", self.url)
            while process is not None and process.poll() is None and not stopping:
                time.sleep(0.2)
        finally:
            if process is not None:
                _end_group(process.pid)
                self._ended()
            self.postgres.stop()
            self.runnerfile.unlink(missing_ok=True)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if stopping or process is None:
            return 0
        # nobody asked it to stop: a failure even where mlflow exits 0 (a port it could
        # not bind)
        log.error("mlflow server exited %d on its own (its output is above)",
                  process.returncode)
        return int(process.returncode or 1)

    def status(self) -> bool:
        """Log what runs; True when PostgreSQL and a healthy server are both up."""
        db_port = self.postgres.port()
        log.info("PostgreSQL: %s", self.postgres.url(db_port) if db_port else "not running")
        pid, healthy = self.pid(), self.healthy()
        log.info("mlflow server: %s", f"{self.url} (pid {pid}, "
                 f"{'healthy' if healthy else 'not answering'})" if pid else
                 f"{self.url} {'answers (not started from here)' if healthy else 'not running'}")
        return db_port is not None and healthy


def _live_pid(path: Path) -> int | None:
    """The process id in ``path`` while that process runs; None for none, or a stale file."""
    try:
        pid = int(path.read_text())
        os.kill(pid, 0)
        # a killed process not yet reaped by its parent is a zombie: gone all the same
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError):
        return None
    return None if state in ("Z", "X") else pid


def recorded_address(folder: Path) -> tuple[str, int] | None:
    """``(host, port)`` that the server started from ``folder`` was given, None when none
    was recorded (or the record is unreadable)."""
    try:
        host, port = (folder / ADDRESS_FILE).read_text().split()
        return host, int(port)
    except (OSError, ValueError):
        return None


def _server_environment() -> dict[str, str]:
    """This environment, with MLflow's job runner off unless asked for: it serves GenAI
    features (scorers, trace archival) this project does not use, in eight more processes."""
    return {JOB_EXECUTION_ENV: "false", **os.environ}


def _end_group(pid: int) -> None:
    """SIGTERM process group ``pid`` (mlflow server and its workers); SIGKILL if it lingers."""
    for signum, wait in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 5.0)):
        deadline = time.monotonic() + wait
        try:
            os.killpg(pid, signum)
            while time.monotonic() < deadline:
                with contextlib.suppress(ChildProcessError):  # not ours: an earlier `start`'s
                    os.waitpid(pid, os.WNOHANG)  # reap our own child, or the group stays alive
                os.killpg(pid, 0)
                time.sleep(0.2)
        except ProcessLookupError:
            return


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        prog="tracking_server.py",
        description="An MLflow tracking server for a team: PostgreSQL backend store (started "
                    "here, on 127.0.0.1) and artifacts served by MLflow. Point clients at it "
                    "with MLFLOW_TRACKING_URI=http://HOST:PORT. Arguments after `--` go to "
                    "`mlflow server` verbatim (e.g. -- --allowed-hosts mlflow.example.org).")
    parser.add_argument("action", choices=["run", "start", "stop", "status"],
                        help="run: in the foreground until Ctrl-C/SIGTERM, which stop both; "
                             "start: in the background, return once /health answers; "
                             "stop: the background server (or a foreground run) and "
                             "PostgreSQL; status: exit 0 when both are up, 3 otherwise. Any "
                             "action exits 1 on an error "
                             "and 4 when PostgreSQL cannot run here (not installed, or root "
                             "without a postgres user)")
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                        help="state folder: PostgreSQL cluster, logs, pid file, local "
                             "artifacts (default: .server)")
    parser.add_argument("--host",
                        help="interface mlflow server binds (default: 127.0.0.1; 0.0.0.0 "
                             "for the whole network, then also -- --allowed-hosts NAME); "
                             "status and stop: the one the server of --dir was started with")
    parser.add_argument("--port", type=int,
                        help="mlflow server port (default: 5000); status and stop: the one "
                             "the server of --dir was started with")
    parser.add_argument("--artifacts-destination",
                        help="where served artifacts are stored: a local folder (default: "
                             "DIR/artifacts), s3://bucket/path or gs://bucket/path (the "
                             "server then needs boto3 or google-cloud-storage and the "
                             "bucket's credentials)")
    parser.add_argument("--workers", type=int, default=4,
                        help="mlflow server worker processes (default: 4)")
    parser.add_argument("--db-port", type=int,
                        help="PostgreSQL port on 127.0.0.1 (default: a free one at start)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    recorded = recorded_address(args.dir) if args.action in ("status", "stop") else None
    host, port = recorded or ("127.0.0.1", 5000)
    server = TrackingServer(args.dir, host=args.host or host, port=args.port or port,
                            artifacts_destination=args.artifacts_destination,
                            workers=args.workers, db_port=args.db_port,
                            extra_args=tuple(extra))
    try:
        if args.action == "run":
            return server.run()
        if args.action == "start":
            server.start()
        elif args.action == "stop":
            server.stop()
        else:
            return 0 if server.status() else 3
    except ServerError as exc:
        log.error("tracking_server.py %s: %s", args.action, exc)
        return UNAVAILABLE_EXIT if isinstance(exc, Unavailable) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
