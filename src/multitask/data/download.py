"""The ``download`` stage: fetch every file of the needed sources and verify it.

Each file is taken from the first mirror of its source that has it with the right digest
(:mod:`multitask.data.sources`): a local folder (a relative one from the pipeline folder) is
copied, an HTTP(S) URL is streamed with a progress bar into a ``.part`` file in the user cache
(:func:`~multitask.data.sources.partial_path`, where ``dvc repro`` does not delete it), resumed
with a Range request after a dropped connection (or in the next run, when this one gave up in
transit), retried with exponential back-off, verified, and only then renamed into place. A
file that does not verify is deleted and the next mirror is tried, so the raw folder only ever
holds verified files. Files already there and verified are not fetched again.

One module, not several: the stage's loop over sources and the transfer of one file (resume,
retries, verification) share the mirrors, the HTTP policy and the advice the stage ends with.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

import requests
import urllib3
from tqdm import tqdm

from multitask import __version__
from multitask.config import Params, Source, load_sources
from multitask.data.datasets import MANIFEST, SOURCES
from multitask.data.sources import (
    ExpectedFile,
    digest_mismatch,
    expected_files,
    is_known_verified,
    mirror_folder,
    partial_path,
    refuse_mirrors_inside,
    refuse_unlisted_files,
    remember_verified,
    required_sources,
)
from multitask.data.unpack import unpack_all
from multitask.io import atomic_path
from multitask.layout import Layout

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class HttpPolicy:
    """How hard to try one HTTP mirror before moving on to the next."""

    attempts: int = 5
    backoff_s: float = 1.0  # wait backoff_s, 2 * backoff_s, 4 * backoff_s ... between attempts
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    chunk_bytes: int = 1 << 16  # what a stall or a cut connection can lose: kept small
    max_bytes: int = 1 << 31  # per file: no source of these data sets comes near 2 GiB
    max_seconds: float = 3600.0  # per file, all attempts and resumes together


class MirrorError(Exception):
    """This mirror cannot provide this file; the message says why."""


class TransitError(MirrorError):
    """The transfer stopped on the way (time limit, retries used up): the partial file is
    kept, for the next run to resume."""


class UnreachableMirror(TransitError):
    """Every attempt failed in transit: the other files will not fare better this run."""


class _Retry(Exception):
    """A transient failure (dropped connection, timeout, 5xx): try the same mirror again."""


def _reason(exc: BaseException) -> str:
    """The innermost useful message of a requests/urllib3 error chain."""
    while True:
        inner = getattr(exc, "reason", None)
        if isinstance(inner, BaseException):
            exc = inner
        elif exc.args and isinstance(exc.args[0], BaseException):
            exc = exc.args[0]
        else:
            return f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------------------- mirrors
def _from_folder(folder: Path, expected: ExpectedFile, dest: Path) -> None:
    """Copy ``folder/<name>`` to ``dest`` if it verifies."""
    source = folder / expected.name
    if not source.is_file():
        where = "folder not found" if not folder.is_dir() else "file not found"
        raise MirrorError(f"{where}: {source.resolve()}")
    with atomic_path(dest) as tmp:
        shutil.copyfile(source, tmp)
        if (reason := digest_mismatch(tmp, expected)) is not None:
            raise MirrorError(f"{source}: {reason}")


def _stream(session: requests.Session, url: str, part: Path, policy: HttpPolicy,
            deadline: float) -> None:
    """Download ``url`` into ``part``, continuing from its current size when the server lets us;
    stop at ``policy.max_bytes`` or at ``deadline`` (``time.monotonic()``)."""
    offset = part.stat().st_size if part.exists() else 0
    # identity: keep the bytes exactly as published (a .gz must not be decoded in transit).
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    timeout = (policy.connect_timeout_s, policy.read_timeout_s)
    try:
        with session.get(url, headers=headers, stream=True, timeout=timeout) as response:
            status = f"HTTP {response.status_code} {response.reason}"
            if response.status_code == 416 and offset:
                part.unlink()  # the partial file is not a prefix the server recognises
                raise _Retry(f"{status} for bytes {offset}-; starting over")
            if response.status_code in RETRY_STATUSES:
                raise _Retry(status)
            if response.status_code >= 400:
                raise MirrorError(status)
            content_range = response.headers.get("Content-Range", "")
            if not (response.status_code == 206 and content_range.startswith(f"bytes {offset}-")):
                offset = 0  # the server sent the whole file
            length = response.headers.get("Content-Length")
            announced = int(length) if length and length.isdigit() else None
            if announced is not None and offset + announced > policy.max_bytes:
                raise MirrorError(f"announces {offset + announced:,} bytes, more than the "
                                  f"{policy.max_bytes:,} a file may have")
            received = 0
            with open(part, "ab" if offset else "wb") as out, tqdm(
                total=None if announced is None else offset + announced, initial=offset,
                unit="B", unit_scale=True, unit_divisor=1024, desc=unquote(url.rsplit("/", 1)[-1]),
                disable=None, leave=False,
            ) as bar:
                for chunk in response.raw.stream(policy.chunk_bytes, decode_content=False):
                    if offset + received + len(chunk) > policy.max_bytes:
                        raise MirrorError(f"sent more than the {policy.max_bytes:,} bytes a file "
                                          "may have; stopped")
                    if time.monotonic() > deadline:
                        raise TransitError(f"took longer than {policy.max_seconds:.0f} s; "
                                           "stopped")
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except (requests.ConnectionError, requests.Timeout, urllib3.exceptions.HTTPError) as exc:
        raise _Retry(_reason(exc)) from None
    except requests.RequestException as exc:  # not transient (a redirect loop): the next mirror
        raise MirrorError(_reason(exc)) from None
    if announced is not None and received < announced:
        raise _Retry(f"connection closed after {received} of {announced} bytes")


def _transfer(session: requests.Session, url: str, part: Path, policy: HttpPolicy,
              deadline: float) -> None:
    """:func:`_stream` with ``policy.attempts`` tries and exponential back-off between them."""
    for attempt in range(1, policy.attempts + 1):
        try:
            _stream(session, url, part, policy, deadline)
            return
        except _Retry as exc:
            if attempt == policy.attempts:
                raise UnreachableMirror(f"{exc} (gave up after {attempt} attempts)") from None
            wait = policy.backoff_s * 2 ** (attempt - 1)
            log.warning("%s: %s; retrying in %.1f s (attempt %d of %d)",
                        url, exc, wait, attempt + 1, policy.attempts)
            time.sleep(wait)


def _from_http(
    session: requests.Session, base_url: str, expected: ExpectedFile, dest: Path,
    policy: HttpPolicy,
) -> None:
    """Fetch ``<base_url>/<name>`` to ``dest`` through a partial file in the user cache, verify
    it, then move it into place. The partial file is kept for the next run to resume when the
    transfer fails in transit (retries used up, time limit); a digest mismatch or a refusal
    (HTTP 4xx, too large) deletes it."""
    url = f"{base_url.rstrip('/')}/{quote(expected.name)}"
    part = partial_path(expected)
    part.parent.mkdir(parents=True, exist_ok=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + policy.max_seconds
    # bytes left by an earlier transfer: perhaps from another mirror or an earlier run, whose
    # copy may be compressed differently (payload digests admit that), so not this URL's prefix
    inherited = part.is_file() and part.stat().st_size > 0
    try:
        _transfer(session, url, part, policy, deadline)
        reason = digest_mismatch(part, expected)
        if reason is not None and inherited:
            log.warning("%s: %s after resuming the partial file of an earlier transfer (another "
                        "mirror or an earlier run); downloading the whole file from this mirror",
                        url, reason)
            part.unlink(missing_ok=True)
            _transfer(session, url, part, policy, deadline)
            reason = digest_mismatch(part, expected)
        if reason is not None:
            raise MirrorError(f"{url}: {reason}")
    except TransitError:
        raise
    except MirrorError:
        part.unlink(missing_ok=True)
        raise
    except OSError as exc:  # the partial file's disk, not the mirror (network errors are retried)
        if isinstance(exc, requests.RequestException):
            raise
        raise OSError(exc.errno, f"{part}: cannot write the partial download of {url} "
                      f"({exc.strerror or exc}); free space there or set MULTITASK_CACHE_DIR to "
                      "a writable folder with room, then rerun (it resumes)") from exc
    with atomic_path(dest) as tmp:
        shutil.move(part, tmp)  # the cache may be on another file system


def fetch_file(
    expected: ExpectedFile, dest: Path, mirrors: Sequence[str],
    session: requests.Session, policy: HttpPolicy = HttpPolicy(),
    unreachable: dict[str, str] | None = None, root: Path = Path("."),
) -> bool:
    """Make ``dest`` a verified copy of ``expected``; True if it had to be fetched. A relative
    local mirror is taken from the pipeline folder ``root``.

    ``unreachable`` (mirror -> why), shared across the files of one run, lets a mirror that
    is down cost its retries once rather than once per file. Raises :class:`RuntimeError`
    listing every mirror tried and why it failed.
    """
    unreachable = {} if unreachable is None else unreachable
    if dest.is_file():
        if is_known_verified(dest, expected):
            log.debug("%s: verified earlier, unchanged", dest)
            return False
        if (reason := digest_mismatch(dest, expected)) is None:
            remember_verified(dest, expected)
            log.info("%s: present and verified", dest)
            return False
        log.warning("%s: %s; fetching it again", dest, reason)
        dest.unlink()
    failures: list[str] = []
    for mirror in mirrors:
        if mirror in unreachable:
            failures.append(f"  - {mirror}: skipped, unreachable earlier in this run")
            continue
        started = time.perf_counter()
        is_http = mirror.startswith(("http://", "https://"))
        try:
            if is_http:
                _from_http(session, mirror, expected, dest, policy)
            elif (folder := mirror_folder(mirror, root)) is not None:
                _from_folder(folder, expected, dest)
            else:
                raise MirrorError("unsupported mirror: use a folder or an http(s):// URL")
        except MirrorError as exc:
            log.info("%s: %s: %s", expected.name, mirror, exc)
            failures.append(f"  - {mirror}: {exc}")
            if isinstance(exc, UnreachableMirror):
                unreachable[mirror] = str(exc)
            continue
        remember_verified(dest, expected)
        log.info("%s: %s from %s and verified in %.1f s", dest,
                 "downloaded" if is_http else "copied", mirror, time.perf_counter() - started)
        return True
    raise RuntimeError(f"{dest}: every mirror failed:\n" + "\n".join(failures))


def fetch_sources(
    sources: Mapping[str, Source], dataset: str, layout: Layout, names: Sequence[str] = (), *,
    sources_path: str | Path = "data/sources.yaml", policy: HttpPolicy = HttpPolicy(),
) -> list[Path]:
    """Fetch and verify every file of the sources ``names`` (default: those data set
    ``dataset`` needs), as ``sources`` (read from ``sources_path``) declares them.

    Every file is attempted; then one error lists each file that no mirror could provide.
    The raw folder, the stage's output, exists afterwards even with nothing to fetch.
    """
    wanted = required_sources(sources, dataset, names, sources_path)
    refuse_mirrors_inside(layout, wanted, sources_path)
    paths: list[Path] = []
    failed: dict[str, list[str]] = {}
    unreachable: dict[str, str] = {}
    fetched = 0
    started = time.perf_counter()
    with requests.Session() as session:
        session.headers["User-Agent"] = f"multitask/{__version__} python-requests"
        for name, source in wanted.items():
            folder = layout.source_dir(name)
            current: ExpectedFile | None = None
            try:
                for expected in expected_files(source):
                    current, dest = expected, folder / expected.name
                    try:
                        fetched += fetch_file(expected, dest, source.mirrors, session, policy,
                                              unreachable, layout.root)
                        paths.append(dest)
                    except RuntimeError as exc:
                        failed.setdefault(name, []).append(str(exc))
            except KeyboardInterrupt:
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()  # as after a failure: nothing half-done in the raw folder
                part = partial_path(current) if current is not None else None
                log.warning("interrupted: %d file(s) fetched and verified are kept%s; rerun "
                            "multitask download for the rest", len(paths),
                            f"; {part} holds what arrived of {current.name}: the rerun resumes "
                            "from it" if part is not None and current is not None
                            and part.is_file() else "")
                raise
            if name in failed and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()  # leave nothing behind, not even a folder
    if failed:
        # (not when done already: installing a package that is there does not help)
        advice = [spec.hint for name in failed if (spec := SOURCES.get(name)) and spec.hint
                  and not (spec.hint_folder and Path(spec.hint_folder).is_dir())]
        # a source of the user's own (a manifest archive) that they rebuilt: the digest is stale
        advice += [f"if you rebuilt the files of sources.{name} on purpose, put each new digest "
                   f"(the 'got' value above) in {sources_path}" for name, lines in failed.items()
                   if name not in SOURCES and any("sha256 mismatch" in line for line in lines)]
        if any(m.startswith(("http://", "https://")) for n in failed for m in wanted[n].mirrors):
            advice.append("check the network connection (and HTTPS_PROXY) for the HTTP mirrors")
        advice += [("or " if advice else "") + "add a mirror that has the files to "
                   + ", ".join(f"sources.{name}.mirrors" for name in failed)
                   + f" in {sources_path}"]
        errors = [line for lines in failed.values() for line in lines]
        raise RuntimeError("\n".join([*errors, "To fix: " + "; ".join(advice) + "."]))
    layout.raw_dir.mkdir(parents=True, exist_ok=True)
    log.info("%d files verified under %s (%d fetched) in %.2f s",
             len(paths), layout.raw_dir, fetched, time.perf_counter() - started)
    return paths


def download(params: Params, layout: Layout, sources: Sequence[str] = ()) -> list[Path]:
    """``multitask download [--source NAME ...]``: the stage; returns the verified files.

    The sources file is the layout's (``data/sources.yaml`` beside the params file). A
    ``manifest`` source's archives are unpacked beside themselves (:mod:`multitask.data.unpack`).
    """
    sources_file = load_sources(layout.sources)
    wanted = required_sources(sources_file, params.data.dataset, sources, layout.sources)
    refuse_unlisted_files(wanted, layout.sources)
    paths = fetch_sources(sources_file, params.data.dataset, layout, sources,
                          sources_path=layout.sources)
    if MANIFEST in wanted:
        unpack_all(layout.source_dir(MANIFEST))
    return paths
