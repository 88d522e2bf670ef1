"""DOTS mitigation requests, server side: the rules of RFC 9132 §4.4 as plain code.

Sans-IO: nothing here reads a clock (``now`` is an argument, wall-clock epoch seconds, so that
``mitigation-start`` is meaningful, RFC 9132 §4.4.2), touches a socket or a store. A
:class:`MitigationTable` holds every mitigation of the server in memory, keyed by
``(cuid, mid)``; each method returns what changed as small frozen dataclasses (:class:`Change`)
so the caller can persist (``Mitigation.to_dict``), notify observers (RFC 9132 §4.4.2.1) and
drive the mitigator. Bodies are JSON-shaped (RFC 7951), as :func:`dotsd.model.codec.to_cbor`
takes them.

The status lifecycle (RFC 9132 §4.4.2 Table 3) is the explicit table :data:`TRANSITIONS`: one
screen lists every status and every event that moves it (h11 style). Statuses 1-4 are an
active mitigation, 5 is active but terminating (after the client's DELETE, RFC 9132 §4.4.4),
7 withdrawn by the server and 8 a preconfigured request waiting for a signal loss (both
inactive); 6 (terminated) is final: the record leaves the table.

Reading of RFC 9132 §4.4.1.3 that this module implements, rule by rule:

* a PUT with a 'mid' the client already has is a refresh / efficacy update (§4.4.1.3 last
  paragraph, §4.4.3): the scope must be unchanged apart from 'lifetime' (else 4.00); 2.04;
* a PUT with a new 'mid' is 2.01; if it overlaps (§4.4.1.3 "common IP address, IP prefix, FQDN,
  URI, or alias") a request of the same client with the same 'trigger-mitigation' type and a
  higher 'mid', it is rejected with 4.09 (conflict-cause 1, conflict-scope with that 'mid');
  otherwise the overlapped lower 'mid's "MUST be automatically deleted";
* overlapping requests of one client with distinct 'trigger-mitigation' types: an *active*
  preconfigured request is withdrawn (status 7, later 8) in favour of the immediate one;
* a conflict with another client's active request is answered per :class:`ConflictPolicy`:
  maintained (2.01 with conflict-status 2) or rejected (4.09 with conflict-status 1 and
  'retry-timer' = the remaining lifetime of the active request);
* a 'cuid' owned by another authenticated client is 4.09 conflict-cause 3 (Figure 11).

"Overlap" here additionally requires the protocols and the port ranges to intersect (absent
means all): RFC 9132 Figure 14 shows two active requests of one client with the same
'target-prefix' and distinct 'target-protocol', which the plain wording would forbid. The strict
wording is available with ``MitigationTable(..., match_ports_protocols=False)``.
"""

from __future__ import annotations

import bisect
import functools
import heapq
import ipaddress
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum, IntEnum
from typing import Any, Final, Self

from dotsd.coap.numbers import Code
from dotsd.errors import LocalError
from dotsd.model import yang
from dotsd.model.errors import ModelError
from dotsd.signal.errors import (
    BadRequest,
    Conflict,
    NotFound,
    ServiceUnavailable,
    from_model_error,
)
from dotsd.signal.mids import ROLLOVER_MID
from dotsd.signal.policy import INDEFINITE, LAB, IPNetwork, Policy
from dotsd.signal.targets import TargetIndex, fqdn_key
from dotsd.signal.uri import MAX_MID, Content

__all__ = [
    "ACTIVE",
    "DEFAULT_ABT_MAX",
    "DEFAULT_ACTIVE_BUT_TERMINATING",
    "MITIGATION_MEMBER",
    "RUNNING",
    "TRANSITIONS",
    "AttackStatus",
    "Change",
    "ConflictCause",
    "ConflictInfo",
    "ConflictPolicy",
    "ConflictStatus",
    "Counters",
    "DeleteOutcome",
    "GetOutcome",
    "Ignored",
    "InvalidTransition",
    "Mitigation",
    "MitigationEvent",
    "MitigationPutOutcome",
    "MitigationRequest",
    "MitigationTable",
    "PortRange",
    "Reason",
    "Scope",
    "Status",
    "common_targets",
    "conflict_body",
    "parse_request",
    "transition",
]

MITIGATION_MEMBER: Final = "ietf-dots-signal-channel:mitigation-scope"  # RFC 9132 §6 Table 5 key 1

DEFAULT_ACTIVE_BUT_TERMINATING: Final = 120.0  # RFC 9132 §4.4.4 "SHOULD be ... 120 seconds"
DEFAULT_ABT_MAX: Final = 300.0  # RFC 9132 §4.4.4 "up to a maximum of 300 seconds"
PRECONFIGURED_REPEATS: Final = 4  # RFC 9132 §4.4.2 Table 3 "transmitted four times"


# ---------------------------------------------------------------------------------------------
# Vocabulary (iana-dots-signal-channel, RFC 9132 §5.2; labels as in RFC 9132 §10.6.2-10.6.5)


class _Labelled(IntEnum):
    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")

    @classmethod
    def from_label(cls, label: str) -> Self:
        return cls[label.upper().replace("-", "_")]


class Status(_Labelled):
    """RFC 9132 §4.4.2 Table 3."""

    ATTACK_MITIGATION_IN_PROGRESS = 1
    ATTACK_SUCCESSFULLY_MITIGATED = 2
    ATTACK_STOPPED = 3
    ATTACK_EXCEEDED_CAPABILITY = 4
    DOTS_CLIENT_WITHDRAWN_MITIGATION = 5  # active but terminating (RFC 9132 §4.4.4)
    ATTACK_MITIGATION_TERMINATED = 6
    ATTACK_MITIGATION_WITHDRAWN = 7  # by the DOTS server
    ATTACK_MITIGATION_SIGNAL_LOSS = 8  # preconfigured, triggered only on signal loss


class AttackStatus(_Labelled):
    """RFC 9132 §4.4.3 Table 4."""

    UNDER_ATTACK = 1
    ATTACK_SUCCESSFULLY_MITIGATED = 2


class ConflictStatus(_Labelled):
    """RFC 9132 §4.4.1.3 'conflict-status'."""

    REQUEST_INACTIVE_OTHER_ACTIVE = 1
    REQUEST_ACTIVE = 2
    ALL_REQUESTS_INACTIVE = 3


class ConflictCause(_Labelled):
    """RFC 9132 §4.4.1.3 'conflict-cause' (1-3) and later registrations (extension points)."""

    OVERLAPPING_TARGETS = 1
    CONFLICT_WITH_ACCEPTLIST = 2
    CUID_COLLISION = 3
    REQUEST_REJECTED_LEGITIMATE_TRAFFIC = 4  # RFC 9066 §7.2 (Call Home)
    OVERLAPPING_PIPES = 5  # RFC 9244 §13.2 (telemetry)


ACTIVE: Final = frozenset(
    {
        Status.ATTACK_MITIGATION_IN_PROGRESS,
        Status.ATTACK_SUCCESSFULLY_MITIGATED,
        Status.ATTACK_STOPPED,
        Status.ATTACK_EXCEEDED_CAPABILITY,
    }
)
"""A mitigation running on behalf of a request the client maintains (status 1-4)."""

RUNNING: Final = ACTIVE | {Status.DOTS_CLIENT_WITHDRAWN_MITIGATION}
"""The mitigator should be mitigating (status 1-5): :data:`ACTIVE` and the active-but-
terminating period after a withdrawal (RFC 9132 §4.4.4)."""


# ---------------------------------------------------------------------------------------------
# Lifecycle table


class MitigationEvent(Enum):
    """What moves a mitigation's status."""

    MITIGATING = "mitigating"  # mitigator: attack traffic is being dropped
    EXCEEDED = "exceeded"  # mitigator: attack exceeds its capability
    ATTACK_STOPPED = "attack-stopped"  # mitigator: no more attack traffic
    ATTACK_RESUMED = "attack-resumed"  # mitigator: attack traffic again
    CLIENT_WITHDRAW = "client-withdraw"  # DELETE (RFC 9132 §4.4.4)
    TERMINATING_ELAPSED = "terminating-elapsed"  # active-but-terminating period over (§4.4.4)
    LIFETIME_EXPIRED = "lifetime-expired"  # RFC 9132 §4.4.1.1 lifetime
    OVERRIDDEN = "overridden"  # higher overlapping 'mid' (RFC 9132 §4.4.1.3)
    SERVER_WITHDRAW = "server-withdraw"  # RFC 9132 §4.4.1.3 / §4.4.2.1 (status 7)
    REARM = "rearm"  # preconfigured, after 3 or 7 sent four times (Table 3)
    SIGNAL_LOSS = "signal-loss"  # session lost: preconfigured request triggered (§4.4.1.3)


S, E = Status, MitigationEvent
TRANSITIONS: Final[Mapping[Status, Mapping[MitigationEvent, Status]]] = {
    S.ATTACK_MITIGATION_IN_PROGRESS: {
        E.MITIGATING: S.ATTACK_SUCCESSFULLY_MITIGATED,
        E.EXCEEDED: S.ATTACK_EXCEEDED_CAPABILITY,
        E.ATTACK_STOPPED: S.ATTACK_STOPPED,
        E.CLIENT_WITHDRAW: S.DOTS_CLIENT_WITHDRAWN_MITIGATION,
        E.SERVER_WITHDRAW: S.ATTACK_MITIGATION_WITHDRAWN,
        E.LIFETIME_EXPIRED: S.ATTACK_MITIGATION_TERMINATED,
        E.OVERRIDDEN: S.ATTACK_MITIGATION_TERMINATED,
    },
    S.ATTACK_SUCCESSFULLY_MITIGATED: {
        E.EXCEEDED: S.ATTACK_EXCEEDED_CAPABILITY,
        E.ATTACK_STOPPED: S.ATTACK_STOPPED,
        E.CLIENT_WITHDRAW: S.DOTS_CLIENT_WITHDRAWN_MITIGATION,
        E.SERVER_WITHDRAW: S.ATTACK_MITIGATION_WITHDRAWN,
        E.LIFETIME_EXPIRED: S.ATTACK_MITIGATION_TERMINATED,
        E.OVERRIDDEN: S.ATTACK_MITIGATION_TERMINATED,
    },
    S.ATTACK_STOPPED: {
        E.ATTACK_RESUMED: S.ATTACK_MITIGATION_IN_PROGRESS,
        E.MITIGATING: S.ATTACK_SUCCESSFULLY_MITIGATED,
        E.EXCEEDED: S.ATTACK_EXCEEDED_CAPABILITY,
        E.CLIENT_WITHDRAW: S.DOTS_CLIENT_WITHDRAWN_MITIGATION,
        E.SERVER_WITHDRAW: S.ATTACK_MITIGATION_WITHDRAWN,
        E.REARM: S.ATTACK_MITIGATION_SIGNAL_LOSS,  # preconfigured only
        E.LIFETIME_EXPIRED: S.ATTACK_MITIGATION_TERMINATED,
        E.OVERRIDDEN: S.ATTACK_MITIGATION_TERMINATED,
    },
    S.ATTACK_EXCEEDED_CAPABILITY: {
        E.MITIGATING: S.ATTACK_SUCCESSFULLY_MITIGATED,
        E.ATTACK_STOPPED: S.ATTACK_STOPPED,
        E.CLIENT_WITHDRAW: S.DOTS_CLIENT_WITHDRAWN_MITIGATION,
        E.SERVER_WITHDRAW: S.ATTACK_MITIGATION_WITHDRAWN,
        E.LIFETIME_EXPIRED: S.ATTACK_MITIGATION_TERMINATED,
        E.OVERRIDDEN: S.ATTACK_MITIGATION_TERMINATED,
    },
    S.DOTS_CLIENT_WITHDRAWN_MITIGATION: {
        E.TERMINATING_ELAPSED: S.ATTACK_MITIGATION_TERMINATED,
        E.LIFETIME_EXPIRED: S.ATTACK_MITIGATION_TERMINATED,
    },
    S.ATTACK_MITIGATION_TERMINATED: {},
    S.ATTACK_MITIGATION_WITHDRAWN: {
        E.CLIENT_WITHDRAW: S.ATTACK_MITIGATION_TERMINATED,  # nothing left to terminate
        E.REARM: S.ATTACK_MITIGATION_SIGNAL_LOSS,  # preconfigured only
        E.LIFETIME_EXPIRED: S.ATTACK_MITIGATION_TERMINATED,
        E.OVERRIDDEN: S.ATTACK_MITIGATION_TERMINATED,
    },
    S.ATTACK_MITIGATION_SIGNAL_LOSS: {
        E.SIGNAL_LOSS: S.ATTACK_MITIGATION_IN_PROGRESS,
        E.CLIENT_WITHDRAW: S.ATTACK_MITIGATION_TERMINATED,  # never active: no ABT period
        E.LIFETIME_EXPIRED: S.ATTACK_MITIGATION_TERMINATED,
        E.OVERRIDDEN: S.ATTACK_MITIGATION_TERMINATED,
    },
}
del S, E


class InvalidTransition(LocalError):
    """An event not allowed in the current status (a caller's mistake, not a peer's)."""

    def __init__(self, status: Status, event: MitigationEvent) -> None:
        self.status = status
        self.event = event
        super().__init__(f"event {event.value!r} not allowed in status {status.label!r}")


def transition(status: Status, event: MitigationEvent) -> Status:
    """The status after ``event`` per :data:`TRANSITIONS`; raise :class:`InvalidTransition`."""
    try:
        return TRANSITIONS[status][event]
    except KeyError:
        raise InvalidTransition(status, event) from None


# ---------------------------------------------------------------------------------------------
# Scope and request parsing


@dataclass(frozen=True, slots=True)
class PortRange:
    """A 'target-port-range' entry; ``upper`` None means the single port ``lower``."""

    lower: int
    upper: int | None = None

    @property
    def high(self) -> int:
        return self.lower if self.upper is None else self.upper

    def to_json(self) -> dict[str, int]:
        out = {"lower-port": self.lower}
        if self.upper is not None:
            out["upper-port"] = self.upper
        return out


_INVALID_TARGETS: Final[tuple[IPNetwork, ...]] = (
    ipaddress.ip_network("127.0.0.0/8"),  # loopback
    ipaddress.ip_network("224.0.0.0/4"),  # multicast
    ipaddress.ip_network("255.255.255.255/32"),  # limited broadcast
    ipaddress.ip_network("::1/128"),  # loopback
    ipaddress.ip_network("ff00::/8"),  # multicast
)


@functools.lru_cache(maxsize=1 << 16)
def _network(text: str) -> IPNetwork:
    # Cached: every new request is compared with every stored scope (§4.4.1.3), whose
    # prefixes would otherwise be parsed again each time. Bounded, networks are immutable.
    return ipaddress.ip_network(text, strict=False)


@dataclass(frozen=True, slots=True)
class Scope:
    """The configuration part of a mitigation request (RFC 9132 §4.4.1.1 Figure 6), in the
    order the client sent it (echoed in GET responses, RFC 9132 §4.4.2)."""

    target_prefix: tuple[str, ...] = ()
    target_port_range: tuple[PortRange, ...] = ()
    target_protocol: tuple[int, ...] = ()
    target_fqdn: tuple[str, ...] = ()
    target_uri: tuple[str, ...] = ()
    alias_name: tuple[str, ...] = ()
    trigger_mitigation: bool = True

    @property
    def networks(self) -> tuple[IPNetwork, ...]:
        return tuple(_network(p) for p in self.target_prefix)

    def canonical(self) -> tuple[Any, ...]:
        """Order-insensitive identity, to tell whether a refresh repeats the request
        (RFC 9132 §4.4.1.3, §4.4.3)."""
        return (
            frozenset(self.networks),
            frozenset((r.lower, r.high) for r in self.target_port_range),
            frozenset(self.target_protocol),
            frozenset(fqdn_key(f) for f in self.target_fqdn),
            frozenset(self.target_uri),
            frozenset(self.alias_name),
            self.trigger_mitigation,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.target_prefix:
            out["target-prefix"] = list(self.target_prefix)
        if self.target_port_range:
            out["target-port-range"] = [r.to_json() for r in self.target_port_range]
        if self.target_protocol:
            out["target-protocol"] = list(self.target_protocol)
        if self.target_fqdn:
            out["target-fqdn"] = list(self.target_fqdn)
        if self.target_uri:
            out["target-uri"] = list(self.target_uri)
        if self.alias_name:
            out["alias-name"] = list(self.alias_name)
        if not self.trigger_mitigation:
            out["trigger-mitigation"] = False
        return out

    @classmethod
    def from_json(cls, entry: Mapping[str, Any]) -> Scope:
        return cls(
            target_prefix=tuple(entry.get("target-prefix", ())),
            target_port_range=tuple(
                PortRange(int(r["lower-port"]), r.get("upper-port"))
                for r in entry.get("target-port-range", ())
            ),
            target_protocol=tuple(int(p) for p in entry.get("target-protocol", ())),
            target_fqdn=tuple(entry.get("target-fqdn", ())),
            target_uri=tuple(entry.get("target-uri", ())),
            alias_name=tuple(entry.get("alias-name", ())),
            trigger_mitigation=bool(entry.get("trigger-mitigation", True)),
        )


@dataclass(frozen=True, slots=True)
class MitigationRequest:
    """A validated PUT body (RFC 9132 §4.4.1.1, §4.4.3)."""

    scope: Scope
    lifetime: int | None  # None: absent (allowed only in a refresh / efficacy update)
    attack_status: AttackStatus | None = None


# Nodes only a DOTS server sends (RFC 9132 §5.3 case server-to-client-only). The YANG
# validation rejects them already; checked again so this rule does not hinge on the validator.
_SERVER_ONLY: Final = frozenset(
    {
        "mid",
        "mitigation-start",
        "status",
        "conflict-information",
        "bytes-dropped",
        "bps-dropped",
        "pkts-dropped",
        "pps-dropped",
    }
)
_TARGETS: Final = ("target-prefix", "target-fqdn", "target-uri", "alias-name")


def _check_not_empty(value: Any, path: str) -> None:
    """RFC 9132 §4.4.1.1: "Attributes ... with empty values MUST NOT be present"."""
    if value == "" or value == [] or value == {}:
        raise BadRequest(f"{path} has an empty value", rule="RFC 9132 §4.4.1.1")
    if isinstance(value, Mapping):
        for key, item in value.items():
            _check_not_empty(item, f"{path}/{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_not_empty(item, f"{path}/{index}")


def parse_request(body: Mapping[str, Any]) -> MitigationRequest:
    """Validate a mitigation PUT body (YANG, then the rules YANG cannot express).

    Raises :class:`BadRequest` (or the 4.xx of a model error) per RFC 9132 §4.4.1.3: "If the
    request is missing a mandatory attribute, ..., includes multiple 'scope' parameters, or
    contains invalid or unknown parameters, the DOTS server MUST reply with 4.00".
    """
    try:
        kind = yang.validate_request(body)
    except ModelError as exc:
        raise from_model_error(exc) from None
    if kind is None or kind.member != MITIGATION_MEMBER:
        raise BadRequest(f"the body of a mitigation request is {MITIGATION_MEMBER}",
                         rule="RFC 9132 §4.4.1")
    content = body[MITIGATION_MEMBER]
    _check_not_empty(content, f"/{MITIGATION_MEMBER}")
    scopes = content.get("scope")
    if not isinstance(scopes, list) or len(scopes) != 1:
        raise BadRequest(
            "exactly one 'scope' entry is required", rule="RFC 9132 §4.4.1.1, §4.4.1.3"
        )
    (entry,) = scopes
    forbidden = sorted(_SERVER_ONLY.intersection(entry))
    if forbidden:
        raise BadRequest(
            f"{forbidden} are set by the DOTS server only ('cuid' and 'mid' are Uri-Path "
            "parameters)",
            rule="RFC 9132 §4.4.1.1, §5.3",
        )
    if not any(name in entry for name in _TARGETS):
        raise BadRequest(
            "at least one of 'target-prefix', 'target-fqdn', 'target-uri', 'alias-name' "
            "MUST be present",
            rule="RFC 9132 §4.4.1.1",
        )
    scope = Scope.from_json(entry)
    for port_range in scope.target_port_range:
        if port_range.high < port_range.lower:  # also a YANG 'must' (RFC 8783)
            raise BadRequest(
                f"upper-port {port_range.upper} < lower-port {port_range.lower}",
                rule="RFC 9132 §4.4.1.1",
            )
    for prefix in scope.networks:
        if any(prefix.overlaps(bad) for bad in _INVALID_TARGETS):
            raise BadRequest(
                f"target-prefix {prefix} includes broadcast, loopback or multicast addresses",
                rule="RFC 9132 §4.4.1.1",
            )
    lifetime = entry.get("lifetime")
    if lifetime is not None:
        lifetime = int(lifetime)
        if lifetime == 0:
            raise BadRequest("'lifetime' 0 is invalid", rule="RFC 9132 §4.4.1.3")
    attack_status = entry.get("attack-status")
    return MitigationRequest(
        scope=scope,
        lifetime=lifetime,
        attack_status=AttackStatus.from_label(attack_status) if attack_status else None,
    )


# ---------------------------------------------------------------------------------------------
# Overlap


def _common_prefixes(a: Sequence[IPNetwork], b: Sequence[IPNetwork]) -> list[IPNetwork]:
    """For every overlapping pair (x of ``a``, y of ``b``), in the order of the pairs, the more
    specific of the two, once. Two IP prefixes overlap only when one contains the other, so
    the partners of x are found by lookup (its supernets in ``b``) and by range (the
    prefixes of ``b`` starting inside x) instead of comparing every pair: a request naming
    thousands of prefixes must not stall the server (it was O(len(a) x len(b)))."""
    if not a or not b:
        return []
    exact: dict[tuple[int, int, int], list[int]] = {}  # (version, length, start) -> indexes
    by_start: dict[int, list[tuple[int, int]]] = {4: [], 6: []}  # version -> (start, index)
    for i, y in enumerate(b):
        start = int(y.network_address)
        exact.setdefault((y.version, y.prefixlen, start), []).append(i)
        by_start[y.version].append((start, i))
    lengths = {v: sorted({y.prefixlen for y in b if y.version == v}) for v in (4, 6)}
    starts: dict[int, list[int]] = {}
    indexes: dict[int, list[int]] = {}
    for version, items in by_start.items():
        items.sort()
        starts[version] = [start for start, _ in items]
        indexes[version] = [i for _, i in items]
    common: list[IPNetwork] = []
    seen: set[IPNetwork] = set()
    for x in a:
        version, bits = x.version, x.max_prefixlen
        start, end = int(x.network_address), int(x.broadcast_address)
        partners: list[int] = []
        for length in lengths[version]:  # y contains x (or equals it)
            if length > x.prefixlen:
                break
            mask = ((1 << length) - 1) << (bits - length)
            partners.extend(exact.get((version, length, start & mask), ()))
        low = bisect.bisect_left(starts[version], start)
        high = bisect.bisect_right(starts[version], end)
        partners.extend(i for i in indexes[version][low:high]  # x contains y
                        if b[i].prefixlen > x.prefixlen)
        for i in sorted(partners):
            y = b[i]
            smaller = x if x.prefixlen >= y.prefixlen else y
            if smaller not in seen:
                seen.add(smaller)
                common.append(smaller)
    return common


def _merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return merged


def _common_ports(a: Scope, b: Scope) -> list[tuple[int, int]] | None:
    """None: every port (neither names ports); [] : disjoint."""
    if not a.target_port_range and not b.target_port_range:
        return None
    full = [PortRange(0, 65535)]
    ra = a.target_port_range or full
    rb = b.target_port_range or full
    pairs = [
        (max(x.lower, y.lower), min(x.high, y.high))
        for x in ra
        for y in rb
        if max(x.lower, y.lower) <= min(x.high, y.high)
    ]
    return _merge(pairs)


def _common_protocols(a: Scope, b: Scope) -> list[int] | None:
    """None: every protocol ('target-protocol' absent on both sides, RFC 9132 §4.4.1.1)."""
    if not a.target_protocol and not b.target_protocol:
        return None
    if not a.target_protocol:
        return list(b.target_protocol)
    if not b.target_protocol:
        return list(a.target_protocol)
    return [p for p in a.target_protocol if p in b.target_protocol]


def common_targets(a: Scope, b: Scope, *, match_ports_protocols: bool = True) -> Scope | None:
    """The overlap of two scopes (RFC 9132 §4.4.1.3: "a common IP address, IP prefix, FQDN,
    URI, or alias"), as the content of a 'conflict-scope'; None if they do not overlap.

    With ``match_ports_protocols`` the protocols and port ranges must intersect too (absent =
    all). FQDNs / URIs / aliases are compared by name: resolving them is not sans-IO.
    """
    prefixes = _common_prefixes(a.networks, b.networks)
    fqdns_b = {fqdn_key(f) for f in b.target_fqdn}
    fqdns = [f for f in a.target_fqdn if fqdn_key(f) in fqdns_b]
    uris = [u for u in a.target_uri if u in b.target_uri]
    aliases = [n for n in a.alias_name if n in b.alias_name]
    if not (prefixes or fqdns or uris or aliases):
        return None
    ports: list[tuple[int, int]] | None = None
    protocols: list[int] | None = None
    if match_ports_protocols:
        ports = _common_ports(a, b)
        protocols = _common_protocols(a, b)
        if ports == [] or protocols == []:
            return None
    return Scope(
        target_prefix=tuple(str(p) for p in prefixes),
        target_port_range=tuple(
            PortRange(low, None if high == low else high) for low, high in ports or ()
        ),
        target_protocol=tuple(protocols or ()),
        target_fqdn=tuple(fqdns),
        target_uri=tuple(uris),
        alias_name=tuple(aliases),
    )


def _mid_newer(new: int, old: int) -> bool:
    """RFC 9132 §4.4.1.1: 'mid' values increase monotonically and restart at 0 once they
    reach 3/4 of 2^32 - 1; a small 'mid' after such a large one is the newer."""
    if old >= ROLLOVER_MID and new < ROLLOVER_MID // 3:
        return True
    if new >= ROLLOVER_MID and old < ROLLOVER_MID // 3:
        return False
    return new > old


# ---------------------------------------------------------------------------------------------
# Records


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


# ---------------------------------------------------------------------------------------------
# Outcomes


class Reason(Enum):
    """Why a :class:`Change` happened."""

    CREATED = "created"  # new request (2.01)
    REFRESHED = "refreshed"  # same 'mid' again (2.04, RFC 9132 §4.4.1.3)
    EFFICACY_UPDATE = "efficacy-update"  # RFC 9132 §4.4.3
    MITIGATOR = "mitigator"  # status reported by the mitigator
    WITHDRAWN_BY_CLIENT = "withdrawn-by-client"  # DELETE: active but terminating (§4.4.4)
    TERMINATED = "terminated"  # record gone (DELETE of an inactive one, ABT period over)
    EXPIRED = "expired"  # lifetime over (RFC 9132 §4.4.1.1)
    OVERRIDDEN = "overridden"  # by a higher overlapping 'mid' (RFC 9132 §4.4.1.3)
    PREEMPTED = "preempted"  # withdrawn by the server, status 7 (RFC 9132 §4.4.1.3)
    TRIGGERED = "triggered"  # preconfigured request activated by signal loss
    REARMED = "rearmed"  # preconfigured request back to 8 (Table 3)
    CONFLICT = "conflict"  # conflict-information set (RFC 9132 §4.4.2.1)
    CONFLICT_RESOLVED = "conflict-resolved"  # the other client's request is no longer active


@dataclass(frozen=True, slots=True)
class Change:
    """What happened to one mitigation. ``mitigation`` is the record after the change (for a
    removed one its last state, status 6); ``before`` the status before (None if new).

    The caller persists (``removed`` → delete the key, else store ``mitigation.to_dict()``),
    notifies the client's observers and starts / stops the mitigator per
    ``mitigation.is_active`` (and ``removed``).
    """

    reason: Reason
    mitigation: Mitigation
    before: Status | None = None
    removed: bool = False

    @property
    def key(self) -> tuple[str, int]:
        return self.mitigation.key


@dataclass(frozen=True, slots=True)
class MitigationPutOutcome:
    code: Code  # 2.01 Created or 2.04 Changed (RFC 9132 §4.4.1.3)
    body: dict[str, Any]
    mitigation: Mitigation
    changes: tuple[Change, ...]


@dataclass(frozen=True, slots=True)
class Ignored:
    """RFC 9132 §4.4.3: a PUT with If-Match matching no mitigation "is silently ignored"."""

    reason: str


@dataclass(frozen=True, slots=True)
class GetOutcome:
    code: Code  # 2.05 Content
    body: dict[str, Any]
    mitigations: tuple[Mitigation, ...]


@dataclass(frozen=True, slots=True)
class DeleteOutcome:
    code: Code  # 2.02 Deleted, no payload (RFC 9132 §4.4.4)
    changes: tuple[Change, ...]


class ConflictPolicy(Enum):
    """What to do with a request overlapping another client's active one (RFC 9132 §4.4.1.3:
    "the DOTS server may return 2.01 (Created) or 4.09 (Conflict)")."""

    ACCEPT = "accept"  # maintain both: 2.01 + conflict-status 2 (and notify the other side)
    REJECT = "reject"  # 4.09 + conflict-status 1 + retry-timer


def _body(entries: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    return {MITIGATION_MEMBER: {"scope": [dict(e) for e in entries]}}


def conflict_body(info: ConflictInfo) -> dict[str, Any]:
    """The body of a 4.09 response (RFC 9132 §4.4.1.3, Figure 11 (2))."""
    return _body([{"conflict-information": info.to_json()}])


AliasCheck = Callable[[str, str | None, str], bool]
"""(cuid, cdid, alias-name) -> whether that client created the alias (RFC 9132 §4.4.1.3)."""


# ---------------------------------------------------------------------------------------------
# The table


def _other_client_conflict(m: Mitigation) -> bool:
    """Whether ``m`` carries the overlap with another client's active request (cause 1,
    RFC 9132 §4.4.1.3) that :meth:`MitigationTable._resolve_conflicts` clears once it ends."""
    info = m.conflict
    return (info is not None and info.cause is ConflictCause.OVERLAPPING_TARGETS
            and info.mid is None)  # same-client conflicts are never stored; be safe


class MitigationTable:
    """All mitigations of a DOTS server (see the module docstring)."""

    def __init__(
        self,
        policy: Policy = LAB,
        *,
        conflict_policy: ConflictPolicy = ConflictPolicy.ACCEPT,
        active_but_terminating: float = DEFAULT_ACTIVE_BUT_TERMINATING,
        active_but_terminating_max: float = DEFAULT_ABT_MAX,
        match_ports_protocols: bool = True,
        alias_check: AliasCheck | None = None,
        records: Iterable[Mitigation] = (),
    ) -> None:
        self.policy = policy
        self.conflict_policy = conflict_policy
        self.abt_initial = active_but_terminating
        self.abt_max = active_but_terminating_max
        self.match_ports_protocols = match_ports_protocols
        self.alias_check = alias_check
        self._records: dict[tuple[str, int], Mitigation] = {}
        # Indexes kept by _store / _drop, so that no request costs O(all mitigations):
        self._by_client: dict[str, dict[int, Mitigation]] = {}
        self._targets = TargetIndex()
        self._deadlines: list[tuple[float, tuple[str, int]]] = []  # heap, stale entries skipped
        self._expired: deque[Change] = deque()  # what handle_timer ended, for next_event
        self._conflicted: set[tuple[str, int]] = set()  # with another client's overlap (cause 1)
        for record in records:
            self._store(record)

    # -- persistence ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"mitigations": [m.to_dict() for m in self]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], **kwargs: Any) -> MitigationTable:
        records = [Mitigation.from_dict(d) for d in data.get("mitigations", ())]
        return cls(records=records, **kwargs)

    def __iter__(self) -> Iterator[Mitigation]:
        return iter(sorted(self._records.values(), key=lambda m: (m.cuid, m.mid)))

    def __len__(self) -> int:
        return len(self._records)

    def lookup(self, cuid: str, mid: int) -> Mitigation | None:
        return self._records.get((cuid, mid))

    def of_client(self, cuid: str) -> list[Mitigation]:
        return sorted(self._by_client.get(cuid, {}).values(), key=lambda m: m.mid)

    def get_timer(self) -> float | None:
        """The earliest time :meth:`handle_timer` has something to do (to arm one timer)."""
        heap = self._deadlines
        while heap and not self._due_entry(*heap[0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    # -- indexes ----------------------------------------------------------------------------

    def _store(self, m: Mitigation) -> None:
        """Put a record in the table (new, or a new version of the one with its key)."""
        old = self._records.get(m.key)
        self._records[m.key] = m
        self._by_client.setdefault(m.cuid, {})[m.mid] = m
        if old is None:
            self._targets.add(m.key, m.scope)
        elif old.scope is not m.scope:
            self._targets.remove(m.key, old.scope)
            self._targets.add(m.key, m.scope)
        deadline = m.deadline()
        if deadline is not None and (old is None or old.deadline() != deadline):
            heapq.heappush(self._deadlines, (deadline, m.key))
            if len(self._deadlines) > 2 * len(self._records) + 64:
                # Refreshes leave stale entries behind; a client refreshing in a loop must
                # not grow the heap without bound: rebuild it (amortised O(1) per push).
                self._deadlines = [(d, k) for k, r in self._records.items()
                                   if (d := r.deadline()) is not None]
                heapq.heapify(self._deadlines)
        if _other_client_conflict(m):
            self._conflicted.add(m.key)
        else:
            self._conflicted.discard(m.key)

    def _drop(self, key: tuple[str, int]) -> None:
        old = self._records.pop(key)
        mine = self._by_client[old.cuid]
        del mine[old.mid]
        if not mine:
            del self._by_client[old.cuid]
        self._targets.remove(key, old.scope)
        self._conflicted.discard(key)

    def _due_entry(self, deadline: float, key: tuple[str, int]) -> bool:
        """Whether a heap entry still stands for its record (not removed, same deadline)."""
        m = self._records.get(key)
        return m is not None and m.deadline() == deadline

    def _overlapping(self, scope: Scope) -> list[Mitigation]:
        """The records sharing a target with ``scope``, in (cuid, mid) order."""
        return [self._records[k] for k in sorted(self._targets.candidates(scope))]

    # -- helpers ----------------------------------------------------------------------------

    def _overlap(self, a: Scope, b: Scope) -> Scope | None:
        return common_targets(a, b, match_ports_protocols=self.match_ports_protocols)

    def _visible(self, m: Mitigation, identity: str | None) -> bool:
        # RFC 9132 §4.1: "A DOTS client is entitled to access only the resources it creates."
        return identity is None or m.owner is None or m.owner == identity

    def _check_cuid(self, cuid: str, identity: str | None) -> None:
        if identity is None:
            return
        for m in self._by_client.get(cuid, {}).values():
            if m.owner is not None and m.owner != identity:
                # RFC 9132 §4.4.1.1 / §4.4.1.3 cause 3, Figure 11: no conflict-status,
                # conflict-scope or retry-timer.
                raise Conflict(
                    f"cuid {cuid!r} is already in use by another DOTS client",
                    body=conflict_body(ConflictInfo(ConflictCause.CUID_COLLISION)),
                    rule="RFC 9132 §4.4.1.1, §4.4.1.3",
                )

    def _expiry(self, lifetime: int, now: float) -> float | None:
        return None if lifetime == INDEFINITE else now + lifetime

    def _move(
        self, m: Mitigation, event: MitigationEvent, now: float, reason: Reason, **changes: Any
    ) -> Change:
        after_status = transition(m.status, event)
        if after_status is Status.ATTACK_MITIGATION_TERMINATED:
            after = replace(m, status=after_status, **changes)
            self._drop(m.key)
            return Change(reason, after, before=m.status, removed=True)
        if after_status is Status.ATTACK_MITIGATION_SIGNAL_LOSS:
            changes.setdefault("mitigation_start", None)
        elif m.status is Status.ATTACK_MITIGATION_SIGNAL_LOSS:
            changes.setdefault("mitigation_start", now)
        if after_status is not m.status:
            changes.setdefault("repeats", 0)
        after = replace(m, status=after_status, **changes)
        self._store(after)
        return Change(reason, after, before=m.status)

    def _resolve_conflicts(self) -> list[Change]:
        """Clear the conflict information of requests whose conflict with another client's
        active request (cause 1, RFC 9132 §4.4.1.3) is over, so their observers learn it."""
        changes: list[Change] = []
        for key in sorted(self._conflicted):
            m = self._records[key]
            still = any(
                o.cuid != m.cuid and o.status in ACTIVE and self._overlap(m.scope, o.scope)
                for o in self._overlapping(m.scope)
            )
            if not still:
                after = replace(m, conflict=None)
                self._store(after)
                changes.append(Change(Reason.CONFLICT_RESOLVED, after, before=m.status))
        return changes

    # -- PUT --------------------------------------------------------------------------------

    def put(
        self,
        cuid: str,
        mid: int,
        cdid: str | None,
        body: Mapping[str, Any],
        now: float,
        *,
        identity: str | None = None,
        if_match: bool = False,
        policy: Policy | None = None,
    ) -> MitigationPutOutcome | Ignored:
        """Handle a mitigation request / refresh / efficacy update (RFC 9132 §4.4.1, §4.4.3).

        ``identity`` is the authenticated client identity (e.g. its SPKI hash) used to detect
        'cuid' collisions; ``if_match`` tells whether the request carried an empty If-Match
        Option. ``cdid`` is stored as given: the caller passes it only when the request came
        from a trusted server-domain DOTS gateway ("DOTS servers MUST ignore 'cdid' attributes
        that are directly supplied by source DOTS clients", RFC 9132 §4.4.1.2). ``policy``:
        the client's own domain and limits (RFC 9132 §10), else the table's.
        Raises :class:`~dotsd.signal.errors.SignalError` (4.00, 4.09, 5.03).
        """
        if not 0 <= mid <= MAX_MID:
            raise BadRequest(f"'mid' {mid} out of range", rule="RFC 9132 §4.4.1.1")
        self._check_cuid(cuid, identity)
        request = parse_request(body)
        existing = self._records.get((cuid, mid))
        withdrawn = (
            existing is not None and existing.status is Status.DOTS_CLIENT_WITHDRAWN_MITIGATION
        )
        if if_match and (existing is None or withdrawn):
            # RFC 9132 §4.4.3: out-of-order PUT after the mitigation is gone / withdrawn.
            return Ignored(f"If-Match: no mitigation {mid} for cuid {cuid!r}")
        if existing is not None and not withdrawn:
            return self._refresh(existing, request, now, policy or self.policy)
        return self._create(cuid, mid, cdid, identity, request, existing, now,
                            policy or self.policy)

    def _refresh(self, m: Mitigation, request: MitigationRequest, now: float,
                 policy: Policy) -> MitigationPutOutcome:
        # RFC 9132 §4.4.1.3: "MUST repeat all the other parameters as sent in the original
        # mitigation request apart from a possible change to the 'lifetime' parameter value
        # ... If this is not the case, the DOTS server MUST reject the request with a 4.00";
        # likewise for an efficacy update (§4.4.3).
        if request.scope.canonical() != m.scope.canonical():
            raise BadRequest(
                f"mitigation {m.mid} exists with another scope; only 'lifetime' may change "
                "(use a new 'mid' to change the scope)",
                rule="RFC 9132 §4.4.1.3, §4.4.3",
            )
        # An efficacy update (Figure 16) carries no 'lifetime': it is "treated as a refresh of
        # the current mitigation" (§4.4.3), i.e. with the lifetime granted before.
        lifetime = (
            m.lifetime if request.lifetime is None else policy.grant_lifetime(request.lifetime)
        )
        after = replace(
            m,
            lifetime=lifetime,
            expires_at=self._expiry(lifetime, now),
            attack_status=request.attack_status or m.attack_status,
        )
        self._store(after)
        reason = Reason.EFFICACY_UPDATE if request.attack_status else Reason.REFRESHED
        change = Change(reason, after, before=m.status)
        return MitigationPutOutcome(Code.CHANGED, self._put_body(after), after, (change,))

    def _put_body(self, m: Mitigation) -> dict[str, Any]:
        # RFC 9132 §4.4.1.3 Figure 10: 'mid' and the granted 'lifetime' (§4.4.1.1: "The DOTS
        # server MUST always indicate the actual lifetime in the response"); 'cuid' and 'cdid'
        # are forbidden in it. Conflict information when the request was maintained despite a
        # conflict ("For both 2.01 (Created) and 4.09 (Conflict) responses").
        entry: dict[str, Any] = {"mid": m.mid, "lifetime": m.lifetime}
        if m.conflict is not None:
            entry["conflict-information"] = m.conflict.to_json()
        return _body([entry])

    def _create(
        self,
        cuid: str,
        mid: int,
        cdid: str | None,
        identity: str | None,
        request: MitigationRequest,
        previous: Mitigation | None,
        now: float,
        policy: Policy,
    ) -> MitigationPutOutcome:
        if request.lifetime is None:
            raise BadRequest(
                "'lifetime' is mandatory in a mitigation request", rule="RFC 9132 §4.4.1.1"
            )
        scope = request.scope
        # RFC 9132 §4.4.1.1 / §10: targets within the client's domain.
        policy.check_prefixes(scope.networks)
        policy.check_fqdns(scope.target_fqdn)
        policy.check_uris(scope.target_uri)
        if self.alias_check is not None:
            for alias in scope.alias_name:
                if not self.alias_check(cuid, cdid, alias):
                    raise BadRequest(
                        f"alias {alias!r} was not created by this DOTS client",
                        rule="RFC 9132 §4.4.1.3",
                    )

        limit = policy.max_mitigations_per_client
        if (limit is not None and previous is None
                and len(self._by_client.get(cuid, ())) >= limit):
            # RFC 9132 §4.4.1.3: "A DOTS server MAY reject mitigation requests when it is
            # near capacity or needs to rate-limit a particular client"; §9: 5.03 when
            # "unable to handle the request".
            raise ServiceUnavailable(
                f"at most {limit} mitigations per DOTS client",
                max_age=policy.retry_after,
                rule="RFC 9132 §4.4.1.3, §9",
            )

        # Same client (RFC 9132 §4.4.1.3).
        overridden: list[Mitigation] = []
        preempted: list[Mitigation] = []
        abt_period = self.abt_initial
        for other in self._overlapping(scope):
            if other.cuid != cuid or other.mid == mid:
                continue
            common = self._overlap(scope, other.scope)
            if common is None:
                continue
            if other.status is Status.DOTS_CLIENT_WITHDRAWN_MITIGATION:
                # §4.4.4: requested again within the active-but-terminating period.
                abt_period = max(abt_period, min(2 * other.abt_period, self.abt_max))
                continue
            if other.scope.trigger_mitigation == scope.trigger_mitigation:
                if not _mid_newer(mid, other.mid):
                    raise Conflict(
                        f"overlaps mitigation {other.mid} which has a higher 'mid'",
                        body=conflict_body(
                            ConflictInfo(
                                ConflictCause.OVERLAPPING_TARGETS, scope=common, mid=other.mid
                            )
                        ),
                        rule="RFC 9132 §4.4.1.3",
                    )
                overridden.append(other)
            elif scope.trigger_mitigation and other.status in ACTIVE:
                # Distinct 'trigger-mitigation' types: the active preconfigured request is
                # withdrawn (7), later back to 8 (§4.4.1.3, Table 3).
                preempted.append(other)
        if previous is not None:  # same 'mid', active but terminating, requested again
            abt_period = max(abt_period, min(2 * previous.abt_period, self.abt_max))

        # Other clients (RFC 9132 §4.4.1.3): only active requests can conflict.
        conflicts: list[tuple[Mitigation, Scope]] = []
        if scope.trigger_mitigation:
            for other in self._overlapping(scope):
                if other.cuid == cuid or other.status not in ACTIVE:
                    continue
                common = self._overlap(scope, other.scope)
                if common is not None:
                    conflicts.append((other, common))
        conflict: ConflictInfo | None = None
        changes: list[Change] = []
        if conflicts:
            first, common = conflicts[0]
            if self.conflict_policy is ConflictPolicy.REJECT:
                remaining = first.remaining_lifetime(now)
                # 'retry-timer' "SHOULD be equal to the lifetime of the active mitigation
                # request resulting in the deactivation" (§4.4.1.3).
                info = ConflictInfo(
                    ConflictCause.OVERLAPPING_TARGETS,
                    status=ConflictStatus.REQUEST_INACTIVE_OTHER_ACTIVE,
                    retry_timer=None if remaining == INDEFINITE else remaining,
                    scope=common,
                )
                raise Conflict(
                    f"overlaps an active mitigation of another DOTS client (mid {first.mid})",
                    body=conflict_body(info),
                    rule="RFC 9132 §4.4.1.3",
                )
            conflict = ConflictInfo(
                ConflictCause.OVERLAPPING_TARGETS,
                status=ConflictStatus.REQUEST_ACTIVE,
                scope=common,
            )
            for other, common_other in conflicts:  # §4.4.2.1: notify the other side too
                after = replace(
                    other,
                    conflict=ConflictInfo(
                        ConflictCause.OVERLAPPING_TARGETS,
                        status=ConflictStatus.REQUEST_ACTIVE,
                        scope=common_other,
                    ),
                )
                self._store(after)
                changes.append(Change(Reason.CONFLICT, after, before=other.status))

        for other in overridden:
            # "the overlapped lower numeric 'mid' MUST be automatically deleted and no longer
            # available at the DOTS server" (§4.4.1.3).
            changes.append(self._move(other, MitigationEvent.OVERRIDDEN, now, Reason.OVERRIDDEN))
        for other in preempted:
            changes.append(self._move(other, MitigationEvent.SERVER_WITHDRAW, now,
                                      Reason.PREEMPTED))

        lifetime = policy.grant_lifetime(request.lifetime)
        immediate = scope.trigger_mitigation
        m = Mitigation(
            cuid=cuid,
            mid=mid,
            cdid=cdid,
            owner=identity,
            scope=scope,
            lifetime=lifetime,
            expires_at=self._expiry(lifetime, now),
            # RFC 9132 §4.4.1.1 trigger-mitigation: immediate requests start now, preconfigured
            # ones wait for a signal loss (Table 3 status 8).
            status=Status.ATTACK_MITIGATION_IN_PROGRESS
            if immediate
            else Status.ATTACK_MITIGATION_SIGNAL_LOSS,
            created_at=now,
            mitigation_start=now if immediate else None,
            attack_status=request.attack_status,
            conflict=conflict,
            abt_period=abt_period,
        )
        self._store(m)
        changes.append(
            Change(Reason.CREATED, m, before=None if previous is None else previous.status)
        )
        if overridden or preempted:
            changes.extend(self._resolve_conflicts())
        return MitigationPutOutcome(Code.CREATED, self._put_body(m), m, tuple(changes))

    # -- GET --------------------------------------------------------------------------------

    def get(
        self,
        cuid: str,
        mid: int | None,
        now: float,
        *,
        identity: str | None = None,
        content: Content = Content.ALL,
    ) -> GetOutcome:
        """One mitigation or all of a client (RFC 9132 §4.4.2, Figure 14); 4.04 if none."""
        if mid is not None:
            found = self._records.get((cuid, mid))
            selected = [found] if found is not None and self._visible(found, identity) else []
            if not selected:
                raise NotFound(f"no mitigation {mid} for this client", rule="RFC 9132 §4.4.2")
        else:
            selected = [m for m in self.of_client(cuid) if self._visible(m, identity)]
            if not selected:
                raise NotFound("no mitigation for this client", rule="RFC 9132 §4.4.2")
        body = _body(m.status_entry(now, content) for m in selected)
        return GetOutcome(Code.CONTENT, body, tuple(selected))

    def status_body(self, m: Mitigation, now: float) -> dict[str, Any]:
        """A notification body for one mitigation (RFC 9132 §4.4.2.1)."""
        return _body([m.status_entry(now)])

    # -- DELETE -----------------------------------------------------------------------------

    def delete(
        self, cuid: str, mid: int, now: float, *, identity: str | None = None
    ) -> DeleteOutcome:
        """Withdraw a mitigation (RFC 9132 §4.4.4): always 2.02 without payload, "even if the
        'mid' parameter value ... does not exist". An active one stays active but terminating
        for its active-but-terminating period (default 120 s, doubled up to 300 s when the
        client requested mitigation again within it); an inactive one is removed."""
        m = self._records.get((cuid, mid))
        if m is None or not self._visible(m, identity):
            return DeleteOutcome(Code.DELETED, ())
        if m.status is Status.DOTS_CLIENT_WITHDRAWN_MITIGATION:
            return DeleteOutcome(Code.DELETED, ())
        if m.status in ACTIVE:
            change = self._move(
                m,
                MitigationEvent.CLIENT_WITHDRAW,
                now,
                Reason.WITHDRAWN_BY_CLIENT,
                terminating_until=now + m.abt_period,
            )
        else:
            change = self._move(m, MitigationEvent.CLIENT_WITHDRAW, now, Reason.TERMINATED)
        return DeleteOutcome(Code.DELETED, (change, *self._resolve_conflicts()))

    # -- time -------------------------------------------------------------------------------

    def handle_timer(self, now: float) -> None:
        """End what is due at ``now`` (see :meth:`_expire`); the changes come out of
        :meth:`next_event`."""
        self._expired.extend(self._expire(now))

    def next_event(self) -> Change | None:
        """The next change :meth:`handle_timer` made (None: none left)."""
        return self._expired.popleft() if self._expired else None

    def _expire(self, now: float) -> list[Change]:
        """End what is due at ``now``: active-but-terminating periods ("Once the
        active-but-terminating period elapses, the DOTS server MUST treat the mitigation as
        terminated", §4.4.4) and lifetimes ("Upon the expiry of the negotiated lifetime ...
        the mitigation request is removed", §4.4.1.1)."""
        changes: list[Change] = []
        due: set[tuple[str, int]] = set()
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            deadline, key = heapq.heappop(heap)
            if self._due_entry(deadline, key):
                due.add(key)
        for key in sorted(due):
            m = self._records[key]
            if m.terminating_until is not None and m.terminating_until <= now:
                changes.append(self._move(m, MitigationEvent.TERMINATING_ELAPSED, now,
                                          Reason.TERMINATED))
            elif m.expires_at is not None and m.expires_at <= now:
                changes.append(self._move(m, MitigationEvent.LIFETIME_EXPIRED, now, Reason.EXPIRED))
            after = self._records.get(key)  # still there: its deadline stays in the heap
            if after is not None and (later := after.deadline()) is not None:
                heapq.heappush(self._deadlines, (later, key))
        if changes:
            changes.extend(self._resolve_conflicts())
        return changes

    # -- session ----------------------------------------------------------------------------

    def on_session_lost(self, cuid: str, now: float) -> list[Change]:
        """The signal channel session of ``cuid`` is lost (RFC 9132 §4.4.1.3, §4.7).

        Its preconfigured requests (status 8) are triggered (status 1) and its active
        immediate requests overlapping them are withdrawn (status 7), without an
        active-but-terminating period ("not observed for mitigations withdrawn at the
        initiative of the DOTS server"). The session coming back stops nothing (§4.4.4).
        """
        changes: list[Change] = []
        triggered: list[Mitigation] = []
        for m in self.of_client(cuid):
            if m.preconfigured and m.status is Status.ATTACK_MITIGATION_SIGNAL_LOSS:
                change = self._move(m, MitigationEvent.SIGNAL_LOSS, now, Reason.TRIGGERED)
                triggered.append(change.mitigation)
                changes.append(change)
        for m in self.of_client(cuid):
            if m.preconfigured or m.status not in ACTIVE:
                continue
            if any(self._overlap(m.scope, t.scope) is not None for t in triggered):
                changes.append(self._move(m, MitigationEvent.SERVER_WITHDRAW, now,
                                          Reason.PREEMPTED))
        if changes:
            changes.extend(self._resolve_conflicts())
        return changes

    def on_notified(self, cuid: str, mid: int, now: float) -> list[Change]:
        """A status notification for this mitigation was sent. RFC 9132 §4.4.2 Table 3: for a
        preconfigured request, status 3 and 7 are "transmitted four times and then transition
        to '8'"."""
        m = self._records.get((cuid, mid))
        if m is None or not m.preconfigured:
            return []
        if m.status not in (Status.ATTACK_STOPPED, Status.ATTACK_MITIGATION_WITHDRAWN):
            return []
        if m.repeats + 1 < PRECONFIGURED_REPEATS:
            self._store(replace(m, repeats=m.repeats + 1))
            return []
        return [self._move(m, MitigationEvent.REARM, now, Reason.REARMED, conflict=None)]

    # -- mitigator --------------------------------------------------------------------------

    def mitigator_report(
        self,
        cuid: str,
        mid: int,
        event: MitigationEvent,
        now: float,
        *,
        counters: Counters | None = None,
    ) -> list[Change]:
        """Feedback of the mitigator (RFC 9132 §4.4.1.1: the server relays "the feedback of
        the thus-selected mitigator"). ``event`` is one of MITIGATING, EXCEEDED,
        ATTACK_STOPPED, ATTACK_RESUMED. Reports about a mitigation that is gone or in a status
        the event does not apply to are stale (the mitigator runs asynchronously): ignored,
        apart from the counters of a running mitigation."""
        if event not in (
            MitigationEvent.MITIGATING,
            MitigationEvent.EXCEEDED,
            MitigationEvent.ATTACK_STOPPED,
            MitigationEvent.ATTACK_RESUMED,
        ):
            raise ValueError(f"{event} is not a mitigator event")
        m = self._records.get((cuid, mid))
        if m is None:
            return []
        extra: dict[str, Any] = {} if counters is None else {"counters": counters}
        if event not in TRANSITIONS[m.status]:
            return [] if counters is None else self.update_counters(cuid, mid, counters)
        return [self._move(m, event, now, Reason.MITIGATOR, **extra)]

    def update_counters(self, cuid: str, mid: int, counters: Counters) -> list[Change]:
        """New mitigator counters for a running mitigation (RFC 9132 §4.4.2), its status
        unchanged; nothing for one that is gone or not active (a late report)."""
        m = self._records.get((cuid, mid))
        if m is None or not m.is_active:
            return []
        after = replace(m, counters=counters)
        self._store(after)
        return [Change(Reason.MITIGATOR, after, before=m.status)]

    def report_conflict(self, cuid: str, mid: int, info: ConflictInfo, now: float) -> list[Change]:
        """Record a conflict found after acceptance (extension point for conflict-cause 2,
        accept-listed ACL sources attacking the target, RFC 9132 §4.4.1.3; 4, RFC 9066 §7.2;
        5, RFC 9244 §13.2). When ``info.status`` says this request is inactive (1 or 3), an
        active mitigation is withdrawn: status 7 (RFC 9132 §4.4.2.1 first example)."""
        m = self._records.get((cuid, mid))
        if m is None:
            return []
        inactive = info.status in (
            ConflictStatus.REQUEST_INACTIVE_OTHER_ACTIVE,
            ConflictStatus.ALL_REQUESTS_INACTIVE,
        )
        if inactive and m.status in ACTIVE:
            return [self._move(m, MitigationEvent.SERVER_WITHDRAW, now, Reason.CONFLICT,
                               conflict=info)]
        after = replace(m, conflict=info)
        self._store(after)
        return [Change(Reason.CONFLICT, after, before=m.status)]
