"""Wall time of the CI job's steps on this machine, with and without setup.

The pull-request job of ``.github/workflows/ci.yaml`` runs ``make setup``, ``.ci/run``
(``make test``: ruff, then the test suite), ``make repro-sample`` and ``ci/pr_report.sh
report`` (the base's sample pipeline and the report). Each runs here in a fresh clone of the
repository's last commit, as CI checks it out, with a fresh virtual environment:

- setup, cold: ``make setup`` with an empty pip cache (a first CI run, or a changed lock);
- setup, warm: ``make setup`` in a second clone reusing that pip cache (what setup-python's
  restored cache buys; the cache download itself is not counted);
- ``.ci/run`` only with ``BENCH_CI_TESTS=1``: the suite runs for many minutes and its slow
  tests run sample pipelines of their own, so a routine ``make bench`` times only its first
  part, ``make lint``, and the job totals say "excluding tests";
- the sample pipeline (target: 3 minutes) and the pull-request report (here the base is the
  same commit, so stages whose outputs DVC's run cache holds are restored, not rerun; on a
  real pull request every stage the change touches runs again).

The whole job with setup has a target of 15 minutes. A step that fails is reported with its
error instead of a time, and the totals it belongs to are left out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, fresh_clone

JOB_TARGET_S = 15 * 60
SAMPLE_PIPELINE_TARGET_S = 3 * 60


def clean_env(pip_cache: Path) -> dict[str, str]:
    """The environment of a fresh CI runner: no active venv, no project on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    venv_bin = str(ROOT / ".venv" / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p != venv_bin)
    env["PIP_CACHE_DIR"] = str(pip_cache)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def timed_step(name: str, command: list[str], cwd: Path, env: dict[str, str],
           timeout_s: float, target_s: float | None = None) -> dict[str, Any]:
    """Run one CI step; a row with its wall time, or with the error that stopped it."""
    start = time.perf_counter()
    try:
        result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                                timeout=timeout_s)
        error = None if result.returncode == 0 else (
            f"exit {result.returncode}: {(result.stdout + result.stderr)[-600:]}")
    except subprocess.TimeoutExpired:
        error = f"timed out after {timeout_s:.0f} s"
    row: dict[str, Any] = {"name": name, "value": round(time.perf_counter() - start, 1),
                           "unit": "s", "command": " ".join(command)}
    if error:
        row.update(value=None, elapsed_s=row["value"], error=error)
    elif target_s is not None:
        row.update(target=target_s, ok=row["value"] <= target_s)
    return row


def _total(name: str, parts: list[dict[str, Any]], target_s: float | None) -> dict[str, Any]:
    row: dict[str, Any] = {"name": name, "unit": "s",
                           "parts": [p["name"] for p in parts]}
    if any(p["value"] is None for p in parts):
        return {**row, "value": None, "error": "a step failed; see its row"}
    row["value"] = round(sum(p["value"] for p in parts), 1)
    if target_s is not None:
        row.update(target=target_s, ok=row["value"] <= target_s)
    return row


def run() -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="bench-ci-") as tmp:
        work = Path(tmp)
        env = clean_env(work / "pip-cache")
        clones = []
        for name in ("cold", "warm"):
            clones.append(fresh_clone(work / name))
        cold, warm = clones
        rows = [
            timed_step("ci_setup_cold_pip_cache_s", ["make", "setup"], cold, env, 3600),
            timed_step("ci_setup_warm_pip_cache_s", ["make", "setup"], warm, env, 3600),
        ]
        shutil.rmtree(warm)  # a second multi-GB venv is not needed past this point
        if os.environ.get("BENCH_CI_TESTS") == "1":  # make test: ruff, then the suite
            steps = [timed_step("ci_tests_s", [".ci/run"], cold, env, 3600)]
        else:  # the part of .ci/run a routine run times
            steps = [timed_step("ci_lint_s", ["make", "lint"], cold, env, 600)]
        steps.append(timed_step("ci_sample_pipeline_s", ["make", "repro-sample"], cold, env, 1800,
                            SAMPLE_PIPELINE_TARGET_S))
        pr_env = {**env, "BASE_WORKTREE": str(work / "base"), "REPORT_DIR": str(work / "report")}
        steps.append(timed_step("ci_pr_report_s", ["ci/pr_report.sh", "report", "HEAD"], cold,
                            pr_env, 1800))
        rows += steps
        suffix = "" if os.environ.get("BENCH_CI_TESTS") == "1" else "_excluding_tests"
        rows.append(_total(f"ci_pr_job_without_setup{suffix}_s", steps, None))
        rows.append(_total(f"ci_pr_job_with_cold_setup{suffix}_s", [rows[0], *steps],
                           JOB_TARGET_S))
        rows.append(_total(f"ci_pr_job_with_warm_setup{suffix}_s", [rows[1], *steps],
                           JOB_TARGET_S))
        rows.append({"name": "ci_cpu_count", "value": os.cpu_count(), "unit": "cores"})
        return rows
