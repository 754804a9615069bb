"""Make targets that need a file a fresh clone lacks say what to run instead of failing deep
inside the tool they call."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _make(*args: str) -> subprocess.CompletedProcess[str]:
    # -o: take the venv as built (the suite runs in it); --no-print-directory: as under make test
    return subprocess.run(["make", "--no-print-directory", "-o", ".venv/.installed",
                           "-o", "setup", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_dashboard_without_a_study_file_says_how_to_make_one(tmp_path: Path) -> None:
    missing = tmp_path / "study.journal"
    result = _make("dashboard", f"STUDY={missing}")
    assert result.returncode != 0
    assert (f"make dashboard: {missing} does not exist yet: run make repro (the tune stage "
            "writes it)") in result.stderr
    assert "optuna-dashboard" not in result.stdout  # it never started


def test_repro_example_without_fashion_mnist_says_where_to_get_it(tmp_path: Path) -> None:
    missing = tmp_path / "fashion-mnist"
    # -B: rebuild the archive even where an earlier run left one (it is not touched: the
    # check comes first)
    result = _make("-B", "examples/fashion-manifest/source/fashion.tar.gz",
                   f"FASHION_SOURCE={missing}")
    assert result.returncode != 0
    assert (f"make repro-example: {missing} is missing: install Debian's dataset-fashion-mnist"
            in result.stderr)
    assert "FASHION_SOURCE=<folder" in result.stderr


def test_help_lists_every_target_and_installs_nothing() -> None:
    """`make help`, a new user's first try, answers without building the venv."""
    result = subprocess.run(["make", "--no-print-directory", "-n", "help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert "pip install" not in result.stdout and "-m venv" not in result.stdout
    listed = subprocess.run(["make", "--no-print-directory", "help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=True).stdout
    phony = next(line for line in (ROOT / "Makefile").read_text().splitlines()
                 if line.startswith(".PHONY:")).split()[1:]
    named = {line.split()[1] for line in listed.splitlines() if line.startswith("make ")}
    assert named == set(phony) - {"help"}
