"""The store interface: plain records, typed errors, and the ``Store`` protocol.

A store keeps what a DOTS server has acknowledged so that it survives a restart (RFC 9132
§4.4.1: a mitigation request lives until its 'lifetime' expires or it is withdrawn, whatever
happens to the server process). It keeps values; it does not apply protocol rules: cuid
collision handling (§4.4.1.3), status transitions (§4.4.2, Table 3) and lifetime renewal are
the server's business. The only rule-like operation is ``bind_cuid``, which is an atomic
compare-and-set so that two server instances sharing one database cannot both win a cuid.

Times are wall-clock epoch seconds (``time.time()``), never monotonic: an absolute expiry
must mean the same instant after a restart, so that lifetimes keep counting while the server
is down.
"""

from __future__ import annotations

import math
import os
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol, TypeAlias

from dotsd.errors import LocalError
from dotsd.signal.policy import INDEFINITE

# A JSON-shaped object (what json.loads returns for an object); the store never interprets it.
JsonObject: TypeAlias = dict[str, Any]

# RFC 9132 §4.4.2, Table 9: mitigation status codes 1..8 are assigned.
STATUS_MIN: Final = 1
STATUS_MAX: Final = 8
# 'mid' and 'sid' are uint32 (ietf-dots-signal-channel YANG).
UINT32_MAX: Final = 2**32 - 1


class StoreError(LocalError):
    """Anything that went wrong in the store: one clear message, no traceback needed."""


class StoreCorruptError(StoreError):
    """The database file is not a dotsd database, or is damaged."""


class StoreVersionError(StoreError):
    """The database was written by a newer dotsd (schema version unknown here)."""


class StoreIntegrityError(StoreError):
    """A write broke a constraint, e.g. a mitigation for a cuid that is not bound."""


class StoreClosedError(StoreError):
    """The store was used after ``close()``."""


def _check_time(name: str, value: float | None, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of epoch seconds, not {value!r}")


def _check_uint32(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= UINT32_MAX:
        raise ValueError(f"{name} must be a uint32, not {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class CuidBinding:
    """A cuid and the client identity it belongs to (RFC 9132 §4.4.1.1, Appendix B).

    ``identity`` is the hex SHA-256 of the client certificate's SPKI, or a PSK identity
    (text); whatever the server uses to recognise the same client again.
    """

    cuid: str
    identity: str
    first_seen: float
    last_seen: float

    def __post_init__(self) -> None:
        if not self.cuid or not self.identity:
            raise ValueError("cuid and identity must be non-empty")
        _check_time("first_seen", self.first_seen)
        _check_time("last_seen", self.last_seen)


@dataclass(frozen=True, slots=True, kw_only=True)
class MitigationRecord:
    """One mitigation request as the server acknowledged it (RFC 9132 §4.4.1).

    ``scope`` is one entry of the request's 'scope' list, JSON-shaped; ``expires_at`` is the
    absolute expiry (``None`` for an indefinite 'lifetime' or when the server chose so);
    ``extra`` holds later fields (efficacy, conflict information...) without a schema change.
    """

    cuid: str
    mid: int
    scope: JsonObject = field(hash=False)
    status: int
    lifetime: int
    expires_at: float | None
    trigger_mitigation: bool = True
    cdid: str | None = None
    created: float
    updated: float
    extra: JsonObject = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not self.cuid:
            raise ValueError("cuid must be non-empty")
        _check_uint32("mid", self.mid)
        if not isinstance(self.status, int) or not STATUS_MIN <= self.status <= STATUS_MAX:
            raise ValueError(f"status must be {STATUS_MIN}..{STATUS_MAX}, not {self.status!r}")
        if not isinstance(self.lifetime, int) or self.lifetime < INDEFINITE:
            raise ValueError(f"lifetime must be -1 or a number of seconds, not {self.lifetime!r}")
        _check_time("expires_at", self.expires_at, optional=True)
        _check_time("created", self.created)
        _check_time("updated", self.updated)
        if not isinstance(self.scope, dict) or not isinstance(self.extra, dict):
            raise ValueError("scope and extra must be JSON objects (dict)")


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionConfigRecord:
    """The session configuration a client set with PUT /config (RFC 9132 §4.5.2).

    ``config`` is JSON-shaped: the 'mitigating-config' and 'idle-config' values as accepted.
    """

    cuid: str
    sid: int
    config: JsonObject = field(hash=False)
    updated: float

    def __post_init__(self) -> None:
        if not self.cuid:
            raise ValueError("cuid must be non-empty")
        _check_uint32("sid", self.sid)
        _check_time("updated", self.updated)
        if not isinstance(self.config, dict):
            raise ValueError("config must be a JSON object (dict)")


class Store(Protocol):
    """Durable state of a DOTS server. Every method is one transaction unless it runs inside
    ``transaction()``, in which case it joins it: either everything is kept or nothing.

    A mitigation or session configuration needs its cuid bound first (``bind_cuid``);
    ``unbind_cuid`` removes the binding with everything that belongs to that cuid.
    """

    @property
    def schema_version(self) -> int: ...

    def transaction(self) -> AbstractContextManager[None]: ...

    def close(self) -> None: ...

    # cuid bindings
    def bind_cuid(self, cuid: str, identity: str, now: float | None = None) -> str | None:
        """Bind ``cuid`` to ``identity`` atomically.

        Returns ``None`` when the cuid is now bound to ``identity`` (new binding, or the same
        one seen again: ``last_seen`` is refreshed). Returns the other identity when the cuid
        already belongs to someone else; then nothing is changed.
        """
        ...

    def get_binding(self, cuid: str) -> CuidBinding | None: ...

    def bindings(self) -> list[CuidBinding]:
        """Every cuid binding (the server keeps them in memory)."""
        ...

    def unbind_cuid(self, cuid: str) -> bool: ...

    # mitigations
    def put_mitigation(self, mitigation: MitigationRecord) -> None: ...

    def get_mitigation(self, cuid: str, mid: int) -> MitigationRecord | None: ...

    def mitigations(self, cuid: str) -> list[MitigationRecord]: ...

    def delete_mitigation(self, cuid: str, mid: int) -> bool: ...

    def set_mitigation_status(
        self, cuid: str, mid: int, status: int, now: float | None = None
    ) -> bool: ...

    def active_mitigations(self, now: float) -> list[MitigationRecord]:
        """Mitigations not expired at ``now`` (indefinite ones included), any status."""
        ...

    def expired_mitigations(self, now: float) -> list[MitigationRecord]:
        """Mitigations whose absolute expiry is at or before ``now``."""
        ...

    def all_mitigations(self) -> list[MitigationRecord]: ...

    # session configuration
    def put_session_config(self, config: SessionConfigRecord) -> None: ...

    def get_session_config(self, cuid: str) -> SessionConfigRecord | None: ...

    def session_configs(self) -> list[SessionConfigRecord]:
        """Every client's stored session configuration."""
        ...

    def delete_session_config(self, cuid: str) -> bool: ...


def make_private_dir(path: Path) -> bool:
    """Create ``path`` with mode 0700 if it is missing (True), else check it is a directory
    (False). Raises NotADirectoryError, or the OSError of the file system."""
    if not path.exists():
        path.mkdir(mode=0o700, parents=True)
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
        return True
    if not path.is_dir():
        raise NotADirectoryError(f"state directory {path} is not a directory")
    return False
