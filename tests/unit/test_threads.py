"""Thread sizing on shared machines: the CPUs a process may use are its affinity mask capped by
its cgroup's CPU quota (v1 and v2 layouts written here as a container runtime would), and a
stage sizes torch's threads to them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from multitask.cpus import (
    BUSY_WAIT,
    IDLE_WAIT,
    available_cpus,
    cgroup_cpu_limit,
    choose_wait_policy,
    runnable_others,
    wait_policy,
)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_is_the_tightest_cpu_max_on_the_path(tmp_path: Path) -> None:
    proc = tmp_path / "proc_cgroup"
    write(proc, "0::/system.slice/job.scope\n")
    root = tmp_path / "cgroup"
    write(root / "system.slice/job.scope/cpu.max", "max 100000\n")  # the job: no quota
    write(root / "system.slice/cpu.max", "150000 100000\n")  # its slice: 1.5 CPUs
    assert cgroup_cpu_limit(proc, root) == 1.5
    write(root / "system.slice/job.scope/cpu.max", "50000 100000\n")
    assert cgroup_cpu_limit(proc, root) == 0.5
    write(root / "system.slice/job.scope/cpu.max", "max 100000\n")
    write(root / "system.slice/cpu.max", "max 100000\n")
    assert cgroup_cpu_limit(proc, root) is None


def test_cgroup_v1_quota_reads_the_cpu_controller(tmp_path: Path) -> None:
    proc = tmp_path / "proc_cgroup"
    write(proc, "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/x\n")
    root = tmp_path / "cgroup"
    write(root / "cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "200000\n")
    write(root / "cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n")
    write(root / "memory/docker/abc/cpu.cfs_quota_us", "100000\n")  # not the cpu controller
    assert cgroup_cpu_limit(proc, root) == 2.0
    write(root / "cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "-1\n")
    assert cgroup_cpu_limit(proc, root) is None


def test_no_cgroup_file_system_means_no_quota(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(tmp_path / "missing", tmp_path) is None
    write(tmp_path / "proc_cgroup", "0::/\n")
    assert cgroup_cpu_limit(tmp_path / "proc_cgroup", tmp_path / "nothing") is None


def test_available_cpus_is_the_affinity_mask_capped_by_the_quota(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import multitask.cpus as cpus

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(cpus, "cgroup_cpu_limit", lambda: None)
    assert available_cpus() == 4
    monkeypatch.setattr(cpus, "cgroup_cpu_limit", lambda: 1.5)
    assert available_cpus() == 1  # 1.5 CPUs of time: one thread that runs
    monkeypatch.setattr(cpus, "cgroup_cpu_limit", lambda: 0.25)
    assert available_cpus() == 1


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs two CPUs to pin a process to one")
def test_a_stage_pinned_to_one_cpu_runs_one_torch_thread(tmp_path: Path) -> None:
    """What `taskset -c 0 multitask ...` gets: the stage's thread sizing, in a real process."""
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "import torch; from multitask.device import limit_threads; "
            "torch.set_num_threads(8); print(limit_threads(), torch.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k != "MULTITASK_THREADS"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120, check=True)
    assert done.stdout.split() == ["1", "1"]


def test_runnable_others_reads_procs_running_less_this_process(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    write(stat, "cpu  1 2 3\nprocs_running 4\nprocs_blocked 0\n")
    assert runnable_others(stat, samples=3, interval_s=0) == 3
    write(stat, "cpu  1 2 3\nprocs_running 1\n")
    assert runnable_others(stat, samples=1) == 0
    assert runnable_others(tmp_path / "missing") == 0


def test_the_wait_policy_sleeps_at_once_only_where_others_hold_the_cores() -> None:
    assert wait_policy(0, 2) == IDLE_WAIT
    assert wait_policy(1, 2) == BUSY_WAIT  # another busy thread on a 2-CPU machine
    assert wait_policy(1, 8) == IDLE_WAIT and wait_policy(4, 8) == BUSY_WAIT
    assert BUSY_WAIT == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert IDLE_WAIT != BUSY_WAIT


def test_a_wait_policy_is_chosen_unless_yours_is_set_or_torch_is_loaded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import multitask.cpus as cpus

    monkeypatch.setattr(cpus, "runnable_others", lambda: 3.0)
    monkeypatch.setattr(cpus, "available_cpus", lambda: 2)
    environ: dict[str, str] = {}
    assert choose_wait_policy(environ, loaded=False) == BUSY_WAIT and environ == BUSY_WAIT
    monkeypatch.setattr(cpus, "runnable_others", lambda: 0.0)
    environ = {}
    assert choose_wait_policy(environ, loaded=False) == IDLE_WAIT and environ == IDLE_WAIT
    environ = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert choose_wait_policy(environ, loaded=False) is None  # yours wins
    assert environ == {"OMP_WAIT_POLICY": "ACTIVE"}
    environ = {}
    assert choose_wait_policy(environ, loaded=True) is None and environ == {}  # too late


def test_the_multitask_command_sets_the_policy_before_torch_loads() -> None:
    """A real `python -m multitask` process: the policy is in its environment when torch is
    imported, so its children (DVC stages' workers, tune workers, torchrun) see it too."""
    code = ("import os, sys, runpy; sys.argv = ['multitask', 'methods', '--json']; "
            "import multitask.cli as cli; cli.main(sys.argv[1:]); "
            "print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))")
    base = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=base, timeout=120, check=True)
    seen = done.stdout.split()[-2:]
    assert seen in (["None", BUSY_WAIT["OMP_WAIT_POLICY"]], [IDLE_WAIT["GOMP_SPINCOUNT"], "None"])
    mine = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**base, "OMP_WAIT_POLICY": "ACTIVE"}, timeout=120, check=True)
    assert mine.stdout.split()[-2:] == ["None", "ACTIVE"]


def test_each_pytest_worker_takes_its_share_of_the_cpus(worker_threads: int | None) -> None:
    """tests/conftest.py: under `pytest -n N` this worker and the stages it starts run
    CPUs // N torch threads (at least one)."""
    import torch

    if worker_threads is None:
        pytest.skip("sizes the workers of pytest -n N only, where MULTITASK_THREADS is unset")
    share = max(1, available_cpus() // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    assert os.environ["MULTITASK_THREADS"] == str(share)
    assert worker_threads == share and torch.get_num_threads() == share


@pytest.mark.parametrize(("variables", "expected"), [
    ({"MULTITASK_THREADS": "4", "OMP_NUM_THREADS": "1"}, "2 torch threads each"),
    ({"OMP_NUM_THREADS": "3"}, "1 torch thread each"),  # 2 CPUs between 2 processes
])
def test_train_processes_log_the_threads_their_ranks_take_not_omp_num_threads(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        variables: dict[str, str], expected: str) -> None:
    """Each rank sizes torch's threads from MULTITASK_THREADS or the CPUs (limit_threads), so
    the launch line says that count; it used to print OMP_NUM_THREADS, which plays no part."""
    from multitask.training import distributed

    class Launched:
        def __init__(self, command: list[str], env: dict[str, str], **options: object) -> None:
            self.env = env

        def wait(self) -> int:
            return 0

    monkeypatch.setattr("multitask.device.available_cpus", lambda: 2)
    monkeypatch.delenv("MULTITASK_THREADS", raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(distributed.subprocess, "Popen", Launched)
    with caplog.at_level("INFO", logger=distributed.__name__):
        assert distributed.relaunch(["train"], 2) == 0
    assert expected in caplog.text and "OMP_NUM_THREADS" not in caplog.text


@pytest.mark.parametrize(("variables", "expected"), [
    ({"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}, 4),  # 2 hosts x 2 processes, 8 CPUs each
    ({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1"}, 8),  # torchrun --nnodes 2 --nproc-per-node 1
    ({"WORLD_SIZE": "2"}, 4),  # a launcher that says nothing of hosts: all of them here
])
def test_under_torchrun_a_host_s_cpus_are_shared_by_that_host_s_processes(
        monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], expected: int) -> None:
    """Several hosts (torchrun --nnodes): each host's CPUs are split between the processes
    torchrun started there, not between every process of every host (WORLD_SIZE), which
    left half of each host's cores idle with two hosts."""
    import torch

    from multitask import device

    monkeypatch.setattr(device, "available_cpus", lambda: 8)
    for name in ("MULTITASK_THREADS", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    before = torch.get_num_threads()
    try:
        assert device.limit_threads() == expected == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
