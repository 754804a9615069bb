"""A store that cannot serve is one clear error line, never a traceback or wrong advice.

1. A tracking server that refuses connections (a real port on 127.0.0.1 that nobody listens
   on): ``promote`` and ``registry`` say the server is unreachable, naming it with its password
   masked, instead of "run not found ... Run the pipeline here first"; the read-only commands
   bound MLflow's HTTP retries (seconds, not MLflow's four minutes) unless the user set them.
2. Local SQLite stores that cannot be used (a real file that is not a database, a folder, a
   parent that is a file, a folder nobody may write in): the error names the URI and the cause,
   and the file is left as it was.
3. ``predict`` against a server that refuses connections says it is unreachable, as
   ``registry`` does; a server (or proxy) that answers 401 is said to refuse the credentials,
   not to be down.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from multitask.cli import main
from multitask.tracking import store

ROOT = Path(__file__).resolve().parents[2]
RUN_ID = "ab" * 16
HTTP_ENV = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
            "MLFLOW_HTTP_REQUEST_TIMEOUT")


@pytest.fixture
def pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A pipeline folder whose reports/train.json names a run (as in a fresh clone)."""
    (tmp_path / "params.yaml").write_text((ROOT / "sample" / "params.yaml").read_text())
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "train.json").write_text(json.dumps({"run_id": RUN_ID}))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port on 127.0.0.1 that is bound but not listening: every connection is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def unauthorized_port() -> Iterator[int]:
    """A port on 127.0.0.1 whose HTTP server answers every request 401, as a server behind an
    authenticating proxy answers wrong credentials."""
    class Unauthorized(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
            self.end_headers()
            self.wfile.write(b"Unauthorized")

        do_POST = do_GET

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unauthorized)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def run(*argv: str) -> int:
    return main([*argv, "--params", "params.yaml"])


def test_an_unreachable_server_is_named_not_a_missing_run(
        pipeline: Path, refused_port: int, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:s3cret@127.0.0.1:{refused_port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the user's: fast
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    server = f"MLflow tracking server http://alice:***@127.0.0.1:{refused_port} is unreachable"
    advice = "check that the server is running and that MLFLOW_TRACKING_URI names it"
    for command in (("promote",), ("promote", "--dry-run"), ("promote", "--status"),
                    ("registry",)):
        assert run(*command) == 1
        err = capsys.readouterr().err
        assert f"multitask {command[0]}: error: {server} (connection refused); {advice}" in err
        assert "not found" not in err and "Run the pipeline here first" not in err
        assert "s3cret" not in err and "Traceback" not in err
    with pytest.raises(store.StoreError, match="is unreachable \\(connection refused\\)"):
        store.get_run(RUN_ID)  # a StoreError, not the ValueError of a run the store lacks


def test_read_only_commands_bound_mlflow_retries_they_were_not_given(
        pipeline: Path, refused_port: int, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{refused_port}")
    for name in HTTP_ENV:
        monkeypatch.delenv(name, raising=False)
    started = time.monotonic()
    assert run("registry") == 1
    assert time.monotonic() - started < 60  # MLflow's defaults: about four minutes
    assert "is unreachable (connection refused)" in capsys.readouterr().err
    assert not any(name in os.environ for name in HTTP_ENV)  # set for the command only

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with store.read_only_requests():
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"  # the user's value wins
        assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "1"
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ


def _not_a_database(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "notes.txt"
    path.write_text("not a database\n" * 100)
    return path, f"{path} is not an SQLite database"


def _folder(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "store"
    path.mkdir()
    return path, f"{path} is a folder, not an SQLite file"


def _parent_is_a_file(tmp_path: Path) -> tuple[Path, str]:
    (tmp_path / "afile").write_text("x")
    path = tmp_path / "afile" / "mlflow.db"
    return path, f"cannot create the store in {path.parent}: {path.parent} is a file, not a folder"


def _proc(tmp_path: Path) -> tuple[Path, str]:
    return Path("/proc/mlflow.db"), "cannot create /proc/mlflow.db.lock: No such file or directory"


def _read_only_folder(tmp_path: Path) -> tuple[Path, str]:
    folder = tmp_path / "locked"
    folder.mkdir(mode=0o500)
    return folder / "sub" / "mlflow.db", f"cannot create {folder / 'sub'}: Permission denied"


@pytest.mark.parametrize("command", ["promote", "registry"])
@pytest.mark.parametrize("case", [
    _not_a_database, _folder, _parent_is_a_file,
    pytest.param(_proc, marks=pytest.mark.skipif(not sys.platform.startswith("linux"),
                                                 reason="/proc is Linux's")),
    pytest.param(_read_only_folder, marks=pytest.mark.skipif(
        os.geteuid() == 0, reason="root writes in any folder")),
])
def test_an_unusable_sqlite_store_is_one_clear_error(
        case, command: str, pipeline: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    path, cause = case(pipeline)
    before = path.read_bytes() if path.is_file() else None
    uri = f"sqlite:///{path}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert run(command) == 1
    err = capsys.readouterr().err
    if not path.exists():  # neither creates a store: both read (promote: the run it promotes)
        assert f"MLflow store {uri}: no such file (MLFLOW_TRACKING_URI names it)" in err
        return
    assert f"multitask {command}: error: MLflow store {uri}: {cause}; set MLFLOW_TRACKING_URI " \
        "to an MLflow SQLite store" in err
    assert "Traceback" not in err
    if before is not None:
        assert path.read_bytes() == before  # not turned into a store


def test_the_repository_store_that_is_a_folder_says_it_is_the_default(
        pipeline: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (pipeline / ".git").mkdir()
    (pipeline / "mlflow.db").mkdir()
    assert run("promote") == 1
    assert (f"MLflow store sqlite:///{pipeline}/mlflow.db: {pipeline}/mlflow.db is a folder, not "
            "an SQLite file; this is the repository's own store (mlflow.db at its root)"
            ) in capsys.readouterr().err


def test_predict_names_an_unreachable_server_as_registry_does(
        tmp_path: Path, refused_port: int, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:s3cret@127.0.0.1:{refused_port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    image = tmp_path / "image.npy"
    image.write_bytes(b"")  # never read: the model is fetched first
    assert main(["predict", "--model", "models:/multifashion@champion", str(image)]) == 1
    err = capsys.readouterr().err
    assert (f"multitask predict: error: cannot load model models:/multifashion@champion: "
            f"MLflow tracking server http://alice:***@127.0.0.1:{refused_port} is unreachable "
            "(connection refused); check that the server is running and that "
            "MLFLOW_TRACKING_URI names it") in err
    assert "s3cret" not in err and "Max retries" not in err


def test_refused_credentials_are_named_not_a_server_that_is_down(
        pipeline: Path, unauthorized_port: int, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI",
                       f"http://alice:wrong@127.0.0.1:{unauthorized_port}")
    server = f"MLflow tracking server http://alice:***@127.0.0.1:{unauthorized_port}"
    advice = ("refused the credentials (HTTP 401); check the user name and password in "
              "MLFLOW_TRACKING_URI (or MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)")
    for command in (("registry",), ("promote", "--status")):
        assert run(*command) == 1
        err = capsys.readouterr().err
        assert f"multitask {command[0]}: error: {server} {advice}" in err
        assert "server is up" not in err and "wrong" not in err
    assert main(["predict", "--model", "models:/multifashion@champion",
                 str(pipeline / "params.yaml")]) == 1
    err = capsys.readouterr().err
    assert f"cannot load model models:/multifashion@champion: {server} {advice}" in err


@pytest.fixture
def two_repositories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """Repository ``a`` with a pipeline folder ``a/sample``, and repository ``b``, the current
    folder; no MLFLOW_TRACKING_URI."""
    a, b = tmp_path / "a", tmp_path / "b"
    for repo in (a, b):
        (repo / ".git").mkdir(parents=True)
    (a / "sample" / "reports").mkdir(parents=True)
    (a / "sample" / "params.yaml").write_text((ROOT / "sample" / "params.yaml").read_text())
    (a / "sample" / "reports" / "train.json").write_text(json.dumps({"run_id": RUN_ID}))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(b)
    return a, b


@pytest.mark.parametrize("command", ["promote", "registry"])
def test_a_pipeline_of_another_repository_is_refused_not_logged_beside_this_folder(
        command: str, two_repositories: tuple[Path, Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    a, b = two_repositories
    assert main([command, "--params", str(a / "sample" / "params.yaml")]) == 1
    assert (f"multitask {command}: error: {a / 'sample'} is a pipeline of {a}, but the MLflow "
            f"store is found from the current folder ({b / 'mlflow.db'}); run the command "
            f"inside {a}, or set MLFLOW_TRACKING_URI") in capsys.readouterr().err
    assert not (b / "mlflow.db").exists() and not (a / "mlflow.db").exists()


def test_a_stage_run_of_another_repository_is_refused(
        two_repositories: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from multitask import tracking
    from multitask.config import load_params

    a, b = two_repositories
    params = load_params(a / "sample" / "params.yaml")
    with pytest.raises(store.StoreError, match=r"is a pipeline of"), \
            tracking.stage_run(params, "train"):
        pass
    assert not (b / "mlflow.db").exists()
    monkeypatch.chdir(a / "sample")  # inside its repository: its own store, a/mlflow.db
    store.require_pipeline_store(a / "sample")
    monkeypatch.chdir(b)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{b / 'team.db'}")
    store.require_pipeline_store(a / "sample")  # the store is named: nothing to guess
