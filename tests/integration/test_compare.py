"""`multitask compare` on the real sample pipeline: 2 rows x 2 seeds queued as DVC experiments
and run two at a time, read back, nested in MLflow; the workspace untouched, a rerun that runs
nothing, the thread limit reaching the stages, and a failed experiment named with its log.

The repository is a throw-away copy made by :func:`copy_sample_repo` (sample params shrunk);
the comparison sets one epoch, so the module takes a few minutes on two cores.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from test_tracking_pipeline import EXPERIMENT, SampleRepo, copy_sample_repo

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("compare")]

NAME = "cmp"
ROWS = ("equal", "dwa")
SEEDS = (0, 1)
JOBS = 2
COMMAND = ("multitask", "compare", NAME, "--vary", "train.weighting", *ROWS,
           "--set", "train.epochs=1", "--seeds", *map(str, SEEDS), "--jobs", str(JOBS),
           "--pipeline", "sample/dvc.yaml")
WATCHED = ("sample/params.yaml", "params.yaml", "dvc.lock")  # what the workspace must keep


@dataclass(frozen=True)
class Compared:
    repo: SampleRepo
    before: dict[str, bytes]  # WATCHED files before the comparison
    output: str  # the command's stdout and stderr

    @property
    def folder(self) -> Path:
        return self.repo.sample / "reports" / "comparisons" / NAME

    def result(self) -> dict:
        return json.loads((self.folder / "comparison.json").read_text())


def _snapshot(root: Path) -> dict[str, bytes]:
    return {name: (root / name).read_bytes() for name in WATCHED}


def experiment_refs(repo: SampleRepo) -> list[tuple[str, str]]:
    """The DVC experiments the repository holds, (name, git ref) (read from git, not by
    `dvc exp show`, which the command itself reads)."""
    refs = repo.run("git", "for-each-ref", "--format=%(refname)", "refs/exps").stdout.split()
    return [(ref.rsplit("/", 1)[1], ref) for ref in refs]


def committed(repo: SampleRepo, experiment: str, path: str) -> str:
    """``path`` as DVC experiment ``experiment`` committed it (the one experiment of that
    name)."""
    (ref,) = [ref for name, ref in experiment_refs(repo) if name == experiment]
    return repo.run("git", "show", f"{ref}:{path}").stdout


def experiment_file(repo: SampleRepo, experiment: str, path: str) -> dict:
    return json.loads(committed(repo, experiment, path))


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> Compared:
    repo = copy_sample_repo(tmp_path_factory.mktemp("compare") / "repo")
    before = _snapshot(repo.root)
    done = repo.run(*COMMAND, timeout=1800)
    return Compared(repo, before, done.stdout + done.stderr)


def test_each_row_has_every_seed_of_its_experiments(compared: Compared) -> None:
    result = compared.result()
    assert {row["label"] for row in result["rows"]} == set(ROWS)
    assert result["seeds"] == list(SEEDS) and result["tasks"] == ["left", "right"]
    for row in result["rows"]:
        assert row["seeds"] == list(SEEDS)
        assert row["experiments"] == [f"{NAME}-{row['label']}-s{seed}" for seed in SEEDS]
        for index, experiment in enumerate(row["experiments"]):
            metrics = experiment_file(compared.repo, experiment, "sample/reports/metrics.json")
            baselines = experiment_file(compared.repo, experiment,
                                        "sample/reports/baselines.json")
            train = yaml.safe_load(committed(compared.repo, experiment,
                                             "sample/params.yaml"))["train"]
            assert (train["seed"], train["weighting"]) == (SEEDS[index], row["label"])
            assert row["delta_m_pct"]["per_seed"][index] == metrics["delta_m_pct"]
            assert row["mean_accuracy"]["per_seed"][index] == metrics["mean_accuracy"]
            for task in ("left", "right"):
                assert row["tasks"][task]["per_seed"][index] == \
                    metrics["tasks"][task]["accuracy"]
                assert row["baselines"][task]["per_seed"][index] == \
                    baselines["tasks"][task]["accuracy"]
    # the rows share seeds and regularisation, so their baselines: the first row trains them,
    # the second restores them from DVC's run cache
    assert result["baselines"] == result["rows"][0]["baselines"]
    for seed in SEEDS:
        logs = compared.repo.run("dvc", "queue", "logs", f"{NAME}-{ROWS[1]}-s{seed}").stdout
        assert "Stage 'sample/dvc.yaml:baselines' is cached - skipping run" in logs, logs[-2000:]
    table = (compared.folder / "comparison.md").read_text()
    assert all(f"| `{label}` |" in table for label in ROWS)
    assert (compared.folder / "comparison.png").read_bytes()[:4] == b"\x89PNG"


def test_runs_are_nested_under_one_parent_with_the_tags(compared: Compared) -> None:
    client = compared.repo.client()
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    (parent,) = client.search_runs([experiment], filter_string=(
        f"tags.`multitask.comparison` = '{NAME}' and "
        "tags.`multitask.comparison.role` = 'parent'"))
    assert parent.info.run_name == f"compare {NAME}"
    assert compared.result()["mlflow"]["parent_run_id"] == parent.info.run_id
    children = client.search_runs(
        [experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    expected = {run: row["label"] for row in compared.result()["rows"] for run in row["run_ids"]}
    assert len(expected) == len(ROWS) * len(SEEDS)
    assert {run.info.run_id: run.data.tags["multitask.comparison.row"] for run in children} \
        == expected
    for run in children:
        assert run.data.tags["multitask.comparison"] == NAME
        assert run.data.tags["stage"] == "evaluate" and run.info.status == "FINISHED"
    logged = {item.path for item in client.list_artifacts(parent.info.run_id)}
    assert {"comparison.json", "comparison.md", "comparison.png"} <= logged
    assert f"{ROWS[0]}/delta_m_pct/mean" in parent.data.metrics
    best, other = (row["label"] for row in compared.result()["rows"])  # two rows, best first
    paired = compared.result()["rows"][1]["paired_to_best"]
    assert parent.data.metrics[f"{other}/delta_m_pct_minus_best/mean"] == pytest.approx(
        paired["mean"])
    assert f"{best}/delta_m_pct_minus_best/mean" not in parent.data.metrics


def test_the_workspace_is_left_as_it_was(compared: Compared) -> None:
    assert _snapshot(compared.repo.root) == compared.before
    assert not (compared.repo.sample / "dvc.lock").exists()  # the copy had none
    changed = compared.repo.run("git", "status", "--porcelain", "--untracked-files=no").stdout
    assert changed == ""


def test_each_stage_gets_its_share_of_the_cpus(compared: Compared) -> None:
    """compare sets MULTITASK_THREADS for `dvc queue start`; the queue workers it spawns pass
    it on to the stages, which train with that many torch threads (train.json's device);
    comparison.json records each seed's count, and the table's caption says it."""
    threads = max(1, len(os.sched_getaffinity(0)) // JOBS)
    for row in compared.result()["rows"]:
        for experiment in row["experiments"]:
            train = experiment_file(compared.repo, experiment, "sample/reports/train.json")
            assert train["device"] == f"cpu ({threads} threads)", experiment
            assert (train["threads"], train["baselines_threads"]) == (threads, threads)
        assert row["threads"] == [{"train": threads, "baselines": threads}] * len(SEEDS)
    caption = (compared.folder / "comparison.md").read_text().splitlines()[0]
    spelt = f"{threads} CPU thread{'s' * (threads != 1)}"
    assert caption.endswith(f"Every experiment ran on {spelt}."), caption


def test_a_rerun_reads_back_without_running_again(compared: Compared) -> None:
    client = compared.repo.client()
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs = len(client.search_runs([experiment]))
    first = compared.result()
    again = compared.repo.run(*COMMAND, timeout=600)
    assert "already ran: reading them back" in again.stderr
    compared.repo.run(*COMMAND, "--collect-only", timeout=600)
    assert len(client.search_runs([experiment])) == runs  # no experiment, no new parent
    assert compared.result() == first


def test_experiments_gone_are_read_back_from_comparison_json(compared: Compared) -> None:
    """A fresh clone has the committed comparison.json but none of DVC's experiment refs:
    with the pipeline's inputs unchanged, their measurements are read from the file and
    nothing runs again."""
    client = compared.repo.client()
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs = len(client.search_runs([experiment]))
    first = compared.result()
    compared.repo.run("dvc", "exp", "remove", f"{NAME}-equal-s1", f"{NAME}-dwa-s0")
    again = compared.repo.run(*COMMAND, timeout=600)
    assert f"2 experiments read back from {compared.folder / 'comparison.json'}" in again.stderr
    assert "already ran: reading them back" in again.stderr
    assert len(client.search_runs([experiment])) == runs
    assert compared.result() == first


def test_a_failed_experiment_is_named_with_the_tail_of_its_log(compared: Compared) -> None:
    done = compared.repo.run(
        "multitask", "compare", "broken", "--row", "rlw", "train.weighting=rlw",
        "--set", "train.epochs=1", "--seeds", "0", "--pipeline", "sample/dvc.yaml",
        check=False, timeout=900, env={"MULTITASK_FAIL_AFTER_EPOCH": "1"})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "experiment broken-rlw-s0 failed (dvc queue logs" in done.stderr
    assert "MULTITASK_FAIL_AFTER_EPOCH=1: injected failure" in done.stderr
    assert not (compared.repo.sample / "reports" / "comparisons" / "broken").exists()


def _queued(compared: Compared) -> str:
    return subprocess.run(["dvc", "queue", "status"], cwd=compared.repo.root,
                          env=compared.repo.env, capture_output=True, text=True).stdout


def test_an_uncommitted_change_to_an_input_stops_before_anything_is_queued(
        compared: Compared) -> None:
    """Queued experiments would run the edit while those already run did not: a comparison
    measures one commit."""
    code = compared.repo.root / "src" / "multitask" / "weighting" / "loss_based.py"
    original = code.read_text()
    code.write_text(original + "# an edit not committed\n")
    try:
        done = compared.repo.run("multitask", "compare", "dirty", "--vary", "train.weighting",
                                 "equal", "--set", "train.epochs=1", "--seeds", "0",
                                 "--pipeline", "sample/dvc.yaml", check=False, timeout=600)
    finally:
        code.write_text(original)
    assert done.returncode == 1, done.stdout + done.stderr
    assert ("uncommitted changes to the pipeline's inputs "
            "(src/multitask/weighting/loss_based.py)") in done.stderr
    assert "dirty-" not in _queued(compared)


def test_an_against_without_the_seeds_stops_before_anything_is_queued(
        compared: Compared) -> None:
    done = compared.repo.run("multitask", "compare", "ag", "--row", "e", "train.weighting=equal",
                             "--set", "train.epochs=1", "--seeds", "7", "--against", NAME,
                             "--pipeline", "sample/dvc.yaml", check=False, timeout=600)
    assert done.returncode == 1, done.stdout + done.stderr
    assert (f"--against {NAME}: that comparison has no baselines for seed 7 (its seeds: 0, 1)"
            in done.stderr)
    assert "ag-" not in _queued(compared)


def test_a_symbolic_rev_is_recorded_as_its_commit(compared: Compared) -> None:
    first = compared.result()
    compared.repo.run(*COMMAND, "--collect-only", "--rev", "HEAD", timeout=600)
    assert compared.result() == first  # the full hash, not "HEAD"
    bad = compared.repo.run(*COMMAND, "--collect-only", "--rev", "nope", check=False)
    assert bad.returncode == 1
    assert "--rev nope: not a commit of" in bad.stderr


def test_a_typo_in_a_key_stops_before_anything_is_queued(compared: Compared) -> None:
    done = compared.repo.run("multitask", "compare", "typo", "--vary", "train.weightin",
                             "equal", "--pipeline", "sample/dvc.yaml", check=False)
    assert done.returncode == 1
    assert "unknown key 'train.weightin'; did you mean 'train.weighting'?" in done.stderr
    status = subprocess.run(["dvc", "queue", "status"], cwd=compared.repo.root,
                            env=compared.repo.env, capture_output=True, text=True).stdout
    assert "typo-" not in status


def test_a_later_commit_reads_back_the_comparison_through_rev(compared: Compared) -> None:
    """Experiments belong to the commit they were queued on: after a commit that changes
    an input of the pipeline (so comparison.json's measurements no longer stand either),
    --collect-only finds none and says so; --rev (recorded in comparison.json) reads them."""
    first = compared.result()
    assert first["commit"] == compared.repo.run("git", "rev-parse", "HEAD").stdout.strip()
    params = compared.repo.sample / "params.yaml"
    params.write_text(params.read_text() + "# a later commit\n")
    compared.repo.run("git", "commit", "-q", "-am", "later")
    try:
        later = compared.repo.run(*COMMAND, "--collect-only", check=False, timeout=600)
        assert later.returncode == 1
        assert f"add --rev {first['commit']} to read them back" in later.stderr
        compared.repo.run(*COMMAND, "--collect-only", "--rev", first["commit"], timeout=600)
        assert compared.result() == first
    finally:
        compared.repo.run("git", "reset", "-q", "--soft", "HEAD~1")
        compared.repo.run("git", "checkout", "HEAD", "--", "sample/params.yaml")


def test_a_rerun_after_a_commit_of_other_files_reads_back_the_experiments(
        compared: Compared) -> None:
    """A comparison stopped before it wrote comparison.json, then a commit that changes no
    input of the pipeline (notes, the README): the rerun reads back the experiments queued on
    the earlier commit instead of running them all again, and runs only those DVC no longer
    has (an earlier test removes some), each seed naming the commit it was measured on."""
    client = compared.repo.client()
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs = len(client.search_runs([experiment]))
    first = compared.result()
    names = {name for row in first["rows"] for name in row["experiments"]}
    kept = names & {name for name, _ in experiment_refs(compared.repo)}
    assert kept, "no experiment of the comparison left to read back"
    summary_file = compared.folder / "comparison.json"
    aside = summary_file.with_name("aside.json")
    summary_file.rename(aside)  # as if stopped before writing it
    notes = compared.repo.root / "NOTES.md"
    notes.write_text("results to come\n")
    compared.repo.run("git", "add", "NOTES.md")
    compared.repo.run("git", "commit", "-q", "-m", "notes")
    try:
        later = compared.repo.run("git", "rev-parse", "HEAD").stdout.strip()
        again = compared.repo.run(*COMMAND, timeout=900)
        assert (f"read back experiments of earlier commit(s) {first['commit'][:7]}, whose "
                f"pipeline inputs are those of {later[:7]}") in again.stderr
        gone = names - kept
        assert (f"queueing {len(gone)} experiments" if gone
                else "already ran: reading them back") in again.stderr
        # and, where some ran again, a new parent: the old one holds the runs they replace
        assert len(client.search_runs([experiment])) == runs + len(gone) + bool(gone)
        result = compared.result()
        assert result["commit"] == later
        for row, before in zip(result["rows"], first["rows"], strict=True):
            assert row["commits"] == [first["commit"] if name in kept else later
                                      for name in row["experiments"]], row["label"]
            same = {key: value for key, value in row.items() if key not in ("commits", "run_ids")}
            assert same == {key: value for key, value in before.items()
                            if key not in ("commits", "run_ids")}
    finally:
        compared.repo.run("git", "reset", "-q", "HEAD~1")
        notes.unlink()
        aside.replace(summary_file)
