"""scripts/tracking_server.py without starting anything: `make server` runs it in the
foreground, and `status`/`stop` on a folder where nothing ever ran say so and change nothing.
(The server itself, over PostgreSQL: tests/integration/test_tracking_server.py.)"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "tracking_server.py"


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=60)


def test_make_server_runs_the_script_in_the_foreground() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "server" in re.search(r"^\.PHONY:(.*)$", makefile, re.M)[1].split()
    # --no-print-directory: under `make test` (MAKELEVEL 1) make would add "Leaving directory"
    dry = subprocess.run(["make", "-n", "--no-print-directory", "server",
                          "SERVER_ARGS=--port 5001"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert dry.stdout.strip().splitlines()[-1] == (
        ".venv/bin/python scripts/tracking_server.py run --port 5001")


def test_help_names_every_action_and_the_defaults() -> None:
    shown = _script("--help")
    assert shown.returncode == 0
    text = " ".join(shown.stdout.split())
    for phrase in ("{run,start,stop,status}", "default: .server", "default: 127.0.0.1",
                   "default: 5000", "s3://bucket/path", "gs://bucket/path", "MLFLOW_TRACKING_URI"):
        assert phrase in text, phrase


def test_status_and_stop_where_nothing_ran(tmp_path: Path) -> None:
    status = _script("status", "--dir", str(tmp_path / "state"), "--port", "1")
    assert status.returncode == 3
    assert "PostgreSQL: not running" in status.stderr
    assert "mlflow server: http://127.0.0.1:1 not running" in status.stderr
    assert _script("stop", "--dir", str(tmp_path / "state")).returncode == 0
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("action", ["start", "run"])
def test_a_port_another_server_listens_on_is_refused_before_anything_starts(
        tmp_path: Path, action: str) -> None:
    """mlflow server exits 0 on a taken port, and /health would answer from the other server:
    the script must say so and fail, not report a server that is not its own."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        result = _script(action, "--dir", str(tmp_path / "state"), "--port", str(port))
    assert result.returncode == 1
    assert (f"tracking_server.py {action}: 127.0.0.1:{port} is already in use"
            in result.stderr)
    assert "--port" in result.stderr
    assert not (tmp_path / "state").exists()  # no PostgreSQL cluster, no pid file


def test_runuser_is_found_outside_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-login root's PATH may lack /usr/sbin, where util-linux puts runuser."""
    if not Path("/usr/sbin/runuser").is_file():
        pytest.skip("no /usr/sbin/runuser on this machine")
    from tracking_server import runuser  # tests/conftest.py loads the script as this module

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert runuser() == "/usr/sbin/runuser"
    monkeypatch.setenv("PATH", "/usr/sbin:/usr/bin:/bin")
    assert runuser() == "/usr/sbin/runuser"


def test_status_asks_the_port_the_server_was_started_on(tmp_path: Path) -> None:
    """`start --port 5317` then `status` (no --port): status asks the server where it runs,
    not port 5000 (where it reported "not answering" and exited 3 for a healthy server)."""
    import http.server
    import threading

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    state = tmp_path / "state"
    state.mkdir()
    with http.server.HTTPServer(("127.0.0.1", 0), Health) as health:
        threading.Thread(target=health.serve_forever, daemon=True).start()
        port = health.server_address[1]
        mlflow = subprocess.Popen(["sleep", "60"])  # stands for the started server's pid
        try:
            (state / "mlflow.pid").write_text(str(mlflow.pid))
            (state / "mlflow.address").write_text(f"127.0.0.1 {port}")  # as start writes it
            status = _script("status", "--dir", str(state))
        finally:
            mlflow.kill()
            mlflow.wait()
            health.shutdown()
    assert f"mlflow server: http://127.0.0.1:{port} (pid {mlflow.pid}, healthy)" in status.stderr
    assert status.returncode == 3  # PostgreSQL is not running in this folder
