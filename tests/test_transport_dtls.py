"""DTLS on loopback sockets: dotsd.transport.dtls (server, dialler) with dotsd.dtls."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
from typing import Any

import pytest
from cryptography.x509.oid import NameOID
from support.loopback import HOSTS, STEP, within
from support.pki import issued_client
from support.waiting import wait_until

from dotsd.dtls import (
    CookieJar,
    DtlsConfig,
    DtlsConnection,
    DtlsContext,
    HandshakeTimers,
    client_context,
    server_context,
)
from dotsd.link import Link, spki_sha256
from dotsd.pki import PkiPaths
from dotsd.transport.dtls import (
    DtlsHandshakeError,
    DtlsLink,
    DtlsServer,
    dtls_connect,
    serve_dtls,
)

pytestmark = [pytest.mark.network, pytest.mark.timeout(60)]

PSK_ID, PSK_KEY = b"dots-client-psk", b"0123456789abcdef"


@pytest.fixture(scope="module")
def sctx(pki: PkiPaths) -> DtlsContext:
    return server_context(DtlsConfig.from_pki(pki))


@pytest.fixture(scope="module")
def cctx(pki: PkiPaths) -> DtlsContext:
    return client_context(DtlsConfig.from_pki(pki, client=True))


def common_name(link: Link) -> str:
    cert = link.info.certificate
    assert cert is not None
    (attr,) = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attr.value)


class Node:
    """A LinkHandler: records links and data; ``echo`` answers every datagram; ``greet``
    sends a first datagram as soon as a link is up."""

    def __init__(self, echo: bool = False, greet: bytes | None = None) -> None:
        self.echo = echo
        self.greet = greet
        self.ups: asyncio.Queue[Link] = asyncio.Queue()
        self.data: asyncio.Queue[tuple[Link, bytes]] = asyncio.Queue()
        self.downs: asyncio.Queue[tuple[Link, str | None]] = asyncio.Queue()

    def link_up(self, link: Link) -> None:
        self.ups.put_nowait(link)
        if self.greet is not None:
            link.send(self.greet)

    def data_received(self, link: Link, data: bytes) -> None:
        if self.echo:
            link.send(b"echo:" + data)
        else:
            self.data.put_nowait((link, data))

    def link_down(self, link: Link, reason: str | None) -> None:
        self.downs.put_nowait((link, reason))

    async def next_data(self) -> tuple[Link, bytes]:
        return await within(self.data.get())


async def echo_once(node: Node, link: Link, payload: bytes) -> None:
    link.send(payload)
    got_link, data = await node.next_data()
    assert got_link is link and data == b"echo:" + payload


@contextlib.asynccontextmanager
async def dtls_server(handler: Node, host: str, ctx: DtlsContext,
                      **kwargs: Any) -> Any:
    server = await serve_dtls(handler, host, 0, ctx, **kwargs)
    try:
        yield server
    finally:
        server.close()
        await server.wait_closed()


# --- basics ----------------------------------------------------------------------------------

@pytest.mark.parametrize("host", HOSTS)
async def test_handshake_and_echo(host: str, pki: PkiPaths, sctx: DtlsContext,
                                  cctx: DtlsContext) -> None:
    server_node, client_node = Node(echo=True), Node()
    async with dtls_server(server_node, host, sctx) as server:
        link = await dtls_connect(client_node, (host, server.port), cctx, timeout=STEP,
                                  server_hostname="localhost")
        assert (await within(client_node.ups.get())) is link
        info = link.info
        assert info.transport == "dtls" and info.initiator and info.secure
        assert not info.reliable and common_name(link) == "server"
        server_link = await within(server_node.ups.get())
        assert not server_link.info.initiator and common_name(server_link) == "client"
        client_cert = server_link.info.certificate
        assert client_cert is not None
        assert server_link.info.spki_sha256 == spki_sha256(client_cert)
        for i in range(20):
            await echo_once(client_node, link, b"request %d" % i)
        link.close()
        down_link, reason = await within(server_node.downs.get())
        assert down_link is server_link and reason == "closed by peer"
        assert (await within(client_node.downs.get())) == (link, "closed")
        assert server.session_count == 0


@pytest.mark.parametrize("host", HOSTS)
async def test_server_side_sends_first(host: str, sctx: DtlsContext,
                                       cctx: DtlsContext) -> None:
    """RFC 9066 Call Home: the DTLS server may be the CoAP client. Its first datagram goes
    out from link_up; the DTLS client answers it."""
    server_node = Node(greet=b"GET /hello from the DTLS server")
    client_node = Node(echo=True)
    async with dtls_server(server_node, host, sctx) as server:
        link = await dtls_connect(client_node, (host, server.port), cctx, timeout=STEP)
        server_link, data = await server_node.next_data()
        assert data == b"echo:GET /hello from the DTLS server"
        assert not server_link.info.initiator and link.info.initiator
        server_link.send(b"another request")
        _, data = await server_node.next_data()
        assert data == b"echo:another request"


async def test_psk_over_sockets() -> None:
    sctx = server_context(DtlsConfig(psk_identity=PSK_ID, psk_key=PSK_KEY))
    cctx = client_context(DtlsConfig(psk_identity=PSK_ID, psk_key=PSK_KEY))
    server_node, client_node = Node(echo=True), Node()
    async with dtls_server(server_node, "127.0.0.1", sctx) as server:
        link = await dtls_connect(client_node, ("127.0.0.1", server.port), cctx)
        server_link = await within(server_node.ups.get())
        assert server_link.info.psk_identity == PSK_ID and server_link.info.certificate is None
        assert link.info.psk_identity == PSK_ID
        await echo_once(client_node, link, b"psk")


# --- refusals --------------------------------------------------------------------------------

async def test_wrong_ca_clients_are_refused_while_others_are_served(
        pki: PkiPaths, rogue_pki: PkiPaths, sctx: DtlsContext, cctx: DtlsContext) -> None:
    rogue = client_context(DtlsConfig(cert=rogue_pki.client_cert, key=rogue_pki.client_key,
                                      ca=pki.ca_cert))
    issued = issued_client(pki, "alice")
    alice = client_context(DtlsConfig(cert=issued.cert, key=issued.key, ca=pki.ca_cert))
    server_node, client_node = Node(echo=True), Node()
    async with dtls_server(server_node, "127.0.0.1", sctx) as server:
        good = await dtls_connect(client_node, ("127.0.0.1", server.port), cctx)
        await within(server_node.ups.get())

        async def keep_talking() -> int:
            for i in range(30):
                await echo_once(client_node, good, b"still here %d" % i)
                await asyncio.sleep(0.005)
            return 30

        async def attack() -> list[BaseException]:
            results = await asyncio.gather(*[
                dtls_connect(Node(), ("127.0.0.1", server.port), rogue, timeout=3.0)
                for _ in range(5)], return_exceptions=True)
            return [r for r in results if isinstance(r, BaseException)]

        talked, errors = await within(asyncio.gather(keep_talking(), attack()), 15)
        assert talked == 30
        assert len(errors) == 5 and all(isinstance(e, DtlsHandshakeError) for e in errors)
        assert "alert" in str(errors[0])  # the server says why (unknown CA)
        assert server_node.ups.empty()  # no link for the refused ones
        late = await dtls_connect(Node(), ("127.0.0.1", server.port), alice)
        assert common_name(await within(server_node.ups.get())) == "alice"
        assert server.session_count == 2 and server.half_open == 0
        late.close()


async def test_client_refuses_a_server_of_another_ca(rogue_pki: PkiPaths,
                                                    cctx: DtlsContext) -> None:
    rogue_server = server_context(DtlsConfig.from_pki(rogue_pki))
    async with dtls_server(Node(), "127.0.0.1", rogue_server) as server:
        with pytest.raises(DtlsHandshakeError, match="certificate verify failed"):
            await dtls_connect(Node(), ("127.0.0.1", server.port), cctx)
        # The client's alert ends the server's half-open handshake.
        await wait_until(lambda: server.session_count == 0, STEP, what="no session left")


async def test_connect_timeout_when_nobody_answers(cctx: DtlsContext) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        port = black_hole.getsockname()[1]
        with pytest.raises(TimeoutError):
            await dtls_connect(Node(), ("127.0.0.1", port), cctx, timeout=0.6,
                               timers=HandshakeTimers(initial=0.1))
        received = 0
        black_hole.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                black_hole.recv(2048)
                received += 1
        # The ClientHello and its retransmissions after 0.1 and 0.3 s (RFC 6347 §4.2.4.1:
        # the timer doubles); the next would be due at 0.7 s, after the 0.6 s timeout. So
        # the attempt ended at its timeout: not at the handshake's own deadline (60 s),
        # nor at dtls_connect's backstop one second later (two more ClientHellos).
        assert received == 3


async def test_an_abandoned_dial_leaves_no_unretrieved_exception(cctx: DtlsContext) -> None:
    """A DTLS attempt cancelled while its handshake runs (TLS won the Happy Eyeballs race,
    RFC 9132 §4.3) ends quietly: asyncio used to report "Future exception was never
    retrieved ... DtlsHandshakeError" before the client's success line."""
    reports: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: reports.append(context))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as black_hole:
            black_hole.bind(("127.0.0.1", 0))
            port = black_hole.getsockname()[1]
            attempt = asyncio.create_task(
                dtls_connect(Node(), ("127.0.0.1", port), cctx, timeout=5.0))
            await wait_until(lambda: _pending(black_hole), STEP, what="the ClientHello")
            attempt.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await attempt
            for _ in range(3):
                await asyncio.sleep(0)
            gc.collect()  # an unretrieved exception is reported when its future goes away
            await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert [r.get("message") for r in reports] == []


def _pending(sock: socket.socket) -> bool:
    try:
        sock.recv(2048, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    return True


async def recv(sock: socket.socket) -> bytes:
    return await within(asyncio.get_running_loop().sock_recv(sock, 2048))


# --- no state for strangers ------------------------------------------------------------------

async def test_garbage_and_cookieless_hellos_create_no_state(pki: PkiPaths, sctx: DtlsContext,
                                                             cctx: DtlsContext) -> None:
    async with dtls_server(Node(), "127.0.0.1", sctx) as server:
        hello = DtlsConnection(cctx, 0.0).datagrams_to_send()[0]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            for junk in (b"", b"\x00" * 40, os.urandom(300), b"\x17\xfe\xfd" + bytes(20),
                         hello[:30]):
                s.sendto(junk, ("127.0.0.1", server.port))
            for _ in range(20):
                s.sendto(hello, ("127.0.0.1", server.port))
            replies = [await recv(s) for _ in range(20)]
        assert all(r[0] == 22 and r[13] == 3 for r in replies)  # HelloVerifyRequests
        assert server.session_count == 0 and server.half_open == 0
        assert server.hello_verify_sent == 20 and server.dropped == 5


async def test_half_open_limit_and_handshake_deadline(pki: PkiPaths, sctx: DtlsContext,
                                                      cctx: DtlsContext) -> None:
    """Clients that pass the cookie exchange and then go silent hold half-open state: at
    most ``max_half_open`` of them (the oldest makes room for a new one), at most
    ``max_half_open_per_source`` from one address (one address with many ports cannot fill
    the pool), and only until the handshake deadline."""
    jar = CookieJar(b"c" * 32)
    async with dtls_server(Node(), "127.0.0.1", sctx, max_half_open=2,
                           max_half_open_per_source=2, handshake_timeout=0.5,
                           cookie_jar=jar) as server:
        sources = ["127.0.0.2", "127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.4"]
        socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in sources]
        try:
            for s, source in zip(socks, sources, strict=True):
                s.bind((source, 0))
                s.setblocking(False)
                conn = DtlsConnection(cctx, 0.0)
                s.sendto(conn.datagrams_to_send()[0], ("127.0.0.1", server.port))
                conn.receive_datagram(await recv(s), 0.0)  # the HelloVerifyRequest
                s.sendto(conn.datagrams_to_send()[0], ("127.0.0.1", server.port))
            adm = server.admission
            await wait_until(lambda: adm.refused + adm.evicted == 3, STEP,
                             what="the five ClientHellos handled")
            # The third from 127.0.0.2 was refused (per source); 127.0.0.3 and 127.0.0.4
            # each evicted the oldest half-open handshake (the pool holds two).
            assert (adm.refused, adm.evicted, server.dropped) == (1, 2, 1)
            assert server.half_open == 2 and server.session_count == 2
            assert {p.addr[0] for p in server._peers.values()} == {"127.0.0.3", "127.0.0.4"}
            # Gone at the handshake deadline (handshake_timeout=0.5 s, where the default
            # would keep them 60 s); the bound of the wait leaves room for a loaded machine.
            await wait_until(lambda: server.half_open == 0 and server.session_count == 0,
                             2.0, what="half-open state gone")
        finally:
            for s in socks:
                s.close()


# --- sessions --------------------------------------------------------------------------------

async def test_resumption(sctx: DtlsContext, cctx: DtlsContext) -> None:
    server_node, client_node = Node(echo=True), Node()
    async with dtls_server(server_node, "127.0.0.1", sctx) as server:
        first = await dtls_connect(client_node, ("127.0.0.1", server.port), cctx)
        assert isinstance(first, DtlsLink) and first.session is not None
        assert not first.connection.resumed
        session = first.session
        first.close()
        second = await dtls_connect(client_node, ("127.0.0.1", server.port), cctx,
                                    session=session)
        assert second.connection.resumed
        await within(server_node.ups.get())
        server_second = await within(server_node.ups.get())
        assert isinstance(server_second, DtlsLink) and server_second.connection.resumed
        assert common_name(server_second) == "client"  # the certificate survives
        await echo_once(client_node, second, b"resumed")


async def test_idle_sessions_are_closed(sctx: DtlsContext, cctx: DtlsContext) -> None:
    server_node, idle_node, busy_node = Node(echo=True), Node(), Node()
    async with dtls_server(server_node, "127.0.0.1", sctx, idle_timeout=0.4,
                           sweep_interval=0.05) as server:
        idle = await dtls_connect(idle_node, ("127.0.0.1", server.port), cctx)
        busy = await dtls_connect(busy_node, ("127.0.0.1", server.port), cctx)
        for i in range(10):
            await echo_once(busy_node, busy, b"%d" % i)
            await asyncio.sleep(0.08)
        _, reason = await within(server_node.downs.get())
        assert reason == "idle timeout"
        # The server said goodbye with close_notify.
        assert (await within(idle_node.downs.get())) == (idle, "closed by peer")
        assert server.session_count == 1
        await echo_once(busy_node, busy, b"alive")


async def test_new_handshake_from_same_address_replaces_session(
        sctx: DtlsContext, cctx: DtlsContext) -> None:
    """RFC 6347 §4.2.8: a client that lost its state dials again from the same port."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        local = probe.getsockname()
    server_node = Node(echo=True)
    async with dtls_server(server_node, "127.0.0.1", sctx) as server:
        first_node = Node()
        first = await dtls_connect(first_node, ("127.0.0.1", server.port), cctx,
                                   local_addr=local)
        old = await within(server_node.ups.get())
        first._owner._transport.close()  # type: ignore[union-attr]  # a crash: no close_notify
        await within(first_node.downs.get())
        second_node = Node()
        second = await dtls_connect(second_node, ("127.0.0.1", server.port), cctx,
                                    local_addr=local)
        assert (await within(server_node.downs.get())) == (old, "replaced by a new handshake")
        new = await within(server_node.ups.get())
        assert new is not old and server.session_count == 1
        await echo_once(second_node, second, b"again")


async def test_hundred_concurrent_clients_on_one_socket(sctx: DtlsContext,
                                                        cctx: DtlsContext) -> None:
    server_node = Node(echo=True)
    async with dtls_server(server_node, "127.0.0.1", sctx) as server:
        nodes = [Node() for _ in range(100)]
        links = await within(asyncio.gather(*[
            dtls_connect(n, ("127.0.0.1", server.port), cctx, timeout=20) for n in nodes]), 30)
        assert server.session_count == 100 and server.half_open == 0
        for i, link in enumerate(links):
            link.send(b"%d" % i)
        for i, node in enumerate(nodes):
            _, data = await node.next_data()
            assert data == b"echo:%d" % i
        for link in links:
            link.close()
        for _ in range(100):
            await within(server_node.downs.get())
        assert server.session_count == 0


async def test_reuse_port(sctx: DtlsContext, cctx: DtlsContext) -> None:
    first = await serve_dtls(Node(), "127.0.0.1", 0, sctx, reuse_port=True)
    second = await serve_dtls(Node(), "127.0.0.1", first.port, sctx, reuse_port=True)
    try:
        assert second.port == first.port
        link = await dtls_connect(Node(), ("127.0.0.1", first.port), cctx)
        assert first.session_count + second.session_count == 1
        link.close()
    finally:
        first.close()
        second.close()


async def test_server_close_tells_every_client(sctx: DtlsContext, cctx: DtlsContext) -> None:
    server_node = Node()
    server = await serve_dtls(server_node, "127.0.0.1", 0, sctx)
    assert isinstance(server, DtlsServer)
    nodes = [Node() for _ in range(3)]
    links = [await dtls_connect(n, ("127.0.0.1", server.port), cctx) for n in nodes]
    server.close()
    await server.wait_closed()
    for node, link in zip(nodes, links, strict=True):
        assert (await within(node.downs.get())) == (link, "closed by peer")
    downs = [await within(server_node.downs.get()) for _ in range(3)]
    assert {reason for _, reason in downs} == {"closed"}
