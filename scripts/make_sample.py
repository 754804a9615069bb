"""Cut the class-balanced sample in data/sample/fashion-mnist/ from the full Fashion-MNIST files.

The first N images of each class, in file order, in the original IDX gzip format. Rerunning it
on the same source files gives the same payloads (the gzip header carries no timestamp).

    python scripts/make_sample.py /usr/share/datasets/fashion-mnist data/sample/fashion-mnist
"""

from __future__ import annotations

import argparse
import gzip
import struct
from pathlib import Path

import numpy as np

from multitask.data.idx import read_idx_pair


def write_idx_gz(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0,
                                                filename="") as handle:
        handle.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def take_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    picks = [np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--train-per-class", type=int, default=400)
    parser.add_argument("--test-per-class", type=int, default=100)
    args = parser.parse_args()
    args.dest.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", args.train_per_class), ("t10k", args.test_per_class)):
        images, labels = read_idx_pair(args.source / f"{split}-images-idx3-ubyte.gz",
                                       args.source / f"{split}-labels-idx1-ubyte.gz")
        keep = take_per_class(labels, per_class)
        write_idx_gz(args.dest / f"{split}-images-idx3-ubyte.gz", images[keep])
        write_idx_gz(args.dest / f"{split}-labels-idx1-ubyte.gz", labels[keep])


if __name__ == "__main__":
    main()
