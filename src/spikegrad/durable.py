"""Files that survive a crash, a full disk or a file-size limit.

- :func:`atomic_write`: the new content goes to a temporary file beside the target
  (``.NAME.XXXXXXXX.tmp``), is flushed and ``fsync``-ed, then renamed over the target: a crash
  or a failed write at any instant leaves the old file or the new one, never a cut one.
- JSON lines (``metrics.jsonl``, ``gradients.jsonl``) are appended one whole line per write.
  A write cut off (disk full, a file-size limit, a kill) can leave a *torn* last line: bytes
  after the last newline that are not a JSON value. :func:`split_jsonl` tells the complete
  lines from such a tail, readers skip it, and :func:`repair_jsonl` truncates the file to its
  last complete line before a resumed run appends again.
- :func:`remove_orphans` deletes the temporaries a killed write left behind (only those of
  the names given: a run folder's own files).
- :func:`disk_error` finds the ``ENOSPC`` / ``EFBIG`` / ``EDQUOT`` error behind an exception
  (``torch.save`` wraps the ``OSError`` of its file in a ``RuntimeError``) and
  :func:`describe` says it in words with the fix.
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "DISK_ERRNOS", "atomic_write", "describe", "disk_error", "fsync_dir", "remove_orphans",
    "repair_jsonl", "split_jsonl", "temporary_beside",
]

#: errors that mean the disk (or the process's file-size limit, ``ulimit -f``) is full
DISK_ERRNOS = frozenset(e for e in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", None))
                        if e is not None)

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: files written here get the mode a plain open() gives


def temporary_beside(path: Path) -> tuple[int, str]:
    """An open temporary file ``.NAME.XXXXXXXX.tmp`` in ``path``'s folder: ``(fd, its path)``."""
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform can open folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder; its renames are durable on their own
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Replace ``path`` by ``data`` (text as UTF-8) in one step: temporary file, fsync, rename.

    A failure (disk full, ``ulimit -f``) removes the temporary file and leaves ``path`` as it
    was, then raises the ``OSError``.
    """
    path = Path(path)
    fd, tmp = temporary_beside(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


# --------------------------------------------------------------------------- JSON lines


def _is_json(raw: bytes) -> bool:
    try:
        json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return False
    return True


def split_jsonl(data: bytes) -> tuple[list[bytes], bytes]:
    """``(lines, torn)``: the lines of a JSON-lines file (without their newlines) and its torn
    tail (``b""`` if none). A last line without its newline counts as a line when it is a
    whole JSON value (a file edited by hand), as torn otherwise (a write cut off)."""
    head, newline, tail = data.rpartition(b"\n")
    lines = head.split(b"\n") if newline else []
    if tail.strip() and _is_json(tail):
        return [*lines, tail], b""
    return lines, tail


def repair_jsonl(path: str | Path) -> int:
    """Truncate ``path`` to its last complete line (a whole last line without its newline gets
    one); returns the bytes of the torn tail dropped (0: nothing was torn)."""
    path = Path(path)
    if not path.is_file():
        return 0
    data = path.read_bytes()
    torn = split_jsonl(data)[1]
    if torn:
        os.truncate(path, len(data) - len(torn))
    elif data and not data.endswith(b"\n"):
        with path.open("ab") as handle:
            handle.write(b"\n")
    return len(torn)


# --------------------------------------------------------------------------- leftovers and errors

_TEMPORARY = re.compile(r"\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp")


def remove_orphans(folder: str | Path, names: Iterable[str]) -> list[str]:
    """Delete the temporaries (``.NAME.XXXXXXXX.tmp``) of the files ``names`` in ``folder``,
    left by a write that was killed; returns the names removed. Call it only while no other
    process writes the folder (the run folder's lock)."""
    folder, names = Path(folder), set(names)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _TEMPORARY.fullmatch(entry.name)
        if match and match["name"] in names and entry.is_file() and not entry.is_symlink():
            entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return sorted(removed)


def disk_error(exc: BaseException | None) -> OSError | None:
    """The ``OSError`` of a full disk or file-size limit behind ``exc`` (itself, or what it
    was raised from or during), else None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def describe(exc: OSError) -> tuple[str, str]:
    """``(what happened, the fix)`` for an ``OSError`` met while writing."""
    what = f"[Errno {exc.errno}] {exc.strerror or os.strerror(exc.errno or 0)}"
    if exc.errno == errno.EFBIG:
        return what + " (the process's file-size limit, ulimit -f)", "Raise the file-size limit"
    if exc.errno in DISK_ERRNOS:
        return what, "Free space"
    return what, "Make the folder writable"
