"""asyncio adapter for CoAP over plain UDP (RFC 7252): one socket, one link per peer address.

A :class:`UdpEndpoint` both serves and dials: a datagram from a new address creates a link
(``initiator`` False) and ``connect(addr)`` creates one towards an address (``initiator``
True). Either way the link is handed to ``handler.link_up`` before any data. Links are
found by address with one dict lookup per datagram; their number is bounded and links
that stay silent longer than ``idle_timeout`` are closed by one periodic sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from typing import Final, cast

from dotsd.link import Address, LinkHandler, PeerInfo, make_peer_info
from dotsd.transport.base import LinkBase, Listener, loop_clock, wait_event
from dotsd.transport.datagram import open_datagram

log = logging.getLogger("dotsd.transport.udp")

DEFAULT_MAX_LINKS: Final = 100_000
DEFAULT_RCVBUF: Final = 4 * 1024 * 1024
DEFAULT_SNDBUF: Final = 4 * 1024 * 1024
# SO_RCVBUFFORCE / SO_SNDBUFFORCE (Linux, CAP_NET_ADMIN): exceed net.core.rmem_max.
_SO_RCVBUFFORCE: Final = getattr(socket, "SO_RCVBUFFORCE", 33)
_SO_SNDBUFFORCE: Final = getattr(socket, "SO_SNDBUFFORCE", 32)

PeerKey = tuple[str, int] | tuple[str, int, int]


def peer_key(addr: Address) -> PeerKey:
    """The dict key of a peer: host and port (and the scope of a link-local IPv6 address).

    An IPv6 socket reports ``(host, port, flowinfo, scope_id)``; ``connect(("::1", p))``
    and a datagram from ``("::1", p, 0, 0)`` are the same peer.
    """
    if len(addr) == 2 or not addr[3]:
        return (addr[0], addr[1])
    return (addr[0], addr[1], addr[3])


# asyncio reads each datagram into a fresh buffer of the transport's ``max_size`` (256 KiB by
# default): above glibc's mmap threshold, so every datagram costs an mmap/munmap and page
# faults (measured by bench/: 12k → 22k requests/s on plain UDP). A datagram over UDP is at
# most 65,507 bytes, so 64 KiB loses nothing.
DATAGRAM_READ_SIZE: Final = 65536


def datagram_transport_made(transport: asyncio.BaseTransport) -> tuple[
        asyncio.DatagramTransport, Address | None]:
    """What every datagram protocol does in ``connection_made``: cap the read size and
    learn the local address."""
    if hasattr(transport, "max_size"):
        transport.max_size = DATAGRAM_READ_SIZE
    sockname = transport.get_extra_info("sockname")
    address = cast(Address, tuple(sockname)) if sockname else None
    return cast(asyncio.DatagramTransport, transport), address


class DatagramProtocolBase(asyncio.DatagramProtocol):
    """What every dotsd datagram protocol (UDP, DTLS) keeps about its socket."""

    def __init__(self) -> None:
        self._transport: asyncio.DatagramTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clock: Callable[[], float] = time.monotonic  # the loop's, once known
        self._address: Address = ("", 0)
        self.closed_event: asyncio.Event | None = None

    @property
    def address(self) -> Address:
        return self._address

    @property
    def port(self) -> int:
        return self._address[1]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport, address = datagram_transport_made(transport)
        self._loop = asyncio.get_running_loop()
        self._clock = loop_clock(self._loop)
        self.closed_event = asyncio.Event()
        if address is not None:
            self._address = address


def make_socket(host: str | None, port: int, *, reuse_port: bool = False,
                rcvbuf: int | None = DEFAULT_RCVBUF,
                sndbuf: int | None = DEFAULT_SNDBUF) -> socket.socket:
    """A bound, non-blocking UDP socket for ``host`` (None: every address, IPv6 and IPv4).

    Large buffers ride out bursts (a flood, thousands of handshakes at once): the forced
    variants are tried first, then the ones capped by the system limits.
    """
    if host is None:
        host = "::" if socket.has_ipv6 else "0.0.0.0"
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
    if not infos:
        raise OSError(f"cannot resolve {host!r}")
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        if family == socket.AF_INET6 and host == "::":
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        for size, forced, plain in ((rcvbuf, _SO_RCVBUFFORCE, socket.SO_RCVBUF),
                                    (sndbuf, _SO_SNDBUFFORCE, socket.SO_SNDBUF)):
            if size:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, forced, size)
                except OSError:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, plain, size)
        sock.setblocking(False)
        sock.bind(sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


class UdpLink(LinkBase):
    """One peer address on a :class:`UdpEndpoint` (implements ``Link``)."""

    __slots__ = ("_endpoint", "_key", "last_active")

    def __init__(self, endpoint: UdpEndpoint, info: PeerInfo, key: PeerKey,
                 now: float) -> None:
        self._endpoint = endpoint
        super().__init__(info)
        self._key = key
        self.last_active = now

    def send(self, data: bytes) -> None:
        """Send one datagram; dropped once the link is closed."""
        if not self._closed:
            self._endpoint._sendto(data, self._info.address)

    def close(self) -> None:
        """Forget this peer (nothing is sent: UDP has no close)."""
        self._endpoint._remove(self, "closed")

    def __repr__(self) -> str:
        return f"<UdpLink {self._info.address!r}>"


class UdpEndpoint(DatagramProtocolBase, Listener):
    """One UDP socket and its links, keyed by peer address."""

    def __init__(self, handler: LinkHandler, *, max_links: int = DEFAULT_MAX_LINKS,
                 idle_timeout: float | None = None,
                 sweep_interval: float | None = None) -> None:
        if max_links < 1:
            raise ValueError("max_links must be at least 1")
        super().__init__()
        self._handler = handler
        self._max_links = max_links
        self._idle_timeout = idle_timeout
        self._sweep_interval = sweep_interval if sweep_interval is not None else (
            None if idle_timeout is None else max(0.05, min(idle_timeout / 2, 30.0)))
        self._links: dict[PeerKey, UdpLink] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False
        self.dropped = 0  # datagrams dropped because max_links was reached

    # ----------------------------------------------------------------- properties
    @property
    def links(self) -> list[UdpLink]:
        return list(self._links.values())

    def __len__(self) -> int:
        return len(self._links)

    # ----------------------------------------------------------------- API
    def connect(self, addr: Address) -> UdpLink:
        """The link to ``addr`` (created, with ``link_up``, if there is none yet)."""
        if self._closed or self._transport is None:
            raise ConnectionError("UDP endpoint is closed")
        key = peer_key(addr)
        link = self._links.get(key)
        if link is not None:
            return link
        if len(self._links) >= self._max_links:
            raise ConnectionError(f"too many UDP links ({self._max_links})")
        return self._new_link(addr, key, initiator=True)

    def close(self) -> None:
        """Close every link (``link_down`` with reason "closed") and the socket."""
        if self._closed:
            return
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for link in list(self._links.values()):
            self._remove(link, "closed")
        if self._transport is not None:
            self._transport.close()

    async def wait_closed(self, timeout: float = 5.0) -> None:
        await wait_event(self.closed_event, timeout)

    # ----------------------------------------------------------------- protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._sweep_interval is not None and self._loop is not None:
            self._sweeper = self._loop.call_later(self._sweep_interval, self._sweep)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        key = addr if len(addr) == 2 else peer_key(addr)  # an IPv4 address is its own key
        link = self._links.get(key)
        if link is None:
            if self._closed:
                return
            if len(self._links) >= self._max_links:
                self.dropped += 1
                return
            link = self._new_link(addr, key, initiator=False)
            if link._closed:
                return
        link.last_active = self._clock()
        try:
            self._handler.data_received(link, data)
        except Exception:
            log.exception("link handler failed on data from %s", addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable...) say nothing reliable about one peer here.
        log.debug("UDP socket error: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        for link in list(self._links.values()):
            self._remove(link, "socket closed" if exc is None else str(exc))
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self.closed_event is not None:
            self.closed_event.set()

    # ----------------------------------------------------------------- internals
    def _new_link(self, addr: Address, key: PeerKey, initiator: bool) -> UdpLink:
        assert self._loop is not None
        link = UdpLink(self, make_peer_info(addr, "udp", initiator), key, self._loop.time())
        self._links[key] = link
        try:
            self._handler.link_up(link)
        except Exception:
            log.exception("link handler failed on link_up of %s; closing", link)
            self._remove(link, "link_up failed")
        return link

    def _sendto(self, data: bytes, addr: Address) -> None:
        tr = self._transport
        if tr is not None and not self._closed:
            tr.sendto(data, addr)

    def _remove(self, link: UdpLink, reason: str) -> None:
        if link._closed:
            return
        link._closed = True
        if self._links.get(link._key) is link:
            del self._links[link._key]
        try:
            self._handler.link_down(link, reason)
        except Exception:
            log.exception("link handler failed on link_down of %s", link)

    def _sweep(self) -> None:
        """Close links silent for longer than idle_timeout (one pass, not a timer per link)."""
        self._sweeper = None
        loop, idle = self._loop, self._idle_timeout
        if self._closed or loop is None or idle is None or self._sweep_interval is None:
            return
        limit = loop.time() - idle
        for link in [lk for lk in self._links.values() if lk.last_active < limit]:
            self._remove(link, "idle timeout")
        self._sweeper = loop.call_later(self._sweep_interval, self._sweep)


async def open_udp(handler: LinkHandler, local_addr: tuple[str | None, int],
                   reuse_port: bool = False, *, max_links: int = DEFAULT_MAX_LINKS,
                   idle_timeout: float | None = None, sweep_interval: float | None = None,
                   rcvbuf: int | None = DEFAULT_RCVBUF,
                   sndbuf: int | None = DEFAULT_SNDBUF) -> UdpEndpoint:
    """A UDP endpoint bound to ``local_addr`` (port 0 picks a free port).

    ``idle_timeout`` (seconds, None: never) closes links that received nothing for that
    long, with reason "idle timeout".
    """

    sock = make_socket(local_addr[0], local_addr[1], reuse_port=reuse_port, rcvbuf=rcvbuf,
                       sndbuf=sndbuf)
    endpoint = UdpEndpoint(handler, max_links=max_links, idle_timeout=idle_timeout,
                           sweep_interval=sweep_interval)
    try:
        open_datagram(endpoint, sock)
    except BaseException:
        sock.close()
        raise
    return endpoint
