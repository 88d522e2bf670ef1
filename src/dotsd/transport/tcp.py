"""asyncio adapters for CoAP over TCP and TLS (RFC 8323): stream connections as ``Link``s.

``serve_tcp`` accepts connections, ``connect_tcp`` dials one; both hand every established
connection to a :class:`~dotsd.link.LinkHandler`. Bytes pass through untouched:
framing and signaling live in :mod:`dotsd.coap.tcp`. Who dialled (``PeerInfo.initiator``)
is independent of who acts as CoAP client or server: either side may send requests on a
link (RFC 8323 §3.3; RFC 9066 Call Home relies on it).

TLS runs on an ``ssl.SSLObject`` over memory BIOs inside the protocol (not asyncio's
``ssl=``), so that a failed handshake sends its alert to the peer, is logged with the
peer's address, and touches no other connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable, Sequence
from typing import Final, cast

from cryptography import x509

from dotsd.link import Address, Link, LinkHandler, PeerInfo, make_peer_info
from dotsd.tls.context import ALPN_COAP
from dotsd.transport.admission import Admission, AdmissionLimits
from dotsd.transport.base import LinkBase, Listener

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT: Final = 10.0  # seconds for the TCP connect plus the TLS handshake
# Connections in all; waiting for their TLS handshake in total; and per source address (or
# IPv6 /64). A DOTS client keeps one connection; a NAT in front of many clients rarely has
# more than a few of them handshaking at once.
DEFAULT_LIMITS: Final = AdmissionLimits(total=20_000, pending=1_000, per_source=16)
_READ_SIZE: Final = 65536


class TcpLink(LinkBase):
    """One TCP or TLS connection, as the CoAP layer sees it (implements ``Link``)."""

    __slots__ = ("_proto", "_write")

    def __init__(self, proto: _StreamProtocol, info: PeerInfo,
                 write: Callable[[bytes], None]) -> None:
        self._proto = proto
        super().__init__(info)
        self._write = write

    def send(self, data: bytes) -> None:
        """Write stream bytes; dropped once the link is closed."""
        if not self._closed and data:
            self._write(data)

    def close(self) -> None:
        """Close after the buffered bytes are written (TLS: after our close_notify)."""
        if not self._closed:
            self._closed = True
            self._proto.close_gracefully()

    def abort(self) -> None:
        """Close at once, dropping buffered bytes."""
        self._closed = True
        self._proto.abort()

    def __repr__(self) -> str:
        return f"<TcpLink {self._info.transport} {self._info.address!r}>"


def _tls_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS error: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by peer"
    return str(exc) or type(exc).__name__


class _StreamProtocol(asyncio.Protocol):
    """Glue between one TCP connection (optionally TLS on memory BIOs) and a LinkHandler."""

    def __init__(self, handler: LinkHandler, initiator: bool, *,
                 ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None,
                 handshake_timeout: float = DEFAULT_TIMEOUT,
                 server: TcpServer | None = None, require_alpn: str | None = None) -> None:
        self._handler = handler
        self._require_alpn = require_alpn
        self._initiator = initiator
        self._ssl_context = ssl_context
        self._server_hostname = server_hostname
        self._handshake_timeout = handshake_timeout
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._peer: Address = ("", 0)
        self._tls: ssl.SSLObject | None = None
        # TLS state exists only once TLS starts: for an accepted connection, when its first
        # bytes (the ClientHello) arrive; an idle connection holds no TLS memory.
        self._incoming: ssl.MemoryBIO | None = None
        self._outgoing: ssl.MemoryBIO | None = None
        self._awaiting_hello = False
        self._timer: asyncio.TimerHandle | None = None
        self._link: TcpLink | None = None
        self._down_reason: str | None = None  # why we are closing, when we know it
        self._eof = False
        # Dialler only: resolved with the link, or the reason it never came up.
        self.ready: asyncio.Future[TcpLink] | None = None

    @property
    def link(self) -> TcpLink | None:
        return self._link

    @property
    def in_handshake(self) -> bool:
        return (self._tls is not None or self._awaiting_hello) and self._link is None

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = tr = cast(asyncio.Transport, transport)
        peername = tr.get_extra_info("peername")
        if peername:
            self._peer = cast(Address, tuple(peername))
        sock = tr.get_extra_info("socket")
        if sock is not None:
            # Small CoAP messages must leave at once, not wait for Nagle.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        server = self._server
        if server is not None:
            admitted, victim = server._admission.admit(self, self._peer)
            if not admitted:
                # Over a per-source or total limit (dotsd.transport.admission): closed before
                # anything is allocated for it.
                log.debug("TCP connection from %s refused: connection limits", self._peer)
                tr.abort()
                return
            server._protocols.add(self)
            if victim is not None:
                log.info("TCP connection from %s closed: the oldest unauthenticated one, to "
                         "make room", victim._peer)
                victim._down_reason = "evicted (connection limits)"
                victim.abort()
        if self._ssl_context is None:
            self._up(tr.write)
            return
        self._timer = asyncio.get_running_loop().call_later(
            self._handshake_timeout, self._handshake_timed_out)
        if self._initiator:
            self._start_tls()
            self._handshake()  # the client's ClientHello goes out now
        else:
            self._awaiting_hello = True

    def _start_tls(self) -> None:
        assert self._ssl_context is not None
        self._awaiting_hello = False
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = self._ssl_context.wrap_bio(
            self._incoming, self._outgoing, server_side=not self._initiator,
            server_hostname=self._server_hostname if self._initiator else None)

    def data_received(self, data: bytes) -> None:
        if self._awaiting_hello:
            self._start_tls()
        if self._tls is None or self._incoming is None:
            self._deliver(data)
            return
        self._incoming.write(data)
        if self._link is None and not self._handshake():
            return
        self._read_tls()

    def eof_received(self) -> bool | None:
        self._eof = True
        if self.in_handshake:
            self._handshake_failed(
                ConnectionError("connection closed during the TLS handshake"), quiet=True)
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        server = self._server
        if server is not None:
            server._protocols.discard(self)
            server._admission.gone(self, established=self._link is not None)
        link = self._link
        if link is None:
            if self._tls is not None and self._down_reason is None:
                self._handshake_failed(exc or ConnectionError(
                    "connection closed during the TLS handshake"), quiet=True)
            return
        closed_here = link._closed
        link._closed = True
        if self._down_reason is not None:
            reason = self._down_reason
        elif exc is not None:
            reason = _tls_reason(exc)
        elif closed_here:
            reason = "closed"
        else:
            reason = "closed by peer" if self._eof else "connection closed"
        try:
            self._handler.link_down(link, reason)
        except Exception:
            log.exception("link handler failed on link_down of %s", link)

    # --- link side -----------------------------------------------------------------------

    def close_gracefully(self) -> None:
        tr = self._transport
        if tr is None or tr.is_closing():
            return
        if self._tls is not None and self._link is not None:
            # RFC 8446 §6.1 / RFC 5246 §7.2.1: send close_notify; no need to wait for the
            # peer's.
            with contextlib.suppress(ssl.SSLError):
                self._tls.unwrap()
            self._flush()
        tr.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # --- internals -----------------------------------------------------------------------

    def _deliver(self, data: bytes) -> None:
        link = self._link
        if link is None or link._closed:
            return
        try:
            self._handler.data_received(link, data)
        except Exception:
            log.exception("link handler failed on data from %s; closing", link)
            link.abort()

    def _up(self, write: Callable[[bytes], None]) -> None:
        certificate = None
        if self._tls is not None:
            der = self._tls.getpeercert(binary_form=True)
            certificate = x509.load_der_x509_certificate(der) if der else None
        info = make_peer_info(self._peer, "tcp" if self._tls is None else "tls",
                              self._initiator, certificate=certificate)
        link = TcpLink(self, info, write)
        self._link = link
        try:
            self._handler.link_up(link)
        except Exception as exc:
            log.exception("link handler failed on link_up of %s; closing", link)
            # The handler never accepted the link: no link_down for it either.
            self._link = None
            self._down_reason = "link_up failed"
            link.abort()
            if self.ready is not None and not self.ready.done():
                self.ready.set_exception(ConnectionError(f"link_up failed: {exc!r}"))
            return
        if self._server is not None:
            self._server._admission.authenticated(self)
        if self.ready is not None and not self.ready.done():
            self.ready.set_result(link)

    def _flush(self) -> None:
        out = self._outgoing
        data = out.read() if out is not None else b""
        if data and self._transport is not None:
            self._transport.write(data)

    def _handshake(self) -> bool:
        """Advance the TLS handshake; True once it is complete and the link is up."""
        assert self._tls is not None
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return False
        except ssl.SSLError as exc:
            self._flush()  # the alert tells the peer why (RFC 8446 §6.2)
            self._handshake_failed(exc)
            return False
        self._flush()  # Finished, TLS 1.3 session tickets
        if self._require_alpn is not None and \
                self._tls.selected_alpn_protocol() != self._require_alpn:
            # RFC 8323 §8.2: on a port other than 5684 the TLS client "MUST close the
            # connection" unless the server selected "coap".
            self._handshake_failed(ConnectionError(
                f"the TLS server did not select ALPN {self._require_alpn!r} (RFC 8323 §8.2)"))
            return False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._up(self._tls_write)
        return self._link is not None and not self._link._closed

    def _handshake_timed_out(self) -> None:
        self._timer = None
        self._handshake_failed(TimeoutError("TLS handshake timed out"))

    def _handshake_failed(self, exc: BaseException, quiet: bool = False) -> None:
        reason = _tls_reason(exc)
        self._down_reason = reason
        if self._initiator:
            log.debug("TLS handshake with %s failed: %s", self._peer, reason)
        elif quiet:
            log.info("TLS handshake with %s failed: %s", self._peer, reason)
        else:
            # A bad client is logged and affects its own connection only.
            log.warning("TLS handshake with %s failed: %s", self._peer, reason)
        if self.ready is not None and not self.ready.done():
            if isinstance(exc, OSError):  # incl. ssl.SSLError and TimeoutError
                self.ready.set_exception(exc)
            else:
                self.ready.set_exception(ConnectionError(reason))
        if self._transport is not None:
            self._transport.close()  # after the alert is written

    def _read_tls(self) -> None:
        tls = self._tls
        assert tls is not None
        while True:
            try:
                data = tls.read(_READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                data = b""
            except ssl.SSLError as exc:
                # An alert from the peer (TLS 1.3: a refused client certificate shows up
                # here) or a broken record.
                self._flush()
                self._down_reason = _tls_reason(exc)
                if self._transport is not None:
                    self._transport.close()
                return
            if not data:  # the peer's close_notify
                self._eof = True
                self.close_gracefully()
                return
            self._deliver(data)
            if self._transport is None or self._transport.is_closing():
                return
        self._flush()  # post-handshake messages (key update, tickets)

    def _tls_write(self, data: bytes) -> None:
        assert self._tls is not None
        try:
            self._tls.write(data)
        except ssl.SSLError as exc:
            self._down_reason = _tls_reason(exc)
            self.abort()
            return
        self._flush()


class TcpServer(Listener):
    """What :func:`serve_tcp` returns: the listening sockets and the accepted links."""

    def __init__(self, handler: LinkHandler, ssl_context: ssl.SSLContext | None,
                 handshake_timeout: float, limits: AdmissionLimits = DEFAULT_LIMITS) -> None:
        self._handler = handler
        self._ssl_context = ssl_context
        self._handshake_timeout = handshake_timeout
        self._admission: Admission[_StreamProtocol] = Admission(limits)
        self._server: asyncio.Server | None = None
        self._addresses: list[Address] = []
        self._protocols: set[_StreamProtocol] = set()

    def _factory(self) -> _StreamProtocol:
        return _StreamProtocol(self._handler, False, ssl_context=self._ssl_context,
                               handshake_timeout=self._handshake_timeout, server=self)

    @property
    def transport(self) -> str:
        return "tcp" if self._ssl_context is None else "tls"

    @property
    def addresses(self) -> list[Address]:
        """The bound addresses (kept after :meth:`close`)."""
        return list(self._addresses)

    @property
    def port(self) -> int:
        """The bound port (of the first socket when several were bound)."""
        return self._addresses[0][1]

    @property
    def links(self) -> list[TcpLink]:
        return [p.link for p in self._protocols if p.link is not None]

    @property
    def admission(self) -> Admission[_StreamProtocol]:
        """Connections pending and established, and how many were refused or evicted."""
        return self._admission

    def close(self) -> None:
        """Stop listening, drop pending handshakes, close every link."""
        if self._server is not None:
            self._server.close()
        for proto in list(self._protocols):
            if proto.link is not None:
                proto.link.close()
            else:
                proto.abort()

    async def wait_closed(self, timeout: float = 5.0) -> None:
        """Wait until the listener and every connection are gone (at most ``timeout`` s)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._protocols and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for proto in list(self._protocols):
            proto.abort()
        if self._server is not None:
            await asyncio.wait_for(self._server.wait_closed(), timeout)


async def serve_tcp(handler: LinkHandler, host: str | Sequence[str] | None, port: int,
                    ssl_context: ssl.SSLContext | None = None, reuse_port: bool = False, *,
                    handshake_timeout: float = DEFAULT_TIMEOUT,
                    backlog: int = 1024, limits: AdmissionLimits = DEFAULT_LIMITS) -> TcpServer:
    """Listen for CoAP over TCP (or TLS with ``ssl_context``); port 0 picks a free port.

    Each accepted connection becomes a :class:`TcpLink` with ``initiator`` False, given to
    ``handler.link_up`` (after the TLS handshake, if any). A failed or timed-out handshake
    is logged (warning) and closes that connection only. ``limits``: how many connections
    may wait for their TLS handshake, per source and in total, and how many there may be in
    all (:mod:`dotsd.transport.admission`).
    """
    server = TcpServer(handler, ssl_context, handshake_timeout, limits)
    loop = asyncio.get_running_loop()
    if host == "::" and socket.has_ipv6:
        # "::" means every address, IPv4 too; asyncio would set IPV6_V6ONLY on its socket and
        # leave IPv4 clients without TLS (the DTLS socket is dual-stack, transport/udp.py).
        server._server = await loop.create_server(
            server._factory, sock=_dual_stack_listener(port, reuse_port), backlog=backlog)
    else:
        server._server = await loop.create_server(
            server._factory, host, port, reuse_port=reuse_port or None, backlog=backlog)
    server._addresses = [cast(Address, tuple(s.getsockname())) for s in server._server.sockets]
    return server


def _dual_stack_listener(port: int, reuse_port: bool) -> socket.socket:
    """A TCP socket bound to [::]:``port`` that takes IPv4 connections too."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("::", port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def connect_tcp(handler: LinkHandler, host: str, port: int,
                      ssl_context: ssl.SSLContext | None = None,
                      server_hostname: str | None = None,
                      timeout: float = DEFAULT_TIMEOUT, require_alpn: bool = True) -> Link:
    """Dial CoAP over TCP (or TLS with ``ssl_context``); returns the link once it is up.

    ``handler.link_up`` has been called when this returns (``initiator`` True). The TLS
    server name defaults to ``host`` (SNI and RFC 6125 check, RFC 9132 §7.1). Raises
    ``OSError`` (``ssl.SSLError`` for a refused handshake, ``ConnectionError`` when the
    peer hangs up during it) or ``TimeoutError``. With ``require_alpn`` and TLS on a port
    other than 5684, a server that does not select ALPN "coap" is refused (RFC 8323 §8.2).
    """
    if ssl_context is None and server_hostname is not None:
        raise ValueError("server_hostname is only meaningful with ssl_context")
    loop = asyncio.get_running_loop()
    proto = _StreamProtocol(
        handler, True, ssl_context=ssl_context,
        server_hostname=server_hostname if server_hostname is not None else host,
        handshake_timeout=timeout,
        require_alpn=ALPN_COAP if ssl_context is not None and require_alpn and port != 5684
        else None)
    ready: asyncio.Future[TcpLink] = loop.create_future()
    # The outcome is retrieved here even when nobody waits any more (timeout, cancel).
    ready.add_done_callback(lambda f: f.cancelled() or f.exception())
    proto.ready = ready
    deadline = loop.time() + timeout
    await asyncio.wait_for(loop.create_connection(lambda: proto, host, port), timeout)
    try:
        return await asyncio.wait_for(ready, max(0.0, deadline - loop.time()))
    except BaseException:
        proto.abort()
        raise
