"""Figures the README quotes in its prose agree with the committed files they come from.

The rendered blocks are test_readme.py's; these are the numbers written by hand around them
(a sentence that quotes a report, a count of tests). Reports are read as the last commit holds
them: `make repro` on another CPU rewrites the workspace's with that CPU's floats.
"""

from __future__ import annotations

import csv
import io
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _readme() -> str:
    """README.md with its line breaks folded, so a figure split over two lines still matches."""
    return " ".join((ROOT / "README.md").read_text().split())


def _committed(path: str) -> str:
    shown = subprocess.run(["git", "show", f"HEAD:{path}"], cwd=ROOT, capture_output=True,
                           text=True)
    if shown.returncode != 0:
        pytest.skip(f"no committed {path} (not a git checkout?)")
    return shown.stdout


def _signed(value: float, digits: int) -> str:
    """As the README writes a signed figure: a minus sign, not a hyphen."""
    return f"{value:.{digits}f}".replace("-", "−")


def test_the_example_gradient_figures_are_its_last_epoch_in_history_csv() -> None:
    history = list(csv.DictReader(io.StringIO(
        _committed("examples/fashion-manifest/reports/plots/history.csv"))))
    last = history[-1]
    category, height = (float(last["grad/norm/category"]), float(last["grad/norm/height_px"]))
    cosine = float(last["grad/cos/category__height_px"])
    found = re.search(r"the category loss's gradient on the shared encoder is ([\d.]+) times the "
                      r"height loss's \(norms ([\d.]+) against ([\d.]+), .*?\) and nearly "
                      r"orthogonal to it \(cosine ([−\d.]+)\)", _readme())
    assert found, "README.md, A heterogeneous example: the gradient sentence is gone"
    assert found.groups() == (f"{category / height:.1f}", f"{category:.2f}", f"{height:.2f}",
                              _signed(cosine, 3)), (
        "README.md, A heterogeneous example: the gradient figures differ from the last epoch "
        "of examples/fashion-manifest/reports/plots/history.csv")
