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
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

from dotsd.signal.errors import BadRequest

__all__ = [
    "DEFAULT_MAX_LIFETIME",
    "DOCUMENTATION_PREFIXES",
    "EXAMPLE_DOMAINS",
    "INDEFINITE",
    "LAB",
    "IPNetwork",
    "Policy",
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


def _in_domains(name: str, domains: Sequence[str]) -> bool:
    name = name.lower().rstrip(".")
    return any(name == d or name.endswith("." + d) for d in domains)


@dataclass(frozen=True, slots=True)
class Policy:
    """Server policy for mitigation requests.

    ``allowed_prefixes``: the address space mitigations may be requested for (one domain for
    every client; per-client domains would map the client identity / 'cdid' to a Policy).
    ``allowed_domains``: FQDN suffixes allowed for 'target-fqdn' and the host of 'target-uri'.
    ``max_lifetime``: a longer requested lifetime is shortened, the granted value being returned
    (RFC 9132 §4.4.1.1: "the granted lifetime value is returned in the response").
    ``allow_indefinite``: "The DOTS server MAY refuse an indefinite lifetime, for policy
    reasons" (RFC 9132 §4.4.1.1); when refused, ``max_lifetime`` is granted instead.
    ``max_mitigations_per_client``: more new requests of one client are refused with 5.03
    (RFC 9132 §4.4.1.3 "MAY reject mitigation requests when it is near capacity or needs to
    rate-limit a particular client"), with Max-Age ``retry_after``.
    """

    allowed_prefixes: tuple[IPNetwork, ...] = DOCUMENTATION_PREFIXES
    allowed_domains: tuple[str, ...] = EXAMPLE_DOMAINS
    max_lifetime: int = DEFAULT_MAX_LIFETIME
    allow_indefinite: bool = False
    max_mitigations_per_client: int | None = None
    retry_after: int = 60
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        if self.max_lifetime < 1:
            raise ValueError("max_lifetime must be at least 1 second")

    def grant_lifetime(self, requested: int) -> int:
        """The lifetime granted for a requested one (which is -1 or >= 1)."""
        if requested == INDEFINITE:
            return INDEFINITE if self.allow_indefinite else self.max_lifetime
        return min(requested, self.max_lifetime)

    def prefix_allowed(self, prefix: IPNetwork) -> bool:
        return any(
            prefix.version == allowed.version and prefix.subnet_of(allowed)  # type: ignore[arg-type]
            for allowed in self.allowed_prefixes
        )

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
            if not _in_domains(fqdn, self.allowed_domains):
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
                if _in_domains(host, self.allowed_domains):
                    continue
            else:
                if self.prefix_allowed(ipaddress.ip_network(address)):
                    continue
            raise BadRequest(
                f"target-uri {uri!r} is outside the DOTS client domain",
                rule="RFC 9132 §4.4.1.1, §10",
            )


LAB: Final = Policy(name="lab")
"""Lab mode: documentation prefixes and example domains only (see the module docstring)."""
