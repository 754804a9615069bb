"""Training the T single-task baselines together: one batched step against T sequential steps.

The baselines stage trains one LeNet hard-sharing network per task (one 10-way head each), one
after another. One training step of all T of them (forward, each member's cross-entropy,
backward, Adam) is measured in three formulations (:mod:`multitask.models.ensemble`):

- ``sequential``: T networks, T optimisers, T steps: what the stage does today;
- ``torch_func``: ``stack_module_state`` + ``functional_call`` + ``vmap`` (input shared), one
  Adam over the stacked parameters;
- ``grouped``: one wide LeNet (first convolution T x 10 channels, second ``groups=T``, fully
  connected layers and heads as batched matrix products), one Adam.

Memory formats: channels-last (what the trainer uses: ``Trainer`` moves the network so, and
``ProcessedData.normalise`` makes batches so) and contiguous, for the formulations whose
convolution weights have one (torch_func's stacked weights are 5-D: no channels-last form).
Batch 256 of 1x36x36 random images (content does not change the cost), T = 2 and 4, with 1 and
2 intra-op threads. Formulations run interleaved, a few steps each, over several rounds (the
order rotating); each row is the median CPU time of a step (all threads of this process) and
the median wall time, and their ratios to ``sequential`` channels-last. CPU time is the work
of the step, which other processes on a shared machine change little; wall time, what a user
waits, is only meaningful on an idle machine (the load average is a row of its own).

The whole baselines stage too (``ensemble/stage/...``), ``train.ensemble: sequential`` against
``batched`` at 1 and 2 threads, alternating: 2 tasks, :data:`STAGE_EPOCHS` epochs of batch 256
on composites built from the shipped sample (:data:`STAGE_COMPOSITES`), so loading, validation,
testing and saving count as well as the steps.

    python -m benchmarks.bench_ensemble --quick --output /tmp/ensemble.json
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.common import ROOT, row
from multitask.config import DataConfig, ModelConfig, OptimizerConfig, parse_params
from multitask.data.preprocess import preprocess_data
from multitask.device import cpu_model
from multitask.io import write_json
from multitask.layout import Layout
from multitask.models import build_model
from multitask.models.ensemble import GroupedLeNet, StackedMembers, member_losses
from multitask.models.hps import HardParameterSharing
from multitask.tasks import Task
from multitask.training import stages
from multitask.training.optimization import build_optimizer

BATCH = 256
MEMBERS = (2, 4)
THREADS = (1, 2)
ROUNDS = 8
STEPS_PER_ROUND = 3
FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}
REFERENCE = ("sequential", "channels_last")  # the baselines stage without train.ensemble
STAGE_EPOCHS = 3
STAGE_COMPOSITES = (8000, 1000)  # train (10% of it validation) and test composites
STAGE_ROUNDS = 3

Step = Callable[[Tensor, Tensor], None]  # (x [B, 1, 36, 36], targets [T, B])


@dataclass
class Runner:
    formulation: str
    memory_format: str
    step: Step
    cpu_seconds: list[float] = field(default_factory=list)  # this process, all threads
    seconds: list[float] = field(default_factory=list)  # wall clock


def baseline_networks(members: int) -> list[HardParameterSharing]:
    """The T single-task networks as the baselines stage builds them (default model params,
    one 10-way head each, every member from the same seed)."""
    networks = []
    for t in range(members):
        torch.manual_seed(0)
        network = build_model(ModelConfig(), [Task(f"task{t}", 10)], 1, 36)
        assert isinstance(network, HardParameterSharing)
        networks.append(network)
    return networks


def sequential(networks: list[HardParameterSharing], memory_format: torch.memory_format) -> Step:
    """T networks, each with its own Adam, stepped one after another."""
    owned = [copy.deepcopy(n).to(memory_format=memory_format) for n in networks]
    optimizers = [build_optimizer(n.parameters(), OptimizerConfig()) for n in owned]

    def step(x: Tensor, targets: Tensor) -> None:
        for network, optimizer, target in zip(owned, optimizers, targets, strict=True):
            optimizer.zero_grad(set_to_none=True)
            logits = network(x)[network.task_names[0]]
            F.cross_entropy(logits, target).backward()
            optimizer.step()

    return step


def torch_func(networks: list[HardParameterSharing], memory_format: torch.memory_format
               ) -> Step:
    """torch.func's stacked members under vmap, one Adam (no channels-last form: 5-D weights)."""
    stacked = StackedMembers(copy.deepcopy(networks))
    optimizer = build_optimizer(stacked.parameters.values(), OptimizerConfig())

    def step(x: Tensor, targets: Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        member_losses(stacked(x), targets).sum().backward()
        optimizer.step()

    return step


def grouped(networks: list[HardParameterSharing], memory_format: torch.memory_format) -> Step:
    """One wide LeNet (grouped second convolution, batched matrix products), one Adam."""
    network = GroupedLeNet(networks).to(memory_format=memory_format)
    optimizer = build_optimizer(network.parameters(), OptimizerConfig())

    def step(x: Tensor, targets: Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        member_losses(network.logits(x), targets).sum().backward()
        optimizer.step()

    return step


FORMULATIONS: dict[str, tuple[Callable[..., Step], tuple[str, ...]]] = {
    "sequential": (sequential, tuple(FORMATS)),
    "torch_func": (torch_func, ("contiguous",)),
    "grouped": (grouped, tuple(FORMATS)),
}


def _timed(runner: Runner, x: Tensor, targets: Tensor) -> None:
    started, cpu_started = time.perf_counter(), time.process_time()
    runner.step(x, targets)
    runner.cpu_seconds.append(time.process_time() - cpu_started)
    runner.seconds.append(time.perf_counter() - started)


def measure(members: int, threads: int, rounds: int = ROUNDS,
            steps_per_round: int = STEPS_PER_ROUND) -> list[dict[str, Any]]:
    """One row per formulation and memory format at ``members`` x ``threads``."""
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(members)
    x = torch.rand(BATCH, 1, 36, 36, generator=generator).contiguous(
        memory_format=torch.channels_last)
    targets = torch.randint(0, 10, (members, BATCH), generator=generator)
    networks = baseline_networks(members)
    runners = [Runner(name, fmt, build(networks, FORMATS[fmt]))
               for name, (build, formats) in FORMULATIONS.items() for fmt in formats]
    for runner in runners:  # warm-up: allocator, oneDNN primitives, Adam's first-step state
        runner.step(x, targets)
    for round_ in range(rounds):
        shift = round_ % len(runners)
        for runner in runners[shift:] + runners[:shift]:
            for _ in range(steps_per_round):
                _timed(runner, x, targets)
    reference = next(r for r in runners if (r.formulation, r.memory_format) == REFERENCE)
    reference_cpu = statistics.median(reference.cpu_seconds)
    reference_wall = statistics.median(reference.seconds)
    rows = []
    for runner in runners:
        cpu, wall = statistics.median(runner.cpu_seconds), statistics.median(runner.seconds)
        rows.append(row(
            f"ensemble/T{members}/{runner.formulation}/{runner.memory_format}/"
            f"{threads}threads/step_cpu_ms", cpu * 1000, "ms CPU per step",
            wall_ms=round(wall * 1000, 2),
            cpu_ratio=round(cpu / reference_cpu, 3), wall_ratio=round(wall / reference_wall, 3),
            formulation=runner.formulation, memory_format=runner.memory_format,
            members=members, threads=threads, batch=BATCH, steps=len(runner.seconds),
            cpu_model=cpu_model(), cpu_capability=torch.backends.cpu.get_cpu_capability()))
    return rows


def stage_seconds(rounds: int = STAGE_ROUNDS) -> list[dict[str, Any]]:
    """The baselines stage, ``train.ensemble`` sequential and batched alternating, per thread
    count: median wall and CPU seconds."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        source = Layout(Path(tmp) / "source")
        source.raw_dir.mkdir(parents=True)
        source.source_dir("fashion_mnist").symlink_to(ROOT / "data" / "sample" / "fashion-mnist")
        train_size, test_size = STAGE_COMPOSITES
        preprocess_data(DataConfig(train_size=train_size, test_size=test_size, seed=0), source)
        for threads in THREADS:
            torch.set_num_threads(threads)
            times: dict[str, list[tuple[float, float]]] = {"sequential": [], "batched": []}
            for round_ in range(rounds):
                for mode in list(times)[::1 if round_ % 2 == 0 else -1]:
                    layout = Layout(Path(tmp) / f"{mode}-{threads}-{round_}")
                    layout.processed_dir.parent.mkdir(parents=True)
                    layout.processed_dir.symlink_to(source.processed_dir)
                    params = parse_params({"train": {"epochs": STAGE_EPOCHS, "ensemble": mode},
                                           "tracking": {"enabled": False}})
                    started, cpu_started = time.perf_counter(), time.process_time()
                    stages.baselines(params, layout)
                    times[mode].append((time.perf_counter() - started,
                                        time.process_time() - cpu_started))
            wall = {mode: statistics.median(t[0] for t in runs) for mode, runs in times.items()}
            for mode, runs in times.items():
                rows.append(row(
                    f"ensemble/stage/{mode}/{threads}threads/wall_s", wall[mode], "s",
                    cpu_s=round(statistics.median(t[1] for t in runs), 2),
                    wall_ratio=round(wall[mode] / wall["sequential"], 3),
                    runs=[round(t[0], 2) for t in runs], threads=threads, epochs=STAGE_EPOCHS,
                    composites=list(STAGE_COMPOSITES), cpu_model=cpu_model(),
                    cpu_capability=torch.backends.cpu.get_cpu_capability()))
    return rows


def run(rounds: int = ROUNDS, steps_per_round: int = STEPS_PER_ROUND,
        stage_rounds: int = STAGE_ROUNDS) -> list[dict[str, Any]]:
    """Every T and thread count, then the stage; the 1-minute load average before and after
    says how busy the machine was."""
    load_before, threads_before = os.getloadavg()[0], torch.get_num_threads()
    try:
        rows = [r for members in MEMBERS for threads in THREADS
                for r in measure(members, threads, rounds, steps_per_round)]
        rows += stage_seconds(stage_rounds)
    finally:
        torch.set_num_threads(threads_before)
    return [*rows, row("ensemble/load_average_1min", max(load_before, os.getloadavg()[0]),
                       "runnable processes", cpu_model=cpu_model(),
                       cpu_capability=torch.backends.cpu.get_cpu_capability())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="2 rounds of 1 step, the stage once: a try-out")
    parser.add_argument("--output", help="also write the rows to this JSON file")
    args = parser.parse_args()
    rows = run(2, 1, 1) if args.quick else run()
    for result in rows:
        extra = (f"  wall {result['wall_ms']} ms  (x{result['cpu_ratio']} CPU, "
                 f"x{result['wall_ratio']} wall)" if "wall_ms" in result else
                 f"  CPU {result['cpu_s']} s  (x{result['wall_ratio']} wall)"
                 if "cpu_s" in result else "")
        print(f"{result['name']}: {result['value']} {result['unit']}{extra}", flush=True)
    if args.output:
        write_json(args.output, {"rows": rows})


if __name__ == "__main__":
    main()
