"""What the CUDA path does on a GPU; no rows without one (``benchmarks/gpu_check.sh`` runs this
on a lent GPU). Every row names the GPU; timings are wall clock between CUDA synchronisations.

- ``gpu/fit/...``: the train stage's own trainer (:func:`multitask.training.session.fit`: bf16
  autocast, the data resident on the GPU, the default model from params.yaml, equal weighting)
  on the full MultiFashion training split, images/s at the params' batch size and at larger
  ones (the median epoch of :data:`FIT_EPOCHS`, validation excluded).
- ``gpu/step/...``: one training step (forward, the two tasks' losses, backward, Adam) of the
  default model and of LeNet hard sharing on a batch gathered from data resident on the GPU, at
  large batches, in three forms: ``eager`` (as the trainer runs it), ``graph`` (the whole step
  captured once in a CUDA graph and replayed; Adam ``capturable``) and ``compiled``
  (``torch.compile`` of the default model, at batch 8192; its compile seconds are a field).
  Images/s.
- ``gpu/backbone/...``: ResNet-18 hard sharing (the encoder the natural-image data sets use),
  random data on the GPU, bf16 autocast: MultiFashion's 1x36x36 canvases at batch 1024 and
  ImageNet's 3x224x224 at batch 256 (:func:`benchmarks.bench_backbones.images_per_second`).
- ``gpu/weighting/...``: the weighting table's kinds on the GPU (LeNet HPS, batch 256, bf16
  autocast, T = 2 and 10): each method's step time over ``equal``'s, the summed exact per-task
  parameter gradients (``parameter_gradients``, the floor of every parameter-gradient method),
  and the vmapped ``is_grads_batched`` backward over the T-pass loop of
  :mod:`multitask.weighting.gradients`.
- ``gpu/ensemble/...``: the baselines stage's T single-task LeNets (T = 2 and 4, batch 256,
  float32), one step of all T as :mod:`benchmarks.bench_ensemble` formulates it (sequential,
  ``torch_func``'s vmap, the grouped wide network), wall ms and the ratio to sequential
  channels-last, the stage's default.
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks import bench_ensemble as ensemble
from benchmarks.bench_backbones import images_per_second
from benchmarks.bench_training import throughput
from benchmarks.common import ROOT, default_processed, row
from multitask.config import ModelConfig, load_params
from multitask.models import MultiTaskModel, build_model
from multitask.tasks import Task
from multitask.training.trainer import task_losses
from multitask.weighting import StepContext, build_weighting
from multitask.weighting.gradients import per_task_gradients

FIT_EPOCHS = int(os.environ.get("BENCH_GPU_FIT_EPOCHS", "3"))
FIT_BATCHES = (4096,)  # beside the params' own batch size
STEP_BATCHES = tuple(int(b) for b in os.environ.get("BENCH_GPU_STEP_BATCHES",
                                                    "1024,8192,32768").split(","))
STEP_SECONDS = float(os.environ.get("BENCH_GPU_STEP_SECONDS", "2.0"))
COMPILED_BATCH = 8192  # torch.compile of the default model at one batch size (compile time)
TIMED_STEPS = 20
WEIGHTING_METHODS = ("equal", "uncertainty", "pcgrad", "cagrad", "upgrad", "nashmtl",
                     "pcgrad@representation")
TASKS = [Task("left", 10), Task("right", 10)]
H200_TARGET = 1_000_000  # training images/s of a LeNet step on an H200


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resident(count: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """A synthetic data set of ``count`` canvases on ``device`` (content does not change
    cost)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(count, 1, 36, 36, generator=generator).to(device)
    y = torch.randint(0, 10, (count, len(TASKS)), generator=generator).to(device)
    return x, y


def step_rate(architecture: str, batch: int, mode: str, x_all: Tensor,
              y_all: Tensor) -> dict[str, Any]:
    """Images/s of one form of the training step (``eager``, ``compiled``, ``graph``: CUDA
    only), its batches gathered at random from the resident ``x_all``/``y_all``."""
    device = x_all.device
    torch.manual_seed(0)
    model = build_model(ModelConfig(architecture=architecture), TASKS, 1, 36).to(
        device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, capturable=mode == "graph")
    forward: Callable[[Tensor], dict[str, Tensor]] = model
    compile_s = None
    if mode == "compiled":
        forward = torch.compile(model)
    x = torch.empty(batch, 1, 36, 36, device=device).contiguous(
        memory_format=torch.channels_last)
    y = torch.empty(batch, len(TASKS), dtype=torch.long, device=device)
    index = torch.empty(batch, dtype=torch.long, device=device)

    def gather() -> None:
        index.random_(0, len(x_all))
        x.copy_(x_all[index])
        y.copy_(y_all[index])

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda",
                            cache_enabled=mode != "graph"):
            outputs = forward(x)
            loss = sum(F.cross_entropy(outputs[t.name].float(), y[:, i])
                       for i, t in enumerate(TASKS))
        loss.backward()
        optimizer.step()

    gather()
    started = time.perf_counter()
    if mode == "graph":
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up outside the capture (allocator, cuDNN choices)
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            step()
        run = graph.replay
    else:
        for _ in range(3):
            step()
        run = step
    _sync(device)
    if mode == "compiled":
        compile_s = time.perf_counter() - started
    steps, started = 0, time.perf_counter()
    while steps < 5 or time.perf_counter() - started < STEP_SECONDS:
        gather()
        run()
        steps += 1
        if steps % 50 == 0:
            _sync(device)
    _sync(device)
    rate = steps * batch / (time.perf_counter() - started)
    extra: dict[str, Any] = {"batch": batch, "mode": mode, "architecture": architecture,
                             "steps": steps}
    if compile_s is not None:
        extra["compile_s"] = round(compile_s, 1)
    return row(f"gpu/step/{architecture}/batch{batch}/{mode}", rate, "images/s", **extra)


def step_rows(gpu: str) -> list[dict[str, Any]]:
    x_all, y_all = resident(60_000, torch.device("cuda"))
    rows = []
    default = load_params(ROOT / "params.yaml").model.architecture
    for architecture in dict.fromkeys((default, "hps")):
        for batch in STEP_BATCHES:
            for mode in ("eager", "graph"):
                rows += guarded(f"gpu/step/{architecture}/batch{batch}/{mode}",
                                lambda a=architecture, b=batch, m=mode:
                                [step_rate(a, b, m, x_all, y_all)])
    rows += guarded(f"gpu/step/{default}/batch{COMPILED_BATCH}/compiled",
                    lambda: [step_rate(default, COMPILED_BATCH, "compiled", x_all, y_all)])
    return aimed(rows, gpu)


def aimed(rows: list[dict[str, Any]], gpu: str) -> list[dict[str, Any]]:
    """LeNet step rows named by ``gpu``, with the aim for an H200 (:data:`H200_TARGET`) where
    that is the GPU; a failed measurement misses it."""
    if "H200" in gpu:
        rows = [{**r, "target": f">= {H200_TARGET} images/s",
                 "ok": r["value"] is not None and r["value"] >= H200_TARGET} for r in rows]
    return [{**r, "gpu": gpu} for r in rows]


def fit_rows(device: torch.device, fraction: float | None = None) -> list[dict[str, Any]]:
    """The train stage's trainer on the training split (all of it unless ``fraction``; on
    CUDA the data resident and bf16 autocast), at the params' batch size and at larger ones."""
    params = load_params(ROOT / "params.yaml")
    rows = []
    with default_processed() as folder:
        for batch in dict.fromkeys((params.train.batch_size, *FIT_BATCHES)):
            started = time.perf_counter()
            rate = throughput(folder, device, fraction, FIT_EPOCHS, batch)
            rows.append(row(f"gpu/fit/{params.model.architecture}/batch{batch}", rate,
                            "images/s", batch=batch, epochs=FIT_EPOCHS,
                            fit_s=round(time.perf_counter() - started, 1),
                            note="median epoch, validation excluded"))
    return rows


def _weighting_losses(model: MultiTaskModel, x: Tensor,
                      y: Tensor) -> tuple[Tensor, Tensor | tuple[Tensor, ...]]:
    """The per-task losses and representation as the trainer computes them (task t: column t)."""
    return task_losses(model, model.tasks, range(len(model.tasks)), x, y)


def _timed(step: Callable[[int], Any], device: torch.device) -> float:
    """Median wall seconds of a synchronised step, after three warm-up steps."""
    for i in range(3):
        step(i)
    times = []
    for i in range(TIMED_STEPS):
        _sync(device)
        started = time.perf_counter()
        step(i + 3)
        _sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def weighting_rows(device: torch.device, tasks: int) -> list[dict[str, Any]]:
    """Per-step wall time of the methods over ``equal`` on ``device`` (LeNet HPS, batch 256)."""
    generator = torch.Generator().manual_seed(tasks)
    x = torch.rand(256, 1, 36, 36, generator=generator).to(device).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, 10, (256, tasks), generator=generator).to(device)
    torch.manual_seed(0)
    task_list = [Task(name=f"task{t}", num_classes=10) for t in range(tasks)]
    base = build_model(ModelConfig(), task_list, 1, 36).to(device,
                                                           memory_format=torch.channels_last)
    seconds: dict[str, float] = {}
    for label in WEIGHTING_METHODS:
        name, _, gradients = label.partition("@")
        options = {"gradients": gradients} if gradients else {}
        method = build_weighting(name, tasks, {name: options}).to(device)
        model = copy.deepcopy(base)
        optimizer = torch.optim.Adam([*model.parameters(), *method.parameters()], lr=1e-4)

        def step(i: int, model: MultiTaskModel = model, method: Any = method,
                 optimizer: torch.optim.Optimizer = optimizer) -> None:
            optimizer.zero_grad(set_to_none=True)
            losses, features = _weighting_losses(model, x, y)
            method.backward(StepContext(losses, features, model.shared_parameters(), i, 0))
            optimizer.step()

        seconds[label] = _timed(step, device)
    model = copy.deepcopy(base)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def floor(i: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        losses, features = _weighting_losses(model, x, y)
        grads = per_task_gradients(losses, features, model.shared_parameters(), "parameters")
        grads.apply(grads.matrix.sum(0))
        optimizer.step()

    seconds["parameter_gradients"] = _timed(floor, device)
    shared = model.shared_parameters()
    eye = torch.eye(tasks, device=device)
    batched = _timed(lambda i: torch.autograd.grad(_weighting_losses(model, x, y)[0], shared,
                                                   eye, is_grads_batched=True), device)
    loop = _timed(lambda i: per_task_gradients(*_weighting_losses(model, x, y), shared,
                                               "parameters"), device)
    equal = seconds["equal"]
    prefix = f"gpu/weighting/T{tasks}"
    rows = [row(f"{prefix}/equal/step_ms", equal * 1000, "ms")]
    rows += [row(f"{prefix}/{label}/step_time", s / equal, "x equal (wall)",
                 step_ms=round(s * 1000, 3))
             for label, s in seconds.items() if label != "equal"]
    rows.append(row(f"{prefix}/gradients/is_grads_batched_over_loop", batched / loop, "x loop",
                    batched_ms=round(batched * 1000, 3), loop_ms=round(loop * 1000, 3)))
    return rows


def ensemble_rows(device: torch.device, members: int) -> list[dict[str, Any]]:
    """One step of the T baselines in each formulation on ``device``; ratio to sequential."""
    generator = torch.Generator().manual_seed(members)
    x = torch.rand(ensemble.BATCH, 1, 36, 36, generator=generator).to(device).contiguous(
        memory_format=torch.channels_last)
    targets = torch.randint(0, 10, (members, ensemble.BATCH), generator=generator).to(device)
    networks = [network.to(device) for network in ensemble.baseline_networks(members)]
    seconds = {}
    for name, (build, formats) in ensemble.FORMULATIONS.items():
        for memory_format in formats:
            step = build(networks, ensemble.FORMATS[memory_format])
            seconds[name, memory_format] = _timed(lambda i, step=step: step(x, targets), device)
    reference = seconds[ensemble.REFERENCE]
    return [row(f"gpu/ensemble/T{members}/{name}/{memory_format}/step_ms", s * 1000, "ms",
                ratio=round(s / reference, 3), members=members, batch=ensemble.BATCH)
            for (name, memory_format), s in seconds.items()]


def guarded(name: str, measure: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """``measure()``'s rows, or one row with its error: a failing measurement does not lose
    the others of a GPU lease."""
    try:
        rows = measure()
    except Exception as exc:  # reported in the row; the other measurements still run
        rows = [{"name": name, "value": None, "unit": "",
                 "error": f"{type(exc).__name__}: {str(exc)[-600:]}"}]
    for measured in rows:  # in the log as they come, should the lease end before the group
        print("  measured:", json.dumps(measured), flush=True)
    return rows


def run() -> list[dict[str, Any]]:
    if not torch.cuda.is_available():
        return []
    gpu, cuda = torch.cuda.get_device_name(0), torch.device("cuda")
    rows: list[dict[str, Any]] = []
    for tasks in (2, 10):
        rows += [{**r, "gpu": gpu} for r in guarded(f"gpu/weighting/T{tasks}",
                                                     lambda t=tasks: weighting_rows(cuda, t))]
    for members in (2, 4):
        rows += [{**r, "gpu": gpu} for r in guarded(f"gpu/ensemble/T{members}",
                                                     lambda m=members: ensemble_rows(cuda, m))]
    rows += step_rows(gpu)
    for channels, size, batch in ((1, 36, 1024), (3, 224, 256)):
        name = f"gpu/backbone/resnet18/{channels}x{size}x{size}/batch{batch}"
        rows += guarded(name, lambda c=channels, s=size, b=batch, n=name: [row(
            n, images_per_second("resnet18", c, s, None, b, cuda), "images/s", batch=b,
            gpu=gpu)])
    rows += [{**r, "gpu": gpu} for r in guarded("gpu/fit", lambda: fit_rows(cuda))]
    return rows
