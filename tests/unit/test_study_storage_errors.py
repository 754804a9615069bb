"""A study store that cannot be used says which and what to do, before any trial runs."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from multitask.tuning.storage import StudyStorage


def test_a_corrupt_journal_is_named_with_what_to_do(tmp_path: Path) -> None:
    journal = tmp_path / "study.journal"
    record = {"op_code": 0, "worker_id": "w", "study_name": "s", "directions": [1]}
    # a bad line before the last (Optuna skips a last line cut short by a crash)
    journal.write_text(f"{json.dumps(record)}\nnot a record\n{json.dumps(record)}\n")
    with pytest.raises(ValueError, match=rf"{journal}: not a readable Optuna journal "
                                         r"\(JSONDecodeError: .*\); only multitask tune writes "
                                         r"it: restore it .* or delete it"):
        StudyStorage(str(journal), "params.yaml")


def test_an_unreachable_postgresql_server_is_named_password_masked() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql://alice:s3cret@127.0.0.1:{port}/optuna"
    with pytest.raises(RuntimeError) as caught:
        StudyStorage(url, "params.yaml")
    message = str(caught.value)
    assert message.startswith(f"params.yaml: tune.storage: postgresql://alice:***@127.0.0.1:"
                              f"{port}/optuna: cannot connect (")
    assert "check that the PostgreSQL server runs" in message
    assert "s3cret" not in message
