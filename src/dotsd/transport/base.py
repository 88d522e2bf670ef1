"""What every transport gives the CoAP layer above it.

A *link* is one established path to one peer: a UDP address, a DTLS session, or a TCP/TLS
connection. Who dialled (``initiator``) says nothing about who is CoAP client or server:
both may send requests on any link (RFC 9066 Call Home reverses the usual roles).
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, Self

from cryptography import x509
from cryptography.hazmat.primitives import serialization

Address = tuple[str, int] | tuple[str, int, int, int]


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """Who is at the other end, as the transport authenticated it."""

    address: Address
    transport: str  # "udp", "dtls", "tcp" or "tls"
    initiator: bool  # True when this side dialled
    certificate: x509.Certificate | None = None
    psk_identity: bytes | None = None
    spki_sha256: bytes | None = field(default=None, compare=False)

    @property
    def reliable(self) -> bool:
        return self.transport in ("tcp", "tls")

    @property
    def secure(self) -> bool:
        return self.transport in ("dtls", "tls")


def spki_sha256(cert: x509.Certificate) -> bytes:
    """SHA-256 of the DER SubjectPublicKeyInfo (RFC 9132 §4.4.1 derives the cuid from it)."""
    der = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).digest()


def make_peer_info(address: Address, transport: str, initiator: bool,
                   certificate: x509.Certificate | None = None,
                   psk_identity: bytes | None = None) -> PeerInfo:
    return PeerInfo(address, transport, initiator, certificate, psk_identity,
                    spki_sha256(certificate) if certificate is not None else None)


class LinkBase:
    """What every concrete link shares: who the peer is, and whether the link is closed."""

    __slots__ = ("_closed", "_info")

    def __init__(self, info: PeerInfo) -> None:
        self._info = info
        self._closed = False

    @property
    def info(self) -> PeerInfo:
        return self._info

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        # How the layers above (which take a link as an opaque peer key) name it in logs.
        host, port = self._info.address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"<{type(self).__name__} {self._info.transport} {host}:{port}>"


class Link(Protocol):
    """One path to a peer. ``send`` takes one datagram (UDP, DTLS) or stream bytes (TCP, TLS)."""

    @property
    def info(self) -> PeerInfo: ...

    def send(self, data: bytes) -> None: ...

    def close(self) -> None: ...

    def __hash__(self) -> int: ...


class LinkHandler(Protocol):
    """Implemented by the layer above (the CoAP node); called by transports."""

    def link_up(self, link: Link) -> None:
        """A link is ready: after the (D)TLS handshake, or at once for plain UDP/TCP."""

    def data_received(self, link: Link, data: bytes) -> None:
        """One datagram (UDP, DTLS) or a chunk of the byte stream (TCP, TLS)."""

    def link_down(self, link: Link, reason: str | None) -> None:
        """The link is gone (closed, idle timeout, alert, connection reset)."""


class Listener(abc.ABC):
    """What every listening transport offers: ``close()``, ``await wait_closed()`` and
    ``async with``."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop serving and close every link."""

    @abc.abstractmethod
    async def wait_closed(self, timeout: float = 5.0) -> None:
        """Wait until everything is closed (at most ``timeout`` seconds)."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()


def loop_clock(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    """``loop.time`` as a function to call per datagram: ``time.monotonic`` itself when that
    is all the loop's ``time()`` does (asyncio's own loops), which saves a Python call."""
    if (getattr(type(loop), "time", None) is asyncio.BaseEventLoop.time
            and "time" not in getattr(loop, "__dict__", {})):
        return time.monotonic
    return loop.time


async def wait_event(event: asyncio.Event | None, timeout: float) -> None:
    """Wait for ``event`` if there is one (``wait_closed`` of the datagram listeners)."""
    if event is not None:
        await asyncio.wait_for(event.wait(), timeout)
