"""A mitigation as the DOTS server holds it (RFC 9132 §4.4): plain, frozen records.

:class:`Mitigation` is one request with its status, lifetimes and the mitigator's
:class:`Counters`; :class:`ConflictInfo` its 'conflict-information' (RFC 9132 §4.4.1.3).
Each gives its JSON form for responses and notifications (RFC 7951, as
:func:`dotsd.model.codec.to_cbor` takes it); ``Mitigation.to_dict`` / ``from_dict`` (with its
conflict information and counters) is the form stored.
The rules that create and move them are :class:`dotsd.signal.mitigation.MitigationTable`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dotsd.signal.lifecycle import (
    DEFAULT_ACTIVE_BUT_TERMINATING,
    RUNNING,
    AttackStatus,
    ConflictCause,
    ConflictStatus,
    Status,
)
from dotsd.signal.policy import INDEFINITE
from dotsd.signal.scope import Scope
from dotsd.signal.uri import Content

__all__ = ["ConflictInfo", "Counters", "Mitigation"]


@dataclass(frozen=True, slots=True)
class ConflictInfo:
    """'conflict-information' (RFC 9132 §4.4.1.3, §5.3)."""

    cause: ConflictCause
    status: ConflictStatus | None = None
    retry_timer: int | None = None
    scope: Scope | None = None  # overlapping targets (cause 1)
    mid: int | None = None  # conflicting 'mid' of the same client (cause 1)
    acl_names: tuple[str, ...] = ()  # conflicting ACLs (cause 2)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.status is not None:
            out["conflict-status"] = self.status.label
        out["conflict-cause"] = self.cause.label
        if self.retry_timer is not None:
            out["retry-timer"] = self.retry_timer
        conflict_scope: dict[str, Any] = self.scope.to_json() if self.scope else {}
        conflict_scope.pop("trigger-mitigation", None)
        if self.acl_names:
            conflict_scope["acl-list"] = [{"acl-name": name} for name in self.acl_names]
        if self.mid is not None:
            conflict_scope["mid"] = self.mid
        if conflict_scope:
            out["conflict-scope"] = conflict_scope
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "cause": int(self.cause),
            "status": None if self.status is None else int(self.status),
            "retry_timer": self.retry_timer,
            "scope": None if self.scope is None else self.scope.to_json(),
            "mid": self.mid,
            "acl_names": list(self.acl_names),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConflictInfo:
        return cls(
            cause=ConflictCause(data["cause"]),
            status=None if data.get("status") is None else ConflictStatus(data["status"]),
            retry_timer=data.get("retry_timer"),
            scope=None if data.get("scope") is None else Scope.from_json(data["scope"]),
            mid=data.get("mid"),
            acl_names=tuple(data.get("acl_names", ())),
        )


@dataclass(frozen=True, slots=True)
class Counters:
    """Mitigator statistics (RFC 9132 §4.4.2: bytes-dropped, bps-dropped, pkts-, pps-)."""

    bytes_dropped: int = 0
    bps_dropped: int = 0
    pkts_dropped: int = 0
    pps_dropped: int = 0

    def to_json(self) -> dict[str, str]:  # uint64 / counter64 are strings (RFC 7951 §6.1)
        return {
            "bytes-dropped": str(self.bytes_dropped % 2**64),  # "wraps around" (§4.4.2)
            "bps-dropped": str(self.bps_dropped),
            "pkts-dropped": str(self.pkts_dropped % 2**64),
            "pps-dropped": str(self.pps_dropped),
        }


@dataclass(frozen=True, slots=True)
class Mitigation:
    """One mitigation request as the server holds it. Plain data: :meth:`to_dict` /
    :meth:`from_dict` give the form to store."""

    cuid: str
    mid: int
    scope: Scope
    lifetime: int  # granted lifetime (s), -1 = indefinite
    expires_at: float | None  # None = indefinite
    status: Status
    created_at: float
    cdid: str | None = None
    owner: str | None = None  # authenticated client identity, for 'cuid' collisions
    mitigation_start: float | None = None
    attack_status: AttackStatus | None = None
    conflict: ConflictInfo | None = None
    terminating_until: float | None = None  # end of the active-but-terminating period
    abt_period: float = DEFAULT_ACTIVE_BUT_TERMINATING
    repeats: int = 0  # notifications sent in status 3/7 of a preconfigured request
    counters: Counters | None = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.cuid, self.mid)

    @property
    def is_active(self) -> bool:
        """The mitigator should be mitigating for it (status 1-5)."""
        return self.status in RUNNING

    @property
    def preconfigured(self) -> bool:
        return not self.scope.trigger_mitigation

    def deadline(self) -> float | None:
        """When the record ends by itself (lifetime or active-but-terminating period)."""
        times = [t for t in (self.expires_at, self.terminating_until) if t is not None]
        return min(times) if times else None

    def expired(self, now: float) -> bool:
        deadline = self.deadline()
        return deadline is not None and deadline <= now

    def remaining_lifetime(self, now: float) -> int:
        """RFC 9132 §4.4.2 'lifetime' in status: the remaining lifetime (-1 = indefinite)."""
        deadline = self.deadline()
        if deadline is None:
            return INDEFINITE
        return max(0, math.ceil(deadline - now))

    def status_entry(self, now: float, content: Content = Content.ALL) -> dict[str, Any]:
        """The 'scope' entry of a GET response / notification (RFC 9132 §4.4.2 Figure 14).

        ``content`` (RFC 9132 §4.4.2 Table 2): configuration nodes are those of the request
        and 'lifetime', non-configuration nodes the status ones (the config / non-config split
        of RFC 8782's module); 'mid', the list key, is always present.
        """
        entry: dict[str, Any] = {"mid": self.mid}
        config = content in (Content.CONFIG, Content.ALL)
        state = content in (Content.NON_CONFIG, Content.ALL)
        if (
            state
            and self.mitigation_start is not None
            and self.status is not Status.ATTACK_MITIGATION_SIGNAL_LOSS  # §4.4.2
        ):
            entry["mitigation-start"] = str(int(self.mitigation_start))
        if config:
            entry.update(self.scope.to_json())
            entry["lifetime"] = self.remaining_lifetime(now)
        if state:
            entry["status"] = self.status.label
            if self.conflict is not None:
                entry["conflict-information"] = self.conflict.to_json()
            if self.counters is not None:
                entry.update(self.counters.to_json())
        return entry

    def to_dict(self) -> dict[str, Any]:
        return {
            "cuid": self.cuid,
            "mid": self.mid,
            "cdid": self.cdid,
            "owner": self.owner,
            "scope": self.scope.to_json(),
            "lifetime": self.lifetime,
            "expires_at": self.expires_at,
            "status": int(self.status),
            "created_at": self.created_at,
            "mitigation_start": self.mitigation_start,
            "attack_status": None if self.attack_status is None else int(self.attack_status),
            "conflict": None if self.conflict is None else self.conflict.to_dict(),
            "terminating_until": self.terminating_until,
            "abt_period": self.abt_period,
            "repeats": self.repeats,
            "counters": None
            if self.counters is None
            else {
                "bytes_dropped": self.counters.bytes_dropped,
                "bps_dropped": self.counters.bps_dropped,
                "pkts_dropped": self.counters.pkts_dropped,
                "pps_dropped": self.counters.pps_dropped,
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Mitigation:
        attack = data.get("attack_status")
        conflict = data.get("conflict")
        counters = data.get("counters")
        return cls(
            cuid=data["cuid"],
            mid=int(data["mid"]),
            cdid=data.get("cdid"),
            owner=data.get("owner"),
            scope=Scope.from_json(data["scope"]),
            lifetime=int(data["lifetime"]),
            expires_at=data.get("expires_at"),
            status=Status(data["status"]),
            created_at=float(data["created_at"]),
            mitigation_start=data.get("mitigation_start"),
            attack_status=None if attack is None else AttackStatus(attack),
            conflict=None if conflict is None else ConflictInfo.from_dict(conflict),
            terminating_until=data.get("terminating_until"),
            abt_period=float(data.get("abt_period", DEFAULT_ACTIVE_BUT_TERMINATING)),
            repeats=int(data.get("repeats", 0)),
            counters=None if counters is None else Counters(**counters),
        )
