"""The GitHub workflows, checked here where GitHub does not run them.

Each file must validate against GitHub's workflow schema (check-jsonschema's vendored copy) and
draw no high-severity finding from ``zizmor --offline``; a deliberately broken or unsafe copy
must fail the same checks, so a passing run means something. The rest pins down the
conventions zizmor does not state: pinned actions with their release in a comment, least
privilege, no secret or event text in a shell script, and the promote job's skip without its
secret.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yaml"))
BIN = Path(sys.executable).parent
PINNED = re.compile(  # uses: owner/action@<40-hex SHA> # vX.Y.Z
    r"^\s*(?:-\s+)?uses:\s+([\w.-]+/[\w./-]+)@([0-9a-f]{40}) # (v\d+\.\d+\.\d+)\s*$")


def load(path: Path) -> dict[str, Any]:
    # PyYAML reads the key `on` as True; GitHub reads it as the string "on".
    data = yaml.safe_load(path.read_text())
    if True in data:
        data["on"] = data.pop(True)
    return data


def schema_check(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows",
         *map(str, paths)], capture_output=True, text=True, timeout=120)


def high_findings(*paths: Path) -> list[dict[str, Any]]:
    """zizmor's high-severity findings over ``paths``, audited offline."""
    result = subprocess.run(
        [str(BIN / "zizmor"), "--offline", "--format", "json", *map(str, paths)],
        capture_output=True, text=True, timeout=120)
    try:
        findings = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"zizmor exited {result.returncode} without a JSON report:\n{result.stderr}")
    for path in paths:
        assert f"completed {path}" in result.stderr, f"zizmor did not audit {path}"
    return [f for f in findings if f["determinations"]["severity"] == "High"]


def steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def test_both_workflows_exist() -> None:
    assert [p.name for p in WORKFLOWS] == ["ci.yaml", "promote.yaml"]


def test_workflows_match_githubs_schema() -> None:
    result = schema_check(*WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_broken_workflow_fails_the_schema_check(tmp_path: Path) -> None:
    broken = tmp_path / "ci.yaml"
    # `runs-on` misspelt and `timeout-minutes` given a word: both schema errors.
    broken.write_text(WORKFLOWS[0].read_text()
                      .replace("runs-on:", "run-on:", 1)
                      .replace("timeout-minutes: 45", "timeout-minutes: soon"))
    result = schema_check(broken)
    assert result.returncode != 0
    assert "run-on" in result.stdout or "runs-on" in result.stdout


def test_zizmor_finds_nothing_high_in_the_workflows() -> None:
    high = high_findings(*WORKFLOWS)
    assert not high, [(f["ident"], f["locations"][0]["concrete"]["feature"]) for f in high]


def test_an_unsafe_workflow_draws_high_zizmor_findings(tmp_path: Path) -> None:
    unsafe = tmp_path / "ci.yaml"
    text = WORKFLOWS[0].read_text()
    pinned_checkout = next(line for line in text.splitlines() if "actions/checkout@" in line)
    text = text.replace(pinned_checkout.strip(), "uses: actions/checkout@v6", 1)
    text = text.replace("run: make setup", 'run: echo "${{ github.event.pull_request.title }}"')
    unsafe.write_text(text)
    assert schema_check(unsafe).returncode == 0  # still a valid workflow: only zizmor objects
    idents = {f["ident"] for f in high_findings(unsafe)}
    assert {"unpinned-uses", "template-injection"} <= idents


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_action_is_pinned_to_a_commit_with_its_release(path: Path) -> None:
    uses = [line for line in path.read_text().splitlines() if re.search(r"\buses:", line)]
    assert uses
    unpinned = [line.strip() for line in uses if not PINNED.match(line)]
    assert not unpinned, f"pin these to a full SHA with '# vX.Y.Z': {unpinned}"


def test_each_action_has_one_pin_across_workflows() -> None:
    pins: dict[str, set[tuple[str, str]]] = {}
    for path in WORKFLOWS:
        for line in path.read_text().splitlines():
            if match := PINNED.match(line):
                pins.setdefault(match[1], set()).add((match[2], match[3]))
    assert {action for action, seen in pins.items() if len(seen) > 1} == set()


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_least_privilege_and_no_persisted_credentials(path: Path) -> None:
    workflow = load(path)
    assert workflow["permissions"] == {"contents": "read"}
    for name, job in workflow["jobs"].items():
        writes = {k for k, v in job.get("permissions", {}).items() if v == "write"}
        assert writes <= ({"pull-requests"} if name in ("pending", "comment") else set()), name
    checkouts = [s for s in steps(workflow) if s.get("uses", "").startswith("actions/checkout@")]
    assert checkouts and all(s["with"]["persist-credentials"] is False for s in checkouts)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_no_secret_or_event_text_in_shell_scripts(path: Path) -> None:
    for step in steps(load(path)):
        script = step.get("run", "")
        assert "${{" not in script, f"{step.get('name')}: pass values through env, not ${{{{ }}}}"


def test_ci_runs_the_readme_commands_and_the_pr_script() -> None:
    workflow = load(WORKFLOWS[0])
    assert set(workflow["on"]) == {"pull_request", "push"}
    assert workflow["on"]["push"]["branches"] == ["main"]
    runs = [s["run"] for s in workflow["jobs"]["test"]["steps"] if "run" in s]
    assert runs == ["make setup", 'ci/dvc_remote.sh "$DVC_REMOTE_URL"', ".ci/run",
                    "make repro-sample", ".venv/bin/dvc push --run-cache sample/dvc.yaml",
                    "ci/pr_report.sh report HEAD^1", "ci/pr_report.sh not-run"]
    makefile = (ROOT / "Makefile").read_text()
    assert all(re.search(rf"^{target}:", makefile, re.M) for target in
               ("setup", "lint", "test", "repro-sample"))
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    python = next(s for s in steps(workflow) if s.get("uses", "").startswith("actions/setup-"))
    assert python["with"]["cache"] == "pip"
    assert python["with"]["cache-dependency-path"] == "requirements.lock"
    cache = next(s for s in steps(workflow) if s.get("uses", "").startswith("actions/cache@"))
    assert cache["with"]["path"] == ".dvc/cache"
    comment = workflow["jobs"]["comment"]["steps"][-1]
    assert comment["run"] == "ci/pr_report.sh comment ci-report/ci_report.md"


def test_a_push_that_fails_before_the_report_still_updates_the_comment() -> None:
    """Otherwise the comment goes on showing an earlier push's verdict and numbers."""
    job = load(WORKFLOWS[0])["jobs"]["test"]
    names = [s.get("id") for s in job["steps"]]
    not_run = job["steps"][names.index("not_run")]
    assert names.index("not_run") == names.index("report") + 1
    assert not_run["run"] == "ci/pr_report.sh not-run"
    assert "failure()" in not_run["if"] and "steps.report.outputs.gate == ''" in not_run["if"]
    assert job["outputs"]["gate"] == (
        "${{ steps.report.outputs.gate || steps.not_run.outputs.gate }}")
    keep = next(s for s in job["steps"] if s.get("with", {}).get("name") == "ci-report")
    assert "steps.not_run.outputs.gate != ''" in keep["if"]


def test_the_comment_says_pending_before_the_tests_and_the_report_replaces_it() -> None:
    """A test job cancelled or timed out writes no report (no failure() step runs): the
    comment an earlier push left would go on showing its verdict, unless this push's pending
    note replaced it first, and the report posted after the note replaces it in turn."""
    jobs = load(WORKFLOWS[0])["jobs"]
    pending = jobs["pending"]
    assert [s["run"] for s in pending["steps"] if "run" in s] == [
        "ci/pr_report.sh pending && ci/pr_report.sh comment reports/ci/ci_report.md"]
    assert pending["if"] == jobs["comment"]["if"].replace(
        "!cancelled() && ", "").replace(" && needs.test.outputs.gate != ''", "")
    checkout = pending["steps"][0]["with"]
    assert checkout["fetch-depth"] == 2 and checkout["sparse-checkout"] == "ci"
    assert "needs" not in pending and "pending" in jobs["comment"]["needs"]


def test_a_rerun_job_replaces_its_artifacts() -> None:
    """"Re-run failed jobs" is the same workflow run, where upload-artifact refuses a name
    already uploaded (409 Conflict) unless told to overwrite: the re-run of a flaky test would
    fail at the upload of a report its first attempt left."""
    uploads = [s for s in steps(load(WORKFLOWS[0]))
               if s.get("uses", "").startswith("actions/upload-artifact@")]
    assert uploads and all(s["with"].get("overwrite") is True for s in uploads)


def _server_check_script() -> str:
    workflow = load(WORKFLOWS[1])
    job = workflow["jobs"]["promote"]
    check = job["steps"][0]
    assert check["id"] == "server"
    # Every later step waits for the check: nothing runs against no server.
    assert all(s["if"] == "steps.server.outputs.configured == 'true'" for s in job["steps"][1:])
    return check["run"]


@pytest.mark.parametrize("uri", ["", "https://user:hunter2@mlflow.example.org"])
def test_promote_skips_with_an_explanation_without_the_secret(tmp_path: Path, uri: str) -> None:
    output, summary = tmp_path / "output", tmp_path / "summary"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "GITHUB_OUTPUT": str(output),
           "GITHUB_STEP_SUMMARY": str(summary)}
    result = subprocess.run(["bash", "-e", "-c", _server_check_script()], env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    written = output.read_text() + (summary.read_text() if summary.exists() else "")
    if uri:
        assert output.read_text() == "configured=true\n"
        assert "hunter2" not in result.stdout + result.stderr + written
    else:
        assert output.read_text() == "configured=false\n"
        assert "MLFLOW_TRACKING_URI secret is not set" in summary.read_text()
        assert "::notice title=Promotion skipped::" in result.stdout


def test_promote_runs_the_pipeline_then_the_gate() -> None:
    workflow = load(WORKFLOWS[1])
    assert set(workflow["on"]) == {"push", "workflow_dispatch"}
    runs = [s["run"] for s in workflow["jobs"]["promote"]["steps"][1:] if "run" in s]
    assert runs[:2] == ["make setup", "make repro"]
    assert ".venv/bin/multitask promote" in runs[2]
