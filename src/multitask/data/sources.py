"""Raw data sources: which ones a data set needs, what their files must hash to, where they land.

A source is ``sources.<name>`` in ``data/sources.yaml`` (beside ``params.yaml``; a dependency of
the download stage, not a param): an ordered list of mirrors and, per file,
either the SHA-256 of its *decompressed payload* (``files``: a gzip file's decompressed bytes,
a ``.tar.gz`` file's tar stream, a plain file itself) or, where no payload digest is published,
the SHA-256 of the file exactly as the mirror serves it (``archive_sha256``). Checking the
payload lets a recompressed copy verify too: Debian's dataset-fashion-mnist recompresses.

Checking a payload means decompressing it (about 0.3 s for the 26 MB Fashion-MNIST training
images), so every verified file is remembered in a small cache keyed on the file's path, size,
inode and modification and change times. A no-op download then costs one ``stat`` per file,
while any rewrite of a file changes its change time and makes it be verified again. The cache
lives outside the raw folder (see :func:`cache_path`) so that the DVC output holds exactly
the original files and its hash does not depend on when they were written.

One module, not several: the ``check`` stage and ``download`` refuse the same sources files
(undefined sources, unlisted files, mirrors inside the raw folder) with the same words.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from multitask.config import (
    ConfigError,
    Params,
    Source,
    input_channels,
    input_size,
    lenet_input_problem,
    load_sources,
    pretrained_file,
)
from multitask.data.cifar import ARCHIVE
from multitask.data.datasets import DATASETS, MANIFEST, SOURCES
from multitask.data.dependencies import (
    STARTING_STAGES,
    folder_of,
    in_words,
    unwatched_stages,
    watched,
)
from multitask.data.idx import SPLIT_FILES
from multitask.data.manifest import read_configured
from multitask.device import check_processes, select_device
from multitask.io import atomic_open, read_json, write_json
from multitask.layout import Layout
from multitask.models.base import encoder_factory
from multitask.models.pretrained import (
    EncoderWeights,
    WeightsError,
    cached_file_problem,
    file_weights,
    fitted_state,
    hub_path,
    imagenet_source,
)

log = logging.getLogger(__name__)

DigestKind = Literal["payload", "archive"]
GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20
_CACHE_VERSION = 1


class ChecksumError(ValueError):
    """A file whose digest is not the one ``data/sources.yaml`` expects (or that cannot be
    read)."""


@dataclass(frozen=True)
class ExpectedFile:
    """One file of a source and the digest it must have."""

    name: str
    sha256: str
    kind: DigestKind  # "payload": of the decompressed bytes; "archive": of the file as served


def expected_files(source: Source) -> list[ExpectedFile]:
    """Every file of ``source``, payload-checked ones first, in the sources file's order."""
    return [ExpectedFile(name, digest, "payload") for name, digest in source.files.items()] + [
        ExpectedFile(name, digest, "archive") for name, digest in source.archive_sha256.items()
    ]


def mirror_folder(mirror: str, root: Path) -> Path | None:
    """The folder a local mirror names (``file://`` stripped, ``~`` expanded, a relative path
    taken from the pipeline folder ``root``, where ``data/sources.yaml`` says it starts);
    None for a URL."""
    if "://" in mirror and not mirror.startswith("file://"):
        return None
    folder = Path(mirror.removeprefix("file://")).expanduser()
    return folder if folder.is_absolute() else root / folder


def required_sources(
    sources: Mapping[str, Source], dataset: str, names: Sequence[str] = (),
    sources_path: str | Path = "data/sources.yaml",
) -> dict[str, Source]:
    """The sources to fetch: ``names`` if given, else those data set ``dataset`` is built from
    (for a manifest: the source ``manifest`` when ``sources`` defines one, else none).

    ``sources`` is the content of ``sources_path`` (:func:`multitask.config.load_sources`).
    """
    needed = list(DATASETS[dataset].sources)
    if dataset == MANIFEST and MANIFEST in sources:  # an archive to fetch (multitask.data.unpack)
        needed = [MANIFEST]
    wanted = list(dict.fromkeys(names)) or needed
    for name in wanted:
        if name not in sources:
            why = "was asked for" if names else f"is needed by data.dataset={dataset}"
            raise ConfigError(
                f"{sources_path}: sources.{name}: not defined, but {name} {why}; add it "
                f"with its mirrors and files (defined: {', '.join(sorted(sources)) or 'none'})"
            )
    return {name: sources[name] for name in wanted}


def refuse_unlisted_files(sources: Mapping[str, Source], sources_path: str | Path) -> None:
    """Each of ``sources`` that a reader of this repository reads lists every file it reads:
    an unlisted one would never be downloaded, and validate would send the user back to
    ``multitask download`` for it."""
    reads = {"idx": [n for pair in SPLIT_FILES.values() for n in pair], "cifar": [ARCHIVE]}
    for name, source in sources.items():
        listed = {*source.files, *source.archive_sha256}
        if name in SOURCES and (missing := [n for n in reads[SOURCES[name].reader]
                                            if n not in listed]):
            raise ConfigError(
                f"{sources_path}: sources.{name}: {', '.join(missing)} not listed, but "
                f"{name} is read from {', '.join(reads[SOURCES[name].reader])}; add each with "
                f"its SHA-256 (listed: {', '.join(sorted(listed))})")


def refuse_mirrors_inside(layout: Layout, sources: Mapping[str, Source],
                          sources_path: str | Path) -> None:
    """A local mirror must not lie in the folder the stage writes (and DVC deletes first)."""
    raw = layout.raw_dir.resolve()
    for name, source in sources.items():
        for mirror in source.mirrors:
            if (folder := mirror_folder(mirror, layout.root)) is None:
                continue
            if (folder := folder.resolve()) == raw or raw in folder.parents:
                raise ValueError(
                    f"{sources_path}: sources.{name}.mirrors: {mirror} lies inside "
                    f"{layout.raw_dir}, the folder the download stage writes; point it "
                    "elsewhere")


CHECKED = "params.yaml and data/sources.yaml passed multitask check\n"


def check(params: Params, layout: Layout) -> None:
    """The ``check`` stage, first in ``dvc.yaml``: stop a bad experiment before DVC touches
    any other stage's outputs.

    DVC deletes a stage's outputs just before running it, so a typo found by ``train`` would
    cost the last good model and reports. ``params`` arrive fully validated (names of data
    sets, architectures, weighting methods and their params included); this adds the sources
    file, the sources the data set needs and the device (``train.device: cuda`` without a
    GPU would fail in baselines, after DVC removed their outputs, as would more
    ``train.processes`` than GPUs, or a LeNet on a manifest's ``image_size`` below 20); for
    ``data.dataset: manifest`` read in place (no ``manifest`` source to download), that the
    manifest reads (its file, columns, split values), with a warning when ``validate`` or
    ``preprocess`` does not depend on it and its images (DVC would not rerun them when a label
    changes); for
    ``model.pretrained: <file>``, that the file is there and holds weights, with a warning when
    ``baselines``, ``tune`` or ``train`` does not depend on it; for ``model.pretrained:
    imagenet``, a warning when the file is not in torch.hub's cache yet, and that a cached one
    is the published file. The output's
    content is the same for every valid input, so the stages depending on it rerun only for
    what they read.
    """
    if problem := lenet_input_problem(params):  # else baselines fails in torch, too late
        raise ConfigError(problem)
    sources = load_sources(layout.sources)
    refuse_unlisted_files(required_sources(sources, params.data.dataset,
                                           sources_path=layout.sources), layout.sources)
    if params.data.dataset == MANIFEST and MANIFEST not in sources:  # else download brings it
        manifest = read_configured(params.data, layout)
        paths = watched(manifest)
        if stages := unwatched_stages(paths, layout):
            log.warning("%s is read where it lies, and no dependency of %s in %s: DVC will not "
                        "rerun them when a label or an image changes. Add %s (the folder "
                        "holding the manifest and its images) to the deps of each",
                        manifest.path, in_words(stages), layout.dvc_yaml,
                        folder_of(paths, layout))
    if params.model.pretrained_kind == "file":  # else baselines finds it wrong, too late
        weights = pretrained_file(params, layout.root)
        check_weights_fit(params, file_weights(weights))  # readable, weights, and they fit
        if stages := unwatched_stages([os.path.abspath(weights)], layout, STARTING_STAGES):
            log.warning("model.pretrained: %s is no dependency of %s in %s: DVC tracks its path "
                        "(a param), not its contents, and will not rerun them when the file "
                        "changes in place. Add it to the deps of each, or give changed weights "
                        "a new file name", weights, in_words(stages), layout.dvc_yaml)
    if params.model.pretrained_kind == "imagenet":  # else found missing or corrupt, too late
        check_imagenet_weights(params.model.backbone)
    check_processes(select_device(params.train.device, params.source), params.train.processes,
                    params.source)
    layout.params_check.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(layout.params_check, "w") as handle:
        handle.write(CHECKED)
    log.info("%s and %s: valid", params.source, layout.sources)


def check_weights_fit(params: Params, weights: EncoderWeights) -> None:
    """Load ``weights`` into a ``model.backbone`` encoder for the data set's images, as the
    stages that start from them will: weights of another backbone or width, or keys that do
    not match, stop here (:class:`WeightsError` naming the keys) rather than in baselines."""
    encoder = encoder_factory(params.model, input_channels(params.data),
                              input_size(params.data), None)()
    fitted_state(encoder, weights)


def check_imagenet_weights(backbone: str) -> None:
    """Warn when ``model.pretrained: imagenet`` weights are not in torch.hub's cache yet, and
    refuse a cached file that is not the published one (its sha256 against the prefix in its
    name): the first stage to start from them downloads or verifies them, and fails offline or
    on a corrupt file after DVC has removed that stage's outputs. Whether a download will work
    is not knowable here."""
    member, url = imagenet_source(backbone)
    path = hub_path(url)
    if path.is_file():
        if (problem := cached_file_problem(path, url)) is not None:
            raise WeightsError(f"model.pretrained: imagenet ({member}): {problem}")
        return
    log.warning("model.pretrained: imagenet: %s (%s) is not in %s yet; baselines will download "
                "it from %s. Offline, download it where there is internet and put it there "
                "under that name (the folder follows TORCH_HOME)", path.name, member,
                path.parent, url)


def file_sha256(path: str | Path, kind: DigestKind) -> str:
    """SHA-256 of the file's bytes (``archive``) or of its payload, gunzipped when it is gzip."""
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as raw:
        compressed = kind == "payload" and raw.read(2) == GZIP_MAGIC
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw) if compressed else raw
        try:
            while chunk := stream.read(_CHUNK):
                digest.update(chunk)
        except (OSError, EOFError, zlib.error) as exc:
            raise ChecksumError(f"{path}: corrupt gzip stream ({exc})") from None
    return digest.hexdigest()


def digest_mismatch(path: str | Path, expected: ExpectedFile) -> str | None:
    """Why ``path`` does not verify against ``expected`` (``None`` when it does)."""
    try:
        actual = file_sha256(path, expected.kind)
    except ChecksumError as exc:
        return str(exc).removeprefix(f"{path}: ")
    if actual != expected.sha256:
        reason = f"{expected.kind} sha256 mismatch (expected {expected.sha256}, got {actual})"
        if expected.name.endswith(".gz"):
            with open(path, "rb") as handle:
                head = handle.read(40)
            if head[:2] != GZIP_MAGIC:  # an error page served as the file, say
                reason += f"; not a gzip file: it starts with {head!r}"
        return reason
    return None


def verify_file(path: str | Path, expected: ExpectedFile) -> None:
    """Raise :class:`ChecksumError` unless ``path`` has the expected digest; cache a success."""
    path = Path(path)
    if is_known_verified(path, expected):
        return
    reason = digest_mismatch(path, expected)
    if reason is not None:
        raise ChecksumError(f"{path}: {reason}; delete it and rerun multitask download")
    remember_verified(path, expected)


# ------------------------------------------------------------------------ verification cache
def cache_path() -> Path:
    """``$MULTITASK_CACHE_DIR``, else ``$XDG_CACHE_HOME/multitask``, else ``~/.cache/multitask``,
    then ``verified.json``."""
    folder = os.environ.get("MULTITASK_CACHE_DIR")
    if not folder:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        folder = str(Path(base) / "multitask")
    return Path(folder) / "verified.json"


def partial_path(expected: ExpectedFile) -> Path:
    """Where an interrupted HTTP download of ``expected`` waits to be resumed.

    In the user cache, not beside the destination: ``dvc repro`` deletes a stage's outputs
    (``data/raw``) before running it, which would throw the partial file away with them. Keyed
    on the expected digest, so only a download of the same file ever resumes from it.
    """
    return cache_path().parent / "partial" / f"{expected.sha256[:16]}-{expected.name}.part"


def _fingerprint(path: Path) -> dict[str, int]:
    stat = path.stat()
    return {"size": stat.st_size, "inode": stat.st_ino,
            "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns}


def _load_cache() -> dict[str, dict[str, object]]:
    path = cache_path()
    if not path.is_file():
        return {}
    try:
        cache = read_json(path)
    except ValueError as exc:  # a broken cache only costs a re-check
        log.warning("%s; ignoring the verification cache", exc)
        return {}
    if not isinstance(cache, dict) or cache.get("version") != _CACHE_VERSION:
        return {}
    return dict(cache.get("files", {}))


def is_known_verified(path: Path, expected: ExpectedFile) -> bool:
    """True when ``path`` was verified against ``expected`` and has not changed since."""
    entry = _load_cache().get(str(path.resolve()))
    if entry is None or not path.is_file():
        return False
    return entry == {**_fingerprint(path), "sha256": expected.sha256, "kind": expected.kind}


def remember_verified(path: Path, expected: ExpectedFile) -> None:
    """Record that ``path``, as it is now, has the digest ``expected`` names."""
    files = _load_cache()
    files[str(path.resolve())] = {**_fingerprint(path), "sha256": expected.sha256,
                                  "kind": expected.kind}
    try:
        write_json(cache_path(), {"version": _CACHE_VERSION, "files": files})
    except OSError as exc:  # an unwritable cache slows the next run down, nothing more
        log.warning("%s: cannot write the verification cache (%s); the next download will "
                    "verify %s again", cache_path(), exc, path)
