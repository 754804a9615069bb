"""README's measured figures are rendered from reports/*.json, never typed by hand."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from multitask.layout import Layout

ROOT = Path(__file__).resolve().parents[2]


def _renderer(script: Path = ROOT / "scripts" / "update_readme.py") -> ModuleType:
    spec = importlib.util.spec_from_file_location("update_readme", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RENDERED_FROM = ["README.md", "params.yaml", "reports/metrics.json", "reports/baselines.json",
                 "reports/train.json", "reports/tuning/weights.json",
                 "reports/method_comparison.json", "reports/benchmarks.json",
                 "reports/pretraining/study.md",
                 *(f"examples/fashion-manifest/{path}" for path in (
                     "params.yaml", "reports/metrics.json", "reports/baselines.json",
                     "reports/train.json", "reports/tuning/weights.json"))]


def _committed(tmp_path: Path) -> Path:
    """README and the reports it is rendered from, as the last commit holds them (a local
    `dvc exp run` rewrites reports/ in the workspace; what must agree is what is committed)."""
    comparisons = subprocess.run(["git", "ls-tree", "-r", "--name-only", "HEAD",
                                  "reports/comparisons/",
                                  "examples/fashion-manifest/reports/comparisons/"],
                                 cwd=ROOT, capture_output=True,
                                 text=True).stdout.split()  # `multitask compare`'s outputs
    for path in [*RENDERED_FROM, *comparisons]:
        shown = subprocess.run(["git", "show", f"HEAD:{path}"], cwd=ROOT, capture_output=True)
        if shown.returncode != 0:
            pytest.skip(f"no committed {path} (not a git checkout?)")
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(shown.stdout)
    return tmp_path


@pytest.mark.parametrize("block", ["results", "example-results", "example-comparison",
                                   "comparison", "pretraining", "benchmarks"])
@pytest.mark.parametrize("workspace", ["as committed", "rerun on another machine"])
def test_readme_blocks_match_the_committed_reports(
        block: str, workspace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README is checked against the commit's reports, not the workspace's: `make repro` on
    another CPU rewrites reports/ with that CPU's floats, and `make test` must pass after it."""
    renderer = _renderer()
    if workspace != "as committed":  # the renderer of a checkout whose reports/ differ
        checkout = tmp_path / "checkout"
        (checkout / "scripts").mkdir(parents=True)
        (checkout / "scripts" / "update_readme.py").write_bytes(
            (ROOT / "scripts" / "update_readme.py").read_bytes())
        for path in RENDERED_FROM[1:]:
            (checkout / path).parent.mkdir(parents=True, exist_ok=True)
            (checkout / path).write_text('{"rerun": "other floats"}')
        renderer = _renderer(checkout / "scripts" / "update_readme.py")
        assert checkout == renderer.ROOT
    committed = _committed(tmp_path / "committed")
    monkeypatch.setattr(renderer, "ROOT", committed)
    text = (committed / "README.md").read_text()
    found = re.search(rf"<!-- {block}:start -->\n(.*?)<!-- {block}:end -->", text, re.S)
    assert found, f"README.md has no {block} block"
    assert found.group(1) == getattr(renderer, block.replace("-", "_"))() + "\n", (
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
    monkeypatch.setattr(renderer, "ROOT", tmp_path)
    methods, architectures = renderer.one_seed_comparison().split("\n\n3 epochs")
    assert methods.startswith("3 epochs each, hard sharing (`hps`, the default architecture then)")
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


def test_comparisons_over_seeds_come_first_with_their_plots(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    renderer = _renderer()
    monkeypatch.setattr(renderer, "ROOT", tmp_path)
    monkeypatch.setattr(renderer, "ROOT", tmp_path)
    assert renderer.comparison().startswith("_No comparison over seeds yet")
    summary = {"mean": 0.8, "std": 0.01, "per_seed": [0.79, 0.81]}
    row = {"label": "equal", "overrides": {"train.weighting": "equal"}, "rank": 1, "tied": True,
           "tasks": {"a": summary}, "mean_accuracy": summary, "baselines": {"a": summary},
           "delta_m_pct": {"mean": 0.5, "std": 0.1, "ci_low": 0.2, "ci_high": 0.8,
                           "per_seed": [0.4, 0.6]}}
    result = {"name": "methods", "pipeline": "dvc.yaml", "seeds": [0, 1], "set": {},
              "confidence": 0.95, "tasks": ["a"], "rows": [row], "baselines": {"a": summary}}
    Layout(tmp_path).comparison_json("methods").parent.mkdir(parents=True)
    Layout(tmp_path).comparison_json("methods").write_text(json.dumps(result))
    (tmp_path / "reports" / "method_comparison.json").write_text(json.dumps({
        "default@3": {"epochs": 3, "architecture": None, "methods": {}}}))
    rendered = renderer.comparison()
    assert rendered.startswith("`multitask compare methods` on `dvc.yaml`, seeds 0, 1:")
    assert "| 1 | `equal` | `train.weighting=equal` | 0.8000 ± 0.0100 |" in rendered
    assert "(reports/comparisons/methods/comparison.png)" in rendered
    assert rendered.index("comparison.png") < rendered.index("**One seed, before comparisons")


def test_a_kept_benchmark_row_names_its_own_date_and_machine(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    renderer = _renderer()
    machine = {"cpu_model": "AMD EPYC", "cpu_capability": "AVX512", "cpu_count": 2,
               "platform": "Linux", "torch": "2.14.1", "cuda": None}
    laptop = {**machine, "cpu_model": "Intel(R) Core(TM) i5", "cpu_capability": "AVX2"}
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "benchmarks.json").write_text(json.dumps({"cli": {
        "measured_at": "2026-12-05T10:00:00+00:00", "commit": "8f18eb7c0ffee", "machine": laptop,
        "rows": [
            {"name": "help", "value": 0.05, "unit": "s"},
            {"name": "repro", "value": 1.3, "unit": "s", "measured_at": "2026-12-02T23:07:49",
             "machine": machine, "kept": "pipeline not reproduced yet: run make repro"}]}}))
    monkeypatch.setattr(renderer, "ROOT", tmp_path)
    rendered = renderer.benchmarks()
    assert "| cli: repro | 1.3 s (kept from 2026-12-02) |  |  |" in rendered
    assert ("- cli (2026-12-05, commit 8f18eb7): Intel(R) Core(TM) i5, torch CPU capability AVX2"
            in rendered)
    assert ("- cli: repro (2026-12-02; not measured since: pipeline not reproduced yet: run "
            "make repro): AMD EPYC, torch CPU capability AVX512") in rendered


def _readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n### {title}\n")
    return text[start:text.index("\n#", start + 1)]


def test_the_dvc_remote_section_names_every_cached_report_json() -> None:
    """README says reports/*.json are `cache: false` and committed to git, so a cached one
    (pushed and pulled, absent from a fresh clone until `dvc pull`) must be named as pushed."""
    section = _readme_section("A DVC remote: data, models and the tuning journal")
    for dvc_yaml in ("dvc.yaml", "sample/dvc.yaml"):
        stages = yaml.safe_load((ROOT / dvc_yaml).read_text())["stages"]
        cached = [name for stage in stages.values() for out in stage.get("outs", [])
                  for name, options in ([(out, {})] if isinstance(out, str) else out.items())
                  if name.startswith("reports/") and name.endswith(".json")
                  and (options or {}).get("cache", True)]
        assert cached, f"{dvc_yaml}: no cached reports/*.json (update this test)"
        for name in cached:
            assert f"`{name}`" in section, f"{dvc_yaml}: {name} is cached but not named"


def test_the_class_balance_check_states_the_smallest_count_it_judges() -> None:
    """A val split of a few dozen rows holding one class only passed validate without a word:
    every class's predicted count was below MIN_EXPECTED, which the README did not say."""
    from multitask.data.manifest_checks import MIN_EXPECTED

    section = " ".join((ROOT / "README.md").read_text().split())
    assert (f"a class its share predicts fewer than {MIN_EXPECTED} times in the split is too "
            "rare to judge and passes") in section


def _github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation but hyphens dropped, spaces
    to hyphens (``Δm%`` keeps ``δm``: letters of any script stay)."""
    text = re.sub(r"[`*_]|\]\([^)]*\)|[\[\]]", "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_every_link_within_the_readme_lands_on_a_heading_or_anchor() -> None:
    """A section renamed, or a link written before its target, leaves a link that scrolls
    nowhere; GitHub says nothing about it."""
    text = re.sub(r"```.*?```", "", (ROOT / "README.md").read_text(), flags=re.S)
    targets = {_github_anchor(line.lstrip("#")) for line in text.splitlines()
               if re.match(r"#{1,6} ", line)}
    targets |= set(re.findall(r'<a id="([^"]+)"', text))
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links, "the README links within itself"
    assert sorted(links - targets) == []
