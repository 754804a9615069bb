"""optuna-dashboard, checked as a person would: a short real `multitask tune` writes its study
journal, `make dashboard` serves it on a free 127.0.0.1 port, and headless Chromium (Debian's
chromium through Playwright's ``executable_path``; Playwright's browsers are never downloaded)
finds the study under its readable name with its objectives named by their validation
accuracy keys (:func:`multitask.keys.task_metric`), not "Objective 0/1". Skipped with the
reason when /usr/bin/chromium is absent.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from browser import chromium_page, require_chromium
from test_tracking_pipeline import free_port, wait_for_http

from multitask import keys

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
OBJECTIVES = tuple(keys.task_metric(keys.VAL, task, keys.ACCURACY) for task in ("left", "right"))

pytestmark = [pytest.mark.slow, pytest.mark.browser]


@dataclass(frozen=True)
class Dashboard:
    url: str
    study: str  # the study's name, as multitask tune reports it in summary.json


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory,
              sample_composites: Callable[..., Path]) -> Iterator[Dashboard]:
    require_chromium("optuna-dashboard")
    folder = tmp_path_factory.mktemp("dashboard")
    (folder / "data").mkdir()
    (folder / "data" / "processed").symlink_to(sample_composites(800, 100))
    (folder / "params.yaml").write_text(yaml.safe_dump({
        "data": {"dataset": "multifashion"},
        "model": {"backbone": "lenet", "architecture": "hps"},
        "train": {"batch_size": 64, "device": "cpu", "seed": 0},
        "tune": {"n_trials": 2, "epochs": 1, "data_fraction": 0.5, "sampler": "random"},
        "tracking": {"enabled": False},
    }))
    subprocess.run([str(BIN / "multitask"), "tune"], cwd=folder, check=True, timeout=300,
                   capture_output=True)
    summary = json.loads((folder / "reports/tuning/summary.json").read_text())
    journal = folder / "reports/tuning/study.journal"
    port = free_port()
    # -o: the venv stamp counts as up to date (this test checks the target, not the set-up)
    server = subprocess.Popen(
        ["make", "-C", str(ROOT), "-o", ".venv/.installed", "dashboard", f"STUDY={journal}",
         f"DASHBOARD_PORT={port}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/api/studies", server)
        yield Dashboard(url, summary["study"])
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:  # wsgiref may ignore SIGTERM mid-request
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)


@pytest.fixture(scope="module")
def page(dashboard: Dashboard) -> Iterator[object]:
    with chromium_page(width=1600) as page:
        yield page


def test_the_study_list_shows_the_readable_study_name(dashboard: Dashboard, page) -> None:
    from playwright.sync_api import expect

    assert dashboard.study.startswith("task-weights (multi-objective, hps/lenet, static) #")
    page.goto(f"{dashboard.url}/dashboard")
    expect(page.get_by_text(dashboard.study, exact=False).first).to_be_visible()
    expect(page.get_by_text("Direction: MAXIMIZE, MAXIMIZE")).to_be_visible()


def test_the_study_page_names_the_objectives_and_shows_the_hash(dashboard: Dashboard,
                                                                page) -> None:
    from playwright.sync_api import expect

    page.goto(f"{dashboard.url}/dashboard")
    page.get_by_text(dashboard.study, exact=False).first.click()
    expect(page.get_by_text("Pareto Front", exact=True)).to_be_visible()
    # the Pareto front's axes and the history's y axis carry the objectives' names
    for axis, name in zip(("Objective X:", "Objective Y:"), OBJECTIVES, strict=True):
        expect(page.get_by_role("group", name=axis).get_by_role("combobox")).to_have_text(name)
    expect(page.get_by_role("group", name="y Axis").get_by_role("combobox")).to_have_text(
        OBJECTIVES[0])
    body = page.inner_text("body")
    assert "Objective 0" not in body and "Objective 1" not in body
    # the study's identity: the whole parameter hash (its first digits end the name)
    expect(page.get_by_text("parameter_hash", exact=True)).to_be_visible()
    shown = re.search(r"parameter_hash\s+([0-9a-f]{64})", body)
    assert shown, body[-2000:]
    assert shown.group(1).startswith(dashboard.study.rsplit("#", 1)[1])
