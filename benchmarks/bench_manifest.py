"""A manifest data set at scale: preprocessing images/s and peak memory, then training
throughput with 3-channel input from the memory-mapped processed data, against the same data
loaded whole.

It generates N PNG images of 64x64x3 (a colour class, a striped yes/no and a brightness value
per image: a multiclass, a binary and a regression task) and their manifest, then runs
``build_manifest``, two trainings (LeNet HPS, equal weighting, batch 256; by default 2 epochs, CPU),
``MULTITASK_MEMMAP=1`` and ``=0`` (:mod:`multitask.training.data`), each followed by a pass of
shuffled batches with no network (the data path's own speed), each step in a fresh process.
Each process measures itself: peak anonymous memory (``RssAnon`` of ``/proc/self/status``,
sampled every 10 ms: the process's own memory; file pages of a memory map are not in it and
the kernel can reclaim them), that memory right after the imports, and the peak resident set
(``VmHWM``, which also counts file pages mapped while they stay resident: preprocess writes
through a map).

    python -m benchmarks.run manifest                      # N = 2,000
    BENCH_MANIFEST_IMAGES=200000 BENCH_MANIFEST_DIR=/a/disk python -m benchmarks.run manifest

``BENCH_MANIFEST_EPOCHS`` (2) sets the training epochs, ``BENCH_MANIFEST_FRACTION`` (1.0) the
share of the training split they take (a seeded subset spread over the whole file);
``BENCH_MANIFEST_DEVICE=cuda`` trains and reads batches on the GPU (bf16 autocast as the
trainer does; memory-mapped batches come through pinned memory) instead of the CPU.

N = 200,000 is ~2.3 GiB of processed images and needs ~5 GiB of disk in
``BENCH_MANIFEST_DIR`` (default: a temporary folder, removed afterwards; a given folder is
kept, and its images are reused by the next run with the same N). The images the preprocess
just wrote are still in the page cache when training starts: the training rows measure the
gather from a cached map, not a cold disk.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks.common import ROOT, row
from multitask.device import cpu_model

DEFAULT_IMAGES = 2_000
SIZE = 64
EPOCHS = int(os.environ.get("BENCH_MANIFEST_EPOCHS", 2))
# training on a seeded subset of this share of the training split (the same rows every epoch,
# spread over the whole file): the large run's throughput without hours of epochs
FRACTION = float(os.environ.get("BENCH_MANIFEST_FRACTION", 1.0))
DEVICE = os.environ.get("BENCH_MANIFEST_DEVICE", "cpu")  # cuda: the GPU machine's rows
BATCH = 256
COLOURS = np.array([[200, 40, 40], [40, 160, 60], [50, 70, 200], [190, 170, 40]], np.int16)
TASKS = {"colour": {"kind": "multiclass"}, "striped": {"kind": "binary", "positive": "yes"},
         "brightness": {"kind": "regression", "unit": "grey level"}}
MIB = 2**20


# ----------------------------------------------------------------------------- memory
def _status() -> dict[str, int]:
    """``/proc/self/status`` memory fields in bytes (empty where there is no procfs)."""
    fields: dict[str, int] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                key, _, value = line.partition(":")
                if value.strip().endswith("kB"):
                    fields[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return fields


class MemoryPeaks:
    """While open, a thread samples this process's anonymous memory every 10 ms; on closing,
    ``anon_peak``, ``anon_start``, ``rss_peak`` (VmHWM) and ``rss_start`` are in bytes."""

    def __enter__(self) -> MemoryPeaks:
        status = _status()
        self.anon_start = self.anon_peak = status.get("RssAnon", 0)
        self.rss_start = status.get("VmRSS", 0)  # libraries' pages count too
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.anon_peak = max(self.anon_peak, _status().get("RssAnon", 0))

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        status = _status()
        self.anon_peak = max(self.anon_peak, status.get("RssAnon", 0))
        self.rss_peak = status.get("VmHWM", 0)

    def record(self) -> dict[str, float]:
        return {"anon_peak_mib": self.anon_peak / MIB, "anon_start_mib": self.anon_start / MIB,
                "rss_peak_mib": self.rss_peak / MIB, "rss_start_mib": self.rss_start / MIB}


# ------------------------------------------------------------------------ the data set
def generate(folder: Path, count: int) -> Path:
    """``count`` 64x64x3 PNG files and ``manifest.csv`` in ``folder`` (reused when there):
    image i is colour i mod 4 with seeded noise, striped (dark every 4th row) with
    probability 1/2, brightness its mean grey level."""
    manifest = folder / "manifest.csv"
    if manifest.is_file() and sum(1 for _ in manifest.open()) == count + 1:
        return manifest
    rng = np.random.default_rng(0)
    lines = ["image,colour,striped,brightness"]
    for start in range(0, count, 1000):
        chunk = min(1000, count - start)
        (folder / "images" / f"{start // 1000:04d}").mkdir(parents=True, exist_ok=True)
        noise = rng.integers(-40, 41, (chunk, SIZE, SIZE, 3), dtype=np.int16)
        striped = rng.random(chunk) < 0.5
        for offset in range(chunk):
            index = start + offset
            pixels = COLOURS[index % 4] + noise[offset]
            if striped[offset]:
                pixels[::4] //= 3
            image = np.clip(pixels, 0, 255).astype(np.uint8)
            name = f"images/{start // 1000:04d}/{index:06d}.png"
            Image.fromarray(image).save(folder / name, compress_level=1)
            grey = float(image.mean())
            lines.append(f"{name},{index % 4},{'yes' if striped[offset] else 'no'},{grey:.2f}")
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


# --------------------------------------------------------------- the measured processes
def preprocess(folder: Path) -> dict[str, Any]:
    """``build_manifest`` of ``folder``'s manifest into ``folder/data/processed``."""
    from multitask.config import DataConfig
    from multitask.data.manifest import build_manifest
    from multitask.layout import Layout

    config = DataConfig(dataset="manifest", manifest=str(folder / "manifest.csv"),
                        tasks=TASKS, channels=3, image_size=SIZE)
    with MemoryPeaks() as peaks:
        start = time.perf_counter()
        meta = build_manifest(config, Layout(folder))
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "images": sum(meta["splits"].values()), **peaks.record()}


def train(folder: Path) -> dict[str, Any]:
    """``EPOCHS`` of LeNet HPS, equal weighting, on ``DEVICE``; ``MULTITASK_MEMMAP`` decides
    whether the images are mapped or loaded whole."""
    from multitask import keys
    from multitask.config import ModelConfig, TrainConfig, load_params
    from multitask.data import processed
    from multitask.layout import Layout
    from multitask.training import session
    from multitask.training.data import ProcessedData
    from multitask.weighting import build_weighting

    params = load_params(ROOT / "params.yaml")
    with MemoryPeaks() as peaks:
        data = ProcessedData(Layout(folder).processed_dir, torch.device(DEVICE),
                             splits=("train", "val"))
        tasks = processed.tasks(data.meta)
        fitted = session.fit(params, data, tasks, build_weighting("equal", len(tasks)),
                             model=ModelConfig(),
                             train=TrainConfig(epochs=EPOCHS, batch_size=BATCH,
                                               diagnostics_every=0, data_fraction=FRACTION),
                             progress=False)
    rates = [record[keys.TRAIN_IMAGES_PER_S] for record in fitted.history]
    return {"mapped": data.mapped, "images_per_s": rates, "train_images": len(data.splits["train"]),
            **peaks.record()}


def read(folder: Path) -> dict[str, Any]:
    """One shuffled pass of batches of the training split, normalised, no network: the data
    path's ceiling (``MULTITASK_MEMMAP`` decides as for :func:`train`)."""
    from multitask.layout import Layout
    from multitask.training.data import ProcessedData

    with MemoryPeaks() as peaks:
        data = ProcessedData(Layout(folder).processed_dir, torch.device(DEVICE),
                             splits=("train",))
        start = time.perf_counter()
        for rows in data.batch_rows("train", BATCH, generator=torch.Generator().manual_seed(0)):
            data.take("train", rows)
        seconds = time.perf_counter() - start
    return {"mapped": data.mapped, "images_per_s": len(data.splits["train"]) / seconds,
            **peaks.record()}


def measured(step: str, folder: Path, **env: str) -> dict[str, Any]:
    """``step`` run in a fresh interpreter (its peaks are its own); its JSON answer."""
    done = subprocess.run([sys.executable, "-m", "benchmarks.bench_manifest", step, str(folder)],
                          cwd=ROOT, env={**os.environ, **env}, check=True, capture_output=True,
                          text=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# ------------------------------------------------------------------------------ rows
def rows_for(folder: Path, count: int) -> list[dict[str, Any]]:
    started = time.perf_counter()
    generate(folder, count)
    generate_s = time.perf_counter() - started
    machine = {"cpu_model": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
               "threads": torch.get_num_threads(), "images": count, "device": DEVICE}
    where = "CPU" if DEVICE == "cpu" else torch.cuda.get_device_name(0)
    made = measured("preprocess", folder)
    size = (folder / "data" / "processed" / "train_images.npy").stat().st_size / MIB
    out = [
        row(f"manifest preprocess, {count} PNG 64x64x3", made["images"] / made["seconds"],
            "images/s", seconds=round(made["seconds"], 2), generate_s=round(generate_s, 1),
            **machine),
        row("manifest preprocess, peak anonymous memory", made["anon_peak_mib"], "MiB",
            after_imports_mib=round(made["anon_start_mib"], 1), **machine),
        row("manifest preprocess, peak resident set (VmHWM, with mapped pages)",
            made["rss_peak_mib"], "MiB", after_imports_mib=round(made["rss_start_mib"], 1),
            **machine),
    ]
    for mapped, label in (("1", "memory-mapped"), ("0", "loaded whole")):
        trained = measured("train", folder, MULTITASK_MEMMAP=mapped)
        batches = measured("read", folder, MULTITASK_MEMMAP=mapped)
        extra = {"train_images": trained["train_images"], "train_images_mib": round(size, 1),
                 **machine}
        out += [
            row(f"train images/s, {where}, {label}", trained["images_per_s"][-1], "images/s",
                first_epoch=round(trained["images_per_s"][0], 1),
                note=f"LeNet HPS, equal, batch {BATCH}, epoch {EPOCHS} of {EPOCHS}"
                + (f", {FRACTION:g} of the training split" if FRACTION < 1 else ""), **extra),
            row(f"shuffled batches read and normalised/s (no network), {where}, {label}",
                batches["images_per_s"], "images/s", rss_peak_mib=round(batches["rss_peak_mib"], 1),
                **extra),
            row(f"train peak anonymous memory, {label}", trained["anon_peak_mib"], "MiB",
                after_imports_mib=round(trained["anon_start_mib"], 1), **extra),
            row(f"train peak resident set (VmHWM), {label}", trained["rss_peak_mib"], "MiB",
                after_imports_mib=round(trained["rss_start_mib"], 1), **extra),
        ]
    return out


def run() -> list[dict[str, Any]]:
    count = int(os.environ.get("BENCH_MANIFEST_IMAGES", DEFAULT_IMAGES))
    where = os.environ.get("BENCH_MANIFEST_DIR")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        return rows_for(Path(where), count)
    with tempfile.TemporaryDirectory() as tmp:
        return rows_for(Path(tmp), count)


if __name__ == "__main__":  # one measured step, in its own process: see measured()
    step, folder = sys.argv[1], Path(sys.argv[2])
    print(json.dumps({"preprocess": preprocess, "train": train, "read": read}[step](folder)))
