"""Each LeNet layer in each formulation, forward and backward on one thread: which is fastest on
this CPU, chosen by measurement.

Layers (the default model, batch 256): the first convolution (1 -> 10 channels, 9x9, on the
36x36 canvas; no input gradient) and the second (10 -> 20, 5x5, on 14x14; input gradient), and
the cross-stitch network's two first convolutions, which read the same image, as one
convolution with 20 output channels. Formulations: oneDNN in the channels-last layout (the
trainer's), oneDNN contiguous (NCHW), and im2col (``F.unfold`` then a matrix product; autograd
differentiates it), and oneDNN whose weight gradient is computed as one forward convolution
with the batch as channels (:class:`BatchAsChannels`). Each formulation's output and gradients
are checked against ``F.conv2d`` before it is timed. ``layers_sgemm_gflops`` is a 2048² float32
matrix product on the same thread, the yardstick for "a convolution runs at half
matrix-product speed".

The process runs at the ISA torch picks for this CPU and, on an AVX-512 CPU, again in a child
restricted to AVX2 kernels (``ATEN_CPU_CAPABILITY=avx2``, ``ONEDNN_MAX_CPU_ISA=AVX2``). The
restricted rows show the AVX2 code paths, not an AVX2-only CPU: caches, clocks and memory stay
this machine's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.common import median_seconds, row, tool_env

BATCH = 256
REPEAT = int(os.environ.get("BENCH_LAYERS_REPEAT", "20"))
AVX2_ONLY = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
# name: (in channels, out channels, input size, kernel, input needs a gradient)
LAYERS = {
    "conv1": (1, 10, 36, 9, False),
    "conv1_two_columns": (1, 20, 36, 9, False),
    "conv2": (10, 20, 14, 5, True),
}


def im2col_conv(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``F.conv2d`` (stride 1, no padding) as unfold + matrix product."""
    out_channels, _, kernel, _ = weight.shape
    size = x.shape[-1] - kernel + 1
    columns = F.unfold(x, kernel)  # [B, C*k*k, L]
    y = weight.flatten(1) @ columns + bias[:, None]
    return y.view(x.shape[0], out_channels, size, size)


class BatchAsChannels(torch.autograd.Function):
    """``F.conv2d`` (stride 1, no padding) whose weight gradient is itself one forward
    convolution: the image batch as input channels, the output gradient's batch as the
    kernel's, ``conv2d(x^T, grad^T)^T`` (``^T``: batch and channel dimensions swapped)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        return F.conv2d(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor, Tensor]:
        x, weight = ctx.saved_tensors
        grad_x = (torch.nn.grad.conv2d_input(x.shape, weight, grad)
                  if ctx.needs_input_grad[0] else None)
        grad_weight = F.conv2d(x.transpose(0, 1).contiguous(),
                               grad.transpose(0, 1).contiguous()).transpose(0, 1)
        return grad_x, grad_weight, grad.sum((0, 2, 3))


FORMS: dict[str, tuple[Callable[[Tensor, Tensor, Tensor], Tensor], bool]] = {
    "onednn_channels_last": (F.conv2d, True),
    "onednn_contiguous": (F.conv2d, False),
    "im2col": (im2col_conv, False),
    "weight_grad_as_conv": (BatchAsChannels.apply, False),
}


def median_ms(function: Callable[[], Any]) -> float:
    """Median wall ms of ``REPEAT`` calls, after three untimed ones (oneDNN picks its kernels
    and the allocator its blocks on the first)."""
    for _ in range(3):
        function()
    return 1000 * median_seconds(function, REPEAT)


def gradients(form: Callable[[Tensor, Tensor, Tensor], Tensor], x: Tensor, weight: Tensor,
              bias: Tensor, grad: Tensor) -> list[Tensor]:
    leaves = [t.detach().requires_grad_(t.requires_grad) for t in (x, weight, bias)]
    out = form(*leaves)
    out.backward(grad)
    return [out.detach(), *(t.grad for t in leaves if t.requires_grad)]


def measure_layer(shape: tuple[int, int, int, int, bool]) -> dict[str, dict[str, float]]:
    cin, cout, size, kernel, input_grad = shape
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, cin, size, size, generator=generator)
    weight = torch.randn(cout, cin, kernel, kernel, generator=generator) / kernel
    bias = torch.randn(cout, generator=generator)
    grad = torch.randn(BATCH, cout, size - kernel + 1, size - kernel + 1, generator=generator)
    expected = gradients(F.conv2d, x.requires_grad_(input_grad), weight.requires_grad_(),
                         bias.requires_grad_(), grad)
    out: dict[str, dict[str, float]] = {}
    for name, (form, channels_last) in FORMS.items():
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        xf = x.detach().contiguous(memory_format=fmt).requires_grad_(input_grad)
        gf = grad.contiguous(memory_format=fmt)
        got = gradients(form, xf, weight, bias, gf)
        error = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(got, expected,
                                                                             strict=True))
        if error > 1e-4:
            raise AssertionError(f"{name} differs from F.conv2d by {error:.2e} (relative)")

        def forward(form=form, xf=xf) -> None:
            with torch.no_grad():
                form(xf, weight, bias)

        def step(form=form, xf=xf, gf=gf) -> None:
            form(xf, weight, bias).backward(gf)
            weight.grad = bias.grad = xf.grad = None

        out[name] = {"forward_ms": median_ms(forward), "forward_backward_ms": median_ms(step),
                     "max_relative_error": error}
    return out


def child() -> None:
    torch.set_num_threads(1)
    a = torch.randn(2048, 2048)
    sgemm = 2 * 2048**3 / median_ms(lambda: a @ a) / 1e6
    layers = {name: measure_layer(shape) for name, shape in LAYERS.items()}
    print(json.dumps({"isa": torch.backends.cpu.get_cpu_capability(), "sgemm_gflops": sgemm,
                      "layers": layers}))


def measured(env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "benchmarks.bench_layers", "--child"], env=env,
                          capture_output=True, text=True, timeout=1800, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run() -> list[dict[str, Any]]:
    env = tool_env()
    runs = [measured(env)]
    if runs[0]["isa"].startswith("AVX512"):
        runs.append(measured({**env, **AVX2_ONLY}))
    rows = []
    for result in runs:
        isa = result["isa"]
        restricted = isa != runs[0]["isa"]
        extra = {"isa": isa, "restricted_to_avx2_on_this_cpu": restricted, "threads": 1}
        rows.append(row(f"layers_sgemm_gflops_{isa}", result["sgemm_gflops"], "GFLOP/s",
                        **extra))
        for layer, forms in result["layers"].items():
            for form, times in forms.items():
                for key in ("forward_ms", "forward_backward_ms"):
                    rows.append(row(f"layers_{layer}_{form}_{key.removesuffix('_ms')}_{isa}",
                                    times[key], "ms", layer=layer, form=form, **extra))
    return rows


if __name__ == "__main__" and sys.argv[1:] == ["--child"]:
    child()
