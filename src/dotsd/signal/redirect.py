"""Redirected signaling (RFC 9132 §4.6): the body of a 5.03 that sends a DOTS client to an
alternate DOTS server, and the client's memory of where it was sent.

Server side: :func:`redirect_body` builds the 'redirected-signal' body (Figure 25), the TTL of
the alternate server travelling in the Max-Age Option.

Client side, sans-IO (the time is passed in):

* :func:`parse_redirect` recognises a redirection in a 5.03 response body;
* :class:`RedirectState` keeps the alternate server while its TTL runs ("the time interval that
  the alternate DOTS server may be cached"), a Max-Age of 2^32-1 meaning "until redirected
  again" and 0 "only for the mitigation request in progress" (one connection); after expiry
  the provisioned server is used again, immediately, "except when a DDoS attack is active";
* redirect loops: "If the DOTS client has been redirected to a DOTS server with which it has
  already communicated within the last five (5) minutes, it MUST ignore the redirection"
  (:meth:`RedirectState.accept` answers False and says why).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "INFINITE_TTL",
    "LOOP_WINDOW",
    "REDIRECT_MEMBER",
    "RedirectState",
    "Redirection",
    "parse_redirect",
    "redirect_body",
]

REDIRECT_MEMBER: Final = "ietf-dots-signal-channel:redirected-signal"  # RFC 9132 §4.6, Figure 25
INFINITE_TTL: Final = 2**32 - 1  # RFC 9132 §4.6: "equivalent to receiving an infinite TTL"
LOOP_WINDOW: Final = 300.0  # RFC 9132 §4.6: "within the last five (5) minutes"


@dataclass(frozen=True, slots=True)
class Redirection:
    """An alternate DOTS server: its FQDN ('alt-server', mandatory), its addresses
    ('alt-server-record', optional) and the TTL from the Max-Age Option (seconds)."""

    alt_server: str
    records: tuple[str, ...] = ()
    ttl: int = 60

    def __post_init__(self) -> None:
        if not self.alt_server or len(self.alt_server) > 253:
            raise ValueError("'alt-server' must be a domain name of 1 to 253 characters")
        for record in self.records:
            ipaddress.ip_address(record)  # ValueError names the bad address
        if not 0 <= self.ttl <= INFINITE_TTL:
            raise ValueError(f"TTL must be within 0..{INFINITE_TTL}")

    @property
    def name(self) -> str:
        """How the alternate is named in messages: its FQDN."""
        return self.alt_server

    def endpoints(self) -> tuple[str, ...]:
        """Where to dial: the conveyed addresses (no DNS lookup during an attack, §4.6), else
        the FQDN itself."""
        return self.records or (self.alt_server,)


def redirect_body(redirection: Redirection) -> dict[str, Any]:
    """The 5.03 body of RFC 9132 §4.6 (Figure 25), JSON-shaped."""
    content: dict[str, Any] = {"alt-server": redirection.alt_server}
    if redirection.records:
        content["alt-server-record"] = list(redirection.records)
    return {REDIRECT_MEMBER: content}


def parse_redirect(body: Mapping[str, Any] | None, max_age: int | None) -> Redirection | None:
    """The redirection a 5.03 body carries, or None when it carries none (a plain 5.03, e.g.
    a server near capacity). A malformed one is also None: a client must not be sent somewhere
    it cannot name."""
    if not isinstance(body, Mapping):
        return None
    content = body.get(REDIRECT_MEMBER)
    if not isinstance(content, Mapping):
        return None
    server = content.get("alt-server")
    records = content.get("alt-server-record", [])
    if not isinstance(server, str) or not isinstance(records, list):
        return None
    if not all(isinstance(r, str) for r in records):
        return None
    # RFC 7252 §5.10.5: Max-Age defaults to 60 s when absent.
    ttl = 60 if max_age is None else max_age
    try:
        return Redirection(server, tuple(records), ttl)
    except ValueError:
        return None


@dataclass(slots=True)
class _Current:
    redirection: Redirection
    until: float | None  # None: until redirected again


class RedirectState:
    """Where a DOTS client sends its signals: the provisioned server or, while its TTL runs,
    the alternate one it was redirected to (RFC 9132 §4.6). ``provisioned`` names the server
    configured by the operator (RFC 9132 §4.1)."""

    def __init__(self, provisioned: str) -> None:
        self.provisioned = provisioned
        self._current: _Current | None = None
        self._contacted: dict[str, float] = {}  # server name -> last time in contact
        self.refused: list[tuple[str, str]] = []  # (server, reason): loops, for operators

    def contacted(self, server: str, now: float) -> None:
        """The client exchanged signals with ``server`` at ``now``."""
        self._contacted[server.lower()] = now

    def accept(self, redirection: Redirection, now: float) -> tuple[bool, str]:
        """Take the redirection unless it is a loop; returns (accepted, reason)."""
        name = redirection.alt_server.lower()
        names = {name, *(r.lower() for r in redirection.records)}
        for server in names:
            seen = self._contacted.get(server)
            if seen is not None and now - seen < LOOP_WINDOW:
                reason = (f"redirected to {redirection.alt_server}, already contacted "
                          f"{now - seen:.0f} s ago: redirect loop ignored (RFC 9132 §4.6)")
                self.refused.append((redirection.alt_server, reason))
                return False, reason
        until = None if redirection.ttl == INFINITE_TTL else now + redirection.ttl
        self._current = _Current(redirection, until)
        return True, f"redirected to {redirection.alt_server} for " + (
            "ever" if until is None else f"{redirection.ttl} s")

    def target(self, now: float, *, attack: bool = False) -> Redirection | None:
        """The alternate server to use now, or None for the provisioned one. An expired TTL
        sends the client back at once, "except when a DDoS attack is active"."""
        current = self._current
        if current is None:
            return None
        if current.redirection.ttl == 0:
            # "the redirection applies only for the mitigation request in progress": it is
            # used for the one connection that request is resent on.
            self._current = None
            return current.redirection
        if current.until is not None and now >= current.until and not attack:
            self._current = None
            return None
        return current.redirection

    def expiry(self) -> float | None:
        """When the current redirection ends (None: none, or infinite)."""
        return self._current.until if self._current is not None else None
