"""A manifest data set fetched as an archive: unpack it beside itself in the raw folder.

``data/sources.yaml`` may define a source named ``manifest`` (an archive URL or folder among its
mirrors, the archive's SHA-256 under ``archive_sha256`` or ``files``); the download stage then
fetches and verifies it like any source, into ``data/raw/manifest/``, and unpacks each
``.tar``, ``.tar.gz``, ``.tgz`` or ``.zip`` file there into a folder named after it
(``photos.tar.gz`` -> ``data/raw/manifest/photos/``), which ``data.manifest`` then names
(``data/raw/manifest/photos/manifest.csv``). Without that source the manifest is read where it
lies (a local folder).

Unpacking goes through an atomic folder (a reader sees the old content or the new, never
half), and refuses members that would land outside it: tar files through Python's ``data``
filter (no absolute paths, no ``..``, no links out, no devices), zip files by checking each
name. An interpreter without that filter (it came with Python 3.11.4; Debian 12's python3 is
3.11.2) gets the same refusals from :func:`_checked_tar_members`.
"""

from __future__ import annotations

import logging
import os
import posixpath
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from multitask.io import atomic_dir

log = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


def archive_folder(archive: Path) -> Path | None:
    """Where ``archive`` unpacks (beside it, named without its suffix); None for other files."""
    for suffix in ARCHIVE_SUFFIXES:
        if archive.name.endswith(suffix) and len(archive.name) > len(suffix):
            return archive.with_name(archive.name[:-len(suffix)])
    return None


def _outside(name: str) -> bool:
    """Whether member ``name`` would land outside the folder it unpacks into."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return name.startswith(("/", "\\")) or ".." in parts or bool(parts and ":" in parts[0])


def _safe_zip_names(archive: zipfile.ZipFile, path: Path) -> None:
    for name in archive.namelist():
        if _outside(name):
            raise ValueError(f"{path}: member {name!r} would land outside the folder it "
                             "unpacks into; rebuild the archive with relative paths")


def _checked_tar_members(archive: tarfile.TarFile, path: Path) -> list[tarfile.TarInfo]:
    """The members, refused as Python's ``data`` filter refuses them (names or links that
    leave the folder, devices and pipes), owned by this process, without set-id bits and
    group or other write permission."""
    members = []
    for member in archive.getmembers():
        problem = None
        if _outside(member.name):
            problem = "would land outside the folder it unpacks into"
        elif not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            problem = "is a device or a pipe"
        elif member.issym() or member.islnk():
            start = posixpath.dirname(member.name) if member.issym() else ""
            target = posixpath.normpath(posixpath.join(start, member.linkname))
            if member.linkname.startswith("/") or target == ".." or target.startswith("../"):
                problem = f"links outside the folder it unpacks into ({member.linkname!r})"
        if problem:
            raise ValueError(_unsafe(path, f"member {member.name!r} {problem}"))
        member.mode &= 0o755
        member.uid, member.gid, member.uname, member.gname = os.getuid(), os.getgid(), "", ""
        members.append(member)
    return members


def _unsafe(path: Path, why: object) -> str:
    """An archive whose content is refused: fetching it again cannot help, rebuilding it can."""
    return (f"{path}: cannot unpack ({why}); rebuild the archive with relative paths and "
            "plain files")


def _extract_tar(archive: tarfile.TarFile, folder: Path, path: Path) -> None:
    if hasattr(tarfile, "data_filter"):
        try:
            archive.extractall(folder, filter="data")
        except tarfile.FilterError as exc:
            raise ValueError(_unsafe(path, exc)) from None
    else:
        archive.extractall(folder, members=_checked_tar_members(archive, path))


def unpack(archive: Path) -> Path:
    """Unpack ``archive`` into :func:`archive_folder`'s folder, replacing it; return it."""
    folder = archive_folder(archive)
    if folder is None:
        raise ValueError(f"{archive}: not an archive ({', '.join(ARCHIVE_SUFFIXES)})")
    with atomic_dir(folder) as tmp:
        try:
            if archive.name.endswith(".zip"):
                with zipfile.ZipFile(archive) as packed:
                    _safe_zip_names(packed, archive)
                    packed.extractall(tmp)
            else:
                with tarfile.open(archive) as packed:
                    _extract_tar(packed, tmp, archive)
        except (tarfile.TarError, zipfile.BadZipFile, OSError) as exc:
            raise ValueError(f"{archive}: cannot unpack ({exc}); delete it and rerun "
                             "multitask download") from None
    log.info("%s: unpacked into %s", archive, folder)
    return folder


def unpack_all(folder: Path) -> list[Path]:
    """Unpack every archive directly in ``folder``; the folders written, in name order."""
    return [unpack(path) for path in sorted(folder.iterdir())
            if path.is_file() and archive_folder(path) is not None]
