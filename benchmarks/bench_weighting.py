"""Per-step training cost of every weighting method relative to ``equal``.

LeNet HPS at batch 256 on the CPU, with 2 tasks and with 10 (a synthetic 10-head setup; the
inputs are random images, as data content does not change the cost). One step is what the
trainer does: forward, per-task losses, ``method.backward``, ``optimizer.step``, and for FAMO
the no-grad forward of ``after_step``. Every method gets its own copy of the model and its own
optimiser; methods run interleaved, a few steps each, over several rounds (the order rotating).

Each row's value is the median CPU time of a step over the median for ``equal``, measured with
one intra-op thread (:data:`THREADS`): the process's CPU time is then the work of the step, which
other processes on a shared machine do not change, whereas wall-clock time there swings by
several times (two threads also spin-wait for each other whenever one is descheduled). Rows carry
the wall-clock ratio too (``wall_ratio``), meaningful on an idle machine. Also: minor page faults
per step at T = 10; two yardsticks without a target: one no-grad forward alone
(``no_grad_forward``, what exact FAMO adds to a step) and a step whose shared update is the plain
sum of the exact per-task parameter gradients (``parameter_gradients``, the floor under every
parameter-gradient method before its own arithmetic); and the vmapped ``is_grads_batched``
backward against T plain passes, the measurement behind :mod:`multitask.weighting.gradients`.

**TorchJD beside this repository, in the same run** (``benchmarks/requirements.txt``, which
``make bench`` installs; absent, the rows say so): TorchJD 0.18's ``mtl_backward`` (the Jacobian
of the T losses w.r.t. the shared parameters in one vmapped backward) followed by
``jac_to_grad`` with its ``Mean`` aggregator (``torchjd:mean``: the engine alone, to set beside
``parameter_gradients``) and with ``UPGrad`` (``torchjd:upgrad``, beside ``upgrad``), each in
the trainer's channels-last layout and in the contiguous one (``@contiguous``, where the
repository's ``upgrad`` and ``parameter_gradients`` run too). The ``vs_peer`` rows give the
repository's absolute CPU time per step over the peer's: below 1, the repository is faster.
"""

from __future__ import annotations

import copy
import importlib.metadata
import os
import resource
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from multitask.config import ModelConfig
from multitask.models import MultiTaskModel, build_model
from multitask.tasks import Task
from multitask.weighting import METHODS, StepContext, WeightingMethod, build_weighting
from multitask.weighting.gradients import per_task_gradients

BATCH = 256
THREADS = 1
ROUNDS = 8
STEPS_PER_ROUND = 3
# (label, method, params): every registered method, plus variants worth a row of their own.
VARIANTS: list[tuple[str, str, dict[str, Any]]] = [
    ("dbmtl+balance", "dbmtl", {"balance_gradients": True}),
    ("nashmtl+every4", "nashmtl", {"update_weights_every": 4}),
    ("famo+next_batch", "famo", {"update": "next_batch"}),
    *[(f"{name}@representation", name, {"gradients": "representation"})
      for name in ("pcgrad", "cagrad", "nashmtl", "upgrad", "alignedmtl", "gradnorm")],
]
LIGHT = {"loss": (1.1, 1.2), "representation": (1.1, 1.2), "famo": (1.35, 1.35),
         "parameters": (1.5, 3.5), "nashmtl": (1.8, 4.0)}


@dataclass
class Runner:
    label: str
    method: WeightingMethod
    model: MultiTaskModel
    optimizer: torch.optim.Optimizer
    seconds: list[float] = field(default_factory=list)  # wall clock
    cpu_seconds: list[float] = field(default_factory=list)  # this process, all threads
    faults: list[int] = field(default_factory=list)
    # A yardstick rather than a method: "no_grad_forward" (what exact FAMO adds to a step) or
    # "parameter_gradients" (a step of summed exact per-task parameter gradients, no method)
    yardstick: str | None = None
    # A peer library's step instead of this repository's: TorchJD's aggregator (its Mean or
    # UPGrad) after its mtl_backward
    peer: Any = None

    @property
    def kind(self) -> str:
        if self.method.name == "famo" and self.method.needs_losses_after_step:
            return "famo"
        if self.method.name == "nashmtl" and self.method.gradients == "parameters":
            return "nashmtl"
        return "loss" if self.method.gradients == "none" else self.method.gradients


def _losses(model: MultiTaskModel, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    features = model.encode(x)
    outputs = model.decode(features)
    return torch.stack([F.cross_entropy(outputs[name], y[:, t])
                        for t, name in enumerate(model.task_names)]), features


def _peer_step(runner: Runner, x: Tensor, y: Tensor) -> None:
    """TorchJD's multi-task step: per-task Jacobian of the shared parameters, aggregated."""
    from torchjd.autojac import jac_to_grad, mtl_backward

    runner.optimizer.zero_grad(set_to_none=True)
    features = runner.model.encode(x)
    outputs = runner.model.decode(features)
    losses = [F.cross_entropy(outputs[name], y[:, t])
              for t, name in enumerate(runner.model.task_names)]
    shared = runner.model.shared_parameters()
    mtl_backward(losses, features=features, shared_params=shared)
    jac_to_grad(shared, runner.peer)
    runner.optimizer.step()


def _step(runner: Runner, x: Tensor, y: Tensor, step: int, record: bool) -> None:
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    started, cpu_started = time.perf_counter(), time.process_time()
    if runner.peer is not None:
        _peer_step(runner, x, y)
    elif runner.yardstick == "no_grad_forward":
        with torch.no_grad():
            _losses(runner.model, x, y)
    elif runner.yardstick == "parameter_gradients":
        runner.optimizer.zero_grad(set_to_none=True)
        losses, features = _losses(runner.model, x, y)
        grads = per_task_gradients(losses, features, runner.model.shared_parameters(),
                                   "parameters")
        grads.apply(grads.matrix.sum(0))
        runner.optimizer.step()
    else:
        _train_step(runner, x, y, step)
    if record:
        runner.seconds.append(time.perf_counter() - started)
        runner.cpu_seconds.append(time.process_time() - cpu_started)
        runner.faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)


def _train_step(runner: Runner, x: Tensor, y: Tensor, step: int) -> None:
    runner.optimizer.zero_grad(set_to_none=True)
    losses, features = _losses(runner.model, x, y)
    runner.method.backward(StepContext(losses, features, runner.model.shared_parameters(),
                                       step, 0))
    runner.optimizer.step()
    if runner.method.needs_losses_after_step:
        with torch.no_grad():
            runner.method.after_step(_losses(runner.model, x, y)[0])


def _runners(tasks: int) -> list[Runner]:
    torch.manual_seed(0)
    task_list = [Task(name=f"task{t}", num_classes=10) for t in range(tasks)]
    model = build_model(ModelConfig(), task_list, 1, 36).to(memory_format=torch.channels_last)
    specs = [(name, name, {"weights": [1.0] * tasks} if name == "static" else {})
             for name in sorted(METHODS)] + VARIANTS
    runners = []
    for label, name, params in specs:
        method = build_weighting(name, tasks, {name: params})
        own = copy.deepcopy(model)
        optimizer = torch.optim.Adam([*own.parameters(), *method.parameters()], lr=1e-4)
        runners.append(Runner(label, method, own, optimizer))
    for yardstick in ("no_grad_forward", "parameter_gradients"):
        own = copy.deepcopy(model)
        runners.append(Runner(yardstick, build_weighting("equal", tasks), own,
                              torch.optim.Adam(own.parameters(), lr=1e-4), yardstick=yardstick))
    contiguous = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    for label, yardstick in (("upgrad@contiguous", None),
                             ("parameter_gradients@contiguous", "parameter_gradients")):
        own = copy.deepcopy(contiguous)
        method = build_weighting("upgrad" if yardstick is None else "equal", tasks)
        runners.append(Runner(label, method, own, torch.optim.Adam(own.parameters(), lr=1e-4),
                              yardstick=yardstick))
    return runners + _peer_runners(model, contiguous, tasks)


def peer_missing() -> str | None:
    """Why the peer rows cannot run here, or None."""
    try:
        import quadprog  # noqa: F401  (UPGrad's projector)
        import torchjd.aggregation  # noqa: F401
    except ImportError as exc:
        return (f"TorchJD not installed ({exc}): pip install -r benchmarks/requirements.txt "
                "(make bench does)")
    return None


def _peer_runners(model: MultiTaskModel, contiguous: MultiTaskModel,
                  tasks: int) -> list[Runner]:
    if peer_missing():
        return []
    from torchjd.aggregation import Mean, UPGrad

    runners = []
    for suffix, base in (("", model), ("@contiguous", contiguous)):
        for name, aggregator in (("mean", Mean()), ("upgrad", UPGrad())):
            own = copy.deepcopy(base)
            runners.append(Runner(f"torchjd:{name}{suffix}", build_weighting("equal", tasks),
                                  own, torch.optim.Adam(own.parameters(), lr=1e-4),
                                  yardstick="peer", peer=aggregator))
    return runners


# The repository's runner set beside each peer runner (same work, same layout).
PEER_PAIRS = {"torchjd:mean": "parameter_gradients", "torchjd:upgrad": "upgrad",
              "torchjd:mean@contiguous": "parameter_gradients@contiguous",
              "torchjd:upgrad@contiguous": "upgrad@contiguous"}


def _batched_over_loop(tasks: int, x: Tensor, y: Tensor) -> float:
    """Median time of one vmapped backward over :func:`per_task_gradients`' T plain ones."""
    task_list = [Task(name=f"task{t}", num_classes=10) for t in range(tasks)]
    model = build_model(ModelConfig(), task_list, 1, 36)
    shared = model.shared_parameters()
    batched, loop = [], []
    for _ in range(5):
        losses, _ = _losses(model, x, y)
        started = time.perf_counter()
        torch.autograd.grad(losses, shared, torch.eye(tasks), is_grads_batched=True)
        batched.append(time.perf_counter() - started)
        losses, features = _losses(model, x, y)
        started = time.perf_counter()
        per_task_gradients(losses, features, shared, "parameters")
        loop.append(time.perf_counter() - started)
    return statistics.median(batched) / statistics.median(loop)


def measure(tasks: int) -> list[dict[str, Any]]:
    generator = torch.Generator().manual_seed(tasks)
    x = torch.rand(BATCH, 1, 36, 36, generator=generator)
    y = torch.randint(0, 10, (BATCH, tasks), generator=generator)
    runners = _runners(tasks)
    step = 0
    for runner in runners:  # warm-up: allocator, kernels, first-step state
        _step(runner, x, y, step, record=False)
    for round_ in range(ROUNDS):
        shift = round_ % len(runners)
        for runner in runners[shift:] + runners[:shift]:
            for _ in range(STEPS_PER_ROUND):
                step += 1
                _step(runner, x, y, step, record=True)
    equal = next(r for r in runners if r.label == "equal")
    baseline = statistics.median(equal.cpu_seconds)
    rows: list[dict[str, Any]] = [{"name": f"weighting/T{tasks}/equal/step_cpu_ms",
                                   "value": round(baseline * 1000, 2), "unit": "ms",
                                   "wall_ms": round(statistics.median(equal.seconds) * 1000, 2)}]
    column = 0 if tasks == 2 else 1
    for runner in runners:
        ratio = statistics.median(runner.cpu_seconds) / baseline
        result = {"name": f"weighting/T{tasks}/{runner.label}/step_time", "value":
                  round(ratio, 3), "unit": "x equal (CPU time)",
                  "wall_ratio": round(statistics.median(runner.seconds)
                                      / statistics.median(equal.seconds), 3)}
        if runner.yardstick is None and "@contiguous" not in runner.label:
            target = LIGHT[runner.kind][column]
            result.update(target=target, ok=ratio <= target, gradients=runner.kind)
        rows.append(result)
    if tasks == 10:
        for runner in runners:
            if runner.kind in ("parameters", "nashmtl") or runner.label == "equal":
                rows.append({"name": f"weighting/T{tasks}/{runner.label}/minor_page_faults",
                             "value": round(statistics.mean(runner.faults), 1),
                             "unit": "faults/step (mean)"})
    rows += peer_rows(tasks, {r.label: r for r in runners}, peer_missing())
    rows.append({"name": f"weighting/T{tasks}/gradients/is_grads_batched_over_loop",
                 "value": round(_batched_over_loop(tasks, x, y), 3), "unit": "x loop"})
    return rows


def peer_rows(tasks: int, by_label: dict[str, Runner], missing: str | None
              ) -> list[dict[str, Any]]:
    """The repository's CPU time per step over the peer's, one row per :data:`PEER_PAIRS`; where
    the peer is ``missing``, those rows and the peer's own ``step_time`` rows by name, skipped
    with the reason (so the runner keeps their last measurement instead of erasing it)."""
    if missing:
        return [{"name": name, "value": None, "unit": unit, "skipped": missing}
                for peer, own in PEER_PAIRS.items()
                for name, unit in ((f"weighting/T{tasks}/{peer}/step_time", "x equal (CPU time)"),
                                   (f"weighting/T{tasks}/{own}_vs_peer_{peer}",
                                    "x peer (CPU time)"))]
    rows = []
    for peer, own in PEER_PAIRS.items():
        if peer in by_label:
            mine, theirs = (statistics.median(by_label[label].cpu_seconds)
                            for label in (own, peer))
            rows.append({"name": f"weighting/T{tasks}/{own}_vs_peer_{peer}", "value":
                         round(mine / theirs, 3), "unit": "x peer (CPU time)",
                         "cpu_ms": round(mine * 1000, 2), "peer_cpu_ms": round(theirs * 1000, 2),
                         "peer": f"torchjd {importlib.metadata.version('torchjd')}"})
    return rows


def measure_one_thread(*tasks: int) -> list[dict[str, Any]]:
    """:func:`measure` for each number of tasks with :data:`THREADS` intra-op threads, the
    process's thread count restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        return [row for count in tasks for row in measure(count)]
    finally:
        torch.set_num_threads(threads)


def run() -> list[dict[str, Any]]:
    """Both setups; the 1-minute load average before and after says how busy the machine was."""
    load_before = os.getloadavg()[0]
    rows = measure_one_thread(2, 10)
    return [*rows, {"name": "weighting/load_average_1min", "unit": "runnable processes",
                    "value": round(max(load_before, os.getloadavg()[0]), 2),
                    "intra_op_threads": THREADS}]
