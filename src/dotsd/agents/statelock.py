"""The exclusive lock of a server's state directory: one DOTS server at a time.

Two servers on one directory of embedded state (the SQLite store) would each keep their own
view of the mitigations and cuid bindings in memory and write conflicting records. So a server
takes ``flock(LOCK_EX | LOCK_NB)`` on ``STATE_DIR/dotsd.lock`` when it starts, holds it for
as long as it runs and writes its PID in the file; a second server finds the lock taken and
refuses to start, naming the holder. The kernel drops the lock when the holder exits, even
by ``kill -9``: a lock file left behind stops nobody (it is never removed, which would let a
third process lock a new file while a second holds the old one).

This is for the directory of embedded state only: a shared database (a PostgreSQL store,
not written yet) is meant for several server instances at once and takes no such lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Final

from dotsd.errors import LocalError
from dotsd.store.base import make_private_dir

__all__ = ["LOCK_FILENAME", "StateLock", "StateLockError"]

LOCK_FILENAME: Final = "dotsd.lock"


class StateLockError(LocalError):
    """The state directory cannot be locked: in use by another server, or unusable."""


class StateLock:
    """The held lock of one state directory; :meth:`acquire` takes it, :meth:`release`
    gives it back (also done by the kernel when the process ends)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, state_dir: Path) -> StateLock:
        """Lock ``state_dir`` (created, mode 0700, if missing) or raise StateLockError; the
        message names the PID of the server holding it."""
        state_dir = Path(state_dir)
        path = state_dir / LOCK_FILENAME
        try:
            make_private_dir(state_dir)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except NotADirectoryError as exc:
            raise StateLockError(str(exc)) from None
        except OSError as exc:
            raise StateLockError(f"cannot lock state directory {state_dir}: "
                                 f"{exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"PID {holder}" if holder is not None else "a process that is starting"
            raise StateLockError(
                f"state directory {state_dir} is in use by another dotsd server ({who}; "
                f"lock file {path}): one server per state directory") from None
        except OSError as exc:
            os.close(fd)
            raise StateLockError(f"cannot lock {path}: {exc.strerror or exc}") from exc
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except OSError as exc:
            os.close(fd)  # also releases the lock
            raise StateLockError(f"cannot write {path}: {exc.strerror or exc}") from exc
        return cls(path, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Give the lock back (idempotent). The PID goes first, so that a later refusal
        never names a process that has ended."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    """The PID the holder wrote; None while it has not written it yet (or not a PID)."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
