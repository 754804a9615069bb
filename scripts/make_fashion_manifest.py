"""Write a heterogeneous manifest data set (PNG files + manifest.csv) from Fashion-MNIST.

Each image is a 64x64 grey canvas (``--canvas``) with one Fashion-MNIST item on it, scaled
to a random side between a quarter and three quarters of the canvas and placed at a random
position wholly inside it. Three tasks, one per kind, one column each in ``manifest.csv``:

- ``category`` (multiclass): what the item is, Fashion-MNIST's class name ("Sneaker", ...);
- ``on_left`` (binary, ``yes``/``no``): whether the item's centre lies in the left half of the
  canvas -- a yes/no attribute of the picture that its category says nothing about;
- ``height_px`` (regression, pixels): the item's height as rendered, measured on the written
  image: the number of rows between its first and last row holding a pixel brighter than
  ``INK`` (10% of white). It depends on the random scale and on the item's own shape
  (trousers are tall, sandals flat), so it takes both the category and the size to predict.

The rows carry no ``split`` column: the pipeline splits them (``data.val_fraction``,
``data.test_fraction``, stratified on ``category``). The items are drawn without replacement
from the source's training file; the same ``--seed`` and source give the same files, byte for
byte. Use it with ``data: {dataset: manifest, manifest: <out>/manifest.csv, channels: 1,
image_size: 64, tasks: {category: {kind: multiclass}, on_left: {kind: binary, positive:
'yes'}, height_px: {kind: regression, unit: px}}}``.

    python scripts/make_fashion_manifest.py --out data/fashion-manifest --count 6000

``--archive`` also packs the folder into ``<out>.tar.gz``, byte for byte the same for the same
files (sorted members, no owners, times or gzip timestamp), and prints its SHA-256: listed as
the source ``manifest`` in ``data/sources.yaml`` (a folder holding it among the mirrors, the
digest under ``archive_sha256``), the download stage verifies and unpacks it into
``data/raw/manifest/<out's name>/``, so DVC sees every image through that digest.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from multitask.data.datasets import FASHION_CLASSES
from multitask.data.idx import read_split

DEBIAN = Path("/usr/share/datasets/fashion-mnist")
ITEM = 28  # Fashion-MNIST's side
INK = 26  # a pixel brighter than this (of 255) belongs to the item
COLUMNS = ("image", "category", "on_left", "height_px")


def render(item: np.ndarray, canvas: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """``item`` scaled to a random side in [canvas/4, 3 canvas/4] and placed at random on a
    black ``canvas`` square; whether its centre lies in the left half."""
    side = int(rng.integers(canvas // 4, 3 * canvas // 4 + 1))
    left = int(rng.integers(0, canvas - side + 1))
    top = int(rng.integers(0, canvas - side + 1))
    scaled = Image.fromarray(item).resize((side, side), Image.Resampling.BILINEAR)
    picture = np.zeros((canvas, canvas), dtype=np.uint8)
    picture[top:top + side, left:left + side] = np.asarray(scaled)
    return picture, left + side / 2 < canvas / 2


def measured_height(picture: np.ndarray) -> int:
    """Rows from the first to the last holding a pixel brighter than ``INK`` (0 if none)."""
    rows = np.flatnonzero((picture > INK).any(axis=1))
    return int(rows[-1] - rows[0] + 1) if rows.size else 0


def make_manifest(source: Path, out: Path, count: int, canvas: int = 64, seed: int = 0) -> Path:
    """Write ``count`` PNG files under ``out/images`` and ``out/manifest.csv``; return the
    manifest's path."""
    images, labels = read_split(source, "train")
    if not 0 < count <= len(images):
        raise ValueError(f"--count {count}: {source} has {len(images)} training images")
    if canvas < 2 * ITEM:
        raise ValueError(f"--canvas {canvas}: at least {2 * ITEM}, so that items shrink and grow")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {out}: not empty; remove it or name another folder (old "
                         "images would mix with the new)")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(images), size=count, replace=False))
    (out / "images").mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for number, index in enumerate(chosen):
            picture, on_left = render(images[index], canvas, rng)
            name = f"images/{number:06d}.png"
            Image.fromarray(picture).save(out / name)
            writer.writerow((name, FASHION_CLASSES[labels[index]], "yes" if on_left else "no",
                             measured_height(picture)))
    return manifest


def pack(folder: Path) -> Path:
    """``folder``'s content as ``<folder>.tar.gz`` (``manifest.csv`` at its top), reproducible."""
    archive = folder.with_name(folder.name + ".tar.gz")

    def plain(member: tarfile.TarInfo) -> tarfile.TarInfo:
        member.uid = member.gid = 0
        member.uname = member.gname = ""
        member.mtime = 0
        member.mode = 0o755 if member.isdir() else 0o644
        return member

    with open(archive, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0,
                                                   filename="") as zipped, \
            tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as packed:
        for path in sorted(folder.rglob("*")):
            packed.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False,
                       filter=plain)
    return archive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEBIAN,
                        help=f"folder of the Fashion-MNIST IDX files (default {DEBIAN})")
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder (manifest.csv and images/)")
    parser.add_argument("--count", type=int, default=6000, help="images (default 6000)")
    parser.add_argument("--canvas", type=int, default=64, help="canvas side (default 64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--archive", action="store_true",
                        help="also write <out>.tar.gz and print its SHA-256")
    args = parser.parse_args()
    print(make_manifest(args.source, args.out, args.count, args.canvas, args.seed))
    if args.archive:
        archive = pack(args.out)
        print(archive, hashlib.sha256(archive.read_bytes()).hexdigest())


if __name__ == "__main__":
    main()
