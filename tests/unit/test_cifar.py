"""The CIFAR-10 reader on small archives in the real python-version format."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from multitask.data import cifar
from multitask.data.cifar import BATCH_DIR, SPLIT_BATCHES, read_cifar10

PER_BATCH = 4


def _batch(seed: int, count: int = PER_BATCH) -> dict[bytes, Any]:
    """A batch as the real files hold it (keys are bytes once unpickled with encoding=bytes)."""
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": f"batch {seed}".encode(),
        b"labels": [int(x) for x in rng.integers(0, 10, size=count)],
        b"data": rng.integers(0, 256, size=(count, 3072), dtype=np.uint8),
        b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(count)],
    }


def _pickle(batch: Any) -> bytes:
    # Protocol 2 and numpy's pre-2.0 module name, as in the published archive.
    raw = pickle.dumps(batch, protocol=2)
    return raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def _write_archive(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, payload in members.items():
            info = tarfile.TarInfo(f"{BATCH_DIR}/{name}")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return path


def _members(**overrides: Any) -> dict[str, bytes]:
    names = [*SPLIT_BATCHES["train"], *SPLIT_BATCHES["test"]]
    members = {name: _pickle(_batch(seed)) for seed, name in enumerate(names)}
    members["batches.meta"] = _pickle({b"label_names": [b"airplane"] * 10})
    for name, batch in overrides.items():
        if batch is None:
            del members[name]
        else:
            members[name] = batch if isinstance(batch, bytes) else _pickle(batch)
    return members


def test_reads_both_splits_channels_last(tmp_path: Path) -> None:
    splits = read_cifar10(_write_archive(tmp_path / "cifar.tar.gz", _members()))
    train_images, train_labels = splits["train"]
    test_images, test_labels = splits["test"]
    assert train_images.shape == (5 * PER_BATCH, 32, 32, 3)
    assert test_images.shape == (PER_BATCH, 32, 32, 3)
    assert train_images.dtype == test_images.dtype == train_labels.dtype == np.uint8
    # Batches in order 1..5; within a row, the red, green and blue planes one after the other.
    second = _batch(seed=1)
    np.testing.assert_array_equal(train_labels[PER_BATCH:2 * PER_BATCH], second[b"labels"])
    row = second[b"data"][0]
    image = train_images[PER_BATCH]
    assert image[0, 0].tolist() == [row[0], row[1024], row[2048]]
    assert image[2, 5, 1] == row[1024 + 2 * 32 + 5]
    np.testing.assert_array_equal(test_labels, _batch(seed=5)[b"labels"])


def test_missing_batch_is_named(tmp_path: Path) -> None:
    path = _write_archive(tmp_path / "cifar.tar.gz", _members(data_batch_3=None))
    with pytest.raises(ValueError, match=r"missing cifar-10-batches-py/data_batch_3 in the "
                                         r"archive"):
        read_cifar10(path)


@pytest.mark.parametrize(("member", "key", "corrupt", "message"), [
    ("data_batch_2", b"data", lambda data: data[:, :1024],
     r"data_batch_2: data must be uint8 of shape \(N, 3072\), got uint8 \(4, 1024\)"),
    ("test_batch", b"labels", lambda labels: labels[:-1],
     r"test_batch: expected 4 integer labels, got int64 \(3,\)"),
    ("data_batch_4", b"labels", lambda labels: [*labels[:-1], 10],
     r"data_batch_4: labels must lie in 0\.\.9, found \d\.\.10"),
])
def test_a_malformed_batch_is_named(tmp_path: Path, member: str, key: bytes,
                                    corrupt: Callable[[Any], Any], message: str) -> None:
    bad = _batch(seed=0)
    bad[key] = corrupt(bad[key])
    path = _write_archive(tmp_path / "cifar.tar.gz", _members(**{member: bad}))
    with pytest.raises(ValueError, match=message):
        read_cifar10(path)


def test_truncated_archive_is_rejected(tmp_path: Path) -> None:
    path = _write_archive(tmp_path / "cifar.tar.gz", _members())
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)
    with pytest.raises(ValueError, match=r"cifar\.tar\.gz: corrupt or not a tar\.gz archive"):
        read_cifar10(path)


def test_a_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    class Exploit:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return (os.system, ("touch pwned",))

    path = _write_archive(tmp_path / "cifar.tar.gz",
                          _members(data_batch_1=pickle.dumps({b"data": Exploit()}, protocol=2)))
    with pytest.raises(ValueError, match=r"data_batch_1: not a CIFAR-10 batch .*refusing to "
                                         r"load (posix|os)\.system"):
        read_cifar10(path)


def test_an_oversized_member_is_refused_before_it_is_read(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write_archive(tmp_path / "cifar.tar.gz", _members())
    monkeypatch.setattr(cifar, "MAX_BATCH_BYTES", 100)  # the test batches are a few KB
    with pytest.raises(ValueError, match=r"data_batch_1 is [\d,]+ bytes, more than a CIFAR-10 "
                                         r"batch can be"):
        read_cifar10(path)
