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


# (the README's words around a parameter count, with {n} where the count stands; the model;
# how many networks of it the count covers)
PARAMETER_COUNTS = [
    ("one LeNet and two heads, {n} parameters", {"architecture": "hps"}, 2, 1),
    ("the two single-task networks together (2 × {n})", {"architecture": "hps"}, 1, 1),
    ("the two single-task LeNets together ({n} parameters)", {"architecture": "hps"}, 1, 2),
    ("after each stage: {n} parameters", {"architecture": "cross_stitch", "stitch": "scalar"},
     2, 1),
    ("(`model.stitch: linear`, {n} parameters",
     {"architecture": "cross_stitch", "stitch": "linear"}, 2, 1),
    ("MMoE (4 experts; {n} parameters)", {"architecture": "mmoe"}, 2, 1),
    ("(`model.architecture: branched`, {n} parameters", {"architecture": "branched"}, 2, 1),
    ("MTAN ({n})", {"architecture": "mtan"}, 2, 1),
    ("`model.width: 2` doubles its channels and features, {n} parameters with two heads",
     {"architecture": "hps", "width": 2}, 2, 1),
    ("single-task LeNets of width 2 ({n} parameters each)", {"architecture": "hps", "width": 2},
     1, 1),
    ("with scalar units, {n} parameters",
     {"architecture": "cross_stitch", "stitch": "scalar", "width": 1.5}, 2, 1),
    ("against single-task LeNets of {n})", {"architecture": "hps", "width": 1.5}, 1, 1),
    ("they would take the pair to {n} parameters",
     {"architecture": "cross_stitch", "stitch": "linear", "width": 1.5}, 2, 1),
    ("(width 1.4, shifts, 50 epochs, {n} parameters)",
     {"architecture": "cross_stitch", "stitch": "linear", "width": 1.4}, 2, 1),
    ("a single-task LeNet of that width has {n}", {"architecture": "hps", "width": 1.4}, 1, 1),
]


@pytest.mark.parametrize(("words", "model", "tasks", "networks"), PARAMETER_COUNTS,
                         ids=[words for words, *_ in PARAMETER_COUNTS])
def test_a_parameter_count_is_what_the_model_code_builds(
        words: str, model: dict[str, object], tasks: int, networks: int) -> None:
    """Each count is of the network `build_model` gives for MultiFashion (1×36×36, 10-way
    tasks), the single-task ones with one head."""
    from multitask.config import ModelConfig
    from multitask.data.processed import task_of
    from multitask.models import build_model

    heads = [task_of({"name": name, "classes": 10}) for name in ("left", "right")[:tasks]]
    network = build_model(ModelConfig(**model), heads, 1, 36)
    count = networks * sum(parameter.numel() for parameter in network.parameters())
    readme = _readme()
    assert words.format(n=f"{count:,}") in readme, (
        f"README.md: {model} builds {count:,} parameters; the README says "
        + (re.search(re.escape(words).replace(re.escape("{n}"), r"[\d,]+"), readme)
           or [f"nothing like {words!r}"])[0])
