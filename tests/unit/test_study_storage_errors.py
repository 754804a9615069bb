"""The study store: one that cannot be used says which and what to do; a damaged last record is
mended or refused; the stage's snapshot keeps other studies; a relative path is the pipeline's."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

import optuna
import pytest

from multitask.config import parse_params
from multitask.layout import Layout
from multitask.tuning.reports import write_snapshot
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


def _journal_with_a_study(path: Path, name: str, trials: int) -> None:
    storage = StudyStorage(str(path), "test").optuna
    study = optuna.create_study(study_name=name, storage=storage)
    for value in range(trials):
        study.add_trial(optuna.trial.create_trial(value=float(value)))


def test_a_record_cut_short_by_a_crash_is_dropped_not_joined_to_the_next(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    journal = tmp_path / "study.journal"
    _journal_with_a_study(journal, "s", 3)
    whole = journal.read_bytes()
    journal.write_bytes(whole + whole.splitlines(keepends=True)[-1][:25])  # a write cut short
    with caplog.at_level(logging.WARNING, logger="multitask.tuning.storage"):
        storage = StudyStorage(str(journal), "params.yaml").optuna
    assert journal.read_bytes() == whole
    assert "dropped an incomplete last record (25 bytes" in caplog.text
    study = optuna.load_study(study_name="s", storage=storage)
    study.add_trial(optuna.trial.create_trial(value=9.0))  # appended after it: still readable
    again = StudyStorage(str(journal), "params.yaml").optuna
    assert len(optuna.load_study(study_name="s", storage=again).trials) == 4


@pytest.mark.parametrize("cut", [25, 70_000])
def test_a_long_record_cut_short_is_dropped_and_a_long_last_record_kept(
        tmp_path: Path, cut: int) -> None:
    """Records longer than the block the tail is read in (a trial with a large attribute)."""
    journal = tmp_path / "study.journal"
    _journal_with_a_study(journal, "s", 1)
    study = optuna.load_study(study_name="s", storage=StudyStorage(str(journal), "t").optuna)
    study.add_trial(optuna.trial.create_trial(value=1.0, user_attrs={"log": "x" * 100_000}))
    whole = journal.read_bytes()
    assert len(whole.splitlines()[-1]) > 100_000
    StudyStorage(str(journal), "params.yaml")  # a whole long last record: nothing cut
    assert journal.read_bytes() == whole
    journal.write_bytes(whole + whole.splitlines(keepends=True)[-1][:cut])
    storage = StudyStorage(str(journal), "params.yaml").optuna
    assert journal.read_bytes() == whole
    assert len(optuna.load_study(study_name="s", storage=storage).trials) == 2


def test_a_journal_that_is_one_record_cut_short_is_emptied(tmp_path: Path) -> None:
    journal = tmp_path / "study.journal"
    journal.write_bytes(b'{"op_code": 0, "worker_id"')
    StudyStorage(str(journal), "params.yaml")
    assert journal.read_bytes() == b""


def test_a_bad_last_line_is_refused_before_anything_is_appended(tmp_path: Path) -> None:
    journal = tmp_path / "study.journal"
    _journal_with_a_study(journal, "s", 2)
    journal.write_bytes(journal.read_bytes() + b"garbage\n")
    before = journal.read_bytes()
    with pytest.raises(ValueError, match=rf"{journal}: not a readable Optuna journal "
                                         r"\(JSONDecodeError"):
        StudyStorage(str(journal), "params.yaml")
    assert journal.read_bytes() == before


def test_a_snapshot_replaces_its_own_study_and_keeps_the_others(tmp_path: Path) -> None:
    """tune.storage elsewhere: the stage's journal gets a copy of the study, and the studies
    it held before stay (it was once rewritten with the copy alone)."""
    journal, elsewhere = tmp_path / "study.journal", tmp_path / "mine.journal"
    _journal_with_a_study(journal, "kept", 5)
    _journal_with_a_study(elsewhere, "mine", 1)
    source = StudyStorage(str(elsewhere), "params.yaml")
    assert write_snapshot(source, "mine", journal)
    optuna.load_study(study_name="mine", storage=source.optuna).add_trial(
        optuna.trial.create_trial(value=1.0))
    assert write_snapshot(source, "mine", journal)  # the newer copy replaces the older
    stored = StudyStorage(str(journal), "params.yaml").optuna
    assert {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(stored)} == {
        "kept": 5, "mine": 2}


def test_a_relative_storage_is_the_pipeline_folders_wherever_tune_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    params = parse_params({"tune": {"storage": "reports/tuning/mine.journal"}})
    storage = StudyStorage.of(params, Layout(tmp_path / "pipeline"))
    assert storage.location == str(tmp_path / "pipeline" / "reports" / "tuning" / "mine.journal")
    assert not (tmp_path / "reports").exists()
