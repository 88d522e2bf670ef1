"""The stateless DTLS cookie exchange (RFC 6347 §4.2.1), done before any OpenSSL object exists.

A server answers a ClientHello without a valid cookie with a HelloVerifyRequest that it
builds itself, and keeps nothing: the cookie is an HMAC of the client's address and of the
ClientHello fields that must not change in the second ClientHello (RFC 6347 §4.2.1: version,
random, session_id, cipher_suites, compression_methods). Only a ClientHello that returns a
valid cookie, which proves the client receives at its address, may create per-peer state.

The HMAC key rotates every ``lifetime`` seconds; cookies made with the current or the
previous key are accepted, so a cookie stays valid for at least one ``lifetime``.
No I/O, no clock: time comes in as ``now`` arguments.

A cookie starts with the time it was made (milliseconds, 32 bits, covered by the HMAC): the
ClientHello that returns it tells the server one round trip (HelloVerifyRequest out, second
ClientHello in) without any state, so the server's first flight can be retransmitted on a
timer set from it (RFC 6347 §4.2.4.1) rather than the blind 1 s.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Final

from dotsd.dtls.records import CT_HANDSHAKE, DTLS_1_0, HANDSHAKE_HEADER_LEN, HEADER_LEN
from dotsd.link import Address

HT_CLIENT_HELLO: Final = 1
HT_HELLO_VERIFY_REQUEST: Final = 3
MAX_COOKIE_LEN: Final = 255  # RFC 6347 §4.2.1: opaque cookie<0..2^8-1>
DEFAULT_COOKIE_LEN: Final = 16
DEFAULT_LIFETIME: Final = 300.0
_STAMP_LEN: Final = 4  # milliseconds modulo 2**32 (49 days)
_STAMP_MOD: Final = 1 << 32


@dataclass(frozen=True, slots=True)
class ClientHello:
    """The fields of an unfragmented epoch-0 ClientHello that the cookie exchange needs."""

    record_version: int
    record_seq: bytes  # the 6-byte record sequence number, echoed in the HelloVerifyRequest
    message_seq: int
    client_version: int
    random: bytes
    session_id: bytes
    cookie: bytes
    cipher_suites: bytes
    compression_methods: bytes


def parse_client_hello(data: bytes) -> ClientHello | None:
    """Parse the first record of a datagram as a ClientHello; None if it is not one.

    Accepts only what DTLSv1_listen accepts too: a handshake record of epoch 0 whose
    fragment is a whole ClientHello (RFC 6347 §4.2.3; a fragmented first ClientHello is
    not supported by stateless servers).
    """
    n = len(data)
    if n < HEADER_LEN + HANDSHAKE_HEADER_LEN or data[0] != CT_HANDSHAKE or data[1] != 0xFE:
        return None
    if data[3] or data[4]:  # epoch must be 0
        return None
    rec_end = HEADER_LEN + int.from_bytes(data[11:13], "big")
    if rec_end > n:
        return None
    h = HEADER_LEN
    if data[h] != HT_CLIENT_HELLO:
        return None
    length = int.from_bytes(data[h + 1:h + 4], "big")
    frag_off = int.from_bytes(data[h + 6:h + 9], "big")
    frag_len = int.from_bytes(data[h + 9:h + 12], "big")
    p = h + HANDSHAKE_HEADER_LEN
    end = p + length
    if frag_off != 0 or frag_len != length or end > rec_end:
        return None
    # ClientHello (RFC 6347 §4.2.1): client_version, random, session_id, cookie,
    # cipher_suites, compression_methods, extensions.
    if end - p < 2 + 32 + 1:
        return None
    client_version = int.from_bytes(data[p:p + 2], "big")
    random = data[p + 2:p + 34]
    p += 34
    sid_len = data[p]
    if sid_len > 32 or p + 1 + sid_len + 1 > end:
        return None
    session_id = data[p + 1:p + 1 + sid_len]
    p += 1 + sid_len
    cookie_len = data[p]
    if p + 1 + cookie_len + 2 > end:
        return None
    cookie = data[p + 1:p + 1 + cookie_len]
    p += 1 + cookie_len
    cs_len = int.from_bytes(data[p:p + 2], "big")
    if cs_len < 2 or cs_len % 2 or p + 2 + cs_len + 1 > end:
        return None
    cipher_suites = data[p + 2:p + 2 + cs_len]
    p += 2 + cs_len
    cm_len = data[p]
    if cm_len < 1 or p + 1 + cm_len > end:
        return None
    compression = data[p + 1:p + 1 + cm_len]
    return ClientHello(
        record_version=int.from_bytes(data[1:3], "big"), record_seq=data[5:11],
        message_seq=int.from_bytes(data[h + 4:h + 6], "big"), client_version=client_version,
        random=random, session_id=session_id, cookie=cookie, cipher_suites=cipher_suites,
        compression_methods=compression)


def hello_verify_request(hello: ClientHello, cookie: bytes) -> bytes:
    """The HelloVerifyRequest datagram answering ``hello`` (RFC 6347 §4.2.1).

    server_version is DTLS 1.0 whatever the version negotiated later; the record sequence
    number is that of the ClientHello; message_seq is 0 (the server's first message) and
    the record version DTLS 1.0, which every DTLS client accepts.
    """
    body = DTLS_1_0.to_bytes(2, "big") + bytes((len(cookie),)) + cookie
    n = len(body).to_bytes(3, "big")
    handshake = bytes((HT_HELLO_VERIFY_REQUEST,)) + n + b"\x00\x00" + b"\x00\x00\x00" + n + body
    return (bytes((CT_HANDSHAKE,)) + DTLS_1_0.to_bytes(2, "big") + b"\x00\x00"
            + hello.record_seq + len(handshake).to_bytes(2, "big") + handshake)


class Verdict(enum.Enum):
    DROP = "drop"  # not a ClientHello: ignore it
    SEND_VERIFY = "send-verify"  # no or no valid cookie: send ``reply``, keep nothing
    VERIFIED = "verified"  # the cookie is valid: this peer may get a connection


@dataclass(frozen=True, slots=True)
class HelloCheck:
    verdict: Verdict
    hello: ClientHello | None = None
    reply: bytes | None = None  # the HelloVerifyRequest, for SEND_VERIFY
    rtt: float | None = None  # VERIFIED: time since the cookie was made (HVR → ClientHello)


class CookieJar:
    """Makes and checks cookies; holds two keys and nothing per peer."""

    __slots__ = ("_current", "_length", "_lifetime", "_previous", "_rotate_at")

    def __init__(self, secret: bytes | None = None, *, lifetime: float = DEFAULT_LIFETIME,
                 length: int = DEFAULT_COOKIE_LEN, now: float = 0.0) -> None:
        if not 8 <= length <= 32:
            raise ValueError("cookie length must be 8..32 bytes")
        if lifetime <= 0:
            raise ValueError("cookie lifetime must be positive")
        self._current = secret if secret is not None else secrets.token_bytes(32)
        self._previous: bytes | None = None
        self._lifetime = lifetime
        self._length = length
        self._rotate_at = now + lifetime

    def rotate(self, now: float) -> None:
        """Start a new key now; cookies of the old one stay valid for one more lifetime."""
        self._previous = self._current
        self._current = secrets.token_bytes(32)
        self._rotate_at = now + self._lifetime

    def _expire(self, now: float) -> None:
        if now >= self._rotate_at:
            if now >= self._rotate_at + self._lifetime:
                self._previous = None  # both keys are older than allowed
                self._current = secrets.token_bytes(32)
                self._rotate_at = now + self._lifetime
            else:
                self.rotate(self._rotate_at)

    def _mac(self, key: bytes, hello: ClientHello, address: Address, stamp: bytes) -> bytes:
        msg = b"".join((
            stamp, f"{address[0]}|{address[1]}".encode(), b"\x00",
            hello.client_version.to_bytes(2, "big"), hello.random,
            bytes((len(hello.session_id),)), hello.session_id,
            len(hello.cipher_suites).to_bytes(2, "big"), hello.cipher_suites,
            bytes((len(hello.compression_methods),)), hello.compression_methods,
        ))
        return hmac.digest(key, msg, hashlib.sha256)[:self._length]

    def make(self, hello: ClientHello, address: Address, now: float) -> bytes:
        self._expire(now)
        stamp = _stamp(now)
        return stamp + self._mac(self._current, hello, address, stamp)

    def verify(self, hello: ClientHello, address: Address, now: float) -> bool:
        """True when ``hello`` carries a cookie made for it and ``address`` by a live key."""
        return self._age(hello, address, now) is not None

    def _age(self, hello: ClientHello, address: Address, now: float) -> float | None:
        """The age of ``hello``'s cookie if it is valid, else None."""
        self._expire(now)
        cookie = hello.cookie
        if len(cookie) != _STAMP_LEN + self._length:
            return None
        stamp, mac = cookie[:_STAMP_LEN], cookie[_STAMP_LEN:]
        if not (hmac.compare_digest(mac, self._mac(self._current, hello, address, stamp))
                or (self._previous is not None and hmac.compare_digest(
                    mac, self._mac(self._previous, hello, address, stamp)))):
            return None
        made = int.from_bytes(stamp, "big")
        return ((int(now * 1000) - made) % _STAMP_MOD) / 1000

    def check(self, data: bytes, address: Address, now: float) -> HelloCheck:
        """What a server does with a datagram from a peer it has no connection with."""
        hello = parse_client_hello(data)
        if hello is None:
            return HelloCheck(Verdict.DROP)
        if hello.cookie:
            age = self._age(hello, address, now)
            if age is not None:
                return HelloCheck(Verdict.VERIFIED, hello, rtt=age)
        return HelloCheck(Verdict.SEND_VERIFY, hello,
                          hello_verify_request(hello, self.make(hello, address, now)))


def _stamp(now: float) -> bytes:
    return (int(now * 1000) % _STAMP_MOD).to_bytes(_STAMP_LEN, "big")
