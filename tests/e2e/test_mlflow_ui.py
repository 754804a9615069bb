"""The MLflow UI, checked as a person would: a real `mlflow server` on 127.0.0.1 over the store
of the sample pipeline (two runs: `dvc repro` and `dvc exp run`), driven by headless Chromium.

Uses Debian's chromium (`scripts/system_deps.sh test` installs it when run as root) through
Playwright's Python package with ``executable_path``; Playwright's own browsers are never
downloaded. Skipped with the reason when /usr/bin/chromium is absent. Screenshots land in
reports/: the runs table with the per-task metric columns (mlflow_ui.png), the chart view's
section of every task's validation accuracy (mlflow_ui_charts.png) and the Models tab comparing
the logged models per task (mlflow_ui_models.png).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# the sample-pipeline builder shared with tests/integration (one pipeline run per process)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from browser import chromium_page, require_chromium
from test_tracking_pipeline import (
    BIN,
    EXPERIMENT,
    MODEL,
    SampleRepo,
    free_port,
    sample_repo,
    wait_for_http,
)

from multitask.io import atomic_path

ROOT = Path(__file__).resolve().parents[2]
# The README's screenshots: `MULTITASK_SCREENSHOT_DIR=reports pytest tests/e2e` refreshes them;
# otherwise they go to a temporary folder, so a test run never changes tracked files.
SCREENSHOT_DIR_ENV = "MULTITASK_SCREENSHOT_DIR"
TASK_METRICS = ("test/accuracy/left", "test/accuracy/right")
VAL_ACCURACY = ("val/accuracy/left", "val/accuracy/right")  # one chart section: val/accuracy
# MLflow 3.17 opens an experiment on its GenAI view unless the browser chose "Model training"
# before (remembered per browser) or the address says so:
TRAINING_VIEW = "workflowType=machine_learning"

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.xdist_group("sample_pipeline")]


@dataclass(frozen=True)
class UI:
    url: str
    repo: SampleRepo
    experiment_id: str
    runs: dict[str, str]  # run id -> run name: the `dvc repro` run and the `dvc exp run` one


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the screenshots go (see SCREENSHOT_DIR_ENV)."""
    chosen = os.environ.get(SCREENSHOT_DIR_ENV)
    return ROOT / chosen if chosen else tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UI]:
    require_chromium("the MLflow UI")
    repo = sample_repo(tmp_path_factory)  # built, run twice and promoted
    assert repo.promotion[0] == 0, repo.promotion[1]
    client = repo.client()
    run_ids = [repo.run_id, repo.experiment_runs["workspace"]]
    runs = {run_id: client.get_run(run_id).info.run_name for run_id in run_ids}
    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", repo.store, "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        cwd=repo.root, env=repo.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/health", server)
        experiment = client.get_experiment_by_name(EXPERIMENT)
        yield UI(url, repo, experiment.experiment_id, runs)
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def page(ui: UI) -> Iterator[object]:
    with chromium_page(width=1800) as page:
        yield page


def _numbers(text: str) -> list[float]:
    """The decimal numbers shown in ``text`` (metric values as the UI rounds them)."""
    return [float(x) for x in re.findall(r"(?<![\w.])-?\d+\.\d+(?![\w.])", text)]


def _close_assistant(page) -> None:
    """Close MLflow 3's chat panel, which takes a third of the width, when it is open."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    with contextlib.suppress(PlaywrightTimeout):  # it opens a moment after the page
        page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]').click(
            timeout=5_000)


def test_experiment_page_lists_both_runs_with_per_task_metrics(ui: UI, page, shots: Path
                                                             ) -> None:
    from playwright.sync_api import expect

    page.goto(f"{ui.url}/#/experiments/{ui.experiment_id}/runs?{TRAINING_VIEW}")
    for name in ui.runs.values():
        expect(page.get_by_role("link", name=name, exact=True)).to_be_visible()
    # only runs that carry both tasks' test metrics, as a person would filter them
    search = page.get_by_placeholder("metrics.rmse < 1 and params.model = \"tree\"")
    search.fill(" and ".join(f"metrics.`{key}` > 0" for key in TASK_METRICS))
    search.press("Enter")
    for name in ui.runs.values():
        expect(page.get_by_role("link", name=name, exact=True)).to_be_visible()
    _close_assistant(page)
    # show the per-task metric columns, as a person picks them in "Columns"
    page.get_by_role("button", name="Columns", exact=True).click()
    for key in TASK_METRICS:
        page.get_by_placeholder("Search columns").fill(key)
        page.get_by_role("dialog").get_by_text(key, exact=True).click()
    page.keyboard.press("Escape")
    client = ui.repo.client()
    for key in TASK_METRICS:
        expect(page.get_by_role("columnheader", name=key).first).to_be_visible()
    for run_id, name in ui.runs.items():
        row = page.get_by_role("row").filter(has=page.get_by_role("link", name=name, exact=True))
        expect(row).to_be_visible()
        # the grid splits a row into a pinned part (the name) and a scrolled part (metrics)
        index = row.get_attribute("aria-rowindex")
        shown = _numbers(" ".join(
            page.locator(f'[role="row"][aria-rowindex="{index}"]').all_inner_texts()))
        for key in TASK_METRICS:
            value = client.get_run(run_id).data.metrics[key]
            assert any(abs(value - x) < 1e-3 for x in shown), (name, key, value, shown)
    shot = shots / "mlflow_ui.png"
    with atomic_path(shot) as tmp:
        page.screenshot(path=str(tmp), type="png", full_page=True)
    assert shot.stat().st_size > 10_000


def test_compare_page_shows_both_runs_and_their_task_metrics(ui: UI, page) -> None:
    from playwright.sync_api import expect

    runs = json.dumps(list(ui.runs)).replace(" ", "")
    page.goto(f"{ui.url}/#/compare-runs?runs={runs}&experiments=[\"{ui.experiment_id}\"]")
    expect(page.get_by_role("heading", name="Comparing 2 Runs from 1 Experiment")).to_be_visible()
    names = page.get_by_role("row").filter(has_text="Run Name:")
    for name in ui.runs.values():
        expect(names).to_contain_text(name)
    # the parallel-coordinates plot, one axis per task metric: its ends are the two runs' values
    plot = page.get_by_role("tabpanel", name="Parallel Coordinates Plot")
    chosen_metrics = plot.get_by_role("combobox").nth(1)
    for key in TASK_METRICS:
        chosen_metrics.click()
        page.keyboard.type(key)
        page.keyboard.press("Enter")
    page.keyboard.press("Escape")
    axes = plot.locator("svg text")
    for key in TASK_METRICS:
        expect(axes.filter(has_text=key)).not_to_have_count(0)
    # [(class, text)]: each axis title is followed by its top and bottom extent labels
    labels = axes.evaluate_all("ts => ts.map(t => [t.getAttribute('class') || '', "
                               "t.textContent])")
    client = ui.repo.client()
    for key in TASK_METRICS:
        title = next(i for i, (kind, text) in enumerate(labels)
                     if "axis-title" in kind and text == key)
        top, bottom = (float(text.replace("\N{MINUS SIGN}", "-"))
                       for _, text in labels[title + 1:title + 3])
        low, high = sorted(client.get_run(run_id).data.metrics[key] for run_id in ui.runs)
        if low != high:  # the axis spans exactly the two runs' values
            assert (bottom, top) == pytest.approx((low, high), abs=1e-4), key
        else:  # equal values: plotly pads the axis symmetrically around the value
            assert (top + bottom) / 2 == pytest.approx(low, abs=1e-4), key


def test_registered_model_page_shows_the_champion_alias(ui: UI, page) -> None:
    from playwright.sync_api import expect

    page.goto(f"{ui.url}/#/models/{MODEL}")
    version = page.get_by_role("row").filter(has_text="Version 1")
    expect(version).to_contain_text("champion")
    expect(version).to_contain_text("test/accuracy/left")
    champion = ui.repo.client().get_model_version_by_alias(MODEL, "champion")
    assert champion.run_id == ui.repo.run_id


def test_chart_view_shows_every_tasks_validation_accuracy_in_one_section(ui: UI, page,
                                                                        shots: Path) -> None:
    """MLflow groups a run's charts by the key up to its last "/": with the task last, one
    section ``val/accuracy`` holds every task's validation curve, each run a line."""
    from playwright.sync_api import expect

    page.goto(f"{ui.url}/#/experiments/{ui.experiment_id}/runs?{TRAINING_VIEW}")
    _close_assistant(page)
    page.locator('input[name="runs-view-mode"][value="CHART"]').locator(
        "xpath=ancestor::label").click()
    page.get_by_placeholder("Search metric charts").fill("val/accuracy/")
    # the section header names the group and counts its charts: one per task
    header = page.get_by_role("button").filter(
        has_text=re.compile(rf"^val/accuracy\({len(VAL_ACCURACY)}\)"))
    expect(header).to_have_count(1)
    header.evaluate("e => e.scrollIntoView({block: 'start'})")
    for key in VAL_ACCURACY:
        expect(page.get_by_text(key, exact=True).first).to_be_visible()
        for name in ui.runs.values():  # each chart's legend: one line per run
            expect(page.get_by_text(f"{name} ({key})", exact=True)).to_be_visible()
    page.wait_for_timeout(3_000)  # plotly draws the lines after the legend (screenshot only)
    shot = shots / "mlflow_ui_charts.png"
    with atomic_path(shot) as tmp:
        page.screenshot(path=str(tmp), type="png")
    assert shot.stat().st_size > 10_000


def test_models_tab_compares_the_logged_models_per_task(ui: UI, page, shots: Path) -> None:
    """evaluate links the test metrics to the run's logged model and the processed data set,
    so the Models tab has one column per task metric, grouped under the data set."""
    from playwright.sync_api import expect

    # wide enough for every metric column (the grid renders only the columns in view)
    page.set_viewport_size({"width": 3600, "height": 600})
    page.goto(f"{ui.url}/#/experiments/{ui.experiment_id}/models?{TRAINING_VIEW}")
    _close_assistant(page)
    client = ui.repo.client()
    expect(page.get_by_text("Dataset: ").first).to_be_visible()
    for key in TASK_METRICS:
        expect(page.get_by_role("columnheader", name=key).first).to_be_visible()
    for run_id, name in ui.runs.items():
        run = client.get_run(run_id)
        model = client.get_logged_model(run.data.tags["multitask.model_uri"].removeprefix(
            "models:/"))
        linked = {m.key: m.value for m in model.metrics if m.dataset_name}
        assert not [m.key for m in model.metrics if m.key.startswith("system/")]
        assert {key: run.data.metrics[key] for key in TASK_METRICS} == {
            key: linked[key] for key in TASK_METRICS}
        row = page.get_by_role("row").filter(has=page.get_by_role("link", name=name,
                                                                   exact=True))
        shown = _numbers(" ".join(row.all_inner_texts()))
        for key in TASK_METRICS:
            assert any(abs(linked[key] - x) < 1e-3 for x in shown), (name, key, shown)
    shot = shots / "mlflow_ui_models.png"
    with atomic_path(shot) as tmp:
        page.screenshot(path=str(tmp), type="png")
    page.set_viewport_size({"width": 1800, "height": 1000})
    assert shot.stat().st_size > 10_000
