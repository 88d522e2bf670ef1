"""asyncio adapters for CoAP over DTLS 1.2 (RFC 7252 §9, RFC 9132 §7.1).

:class:`DtlsServer` (``serve_dtls``): one UDP socket for any number of peers. A datagram
from an unknown address goes through the stateless cookie exchange first
(:class:`~dotsd.dtls.cookie.CookieJar`, RFC 6347 §4.2.1); only a ClientHello with a valid
cookie creates a :class:`~dotsd.dtls.connection.DtlsConnection`; at most ``max_half_open``
of those may be handshaking at once, ``max_half_open_per_source`` from one address (IPv6:
one /64), the oldest evicted when the pool is full, never an established session
(:mod:`dotsd.transport.admission`). ``link_up`` comes after the
handshake, with the peer's certificate or PSK identity in ``PeerInfo``.

:func:`dtls_connect` dials one peer from its own socket and returns the link once the
handshake is done, or raises :class:`DtlsHandshakeError` / ``TimeoutError``.

Either side may send first once the link is up: who dialled says nothing about who is
CoAP client (RFC 9066 Call Home reverses the roles).

Per datagram the adapters do: one dict lookup, feed the connection, hand events over,
send what is due, re-arm that connection's timer. A connection has an asyncio timer only
while it has a deadline (during the handshake); idle sessions are closed by one periodic
sweep.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from typing import Final, cast

from OpenSSL import SSL

from dotsd.dtls.connection import DtlsConnection, HandshakeTimers
from dotsd.dtls.context import DtlsContext
from dotsd.dtls.cookie import CookieJar, Verdict
from dotsd.dtls.events import ConnectionClosed, DataReceived, HandshakeCompleted
from dotsd.dtls.records import CT_HANDSHAKE
from dotsd.errors import PeerError
from dotsd.link import Address, LinkHandler, PeerInfo, make_peer_info
from dotsd.transport.admission import Admission, AdmissionLimits
from dotsd.transport.base import LinkBase, Listener, wait_event
from dotsd.transport.datagram import open_datagram
from dotsd.transport.udp import (
    DEFAULT_SNDBUF,
    DatagramProtocolBase,
    PeerKey,
    make_socket,
    peer_key,
)

log = logging.getLogger("dotsd.transport.dtls")

DEFAULT_IDLE_TIMEOUT: Final = 600.0  # seconds without a datagram from the peer
DEFAULT_HANDSHAKE_TIMEOUT: Final = 30.0  # server side: half-open state lasts no longer
DEFAULT_CONNECT_TIMEOUT: Final = 10.0
DEFAULT_MAX_SESSIONS: Final = 100_000
DEFAULT_MAX_HALF_OPEN: Final = 1_000
# A client behind a NAT shares its address with others, but few handshake at the same time;
# one address with many ports must not hold the whole half-open pool.
DEFAULT_MAX_HALF_OPEN_PER_SOURCE: Final = 16


class DtlsHandshakeError(PeerError, ConnectionError):
    """The DTLS handshake with the peer failed (refused certificate, alert, ...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"DTLS handshake failed: {reason}")
        self.reason = reason


class DtlsLink(LinkBase):
    """One DTLS session, as the CoAP layer sees it (implements ``Link``)."""

    __slots__ = ("_owner", "_peer", "_to")

    def __init__(self, owner: _DtlsProtocol, peer: _Peer, info: PeerInfo) -> None:
        self._owner = owner
        self._peer = peer
        self._to = None if owner._initiator else peer.addr  # sendto's address
        super().__init__(info)

    @property
    def connection(self) -> DtlsConnection:
        return self._peer.conn

    @property
    def session(self) -> SSL.Session | None:
        """The client's session, to resume with ``dtls_connect(..., session=...)``."""
        return self._peer.conn.session

    def send(self, data: bytes) -> None:
        """Send one datagram (one DTLS record); dropped once the link is closed."""
        if self._closed:
            return  # the close is being reported; nothing more goes out
        peer = self._peer
        conn = peer.conn
        datagram = conn.protect(data)
        if datagram is not None:  # sealed by dotsd: no timer to re-arm
            tr = self._owner._transport
            if tr is not None and not tr.is_closing():
                tr.sendto(datagram, self._to)
            return
        if conn.closed:
            return
        conn.send(data)
        self._owner._flush(peer)

    def close(self) -> None:
        """Send close_notify and forget the session; ``link_down`` follows (reason "closed")."""
        if not self._closed:
            self._owner._close_peer(self._peer, "closed")

    def __repr__(self) -> str:
        return f"<DtlsLink {self._info.address!r}>"


class _Peer:
    __slots__ = ("addr", "conn", "gone", "key", "last_active", "link", "timer", "timer_at")

    def __init__(self, addr: Address, key: PeerKey, conn: DtlsConnection, now: float) -> None:
        self.addr = addr
        self.key = key
        self.conn = conn
        self.link: DtlsLink | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at: float | None = None
        self.last_active = now
        self.gone = False


class _DtlsProtocol(DatagramProtocolBase, abc.ABC):
    """What the server and the dialling side share: events, sending, timers."""

    _initiator: bool = False

    def __init__(self, handler: LinkHandler) -> None:
        super().__init__()
        self._handler = handler

    def error_received(self, exc: Exception) -> None:
        log.debug("DTLS socket error: %s", exc)

    # ----------------------------------------------------------------- per peer
    def _receive(self, peer: _Peer, data: bytes, now: float) -> None:
        """One datagram from the peer: its plaintext straight to the handler when it is one
        application-data record (the usual case), else through the connection's events."""
        peer.last_active = now
        conn = peer.conn
        plain = conn.receive_application_data(data, now)
        link = peer.link
        if plain is None or link is None:
            self._process(peer)
            return
        try:
            self._handler.data_received(link, plain)
        except Exception:
            log.exception("link handler failed on data from %s", peer.addr)
        # Only the end of a final-flight retention (a timer) or queued output needs work.
        if not peer.gone and (peer.timer_at is not None or conn.has_output):
            self._process(peer)

    def _process(self, peer: _Peer) -> None:
        """Hand the connection's events to the handler, then send and re-arm."""
        conn = peer.conn
        while not peer.gone and (event := conn.next_event()) is not None:
            if isinstance(event, DataReceived):
                link = peer.link
                if link is not None:
                    try:
                        self._handler.data_received(link, event.data)
                    except Exception:
                        log.exception("link handler failed on data from %s", peer.addr)
            elif isinstance(event, HandshakeCompleted):
                self._handshake_done(peer, event)
            elif isinstance(event, ConnectionClosed):
                self._flush(peer)
                self._forget(peer, event.reason)
                return
        if not peer.gone:
            self._flush(peer)

    def _handshake_done(self, peer: _Peer, event: HandshakeCompleted) -> None:
        info = make_peer_info(peer.addr, "dtls", self._initiator,
                              certificate=event.certificate, psk_identity=event.psk_identity,
                              rtt=peer.conn.rtt)
        link = DtlsLink(self, peer, info)
        peer.link = link
        self._link_up(peer, link)

    def _link_up(self, peer: _Peer, link: DtlsLink) -> None:
        try:
            self._handler.link_up(link)
        except Exception:
            log.exception("link handler failed on link_up of %s; closing", link)
            self._close_peer(peer, "link_up failed")

    def _flush(self, peer: _Peer) -> None:
        datagrams = peer.conn.datagrams_to_send()
        tr = self._transport
        if datagrams and tr is not None and not tr.is_closing():
            addr = peer.addr if not self._initiator else None
            for d in datagrams:
                tr.sendto(d, addr)
        if not peer.gone:
            self._arm(peer)

    def _arm(self, peer: _Peer) -> None:
        at = peer.conn.get_timer()
        if at == peer.timer_at:
            return
        if peer.timer is not None:
            peer.timer.cancel()
            peer.timer = None
        peer.timer_at = at
        if at is not None:
            assert self._loop is not None
            peer.timer = self._loop.call_at(at, self._on_timer, peer)

    def _on_timer(self, peer: _Peer) -> None:
        at = peer.timer_at
        peer.timer = None
        peer.timer_at = None
        if peer.gone or self._loop is None:
            return
        now = self._loop.time()
        # asyncio may run a handle up to one clock resolution early.
        peer.conn.handle_timer(now if at is None else max(now, at))
        self._process(peer)

    def _close_peer(self, peer: _Peer, reason: str) -> None:
        if peer.gone:
            return
        peer.conn.close()
        self._flush(peer)
        self._forget(peer, reason)

    def _forget(self, peer: _Peer, reason: str) -> None:
        """The session is over: drop its state, tell the handler if it had a link."""
        if peer.gone:
            return
        peer.gone = True
        if peer.timer is not None:
            peer.timer.cancel()
            peer.timer = None
        self._remove(peer)
        link = peer.link
        if link is not None and not link._closed:
            link._closed = True
            try:
                self._handler.link_down(link, reason)
            except Exception:
                log.exception("link handler failed on link_down of %s", link)
        self._session_over(peer, reason)

    @abc.abstractmethod
    def _remove(self, peer: _Peer) -> None:
        """Forget the peer's state (server: its address entry; client: the only peer)."""

    def _session_over(self, peer: _Peer, reason: str) -> None:
        pass


class DtlsServer(_DtlsProtocol, Listener):
    """One UDP socket serving DTLS to many peers (see :func:`serve_dtls`)."""

    def __init__(self, handler: LinkHandler, context: DtlsContext, *,
                 idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
                 handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
                 timers: HandshakeTimers | None = None,
                 max_sessions: int = DEFAULT_MAX_SESSIONS,
                 max_half_open: int = DEFAULT_MAX_HALF_OPEN,
                 max_half_open_per_source: int = DEFAULT_MAX_HALF_OPEN_PER_SOURCE,
                 sweep_interval: float | None = None,
                 cookie_jar: CookieJar | None = None) -> None:
        super().__init__(handler)
        if not context.server_side:
            raise ValueError("DtlsServer needs a server context")
        self._context = context
        base = timers if timers is not None else HandshakeTimers()
        self._timers = HandshakeTimers(initial=base.initial, maximum=base.maximum,
                                       deadline=handshake_timeout, floor=base.floor,
                                       keep_backoff=base.keep_backoff)
        self._idle_timeout = idle_timeout
        self._sweep_interval = sweep_interval if sweep_interval is not None else (
            None if idle_timeout is None else max(0.05, min(idle_timeout / 4, 60.0)))
        self._admission: Admission[PeerKey] = Admission(AdmissionLimits(
            total=max_sessions, pending=max_half_open, per_source=max_half_open_per_source))
        self._cookies = cookie_jar
        self._peers: dict[PeerKey, _Peer] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._closing = False
        # Counters, for logs and tests.
        self.hello_verify_sent = 0
        self.dropped = 0  # garbage from unknown peers, or over a limit

    # ----------------------------------------------------------------- properties
    @property
    def links(self) -> list[DtlsLink]:
        return [p.link for p in self._peers.values() if p.link is not None]

    @property
    def session_count(self) -> int:
        """Peers with state: established sessions plus half-open handshakes."""
        return len(self._peers)

    @property
    def half_open(self) -> int:
        return self._admission.pending

    @property
    def admission(self) -> Admission[PeerKey]:
        """Handshakes pending and sessions established; how many were refused or evicted."""
        return self._admission

    @property
    def timers(self) -> HandshakeTimers:
        return self._timers

    # ----------------------------------------------------------------- protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self._loop is not None
        if self._cookies is None:
            self._cookies = CookieJar(now=self._loop.time())
        if self._sweep_interval is not None:
            self._sweeper = self._loop.call_later(self._sweep_interval, self._sweep)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        now = self._clock()
        key = addr if len(addr) == 2 else peer_key(addr)  # an IPv4 address is its own key
        peer = self._peers.get(key)
        if peer is None:
            self._hello(data, addr, key, now)
            return
        if data and data[0] == CT_HANDSHAKE and len(data) > 4 and data[3] == 0 == data[4] \
                and self._restart(peer, data, addr, key, now):
            return
        self._receive(peer, data, now)

    def connection_lost(self, exc: Exception | None) -> None:
        self._shutdown("socket closed" if exc is None else str(exc))
        if self.closed_event is not None:
            self.closed_event.set()

    # ----------------------------------------------------------------- new peers
    def _hello(self, data: bytes, addr: Address, key: PeerKey, now: float) -> None:
        """A datagram from an address without state: the stateless cookie exchange."""
        jar = self._cookies
        if jar is None or self._closing:
            return
        check = jar.check(data, addr, now)
        if check.verdict is Verdict.DROP:
            self.dropped += 1
            return
        if check.verdict is Verdict.SEND_VERIFY:
            assert check.reply is not None and self._transport is not None
            self._transport.sendto(check.reply, addr)
            self.hello_verify_sent += 1
            return
        assert check.hello is not None
        admitted, victim = self._admission.admit(key, addr)
        if not admitted:
            # Over the per-source or total limit: the client retransmits its ClientHello
            # and may get in later.
            self.dropped += 1
            return
        if victim is not None:
            gone = self._peers.get(victim)
            if gone is not None:
                log.info("DTLS handshake with %s dropped: the oldest half-open one, to make "
                         "room", gone.addr)
                self._close_peer(gone, "evicted (half-open limit)")
        conn = DtlsConnection(self._context, now, cookie=check.hello.cookie,
                              timers=self._timers, rtt_hint=check.rtt)
        peer = _Peer(addr, key, conn, now)
        self._peers[key] = peer
        conn.receive_datagram(data, now)
        self._process(peer)

    def _restart(self, peer: _Peer, data: bytes, addr: Address, key: PeerKey,
                 now: float) -> bool:
        """An epoch-0 handshake datagram from a known peer: maybe a new ClientHello.

        RFC 6347 §4.2.8: a new handshake from the same address and port replaces the old
        association, but only once the client has shown it receives at that address (a
        valid cookie). Returns True when the datagram was dealt with here.
        """
        jar = self._cookies
        assert jar is not None
        check = jar.check(data, addr, now)
        if check.verdict is Verdict.DROP:
            return False  # another handshake message: the connection's business
        if check.verdict is Verdict.SEND_VERIFY:
            assert check.reply is not None and self._transport is not None
            self._transport.sendto(check.reply, addr)
            self.hello_verify_sent += 1
            return True
        assert check.hello is not None
        if peer.conn.cookie_matches(check.hello.cookie):
            return False  # the same ClientHello again: a retransmission
        log.info("new DTLS handshake from %s replaces the current session", addr)
        self._close_peer(peer, "replaced by a new handshake")
        self._hello(data, addr, key, now)
        return True

    # ----------------------------------------------------------------- sessions
    def _handshake_done(self, peer: _Peer, event: HandshakeCompleted) -> None:
        self._admission.authenticated(peer.key)
        super()._handshake_done(peer, event)

    def _remove(self, peer: _Peer) -> None:
        if self._peers.get(peer.key) is peer:
            del self._peers[peer.key]
            self._admission.gone(peer.key, established=peer.link is not None)

    def _session_over(self, peer: _Peer, reason: str) -> None:
        if peer.link is None and not self._closing:
            # RFC 9132 §7.1 peers are authenticated in the handshake: a failure is worth a
            # line, and concerns this peer only.
            log.info("DTLS handshake with %s failed: %s", peer.addr, reason)

    def _sweep(self) -> None:
        """Close sessions silent for longer than idle_timeout; one pass over all of them."""
        self._sweeper = None
        loop, idle = self._loop, self._idle_timeout
        if self._closing or loop is None or idle is None or self._sweep_interval is None:
            return
        limit = loop.time() - idle
        stale = [p for p in self._peers.values() if p.link is not None and p.last_active < limit]
        for peer in stale:
            self._close_peer(peer, "idle timeout")
        self._sweeper = loop.call_later(self._sweep_interval, self._sweep)

    # ----------------------------------------------------------------- closing
    def _shutdown(self, reason: str) -> None:
        self._closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for peer in list(self._peers.values()):
            self._close_peer(peer, reason)

    def close(self) -> None:
        """Close every session (close_notify, ``link_down`` "closed") and the socket."""
        if self._closing:
            return
        self._shutdown("closed")
        if self._transport is not None:
            self._transport.close()

    async def wait_closed(self, timeout: float = 5.0) -> None:
        await wait_event(self.closed_event, timeout)


async def serve_dtls(handler: LinkHandler, host: str | None, port: int, context: DtlsContext,
                     reuse_port: bool = False, *,
                     idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
                     handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
                     timers: HandshakeTimers | None = None,
                     max_sessions: int = DEFAULT_MAX_SESSIONS,
                     max_half_open: int = DEFAULT_MAX_HALF_OPEN,
                     max_half_open_per_source: int = DEFAULT_MAX_HALF_OPEN_PER_SOURCE,
                     sweep_interval: float | None = None,
                     cookie_jar: CookieJar | None = None,
                     rcvbuf: int | None = 8 * 1024 * 1024,
                     sndbuf: int | None = DEFAULT_SNDBUF) -> DtlsServer:
    """Serve DTLS on ``host``:``port`` (port 0 picks one; host None: all addresses).

    Each peer that completes a handshake becomes a :class:`DtlsLink` (``initiator``
    False) given to ``handler.link_up``. Sessions that receive nothing for
    ``idle_timeout`` seconds are closed (reason "idle timeout"); handshakes that do not
    complete within ``handshake_timeout`` are dropped.
    """

    sock = make_socket(host, port, reuse_port=reuse_port, rcvbuf=rcvbuf, sndbuf=sndbuf)
    server = DtlsServer(handler, context, idle_timeout=idle_timeout,
                        handshake_timeout=handshake_timeout, timers=timers,
                        max_sessions=max_sessions, max_half_open=max_half_open,
                        max_half_open_per_source=max_half_open_per_source,
                        sweep_interval=sweep_interval, cookie_jar=cookie_jar)
    try:
        open_datagram(server, sock)
    except BaseException:
        sock.close()
        raise
    return server


class DtlsClient(_DtlsProtocol):
    """The dialling side: one socket, one peer (see :func:`dtls_connect`)."""

    _initiator = True

    def __init__(self, handler: LinkHandler, context: DtlsContext, remote: Address, *,
                 server_hostname: str | None, session: SSL.Session | None,
                 timers: HandshakeTimers) -> None:
        super().__init__(handler)
        if context.server_side:
            raise ValueError("dtls_connect needs a client context")
        self._context = context
        self._remote = remote
        self._server_hostname = server_hostname
        self._session = session
        self._timers = timers
        self._peer: _Peer | None = None
        self.ready: asyncio.Future[DtlsLink] | None = None
        self.last_error: Exception | None = None

    @property
    def peer(self) -> _Peer | None:
        return self._peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self._loop is not None
        now = self._loop.time()
        self.ready = self._loop.create_future()
        peername = transport.get_extra_info("peername")
        remote = cast(Address, tuple(peername)) if peername else self._remote
        try:
            conn = DtlsConnection(self._context, now, server_hostname=self._server_hostname,
                                  session=self._session, timers=self._timers)
        except Exception as exc:
            self.ready.set_exception(exc)
            transport.close()
            return
        self._peer = _Peer(remote, peer_key(remote), conn, now)
        self._process(self._peer)  # the ClientHello goes out now

    def datagram_received(self, data: bytes, addr: Address) -> None:
        peer = self._peer
        if peer is None or peer.gone or self._loop is None:
            return
        self._receive(peer, data, self._loop.time())

    def error_received(self, exc: Exception) -> None:
        # An ICMP error (port unreachable, ...) may be forged or transient: keep trying
        # until the handshake deadline, but say so if it fails.
        self.last_error = exc
        log.debug("DTLS client socket error: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._peer is not None:
            self._forget(self._peer, "socket closed" if exc is None else str(exc))
        if self.closed_event is not None:
            self.closed_event.set()

    def _link_up(self, peer: _Peer, link: DtlsLink) -> None:
        super()._link_up(peer, link)
        if self.ready is not None and not self.ready.done() and not link._closed:
            self.ready.set_result(link)

    def _remove(self, peer: _Peer) -> None:
        tr = self._transport
        if tr is not None and not tr.is_closing():
            tr.close()

    def _session_over(self, peer: _Peer, reason: str) -> None:
        if self.ready is None or self.ready.done():
            return
        if reason == "handshake timeout":
            extra = f" (last socket error: {self.last_error})" if self.last_error else ""
            self.ready.set_exception(TimeoutError(
                f"DTLS handshake with {self._remote} timed out{extra}"))
        else:
            self.ready.set_exception(DtlsHandshakeError(reason))

    def abort(self) -> None:
        if self._peer is not None:
            self._close_peer(self._peer, "aborted")
        elif self._transport is not None:
            self._transport.close()


def _retrieve(future: asyncio.Future[DtlsLink]) -> None:
    if not future.cancelled():
        future.exception()


async def dtls_connect(handler: LinkHandler, remote_addr: tuple[str, int] | Address,
                       context: DtlsContext, *, timeout: float = DEFAULT_CONNECT_TIMEOUT,
                       server_hostname: str | None = None,
                       session: SSL.Session | None = None,
                       timers: HandshakeTimers | None = None,
                       local_addr: tuple[str, int] | None = None) -> DtlsLink:
    """Dial DTLS to ``remote_addr``; returns the link once the handshake is complete.

    ``handler.link_up`` has been called when this returns (``initiator`` True). The
    server's certificate is checked against ``server_hostname`` (default: the host
    dialled) when the context checks names. ``session`` (``link.session`` of an earlier
    link made with the same context) asks for resumption. Raises
    :class:`DtlsHandshakeError` when the handshake fails, ``TimeoutError`` after
    ``timeout`` seconds, ``OSError`` for socket errors.
    """
    loop = asyncio.get_running_loop()
    base = timers if timers is not None else HandshakeTimers()
    handshake_timers = HandshakeTimers(initial=base.initial, maximum=base.maximum,
                                       deadline=timeout, floor=base.floor,
                                       keep_backoff=base.keep_backoff)
    host = remote_addr[0]
    proto = DtlsClient(handler, context, cast(Address, tuple(remote_addr)),
                       server_hostname=server_hostname if server_hostname is not None else host,
                       session=session, timers=handshake_timers)
    await loop.create_datagram_endpoint(lambda: proto, remote_addr=(host, remote_addr[1]),
                                        local_addr=local_addr)
    assert proto.ready is not None
    try:
        # The connection's own deadline fires first; this bound only guards against bugs.
        return await asyncio.wait_for(asyncio.shield(proto.ready), timeout + 1.0)
    except BaseException:
        proto.abort()
        ready = proto.ready
        if ready.done() and not ready.cancelled():
            # Abandoned (e.g. TLS won the Happy Eyeballs race): its outcome is no news;
            # retrieved here so that asyncio does not report it as never retrieved.
            ready.exception()
        else:
            ready.add_done_callback(_retrieve)
        raise
