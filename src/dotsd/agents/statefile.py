"""A small JSON file of client state kept across runs: read, or changed under an exclusive
lock and written atomically (temporary file, fsync, rename), so that two client commands run
at the same time never lose each other's update and a crash never leaves half a file.

:class:`~dotsd.agents.mids.MidFile` ('mid' values) and
:class:`~dotsd.agents.paths.PathMemory` (what the client learnt of the path to its server)
keep their data in one each.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dotsd.errors import LocalError

__all__ = ["JsonStateFile", "StateFileError"]


class StateFileError(LocalError):
    """The state file cannot be read or written; the message names it and says why."""


Validate = Callable[[Any], bool]


class JsonStateFile:
    """``path`` holds a JSON object; ``empty`` is its content when the file does not exist;
    ``valid`` says whether what was read is one of ours. ``error`` is the exception raised
    (a :class:`StateFileError` subclass, so that callers can tell their file's errors)."""

    def __init__(self, path: Path, empty: Callable[[], dict[str, Any]], valid: Validate,
                 error: type[LocalError] = StateFileError, mode: int = 0o600) -> None:
        self.path = path
        self._empty = empty
        self._valid = valid
        self._error = error
        self._mode = mode

    def read(self) -> dict[str, Any]:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return self._empty()
        except OSError as exc:
            raise self._error(f"{self.path}: {exc.strerror or exc}") from None
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise self._error(f"{self.path}: not a dotsd client state file ({exc}); "
                              "move it away to start afresh") from None
        if not isinstance(data, dict) or not self._valid(data):
            raise self._error(f"{self.path}: not a dotsd client state file; move it away "
                              "to start afresh")
        return data

    @contextlib.contextmanager
    def locked(self, *, replace_damaged: bool = False) -> Iterator[dict[str, Any]]:
        """The content, to change in place; written back when the block ends normally.
        ``replace_damaged``: a file that is not ours starts afresh (for a mere cache)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock = open(self.path.with_suffix(".lock"), "a+")  # noqa: SIM115
        except OSError as exc:
            raise self._error(f"{self.path}: {exc.strerror or exc}") from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                data = self.read()
            except LocalError:
                if not replace_damaged or not self.path.is_file():
                    raise
                data = self._empty()
            yield data
            self._write(data)

    def _write(self, data: dict[str, Any]) -> None:
        tmp = self.path.with_suffix(".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, self._mode)
            with open(fd, "w", encoding="utf-8") as out:
                json.dump(data, out, indent=1, sort_keys=True)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            raise self._error(f"{self.path}: {exc.strerror or exc}") from None
