"""The heterogeneous example pipeline (examples/fashion-manifest): a manifest with a
multiclass, a binary and a regression task runs `dvc repro` end to end in a copy of the
repository; the committed archive digest is what `make repro-example` writes."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import runpy
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = Path("examples") / "fashion-manifest"
SAMPLE = ROOT / "data" / "sample" / "fashion-mnist"
DEBIAN = Path("/usr/share/datasets/fashion-mnist")
STAGES = ("check", "download", "validate", "preprocess", "pretrain", "baselines", "tune",
          "train", "evaluate")
PRIMARY = {"category": "accuracy", "on_left": "accuracy", "height_px": "mae"}  # tasks.py

script = runpy.run_path(str(ROOT / "scripts" / "make_fashion_manifest.py"),
                        run_name="make_fashion_manifest")


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def dotted_keys(node: Any, prefix: str = "") -> list[str]:
    """Every key of a nested mapping, spelt as DVC names params: ``train.augment.flip``."""
    if not isinstance(node, dict):
        return []
    return [name for key, value in node.items()
            for name in (prefix + key, *dotted_keys(value, f"{prefix}{key}."))]


def archive_of(source: Path, out: Path, count: int) -> Path:
    """What ``make_fashion_manifest.py --out <out> --count <count> --archive`` writes."""
    script["make_manifest"](source, out, count)
    return script["pack"](out)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------ committed example
def test_the_example_mirrors_the_main_pipeline_stage_for_stage() -> None:
    main, example = load(ROOT / "dvc.yaml"), load(ROOT / EXAMPLE / "dvc.yaml")
    assert example["vars"] == [{"PKG": "../../src/multitask"}]
    assert example["stages"] == main["stages"]
    # DVC refuses to run a stage that declares a param its params.yaml lacks
    declared = {key for stage in example["stages"].values() for key in stage.get("params", [])
                if isinstance(key, str)}
    assert declared and declared <= set(dotted_keys(load(ROOT / EXAMPLE / "params.yaml")))


def test_the_example_plots_name_its_own_tasks() -> None:
    """Every history column a plot reads belongs to one of the example's tasks, and each task
    has its test plot (confusion, or predicted against true for height_px)."""
    plots = load(ROOT / EXAMPLE / "dvc.yaml")["plots"]
    tasks = list(load(ROOT / EXAMPLE / "params.yaml")["data"]["tasks"])
    assert tasks == list(PRIMARY)
    columns = [column for plot in plots for spec in plot.values() if isinstance(spec.get("y"),
               dict) for column in spec["y"].get("reports/plots/history.csv", [])]
    assert columns and {column.rsplit("/", 1)[1] for column in columns} == set(tasks)
    assert "val/auroc/on_left" in columns and "val/mae/height_px" in columns
    templates = {name: spec["template"] for plot in plots for name, spec in plot.items()
                 if name.startswith("reports/confusion/")}
    assert templates == {"reports/confusion/category.csv": "confusion",
                         "reports/confusion/on_left.csv": "confusion",
                         "reports/confusion/height_px.csv": "scatter"}


def test_the_committed_digest_is_what_make_repro_example_writes(tmp_path: Path) -> None:
    """The Makefile's command, on Debian's Fashion-MNIST, packs the archive whose SHA-256
    the example's sources.yaml lists (so a fresh clone's download stage verifies it)."""
    if not DEBIAN.is_dir():
        pytest.skip(f"{DEBIAN} missing: install Debian's dataset-fashion-mnist")
    recipe = re.search(r"make_fashion_manifest\.py --out \$\(EXAMPLE\)/source/(\w+) "
                       r"--count (\d+) --archive", (ROOT / "Makefile").read_text())
    assert recipe, "Makefile: no make_fashion_manifest.py line for the example"
    folder, count = recipe.group(1), int(recipe.group(2))
    source = load(ROOT / EXAMPLE / "data" / "sources.yaml")["sources"]["manifest"]
    assert source["mirrors"] == ["source/"]
    manifest = load(ROOT / EXAMPLE / "params.yaml")["data"]["manifest"]
    assert manifest == f"data/raw/manifest/{folder}/manifest.csv"
    archive = archive_of(DEBIAN, tmp_path / folder, count)
    assert source["archive_sha256"] == {archive.name: sha256(archive)}


@pytest.mark.parametrize("block", ["example-results", "example-comparison"])
def test_the_readme_shows_the_committed_example_reports(block: str) -> None:
    """The example's results table and comparison, as scripts/update_readme.py renders them
    from the example's committed reports."""
    spec = importlib.util.spec_from_file_location("update_readme",
                                                  ROOT / "scripts" / "update_readme.py")
    assert spec is not None and spec.loader is not None
    renderer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(renderer)
    readme = (ROOT / "README.md").read_text()
    found = re.search(rf"<!-- {block}:start -->\n(.*?)<!-- {block}:end -->", readme, re.S)
    assert found, f"README.md has no {block} block"
    assert found.group(1) == getattr(renderer, block.replace("-", "_"))() + "\n", (
        f"README.md's {block} block is out of date: run python scripts/update_readme.py")


# ------------------------------------------------------------------------------- dvc repro
@pytest.fixture(scope="module")
def reproduced(tmp_path_factory: pytest.TempPathFactory, repo_copy: Callable[[Path], Path],
               dvc: Callable[..., subprocess.CompletedProcess[str]]) -> tuple[Path, str]:
    """The example pipeline in a copy of the repository, on 300 images made from the shipped
    sample (its archive in the mirror folder, its digest in sources.yaml), 2 epochs."""
    repo = repo_copy(tmp_path_factory.mktemp("repo"))
    folder = repo / EXAMPLE
    archive = archive_of(SAMPLE, folder / "source" / "fashion", 300)
    sources = folder / "data" / "sources.yaml"
    body = load(sources)
    body["sources"]["manifest"]["archive_sha256"] = {archive.name: sha256(archive)}
    sources.write_text(yaml.safe_dump(body))
    params = load(folder / "params.yaml")
    params["train"]["epochs"] = 2
    params["tune"].update(n_trials=1, epochs=1)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = dvc(repo, "repro", f"{EXAMPLE}/dvc.yaml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return repo, result.stdout


@pytest.mark.slow
def test_every_stage_runs_on_the_three_kinds(reproduced: tuple[Path, str]) -> None:
    repo, log = reproduced
    for stage in STAGES:
        assert f"Running stage '{EXAMPLE}/dvc.yaml:{stage}'" in log, stage
    meta = json.loads((repo / EXAMPLE / "data/processed/meta.json").read_text())
    assert [(t["name"], t["kind"]) for t in meta["tasks"]] == [
        ("category", "multiclass"), ("on_left", "binary"), ("height_px", "regression")]
    assert meta["splits"] == {"train": 242, "val": 29, "test": 29}


@pytest.mark.slow
def test_metrics_hold_each_kinds_primary_metric_and_delta_m(
        reproduced: tuple[Path, str]) -> None:
    repo, _ = reproduced
    reports = repo / EXAMPLE / "reports"
    metrics = json.loads((reports / "metrics.json").read_text())
    baselines = json.loads((reports / "baselines.json").read_text())["tasks"]
    tasks = metrics["tasks"]
    assert 0.0 <= tasks["category"]["accuracy"] <= 1.0
    assert 0.0 <= tasks["on_left"]["auroc"] <= 1.0
    assert 0.0 < tasks["height_px"]["mae"] < 64  # pixels on a 64-pixel canvas
    assert "accuracy" not in tasks["height_px"]
    # mean accuracy over the two classification tasks only
    assert metrics["mean_accuracy"] == pytest.approx(
        (tasks["category"]["accuracy"] + tasks["on_left"]["accuracy"]) / 2)
    # Δm%: each task's primary metric against its baseline, the MAE's change with its sign flipped
    changes = [(tasks[t][m] - baselines[t][m]) / baselines[t][m] for t, m in PRIMARY.items()]
    expected = 100 * (changes[0] + changes[1] - changes[2]) / 3
    assert metrics["delta_m_pct"] == pytest.approx(expected)
    assert (reports / "confusion/category.csv").read_text().startswith("actual,predicted")
    rows = (reports / "confusion/height_px.csv").read_text().splitlines()
    assert rows[0] == "actual,predicted" and len(rows) == 1 + 29


@pytest.mark.slow
def test_a_second_repro_runs_nothing(reproduced: tuple[Path, str],
                                     dvc: Callable[..., subprocess.CompletedProcess[str]]
                                     ) -> None:
    repo, _ = reproduced
    again = dvc(repo, "repro", f"{EXAMPLE}/dvc.yaml")
    assert again.returncode == 0, again.stderr
    assert "Running stage" not in again.stdout
    assert "Data and pipelines are up to date." in again.stdout


# ---------------------------------------------------------------- a pipeline of one's own
def readme_recipe() -> list[str]:
    """The shell lines of README's "A pipeline folder of your own" block, comments dropped."""
    found = re.search(r"\*\*A pipeline folder of your own\*\*.*?```bash\n(.*?)```",
                      (ROOT / "README.md").read_text(), re.S)
    assert found, "README.md: no bash block under 'A pipeline folder of your own'"
    return [line.split("#")[0].strip() for line in found.group(1).splitlines()
            if line.split("#")[0].strip()]


@pytest.mark.slow
def test_the_readme_recipe_for_ones_own_folder_reruns_when_a_label_changes(
        tmp_path: Path, repo_copy: Callable[[Path], Path],
        dvc: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    """README's recipe, run as written in a copy of the repository, with what its comments
    ask done to params.yaml and dvc.yaml: the manifest, read where it lies, is a dependency of
    validate and preprocess, so DVC reruns them (and nothing before) when a label changes."""
    lines = readme_recipe()
    assert lines[-1] == "dvc repro dvc.yaml"
    repo = repo_copy(tmp_path / "repo")
    subprocess.run(["bash", "-euc", "\n".join(lines[:-1])], cwd=repo, check=True)
    own = repo / "examples" / "photos"
    assert not (own / "dvc.lock").exists() and not (own / "data" / "raw").exists()
    manifest = script["make_manifest"](SAMPLE, own / "photos", 300)
    params = load(own / "params.yaml")
    params["data"]["manifest"] = "photos/manifest.csv"
    params["tracking"]["experiment"] = "photos"
    (own / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stages = load(own / "dvc.yaml")
    for stage in ("validate", "preprocess"):
        stages["stages"][stage]["deps"].append("photos")
    (own / "dvc.yaml").write_text(yaml.safe_dump(stages, sort_keys=False))
    target = "examples/photos/dvc.yaml"

    first = dvc(repo, "repro", f"{target}:preprocess")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    log = first.stdout + first.stderr
    assert "params.yaml and data/sources.yaml: valid" in log  # check's log is seen here
    assert "is read where it lies" not in log  # and would hold its warning
    status = ("status", "--json", "--with-deps", f"{target}:preprocess")
    assert json.loads(dvc(repo, *status).stdout) == {}

    table = manifest.read_text().splitlines()
    image, category, rest = table[1].split(",", 2)
    other = "Bag" if category != "Bag" else "Coat"
    manifest.write_text("\n".join([table[0], f"{image},{other},{rest}", *table[2:]]) + "\n")
    changed = json.loads(dvc(repo, *status).stdout)
    assert {name.rsplit(":", 1)[1] for name in changed} == {"validate", "preprocess"}
    again = dvc(repo, "repro", f"{target}:preprocess")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    ran = set(re.findall(rf"Running stage '{target}:(\w+)'", again.stdout))
    assert ran == {"validate", "preprocess"}
