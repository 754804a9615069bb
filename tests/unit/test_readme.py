"""README's measured figures are rendered from reports/*.json, never typed by hand."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from multitask.layout import Layout

ROOT = Path(__file__).resolve().parents[2]


def _renderer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("update_readme", ROOT / "scripts" /
                                                  "update_readme.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RENDERED_FROM = ["README.md", "reports/metrics.json", "reports/baselines.json",
                 "reports/train.json", "reports/tuning/weights.json",
                 "reports/method_comparison.json", "reports/benchmarks.json",
                 "reports/pretraining/study.md"]


def _committed(tmp_path: Path) -> Path:
    """README and the reports it is rendered from, as the last commit holds them (a local
    `dvc exp run` rewrites reports/ in the workspace; what must agree is what is committed)."""
    for path in RENDERED_FROM:
        shown = subprocess.run(["git", "show", f"HEAD:{path}"], cwd=ROOT, capture_output=True)
        if shown.returncode != 0:
            pytest.skip(f"no committed {path} (not a git checkout?)")
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(shown.stdout)
    return tmp_path


@pytest.mark.parametrize("block", ["results", "comparison", "pretraining", "benchmarks"])
def test_readme_blocks_match_the_committed_reports(
        block: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    renderer = _renderer()
    committed = _committed(tmp_path)
    monkeypatch.setattr(renderer, "ROOT", committed)
    text = (committed / "README.md").read_text()
    found = re.search(rf"<!-- {block}:start -->\n(.*?)<!-- {block}:end -->", text, re.S)
    assert found, f"README.md has no {block} block"
    assert found.group(1) == getattr(renderer, block)() + "\n", (
        f"README.md's {block} block is out of date: run python scripts/update_readme.py")


def test_comparison_ranks_by_delta_m_with_baselines_failures_and_architectures(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    renderer = _renderer()
    (tmp_path / "reports").mkdir()
    tasks = {"a": {"accuracy": 0.5}, "b": {"accuracy": 0.7}}
    baselines = {"a": 0.6, "b": 0.8}
    (tmp_path / "reports" / "method_comparison.json").write_text(json.dumps({
        "mtan@3": {"epochs": 3, "architecture": "mtan", "baselines": baselines, "methods": {
            "equal": {"tasks": tasks, "mean_accuracy": 0.6, "delta_m_pct": -0.5}}},
        "default@3": {"epochs": 3, "architecture": None, "baselines": baselines, "methods": {
            "worse": {"tasks": tasks, "mean_accuracy": 0.6, "delta_m_pct": -12.5},
            "broken": {"experiment": "cmp-broken-e3", "error": "no metrics"},
            "equal": {"tasks": tasks, "mean_accuracy": 0.6, "delta_m_pct": -1.0}}}}))
    monkeypatch.setattr(renderer, "LAYOUT", Layout(tmp_path))
    methods, architectures = renderer.comparison().split("\n\n3 epochs")
    assert methods.startswith("3 epochs each, params.yaml's architecture")
    rows = [line for line in methods.splitlines() if line.startswith("| `") or "baselines" in line]
    assert [r.split("|")[1].strip() for r in rows] == [
        "`equal`", "`worse`", "`broken`", "single-task baselines (Δm% reference)"]
    assert rows[1].endswith("| 0.5000 | 0.7000 | 0.6000 | -12.50 |")
    assert "no metrics" in rows[2]
    assert rows[3].endswith("| 0.6000 | 0.8000 | 0.7000 | 0 |")
    assert architectures.startswith(" each, by `model.architecture`")
    labels = [line.split("|")[1].strip() for line in architectures.splitlines()
              if line.startswith("| `")]
    assert labels == ["`mtan`, `equal`", "`hps`, `equal`"]  # hard sharing as the reference
