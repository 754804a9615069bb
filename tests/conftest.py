"""Fixtures shared by every test: small real data files, an isolated user cache and a throw-away
PostgreSQL server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.util
import os
import shutil
import signal
import struct
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from multitask.data.idx import SPLIT_FILES
from multitask.layout import Layout

WORKER_THREADS = pytest.StashKey[int]()


def pytest_configure(config: pytest.Config) -> None:
    """Under ``pytest -n N`` each worker takes 1/N of the CPUs this process may use: torch's
    threads in the worker and, through ``$MULTITASK_THREADS``, in the stages its tests start, so
    two workers on two cores run two threads, not four that take turns. Your own
    ``MULTITASK_THREADS`` wins."""
    answer_ctrl_c()
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not workers.isdigit() or "MULTITASK_THREADS" in os.environ:
        return
    from multitask.cpus import available_cpus

    share = max(1, available_cpus() // int(workers))
    os.environ["MULTITASK_THREADS"] = str(share)
    config.stash[WORKER_THREADS] = share
    from multitask.device import limit_threads

    limit_threads()


def answer_ctrl_c() -> None:
    """Take Ctrl-C (SIGINT) again when the test run inherited it ignored, as every job a
    non-interactive shell starts in the background does (``make test &``, ``nohup``). Ignored,
    it would stay ignored in every command the tests start, and the tests that press Ctrl-C at
    a command, as a terminal does to its foreground job, would see it ignored."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def worker_threads(pytestconfig: pytest.Config) -> int | None:
    """The torch threads tests/conftest.py gave this pytest worker; None when it set none
    (no ``-n``, or your own ``MULTITASK_THREADS``)."""
    return pytestconfig.stash.get(WORKER_THREADS, None)


def idx_bytes(array: np.ndarray) -> bytes:
    """``array`` (uint8) encoded as an IDX payload: magic, big-endian dimensions, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def _write_idx(path: str | Path, array: np.ndarray) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = idx_bytes(array)
    path.write_bytes(gzip.compress(payload, mtime=0) if path.suffix == ".gz" else payload)
    return hashlib.sha256(payload).hexdigest()


@pytest.fixture(autouse=True)
def _isolated_user_cache(tmp_path_factory: pytest.TempPathFactory,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep each test's download verification cache out of the real ``~/.cache``."""
    monkeypatch.setenv("MULTITASK_CACHE_DIR", str(tmp_path_factory.mktemp("user-cache")))


@pytest.fixture
def write_idx() -> Callable[[str | Path, np.ndarray], str]:
    """``write_idx(path, uint8 array) -> payload sha256``; gzip-compressed when path ends .gz."""
    return _write_idx


@pytest.fixture
def idx_dataset() -> Callable[..., dict[str, str]]:
    """``idx_dataset(folder, n_train=40, n_test=20, seed=0) -> {file name: payload sha256}``.

    Writes the four (Fashion-)MNIST files with random 28x28 images and balanced labels 0..9.
    """

    def make(folder: str | Path, n_train: int = 40, n_test: int = 20,
             seed: int = 0) -> dict[str, str]:
        rng = np.random.default_rng(seed)
        digests = {}
        for split, count in (("train", n_train), ("test", n_test)):
            images_name, labels_name = SPLIT_FILES[split]
            images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
            labels = rng.permutation(np.arange(count) % 10).astype(np.uint8)
            digests[images_name] = _write_idx(Path(folder) / images_name, images)
            digests[labels_name] = _write_idx(Path(folder) / labels_name, labels)
        return digests

    return make


ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample" / "fashion-mnist"


@pytest.fixture(scope="session")
def sample_composites(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``sample_composites(train_size, test_size) -> processed folder``: MultiFashion composites
    built from the shipped sample (10% of ``train_size`` become the validation split), once per
    size and session."""
    from multitask.config import DataConfig
    from multitask.data.preprocess import preprocess_data

    built: dict[tuple[int, int], Path] = {}

    def make(train_size: int, test_size: int) -> Path:
        if (train_size, test_size) not in built:
            layout = Layout(tmp_path_factory.mktemp("composites"))
            layout.raw_dir.mkdir(parents=True)
            layout.source_dir("fashion_mnist").symlink_to(SAMPLE)
            config = DataConfig(
                train_size=train_size, test_size=test_size, seed=0)
            preprocess_data(config, layout)
            built[(train_size, test_size)] = layout.processed_dir
        return built[(train_size, test_size)]

    return make


def link_processed(folder: Path, processed: Path) -> Layout:
    """The layout of pipeline folder ``folder``, its processed data a link to ``processed``."""
    layout = Layout(folder)
    layout.processed_dir.parent.mkdir(parents=True, exist_ok=True)
    if not layout.processed_dir.exists():
        layout.processed_dir.symlink_to(processed)
    return layout


@pytest.fixture
def pipeline_folder() -> Callable[[Path, Path], Layout]:
    """``pipeline_folder(folder, processed) -> Layout``: a pipeline folder whose
    ``data/processed`` is the (shared, read-only) ``processed`` folder."""
    return link_processed


def _tracking_server_script() -> ModuleType:
    """scripts/tracking_server.py as a module: the one place PostgreSQL is started from."""
    spec = importlib.util.spec_from_file_location("tracking_server", ROOT / "scripts" /
                                                  "tracking_server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return sys.modules[spec.name]


tracking_server = _tracking_server_script()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throw-away PostgreSQL server on 127.0.0.1 (as user postgres when run as root),
    started by scripts/tracking_server.py's :class:`Postgres`."""
    folder = Path(tempfile.mkdtemp(prefix="multitask-pg-"))
    folder.chmod(0o755)  # user postgres must reach its cluster inside
    postgres = tracking_server.Postgres(folder / "postgres")
    try:
        try:
            port = postgres.start()
        except tracking_server.Unavailable as exc:
            pytest.skip(str(exc))
        yield postgres.url(port, database="postgres")
    finally:
        with contextlib.suppress(tracking_server.ServerError):
            postgres.stop(mode="immediate")
        shutil.rmtree(folder, ignore_errors=True)
