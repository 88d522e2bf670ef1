"""CoAP over TCP and TLS on loopback: dotsd.transport.tcp, dotsd.tls and dotsd.coap.tcp together."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import ssl
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from support.loopback import HOSTS, STEP, within

from dotsd.coap.codec import decode_tcp, encode_tcp, tcp_frame_length
from dotsd.coap.message import Message
from dotsd.coap.numbers import Code, is_request
from dotsd.coap.tcp import CoapTcpConnection, ConnectionAborted, MessageReceived
from dotsd.link import Link, spki_sha256
from dotsd.pki import PkiPaths
from dotsd.tls import TLS12_CIPHERS, client_context, server_context
from dotsd.transport.tcp import TcpServer, connect_tcp, serve_tcp

pytestmark = [pytest.mark.network, pytest.mark.timeout(30)]



def run(coro: Coroutine[Any, Any, None], limit: float = 20.0) -> None:
    asyncio.run(asyncio.wait_for(coro, limit))


def common_name(cert: x509.Certificate) -> str:
    (attr,) = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attr.value)


def server_ctx(pki: PkiPaths) -> ssl.SSLContext:
    return server_context(pki.server_cert, pki.server_key, pki.ca_cert)


def client_ctx(pki: PkiPaths, ca: Path | None = None) -> ssl.SSLContext:
    """The client of ``pki``, trusting ``ca`` (default: its own CA)."""
    return client_context(pki.client_cert, pki.client_key, ca or pki.ca_cert)


# --- a small CoAP node over links ------------------------------------------------------------

class Node:
    """A LinkHandler running CoapTcpConnection per link; answers every request with 2.05."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.conns: dict[Link, CoapTcpConnection] = {}
        self.ups: asyncio.Queue[Link] = asyncio.Queue()
        self.downs: asyncio.Queue[tuple[Link, str | None]] = asyncio.Queue()
        self.responses: asyncio.Queue[tuple[Link, Message]] = asyncio.Queue()
        self.aborts: list[ConnectionAborted] = []

    # LinkHandler
    def link_up(self, link: Link) -> None:
        conn = CoapTcpConnection()
        self.conns[link] = conn
        link.send(conn.data_to_send())  # RFC 8323 §5.3: CSM first
        self.ups.put_nowait(link)

    def data_received(self, link: Link, data: bytes) -> None:
        conn = self.conns[link]
        conn.receive_data(data)
        while (event := conn.next_event()) is not None:
            if isinstance(event, MessageReceived):
                msg = event.message
                if is_request(msg.code):
                    conn.send(Message(code=Code.CONTENT, token=msg.token,
                                      payload=f"{self.name}:{msg.path_str}".encode()))
                else:
                    self.responses.put_nowait((link, msg))
            elif isinstance(event, ConnectionAborted):
                self.aborts.append(event)
        link.send(conn.data_to_send())
        if conn.closed:
            link.close()

    def link_down(self, link: Link, reason: str | None) -> None:
        if link in self.conns:
            self.conns[link].close()
        self.downs.put_nowait((link, reason))

    # helpers
    def request(self, link: Link, path: str, token: bytes) -> None:
        conn = self.conns[link]
        conn.send(Message(code=Code.GET, token=token).set_path(path))
        link.send(conn.data_to_send())

    async def get(self, link: Link, path: str, token: bytes) -> str:
        self.request(link, path, token)
        got_link, msg = await within(self.responses.get())
        assert got_link is link and msg.token == token and msg.code == Code.CONTENT
        return msg.payload.decode()


async def serve(node: Node, host: str, ctx: ssl.SSLContext | None = None,
                **kwargs: Any) -> TcpServer:
    return await serve_tcp(node, host, 0, ssl_context=ctx, **kwargs)


# --- plain TCP ---------------------------------------------------------------------------------

@pytest.mark.parametrize("host", HOSTS)
def test_tcp_request_response(host: str) -> None:
    async def main() -> None:
        server_node, client_node = Node("server"), Node("client")
        async with await serve(server_node, host) as server:
            link = await connect_tcp(client_node, host, server.port)
            assert link.info.transport == "tcp" and link.info.initiator
            assert link.info.address[:2] == (host, server.port)
            assert link.info.certificate is None and not link.info.secure
            assert await client_node.get(link, "/hello", b"\x01") == "server:/hello"
            peer = await within(server_node.ups.get())
            assert not peer.info.initiator and peer.info.transport == "tcp"
            assert peer.info.address[0] == host
            link.close()
            assert await within(client_node.downs.get()) == (link, "closed")
            assert await within(server_node.downs.get()) == (peer, "closed by peer")
    run(main())


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 on this host")
def test_tcp_on_any_address_takes_ipv4_too() -> None:
    """``::`` means every address: an IPv4 client reaches it (asyncio alone makes the socket
    IPv6-only, and a DOTS client over IPv4 could never fall back to TLS)."""
    async def main() -> None:
        server_node, client_node = Node("server"), Node("client")
        async with await serve(server_node, "::") as server:
            link = await connect_tcp(client_node, "127.0.0.1", server.port)
            assert await client_node.get(link, "/v4", b"\x04") == "server:/v4"
            link6 = await connect_tcp(client_node, "::1", server.port)
            assert await client_node.get(link6, "/v6", b"\x06") == "server:/v6"
            link.close()
            link6.close()
    run(main())


def test_tcp_server_close_takes_links_down() -> None:
    async def main() -> None:
        server_node, client_node = Node("server"), Node("client")
        server = await serve(server_node, "127.0.0.1")
        link = await connect_tcp(client_node, "127.0.0.1", server.port)
        await within(server_node.ups.get())
        server.close()
        await within(server.wait_closed())
        down, reason = await within(client_node.downs.get())
        assert down is link and reason
        with pytest.raises(OSError):
            await connect_tcp(client_node, "127.0.0.1", server.port)
    run(main())


def test_tcp_peer_not_sending_csm_is_aborted() -> None:
    async def main() -> None:
        server_node = Node("server")
        async with await serve(server_node, "127.0.0.1") as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(encode_tcp(Message(code=Code.GET, token=b"1")))
            stream = b""
            for _ in range(10):
                data = await within(reader.read(4096))
                if not data:
                    break
                stream += data
            got: list[Message] = []
            while stream:
                total = tcp_frame_length(stream, 1152)
                got.append(decode_tcp(stream[:total]))
                stream = stream[total:]
            assert [m.code for m in got] == [Code.CSM, Code.ABORT]
            assert b"CSM" in got[1].payload
            writer.close()
            assert server_node.aborts and not server_node.aborts[0].by_peer
            _, reason = await within(server_node.downs.get())
            assert reason
    run(main())


def test_connect_refused() -> None:
    async def main() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with pytest.raises(OSError):
            await connect_tcp(Node("c"), "127.0.0.1", port, timeout=2.0)
    run(main())


# --- TLS ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("host", HOSTS)
def test_tls_mutual_auth(pki: PkiPaths, host: str) -> None:
    async def main() -> None:
        server_node, client_node = Node("server"), Node("client")
        async with await serve(server_node, host, server_ctx(pki)) as server:
            link = await connect_tcp(client_node, host, server.port, client_ctx(pki))
            info = link.info
            assert info.transport == "tls" and info.secure and info.reliable and info.initiator
            assert info.certificate is not None
            assert common_name(info.certificate) == "server"
            assert info.spki_sha256 == spki_sha256(info.certificate)
            assert await client_node.get(link, "/a", b"\x01") == "server:/a"
            peer = await within(server_node.ups.get())
            assert not peer.info.initiator and peer.info.transport == "tls"
            assert peer.info.certificate is not None
            assert common_name(peer.info.certificate) == "client"
            assert peer.info.spki_sha256 is not None
            # Many messages in both directions keep their order.
            for i in range(50):
                client_node.request(link, f"/n/{i}", i.to_bytes(2, "big"))
            for i in range(50):
                got_link, msg = await within(client_node.responses.get())
                assert got_link is link and msg.token == i.to_bytes(2, "big")
                assert msg.payload == f"server:/n/{i}".encode()
    run(main())


@pytest.mark.parametrize("tls", [True, False])
@pytest.mark.parametrize("host", HOSTS)
def test_listener_sends_first_request(pki: PkiPaths, host: str, tls: bool) -> None:
    # RFC 9066 Call Home: the TLS server (Call Home DOTS client) sends the requests and the
    # dialler (Call Home DOTS server) answers them.
    async def main() -> None:
        listener, dialler = Node("listener"), Node("dialler")
        s_ctx, c_ctx = (server_ctx(pki), client_ctx(pki)) if tls else (None, None)
        async with await serve(listener, host, s_ctx) as server:
            link = await connect_tcp(dialler, host, server.port, c_ctx)
            accepted = await within(listener.ups.get())
            assert not accepted.info.initiator and link.info.initiator
            assert await listener.get(accepted, "/mitigate", b"\x07") == "dialler:/mitigate"
            assert await dialler.get(link, "/back", b"\x08") == "listener:/back"
    run(main())


def test_tls_wrong_ca_client_refused_good_client_unaffected(
        pki: PkiPaths, rogue_pki: PkiPaths, caplog: pytest.LogCaptureFixture) -> None:
    async def refused(node: Node, ctx: ssl.SSLContext, port: int) -> str:
        # TLS 1.2 fails in the handshake; with TLS 1.3 the client finishes first and the
        # server's alert arrives right after: either way no link survives, and the client
        # learns why from the alert.
        try:
            link = await connect_tcp(node, "127.0.0.1", port, ctx, timeout=STEP)
        except ssl.SSLError as exc:
            assert "ALERT" in str(exc), exc
            return str(exc)
        down, reason = await within(node.downs.get())
        assert down is link and reason and "ALERT" in reason, reason
        return reason

    async def main() -> None:
        server_node, good, bad = Node("server"), Node("good"), Node("bad")
        async with await serve(server_node, "127.0.0.1", server_ctx(pki)) as server:
            link = await connect_tcp(good, "127.0.0.1", server.port, client_ctx(pki))
            assert await good.get(link, "/1", b"\x01") == "server:/1"
            # A client certificate from another CA (it trusts our server all right).
            await refused(bad, client_ctx(rogue_pki, ca=pki.ca_cert), server.port)
            # No client certificate at all.
            no_cert = client_context(None, None, pki.ca_cert)
            await refused(bad, no_cert, server.port)
            for ctx_max in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
                ctx = client_ctx(rogue_pki, ca=pki.ca_cert)
                ctx.maximum_version = ctx_max
                assert "UNKNOWN_CA" in await refused(bad, ctx, server.port)
            # Plain garbage on the TLS port.
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET / HTTP/1.0\r\n\r\n")
            await writer.drain()
            # The good link is untouched and new good clients still get in.
            assert await good.get(link, "/2", b"\x02") == "server:/2"
            link2 = await connect_tcp(good, "127.0.0.1", server.port, client_ctx(pki))
            assert await good.get(link2, "/3", b"\x03") == "server:/3"
            writer.close()
            assert server_node.ups.qsize() == 2  # only the good ones came up
            assert good.downs.empty()
        failures = [r for r in caplog.records
                    if r.levelno == logging.WARNING and "handshake" in r.getMessage()]
        assert len(failures) >= 4, [r.getMessage() for r in caplog.records]
    with caplog.at_level(logging.WARNING, logger="dotsd.transport.tcp"):
        run(main())


def test_tls_client_refuses_server_from_wrong_ca(pki: PkiPaths, rogue_pki: PkiPaths) -> None:
    async def main() -> None:
        server_node = Node("server")
        async with await serve(server_node, "127.0.0.1", server_ctx(pki)) as server:
            ctx = client_ctx(pki, ca=rogue_pki.ca_cert)
            with pytest.raises(ssl.SSLCertVerificationError):
                await connect_tcp(Node("c"), "127.0.0.1", server.port, ctx)
            # A name the certificate does not carry (RFC 6125 check).
            with pytest.raises(ssl.SSLCertVerificationError):
                await connect_tcp(Node("c"), "127.0.0.1", server.port, client_ctx(pki),
                                  server_hostname="dots.example.net")
            # By name, with SNI.
            link = await connect_tcp(Node("c"), "127.0.0.1", server.port, client_ctx(pki),
                                     server_hostname="localhost")
            link.close()
            assert server_node.ups.qsize() == 1
    run(main())


def test_tls_client_refuses_server_without_coap_alpn(pki: PkiPaths) -> None:
    """RFC 8323 §8.2: off port 5684 a server that does not select ALPN "coap" is refused."""
    async def main() -> None:
        plain_ctx = server_context(pki.server_cert, pki.server_key, pki.ca_cert,
                                   alpn=None)
        async with await serve(Node("server"), "127.0.0.1", plain_ctx) as server:
            with pytest.raises(ConnectionError, match="ALPN"):
                await connect_tcp(Node("c"), "127.0.0.1", server.port, client_ctx(pki))
            # The check can be waived explicitly (a peer known not to do ALPN).
            link = await connect_tcp(Node("c"), "127.0.0.1", server.port, client_ctx(pki),
                                     require_alpn=False)
            link.close()
    run(main())


def test_tls_handshake_timeout_is_logged(pki: PkiPaths, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        server_node = Node("server")
        async with await serve(server_node, "127.0.0.1", server_ctx(pki),
                               handshake_timeout=0.3) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            assert await within(reader.read(100)) == b""  # closed by the server
            writer.close()
            assert server_node.ups.empty()
    with caplog.at_level(logging.WARNING, logger="dotsd.transport.tcp"):
        run(main())
    assert any("handshake" in r.getMessage() for r in caplog.records)


def test_tls_server_close_during_handshake(pki: PkiPaths) -> None:
    async def main() -> None:
        server_node = Node("server")
        server = await serve(server_node, "127.0.0.1", server_ctx(pki))
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        await asyncio.sleep(0.05)
        server.close()
        await within(server.wait_closed())
        assert await within(reader.read(100)) == b""
        writer.close()
        assert server_node.ups.empty() and server_node.downs.empty()
    run(main())


def test_tls_link_down_on_peer_close(pki: PkiPaths) -> None:
    async def main() -> None:
        server_node, client_node = Node("server"), Node("client")
        async with await serve(server_node, "127.0.0.1", server_ctx(pki)) as server:
            link = await connect_tcp(client_node, "127.0.0.1", server.port, client_ctx(pki))
            peer = await within(server_node.ups.get())
            peer.close()
            assert await within(server_node.downs.get()) == (peer, "closed")
            down, reason = await within(client_node.downs.get())
            assert down is link and reason == "closed by peer"
            link.send(b"dropped silently")
    run(main())


class Echo:
    """A LinkHandler that echoes every byte back and records what it got."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.ups: asyncio.Queue[Link] = asyncio.Queue()
        self.downs: asyncio.Queue[tuple[Link, str | None]] = asyncio.Queue()
        self.echo = True

    def link_up(self, link: Link) -> None:
        self.ups.put_nowait(link)

    def data_received(self, link: Link, data: bytes) -> None:
        self.received += data
        if self.echo:
            link.send(data)

    def link_down(self, link: Link, reason: str | None) -> None:
        self.downs.put_nowait((link, reason))


@pytest.mark.parametrize("tls", [False, True])
def test_bulk_stream_integrity(pki: PkiPaths, tls: bool) -> None:
    async def main() -> None:
        server_side, client_side = Echo(), Echo()
        client_side.echo = False
        blob = bytes(range(256)) * 2048  # 512 KiB
        s_ctx, c_ctx = (server_ctx(pki), client_ctx(pki)) if tls else (None, None)
        async with await serve_tcp(server_side, "127.0.0.1", 0, ssl_context=s_ctx) as server:
            link = await connect_tcp(client_side, "127.0.0.1", server.port, c_ctx)
            for i in range(0, len(blob), 7000):
                link.send(blob[i:i + 7000])
            for _ in range(500):
                if len(client_side.received) >= len(blob):
                    break
                await asyncio.sleep(0.01)
            assert bytes(client_side.received) == blob
    run(main())


def test_handler_failure_in_link_up_is_contained(pki: PkiPaths) -> None:
    class Broken(Echo):
        def link_up(self, link: Link) -> None:
            raise RuntimeError("boom")

    async def main() -> None:
        broken, client_side = Broken(), Echo()
        async with await serve_tcp(broken, "127.0.0.1", 0, ssl_context=server_ctx(pki)) as server:
            link = await connect_tcp(client_side, "127.0.0.1", server.port, client_ctx(pki))
            down, reason = await within(client_side.downs.get())
            assert down is link and reason
            assert broken.downs.empty()  # no link_down for a link it never accepted
            with pytest.raises(ConnectionError):
                await connect_tcp(Broken(), "127.0.0.1", server.port, client_ctx(pki))
    run(main())


def test_tls_client_handshake_timeout(pki: PkiPaths) -> None:
    async def main() -> None:
        # A plain TCP listener never answers the ClientHello.
        silent = Echo()
        silent.echo = False
        async with await serve_tcp(silent, "127.0.0.1", 0) as server:
            client_side = Echo()
            with pytest.raises(TimeoutError):
                await connect_tcp(client_side, "127.0.0.1", server.port, client_ctx(pki),
                                  timeout=0.3)
            assert client_side.ups.empty() and client_side.downs.empty()
    run(main())


# --- interop with libcoap (RFC 8323 over TLS) ------------------------------------------------

LIBCOAP_CLIENT = shutil.which("coap-client-openssl")
LIBCOAP_SERVER = shutil.which("coap-server-openssl")


def _free_port_pair() -> int:
    """A port P with P and P+1 free for TCP and UDP (libcoap serves TLS on P+1)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        try:
            for p in (port, port + 1):
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    with socket.socket(socket.AF_INET, kind) as s:
                        s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise AssertionError("no free port pair")


@pytest.mark.interop
@pytest.mark.skipif(LIBCOAP_CLIENT is None, reason="libcoap client not installed")
def test_libcoap_client_over_tls(pki: PkiPaths) -> None:
    async def main() -> None:
        node = Node("dotsd")
        async with await serve(node, "127.0.0.1", server_ctx(pki)) as server:
            assert LIBCOAP_CLIENT is not None
            proc = await asyncio.create_subprocess_exec(
                LIBCOAP_CLIENT, "-B", "3", "-c", str(pki.client_cert),
                "-j", str(pki.client_key), "-C", str(pki.ca_cert),
                f"coaps+tcp://127.0.0.1:{server.port}/hello",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            out, _ = await asyncio.wait_for(proc.communicate(), 10)
            assert b"dotsd:/hello" in out, out
            peer = await within(node.ups.get())
            assert peer.info.certificate is not None
    run(main())


@pytest.mark.interop
@pytest.mark.skipif(LIBCOAP_SERVER is None, reason="libcoap server not installed")
def test_dotsd_client_to_libcoap_server_over_tls(pki: PkiPaths) -> None:
    async def main() -> None:
        assert LIBCOAP_SERVER is not None
        port = _free_port_pair()
        proc = await asyncio.create_subprocess_exec(
            LIBCOAP_SERVER, "-A", "127.0.0.1", "-p", str(port), "-c", str(pki.server_cert),
            "-j", str(pki.server_key), "-C", str(pki.ca_cert),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            node = Node("dotsd")
            link: Link | None = None
            for _ in range(50):  # wait until it listens, at most ~5 s
                try:
                    link = await connect_tcp(node, "127.0.0.1", port + 1, client_ctx(pki))
                    break
                except ConnectionRefusedError:
                    await asyncio.sleep(0.1)
            assert link is not None
            assert "libcoap" in await node.get(link, "/", b"\x01")
            conn = node.conns[link]
            assert conn.peer_block_wise  # libcoap's CSM
            link.close()
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 5)
    run(main())


# --- TLS contexts without sockets ----------------------------------------------------------------

def _handshake(client: ssl.SSLContext, server: ssl.SSLContext,
               hostname: str | None = "localhost") -> tuple[ssl.SSLObject, ssl.SSLObject]:
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname=hostname)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {id(c): False, id(s): False}
    for _ in range(20):
        for obj in (c, s):
            if not done[id(obj)]:
                try:
                    obj.do_handshake()
                    done[id(obj)] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            # TLS 1.3: the server's verdict on the client certificate comes with its
            # first read, so exchange one byte each way.
            c.write(b"x")
            s_in.write(c_out.read())
            assert s.read(1) == b"x"
            return c, s
    raise AssertionError("handshake did not finish")


def test_context_tls12_uses_ecdhe_ecdsa_aead(pki: PkiPaths) -> None:
    client = client_ctx(pki)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    c, _ = _handshake(client, server_ctx(pki))
    assert c.version() == "TLSv1.2"
    cipher = c.cipher()
    assert cipher is not None and cipher[0] in TLS12_CIPHERS.split(":")
    assert c.selected_alpn_protocol() == "coap"  # RFC 8323 §8.2


def test_context_tls13_default(pki: PkiPaths) -> None:
    c, s = _handshake(client_ctx(pki), server_ctx(pki))
    assert c.version() == "TLSv1.3"
    assert s.getpeercert(binary_form=True)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_context_refuses_old_tls(pki: PkiPaths) -> None:
    # RFC 9132 §7.1: TLS 1.2 or later. The client is weakened so that only the server's
    # minimum version can be what refuses TLS 1.1.
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(pki.ca_cert)
    client.load_cert_chain(pki.client_cert, pki.client_key)
    client.minimum_version = ssl.TLSVersion.TLSv1
    client.maximum_version = ssl.TLSVersion.TLSv1_1
    client.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError, match="UNSUPPORTED_PROTOCOL"):
        _handshake(client, server_ctx(pki))
    assert server_ctx(pki).minimum_version == ssl.TLSVersion.TLSv1_2
    assert client_ctx(pki).minimum_version == ssl.TLSVersion.TLSv1_2


def test_context_optional_client_cert(pki: PkiPaths, rogue_pki: PkiPaths) -> None:
    server = server_context(pki.server_cert, pki.server_key, pki.ca_cert,
                            require_client_cert=False)
    _, s = _handshake(client_context(None, None, pki.ca_cert), server)
    assert s.getpeercert(binary_form=True) is None
    with pytest.raises(ssl.SSLError):
        _handshake(client_ctx(rogue_pki, ca=pki.ca_cert), server)


def test_context_hostname_check_can_be_disabled(pki: PkiPaths) -> None:
    client = client_context(pki.client_cert, pki.client_key, pki.ca_cert,
                            server_hostname_check=False)
    _handshake(client, server_ctx(pki), hostname="not-the-server.example")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(client_ctx(pki), server_ctx(pki), hostname="not-the-server.example")


def test_key_without_certificate_is_refused(pki: PkiPaths) -> None:
    with pytest.raises(ValueError):
        client_context(None, pki.client_key, pki.ca_cert)
