"""'mid' values of a DOTS client kept across runs (RFC 9132 §4.4.1.1).

"'mid' values MUST increase monotonically" per 'cuid' and DOTS server, also across restarts of
the client. :class:`MidFile` keeps the last 'mid' used per (server, cuid) in a small JSON file,
written atomically (temporary file, fsync, rename) under an exclusive lock, so that two client
commands run at the same time never pick the same 'mid'. A 'mid' is recorded *before* the
request is sent: a request that was sent but whose answer was lost does not see its 'mid' reused.
The choice itself (rollover included) is :func:`dotsd.signal.mids.next_mid`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from dotsd.signal.mids import MidStateError, next_mid
from dotsd.signal.uri import MAX_MID

__all__ = ["MidFile"]


class MidFile:
    """The last 'mid' per (server, cuid), in ``path`` (JSON)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @staticmethod
    def key(server: str, cuid: str) -> str:
        return f"{server}|{cuid}"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock = open(self.path.with_suffix(".lock"), "a+")  # noqa: SIM115
        except OSError as exc:
            raise MidStateError(f"{self.path}: {exc.strerror or exc}") from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._read()
            yield data
            self._write(data)

    def _read(self) -> dict[str, Any]:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {"mids": {}}
        except OSError as exc:
            raise MidStateError(f"{self.path}: {exc.strerror or exc}") from None
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise MidStateError(f"{self.path}: not a dotsd client state file ({exc}); "
                                "move it away to start afresh") from None
        if not isinstance(data, dict) or not isinstance(data.get("mids"), dict) or not all(
                isinstance(v, int) and 0 <= v <= MAX_MID for v in data["mids"].values()):
            raise MidStateError(f"{self.path}: not a dotsd client state file; move it away "
                                "to start afresh")
        return data

    def _write(self, data: dict[str, Any]) -> None:
        tmp = self.path.with_suffix(".tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as out:
                json.dump(data, out, indent=1, sort_keys=True)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            raise MidStateError(f"{self.path}: {exc.strerror or exc}") from None

    def last(self, server: str, cuid: str) -> int | None:
        value = self._read()["mids"].get(self.key(server, cuid))
        return value if isinstance(value, int) else None

    def allocate(self, server: str, cuid: str, active: Iterable[int], attack: bool = False
                 ) -> int:
        """Choose and record the 'mid' of a new request (see :func:`next_mid`)."""
        with self._locked() as data:
            mids: dict[str, int] = data["mids"]
            key = self.key(server, cuid)
            mid = next_mid(mids.get(key), active, attack)
            mids[key] = mid
        return mid

    def seen(self, server: str, cuid: str, mid: int) -> None:
        """A 'mid' chosen by the operator: later allocations go above it."""
        with self._locked() as data:
            mids: dict[str, int] = data["mids"]
            key = self.key(server, cuid)
            if mid > mids.get(key, -1):
                mids[key] = mid
