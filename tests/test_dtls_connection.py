"""DtlsConnection, sans I/O: handshakes in memory, records, retransmission in fake time."""

from __future__ import annotations

import heapq
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dotsd.dtls import (
    ConnectionClosed,
    CookieJar,
    DataReceived,
    DtlsConfig,
    DtlsConnection,
    DtlsContext,
    DtlsEvent,
    DtlsStateError,
    HandshakeCompleted,
    HandshakeTimers,
    Retransmit,
    Verdict,
    client_context,
    server_context,
)
from dotsd.dtls.records import CT_HANDSHAKE, split_records
from dotsd.dtls.sessions import session_from_der, session_to_der
from dotsd.pki import PkiPaths

pytestmark = pytest.mark.timeout(60)

PSK_ID = b"dots-client-7"
PSK_KEY = b"0123456789abcdef"


@pytest.fixture(scope="module")
def sctx(pki: PkiPaths) -> DtlsContext:
    return server_context(DtlsConfig.from_pki(pki))


@pytest.fixture(scope="module")
def cctx(pki: PkiPaths) -> DtlsContext:
    return client_context(DtlsConfig.from_pki(pki, client=True))


def cn(event: DtlsEvent | None) -> str:
    assert isinstance(event, HandshakeCompleted) and event.certificate is not None
    (attr,) = event.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attr.value)


def drain(conn: DtlsConnection) -> list[DtlsEvent]:
    out: list[DtlsEvent] = []
    while (ev := conn.next_event()) is not None:
        out.append(ev)
    return out


def shuttle(a: DtlsConnection, b: DtlsConnection, now: float = 0.0, rounds: int = 20,
            keep: Callable[[str, bytes], bool] | None = None) -> None:
    """Deliver datagrams both ways until both are quiet; ``keep`` may drop some."""
    for _ in range(rounds):
        x, y = a.datagrams_to_send(), b.datagrams_to_send()
        if not x and not y:
            return
        for d in x:
            if keep is None or keep("a->b", d):
                b.receive_datagram(d, now)
        for d in y:
            if keep is None or keep("b->a", d):
                a.receive_datagram(d, now)
    raise AssertionError(f"still talking after {rounds} rounds")


def connect(cctx: DtlsContext, sctx: DtlsContext, now: float = 0.0,
            **client_kwargs: object) -> tuple[DtlsConnection, DtlsConnection]:
    kwargs: dict[str, object] = {"server_hostname": "localhost", **client_kwargs}
    offload_server = bool(kwargs.pop("offload_server", True))
    client = DtlsConnection(cctx, now, **kwargs)  # type: ignore[arg-type]
    server = DtlsConnection(sctx, now, offload=offload_server)
    shuttle(client, server, now)
    return client, server


def exchange(client: DtlsConnection, server: DtlsConnection, rounds: int = 3) -> None:
    for i in range(rounds):
        client.send(b"request %d" % i)
        shuttle(client, server)
        assert drain(server) == [DataReceived(b"request %d" % i)]
        server.send(b"response %d" % i)
        shuttle(client, server)
        assert drain(client) == [DataReceived(b"response %d" % i)]


# --- handshakes --------------------------------------------------------------------------------

def test_certificate_handshake_with_cookie_exchange(cctx: DtlsContext,
                                                    sctx: DtlsContext) -> None:
    jar = CookieJar(b"s" * 32)
    addr = ("::1", 5684)
    client = DtlsConnection(cctx, 0.0, server_hostname="localhost")
    (ch1,) = client.datagrams_to_send()
    check = jar.check(ch1, addr, 0.0)
    assert check.verdict is Verdict.SEND_VERIFY and check.reply is not None
    client.receive_datagram(check.reply, 0.0)
    (ch2,) = client.datagrams_to_send()
    check = jar.check(ch2, addr, 0.0)
    assert check.verdict is Verdict.VERIFIED and check.hello is not None
    server = DtlsConnection(sctx, 0.0, cookie=check.hello.cookie)
    server.receive_datagram(ch2, 0.0)
    shuttle(client, server)
    assert client.handshake_complete and server.handshake_complete
    (c_ev,), (s_ev,) = drain(client), drain(server)
    assert cn(c_ev) == "server" and cn(s_ev) == "client"
    assert isinstance(s_ev, HandshakeCompleted) and s_ev.psk_identity is None
    assert not s_ev.resumed
    assert client.cipher == server.cipher == "ECDHE-ECDSA-AES128-GCM-SHA256"
    assert client.offloaded and server.offloaded
    assert client.get_timer() is None  # nothing pending on the client
    exchange(client, server)
    client.close()
    shuttle(client, server)
    assert drain(client) == [ConnectionClosed("closed")]
    assert drain(server) == [ConnectionClosed("closed by peer")]
    assert client.datagrams_to_send() == [] and server.datagrams_to_send() == []


def test_only_the_leaf_certificate_is_sent(cctx: DtlsContext, sctx: DtlsContext) -> None:
    client = DtlsConnection(cctx, 0.0, server_hostname="localhost")
    server = DtlsConnection(sctx, 0.0)
    for d in client.datagrams_to_send():
        server.receive_datagram(d, 0.0)
    flight = server.datagrams_to_send()
    assert len(flight) == 1 and len(flight[0]) <= sctx.mtu  # one datagram, no chain
    data = flight[0]
    for rec in split_records(data):
        body = data[rec.body_start:rec.end]
        if rec.content_type == CT_HANDSHAKE and body[0] == 11:  # Certificate
            certs = body[12:]
            list_len = int.from_bytes(certs[:3], "big")
            first = int.from_bytes(certs[3:6], "big")
            assert list_len == 3 + first  # exactly one certificate
            break
    else:
        raise AssertionError("no Certificate message in the server flight")


def test_small_mtu(pki: PkiPaths) -> None:
    sctx = server_context(DtlsConfig.from_pki(pki, mtu=400))
    cctx = client_context(DtlsConfig.from_pki(pki, client=True, mtu=400))
    sizes: list[int] = []

    def keep(direction: str, d: bytes) -> bool:
        sizes.append(len(d))
        return True

    client = DtlsConnection(cctx, 0.0, server_hostname="localhost")
    server = DtlsConnection(sctx, 0.0)
    shuttle(client, server, keep=keep)
    assert client.handshake_complete and server.handshake_complete
    assert max(sizes) <= 400 and len(sizes) > 6
    assert client.max_plaintext == 400 - 13 - 8 - 16


X509_SUITES = ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES128-CCM",
               "ECDHE-ECDSA-AES128-CCM8:@SECLEVEL=0"]
PSK_SUITES = ["PSK-AES128-CCM8:@SECLEVEL=0", "PSK-AES128-GCM-SHA256", "PSK-AES128-CCM",
              "ECDHE-PSK-CHACHA20-POLY1305"]
# Who protects the records after the handshake: dotsd (True) or OpenSSL (False). Mixed
# pairs check dotsd's record layer against OpenSSL's.
OFFLOAD = [(True, True), (True, False), (False, True)]


@pytest.mark.parametrize("offload", OFFLOAD, ids=["dotsd-dotsd", "dotsd-openssl",
                                                  "openssl-dotsd"])
@pytest.mark.parametrize("ciphers", X509_SUITES)
def test_x509_suites(pki: PkiPaths, ciphers: str, offload: tuple[bool, bool]) -> None:
    sctx = server_context(DtlsConfig.from_pki(pki, ciphers=ciphers))
    cctx = client_context(DtlsConfig.from_pki(pki, client=True, ciphers=ciphers))
    client, server = connect(cctx, sctx, offload=offload[0], offload_server=offload[1])
    assert client.cipher == ciphers.split(":")[0]
    assert (client.offloaded, server.offloaded) == offload
    drain(client), drain(server)
    exchange(client, server)
    server.close()
    shuttle(client, server)
    assert drain(client) == [ConnectionClosed("closed by peer")]


@pytest.mark.parametrize("offload", OFFLOAD, ids=["dotsd-dotsd", "dotsd-openssl",
                                                  "openssl-dotsd"])
@pytest.mark.parametrize("ciphers", PSK_SUITES)
def test_psk_suites(ciphers: str, offload: tuple[bool, bool]) -> None:
    seen: list[bytes] = []

    def lookup(identity: bytes) -> bytes | None:
        seen.append(identity)
        return PSK_KEY if identity == PSK_ID else None

    sctx = server_context(DtlsConfig(psk_lookup=lookup, ciphers=ciphers))
    cctx = client_context(DtlsConfig(psk_identity=PSK_ID, psk_key=PSK_KEY, ciphers=ciphers))
    client, server = connect(cctx, sctx, offload=offload[0], offload_server=offload[1])
    assert client.cipher == ciphers.split(":")[0]
    assert seen == [PSK_ID]
    assert drain(server) == [HandshakeCompleted(None, PSK_ID, False)]
    assert drain(client) == [HandshakeCompleted(None, PSK_ID, False)]
    exchange(client, server)


def test_default_psk_context_speaks_tinydtls_ccm8() -> None:
    """aiocoap's tinydtls client offers only TLS_PSK_WITH_AES_128_CCM_8."""
    sctx = server_context(DtlsConfig(psk_identity=PSK_ID, psk_key=PSK_KEY))
    cctx = client_context(DtlsConfig(psk_identity=PSK_ID, psk_key=PSK_KEY,
                                     ciphers="PSK-AES128-CCM8:@SECLEVEL=0"))
    client, server = connect(cctx, sctx)
    assert server.cipher == "PSK-AES128-CCM8" and server.offloaded
    drain(client), drain(server)
    exchange(client, server, rounds=1)


def test_non_aead_suite_stays_with_openssl() -> None:
    ciphers = "ECDHE-PSK-AES128-CBC-SHA256"
    sctx = server_context(DtlsConfig(psk_identity=PSK_ID, psk_key=PSK_KEY, ciphers=ciphers))
    cctx = client_context(DtlsConfig(psk_identity=PSK_ID, psk_key=PSK_KEY, ciphers=ciphers))
    client, server = connect(cctx, sctx)
    assert not client.offloaded and not server.offloaded
    drain(client), drain(server)
    exchange(client, server)
    client.close()
    shuttle(client, server)
    assert drain(server) == [ConnectionClosed("closed by peer")]


# --- authentication failures -----------------------------------------------------------------

def failed(conn: DtlsConnection) -> str:
    events = drain(conn)
    assert conn.closed and len(events) == 1 and isinstance(events[0], ConnectionClosed), events
    return events[0].reason


def test_client_of_another_ca_is_refused(pki: PkiPaths, rogue_pki: PkiPaths,
                                         sctx: DtlsContext) -> None:
    rogue = client_context(DtlsConfig(cert=rogue_pki.client_cert, key=rogue_pki.client_key,
                                      ca=pki.ca_cert))
    client, server = connect(rogue, sctx)
    assert "certificate" in failed(server)
    assert "alert" in failed(client)  # the server told it why (RFC 5246 §7.2)


def test_client_without_certificate_is_refused(pki: PkiPaths, sctx: DtlsContext) -> None:
    anonymous = client_context(DtlsConfig(ca=pki.ca_cert))
    client, server = connect(anonymous, sctx)
    assert "certificate" in failed(server)
    assert client.closed


def test_server_of_another_ca_is_refused(rogue_pki: PkiPaths, cctx: DtlsContext) -> None:
    rogue = server_context(DtlsConfig.from_pki(rogue_pki))
    client, server = connect(cctx, rogue)
    assert "certificate verify failed" in failed(client)
    assert server.closed


def test_server_name_is_checked(cctx: DtlsContext, sctx: DtlsContext) -> None:
    client, _ = connect(cctx, sctx, server_hostname="dots.example.net")
    assert "certificate verify failed" in failed(client)
    ok_ip, _ = connect(cctx, sctx, server_hostname="::1")  # an IP SAN
    assert ok_ip.handshake_complete


def test_unknown_psk_identity_is_refused() -> None:
    sctx = server_context(DtlsConfig(psk_lookup=lambda identity: None))
    cctx = client_context(DtlsConfig(psk_identity=b"nobody", psk_key=PSK_KEY))
    client, server = connect(cctx, sctx)
    assert server.closed and client.closed
    assert server.psk_identity_seen == b"nobody"


def test_wrong_psk_key_never_completes() -> None:
    """A wrong key shows as a Finished that does not decrypt: DTLS drops such records
    silently (RFC 6347 §4.1.2.7), so the handshake ends at its deadline."""
    timers = HandshakeTimers(deadline=3.0)
    sctx = server_context(DtlsConfig(psk_identity=PSK_ID, psk_key=PSK_KEY))
    cctx = client_context(DtlsConfig(psk_identity=PSK_ID, psk_key=b"another key 0123"))
    client = DtlsConnection(cctx, 0.0, timers=timers)
    server = DtlsConnection(sctx, 0.0, timers=timers)
    shuttle(client, server)
    assert not client.handshake_complete and not server.handshake_complete
    for conn in (client, server):
        conn.handle_timer(3.0)
        assert failed(conn) == "handshake timeout"


def test_exceptions_in_psk_lookup_stay_inside() -> None:
    def lookup(identity: bytes) -> bytes | None:
        raise RuntimeError("database down")

    sctx = server_context(DtlsConfig(psk_lookup=lookup))
    cctx = client_context(DtlsConfig(psk_identity=PSK_ID, psk_key=PSK_KEY))
    client, server = connect(cctx, sctx)
    assert server.closed and client.closed


# --- resumption -------------------------------------------------------------------------------

def test_certificate_session_is_resumed(cctx: DtlsContext, sctx: DtlsContext) -> None:
    first, server1 = connect(cctx, sctx)
    assert first.session is not None
    drain(first), drain(server1)
    second, server2 = connect(cctx, sctx, session=first.session)
    (c_ev,), (s_ev,) = drain(second), drain(server2)
    assert isinstance(s_ev, HandshakeCompleted) and s_ev.resumed
    assert cn(s_ev) == "client" and cn(c_ev) == "server"  # kept in the session
    exchange(second, server2, rounds=1)


def test_session_resumes_from_its_bytes(pki: PkiPaths, sctx: DtlsContext) -> None:
    """A session written as bytes (another process, a later run) and read back with a new
    client context resumes: abbreviated handshake, the client's certificate kept."""
    first, _ = connect(client_context(DtlsConfig.from_pki(pki, client=True)), sctx)
    assert first.session is not None
    der = session_to_der(first.session)
    assert der is not None
    cctx = client_context(DtlsConfig.from_pki(pki, client=True))
    later = session_from_der(der, cctx)
    _, server = connect(cctx, sctx, session=later)
    (s_ev,) = [e for e in drain(server) if isinstance(e, HandshakeCompleted)]
    assert s_ev.resumed and cn(s_ev) == "client"
    assert session_from_der(der[:-5], cctx) is None and session_from_der(b"", cctx) is None


@given(st.binary(max_size=300))
@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_session_bytes_never_crash(cctx: DtlsContext, data: bytes) -> None:
    session = session_from_der(data, cctx)
    assert session is None or session_to_der(session) is not None


def test_psk_session_is_resumed_with_its_identity() -> None:
    sctx = server_context(DtlsConfig(psk_identity=PSK_ID, psk_key=PSK_KEY))
    cctx = client_context(DtlsConfig(psk_identity=PSK_ID, psk_key=PSK_KEY))
    first, _ = connect(cctx, sctx)
    _, server2 = connect(cctx, sctx, session=first.session)
    assert server2.psk_identity_seen is None  # no PSK callback on resumption...
    assert drain(server2) == [HandshakeCompleted(None, PSK_ID, True)]  # ...yet it is known


# --- records after the handshake ---------------------------------------------------------------

def test_garbage_after_handshake_is_dropped(cctx: DtlsContext, sctx: DtlsContext) -> None:
    client, server = connect(cctx, sctx)
    drain(client), drain(server)
    client.send(b"real")
    (good,) = client.datagrams_to_send()
    rng = random.Random(7)
    junk = [b"", b"\x17", os.urandom(100), good[:-1], good[:20],
            bytes([good[0]]) + good[1:-1] + bytes([good[-1] ^ 0x80]),  # bad tag
            good[:3] + b"\x00\x02" + good[5:],  # epoch 2
            good[:3] + b"\x00\x00" + good[5:]]  # epoch 0
    junk += [bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 80))) for _ in range(50)]
    for d in junk:
        server.receive_datagram(d, 0.0)
    assert drain(server) == [] and server.datagrams_to_send() == []
    server.receive_datagram(good, 0.0)
    assert drain(server) == [DataReceived(b"real")]
    assert not server.closed


def _fuzz_datagram(ctype: int, epoch: int, seq: int, body: bytes) -> bytes:
    return (bytes((ctype,)) + b"\xfe\xfd" + epoch.to_bytes(2, "big") + seq.to_bytes(6, "big")
            + len(body).to_bytes(2, "big") + body)


@given(st.lists(st.one_of(
    st.binary(max_size=64),
    st.builds(_fuzz_datagram, st.integers(20, 23), st.integers(0, 2),
              st.integers(0, 2**48 - 1), st.binary(max_size=80))), min_size=1, max_size=6))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_peer_garbage_never_raises(pki: PkiPaths, garbage: list[bytes]) -> None:
    """Whatever arrives, during or after the handshake, nothing is raised: the datagram is
    dropped, or the connection ends with ConnectionClosed."""
    sctx = server_context(DtlsConfig.from_pki(pki))
    cctx = client_context(DtlsConfig.from_pki(pki, client=True))
    client = DtlsConnection(cctx, 0.0, server_hostname="localhost")
    server = DtlsConnection(sctx, 0.0)
    for d in client.datagrams_to_send():
        server.receive_datagram(d, 0.0)
    for d in garbage:  # mid-handshake, both sides
        server.receive_datagram(d, 0.1)
        client.receive_datagram(d, 0.1)
    shuttle(client, server)
    for conn in (client, server):
        events = drain(conn)
        assert conn.handshake_complete or conn.closed or not events
        for d in garbage:  # established (or closed): dropped
            conn.receive_datagram(d, 0.2)
        assert all(not isinstance(e, DataReceived) for e in drain(conn))


def test_replayed_records_are_dropped(cctx: DtlsContext, sctx: DtlsContext) -> None:
    client, server = connect(cctx, sctx)
    drain(client), drain(server)
    sent = []
    for i in range(5):
        client.send(b"m%d" % i)
        sent += client.datagrams_to_send()
    for d in [sent[2], sent[0], sent[2], sent[4], sent[1], sent[0], sent[3], sent[4]]:
        server.receive_datagram(d, 0.0)
    got = [e.data for e in drain(server) if isinstance(e, DataReceived)]
    assert got == [b"m2", b"m0", b"m4", b"m1", b"m3"]  # reordered ones taken, replays not


# One step of what the server gets: ("msg", i) the client's i-th record, ("flip", i, pos) that
# record with one byte changed, ("cut", i, n) its first n bytes, ("pair", i, j) two records in
# one datagram, ("close", 0) the client's close_notify, ("junk", n) n bytes of garbage.
_STEPS = st.lists(st.one_of(
    st.tuples(st.just("msg"), st.integers(0, 7)),
    st.tuples(st.just("flip"), st.integers(0, 7), st.integers(0, 60)),
    st.tuples(st.just("pair"), st.integers(0, 7), st.integers(0, 7)),
    st.tuples(st.just("cut"), st.integers(0, 7), st.integers(0, 30)),
    st.tuples(st.just("close"), st.just(0)),
    st.tuples(st.just("junk"), st.integers(0, 40))), min_size=1, max_size=12)


def _server_sees(cctx: DtlsContext, sctx: DtlsContext, steps: list[tuple[int | str, ...]],
                 fast: bool) -> list[object]:
    """What the server reports for ``steps``, through receive_application_data or not."""
    client, server = connect(cctx, sctx)
    drain(client), drain(server)
    records = []
    for i in range(8):
        client.send(b"message %d" % i)
        (d,) = client.datagrams_to_send()
        records.append(d)
    client.close()
    (close_notify,) = client.datagrams_to_send()
    seen: list[object] = []
    for kind, *args in steps:
        if kind == "msg":
            data = records[int(args[0])]
        elif kind == "flip":
            raw = bytearray(records[int(args[0])])
            raw[int(args[1]) % len(raw)] ^= 0x41
            data = bytes(raw)
        elif kind == "cut":
            data = records[int(args[0])][:int(args[1])]
        elif kind == "pair":
            data = records[int(args[0])] + records[int(args[1])]
        elif kind == "close":
            data = close_notify
        else:
            data = bytes(range(int(args[0])))
        if fast:
            plain = server.receive_application_data(data, 0.0)
            if plain is not None:
                seen.append(DataReceived(plain))
        else:
            server.receive_datagram(data, 0.0)
        seen += drain(server)
        seen.append(server.datagrams_to_send() and "output")
    seen.append(server.closed)
    return seen


@given(_STEPS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
def test_short_cut_for_application_data_matches_the_general_path(
        cctx: DtlsContext, sctx: DtlsContext, steps: list[tuple[int | str, ...]]) -> None:
    fast = _server_sees(cctx, sctx, steps, fast=True)
    assert fast == _server_sees(cctx, sctx, steps, fast=False)


def test_protect_seals_at_once_only_when_dotsd_protects(pki: PkiPaths, cctx: DtlsContext,
                                                        sctx: DtlsContext) -> None:
    client, server = connect(cctx, sctx)
    drain(client), drain(server)
    datagram = client.protect(b"now")
    assert datagram is not None and not client.has_output
    assert server.receive_application_data(datagram, 0.0) == b"now"
    assert server.receive_application_data(datagram, 0.0) is None  # a replay: dropped
    assert drain(server) == []
    client.send(b"queued")
    assert client.has_output and client.protect(b"later") is None  # keeps the order
    assert client.protect(b"x" * 20000) is None
    kept, openssl_side = connect(cctx, sctx, offload_server=False)
    assert openssl_side.protect(b"x") is None and not openssl_side.offloaded
    openssl_side.send(b"via openssl")
    for d in openssl_side.datagrams_to_send():
        assert kept.receive_application_data(d, 0.0) == b"via openssl"
    client.close()
    assert client.protect(b"x") is None


def test_send_before_handshake_or_after_close_raises(cctx: DtlsContext) -> None:
    client = DtlsConnection(cctx, 0.0, server_hostname="localhost")
    with pytest.raises(DtlsStateError):
        client.send(b"too early")
    client.close()
    assert drain(client) == [ConnectionClosed("closed")]
    with pytest.raises(DtlsStateError):
        client.send(b"too late")
    client.receive_datagram(b"\x16\xfe\xfd" + bytes(10), 1.0)  # ignored, no error
    client.handle_timer(100.0)
    assert client.get_timer() is None and drain(client) == []


def resumed_up_to_the_last_flight(cctx: DtlsContext, sctx: DtlsContext
                                  ) -> tuple[DtlsConnection, DtlsConnection]:
    """A resumed handshake where the client has completed and its last flight (CCS,
    Finished) waits in ``client.datagrams_to_send()``; the server has not completed."""
    first, _ = connect(cctx, sctx)
    client = DtlsConnection(cctx, 0.0, server_hostname="localhost", session=first.session)
    server = DtlsConnection(sctx, 0.0)
    for d in client.datagrams_to_send():
        server.receive_datagram(d, 0.0)
    for d in server.datagrams_to_send():
        client.receive_datagram(d, 0.0)
    assert client.handshake_complete and not server.handshake_complete
    return client, server


def test_application_data_before_the_finished_is_kept(cctx: DtlsContext,
                                                      sctx: DtlsContext) -> None:
    """Resumed handshake: the client's data overtakes its last flight on the way."""
    client, server = resumed_up_to_the_last_flight(cctx, sctx)
    last_flight = client.datagrams_to_send()
    client.send(b"early")
    early = client.datagrams_to_send()
    for d in early + last_flight:
        server.receive_datagram(d, 0.0)
    events = drain(server)
    assert isinstance(events[0], HandshakeCompleted) and events[0].resumed
    assert events[1:] == [DataReceived(b"early")]


@pytest.mark.parametrize("fast_path", [True, False])
def test_lost_last_flight_travels_with_the_data(cctx: DtlsContext, sctx: DtlsContext,
                                                fast_path: bool) -> None:
    """Resumed handshake, the client's last flight (CCS, Finished) is lost: its data carries
    that flight along in the same datagram, so the first one that arrives completes the
    handshake and is delivered, without waiting for the server's timer; once the server
    answered, the data goes alone."""
    client, server = resumed_up_to_the_last_flight(cctx, sctx)
    (last_flight,) = client.datagrams_to_send()  # lost

    def send(data: bytes) -> bytes:
        sealed = client.protect(data) if fast_path else None
        if sealed is None:
            client.send(data)
            (sealed,) = client.datagrams_to_send()
        return sealed

    lost_too = send(b"request 1")
    assert lost_too.startswith(last_flight)
    server.receive_datagram(send(b"request 2"), 0.1)
    events = drain(server)
    assert isinstance(events[0], HandshakeCompleted) and events[0].resumed
    assert events[1:] == [DataReceived(b"request 2")]
    assert server.get_timer() is None  # no flight of its own left to resend
    server.send(b"response")
    for d in server.datagrams_to_send():
        client.receive_datagram(d, 0.15)
    assert drain(client)[-1] == DataReceived(b"response")
    alone = send(b"request 3")
    assert not alone.startswith(last_flight[:13]) and len(alone) < len(last_flight)
    server.receive_datagram(alone, 0.2)
    assert drain(server) == [DataReceived(b"request 3")]


# --- retransmission -----------------------------------------------------------------------------

def test_retransmission_schedule_and_deadline(cctx: DtlsContext) -> None:
    timers = HandshakeTimers(initial=0.5, maximum=2.0, deadline=6.0)
    client = DtlsConnection(cctx, 100.0, server_hostname="localhost", timers=timers)
    (ch1,) = client.datagrams_to_send()
    sent_at: list[float] = []
    for _ in range(20):
        at = client.get_timer()
        if at is None:
            break
        client.handle_timer(at)
        out = client.datagrams_to_send()
        if out:
            assert out == [ch1]  # the same record again
            sent_at.append(round(at - 100.0, 6))
    assert sent_at == [0.5, 1.5, 3.5, 5.5]  # 0.5, 1, 2, then capped at 2
    assert drain(client) == [ConnectionClosed("handshake timeout")]
    assert client.retransmissions == 4


def test_timers_from_rtt(cctx: DtlsContext) -> None:
    assert HandshakeTimers.from_rtt(0.2).initial == pytest.approx(0.4)
    assert HandshakeTimers.from_rtt(0.001).initial == pytest.approx(0.1)
    client = DtlsConnection(cctx, 0.0, server_hostname="localhost")
    assert client.get_timer() == pytest.approx(1.0)  # RFC 6347 §4.2.4.1 default
    client.set_rtt(0.05, 0.0)
    assert client.get_timer() == pytest.approx(0.1)
    openssl = DtlsConnection(cctx, 0.0, server_hostname="localhost",
                             retransmit=Retransmit.OPENSSL)
    timer = openssl.get_timer()
    assert timer is not None and 0.5 < timer <= 1.0  # OpenSSL's own 1 s timer


def test_handshake_round_trip_sets_the_later_timers(cctx: DtlsContext,
                                                    sctx: DtlsContext) -> None:
    """A flight answered without retransmission is a round-trip sample (Karn's rule): the
    next flights start at max(2 RTT, floor) instead of 1 s; a resent flight gives none."""
    jar = CookieJar(b"j" * 32)
    addr = ("192.0.2.1", 999)
    client = DtlsConnection(cctx, 0.0, server_hostname="localhost")
    (hello,) = client.datagrams_to_send()
    check = jar.check(hello, addr, 0.025)
    assert check.reply is not None
    client.receive_datagram(check.reply, 0.06)  # HelloVerifyRequest after 60 ms
    assert client.rtt == pytest.approx(0.06)
    assert client.get_timer() == pytest.approx(0.06 + 0.12)  # 2 RTT, not 1 s
    hello2 = client.datagrams_to_send()
    check = jar.check(hello2[0], addr, 0.085)
    assert check.hello is not None
    assert check.rtt == pytest.approx(0.06, abs=0.0015)  # the cookie's age: HVR → CH
    hinted = DtlsConnection(sctx, 0.085, cookie=check.hello.cookie, rtt_hint=check.rtt)
    hinted.receive_datagram(hello2[0], 0.085)
    assert hinted.datagrams_to_send()
    assert hinted.get_timer() == pytest.approx(0.085 + 0.12, abs=0.003)  # 2 RTT
    # A long hint (the ClientHello came back on the client's timer) changes nothing.
    assert DtlsConnection(sctx, 0.0, cookie=check.hello.cookie, rtt_hint=0.7).timers.initial \
        == 1.0
    server = DtlsConnection(sctx, 0.085, cookie=check.hello.cookie)
    server.receive_datagram(hello2[0], 0.085)
    flight = server.datagrams_to_send()
    assert server.get_timer() == pytest.approx(0.085 + 1.0)  # no sample yet
    client.handle_timer(0.18)  # the server's flight is late: the client resends its own
    assert client.datagrams_to_send() == hello2
    for d in flight:
        client.receive_datagram(d, 0.2)
    assert client.rtt == pytest.approx(0.06)  # the resent flight gave no sample
    for d in client.datagrams_to_send():
        server.receive_datagram(d, 0.25)
    assert server.rtt == pytest.approx(0.165)
    untuned = DtlsConnection(cctx, 0.0, server_hostname="localhost",
                             timers=HandshakeTimers(learn_rtt=False))
    untuned.receive_datagram(jar.check(untuned.datagrams_to_send()[0], addr, 0.0).reply
                             or b"", 0.06)
    assert untuned.rtt == pytest.approx(0.06)
    assert untuned.get_timer() == pytest.approx(1.06)


def test_lost_server_flight_is_resent_when_the_client_repeats(cctx: DtlsContext,
                                                              sctx: DtlsContext) -> None:
    """RFC 6347 §4.2.4: a retransmitted ClientHello tells the server its flight was lost;
    the server answers at once instead of waiting for its own timer."""
    client = DtlsConnection(cctx, 0.0, server_hostname="localhost")
    server = DtlsConnection(sctx, 0.0)
    for d in client.datagrams_to_send():
        server.receive_datagram(d, 0.0)
    assert server.datagrams_to_send()  # lost
    client.handle_timer(1.0)
    repeat = client.datagrams_to_send()
    assert repeat
    for d in repeat:
        server.receive_datagram(d, 1.0)
    assert server.datagrams_to_send(), "server did not answer the repeated ClientHello"
    assert server.get_timer() == pytest.approx(2.0)  # its own timer restarted, not doubled


def test_lost_final_flight_is_resent_after_the_handshake(cctx: DtlsContext,
                                                         sctx: DtlsContext) -> None:
    """The server completes when it sends its last flight; if that is lost, the client's
    repeated Finished (identical records, epoch 1) makes the server send it again."""
    client = DtlsConnection(cctx, 0.0, server_hostname="localhost")
    server = DtlsConnection(sctx, 0.0)
    for _ in range(3):
        for d in client.datagrams_to_send():
            server.receive_datagram(d, 0.0)
        if server.handshake_complete:
            break
        for d in server.datagrams_to_send():
            client.receive_datagram(d, 0.0)
    assert server.handshake_complete and not client.handshake_complete
    assert server.datagrams_to_send()  # the final flight, lost
    assert server.get_timer() == pytest.approx(60.0)  # kept for retransmission until then
    client.handle_timer(1.0)
    for d in client.datagrams_to_send():
        server.receive_datagram(d, 1.0)
    for d in server.datagrams_to_send():
        client.receive_datagram(d, 1.0)
    assert client.handshake_complete
    client.send(b"first request")
    for d in client.datagrams_to_send():
        server.receive_datagram(d, 1.5)
    assert drain(server)[-1] == DataReceived(b"first request")
    assert server.get_timer() is None  # the peer has it: nothing kept


# --- loss: dotsd's timers against OpenSSL's --------------------------------------------------

def lossy_handshake(cctx: DtlsContext, sctx: DtlsContext, seed: int, timers: HandshakeTimers,
                    loss: float = 0.5, horizon: float = 5.0,
                    delay: float = 0.01) -> float | None:
    """One handshake (with the cookie exchange) over a wire that drops ``loss`` of the
    datagrams each way, in fake time; returns when both sides completed, or None."""
    rng = random.Random(seed)
    jar = CookieJar(b"j" * 32)
    addr = ("192.0.2.1", 1000 + seed)
    now = 0.0
    client = DtlsConnection(cctx, now, server_hostname="localhost", timers=timers)
    server: DtlsConnection | None = None
    wire: list[tuple[float, int, str, bytes]] = []
    count = 0

    def put(direction: str, datagrams: list[bytes]) -> None:
        nonlocal count
        for d in datagrams:
            if rng.random() >= loss:
                count += 1
                heapq.heappush(wire, (now + delay, count, direction, d))

    put("c->s", client.datagrams_to_send())
    for _ in range(10_000):
        deadlines = [t for t in (client.get_timer(),
                                 server.get_timer() if server is not None else None)
                     if t is not None]
        if wire:
            deadlines.append(wire[0][0])
        if not deadlines:
            return None
        now = min(deadlines)
        if now > horizon:
            return None
        while wire and wire[0][0] <= now:
            _, _, direction, d = heapq.heappop(wire)
            if direction == "s->c":
                client.receive_datagram(d, now)
            elif server is not None and not server.closed:
                server.receive_datagram(d, now)
            else:
                check = jar.check(d, addr, now)
                if check.verdict is Verdict.SEND_VERIFY and check.reply is not None:
                    put("s->c", [check.reply])
                elif check.verdict is Verdict.VERIFIED and check.hello is not None:
                    server = DtlsConnection(sctx, now, cookie=check.hello.cookie,
                                            timers=timers, rtt_hint=check.rtt)
                    server.receive_datagram(d, now)
        for conn in (client, server):
            if conn is not None and (t := conn.get_timer()) is not None and t <= now:
                conn.handle_timer(now)
        put("c->s", client.datagrams_to_send())
        if server is not None:
            put("s->c", server.datagrams_to_send())
        if client.handshake_complete and server is not None and server.handshake_complete:
            return now
    raise AssertionError("simulation did not converge")


def test_handshakes_complete_under_heavy_loss_in_fake_time(cctx: DtlsContext,
                                                           sctx: DtlsContext) -> None:
    """50 % loss each way, 20 ms RTT: with timers set from the RTT most handshakes finish
    within 5 s; with the RFC's 1 s default, few do (deterministic: seeded loss)."""
    n = 40
    fast = [lossy_handshake(cctx, sctx, seed, HandshakeTimers.from_rtt(0.02))
            for seed in range(n)]
    learning = [lossy_handshake(cctx, sctx, seed, HandshakeTimers()) for seed in range(n)]
    slow = [lossy_handshake(cctx, sctx, seed, HandshakeTimers(learn_rtt=False))
            for seed in range(n)]
    done_fast = sum(t is not None for t in fast)
    done_learning = sum(t is not None for t in learning)
    done_slow = sum(t is not None for t in slow)
    print(f"within 5 s at 50% loss: {done_fast}/{n} (initial 0.1 s), {done_learning}/{n} "
          f"(initial 1 s, then from the measured RTT), {done_slow}/{n} (1 s throughout)")
    assert done_fast >= n // 2
    assert done_fast >= 2 * done_slow
    # The round trip measured on the first flight sets the timers of the later ones.
    assert done_learning >= done_slow * 3 // 2
    assert all(t is not None for t in (lossy_handshake(cctx, sctx, s, HandshakeTimers.from_rtt(
        0.02), loss=0.0) for s in range(3)))


def test_dotsd_timers_beat_openssls_in_real_time(pki: PkiPaths) -> None:
    """The same lossy wire (50 % each way), real time (OpenSSL's timer reads the real
    clock): N handshakes paced by dotsd against N paced by OpenSSL alone, 2.5 s each."""
    sctx = server_context(DtlsConfig(psk_identity=PSK_ID, psk_key=PSK_KEY))
    cctx = client_context(DtlsConfig(psk_identity=PSK_ID, psk_key=PSK_KEY))
    n, limit, delay = 20, 2.5, 0.005
    rng = random.Random(2026)
    start = time.monotonic()

    @dataclass
    class Run:
        client: DtlsConnection
        server: DtlsConnection

    runs: dict[Retransmit, list[Run]] = {}
    for mode in Retransmit:
        timers = HandshakeTimers.from_rtt(0.01) if mode is Retransmit.DOTSD else None
        native = mode is Retransmit.OPENSSL  # OpenSSL does everything, records included
        runs[mode] = [Run(DtlsConnection(cctx, start, timers=timers, retransmit=mode,
                                         offload=not native),
                          DtlsConnection(sctx, start, timers=timers, retransmit=mode,
                                         offload=not native))
                      for _ in range(n)]
    wire: list[tuple[float, int, DtlsConnection, bytes]] = []
    count = 0
    while (now := time.monotonic()) < start + limit:
        while wire and wire[0][0] <= now:
            _, _, dst, d = heapq.heappop(wire)
            dst.receive_datagram(d, now)
        for group in runs.values():
            for run in group:
                for src, dst in ((run.client, run.server), (run.server, run.client)):
                    at = src.get_timer()
                    if at is not None and at <= now:
                        src.handle_timer(now)
                    for d in src.datagrams_to_send():
                        if rng.random() >= 0.5:
                            count += 1
                            heapq.heappush(wire, (now + delay, count, dst, d))
        time.sleep(0.001)
    done = {mode: sum(r.client.handshake_complete and r.server.handshake_complete
                      for r in group) for mode, group in runs.items()}
    print(f"completed within {limit} s at 50% loss: dotsd {done[Retransmit.DOTSD]}/{n}, "
          f"OpenSSL alone {done[Retransmit.OPENSSL]}/{n}")
    assert done[Retransmit.DOTSD] >= n // 2
    assert done[Retransmit.DOTSD] >= done[Retransmit.OPENSSL] + 5
