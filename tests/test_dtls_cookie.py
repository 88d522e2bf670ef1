"""The stateless cookie exchange (RFC 6347 §4.2.1): dotsd.dtls.cookie against OpenSSL clients."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dotsd.dtls import (
    CookieJar,
    DtlsConfig,
    DtlsConnection,
    Verdict,
    client_context,
    parse_client_hello,
    server_context,
)
from dotsd.dtls.cookie import hello_verify_request
from dotsd.dtls.records import split_records
from dotsd.pki import PkiPaths

ADDR = ("192.0.2.10", 40000)


def client_hello(pki: PkiPaths) -> tuple[DtlsConnection, bytes]:
    conn = DtlsConnection(client_context(DtlsConfig.from_pki(pki, client=True)), 0.0,
                          server_hostname="localhost")
    (datagram,) = conn.datagrams_to_send()
    return conn, datagram


def test_parses_openssl_client_hello(pki: PkiPaths) -> None:
    _, ch = client_hello(pki)
    hello = parse_client_hello(ch)
    assert hello is not None
    assert hello.client_version == 0xFEFD and len(hello.random) == 32
    assert hello.cookie == b"" and hello.message_seq == 0
    assert hello.record_seq == bytes(6)
    assert len(hello.cipher_suites) % 2 == 0 and hello.compression_methods == b"\x00"


def test_hello_verify_request_is_accepted_by_openssl(pki: PkiPaths) -> None:
    jar = CookieJar(b"k" * 32)
    client, ch1 = client_hello(pki)
    check = jar.check(ch1, ADDR, 0.0)
    assert check.verdict is Verdict.SEND_VERIFY and check.reply is not None
    (hvr,) = split_records(check.reply)
    assert hvr.version == 0xFEFF and hvr.epoch == 0 and hvr.seq == 0  # seq echoes the CH
    client.receive_datagram(check.reply, 0.0)
    (ch2,) = client.datagrams_to_send()
    hello2 = parse_client_hello(ch2)
    assert hello2 is not None and hello2.message_seq == 1 and len(hello2.cookie) == 4 + 16
    check2 = jar.check(ch2, ADDR, 0.0)
    assert check2.verdict is Verdict.VERIFIED and check2.hello == hello2


def test_cookie_tells_the_round_trip(pki: PkiPaths) -> None:
    """The cookie carries the time it was made (under the HMAC): the second ClientHello tells
    the server one round trip, with no state kept between the two."""
    jar = CookieJar(b"k" * 32)
    client, ch1 = client_hello(pki)
    check = jar.check(ch1, ADDR, 1000.0)
    assert check.reply is not None
    client.receive_datagram(check.reply, 0.0)
    (ch2,) = client.datagrams_to_send()
    verified = jar.check(ch2, ADDR, 1000.062)
    assert verified.verdict is Verdict.VERIFIED
    assert verified.rtt is not None and abs(verified.rtt - 0.062) < 0.0015
    # Across the 32-bit millisecond wrap too.
    wrap = (1 << 32) / 1000
    check = jar.check(ch1, ADDR, wrap - 0.01)
    assert check.reply is not None
    hello = parse_client_hello(ch2)
    assert hello is not None
    # The stamp is covered by the HMAC: another time in the same cookie is refused.
    (hvr_cookie,) = [check.reply[-20:]]
    forged = bytes([hvr_cookie[0] ^ 1]) + hvr_cookie[1:]
    assert not jar.verify(dataclasses.replace(hello, cookie=forged), ADDR, wrap)
    assert jar.verify(dataclasses.replace(hello, cookie=hvr_cookie), ADDR, wrap + 0.04)
    assert jar._age(dataclasses.replace(hello, cookie=hvr_cookie), ADDR, wrap + 0.04) == \
        pytest.approx(0.05, abs=0.0015)


def test_hello_verify_request_bytes() -> None:
    hello = parse_client_hello(_synthetic_hello(cookie=b""))
    assert hello is not None
    hvr = hello_verify_request(hello, b"C" * 16)
    assert hvr[:3] == b"\x16\xfe\xff" and hvr[3:5] == b"\x00\x00"
    assert hvr[5:11] == hello.record_seq
    body = hvr[13:]
    assert body[0] == 3 and body[4:6] == b"\x00\x00"  # HelloVerifyRequest, message_seq 0
    assert body[12:] == b"\xfe\xff\x10" + b"C" * 16


def _synthetic_hello(cookie: bytes, random: bytes = b"R" * 32, seq: int = 5) -> bytes:
    ch = (b"\xfe\xfd" + random + b"\x00" + bytes((len(cookie),)) + cookie
          + b"\x00\x02\xc0\x2b" + b"\x01\x00")
    hs = b"\x01" + len(ch).to_bytes(3, "big") + b"\x00\x01" + b"\x00\x00\x00" \
        + len(ch).to_bytes(3, "big") + ch
    return b"\x16\xfe\xfd\x00\x00" + seq.to_bytes(6, "big") + len(hs).to_bytes(2, "big") + hs


def test_bad_cookies_are_refused() -> None:
    jar = CookieJar(b"k" * 32)
    hello = parse_client_hello(_synthetic_hello(b""))
    assert hello is not None
    good = jar.make(hello, ADDR, 0.0)
    assert jar.check(_synthetic_hello(good), ADDR, 0.0).verdict is Verdict.VERIFIED
    forged = bytes([good[0] ^ 1]) + good[1:]
    for data, addr in [
        (_synthetic_hello(forged), ADDR),  # one bit changed
        (_synthetic_hello(good[:8]), ADDR),  # truncated
        (_synthetic_hello(good), ("192.0.2.10", 40001)),  # another port
        (_synthetic_hello(good), ("192.0.2.11", 40000)),  # another address
        (_synthetic_hello(good, random=b"r" * 32), ADDR),  # another ClientHello
    ]:
        check = jar.check(data, addr, 0.0)
        assert check.verdict is Verdict.SEND_VERIFY  # a fresh HelloVerifyRequest, no state
        assert check.reply is not None
    other_jar = CookieJar(b"x" * 32)
    assert other_jar.check(_synthetic_hello(good), ADDR, 0.0).verdict is Verdict.SEND_VERIFY


def test_secret_rotation_accepts_current_and_previous_only() -> None:
    jar = CookieJar(lifetime=10.0, now=0.0)
    hello = parse_client_hello(_synthetic_hello(b""))
    assert hello is not None
    cookie = jar.make(hello, ADDR, 1.0)
    data = _synthetic_hello(cookie)
    assert jar.check(data, ADDR, 9.0).verdict is Verdict.VERIFIED
    assert jar.check(data, ADDR, 15.0).verdict is Verdict.VERIFIED  # previous key
    assert jar.check(data, ADDR, 21.0).verdict is Verdict.SEND_VERIFY  # two rotations later
    fresh = jar.make(hello, ADDR, 21.0)
    assert jar.check(_synthetic_hello(fresh), ADDR, 21.5).verdict is Verdict.VERIFIED
    # A long silence retires both keys at once.
    assert jar.check(_synthetic_hello(fresh), ADDR, 100.0).verdict is Verdict.SEND_VERIFY


@pytest.mark.parametrize("data", [
    b"", b"\x16", b"GET / HTTP/1.1\r\n\r\n", b"\x17\xfe\xfd" + bytes(10),
    b"\x16\xfe\xfd\x00\x01" + bytes(6) + b"\x00\x00",  # epoch 1
])
def test_garbage_is_dropped(data: bytes) -> None:
    assert CookieJar().check(data, ADDR, 0.0).verdict is Verdict.DROP


def test_fragmented_client_hello_is_dropped() -> None:
    data = bytearray(_synthetic_hello(b""))
    data[13 + 9:13 + 12] = (int.from_bytes(data[13 + 9:13 + 12], "big") - 1).to_bytes(3, "big")
    assert parse_client_hello(bytes(data)) is None


@given(st.binary(max_size=120), st.integers(0, 200))
@settings(max_examples=400, deadline=None)
def test_parser_never_raises(noise: bytes, cut: int) -> None:
    base = _synthetic_hello(b"c" * 16)
    parse_client_hello(noise)
    parse_client_hello(base[:cut] + noise)
    mutated = bytearray(base)
    for i, b in enumerate(noise[:len(mutated)]):
        mutated[(i * 7) % len(mutated)] ^= b
    parse_client_hello(bytes(mutated))


def test_jar_keeps_nothing_per_peer() -> None:
    jar = CookieJar(b"k" * 32)
    assert not hasattr(jar, "__dict__")  # slots only: two keys, a deadline, two settings
    before = {name: getattr(jar, name) for name in CookieJar.__slots__}
    for port in range(2000):
        jar.check(_synthetic_hello(b""), ("192.0.2.1", port), 0.0)
        jar.check(b"garbage" * port, ("192.0.2.1", port), 0.0)
    assert {name: getattr(jar, name) for name in CookieJar.__slots__} == before


def test_openssl_connection_checks_the_cookie_again(pki: PkiPaths) -> None:
    """A server connection created with another cookie refuses the ClientHello in
    DTLSv1_listen (the cookie-verify callback compares with the jar's cookie)."""
    jar = CookieJar(b"k" * 32)
    client, ch1 = client_hello(pki)
    check = jar.check(ch1, ADDR, 0.0)
    assert check.reply is not None
    client.receive_datagram(check.reply, 0.0)
    (ch2,) = client.datagrams_to_send()
    sctx = server_context(DtlsConfig.from_pki(pki))
    wrong = DtlsConnection(sctx, 0.0, cookie=b"w" * 16)
    wrong.receive_datagram(ch2, 0.0)
    event = wrong.next_event()
    assert wrong.closed and event is not None and "cookie" in getattr(event, "reason", "")
    hello = parse_client_hello(ch2)
    assert hello is not None
    right = DtlsConnection(sctx, 0.0, cookie=hello.cookie)
    right.receive_datagram(ch2, 0.0)
    assert not right.closed and right.datagrams_to_send()  # the ServerHello flight
