"""Interop with libcoap 4.3 (coap-client-openssl, coap-server-openssl) on loopback.

Both directions over every transport dotsd has: coap (UDP), coaps (DTLS with certificates
and with a PSK), coap+tcp and coaps+tcp (RFC 8323). Then bad input from real peers: it is
answered as RFC 7252 says, logged, and harms nobody else.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import pytest
from support.loopback import HOSTS, tap
from support.peers import (
    BIG_BODY,
    COAP,
    COAP_TCP,
    COAPS,
    COAPS_PSK,
    COAPS_TCP,
    SCHEMES,
    Completed,
    Creds,
    DotsdServer,
    bounded,
    dotsd_client,
    dotsd_server,
    libcoap_client,
    libcoap_credentials,
    libcoap_server,
    make_uri,
    needs_libcoap_client,
    needs_libcoap_server,
    parse_dumps,
)
from support.waiting import wait_until

from dotsd.coap.message import Message
from dotsd.coap.numbers import Code, MessageType, OptionNumber
from dotsd.link import Link
from dotsd.pki import PkiPaths

pytestmark = [pytest.mark.interop, pytest.mark.network, pytest.mark.timeout(40)]


@pytest.fixture(scope="module")
def creds(pki: PkiPaths, rogue_pki: PkiPaths) -> Creds:
    return Creds(pki, rogue_pki)


async def client(server: DotsdServer, scheme: str, host: str, path: str, *args: str,
                 creds: Creds, wait: int = 4) -> Completed:
    uri = make_uri(scheme, host, server.ports[scheme], path)
    return await libcoap_client(uri, *libcoap_credentials(scheme, creds), *args, wait=wait)


def only_code(run: Completed, code: str) -> None:
    """libcoap exits 0 even when nothing came back: the dumps tell."""
    assert run.codes() == [code], run


# --- 1. libcoap client → dotsd server --------------------------------------------------------

@needs_libcoap_client
@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("scheme", SCHEMES)
async def test_libcoap_client_get_put_delete(scheme: str, host: str, creds: Creds,
                                             tmp_path: Path) -> None:
    async with dotsd_server(creds, scheme, host=host) as server:
        run = await client(server, scheme, host, "/hello", creds=creds)
        only_code(run, "2.05")
        assert "hello from dotsd" in run.output

        run = await client(server, scheme, host, "/store", "-m", "put", "-e", "first",
                           creds=creds)
        only_code(run, "2.01")
        run = await client(server, scheme, host, "/store", "-m", "put", "-t", "0",
                           "-e", "second%20value", creds=creds)
        only_code(run, "2.04")
        assert server.store.puts == [b"first", b"second value"]

        out = tmp_path / "store.out"
        run = await client(server, scheme, host, "/store", "-o", str(out), creds=creds)
        only_code(run, "2.05")
        assert out.read_bytes().rstrip(b"\n") == b"second value"

        run = await client(server, scheme, host, "/store", "-m", "delete", creds=creds)
        only_code(run, "2.02")
        assert server.store.value is None and server.store.deletes == 1
        run = await client(server, scheme, host, "/store", creds=creds)
        only_code(run, "4.04")
        run = await client(server, scheme, host, "/nothing/here", creds=creds)
        only_code(run, "4.04")
        run = await client(server, scheme, host, "/hello", "-m", "post", "-e", "x",
                           creds=creds)
        only_code(run, "4.05")


@needs_libcoap_client
@pytest.mark.parametrize("scheme", SCHEMES)
async def test_libcoap_client_non_and_separate_response(scheme: str, creds: Creds) -> None:
    datagrams = scheme in (COAP, COAPS, COAPS_PSK)
    async with dotsd_server(creds, scheme) as server:
        # A NON request gets a NON response (RFC 7252 §5.2.3).
        run = await client(server, scheme, "127.0.0.1", "/hello", "-N", creds=creds)
        only_code(run, "2.05")
        if datagrams:
            assert [d.mtype for d in run.dumps] == ["NON", "NON"], run
        # A slow handler: an empty ACK first (libcoap does not print it at -v 6), the
        # response later in a CON of its own (RFC 7252 §5.2.2).
        run = await client(server, scheme, "127.0.0.1", "/slow", creds=creds)
        only_code(run, "2.05")
        assert "slow answer" in run.output, run
        if datagrams:
            request, response = run.dumps
            assert response.mtype == "CON" and response.mid != request.mid, run
            assert response.token == request.token, run


@needs_libcoap_client
@pytest.mark.parametrize("scheme", SCHEMES)
async def test_libcoap_client_observe(scheme: str, creds: Creds) -> None:
    async with dotsd_server(creds, scheme) as server:
        task = asyncio.create_task(
            client(server, scheme, "127.0.0.1", "/counter", "-s", "1", creds=creds, wait=4))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while server.node.endpoint.observer_count("/counter") == 0:
            assert loop.time() < deadline and not task.done(), "the client never registered"
            await asyncio.sleep(0.02)
        # Notifications, alternately NON and CON, while the client observes (1 s).
        bumps = 0
        while not task.done() and bumps < 15:
            await asyncio.sleep(0.1)
            server.bump(confirmable=bumps % 2 == 1)
            bumps += 1
        run = await bounded(task)
        # The client is gone: its deregistration, the connection's end or the RST answering
        # the next (confirmable) notification ends the observation.
        deadline = loop.time() + 5
        while server.node.endpoint.observer_count("/counter") and loop.time() < deadline:
            server.bump(confirmable=True)
            await asyncio.sleep(0.1)
        assert server.node.endpoint.observer_count("/counter") == 0
    notes = [d for d in run.responses if d.code == "2.05" and d.opt("Observe") is not None]
    payloads = [d.payload for d in notes]
    assert len(notes) >= 5, run
    assert payloads[0] == "count=0", run  # the registration response
    values = [int(p.removeprefix("count=")) for p in payloads if p]
    assert values == sorted(values) and len(set(values)) == len(values), run
    observes = [int(d.opt("Observe") or 0) for d in notes]
    assert observes == sorted(observes), run


@needs_libcoap_client
@pytest.mark.parametrize("scheme", [COAP, COAPS_TCP])
async def test_libcoap_client_observes_large_resource(scheme: str, creds: Creds,
                                                      tmp_path: Path) -> None:
    """Notifications too large for one block (RFC 7959 §2.6): the rest comes by Block2."""
    async with dotsd_server(creds, scheme) as server:
        server.big.observable = True
        out = tmp_path / "observed"
        task = asyncio.create_task(client(server, scheme, "127.0.0.1", "/big", "-s", "1",
                                          "-o", str(out), creds=creds, wait=4))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while server.node.endpoint.observer_count("/big") == 0:
            assert loop.time() < deadline and not task.done(), "the client never registered"
            await asyncio.sleep(0.02)
        # The new state only once the client holds all of the first one: a notification
        # while it still fetches the first body's later blocks would hand it the new body's
        # blocks (the two carry no ETag to tell them apart, RFC 7959 §2.4).
        while not out.exists() or out.stat().st_size < len(BIG_BODY):
            assert loop.time() < deadline and not task.done(), "the first body never came"
            await asyncio.sleep(0.02)
        server.big.text = BIG_BODY.upper()
        assert server.node.notify("/big", lambda peer, req: Message(
            code=Code.CONTENT, payload=server.big.text)) == 1
        run = await bounded(task)
    assert out.read_bytes() == BIG_BODY + BIG_BODY.upper(), run
    starts = [d for d in run.responses if d.opt("Observe") is not None]
    assert [d.opt("Block2") for d in starts] == ["0/M/1024"] * 2, run


@needs_libcoap_client
@pytest.mark.parametrize("scheme", SCHEMES)
async def test_libcoap_client_blockwise(scheme: str, creds: Creds, tmp_path: Path) -> None:
    async with dotsd_server(creds, scheme) as server:
        # Block2: the 3 KB body arrives whole, in the server's 1024-byte blocks...
        out = tmp_path / "big.out"
        run = await client(server, scheme, "127.0.0.1", "/big", "-o", str(out), creds=creds)
        assert out.read_bytes() == BIG_BODY, run
        first = run.responses[0]
        assert first.code == "2.05", run
        if scheme in (COAP, COAPS, COAPS_PSK):
            assert first.opt("Block2") == "0/M/1024", run
            assert first.opt("Size2") == str(len(BIG_BODY)), run
        # ... and in the 64-byte blocks the client asks for (RFC 7959 §2.4: late negotiation).
        out.unlink()
        run = await client(server, scheme, "127.0.0.1", "/big", "-b", "64", "-o", str(out),
                           creds=creds)
        assert out.read_bytes() == BIG_BODY, run
        blocks = [d.opt("Block2") for d in run.responses]
        assert blocks[0] == "0/M/64", run
        if scheme in (COAP, COAPS, COAPS_PSK):
            assert len(blocks) == -(-len(BIG_BODY) // 64), run
            assert blocks[-1] == f"{len(blocks) - 1}/_/64", run
        assert server.big.gets == 2  # later blocks come from the endpoint's cache

        # Block1: a 3 KB PUT reaches the resource whole.
        body = tmp_path / "put.txt"
        body.write_bytes(BIG_BODY[::-1])
        run = await client(server, scheme, "127.0.0.1", "/store", "-m", "put", "-f",
                           str(body), creds=creds)
        assert run.responses and run.responses[-1].code == "2.01", run
        assert server.store.puts == [BIG_BODY[::-1]]
        # And with small blocks the client picks.
        run = await client(server, scheme, "127.0.0.1", "/store", "-m", "put", "-b", "128",
                           "-f", str(body), creds=creds)
        assert run.responses and run.responses[-1].code == "2.04", run
        assert server.store.puts == [BIG_BODY[::-1]] * 2


# --- 2. dotsd client → libcoap server --------------------------------------------------------

@needs_libcoap_server
@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("scheme", SCHEMES)
async def test_dotsd_client_get_put_delete(scheme: str, host: str, creds: Creds,
                                           tmp_path: Path) -> None:
    async with libcoap_server(creds, tmp_path, host) as peer, dotsd_client(creds) as dc:
        link = await dc.connect(scheme, host, peer.port_for(scheme))
        resp = await dc.request(link, Code.GET, "/")
        assert resp.code == Code.CONTENT and b"libcoap" in resp.payload, peer.log()
        # NON request, NON response (RFC 7252 §5.2.3); no message types on TCP.
        resp = await bounded(dc.node.request(link, Message(code=Code.GET).set_path("/"),
                                             confirmable=False, timeout=5))
        assert resp.code == Code.CONTENT and b"libcoap" in resp.payload, resp
        if scheme in (COAP, COAPS, COAPS_PSK):
            assert resp.mtype == MessageType.NON, resp

        resp = await dc.request(link, Code.PUT, "/dyn", b"dotsd was here")
        assert resp.code == Code.CREATED, (resp, peer.log())
        resp = await dc.request(link, Code.GET, "/dyn")
        assert (resp.code, resp.payload) == (Code.CONTENT, b"dotsd was here"), resp
        resp = await dc.request(link, Code.PUT, "/dyn", b"changed")
        assert resp.code == Code.CHANGED, resp
        resp = await dc.request(link, Code.GET, "/dyn")
        assert resp.payload == b"changed", resp
        resp = await dc.request(link, Code.DELETE, "/dyn")
        assert resp.code == Code.DELETED, resp
        resp = await dc.request(link, Code.GET, "/dyn")
        assert resp.code == Code.NOT_FOUND, resp


@needs_libcoap_server
@pytest.mark.parametrize("scheme", SCHEMES)
async def test_dotsd_client_observes_libcoap_time(scheme: str, creds: Creds,
                                                  tmp_path: Path) -> None:
    async with libcoap_server(creds, tmp_path) as peer, dotsd_client(creds) as dc:
        link = await dc.connect(scheme, "127.0.0.1", peer.port_for(scheme))
        obs = dc.node.observe(link, Message(code=Code.GET).set_path("/time"), timeout=5)
        first = await obs.next(5)
        assert first.code == Code.CONTENT and first.observe is not None, first
        notes = [await obs.next(3) for _ in range(2)]  # /time ticks every second
        for note in notes:
            assert note.code == Code.CONTENT and note.observe is not None, note
        seqs = [m.observe or 0 for m in (first, *notes)]
        assert seqs == sorted(seqs) and len(set(seqs)) == 3, seqs
        assert len({m.payload for m in (first, *notes)}) >= 2
        obs.cancel()  # sends a GET with Observe=1 (RFC 7641 §3.6)
        await asyncio.sleep(0.3)
        # Deregistered: libcoap stops sending /time, which it would do every second.
        received = tap(dc.node)
        await asyncio.sleep(1.2)
        assert received == [], received
        resp = await dc.request(link, Code.GET, "/")
        assert resp.code == Code.CONTENT and received


@needs_libcoap_server
@pytest.mark.parametrize("scheme", SCHEMES)
async def test_dotsd_client_blockwise(scheme: str, creds: Creds, tmp_path: Path) -> None:
    async with libcoap_server(creds, tmp_path) as peer, dotsd_client(creds) as dc:
        link = await dc.connect(scheme, "127.0.0.1", peer.port_for(scheme))
        # On TCP, libcoap's CSM (Max-Message-Size 8388864) is in once this is answered; see
        # test_large_request_right_after_connect for what happens before that.
        assert (await dc.request(link, Code.GET, "/")).code == Code.CONTENT
        # Block1 on UDP/DTLS (1024-byte blocks); one message on TCP, within libcoap's CSM.
        resp = await dc.request(link, Code.PUT, "/large", BIG_BODY)
        assert resp.code == Code.CREATED, (resp, peer.log())
        # Block2: libcoap answers in blocks, dotsd reassembles.
        resp = await dc.request(link, Code.GET, "/large")
        assert resp.code == Code.CONTENT and resp.payload == BIG_BODY, resp
        # Ask for small blocks from the start (RFC 7959 §2.4, early negotiation).
        msg = Message(code=Code.GET).set_path("/large")
        msg.add(OptionNumber.BLOCK2, 2)  # num 0, szx 2: 64 bytes
        resp = await bounded(dc.node.request(link, msg, timeout=5))
        assert resp.code == Code.CONTENT and resp.payload == BIG_BODY, resp


@needs_libcoap_server
@pytest.mark.parametrize("scheme", [COAP_TCP, COAPS_TCP])
async def test_large_request_right_after_connect(scheme: str, creds: Creds,
                                                 tmp_path: Path) -> None:
    async with libcoap_server(creds, tmp_path) as peer, dotsd_client(creds) as dc:
        sent: list[asyncio.Future[Message]] = []

        def on_link_up(link: Link) -> None:
            # The first thing on the new link, before any byte from the peer is read.
            msg = Message(code=Code.PUT, payload=BIG_BODY).set_path("/large")
            sent.append(dc.node.start_request(link, msg, timeout=1))

        dc.node.add_link_listener(up=on_link_up)
        await dc.connect(scheme, "127.0.0.1", peer.port_for(scheme))
        assert len(sent) == 1
        resp = await bounded(sent[0])
        assert resp.code == Code.CREATED, resp


# --- 4. bad input from real peers --------------------------------------------------------------

def _udp_exchange(host: str, port: int, datagram: bytes, wait: float) -> bytes | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(wait)
        sock.sendto(datagram, (host, port))
        try:
            return sock.recv(2048)
        except TimeoutError:
            return None


@needs_libcoap_client
@pytest.mark.parametrize("host", HOSTS)
async def test_malformed_datagrams(host: str, creds: Creds,
                                   caplog: pytest.LogCaptureFixture) -> None:
    async with dotsd_server(creds, COAP, host=host) as server:
        port = server.ports[COAP]
        # A good client observes all along: the bad input must not disturb it.
        watcher = asyncio.create_task(
            client(server, COAP, host, "/counter", "-s", "2", creds=creds, wait=5))
        await wait_until(lambda: server.node.endpoint.observer_count("/counter") > 0
                         or watcher.done(), 5, what="the watcher registered")
        assert not watcher.done(), watcher

        async def exchange(datagram: bytes, wait: float = 0.5) -> bytes | None:
            return await asyncio.to_thread(_udp_exchange, host, port, datagram, wait)

        # A CON GET whose option delta nibble is 15 (reserved, RFC 7252 §3.1): a message
        # format error, so the CON is rejected with RST carrying its MID (§4.2).
        reply = await exchange(bytes([0x40, 0x01, 0x12, 0x34, 0xF1, 0x61]))
        assert reply == bytes([0x70, 0x00, 0x12, 0x34]), reply
        # The same with the reserved option length 15.
        reply = await exchange(bytes([0x41, 0x01, 0x12, 0x35, 0xAA, 0xB1, 0x61, 0x3F]))
        assert reply == bytes([0x70, 0x00, 0x12, 0x35]), reply
        # A token length of 9 (reserved) is a format error too (§3).
        reply = await exchange(bytes([0x49, 0x01, 0x12, 0x36]) + bytes(9))
        assert reply == bytes([0x70, 0x00, 0x12, 0x36]), reply
        server.bump()
        # Garbage, a NON with a bad option, a truncated header, an ACK with a bad option,
        # version 2: silently ignored (§4.2, §4.3, §3).
        for junk in (b"\x00", b"hello, world", bytes([0x50, 0x01, 0, 1, 0xF1]),
                     bytes([0x40, 0x01, 0x99]), bytes([0x60, 0x45, 0, 2, 0xF1]),
                     bytes([0x80, 0x01, 0, 3])):
            assert await exchange(junk, wait=0.15) is None, junk
        server.bump(confirmable=True)
        # An empty CON (CoAP ping) still gets its RST, and a good request its answer.
        assert await exchange(bytes([0x40, 0, 0x43, 0x21])) == bytes([0x70, 0, 0x43, 0x21])
        run = await client(server, COAP, host, "/hello", creds=creds)
        only_code(run, "2.05")
        for _ in range(3):
            server.bump()
            await asyncio.sleep(0.1)
        run = await bounded(watcher)
        payloads = [d.payload for d in run.responses if d.opt("Observe") is not None]
        assert payloads[:1] == ["count=0"] and len(payloads) >= 5, run


async def test_malformed_datagram_is_logged(creds: Creds,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="dotsd")
    async with dotsd_server(creds, COAP) as server:
        port = server.ports[COAP]
        family = socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sender = sock.getsockname()[1]
            sock.settimeout(2)
            sock.sendto(bytes([0x40, 0x01, 0x12, 0x34, 0xF1, 0x61]), ("127.0.0.1", port))
            assert await asyncio.to_thread(sock.recv, 64) == bytes([0x70, 0, 0x12, 0x34])
            sock.sendto(b"hello, world", ("127.0.0.1", port))

            def logged() -> bool:
                return any(str(sender) in r.getMessage() for r in caplog.records
                           if r.name.startswith("dotsd"))

            await wait_until(logged, 5, what="a log line naming the sender")


@needs_libcoap_client
@pytest.mark.parametrize("scheme", [COAPS, COAPS_TCP])
async def test_refused_handshake_harms_nobody(scheme: str, creds: Creds,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """A client certificate from another CA: refused and logged; the others go on."""
    caplog.set_level(logging.INFO, logger="dotsd")
    async with dotsd_server(creds, scheme) as server:
        watcher = asyncio.create_task(
            client(server, scheme, "127.0.0.1", "/counter", "-s", "2", creds=creds, wait=5))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while server.node.endpoint.observer_count("/counter") == 0:
            assert loop.time() < deadline and not watcher.done(), "no observer"
            await asyncio.sleep(0.02)
        uri = make_uri(scheme, "127.0.0.1", server.ports[scheme], "/hello")
        # A client certificate the server's CA did not sign.
        bad = await libcoap_client(uri, *libcoap_credentials(scheme, creds, pki=creds.rogue),
                                   wait=2)
        assert not bad.responses and "hello from dotsd" not in bad.output, bad
        # ... and it is told why, with a fatal alert (RFC 5246 §7.2.2).
        assert "alert read:fatal:unknown CA" in bad.output, bad
        # A client that trusts another CA refuses our server certificate.
        p = creds.pki
        distrust = await libcoap_client(uri, "-c", str(p.client_cert), "-j", str(p.client_key),
                                        "-C", str(creds.rogue.ca_cert), wait=2)
        assert not distrust.responses, distrust
        server.bump()
        good = await libcoap_client(uri, *libcoap_credentials(scheme, creds))
        only_code(good, "2.05")
        for _ in range(3):
            server.bump(confirmable=True)
            await asyncio.sleep(0.1)
        run = await bounded(watcher)
    payloads = [d.payload for d in run.responses if d.opt("Observe") is not None]
    assert payloads[:1] == ["count=0"] and len(payloads) >= 5, run
    handshakes = [r for r in caplog.records if "handshake" in r.getMessage().lower()
                  and r.levelno >= logging.INFO]
    assert len(handshakes) >= 2, [r.getMessage() for r in caplog.records]  # both bad ones
    assert any("127.0.0.1" in r.getMessage() for r in handshakes), \
        [r.getMessage() for r in handshakes]


@needs_libcoap_client
async def test_wrong_psk_is_refused(creds: Creds, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dotsd")
    async with dotsd_server(creds, COAPS_PSK) as server:
        uri = make_uri(COAPS_PSK, "127.0.0.1", server.ports[COAPS_PSK], "/hello")
        # An unknown identity is refused with an alert (RFC 4279 §2: unknown_psk_identity
        # or decrypt_error) ...
        unknown_id = await libcoap_client(uri, "-k", creds.psk_key.decode(), "-u", "stranger",
                                          wait=2)
        # ... a wrong key shows as a Finished that does not decrypt, which DTLS discards
        # (RFC 6347 §4.1.2.7): the client just gets no answer.
        wrong_key = await libcoap_client(uri, "-k", "not-the-key-1234", "-u",
                                         creds.psk_identity.decode(), wait=1)
        good = await libcoap_client(uri, *libcoap_credentials(COAPS_PSK, creds))
    for bad in (unknown_id, wrong_key):
        assert not bad.responses and "hello from dotsd" not in bad.output, bad
    assert "alert read:fatal" in unknown_id.output, unknown_id
    only_code(good, "2.05")
    failures = [r.getMessage() for r in caplog.records if "handshake" in r.getMessage()]
    assert any("stranger" in m or "identity" in m for m in failures), failures


def test_parse_dumps() -> None:
    out = ("v:1 t:CON c:GET i:4390 {01} [ Observe:0, Uri-Path:time ]\n"
           "v:1 t:ACK c:2.05 i:4390 {01} [ Observe:2, Max-Age:1 ] :: 'Nov 23'\n"
           "Nov 23\n"
           "v:1 t:ACK c:2.05 i:0749 {} [ ETag:0x01, Block2:0/M/64, Size2:3000 ] :: 'ab'\n")
    dumps = parse_dumps(out)
    assert [d.code for d in dumps] == ["GET", "2.05", "2.05"]
    assert dumps[1].opt("Observe") == "2" and dumps[1].payload == "Nov 23"
    assert dumps[2].opt("Block2") == "0/M/64" and dumps[2].token == ""
