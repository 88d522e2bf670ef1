"""The scope of a DOTS mitigation request (RFC 9132 §4.4.1.1): parsing and overlap.

:func:`parse_request` validates a mitigation PUT body (YANG, then the rules YANG cannot express)
into a :class:`MitigationRequest` whose :class:`Scope` keeps the order the client sent.
:func:`common_targets` is the overlap of two scopes that RFC 9132 §4.4.1.3 compares a new
request with ("a common IP address, IP prefix, FQDN, URI, or alias"); :func:`mid_newer` orders
two 'mid' values across their rollover. :mod:`dotsd.signal.targets` indexes the stored scopes
so that only the candidates are compared. Sans-IO.

"Overlap" here additionally requires the protocols and the port ranges to intersect (absent
means all): RFC 9132 Figure 14 shows two active requests of one client with the same
'target-prefix' and distinct 'target-protocol', which the plain wording would forbid. The strict
wording is ``common_targets(..., match_ports_protocols=False)``.
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from dotsd.model.errors import ModelError
from dotsd.signal.errors import BadRequest, from_model_error
from dotsd.signal.lifecycle import AttackStatus
from dotsd.signal.mids import ROLLOVER_MID
from dotsd.signal.policy import DEFAULT_REQUEST_LIMITS, IPNetwork, RequestLimits
from dotsd.signal.targets import fqdn_key

__all__ = [
    "MITIGATION_MEMBER",
    "MitigationRequest",
    "PortRange",
    "Scope",
    "common_targets",
    "mid_newer",
    "parse_request",
]

MITIGATION_MEMBER: Final = "ietf-dots-signal-channel:mitigation-scope"  # RFC 9132 §6 Table 5 key 1


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


def _check_size(body: Mapping[str, Any], limits: RequestLimits) -> None:
    """The operator's limits on the size of one request (:class:`RequestLimits`), checked on
    the decoded body before anything costs more than a length: YANG validation alone takes
    ~0.2 ms per list entry. Anything not shaped as expected is left to the validation."""
    content = body.get(MITIGATION_MEMBER) if isinstance(body, Mapping) else None
    scopes = content.get("scope") if isinstance(content, Mapping) else None
    if not isinstance(scopes, list):
        return
    if len(scopes) > 1:  # not worth validating: RFC 9132 §4.4.1.3 "multiple 'scope'" is 4.00
        raise BadRequest(
            "exactly one 'scope' entry is required", rule="RFC 9132 §4.4.1.1, §4.4.1.3"
        )
    for entry in scopes:
        if not isinstance(entry, Mapping):
            continue
        for attribute, limit in limits.items():
            value = entry.get(attribute)
            if isinstance(value, list) and len(value) > limit:
                # RFC 9132 §4.4.1.3: "contains invalid or unknown parameters ... 4.00"
                raise BadRequest(
                    f"{len(value)} '{attribute}' entries in one request, this server accepts "
                    f"at most {limit}",
                    rule="RFC 9132 §4.4.1.3",
                )


def parse_request(
    body: Mapping[str, Any], limits: RequestLimits = DEFAULT_REQUEST_LIMITS
) -> MitigationRequest:
    """Validate a mitigation PUT body (YANG, then the rules YANG cannot express).

    Raises :class:`BadRequest` (or the 4.xx of a model error) per RFC 9132 §4.4.1.3: "If the
    request is missing a mandatory attribute, ..., includes multiple 'scope' parameters, or
    contains invalid or unknown parameters, the DOTS server MUST reply with 4.00". A list
    longer than ``limits`` allows is such an invalid parameter, refused first.
    """
    _check_size(body, limits)
    # Imported here: yangson costs ~0.17 s of start-up, which a one-shot client command
    # (it never validates a request) should not pay during an attack.
    from dotsd.model import yang

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
    full = [(0, 65535)]
    ra = _merge((r.lower, r.high) for r in a.target_port_range) or full
    rb = _merge((r.lower, r.high) for r in b.target_port_range) or full
    # Both sides merged into sorted disjoint ranges, then swept together: O(n log n), where
    # comparing every pair was O(len(a) x len(b)) (seconds for a few thousand ranges). Two
    # maximal ranges cannot leave adjacent pieces, so the result is merged already.
    common: list[tuple[int, int]] = []
    i = j = 0
    while i < len(ra) and j < len(rb):
        low = max(ra[i][0], rb[j][0])
        high = min(ra[i][1], rb[j][1])
        if low <= high:
            common.append((low, high))
        if ra[i][1] < rb[j][1]:
            i += 1
        else:
            j += 1
    return common


def _common_protocols(a: Scope, b: Scope) -> list[int] | None:
    """None: every protocol ('target-protocol' absent on both sides, RFC 9132 §4.4.1.1)."""
    if not a.target_protocol and not b.target_protocol:
        return None
    if not a.target_protocol:
        return list(b.target_protocol)
    if not b.target_protocol:
        return list(a.target_protocol)
    theirs = set(b.target_protocol)
    return [p for p in a.target_protocol if p in theirs]


def common_targets(a: Scope, b: Scope, *, match_ports_protocols: bool = True) -> Scope | None:
    """The overlap of two scopes (RFC 9132 §4.4.1.3: "a common IP address, IP prefix, FQDN,
    URI, or alias"), as the content of a 'conflict-scope'; None if they do not overlap.

    With ``match_ports_protocols`` the protocols and port ranges must intersect too (absent =
    all). FQDNs / URIs / aliases are compared by name: resolving them is not sans-IO.
    """
    prefixes = _common_prefixes(a.networks, b.networks)
    fqdns_b = {fqdn_key(f) for f in b.target_fqdn}
    fqdns = [f for f in a.target_fqdn if fqdn_key(f) in fqdns_b]
    uris_b, aliases_b = set(b.target_uri), set(b.alias_name)  # not `in` a tuple: O(n x m)
    uris = [u for u in a.target_uri if u in uris_b]
    aliases = [n for n in a.alias_name if n in aliases_b]
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


def mid_newer(new: int, old: int) -> bool:
    """RFC 9132 §4.4.1.1: 'mid' values increase monotonically and restart at 0 once they
    reach 3/4 of 2^32 - 1; a small 'mid' after such a large one is the newer."""
    if old >= ROLLOVER_MID and new < ROLLOVER_MID // 3:
        return True
    if new >= ROLLOVER_MID and old < ROLLOVER_MID // 3:
        return False
    return new > old
