"""Who may ask mitigation for what, and which lifetimes are granted (RFC 9132 §4.4.1, §8, §10).

RFC 9132 §4.4.1.1 (target-prefix): "the DOTS server MUST validate that target prefixes are
within the scope of the DOTS client domain"; §10 (Security Considerations): "A DOTS server MUST
NOT authorize actions due to a DOTS client request unless those actions are limited to that DOTS
client's domain IP resources. The exact mechanism ... is deployment specific."

RFC 9132 names no dedicated response code for a target outside the client's domain. Such a
target is an invalid value of the request, and "If the request ... contains invalid or unknown
parameters, the DOTS server MUST reply with 4.00 (Bad Request)" (§4.4.1.3); the same code is
prescribed for the closest explicit case, aliases not created by the client (§4.4.1.3). 4.01
(Unauthorized) is reserved by §9 for a client "not authorized to access the DOTS server" at all.
So an out-of-domain target is answered 4.00, with a diagnostic naming the target.

:data:`LAB` is the lab mode: every client may only name the documentation prefixes
(RFC 3849 2001:db8::/32, RFC 5737 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24) and, for
FQDN / URI targets (which a sans-IO layer cannot resolve, §4.4.1.1), the reserved example and
test names (RFC 2606, RFC 6761).

:class:`PolicySet` gives each DOTS client its own domain (RFC 9132 §10 "that DOTS client's
domain IP resources"): clients are recognised by their 'cuid', the SHA-256 of their SPKI, their
certificate's subject common name or their PSK identity (:class:`ClientMatch`); a client not
listed gets the default policy, or is refused with 4.01 when there is none (RFC 9132 §9: "not
authorized to access the DOTS server").
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, get_args
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.x509.oid import NameOID

from dotsd.link import PeerInfo
from dotsd.signal.errors import BadRequest
from dotsd.signal.identity import ClientIdentity

__all__ = [
    "DEFAULT_MAX_LIFETIME",
    "DEFAULT_REQUEST_LIMITS",
    "DOCUMENTATION_PREFIXES",
    "EXAMPLE_DOMAINS",
    "INDEFINITE",
    "LAB",
    "MATCH_KINDS",
    "ClientMatch",
    "ClientPolicy",
    "IPNetwork",
    "MatchKind",
    "Policy",
    "PolicySet",
    "RequestLimits",
    "common_names",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

INDEFINITE: Final = -1  # RFC 9132 §4.4.1.1 lifetime: "negative one (-1) indicates indefinite"

DEFAULT_MAX_LIFETIME: Final = 86400
"""Longest lifetime granted by default (s). RFC 9132 sets no maximum; the RECOMMENDED request
lifetime is 3600 s (§4.4.1.1), a day leaves room for clients asking for more."""

DOCUMENTATION_PREFIXES: Final[tuple[IPNetwork, ...]] = (
    ipaddress.ip_network("2001:db8::/32"),  # RFC 3849
    ipaddress.ip_network("192.0.2.0/24"),  # RFC 5737 TEST-NET-1
    ipaddress.ip_network("198.51.100.0/24"),  # RFC 5737 TEST-NET-2
    ipaddress.ip_network("203.0.113.0/24"),  # RFC 5737 TEST-NET-3
)

EXAMPLE_DOMAINS: Final[tuple[str, ...]] = (
    "example",  # RFC 2606 §2
    "example.com",  # RFC 2606 §3
    "example.net",
    "example.org",
    "test",  # RFC 2606 §2 / RFC 6761 §6.2
)


def _in_domains(name: str, domains: frozenset[str]) -> bool:
    """Whether ``name`` is one of ``domains`` or below one: ``name == d`` or ``name`` ends
    with ``"." + d``, tried as a lookup of each of the name's suffixes after a dot (O(length
    of the name), not O(number of domains) per name)."""
    name = name.lower().rstrip(".")
    if name in domains:
        return True
    dot = name.find(".")
    while dot >= 0:
        if name[dot + 1:] in domains:
            return True
        dot = name.find(".", dot + 1)
    return False


@dataclass(frozen=True, slots=True)
class Policy:
    """Server policy for mitigation requests.

    ``allowed_prefixes``: the address space mitigations may be requested for (the client's
    domain; :class:`PolicySet` gives each client its own).
    ``allowed_domains``: FQDN suffixes allowed for 'target-fqdn' and the host of 'target-uri'.
    ``max_lifetime``: a longer requested lifetime is shortened, the granted value being returned
    (RFC 9132 §4.4.1.1: "the granted lifetime value is returned in the response").
    ``allow_indefinite``: "The DOTS server MAY refuse an indefinite lifetime, for policy
    reasons" (RFC 9132 §4.4.1.1); when refused, ``max_lifetime`` is granted instead.
    ``max_mitigations_per_client``: more new requests of one client are refused with 5.03
    (RFC 9132 §4.4.1.3 "MAY reject mitigation requests when it is near capacity or needs to
    rate-limit a particular client"), with Max-Age ``retry_after``.
    ``max_requests_per_second``: a client sending signal requests faster (on average, bursts
    of twice as many allowed) gets 5.03 with the seconds to wait (:mod:`dotsd.signal.ratelimit`).
    """

    allowed_prefixes: tuple[IPNetwork, ...] = DOCUMENTATION_PREFIXES
    allowed_domains: tuple[str, ...] = EXAMPLE_DOMAINS
    max_lifetime: int = DEFAULT_MAX_LIFETIME
    allow_indefinite: bool = False
    max_mitigations_per_client: int | None = None
    retry_after: int = 60
    max_requests_per_second: float | None = None
    name: str = field(default="custom", compare=False)
    # (version, prefix length, first address) of every allowed prefix, and per version the
    # lengths in use: prefix_allowed is one lookup per length, not a scan of the domain.
    _allowed: frozenset[tuple[int, int, int]] = field(init=False, repr=False, compare=False)
    _lengths: dict[int, tuple[int, ...]] = field(init=False, repr=False, compare=False)
    _domains: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_lifetime < 1:
            raise ValueError("max_lifetime must be at least 1 second")
        rate = self.max_requests_per_second
        if rate is not None and not (math.isfinite(rate) and rate > 0):
            raise ValueError("max_requests_per_second must be a positive number")
        allowed = frozenset((p.version, p.prefixlen, int(p.network_address))
                            for p in self.allowed_prefixes)
        object.__setattr__(self, "_allowed", allowed)
        object.__setattr__(self, "_lengths", {
            version: tuple(sorted({length for v, length, _ in allowed if v == version}))
            for version in (4, 6)})
        object.__setattr__(self, "_domains", frozenset(self.allowed_domains))

    def grant_lifetime(self, requested: int) -> int:
        """The lifetime granted for a requested one (which is -1 or >= 1)."""
        if requested == INDEFINITE:
            return INDEFINITE if self.allow_indefinite else self.max_lifetime
        return min(requested, self.max_lifetime)

    def prefix_allowed(self, prefix: IPNetwork) -> bool:
        """Whether ``prefix`` lies inside an allowed prefix (of its own IP version). O(number
        of distinct allowed lengths): a request of 1024 prefixes against a domain of 1000
        prefixes compared pairwise took about a second (RFC 9132 §4.4.1.1 check, §10)."""
        version, bits = prefix.version, prefix.max_prefixlen
        start = int(prefix.network_address)
        for length in self._lengths[version]:
            if length > prefix.prefixlen:
                break
            mask = ((1 << length) - 1) << (bits - length)
            if (version, length, start & mask) in self._allowed:
                return True
        return False

    def check_prefixes(self, prefixes: Sequence[IPNetwork]) -> None:
        """RFC 9132 §4.4.1.1 / §10: every target prefix within the client's domain (4.00)."""
        for prefix in prefixes:
            if not self.prefix_allowed(prefix):
                raise BadRequest(
                    f"target-prefix {prefix} is outside the DOTS client domain",
                    rule="RFC 9132 §4.4.1.1, §10",
                )

    def check_fqdns(self, fqdns: Sequence[str]) -> None:
        """RFC 9132 §4.4.1.1: the checks of 'target-prefix' apply to FQDNs too; without name
        resolution (sans-IO) the name itself must lie in an allowed domain."""
        for fqdn in fqdns:
            if not _in_domains(fqdn, self._domains):
                raise BadRequest(
                    f"target-fqdn {fqdn!r} is outside the DOTS client domain",
                    rule="RFC 9132 §4.4.1.1, §10",
                )

    def check_uris(self, uris: Sequence[str]) -> None:
        """RFC 9132 §4.4.1.1: 'target-uri' gets the 'target-fqdn' checks (on its host)."""
        for uri in uris:
            host = urlsplit(uri).hostname
            if host is None:
                raise BadRequest(f"target-uri {uri!r} has no host", rule="RFC 9132 §4.4.1.1")
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                if _in_domains(host, self._domains):
                    continue
            else:
                if self.prefix_allowed(ipaddress.ip_network(address)):
                    continue
            raise BadRequest(
                f"target-uri {uri!r} is outside the DOTS client domain",
                rule="RFC 9132 §4.4.1.1, §10",
            )


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """How many entries one mitigation request may carry per list attribute (RFC 9132
    §4.4.1.1 Figure 6), the operator's ``[limits]``. RFC 9132 sets no maximum; without one a
    single authenticated client can make every request cost what it likes (a 1 MiB body holds
    ~100,000 port ranges). A request beyond a limit "contains invalid ... parameters": 4.00
    (RFC 9132 §4.4.1.3); 4.13 is for block transfers only (§9).

    Defaults, real use with room: a client domain is announced in a handful to a few hundred
    prefixes, so 1024 'target-prefix'; 1024 'target-port-range' (one range can span every
    port); 256 'target-protocol' is every protocol number (uint8), i.e. no limit but
    duplicates; 64 'target-fqdn', 'target-uri' and 'alias-name', names of the services under
    attack, which an operator groups in aliases (RFC 8783) rather than listing by the hundred.
    """

    target_prefix: int = 1024
    target_port_range: int = 1024
    target_protocol: int = 256
    target_fqdn: int = 64
    target_uri: int = 64
    alias_name: int = 64

    def __post_init__(self) -> None:
        for attribute, limit in self.items():
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise ValueError(f"the limit of {attribute!r} must be a positive integer")

    def items(self) -> tuple[tuple[str, int], ...]:
        """(YANG attribute name, limit), in the order of RFC 9132 Figure 6."""
        return (("target-prefix", self.target_prefix),
                ("target-port-range", self.target_port_range),
                ("target-protocol", self.target_protocol),
                ("target-fqdn", self.target_fqdn),
                ("target-uri", self.target_uri),
                ("alias-name", self.alias_name))


DEFAULT_REQUEST_LIMITS: Final = RequestLimits()


LAB: Final = Policy(name="lab")
"""Lab mode: documentation prefixes and example domains only (see the module docstring)."""


# ---------------------------------------------------------------------------------------------
# One domain per client (RFC 9132 §10)

MatchKind = Literal["cuid", "spki-sha256", "common-name", "psk-identity"]
MATCH_KINDS: Final[tuple[MatchKind, ...]] = get_args(MatchKind)


def common_names(certificate: x509.Certificate | None) -> tuple[str, ...]:
    """The subject common names of a certificate (none without one)."""
    if certificate is None:
        return ()
    return tuple(str(a.value) for a in
                 certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME))


@dataclass(frozen=True, slots=True)
class ClientMatch:
    """How the operator names one authenticated client. ``value``: the 'cuid' (RFC 9132
    §4.4.1.1); the SPKI SHA-256 in hex; a certificate subject common name (the CA issues it,
    so it is as strong as the CA's naming); or a PSK identity as text."""

    kind: MatchKind
    value: str

    def __post_init__(self) -> None:
        if self.kind not in MATCH_KINDS:
            raise ValueError(f"unknown client match {self.kind!r}")
        if self.kind == "spki-sha256":
            try:
                if len(bytes.fromhex(self.value)) != 32:
                    raise ValueError
            except ValueError:
                raise ValueError("an SPKI SHA-256 is 64 hexadecimal digits") from None
            object.__setattr__(self, "value", self.value.lower())
        elif not self.value:
            raise ValueError(f"an empty {self.kind}")

    @property
    def key(self) -> str:
        """What :meth:`PolicySet.lookup` compares with an identity's own keys."""
        if self.kind == "spki-sha256":
            return f"spki-sha256:{self.value}"
        if self.kind == "psk-identity":
            return f"psk:{self.value.encode('utf-8').hex()}"
        return f"{self.kind}:{self.value}"

    def __str__(self) -> str:
        return f"{self.kind} {self.value}"


@dataclass(frozen=True, slots=True)
class ClientPolicy:
    """The policy of one client, recognised by ``match`` and named ``name`` in logs."""

    name: str
    match: ClientMatch
    policy: Policy


@dataclass(frozen=True, slots=True)
class PolicySet:
    """The operator's policies: one per listed client and ``default`` for every other client
    (None: clients not listed are refused). The first entry matching a client wins.
    ``limits``: the size of one mitigation request, for every client (:class:`RequestLimits`)."""

    default: Policy | None = LAB
    clients: tuple[ClientPolicy, ...] = ()
    limits: RequestLimits = DEFAULT_REQUEST_LIMITS
    _index: dict[str, tuple[int, ClientPolicy]] = field(init=False, repr=False, compare=False)
    _by_name: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index: dict[str, tuple[int, ClientPolicy]] = {}
        for position, entry in enumerate(self.clients):
            index.setdefault(entry.match.key, (position, entry))
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_by_name",
                           any(e.match.kind == "common-name" for e in self.clients))

    def lookup(self, ident: ClientIdentity, peer: PeerInfo) -> ClientPolicy | None:
        """The entry of an authenticated client, None when it is not listed. O(1) in the
        number of clients (a DOTS server of an ISP lists thousands)."""
        if not self._index:
            return None
        order = [ident.identity, f"cuid:{ident.cuid}"]
        if self._by_name:
            order.extend(f"common-name:{cn}" for cn in common_names(peer.certificate))
        found = [e for e in (self._index.get(k) for k in order) if e is not None]
        # First listed wins when several entries name the same client in different ways.
        return min(found, key=lambda e: e[0])[1] if found else None

    def for_client(self, ident: ClientIdentity, peer: PeerInfo) -> Policy | None:
        """The client's policy: its own, else the default (None: the client is refused)."""
        entry = self.lookup(ident, peer)
        return self.default if entry is None else entry.policy
