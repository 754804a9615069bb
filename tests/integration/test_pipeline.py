"""`dvc repro` of the sample pipeline in a fresh copy of the repository: every stage runs and
writes its declared outputs; a second `dvc repro` runs nothing."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("check", "download", "validate", "preprocess", "baselines", "tune", "train",
          "evaluate")

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("sample_pipeline")]


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory: pytest.TempPathFactory, repo_copy: Callable[[Path], Path],
               dvc: Callable[..., subprocess.CompletedProcess[str]]) -> tuple[Path, str]:
    repo = repo_copy(tmp_path_factory.mktemp("repo"))
    result = dvc(repo, "repro", "sample/dvc.yaml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return repo, result.stdout


def test_every_stage_runs(reproduced: tuple[Path, str]) -> None:
    _, log = reproduced
    for stage in STAGES:
        assert f"Running stage 'sample/dvc.yaml:{stage}'" in log


def test_raw_files_are_the_sample(reproduced: tuple[Path, str]) -> None:
    repo, _ = reproduced
    raw = sorted(p.name for p in (repo / "sample/data/raw/fashion_mnist").iterdir())
    assert raw == sorted(p.name for p in (ROOT / "data/sample/fashion-mnist").glob("*.gz"))


def test_processed_data_and_meta(reproduced: tuple[Path, str]) -> None:
    repo, _ = reproduced
    processed = repo / "sample/data/processed"
    meta = json.loads((processed / "meta.json").read_text())
    assert [(t["name"], t["classes"]) for t in meta["tasks"]] == [("left", 10), ("right", 10)]
    assert meta["splits"] == {"train": 7200, "val": 800, "test": 2000}
    assert meta["seed"] == 0 and len(meta["sha256"]) == 64
    labels = np.load(processed / "test_labels.npy")
    assert labels.shape == (2000, 2) and np.all(labels[:, 0] != labels[:, 1])


def test_reports_hold_per_task_results(reproduced: tuple[Path, str]) -> None:
    repo, _ = reproduced
    reports = repo / "sample/reports"
    assert json.loads((reports / "validation/summary.json").read_text())["success"] is True
    metrics = json.loads((reports / "metrics.json").read_text())
    baselines = json.loads((reports / "baselines.json").read_text())
    for task in ("left", "right"):
        assert 0.3 < metrics["tasks"][task]["accuracy"] <= 1.0  # chance is 0.1
        assert 0.3 < baselines["tasks"][task]["accuracy"] <= 1.0
        assert (reports / f"confusion/{task}.csv").read_text().startswith("actual,predicted")
    assert np.isfinite(metrics["delta_m_pct"])
    weights = json.loads((reports / "tuning/weights.json").read_text())["weights"]
    assert sum(weights.values()) == pytest.approx(1.0)
    train = json.loads((reports / "train.json").read_text())
    history = (reports / "plots/history.csv").read_text().splitlines()
    assert len(history) == 1 + train["epochs"]
    assert (repo / "sample/models/model.pt").is_file()


def test_second_repro_runs_nothing(
        reproduced: tuple[Path, str], dvc: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    repo, _ = reproduced
    again = dvc(repo, "repro", "sample/dvc.yaml")
    assert again.returncode == 0, again.stderr
    assert "Running stage" not in again.stdout
    assert "Data and pipelines are up to date." in again.stdout
    status = dvc(repo, "status", "sample/dvc.yaml")
    assert "up to date" in status.stdout


def test_params_change_reruns_only_what_depends_on_it(
        reproduced: tuple[Path, str], dvc: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    repo, _ = reproduced
    dry = dvc(repo, "repro", "--dry", "sample/dvc.yaml:evaluate")
    assert "Running stage" not in dry.stdout
    params = repo / "sample/params.yaml"
    params.write_text(params.read_text().replace("  epochs: 5\n", "  epochs: 4\n", 1))
    dry = dvc(repo, "repro", "--dry", "sample/dvc.yaml")
    ran = {stage for stage in STAGES if f"Running stage 'sample/dvc.yaml:{stage}'" in dry.stdout}
    # directly affected; evaluate follows once train's outputs change (a dry run can't know)
    assert ran == {"check", "baselines", "train"}


def test_a_bad_experiment_keeps_the_last_results_and_one_command_restores(
        reproduced: tuple[Path, str], dvc: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    """The check stage stops a misspelt name before DVC removes any output; the README's
    restore command brings back the committed params, lock and reports."""
    repo, _ = reproduced
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "checkout", "-q", "--", "sample/params.yaml"], cwd=repo, check=True)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "results"], cwd=repo, check=True)
    kept = ["sample/models/model.pt", "sample/reports/train.json",
            "sample/reports/plots/history.csv", "sample/reports/tuning/pareto.csv"]
    before = {name: (repo / name).read_bytes() for name in kept}
    bad = dvc(repo, "exp", "run", "sample/dvc.yaml",
              "-S", "sample/params.yaml:train.weighting=nope")
    assert bad.returncode != 0
    assert ("params.yaml: train.weighting: unknown weighting method 'nope'"
            in bad.stdout + bad.stderr)
    assert "Running stage 'sample/dvc.yaml:check'" in bad.stdout
    assert "Running stage 'sample/dvc.yaml:train'" not in bad.stdout
    assert {name: (repo / name).read_bytes() for name in kept} == before
    subprocess.run(["git", "checkout", "--", "sample/params.yaml", "sample/dvc.lock",
                    "sample/reports"], cwd=repo, check=True)
    assert dvc(repo, "checkout", "sample/dvc.yaml").returncode == 0
    assert "up to date" in dvc(repo, "status", "sample/dvc.yaml").stdout
