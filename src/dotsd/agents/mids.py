"""'mid' values of a DOTS client kept across runs (RFC 9132 §4.4.1.1).

"'mid' values MUST increase monotonically" per 'cuid' and DOTS server, also across restarts of
the client. :class:`MidFile` keeps the last 'mid' used per (server, cuid) in a small JSON file,
written atomically under an exclusive lock (:class:`~dotsd.agents.statefile.JsonStateFile`),
so that two client commands run at the same time never pick the same 'mid'. A 'mid' is
recorded *before* the request is sent: a request that was sent but whose answer was lost does
not see its 'mid' reused.
The choice itself (rollover included) is :func:`dotsd.signal.mids.next_mid`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dotsd.agents.statefile import JsonStateFile
from dotsd.signal.mids import MidStateError, next_mid
from dotsd.signal.uri import MAX_MID

__all__ = ["MidFile"]


class MidFile:
    """The last 'mid' per (server, cuid), in ``path`` (JSON)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = JsonStateFile(path, lambda: {"mids": {}}, _valid, MidStateError)

    @staticmethod
    def key(server: str, cuid: str) -> str:
        return f"{server}|{cuid}"

    def last(self, server: str, cuid: str) -> int | None:
        value = self._file.read()["mids"].get(self.key(server, cuid))
        return value if isinstance(value, int) else None

    def allocate(self, server: str, cuid: str, active: Iterable[int], attack: bool = False
                 ) -> int:
        """Choose and record the 'mid' of a new request (see :func:`next_mid`)."""
        with self._file.locked() as data:
            mids: dict[str, int] = data["mids"]
            key = self.key(server, cuid)
            mid = next_mid(mids.get(key), active, attack)
            mids[key] = mid
        return mid

    def seen(self, server: str, cuid: str, mid: int) -> None:
        """A 'mid' chosen by the operator: later allocations go above it."""
        with self._file.locked() as data:
            mids: dict[str, int] = data["mids"]
            key = self.key(server, cuid)
            if mid > mids.get(key, -1):
                mids[key] = mid


def _valid(data: dict[str, Any]) -> bool:
    mids = data.get("mids")
    return isinstance(mids, dict) and all(
        isinstance(v, int) and 0 <= v <= MAX_MID for v in mids.values())
