"""Building the full MultiFashion composites (140,000 images); target: at most 5 s on 2 cores."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, ensure_raw_data, median_seconds, row
from multitask.config import load_params
from multitask.data import processed
from multitask.data.preprocess import build_dataset
from multitask.layout import Layout


def run() -> list[dict[str, Any]]:
    ensure_raw_data()
    params = load_params(ROOT / "params.yaml")
    built: dict[str, Any] = {}

    def build() -> None:
        built["arrays"], built["meta"] = build_dataset(params.data, Layout(ROOT))

    build_s = median_seconds(build)
    with tempfile.TemporaryDirectory() as tmp:
        write_s = median_seconds(lambda: processed.write(Path(tmp) / "processed",
                                                         built["arrays"], built["meta"]))
    count = sum(built["meta"]["splits"].values())
    return [
        row(f"build {count} MultiFashion composites (read IDX + compose)", build_s, "s", 5.0),
        row("write processed arrays + meta.json (atomic folder swap)", write_s, "s"),
    ]
