"""benchmarks/bench_validation.py puts the raw data in place first, as bench_data does."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # benchmarks/ is a package of the repository, not installed
    sys.path.insert(0, str(ROOT))

from benchmarks import bench_validation  # noqa: E402


class Downloaded(Exception):
    """Raised by the stand-in for ``multitask download``."""


def test_the_raw_data_is_downloaded_before_it_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    def download() -> None:
        raise Downloaded

    monkeypatch.setattr(bench_validation, "ensure_raw_data", download, raising=False)
    monkeypatch.setattr(bench_validation, "load_source",
                        lambda folder: pytest.fail(f"read {folder} before downloading"))
    monkeypatch.setattr(bench_validation.subprocess, "run", lambda *a, **k: None)
    with pytest.raises(Downloaded):
        bench_validation.run()
