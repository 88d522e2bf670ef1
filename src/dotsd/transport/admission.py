"""Who may start a handshake: limits per source and in total, the way DNS servers and web
servers bound what an unauthenticated peer can hold (BIND's ``tcp-clients``, Unbound's
``incoming-num-tcp``, nginx's ``limit_conn``).

A connection (TCP) or a session (DTLS, after its cookie) is *pending* until its handshake
authenticates the peer, then *established*. :class:`Admission` counts both:

* pending ones per source (an IPv4 address, or the /64 of an IPv6 address: one host usually
  holds a whole /64) up to ``per_source``: one address cannot fill the shared pool;
* pending ones in total up to ``pending``, and everything up to ``total``. When full, the
  oldest pending one is evicted to make room (it is the one most likely stuck or hostile);
  an established one never is: unauthenticated peers cannot push out authenticated ones.

Plain bookkeeping, no I/O: the transports close what it evicts.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from dotsd.link import Address

__all__ = ["Admission", "AdmissionLimits", "source_key"]

T = TypeVar("T", bound=Hashable)


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    total: int  # pending and established together
    pending: int  # not yet authenticated, in total
    per_source: int  # not yet authenticated, per source address (IPv6: per /64)

    def __post_init__(self) -> None:
        if min(self.total, self.pending, self.per_source) < 1:
            raise ValueError("admission limits must be positive")


def source_key(address: Address) -> str:
    """The source an address counts against: itself for IPv4, its /64 for IPv6."""
    host = address[0]
    if ":" not in host:
        return host
    try:
        packed = ipaddress.IPv6Address(host.split("%", 1)[0]).packed
    except ValueError:
        return host
    if packed[:12] == bytes(10) + b"\xff\xff":  # IPv4-mapped: the IPv4 address
        return str(ipaddress.IPv4Address(packed[12:]))
    return packed[:8].hex()


class Admission(Generic[T]):
    """The pending (oldest first) and established peers of one listener."""

    def __init__(self, limits: AdmissionLimits) -> None:
        self.limits = limits
        self._pending: dict[T, str] = {}  # insertion order: oldest first
        self._per_source: Counter[str] = Counter()
        self.established = 0
        self.refused = 0
        self.evicted = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def admit(self, item: T, address: Address) -> tuple[bool, T | None]:
        """Whether ``item`` from ``address`` may start its handshake, and the pending item
        to close to make room for it (or None)."""
        key = source_key(address)
        limits = self.limits
        if self._per_source[key] >= limits.per_source:
            self.refused += 1
            return False, None
        victim: T | None = None
        if (len(self._pending) >= limits.pending
                or len(self._pending) + self.established >= limits.total):
            if not self._pending:
                self.refused += 1
                return False, None
            victim = next(iter(self._pending))
            self._drop(victim)
            self.evicted += 1
        self._pending[item] = key
        self._per_source[key] += 1
        return True, victim

    def authenticated(self, item: T) -> None:
        """``item``'s handshake completed: it is established from now on."""
        if self._drop(item):
            self.established += 1

    def gone(self, item: T, *, established: bool) -> None:
        """``item`` ended (``established``: after its handshake)."""
        if established:
            self.established = max(0, self.established - 1)
        else:
            self._drop(item)

    def _drop(self, item: T) -> bool:
        key = self._pending.pop(item, None)
        if key is None:
            return False
        self._per_source[key] -= 1
        if not self._per_source[key]:
            del self._per_source[key]
        return True
