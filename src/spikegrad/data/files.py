"""Dataset files: checksums, safe archive extraction, and downloads on request.

Nothing here runs unless a dataset builder needs it. Archives are checked against their
published MD5 before use and extracted member by member: an absolute path, a ``..`` that
climbs out of the target folder, a link or a device file is refused, never written.
Downloads happen only when the user asks (``data.options.download: true`` or
``spikegrad download NAME --root DIR``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from spikegrad.errors import UserError

CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    """An archive a dataset can be downloaded as: where, what name, which MD5."""

    url: str
    filename: str
    md5: str


def md5sum(path: str | Path) -> str:
    """Hex MD5 of a file, read in 1 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_md5(path: str | Path, expected: str) -> None:
    """Raise a :class:`UserError` naming the file unless its MD5 is ``expected``."""
    actual = md5sum(path)
    if actual != expected:
        raise UserError(
            f"{str(path)!r} has MD5 {actual} but the official archive has {expected}: the file is "
            "incomplete or not the official one; delete it and download it again"
        )


def require_root(root: str | None, dataset: str) -> Path:
    """``data.root`` as a path; a clear error when it is missing."""
    if root is None:
        raise UserError(f"dataset {dataset!r} reads its files from data.root; set it, e.g. "
                        f"--set data.root=/data/{dataset}")
    return Path(root).expanduser()


def package_file(package: str, relative: str, dataset: str, install: str) -> Path:
    """A data file shipped inside an installed package, found without importing the package.

    ``install`` is the command that installs it, for the error when the package or the file
    is missing (``importlib.util.find_spec`` locates a top-level package without running it).
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    folders = list(spec.submodule_search_locations or ()) if spec is not None else []
    if not folders:
        raise UserError(f"dataset {dataset!r} reads the copy bundled with the {package!r} package, "
                        f"which is not installed; run `{install}` or set data.root")
    path = Path(folders[0]) / relative
    if not path.is_file():
        raise UserError(f"the installed {package!r} package ({folders[0]}) has no {relative}: it is "
                        f"another package of that name or a damaged install; run `{install}` or set "
                        "data.root")
    return path


# --------------------------------------------------------------------------- extraction


def _safe_target(target: Path, name: str, archive: Path) -> Path:
    """Where member ``name`` would land under ``target``; refuse anything that escapes it."""
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or name.startswith(("/", "\\")) or (pure.parts and ":" in pure.parts[0]):
        raise UserError(f"archive {str(archive)!r} holds member {name!r} with an absolute path; "
                        "refusing to extract it")
    if ".." in pure.parts:
        raise UserError(f"archive {str(archive)!r} holds member {name!r} that would land outside "
                        f"{str(target)!r}; refusing to extract it")
    dest = (target / Path(*pure.parts)).resolve() if pure.parts else target.resolve()
    if dest != target.resolve() and target.resolve() not in dest.parents:
        raise UserError(f"archive {str(archive)!r} holds member {name!r} that would land outside "
                        f"{str(target)!r}; refusing to extract it")
    return dest


def extract_archive(archive: str | Path, target: str | Path) -> None:
    """Extract a ``.tar``, ``.tar.gz``/``.tgz`` or ``.zip`` into ``target``, safely.

    Every member is checked before anything is written: regular files and folders only,
    each landing inside ``target``.
    """
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, target)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, target)
        else:
            raise UserError(f"{str(archive)!r} is neither a tar nor a zip archive")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise UserError(f"cannot extract {str(archive)!r}: {exc}; the archive is damaged, "
                        "delete it and download it again") from exc


def _extract_tar(archive: Path, target: Path) -> None:
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        plan = []
        for member in members:
            if not (member.isfile() or member.isdir()):
                kind = "link" if member.issym() or member.islnk() else "special file"
                raise UserError(f"archive {str(archive)!r} holds {member.name!r}, a {kind}; "
                                "refusing to extract it (only files and folders are allowed)")
            plan.append((member, _safe_target(target, member.name, archive)))
        for member, dest in plan:
            if member.isdir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None  # a regular file always has content
            with source, open(dest, "wb") as out:
                shutil.copyfileobj(source, out, CHUNK)


def _extract_zip(archive: Path, target: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        plan = []
        for info in zf.infolist():
            mode = (info.external_attr >> 16) & 0o170000
            if mode not in (0, 0o100000, 0o040000):  # unset, regular file, folder
                raise UserError(f"archive {str(archive)!r} holds {info.filename!r}, a link or "
                                "special file; refusing to extract it")
            plan.append((info, _safe_target(target, info.filename, archive)))
        for info, dest in plan:
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as source, open(dest, "wb") as out:
                shutil.copyfileobj(source, out, CHUNK)


# --------------------------------------------------------------------------- download


def download(remote: RemoteFile, folder: str | Path) -> Path:
    """Download ``remote`` into ``folder`` (to a temporary name, renamed once verified)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / remote.filename
    if dest.is_file() and md5sum(dest) == remote.md5:
        return dest
    fd, tmp = tempfile.mkstemp(prefix=f".{remote.filename}.", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(remote.url, timeout=60) as resp:
            shutil.copyfileobj(resp, out, CHUNK)
        verify_md5(tmp, remote.md5)
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError) as exc:
        raise UserError(
            f"cannot download {remote.url}: {exc}. Without a network, fetch the file by hand and "
            f"put it at {str(dest)!r}"
        ) from exc
    finally:
        Path(tmp).unlink(missing_ok=True)
    return dest


def fetch_and_extract(remote: RemoteFile, root: Path, download_allowed: bool, how: str) -> None:
    """Extract ``root/remote.filename`` into ``root`` after checking its MD5.

    With ``download_allowed`` a missing archive is downloaded first; without it, a clear
    error says what was expected (``how`` describes the extracted layout).
    """
    archive = root / remote.filename
    if not archive.is_file():
        if not download_allowed:
            raise UserError(
                f"dataset files not found in {str(root)!r}: expected {how} or the archive "
                f"{str(archive)!r}; set data.options.download=true or run `spikegrad download` "
                "to fetch it"
            )
        download(remote, root)
    verify_md5(archive, remote.md5)
    extract_archive(archive, root)
