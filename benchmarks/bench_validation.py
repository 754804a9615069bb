"""How long the validate stage takes on the full Fashion-MNIST (part of every ``make repro``).

Reads the raw files where ``params.yaml`` puts them (``multitask download`` first, as the other
data benchmarks do: a no-op when they are there and verified). The
stage's wall time is dominated by importing Great Expectations (about 2-3 s on 2 cores), which
the first row below measures in a fresh interpreter.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, ensure_raw_data
from multitask.config import load_params
from multitask.data.validation import load_source, validate
from multitask.layout import Layout

STAGE_TARGET_S = 10.0  # the whole stage on 70,000 images, data docs included


def _seconds(function: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def run() -> list[dict[str, Any]]:
    ensure_raw_data()
    params = load_params(ROOT / "params.yaml")
    folder = Layout(ROOT).source_dir("fashion_mnist")
    import_s, _ = _seconds(lambda: subprocess.run(
        [sys.executable, "-c", "import great_expectations"], check=True))
    tables_s, tables = _seconds(lambda: load_source(folder))
    with tempfile.TemporaryDirectory() as docs:
        validate_s, summary = _seconds(lambda: validate(
            {"fashion_mnist": tables}, params.validate_, docs_dir=Path(docs)))
    images = sum(len(t) for t in tables.values())
    total = tables_s + validate_s
    return [
        {"name": "great_expectations import (fresh interpreter)", "value": round(import_s, 2),
         "unit": "s"},
        {"name": f"read + per-image table, {images} images", "value": round(tables_s, 2),
         "unit": "s"},
        {"name": "import + expectation suites + data docs", "value": round(validate_s, 2),
         "unit": "s", "passed": summary["success"]},
        {"name": "validate stage, full Fashion-MNIST", "value": round(total, 2), "unit": "s",
         "target": f"< {STAGE_TARGET_S} s", "ok": total < STAGE_TARGET_S},
    ]
