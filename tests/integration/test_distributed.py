"""Data-parallel training on the CPU with two Gloo processes under torchrun: every weighting
method's update equals the one-process update on the same global batch, the copies never drift
apart, a SIGKILLed distributed run resumes, and the sample pipeline runs with train.processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from test_tracking_pipeline import EXPERIMENT, copy_sample_repo

from multitask.training import distributed
from multitask.training.trainer import FAIL_AFTER_EPOCH_ENV

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
STEPS_SCRIPT = HERE / "distributed_steps.py"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def processed(sample_composites: Callable[..., Path]) -> Path:
    """MultiFashion composites from the shipped sample: 720 train, 80 val, 100 test."""
    return sample_composites(800, 100)


def torchrun(processes: int, *command: str, cwd: Path | None = None
             ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, distributed.THREADS_ENV: "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc-per-node={processes}", *command], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_shards_cover_every_row_once_in_order() -> None:
    for count in (1, 2, 9, 16, 255):
        for world in (1, 2, 3, 4):
            rows = [r for rank in range(world)
                    for r in range(count)[distributed.shard(count, rank, world)]]
            assert rows == list(range(count))
            sizes = [len(range(count)[distributed.shard(count, rank, world)])
                     for rank in range(world)]
            assert max(sizes) - min(sizes) <= 1


def test_every_method_updates_as_one_process_on_the_global_batch(processed: Path,
                                                                 tmp_path: Path) -> None:
    alone, together = tmp_path / "alone", tmp_path / "together"
    alone.mkdir()
    together.mkdir()
    done = subprocess.run([sys.executable, str(STEPS_SCRIPT), str(processed), str(alone)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    done = torchrun(2, str(STEPS_SCRIPT), str(processed), str(together))
    assert done.returncode == 0, done.stderr[-3000:]

    variants = sorted(p.name.removesuffix("-rank0.pt") for p in alone.glob("*-rank0.pt"))
    assert len(variants) >= 20, variants  # every method, both gradient sources, rotation
    for variant in variants:
        reference = torch.load(alone / f"{variant}-rank0.pt")
        ranks = [torch.load(together / f"{variant}-rank{r}.pt") for r in (0, 1)]
        assert reference["steps"] == ranks[0]["steps"] == 3, variant  # 16 + 16 + 9 (5/4)
        moved = (reference["parameters"] - reference["initial"]).abs().max()
        assert moved > 1e-3, f"{variant}: the steps barely moved the network"
        # the copies are the same network, bit for bit
        assert torch.equal(ranks[0]["parameters"], ranks[1]["parameters"]), variant
        assert torch.equal(ranks[0]["method"], ranks[1]["method"]), variant
        # ... and the one-process network up to float summation order (SGD: lr × updates)
        torch.testing.assert_close(ranks[0]["parameters"], reference["parameters"],
                                   rtol=0, atol=1e-5, msg=f"{variant}: parameters")
        torch.testing.assert_close(ranks[0]["method"], reference["method"], rtol=1e-4,
                                   atol=1e-5, msg=f"{variant}: method state")


def stage_folder(root: Path, processed: Path, pipeline_folder: Callable[[Path, Path], object],
                 **train: object) -> Path:
    """A pipeline folder on the shared composites: 4 epochs, MGDA (a gradient method), two
    processes, no MLflow."""
    params = yaml.safe_load((ROOT / "sample" / "params.yaml").read_text())
    pipeline_folder(root, processed)
    params["train"].update({"epochs": 4, "diagnostics_every": 0, "weighting": "mgda",
                            "processes": 2, **train})
    params["tracking"]["enabled"] = False
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def train(cwd: Path, **popen: object) -> subprocess.Popen[str]:
    env = {**os.environ, distributed.THREADS_ENV: "1"}
    return subprocess.Popen([sys.executable, "-m", "multitask", "train"], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **popen)  # type: ignore[call-overload]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, pending = [], [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def test_a_sigkilled_distributed_run_resumes_to_the_same_result(
        sample_composites: Callable[..., Path], tmp_path: Path,
        pipeline_folder: Callable[[Path, Path], object]) -> None:
    processed = sample_composites(4000, 500)  # 3,600 training images: epochs long enough
    straight = stage_folder(tmp_path / "straight", processed, pipeline_folder)
    _, err = train(straight).communicate(timeout=600)
    assert "process 0 of 2 (gloo)" in err, err[-3000:]
    report = json.loads((straight / "reports" / "train.json").read_text())
    assert report["processes"] == 2 and report["epochs"] == 4

    killed = stage_folder(tmp_path / "killed", processed, pipeline_folder)
    checkpoint = killed / "models" / "checkpoints" / "train.pt"
    job = train(killed)
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid in [job.pid, *descendants(job.pid)]:  # the launcher, torchrun, both ranks at once
        os.kill(pid, signal.SIGKILL)
    _, err = job.communicate()
    assert checkpoint.exists(), f"no checkpoint before the end:\n{err[-3000:]}"
    state = torch.load(checkpoint, weights_only=True)
    assert 1 <= state["epoch"] < 4, "the kill should land mid-training"
    assert not (killed / "reports" / "train.json").exists()

    resumed = train(killed)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    assert f"resumed from models/checkpoints/train.pt after epoch {state['epoch']}" in err
    assert not checkpoint.exists()
    after = json.loads((killed / "reports" / "train.json").read_text())
    assert after["final"] == report["final"]
    first = torch.load(straight / "models" / "model.pt", weights_only=True)["state_dict"]
    second = torch.load(killed / "models" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_ctrl_c_stops_a_distributed_run_once_and_it_resumes(
        sample_composites: Callable[..., Path], tmp_path: Path,
        pipeline_folder: Callable[[Path, Path], object], store: str) -> None:
    """Ctrl-C (SIGINT to the command's process group, as a terminal sends it): one message, no
    torchrun traceback, no process left behind, the MLflow run FAILED; the same command then
    resumes from the checkpoint. The epochs are logged once, not once per process."""
    folder = stage_folder(tmp_path / "interrupted", sample_composites(4000, 500),
                          pipeline_folder)
    params = yaml.safe_load((folder / "params.yaml").read_text())
    params["tracking"]["enabled"] = True
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    checkpoint = folder / "models" / "checkpoints" / "train.pt"
    job = train(folder, start_new_session=True)
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    below = descendants(job.pid)
    os.killpg(job.pid, signal.SIGINT)
    _, err = job.communicate(timeout=120)
    assert job.returncode == 130, err[-3000:]
    assert err.count("multitask: interrupted") == 1, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert err.count("epoch 1/4 ") == 1, err[-3000:]
    assert not [p for p in below if Path(f"/proc/{p}").exists()
                and "Z" not in Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1][:3]]
    epoch = torch.load(checkpoint, weights_only=True)["epoch"]
    assert 1 <= epoch < 4, "the Ctrl-C should land mid-training"

    resumed = train(folder)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    assert f"resumed from models/checkpoints/train.pt after epoch {epoch}" in err
    assert err.count("epoch 4/4 ") == 1, err[-3000:]
    client = mlflow.MlflowClient(store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              order_by=["attributes.start_time ASC"])
    assert [r.info.status for r in runs] == ["FAILED", "FINISHED"]
    assert runs[0].data.params["train.processes"] == "2"


def test_a_failing_process_is_reported_once_without_torchruns_traceback(
        sample_composites: Callable[..., Path], tmp_path: Path,
        pipeline_folder: Callable[[Path, Path], object], monkeypatch: pytest.MonkeyPatch) -> None:
    folder = stage_folder(tmp_path / "failing", sample_composites(800, 100), pipeline_folder,
                          epochs=2)
    monkeypatch.setenv(FAIL_AFTER_EPOCH_ENV, "1")
    job = train(folder)
    _, err = job.communicate(timeout=600)
    assert job.returncode == 1, err[-3000:]
    assert "multitask train: error: MULTITASK_FAIL_AFTER_EPOCH=1: injected failure" in err
    assert "Traceback" not in err and "ChildFailedError" not in err, err[-3000:]
    assert "torchrun stopped the others" in err


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def hosts(checkouts: list[Path], port: int) -> list[subprocess.Popen[str]]:
    """A run over several hosts, as torchrun starts one: one agent per checkout (its "host"),
    one rank each, static rendezvous on 127.0.0.1; the first checkout is node 0."""
    env = {**os.environ, distributed.THREADS_ENV: "1"}
    return [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", f"--nnodes={len(checkouts)}",
         "--nproc-per-node=1", f"--node-rank={node}", "--master-addr=127.0.0.1",
         f"--master-port={port}", "-m", "multitask", "train"], cwd=checkout, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for node, checkout in enumerate(checkouts)]


def test_ranks_on_other_hosts_resume_from_rank_0s_checkpoint(
        sample_composites: Callable[..., Path], tmp_path: Path,
        pipeline_folder: Callable[[Path, Path], object]) -> None:
    """Two checkouts stand for two hosts: only node 0's holds the checkpoint its rank 0 wrote.
    The rank on the other host resumes from it too (rank 0 sends the state), so the resumed
    run ends with the network an uninterrupted run trains."""
    processed = sample_composites(4000, 500)
    straight = [stage_folder(tmp_path / f"straight-{node}", processed, pipeline_folder)
                for node in (0, 1)]
    for job in hosts(straight, free_port()):
        _, err = job.communicate(timeout=600)
        assert job.returncode == 0, err[-3000:]
    report = json.loads((straight[0] / "reports" / "train.json").read_text())
    assert report["processes"] == 2 and not (straight[1] / "reports" / "train.json").exists()

    killed = [stage_folder(tmp_path / f"killed-{node}", processed, pipeline_folder)
              for node in (0, 1)]
    checkpoint = killed[0] / "models" / "checkpoints" / "train.pt"
    jobs = hosts(killed, free_port())
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and all(job.poll() is None for job in jobs) \
            and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid in [p for job in jobs for p in (job.pid, *descendants(job.pid))]:
        os.kill(pid, signal.SIGKILL)
    for job in jobs:
        job.communicate()
    assert checkpoint.exists(), "no checkpoint before the end"
    state = torch.load(checkpoint, weights_only=True)
    assert 1 <= state["epoch"] < 4, "the kill should land mid-training"
    assert not (killed[1] / "models" / "checkpoints").exists()  # the other host has none

    errors = []
    for job in hosts(killed, free_port()):
        _, err = job.communicate(timeout=600)
        assert job.returncode == 0, err[-3000:]
        errors.append(err)
    assert f"resumed from models/checkpoints/train.pt after epoch {state['epoch']}" in errors[0]
    assert (f"resumed from rank 0's models/checkpoints/train.pt after epoch {state['epoch']}"
            in errors[1])
    after = json.loads((killed[0] / "reports" / "train.json").read_text())
    assert after["final"] == report["final"]
    first = torch.load(straight[0] / "models" / "model.pt", weights_only=True)["state_dict"]
    second = torch.load(killed[0] / "models" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_ranks_stop_when_their_launcher_is_sigkilled(
        sample_composites: Callable[..., Path], tmp_path: Path,
        pipeline_folder: Callable[[Path, Path], object]) -> None:
    folder = stage_folder(tmp_path / "orphaned", sample_composites(4000, 500), pipeline_folder,
                          epochs=30)
    job = train(folder)
    deadline = time.monotonic() + 300
    while len(descendants(job.pid)) < 3 and time.monotonic() < deadline:  # torchrun + 2 ranks
        time.sleep(0.1)
    below = descendants(job.pid)
    job.send_signal(signal.SIGKILL)  # `multitask train` alone, as a kill -9 by pid would
    job.communicate()
    deadline = time.monotonic() + 60
    while (left := [p for p in below if Path(f"/proc/{p}").exists()
                    and "Z" not in Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1][:3]]):
        assert time.monotonic() < deadline, f"processes {left} outlived their launcher"
        time.sleep(0.2)
    assert not (folder / "reports" / "train.json").exists()


def test_the_sample_pipeline_runs_with_two_processes(tmp_path: Path) -> None:
    repo = copy_sample_repo(tmp_path / "repo")
    params_file = repo.sample / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["train"]["processes"] = 2
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    done = repo.run("dvc", "repro", "sample/dvc.yaml", timeout=900)
    log = done.stdout + done.stderr
    assert log.count("process 0 of 2 (gloo)") == 2, log[-3000:]  # baselines and train
    report = json.loads((repo.sample / "reports" / "train.json").read_text())
    assert report["processes"] == 2
    baselines = json.loads((repo.sample / "reports" / "baselines.json").read_text())
    assert set(baselines["tasks"]) == {"left", "right"}
    client = repo.client()
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], "tags.stage = 'evaluate'")
    assert [r.info.run_id for r in runs] == [report["run_id"]], "rank 1 logged a run"
    (run,) = runs
    assert run.info.status == "FINISHED"
    assert run.data.params["train.processes"] == "2"
    history = client.get_metric_history(run.info.run_id, "val/accuracy/left")
    assert [m.step for m in history] == list(range(1, report["epochs"] + 1))
