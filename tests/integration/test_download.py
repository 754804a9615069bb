"""The download stage against a real HTTP server on 127.0.0.1 and real local mirrors."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from multitask import cli
from multitask.config import ConfigError, Source, SourcesFile
from multitask.data import download, sources
from multitask.data.datasets import DATASETS, SOURCES
from multitask.data.download import HttpPolicy, fetch_sources
from multitask.data.sources import ExpectedFile, expected_files, required_sources
from multitask.layout import Layout

FAST = HttpPolicy(attempts=3, backoff_s=0.0, connect_timeout_s=2.0, read_timeout_s=5.0)
IMAGES = "train-images-idx3-ubyte.gz"


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files`` with Range support; ``server.faults[path]`` lists what to do
    instead on the next requests: an HTTP status, "cut" (drop the connection mid-file),
    "stall" (send half the file, then nothing for 1.5 s) or "loop" (redirect to itself, always)."""

    server: FileServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        fault = server.faults.get(self.path, []).pop(0) if server.faults.get(self.path) else None
        body = server.files.get(self.path)
        if fault == "loop":  # a redirect to itself
            self.send_response(302)
            self.send_header("Location", self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            server.faults[self.path].insert(0, "loop")
            return
        if isinstance(fault, int) or body is None:
            self.send_error(fault if isinstance(fault, int) else 404)
            return
        start = 0
        if match := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or ""):
            start = int(match.group(1))
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if fault == "stall":  # half the file, then silence past the client's read timeout
            self.wfile.write(body[start:start + (len(body) - start) // 2])
            self.wfile.flush()
            time.sleep(1.5)
            self.close_connection = True
            return
        if fault == "cut":
            self.wfile.write(body[start:start + (len(body) - start) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body[start:])


class FileServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, list[int | str]] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def publish(self, prefix: str, folder: Path) -> str:
        """Serve every file of ``folder`` under ``/<prefix>/``; return that base URL."""
        for path in folder.iterdir():
            self.files[f"/{prefix}/{path.name}"] = path.read_bytes()
        return f"{self.url}/{prefix}/"


@pytest.fixture
def server() -> Iterator[FileServer]:
    server = FileServer()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def mirror(tmp_path: Path, idx_dataset: Callable[..., dict[str, str]]) -> tuple[Path, dict]:
    """A folder with the four Fashion-MNIST-named files and their payload digests."""
    folder = tmp_path / "mirror"
    return folder, idx_dataset(folder, n_train=60, n_test=20)


def _data(tmp_path: Path, mirrors: list[str], files: dict[str, str],
          **source: Any) -> dict[str, Source]:
    raw = {"sources": {"fashion_mnist": {"mirrors": mirrors, "files": files, **source}}}
    return dict(SourcesFile.model_validate(raw).sources)



def fetch(data: dict[str, Source], pipeline: Path) -> list[Path]:
    """Fetch MultiFashion's sources into the raw folder of pipeline folder ``pipeline``."""
    return fetch_sources(data, "multifashion", Layout(pipeline), policy=FAST)


def raw_source(pipeline: Path) -> Path:
    return Layout(pipeline).source_dir("fashion_mnist")


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_http_download_keeps_the_published_bytes(tmp_path: Path, server: FileServer,
                                                 mirror: tuple[Path, dict]) -> None:
    folder, digests = mirror
    data = _data(tmp_path, [server.publish("fm", folder)], digests)
    paths = fetch(data, tmp_path)
    assert sorted(p.name for p in paths) == sorted(digests)
    for path in paths:
        assert path.read_bytes() == (folder / path.name).read_bytes()
    assert _leftovers(raw_source(tmp_path)) == sorted(digests)  # no .part, no tmp
    assert [rng for _, rng in server.requests] == [None] * 4


def test_a_cut_connection_resumes_with_a_range_request(tmp_path: Path, server: FileServer,
                                                       mirror: tuple[Path, dict]) -> None:
    folder, digests = mirror
    base = server.publish("fm", folder)
    server.faults[f"/fm/{IMAGES}"] = ["cut"]
    fetch(_data(tmp_path, [base], digests), tmp_path)
    size = len(server.files[f"/fm/{IMAGES}"])
    image_requests = [rng for path, rng in server.requests if path == f"/fm/{IMAGES}"]
    assert image_requests == [None, f"bytes={size // 2}-"]
    dest = raw_source(tmp_path) / IMAGES
    assert hashlib.sha256(gzip.decompress(dest.read_bytes())).hexdigest() == digests[IMAGES]


@pytest.mark.parametrize("leftover", ["first half", "longer than the file"])
def test_a_part_file_left_by_an_interrupted_run_is_resumed(
        tmp_path: Path, server: FileServer, mirror: tuple[Path, dict], leftover: str) -> None:
    """A killed download leaves its partial file in the user cache; `dvc repro` then deletes
    the stage's output (data/raw) before rerunning it, and the partial file survives that."""
    folder, digests = mirror
    base = server.publish("fm", folder)
    body = server.files[f"/fm/{IMAGES}"]
    part = sources.partial_path(ExpectedFile(IMAGES, digests[IMAGES], "payload"))
    part.parent.mkdir(parents=True)
    part.write_bytes(body[: len(body) // 2] if leftover == "first half" else body + b"x")
    assert not Layout(tmp_path).raw_dir.exists()  # as DVC leaves it before rerunning the stage
    fetch(_data(tmp_path, [base], {IMAGES: digests[IMAGES]}), tmp_path)
    ranges = [rng for _, rng in server.requests]
    if leftover == "first half":
        assert ranges == [f"bytes={len(body) // 2}-"]
    else:  # the server answers 416; the download starts over
        assert ranges == [f"bytes={len(body) + 1}-", None]
    assert _leftovers(raw_source(tmp_path)) == [IMAGES]
    assert (raw_source(tmp_path) / IMAGES).read_bytes() == body
    assert not part.exists()


def test_a_part_file_of_another_mirrors_copy_does_not_fail_a_good_mirror(
        tmp_path: Path, server: FileServer, mirror: tuple[Path, dict]) -> None:
    """Payload digests admit a recompressed copy (Debian's), so two mirrors' files can differ
    byte for byte: the bytes one mirror's cut transfer left are no prefix of the next mirror's
    file. Resuming them there fails the digest; the good mirror then sends the whole file
    rather than being reported corrupt."""
    folder, digests = mirror
    original = (folder / IMAGES).read_bytes()
    other = tmp_path / "recompressed"
    other.mkdir()
    with gzip.GzipFile(other / IMAGES, "wb", mtime=0) as out:  # its name in the header
        out.write(gzip.decompress(original))
    assert (other / IMAGES).read_bytes() != original
    first, second = server.publish("other", other), server.publish("fm", folder)
    server.faults[f"/other/{IMAGES}"] = ["cut"] * FAST.attempts
    fetch(_data(tmp_path, [first, second], {IMAGES: digests[IMAGES]}), tmp_path)
    assert (raw_source(tmp_path) / IMAGES).read_bytes() == original
    resumed, whole = [rng for path, rng in server.requests if path == f"/fm/{IMAGES}"]
    assert resumed.startswith("bytes=") and whole is None
    assert not _image_part(digests).exists()


def test_a_stalled_transfer_resumes_from_the_bytes_it_received(tmp_path: Path,
                                                                server: FileServer) -> None:
    """A read timeout mid-chunk must not throw away what arrived: urllib3 reads a whole chunk
    before handing it over, so the chunk bounds what a stall costs."""
    body = b"x" + np.random.default_rng(0).bytes(400_000)  # no gzip magic: digest of the bytes
    server.files[f"/fm/{IMAGES}"] = body
    server.faults[f"/fm/{IMAGES}"] = ["stall"]
    data = _data(tmp_path, [f"{server.url}/fm/"], {IMAGES: hashlib.sha256(body).hexdigest()})
    fetch_sources(data, "multifashion", Layout(tmp_path),
                  policy=HttpPolicy(attempts=2, backoff_s=0.0, read_timeout_s=0.5))
    first, second = [rng for _, rng in server.requests]
    assert first is None and second is not None
    resumed = int(second.removeprefix("bytes=").removesuffix("-"))
    assert len(body) // 2 - HttpPolicy().chunk_bytes < resumed <= len(body) // 2
    assert (raw_source(tmp_path) / IMAGES).read_bytes() == body


def test_an_error_page_served_as_the_file_is_said_to_be_no_gzip(
        tmp_path: Path, server: FileServer, mirror: tuple[Path, dict]) -> None:
    _, digests = mirror
    server.files[f"/portal/{IMAGES}"] = b"<html><body>Please log in</body></html>"
    with pytest.raises(RuntimeError) as error:
        fetch(_data(tmp_path, [f"{server.url}/portal/"], {IMAGES: digests[IMAGES]}), tmp_path)
    assert "payload sha256 mismatch" in str(error.value)
    assert "not a gzip file: it starts with b'<html><body>Please log in" in str(error.value)


def test_a_checksum_mismatch_leaves_no_file(tmp_path: Path, server: FileServer,
                                            mirror: tuple[Path, dict]) -> None:
    folder, digests = mirror
    wrong = {**digests, IMAGES: "0" * 64}
    with pytest.raises(RuntimeError) as error:
        fetch(_data(tmp_path, [server.publish("fm", folder)], wrong), tmp_path)
    message = str(error.value)
    assert f"payload sha256 mismatch (expected {'0' * 64}, got {digests[IMAGES]})" in message
    assert "rebuilt" not in message  # a published data set's digests are not the user's to move
    assert _leftovers(raw_source(tmp_path)) == sorted(set(digests) - {IMAGES})
    assert not sources.partial_path(ExpectedFile(IMAGES, "0" * 64, "payload")).exists()


def _image_part(digests: dict[str, str]) -> Path:
    return sources.partial_path(ExpectedFile(IMAGES, digests[IMAGES], "payload"))


def test_a_download_that_gives_up_in_transit_keeps_its_part_file_to_resume(
        tmp_path: Path, server: FileServer, mirror: tuple[Path, dict]) -> None:
    folder, digests = mirror
    base = server.publish("fm", folder)
    body = server.files[f"/fm/{IMAGES}"]
    server.faults[f"/fm/{IMAGES}"] = ["cut"] * FAST.attempts
    data = _data(tmp_path, [base], {IMAGES: digests[IMAGES]})
    with pytest.raises(RuntimeError, match=r"Connection broken: .* \(gave up after 3 attempts\)"):
        fetch(data, tmp_path)
    kept = _image_part(digests).read_bytes()
    assert 0 < len(kept) < len(body) and body.startswith(kept)
    server.requests.clear()
    fetch(data, tmp_path)
    assert [rng for _, rng in server.requests] == [f"bytes={len(kept)}-"]
    assert (raw_source(tmp_path) / IMAGES).read_bytes() == body


def test_a_download_stopped_by_the_time_limit_keeps_its_part_file(
        tmp_path: Path, server: FileServer, mirror: tuple[Path, dict]) -> None:
    folder, digests = mirror
    base = server.publish("fm", folder)
    body = server.files[f"/fm/{IMAGES}"]
    part = _image_part(digests)
    part.parent.mkdir(parents=True)
    part.write_bytes(body[: len(body) // 2])
    data = _data(tmp_path, [base], {IMAGES: digests[IMAGES]})
    with pytest.raises(RuntimeError, match=r"took longer than 0 s; stopped"):
        fetch_sources(data, "multifashion", Layout(tmp_path),
                      policy=HttpPolicy(attempts=1, max_seconds=0.0, chunk_bytes=1024))
    assert part.read_bytes() == body[: len(body) // 2]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_under_the_part_file_names_it_and_what_to_do(
        tmp_path: Path, server: FileServer, mirror: tuple[Path, dict],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Writing the partial file fails (ENOSPC): the error names that file, in the user cache
    rather than the raw folder, and the way out; it was a bare '[Errno 28] No space left on
    device'."""
    folder, digests = mirror
    full = tmp_path / "cache" / "full.part"
    full.parent.mkdir()
    full.symlink_to("/dev/full")
    monkeypatch.setattr(download, "partial_path", lambda expected: full)
    with pytest.raises(OSError) as error:
        fetch(_data(tmp_path, [server.publish("fm", folder)], digests), tmp_path)
    assert str(error.value).startswith(f"[Errno 28] {full}: cannot write the partial download "
                                       f"of {server.url}/fm/")
    assert "No space left on device" in str(error.value)
    assert "MULTITASK_CACHE_DIR" in str(error.value)


def test_ctrl_c_leaves_no_empty_raw_folder_and_names_the_part_file_it_resumes_from(
        tmp_path: Path, server: FileServer, mirror: tuple[Path, dict],
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    folder, digests = mirror

    def cut_short(expected: ExpectedFile, dest: Path, *args: Any) -> bool:
        dest.parent.mkdir(parents=True, exist_ok=True)  # as fetch_file does before it writes
        part = download.partial_path(expected)
        part.parent.mkdir(parents=True, exist_ok=True)
        part.write_bytes(b"the first bytes")
        raise KeyboardInterrupt

    monkeypatch.setattr(download, "fetch_file", cut_short)
    data = _data(tmp_path, [server.publish("fm", folder)], digests)
    with pytest.raises(KeyboardInterrupt):
        fetch(data, tmp_path)
    assert not raw_source(tmp_path).exists()  # it said only "interrupted" and left it empty
    first = next(iter(expected_files(data["fashion_mnist"])))
    assert caplog.messages[-1] == (
        f"interrupted: 0 file(s) fetched and verified are kept; {download.partial_path(first)} "
        f"holds what arrived of {first.name}: the rerun resumes from it; rerun multitask "
        "download for the rest")


def test_an_http_refusal_deletes_the_part_file(tmp_path: Path, server: FileServer,
                                               mirror: tuple[Path, dict]) -> None:
    _, digests = mirror
    part = _image_part(digests)
    part.parent.mkdir(parents=True)
    part.write_bytes(b"half of a file the mirror no longer has")
    data = _data(tmp_path, [f"{server.url}/gone/"], {IMAGES: digests[IMAGES]})
    with pytest.raises(RuntimeError, match=r"HTTP 404"):
        fetch(data, tmp_path)
    assert not part.exists()


def test_a_corrupt_mirror_is_skipped_for_the_next(tmp_path: Path, server: FileServer,
                                                  mirror: tuple[Path, dict],
                                                  idx_dataset: Callable) -> None:
    folder, digests = mirror
    idx_dataset(tmp_path / "other", n_train=60, n_test=20, seed=1)  # same names, other content
    data = _data(tmp_path, [server.publish("other", tmp_path / "other"), str(folder)], digests)
    paths = fetch(data, tmp_path)
    for path in paths:
        assert path.read_bytes() == (folder / path.name).read_bytes()
    assert len(server.requests) == 4  # every file tried on the corrupt mirror first


def _debian_copy_at(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``folder`` where the install hint puts Debian's Fashion-MNIST (there or not)."""
    spec = dataclasses.replace(SOURCES["fashion_mnist"], hint_folder=str(folder))
    monkeypatch.setattr(download, "SOURCES", {**SOURCES, "fashion_mnist": spec})


def test_a_redirect_loop_is_named_and_the_next_mirror_tried(
        tmp_path: Path, server: FileServer, mirror: tuple[Path, dict]) -> None:
    """It ended the whole download with a bare 'Exceeded 30 redirects.'."""
    folder, digests = mirror
    looping = server.publish("loop", folder)
    server.faults[f"/loop/{IMAGES}"] = ["loop"]
    fetch(_data(tmp_path, [looping, server.publish("fm", folder)], digests), tmp_path)
    assert _leftovers(raw_source(tmp_path)) == sorted(digests)
    files = _data(tmp_path, [looping], {IMAGES: digests[IMAGES]})
    with pytest.raises(RuntimeError) as error:
        fetch(files, tmp_path / "again")
    assert f"- {looping}: TooManyRedirects: Exceeded 30 redirects." in str(error.value)


def test_every_mirror_down_names_each_mirror_and_why(tmp_path: Path, server: FileServer,
                                                     mirror: tuple[Path, dict],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    folder, digests = mirror
    _debian_copy_at(tmp_path / "not-installed", monkeypatch)
    server.publish("flaky", folder)
    server.faults[f"/flaky/{IMAGES}"] = [500] * FAST.attempts
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}/"
    mirrors = [f"{server.url}/missing/", f"{server.url}/flaky/", str(tmp_path / "nowhere"),
               closed]
    labels = "train-labels-idx1-ubyte.gz"
    files = {IMAGES: digests[IMAGES], labels: digests[labels]}
    with pytest.raises(RuntimeError) as error:
        fetch(_data(tmp_path, mirrors, files), tmp_path)
    first, second = str(error.value).split(f"fashion_mnist/{labels}: every mirror failed")
    assert f"fashion_mnist/{IMAGES}: every mirror failed" in first
    assert f"- {server.url}/missing/: HTTP 404" in first
    assert f"- {server.url}/flaky/: HTTP 500 Internal Server Error (gave up after 3 " in first
    assert f"- {tmp_path / 'nowhere'}: folder not found" in first
    assert re.search(rf"- {re.escape(closed)}: .*[Cc]onnection refused", first)
    # A mirror that is down costs its retries once per run, not once per file.
    assert f"- {server.url}/missing/: HTTP 404" in second
    assert f"- {server.url}/flaky/: skipped, unreachable earlier in this run" in second
    assert f"- {closed}: skipped, unreachable earlier in this run" in second
    assert sum(path.startswith("/flaky/") for path, _ in server.requests) == FAST.attempts
    assert "dataset-fashion-mnist" in second and "sources.fashion_mnist.mirrors" in second
    assert "check the network connection (and HTTPS_PROXY)" in second
    assert not raw_source(tmp_path).exists()


def test_a_relative_local_mirror_accepts_a_recompressed_copy(
        tmp_path: Path, mirror: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch) -> None:
    folder, digests = mirror
    recompressed = tmp_path / "debian"
    recompressed.mkdir()
    for name in digests:
        payload = gzip.decompress((folder / name).read_bytes())
        (recompressed / name).write_bytes(gzip.compress(payload, compresslevel=1, mtime=1))
        assert (recompressed / name).read_bytes() != (folder / name).read_bytes()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative mirrors start at the pipeline folder, not here
    paths = fetch(_data(tmp_path, ["debian/"], digests), tmp_path)
    for path in paths:
        assert path.read_bytes() == (recompressed / path.name).read_bytes()


def test_a_relative_mirror_inside_the_raw_folder_is_refused_from_any_directory(
        tmp_path: Path, mirror: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch) -> None:
    _, digests = mirror
    monkeypatch.chdir(mirror[0])
    with pytest.raises(ValueError, match=r"mirrors: data/raw/fashion_mnist lies inside"):
        fetch(_data(tmp_path, ["data/raw/fashion_mnist"], digests), tmp_path)


def test_local_mirrors_alone_get_no_network_advice(tmp_path: Path,
                                                   mirror: tuple[Path, dict]) -> None:
    _, digests = mirror
    with pytest.raises(RuntimeError) as error:
        fetch(_data(tmp_path, [str(tmp_path / "nowhere")], digests), tmp_path)
    assert "folder not found" in str(error.value)
    assert "HTTPS_PROXY" not in str(error.value)
    assert "add a mirror that has the files to sources.fashion_mnist.mirrors" in str(error.value)


@pytest.mark.parametrize("installed", [False, True])
def test_the_install_hint_is_given_only_where_the_package_is_missing(
        tmp_path: Path, mirror: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch,
        installed: bool) -> None:
    """Debian's copy already installed (but not a mirror, or not matching the digests):
    installing it again does not help, so only the generic advice is given."""
    _, digests = mirror
    debian = tmp_path / "debian"
    if installed:
        debian.mkdir()
    _debian_copy_at(debian, monkeypatch)
    with pytest.raises(RuntimeError) as error:
        fetch(_data(tmp_path, [str(tmp_path / "nowhere")], digests), tmp_path)
    assert ("install Debian's dataset-fashion-mnist" in str(error.value)) is not installed
    assert "add a mirror that has the files to sources.fashion_mnist.mirrors" in str(error.value)


def test_nothing_to_fetch_still_makes_the_raw_folder(tmp_path: Path,
                                                     mirror: tuple[Path, dict]) -> None:
    """A manifest read in place needs no source, yet data/raw is the stage's DVC output."""
    _, digests = mirror
    assert fetch_sources(_data(tmp_path, ["unused/"], digests), "manifest",
                         Layout(tmp_path)) == []
    assert _leftovers(Layout(tmp_path).raw_dir) == []
    assert Layout(tmp_path).raw_dir.is_dir()


def test_an_archive_digest_checks_the_file_as_published(tmp_path: Path,
                                                        mirror: tuple[Path, dict]) -> None:
    folder, _ = mirror
    published = (folder / IMAGES).read_bytes()
    digest = hashlib.sha256(published).hexdigest()
    data = _data(tmp_path, [str(folder)], {}, archive_sha256={IMAGES: digest})
    assert [p.read_bytes() for p in fetch(data, tmp_path)] == [published]
    (folder / IMAGES).write_bytes(gzip.compress(gzip.decompress(published), compresslevel=1))
    (raw_source(tmp_path) / IMAGES).unlink()
    with pytest.raises(RuntimeError, match=f"archive sha256 mismatch \\(expected {digest}"):
        fetch(data, tmp_path)


def _must_not_hash(path: Path, kind: str) -> str:
    raise AssertionError(f"{path} was hashed again although it was verified and is unchanged")


def test_verified_files_are_not_fetched_again_unless_changed(
        tmp_path: Path, server: FileServer, mirror: tuple[Path, dict],
        monkeypatch: pytest.MonkeyPatch) -> None:
    folder, digests = mirror
    data = _data(tmp_path, [server.publish("fm", folder)], digests)
    fetch(data, tmp_path)
    server.requests.clear()
    with monkeypatch.context() as patch:  # the cache answers: no decompression, no request
        patch.setattr(sources, "file_sha256", _must_not_hash)
        fetch(data, tmp_path)
    assert server.requests == []
    dest = raw_source(tmp_path) / IMAGES
    corrupt = bytearray(dest.read_bytes())
    corrupt[len(corrupt) // 2] ^= 0xFF  # same size, one byte of the deflate stream changed
    dest.write_bytes(bytes(corrupt))
    fetch(data, tmp_path)
    assert [path for path, _ in server.requests] == [f"/fm/{IMAGES}"]
    assert dest.read_bytes() == (folder / IMAGES).read_bytes()


def test_cli_download_and_its_errors(tmp_path: Path, mirror: tuple[Path, dict],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    folder, digests = mirror
    params = tmp_path / "params.yaml"
    params.write_text("data:\n  dataset: multifashion\n")
    declared = Layout(tmp_path).sources
    declared.parent.mkdir(parents=True)
    files = "".join(f"      {name}: {digest}\n" for name, digest in digests.items())
    declared.write_text(f"sources:\n  fashion_mnist:\n    mirrors: [{folder}]\n"
                        f"    files:\n{files}")
    assert cli.main(["download", "--params", str(params)]) == 0
    assert _leftovers(raw_source(tmp_path)) == sorted(digests)
    assert cli.main(["download", "--params", str(params), "--source", "mnist"]) == 1
    assert f"{declared}: sources.mnist: not defined" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["check", "download"])
def test_a_source_missing_a_file_its_reader_needs_is_refused(
        tmp_path: Path, mirror: tuple[Path, dict], capsys: pytest.CaptureFixture[str],
        command: str) -> None:
    """check said 'valid' and download fetched three files, then validate asked to 'run
    multitask download first' for the fourth, which no download would bring."""
    folder, digests = mirror
    params = tmp_path / "params.yaml"
    params.write_text("data:\n  dataset: multifashion\n")
    declared = Layout(tmp_path).sources
    declared.parent.mkdir(parents=True)
    labels = "t10k-labels-idx1-ubyte.gz"
    files = "".join(f"      {name}: {digest}\n" for name, digest in digests.items()
                    if name != labels)
    declared.write_text(f"sources:\n  fashion_mnist:\n    mirrors: [{folder}]\n"
                        f"    files:\n{files}")
    assert cli.main([command, "--params", str(params)]) == 1
    assert (f"{declared}: sources.fashion_mnist: {labels} not listed, but fashion_mnist is "
            "read from ") in capsys.readouterr().err
    assert not raw_source(tmp_path).exists()


def test_each_data_set_maps_to_its_sources(tmp_path: Path, mirror: tuple[Path, dict]) -> None:
    folder, digests = mirror
    assert DATASETS["multifashion_mnist"].sources == ("fashion_mnist", "mnist")
    data = _data(tmp_path, [str(folder)], digests)
    assert list(required_sources(data, "multifashion")) == ["fashion_mnist"]
    with pytest.raises(ConfigError, match=r"sources\.yaml: sources\.mnist: not defined, but "
                                          r"mnist is needed by data\.dataset=multifashion_mnist"):
        required_sources(data, "multifashion_mnist")


def test_a_file_larger_than_the_cap_is_refused(tmp_path: Path, server: FileServer,
                                               mirror: tuple[Path, dict]) -> None:
    folder, digests = mirror
    data = _data(tmp_path, [server.publish("fm", folder)], {IMAGES: digests[IMAGES]})
    with pytest.raises(RuntimeError, match=r"announces [\d,]+ bytes, more than the 100 a file"):
        fetch_sources(data, "multifashion", Layout(tmp_path),
                      policy=HttpPolicy(attempts=1, max_bytes=100))
    assert not raw_source(tmp_path).exists()


def test_a_download_slower_than_the_cap_is_stopped(tmp_path: Path, server: FileServer,
                                                   mirror: tuple[Path, dict]) -> None:
    folder, digests = mirror
    data = _data(tmp_path, [server.publish("fm", folder)], {IMAGES: digests[IMAGES]})
    with pytest.raises(RuntimeError, match=r"took longer than 0 s; stopped"):
        fetch_sources(data, "multifashion", Layout(tmp_path),
                      policy=HttpPolicy(attempts=1, max_seconds=0.0, chunk_bytes=1024))


def test_a_local_mirror_inside_the_raw_folder_is_refused(tmp_path: Path,
                                                         mirror: tuple[Path, dict]) -> None:
    _, digests = mirror
    inside = raw_source(tmp_path)
    data = _data(tmp_path, [str(inside)], digests)
    with pytest.raises(ValueError, match=r"mirrors: .* lies inside .*data/raw, the folder the "
                                         r"download stage writes"):
        fetch(data, tmp_path)
