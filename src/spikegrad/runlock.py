"""One trainer per run folder: an advisory lock on ``<run>/.lock``.

The main process of a trainer (rank 0 under ``torchrun``) takes an exclusive ``fcntl.flock``
on ``<run>/.lock`` before it touches the folder, and holds it until training ends; the file
then holds ``PID on HOST``. A second trainer into the same folder finds the lock taken and
stops with one line naming the folder and the holder. The kernel drops the lock when its
process dies, however it dies (SIGKILL included), so a file left behind never blocks
anyone: only a live holder does. The lock is re-entrant within a process (an LTL run holds
its folder while its teacher trains in ``teacher/``, which has a lock of its own).

Readers (``report``, ``eval``) take no lock; :func:`holder` tells whether a run is in
progress. Where there is no ``fcntl`` (Windows), or the file system refuses locks (some NFS
setups: ``ENOLCK``), folders are not locked and a note says so once per process.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import time
from pathlib import Path

from spikegrad.errors import UserError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

__all__ = ["LOCK_FILE", "acquire", "holder", "release"]

LOCK_FILE = ".lock"
#: seconds a trainer retries a taken lock (a reader's probe holds it for microseconds)
WAIT_SECONDS = 1.0

_held: dict[str, list[int]] = {}  # resolved lock path -> [fd, how many times taken]
_noted: list[str] = []


def _key(folder: Path) -> str:
    return str((folder / LOCK_FILE).resolve())


def _note_unlocked(why: str) -> None:
    if not _noted:
        _noted.append(why)
        print(f"spikegrad: note: run folders are not locked here ({why}); make sure only one "
              "trainer writes into a run folder at a time", file=sys.stderr, flush=True)


def acquire(folder: str | Path, *, out: str = "--out") -> None:
    """Take ``folder``'s lock for this process (creating the folder); a :class:`UserError`
    if another process holds it, whose way out names the run folder's argument ``out``."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write to the run folder {str(folder)!r}: {exc}") from exc
    key = _key(folder)
    if key in _held:
        _held[key][1] += 1
        return
    if fcntl is None:
        _note_unlocked("this platform has no fcntl")
        return
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UserError(f"cannot write to the run folder {str(folder)!r}: {exc}") from exc
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                _note_unlocked(f"the file system refuses locks: {exc.strerror}")
                return
            if time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            who = _read(fd) or "another process"
            os.close(fd)
            raise UserError(f"run folder {str(folder)!r} is in use by another trainer ({who}); "
                            f"wait for it to finish (or stop it), or choose another {out}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"PID {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    _held[key] = [fd, 1]


def release(folder: str | Path) -> None:
    """Give back one :func:`acquire` of ``folder``; the last one unlocks it."""
    key = _key(Path(folder))
    entry = _held.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] > 0:
        return
    del _held[key]
    fd = entry[0]
    try:
        os.ftruncate(fd, 0)  # no holder any more
    except OSError:
        pass
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def holder(folder: str | Path) -> str | None:
    """``"PID n on HOST"`` of the trainer writing ``folder`` now, else None (also where
    folders cannot be locked)."""
    folder = Path(folder)
    if fcntl is None or not (folder / LOCK_FILE).is_file():
        return None
    if _key(folder) in _held:
        return f"PID {os.getpid()} on {socket.gethostname()}"
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return _read(fd) or "another process"
        return None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""
