"""Hostile and malformed input to the DOTS signal server, from a second authenticated client.

Client A (the PKI's ``client`` certificate) has a mitigation and a session configuration.
Client B (``other``, made with issue_client) sends, over a real DTLS session, requests that
RFC 9132 / RFC 7252 / RFC 7959 tell the server to refuse, then record-level and CoAP-level
garbage. For each: the code the RFC prescribes, a diagnostic payload (RFC 7252 §5.5.2, RFC 9132
§9), the server still serving both clients, and A's mitigation, session configuration, cuid
binding and stored records unchanged (GET before and after, and the store).

Last, a hypothesis test sends random bodies to the mitigation resource in process (in-memory
links carrying B's certificate identity): never a 5.xx, never a crash, nothing of A's changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.loopback import tap
from support.pki import issued_client
from support.relays import UdpRelay, udp_relay
from support.signalnet import HOST, STEP, Clock, SignalNet, cuid_of, request, signal_listeners
from support.steps import TooManySteps, counting_steps
from support.waiting import wait_until

from dotsd.coap import codec as coap_codec
from dotsd.coap.message import Block, Message
from dotsd.coap.numbers import Code, ContentFormat, MessageType, OptionNumber
from dotsd.link import Link
from dotsd.node import CoapNode, RequestError
from dotsd.pki import PkiPaths
from dotsd.signal.lifecycle import MitigationEvent
from dotsd.signal.policy import RequestLimits

pytestmark = [pytest.mark.network, pytest.mark.timeout(60)]

MITIGATE = (".well-known", "dots", "mitigate")
CONFIG = (".well-known", "dots", "config")
HB = (".well-known", "dots", "hb")

# RFC 9132 §6 Table 5 keys (cbor-keys.tsv); hostile bodies are built with cbor2 directly.
K_SCOPE_ROOT, K_SCOPE, K_CDID, K_CUID, K_MID, K_PREFIX, K_PORTS, K_LOWER, K_UPPER = (
    1, 2, 3, 4, 5, 6, 7, 8, 9)
K_PROTOCOL, K_FQDN, K_URI, K_LIFETIME, K_STATUS, K_ACL, K_ATTACK_STATUS = (
    10, 11, 12, 14, 16, 22, 29)
K_SIGNAL_CONFIG, K_HB_INTERVAL, K_CURRENT, K_ACK_TIMEOUT, K_CURRENT_DEC, K_IDLE = (
    30, 33, 36, 39, 43, 44)
K_TRIGGER, K_HEARTBEAT, K_PEER_HB = 45, 49, 51

A_SCOPE = {K_PREFIX: ["2001:db8:aaaa::/48"], K_LIFETIME: 3600}
A_CONFIG = {K_SIGNAL_CONFIG: {K_IDLE: {K_HB_INTERVAL: {K_CURRENT: 60}}}}
A_MID = 100


def mitigation(*entries: dict[int, Any]) -> bytes:
    return cbor2.dumps({K_SCOPE_ROOT: {K_SCOPE: list(entries)}})


def b_scope(**extra: Any) -> dict[int, Any]:
    """A valid scope entry of B's, far from A's targets (no conflict with A)."""
    return {K_PREFIX: ["2001:db8:bbbb::/48"], K_LIFETIME: 3600, **extra}


def with_key(key: int, value: Any) -> bytes:
    entry = b_scope()
    entry[key] = value
    return mitigation(entry)


def raw(code: int, path: tuple[str | bytes, ...], payload: bytes | None = None, *,
        cf: int | None = ContentFormat.DOTS_CBOR,
        options: tuple[tuple[int, bytes | int | str], ...] = ()) -> Message:
    """A request whose Uri-Path segments are given as is (also invalid UTF-8)."""
    msg = Message(code=code)
    for segment in path:
        msg.add(OptionNumber.URI_PATH, segment)
    if payload is not None:
        msg.payload = payload
        if cf is not None:
            msg.add(OptionNumber.CONTENT_FORMAT, cf)
    for number, value in options:
        msg.add(number, value)
    return msg


def code_text(code: int) -> str:
    return f"{code >> 5}.{code & 0x1F:02d}"


@dataclass(frozen=True)
class Case:
    name: str
    message: Message
    code: Code
    rule: str


def battery(a: str, b: str) -> list[Case]:
    """B's hostile requests: (name, request, the code the rule prescribes, the rule)."""
    mine = (*MITIGATE, f"cuid={b}", "mid=1")
    put = Code.PUT
    cases = [
        # Bodies (RFC 9132 §4.4.1.3: invalid or unknown parameters → 4.00; §6).
        Case("garbage CBOR", raw(put, mine, b"\xff\x00garbage"), Code.BAD_REQUEST,
             "RFC 9132 §6"),
        Case("truncated CBOR", raw(put, mine, mitigation(b_scope())[:-3]), Code.BAD_REQUEST,
             "RFC 8949 §3"),
        Case("bytes after the item", raw(put, mine, mitigation(b_scope()) + b"\x00"),
             Code.BAD_REQUEST, "RFC 9132 §6"),
        Case("empty body", raw(put, mine, b""), Code.BAD_REQUEST, "RFC 9132 §4.4.1.3"),
        Case("array body", raw(put, mine, cbor2.dumps([1, 2])), Code.BAD_REQUEST,
             "RFC 9132 §6"),
        Case("text keys", raw(put, mine, cbor2.dumps(
            {"ietf-dots-signal-channel:mitigation-scope": {"scope": [{"lifetime": 5}]}})),
             Code.BAD_REQUEST, "RFC 9132 §6"),
        Case("nesting bomb", raw(put, mine, b"\x81" * 5000 + b"\x00"), Code.BAD_REQUEST,
             "RFC 9132 §6"),
        Case("foreign tag", raw(put, mine, cbor2.dumps(cbor2.CBORTag(
            55799, {K_SCOPE_ROOT: {K_SCOPE: [b_scope()]}}))), Code.BAD_REQUEST, "RFC 9132 §6"),
        Case("unknown comprehension-required key", raw(put, mine, with_key(1000, 1)),
             Code.BAD_REQUEST, "RFC 9132 §6, §4.4.1.3"),
        Case("unknown comprehension-required key 127", raw(put, mine, with_key(127, "x")),
             Code.BAD_REQUEST, "RFC 9132 §10.6.1.1"),
        Case("target-prefix not an array", raw(put, mine, with_key(K_PREFIX, 5)),
             Code.BAD_REQUEST, "RFC 9132 §6 Table 5"),
        Case("target-prefix not a prefix", raw(put, mine, with_key(K_PREFIX, ["nope"])),
             Code.BAD_REQUEST, "RFC 9132 §5.3"),
        Case("target outside the client's domain", raw(put, mine, with_key(
            K_PREFIX, ["8.8.8.0/24"])), Code.BAD_REQUEST, "RFC 9132 §4.4.1"),
        Case("lifetime text", raw(put, mine, with_key(K_LIFETIME, "3600")), Code.BAD_REQUEST,
             "RFC 9132 §6"),
        Case("lifetime float", raw(put, mine, with_key(K_LIFETIME, 1.5)), Code.BAD_REQUEST,
             "RFC 9132 §6"),
        Case("lifetime 0", raw(put, mine, with_key(K_LIFETIME, 0)), Code.BAD_REQUEST,
             "RFC 9132 §4.4.1.3"),
        Case("lifetime -2", raw(put, mine, with_key(K_LIFETIME, -2)), Code.BAD_REQUEST,
             "RFC 9132 §4.4.1.1"),
        Case("lifetime -2**64", raw(put, mine, with_key(K_LIFETIME, -(2**64))),
             Code.BAD_REQUEST, "RFC 9132 §5.3"),
        Case("lifetime 2**32", raw(put, mine, with_key(K_LIFETIME, 2**32)), Code.BAD_REQUEST,
             "RFC 9132 §5.3 (uint32)"),
        Case("lifetime bignum", raw(put, mine, with_key(K_LIFETIME, 2**64)),
             Code.BAD_REQUEST, "RFC 9132 §5.3"),
        Case("target-protocol 300", raw(put, mine, with_key(K_PROTOCOL, [300])),
             Code.BAD_REQUEST, "RFC 9132 §5.3 (uint8)"),
        Case("lower-port 70000", raw(put, mine, with_key(K_PORTS, [{K_LOWER: 70000}])),
             Code.BAD_REQUEST, "RFC 9132 §5.3"),
        Case("upper-port below lower-port", raw(put, mine, with_key(
            K_PORTS, [{K_LOWER: 90, K_UPPER: 80}])), Code.BAD_REQUEST, "RFC 9132 §5.3"),
        Case("port range without lower-port", raw(put, mine, with_key(
            K_PORTS, [{K_UPPER: 80}])), Code.BAD_REQUEST, "RFC 9132 §5.3"),
        Case("trigger-mitigation integer", raw(put, mine, with_key(K_TRIGGER, 1)),
             Code.BAD_REQUEST, "RFC 9132 §6"),
        Case("two scopes", raw(put, mine, mitigation(b_scope(), b_scope())),
             Code.BAD_REQUEST, "RFC 9132 §4.4.1.3"),
        Case("no scope", raw(put, mine, mitigation()), Code.BAD_REQUEST, "RFC 9132 §4.4.1.3"),
        Case("no target", raw(put, mine, mitigation({K_LIFETIME: 60})), Code.BAD_REQUEST,
             "RFC 9132 §4.4.1.3 (mandatory attribute)"),
        Case("mid in the body", raw(put, mine, with_key(K_MID, 7)), Code.BAD_REQUEST,
             "RFC 9132 §5.3"),
        Case("status in the body", raw(put, mine, with_key(K_STATUS, 2)), Code.BAD_REQUEST,
             "RFC 9132 §5.3"),
        Case("cuid in the body", raw(put, mine, with_key(K_CUID, a)), Code.BAD_REQUEST,
             "RFC 9132 §4.4.1.3"),
        Case("cdid in the body", raw(put, mine, with_key(K_CDID, "x")), Code.BAD_REQUEST,
             "RFC 9132 §4.4.1.3"),
        Case("alias-name never created by B", raw(put, (*MITIGATE, f"cuid={b}", "mid=3"),
                                                  mitigation({13: ["web-servers"],
                                                              K_LIFETIME: 60})),
             Code.BAD_REQUEST, "RFC 9132 §4.4.1.3 (no data channel: no alias exists)"),
        Case("conflict acl-list in a request", raw(put, mine, with_key(K_ACL, [{23: "x"}])),
             Code.BAD_REQUEST, "RFC 9132 §4.4.1.3"),
        Case("target-uri not a URI", raw(put, (*MITIGATE, f"cuid={b}", "mid=2"), mitigation(
            {K_URI: ["not a uri"], K_LIFETIME: 60})), Code.BAD_REQUEST, "RFC 9132 §5.3"),
        # Content-Format (RFC 9132 §9, RFC 7252 §5.10.3).
        Case("application/json", raw(put, mine, mitigation(b_scope()), cf=50),
             Code.UNSUPPORTED_CONTENT_FORMAT, "RFC 9132 §9"),
        Case("application/cbor", raw(put, mine, mitigation(b_scope()), cf=60),
             Code.UNSUPPORTED_CONTENT_FORMAT, "RFC 9132 §9"),
        Case("no Content-Format", raw(put, mine, mitigation(b_scope()), cf=None),
             Code.UNSUPPORTED_CONTENT_FORMAT, "RFC 9132 §9"),
        Case("Content-Format 65535", raw(put, mine, mitigation(b_scope()), cf=65535),
             Code.UNSUPPORTED_CONTENT_FORMAT, "RFC 9132 §9"),
        Case("Accept JSON", raw(Code.GET, (*MITIGATE, f"cuid={b}"),
                                options=((OptionNumber.ACCEPT, 50),)),
             Code.NOT_ACCEPTABLE, "RFC 7252 §5.10.4"),
        # URI (RFC 9132 §4.4.1.1, §4.4.1.3, §4.4.2, §4.4.4).
        Case("PUT with A's cuid", raw(put, (*MITIGATE, f"cuid={a}", "mid=5"),
                                      mitigation(b_scope())),
             Code.CONFLICT, "RFC 9132 §4.4.1.3 Figure 11: cuid-collision"),
        Case("PUT without mid", raw(put, (*MITIGATE, f"cuid={b}"), mitigation(b_scope())),
             Code.BAD_REQUEST, "RFC 9132 §4.4.1.3"),
        Case("PUT without cuid", raw(put, (*MITIGATE, "mid=1"), mitigation(b_scope())),
             Code.BAD_REQUEST, "RFC 9132 §4.4.1.3"),
        Case("extra segment", raw(put, (*mine, "extra"), mitigation(b_scope())),
             Code.BAD_REQUEST, "RFC 9132 §4.4.1.1"),
        Case("unknown parameter", raw(put, (*MITIGATE, f"cuid={b}", "foo=bar", "mid=1"),
                                      mitigation(b_scope())),
             Code.BAD_REQUEST, "RFC 9132 §4.4.1.1"),
        Case("mid twice", raw(put, (*mine, "mid=2"), mitigation(b_scope())),
             Code.BAD_REQUEST, "RFC 9132 §4.4.1.1"),
        Case("empty mid", raw(put, (*MITIGATE, f"cuid={b}", "mid="), mitigation(b_scope())),
             Code.BAD_REQUEST, "RFC 9132 §4.4.1.1"),
        Case("mid before cuid", raw(put, (*MITIGATE, "mid=1", f"cuid={b}"),
                                    mitigation(b_scope())),
             Code.BAD_REQUEST, "RFC 9132 §4.4.1.1"),
        Case("mid 2**32", raw(put, (*MITIGATE, f"cuid={b}", "mid=4294967296"),
                              mitigation(b_scope())), Code.BAD_REQUEST, "RFC 9132 §5.3"),
        Case("mid -1", raw(put, (*MITIGATE, f"cuid={b}", "mid=-1"), mitigation(b_scope())),
             Code.BAD_REQUEST, "RFC 9132 §5.3"),
        Case("mid 200 digits", raw(put, (*MITIGATE, f"cuid={b}", "mid=" + "9" * 200),
                                   mitigation(b_scope())), Code.BAD_REQUEST, "RFC 9132 §5.3"),
        Case("mid not a number", raw(put, (*MITIGATE, f"cuid={b}", "mid=abc"),
                                     mitigation(b_scope())), Code.BAD_REQUEST,
             "RFC 9132 §4.4.1.1"),
        Case("cuid of 200 characters", raw(put, (*MITIGATE, "cuid=" + "a" * 200, "mid=1"),
                                           mitigation(b_scope())),
             Code.BAD_REQUEST, "RFC 9132 §4.4.1.1"),
        Case("cuid not UTF-8", raw(put, (*MITIGATE, b"cuid=\xff\xfe", "mid=1"),
                                   mitigation(b_scope())), Code.BAD_REQUEST, "RFC 7252 §5.10.1"),
        Case("no such resource", raw(Code.GET, (".well-known", "dots", "mitigatex")),
             Code.NOT_FOUND, "RFC 9132 §4.2"),
        Case("GET without cuid", raw(Code.GET, MITIGATE), Code.BAD_REQUEST,
             "RFC 9132 §4.4.2"),
        Case("bad Uri-Query c", raw(Code.GET, (*MITIGATE, f"cuid={b}"),
                                    options=((OptionNumber.URI_QUERY, "c=z"),)),
             Code.BAD_REQUEST, "RFC 9132 §4.4.2 Table 2"),
        Case("unknown Uri-Query", raw(Code.GET, (*MITIGATE, f"cuid={b}"),
                                      options=((OptionNumber.URI_QUERY, "x=1"),)),
             Code.BAD_REQUEST, "RFC 9132 §4.4.2"),
        # A's resources (RFC 9132 §4.1: "entitled to access only the resources it creates").
        Case("GET A's mitigations", raw(Code.GET, (*MITIGATE, f"cuid={a}")), Code.UNAUTHORIZED,
             "RFC 9132 §4.1, §9"),
        Case("GET A's mid", raw(Code.GET, (*MITIGATE, f"cuid={a}", f"mid={A_MID}")),
             Code.UNAUTHORIZED, "RFC 9132 §4.1"),
        Case("DELETE A's mid", raw(Code.DELETE, (*MITIGATE, f"cuid={a}", f"mid={A_MID}")),
             Code.UNAUTHORIZED, "RFC 9132 §4.1"),
        Case("efficacy update of A's mid", raw(put, (*MITIGATE, f"cuid={a}", f"mid={A_MID}"),
                                               with_key(K_ATTACK_STATUS, 2),
                                               options=((OptionNumber.IF_MATCH, b""),)),
             Code.CONFLICT, "RFC 9132 §4.4.1.3 Figure 11: cuid-collision"),
        Case("GET of A's mid number under B's cuid",
             raw(Code.GET, (*MITIGATE, f"cuid={b}", f"mid={A_MID}")), Code.NOT_FOUND,
             "RFC 9132 §4.4.2, §9"),
        Case("DELETE without mid", raw(Code.DELETE, (*MITIGATE, f"cuid={b}")),
             Code.BAD_REQUEST, "RFC 9132 §4.4.4"),
        Case("If-Match with an ETag", raw(put, (*MITIGATE, f"cuid={b}", "mid=4"),
                                          mitigation(b_scope()),
                                          options=((OptionNumber.IF_MATCH, b"\x01\x02"),)),
             Code.PRECONDITION_FAILED, "RFC 7252 §5.10.8.1 (the server assigns no ETags)"),
        # Methods and CoAP options (RFC 9132 §9: 4.02, 4.05).
        Case("POST", raw(Code.POST, mine, mitigation(b_scope())), Code.METHOD_NOT_ALLOWED,
             "RFC 9132 §9"),
        Case("FETCH", raw(5, mine, mitigation(b_scope())), Code.METHOD_NOT_ALLOWED,
             "RFC 9132 §9"),
        Case("iPATCH", raw(7, mine, mitigation(b_scope())), Code.METHOD_NOT_ALLOWED,
             "RFC 9132 §9"),
        Case("unknown critical option", raw(Code.GET, (*MITIGATE, f"cuid={b}"),
                                            options=((2049, b"x"),)),
             Code.BAD_OPTION, "RFC 7252 §5.4.1, RFC 9132 §9"),
        # Block-wise abuse (RFC 7959 §2.9, RFC 9132 §9: 4.08, 4.13).
        Case("Block1 starting at block 3", raw(put, mine, mitigation(b_scope()), options=(
            (OptionNumber.BLOCK1, Block(3, False, 6).encode()),)),
             Code.REQUEST_ENTITY_INCOMPLETE, "RFC 7959 §2.9.2"),
        Case("Block1 announcing 10 MB", raw(put, mine, bytes(1024), options=(
            (OptionNumber.BLOCK1, Block(0, True, 6).encode()), (OptionNumber.SIZE1, 10**7))),
             Code.REQUEST_ENTITY_TOO_LARGE, "RFC 7959 §2.9.3, §4"),
        Case("Block1 SZX 7 on DTLS", raw(put, mine, mitigation(b_scope()), options=(
            (OptionNumber.BLOCK1, Block(0, True, 7).encode()),)),
             Code.BAD_REQUEST, "RFC 7959 §2.2 (SZX 7 reserved)"),
        Case("Block1 option of 4 bytes", raw(put, mine, mitigation(b_scope()), options=(
            (OptionNumber.BLOCK1, b"\x01\x02\x03\x04"),)),
             Code.BAD_OPTION, "RFC 7959 §2.2"),
        Case("Block2 beyond the representation", raw(Code.GET, CONFIG, options=(
            (OptionNumber.BLOCK2, Block(500, False, 0).encode()),)),
             Code.BAD_OPTION, "RFC 7252 §5.9.2.3: an option that cannot be honoured"),
        # Session configuration (RFC 9132 §4.5).
        Case("config garbage", raw(put, (*CONFIG, "sid=1"), b"\xff"), Code.BAD_REQUEST,
             "RFC 9132 §4.5.2"),
        Case("config application/cbor", raw(put, (*CONFIG, "sid=1"), cbor2.dumps(A_CONFIG),
                                            cf=60),
             Code.UNSUPPORTED_CONTENT_FORMAT, "RFC 9132 §9"),
        Case("config sid not a number", raw(put, (*CONFIG, "sid=abc"), cbor2.dumps(A_CONFIG)),
             Code.BAD_REQUEST, "RFC 9132 §4.5.2"),
        Case("config sid 2**32", raw(put, (*CONFIG, "sid=4294967296"), cbor2.dumps(A_CONFIG)),
             Code.BAD_REQUEST, "RFC 9132 §5.3 (uint32), §4.5.2"),
        Case("config GET sid 2**32", raw(Code.GET, (*CONFIG, "sid=4294967296")),
             Code.BAD_REQUEST, "RFC 9132 §5.3 (uint32)"),
        Case("config PUT without sid", raw(put, CONFIG, cbor2.dumps(A_CONFIG)),
             Code.BAD_REQUEST, "RFC 9132 §4.5.2"),
        Case("config value out of range", raw(put, (*CONFIG, "sid=1"), cbor2.dumps(
            {K_SIGNAL_CONFIG: {K_IDLE: {K_HB_INTERVAL: {K_CURRENT: 5000}}}})),
             Code.UNPROCESSABLE_ENTITY, "RFC 9132 §4.5.2"),
        Case("config negative ack-timeout", raw(put, (*CONFIG, "sid=1"), cbor2.dumps(
            {K_SIGNAL_CONFIG: {K_IDLE: {K_ACK_TIMEOUT: {
                K_CURRENT_DEC: cbor2.CBORTag(4, [-2, -100])}}}})),
             Code.UNPROCESSABLE_ENTITY, "RFC 9132 §4.5.2"),
        Case("config decimal exponent -2**40", raw(put, (*CONFIG, "sid=1"), cbor2.dumps(
            {K_SIGNAL_CONFIG: {K_IDLE: {K_ACK_TIMEOUT: {
                K_CURRENT_DEC: cbor2.CBORTag(4, [-(2**40), 1])}}}})),
             Code.BAD_REQUEST, "RFC 9132 §6 (decimal64)"),
        Case("config without attributes", raw(put, (*CONFIG, "sid=1"), cbor2.dumps(
            {K_SIGNAL_CONFIG: {}})), Code.BAD_REQUEST, "RFC 9132 §4.5.2"),
        Case("config unknown sid", raw(Code.GET, (*CONFIG, "sid=999")), Code.NOT_FOUND,
             "RFC 9132 §9"),
        Case("config extra segment", raw(Code.GET, (*CONFIG, "sid=1", "x")), Code.BAD_REQUEST,
             "RFC 9132 §4.5.2"),
        Case("config POST", raw(Code.POST, CONFIG), Code.METHOD_NOT_ALLOWED, "RFC 9132 §9"),
        # Heartbeat (RFC 9132 §4.7).
        Case("heartbeat garbage", raw(put, HB, b"\xff"), Code.BAD_REQUEST, "RFC 9132 §4.7"),
        Case("heartbeat text/plain", raw(put, HB, cbor2.dumps({K_HEARTBEAT: {K_PEER_HB: True}}),
                                         cf=0),
             Code.UNSUPPORTED_CONTENT_FORMAT, "RFC 9132 §9"),
        Case("heartbeat without peer-hb-status", raw(put, HB, cbor2.dumps({K_HEARTBEAT: {}})),
             Code.BAD_REQUEST, "RFC 9132 §4.7"),
        Case("heartbeat without a body", raw(put, HB), Code.BAD_REQUEST,
             "RFC 9132 §4.7: 'peer-hb-status' is mandatory"),
        Case("heartbeat GET", raw(Code.GET, HB), Code.METHOD_NOT_ALLOWED, "RFC 9132 §9"),
    ]
    return cases


# ---------------------------------------------------------------------------------------------
# The two clients


@pytest.fixture(scope="module")
def pki(pki: PkiPaths) -> PkiPaths:
    """The shared test PKI (tests/conftest.py), with client B's certificate ``other``."""
    issued_client(pki, "other")
    return pki


@dataclass
class Two:
    net: SignalNet
    relay: UdpRelay  # between B and the server (no loss): B's address, for record garbage
    a: CoapNode
    a_link: Link
    b: CoapNode
    b_link: Link
    a_cuid: str
    b_cuid: str

    async def ask_a(self, msg: Message) -> Message:
        return await self.a.request(self.a_link, msg, timeout=STEP)

    async def ask_b(self, msg: Message) -> Message:
        return await self.b.request(self.b_link, msg, timeout=STEP)

    async def snapshot(self) -> tuple[Any, ...]:
        """A's view (GET of all its mitigations and of its configuration, exact bytes: the
        server clock does not move) and the server's records of A."""
        mitigations = await self.ask_a(request(Code.GET, (*MITIGATE, f"cuid={self.a_cuid}")))
        config = await self.ask_a(request(Code.GET, CONFIG))
        server = self.net.server
        store = server.store
        assert store is not None
        records = sorted((r.cuid, r.mid, r.status, r.lifetime, r.expires_at, repr(r.scope),
                          r.updated) for r in store.all_mitigations() if r.cuid == self.a_cuid)
        table = [m.to_dict() for m in server.table.of_client(self.a_cuid)]
        return (mitigations.code, mitigations.payload, config.code, config.payload, records,
                table, store.get_session_config(self.a_cuid), store.get_binding(self.a_cuid))


@contextlib.asynccontextmanager
async def two_clients(pki: PkiPaths, state: Path) -> AsyncIterator[Two]:
    async with signal_listeners(pki, state, clock=Clock(), tls=False) as net, \
            udp_relay((HOST, net.dtls_port)) as relay:
        a, b = CoapNode(), CoapNode()
        two = Two(net, relay, a, await net.dial_dtls(a), b,
                  await net.dial_dtls(b, "other", port=relay.port), cuid_of(pki),
                  cuid_of(pki, "other"))
        try:
            created = await two.ask_a(request(Code.PUT, (*MITIGATE, f"cuid={two.a_cuid}",
                                                         f"mid={A_MID}"),
                                              payload=mitigation(A_SCOPE)))
            assert created.code == Code.CREATED, created
            configured = await two.ask_a(request(Code.PUT, (*CONFIG, "sid=7"),
                                                 payload=cbor2.dumps(A_CONFIG)))
            assert configured.code == Code.CREATED, configured
            yield two
        finally:
            await a.close()
            await b.close()


def diagnostic_ok(resp: Message) -> bool:
    """RFC 9132 §9 / RFC 7252 §5.5.2: an error carries a plain-text diagnostic payload."""
    if not resp.payload:
        return False
    if resp.content_format not in (None, ContentFormat.TEXT_PLAIN):
        return False
    try:
        resp.payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Tests


async def test_hostile_requests_get_the_prescribed_error(pki: PkiPaths, tmp_path: Path) -> None:
    async with two_clients(pki, tmp_path / "state") as two:
        before = await two.snapshot()
        wrong: list[str] = []
        for case in battery(two.a_cuid, two.b_cuid):
            resp = await two.ask_b(case.message)
            if resp.code != case.code:
                wrong.append(f"{case.name}: {code_text(resp.code)} instead of "
                             f"{code_text(case.code)} ({case.rule}): {resp.payload[:200]!r}")
            elif not (diagnostic_ok(resp) or (resp.code == Code.CONFLICT and
                                              resp.content_format == ContentFormat.DOTS_CBOR)):
                # (4.09 carries the conflict information of RFC 9132 §4.4.1.3 instead)
                wrong.append(f"{case.name}: {code_text(resp.code)} without a diagnostic "
                             f"payload ({resp.content_format}, {resp.payload[:80]!r})")
            after = await two.snapshot()
            if after != before:
                wrong.append(f"{case.name}: client A's state changed: {before} -> {after}")
                before = after
        assert not wrong, "\n".join(wrong)
        # B was refused everything: no mitigation, no binding; the server still serves it.
        server = two.net.server
        assert server.table.of_client(two.b_cuid) == []
        assert server.store is not None and server.store.get_binding(two.b_cuid) is None
        ok = await two.ask_b(request(Code.PUT, (*MITIGATE, f"cuid={two.b_cuid}", "mid=1"),
                                     payload=mitigation(b_scope())))
        assert ok.code == Code.CREATED, ok
        assert await two.snapshot() == before


async def test_efficacy_update_for_an_unknown_mid_is_silently_ignored(
        pki: PkiPaths, tmp_path: Path) -> None:
    """RFC 9132 §4.4.3: "If no match is found, the PUT request is silently ignored by the DOTS
    server": no answer (it used to be 4.12), nothing created, nothing changed."""
    async with two_clients(pki, tmp_path / "state") as two:
        before = await two.snapshot()
        update = raw(Code.PUT, (*MITIGATE, f"cuid={two.b_cuid}", "mid=999"),
                     with_key(K_ATTACK_STATUS, 2), options=((OptionNumber.IF_MATCH, b""),))
        with pytest.raises(RequestError, match="timeout"):
            await two.b.request(two.b_link, update, timeout=1.0)
        assert two.net.server.table.lookup(two.b_cuid, 999) is None
        assert await two.snapshot() == before
        # The server still answers this client at once afterwards.
        listed = await two.ask_b(request(Code.GET, (*MITIGATE, f"cuid={two.b_cuid}")))
        assert listed.code == Code.NOT_FOUND


async def test_observe_of_another_clients_mitigations(pki: PkiPaths, tmp_path: Path) -> None:
    async with two_clients(pki, tmp_path / "state") as two:
        own = two.a.observe(two.a_link, request(Code.GET, (*MITIGATE, f"cuid={two.a_cuid}",
                                                           f"mid={A_MID}")), timeout=STEP)
        first = await own.next(STEP)
        assert first.code == Code.CONTENT and first.observe is not None
        endpoint = two.net.server.node.endpoint
        registered = endpoint.observer_count()
        assert registered == 1
        spies = []
        for path in ((*MITIGATE, f"cuid={two.a_cuid}"),
                     (*MITIGATE, f"cuid={two.a_cuid}", f"mid={A_MID}")):
            obs = two.b.observe(two.b_link, request(Code.GET, path), timeout=STEP)
            refused = await obs.next(STEP)
            assert refused.code == Code.UNAUTHORIZED and refused.observe is None, refused
            assert diagnostic_ok(refused)
            spies.append(obs)
        assert endpoint.observer_count() == registered  # nothing registered for B
        # A status change is notified to A, and to nobody else.
        got = tap(two.b)
        two.net.server.report(two.a_cuid, A_MID, MitigationEvent.MITIGATING)
        note = await own.next(STEP)
        assert cbor2.loads(note.payload)[K_SCOPE_ROOT][K_SCOPE][0][K_STATUS] == 2
        # A notification to B would have left the server with A's (the same report), so
        # before the answer to a request B sends now, in order on B's path: once B has that
        # answer, anything the server sent B is in ``got``.
        answer = await two.ask_b(request(Code.GET, (*MITIGATE, f"cuid={two.b_cuid}")))
        received = [coap_codec.decode(data) for data in got]
        assert received and all(m.token == answer.token for m in received), received
        own.cancel()
        for obs in spies:
            obs.cancel()


async def test_oversized_bodies(pki: PkiPaths, tmp_path: Path) -> None:
    async with two_clients(pki, tmp_path / "state") as two:
        before = await two.snapshot()
        path = (*MITIGATE, f"cuid={two.b_cuid}", "mid=1")
        # 12000 prefixes, ~280 KB: sent block-wise (RFC 7959), over the 256 KiB a DOTS body
        # may have here: 4.13 (RFC 9132 §9).
        prefixes = [f"2001:db8:bbbb::{i:x}/128" for i in range(12000)]
        huge = mitigation({K_PREFIX: prefixes, K_LIFETIME: 60})
        resp = await two.ask_b(request(Code.PUT, path, payload=huge))
        assert resp.code == Code.REQUEST_ENTITY_TOO_LARGE and diagnostic_ok(resp), resp
        # One 4000-byte datagram without Block1: 4.13 with Size1 (RFC 7959 §2.9.3).
        # Its Message ID is far from the ~280 B just used for the blocks: a recent one would
        # be a duplicate, answered from the server's cache (RFC 7252 §4.5).
        state = two.b.endpoint.peer_state(two.b_link)
        assert state is not None
        fresh_mid = (state.next_mid + 0x8000) & 0xFFFF
        msg = Message(mtype=MessageType.CON, code=Code.PUT, mid=fresh_mid, token=b"big")
        msg.set_path("/".join(path)).add(OptionNumber.CONTENT_FORMAT, ContentFormat.DOTS_CBOR)
        msg.payload = huge[:4000]
        replies = await exchange_raw(two, coap_codec.encode(msg))
        assert [(r.code, r.token) for r in replies] == [(Code.REQUEST_ENTITY_TOO_LARGE,
                                                          b"big")], replies
        assert replies[0].opt(OptionNumber.SIZE1) is not None
        assert two.net.server.table.of_client(two.b_cuid) == []
        assert await two.snapshot() == before


def hosts(first: int, count: int) -> bytes:
    return mitigation({K_PREFIX: [f"2001:db8:bbbb::{i:x}/128"
                                  for i in range(first, first + count)],
                       K_LIFETIME: 600})


async def test_large_overlapping_requests_do_not_stall_the_server(pki: PkiPaths,
                                                                   tmp_path: Path) -> None:
    """B lists thousands of hosts, twice, overlapping (RFC 9132 §4.4.1.3: the server looks
    for common targets); meanwhile A's status request is answered promptly."""
    async with two_clients(pki, tmp_path / "state") as two:
        before = await two.snapshot()
        path = (*MITIGATE, f"cuid={two.b_cuid}")
        # By default one request names at most 1024 prefixes (RFC 9132 §4.4.1.3: 4.00); this
        # test is about the cost of the overlap, so the operator allows more.
        refused = await two.ask_b(request(Code.PUT, (*path, "mid=1"),
                                          payload=hosts(0, 3000)))
        assert refused.code == Code.BAD_REQUEST and diagnostic_ok(refused), refused
        assert b"3000 'target-prefix'" in refused.payload
        server = two.net.server
        server.set_policy(replace(server.core.policies,
                                  limits=RequestLimits(target_prefix=4096)))
        # The steps the server takes for each datagram it receives (support.steps), B's
        # requests included: the one that completes a request does all the work on it.
        costs: list[int] = []
        deliver = two.net.server.node.data_received
        budget = [5_000_000]  # per datagram; B's first request takes about 650,000

        def counted(link: Link, data: bytes) -> None:
            try:
                with counting_steps(budget[0]) as steps:
                    deliver(link, data)
            except TooManySteps:
                costs.append(budget[0] + 1)
            else:
                costs.append(steps.count)

        two.net.server.node.data_received = counted  # type: ignore[method-assign]

        first = await two.ask_b(request(Code.PUT, (*path, "mid=1"), payload=hosts(0, 3000)))
        assert first.code == Code.CREATED, first
        alone = max(costs)  # B's first request: nothing stored to compare it with
        costs.clear()
        budget[0] = 2 * alone
        up = two.relay.forwarded["up"]
        second = asyncio.create_task(two.ask_b(request(Code.PUT, (*path, "mid=2"),
                                                       payload=hosts(1500, 3000))))
        # B's request is being transferred (RFC 7959 Block1: about 70 blocks, one round
        # trip each) when A asks; A is answered before B's transfer is over.
        await wait_until(lambda: two.relay.forwarded["up"] >= up + 2, STEP,
                         what="B's second request under way")
        a_view = await two.ask_a(request(Code.GET, (*MITIGATE, f"cuid={two.a_cuid}")))
        assert a_view.code == Code.CONTENT and not second.done()
        await asyncio.wait([second], timeout=STEP)
        # The server's work on the overlapping request, common targets included, is about
        # that of the first one (the same size; 860,000 steps against 650,000): comparing
        # every pair of hosts would be 9 million comparisons.
        assert max(costs) <= 2 * alone, (max(costs), alone)
        assert second.done(), "no answer to B's second request"
        resp = second.result()
        # The higher 'mid' of the same client overrides the overlapping one (§4.4.1.3).
        assert resp.code == Code.CREATED, resp
        assert [m.mid for m in two.net.server.table.of_client(two.b_cuid)] == [2]
        assert await two.snapshot() == before


async def exchange_raw(two: Two, data: bytes) -> list[Message]:
    """Send ``data`` as one CoAP datagram inside B's DTLS session; what B receives in return.

    The server answers the datagrams of a session in the order they come, each at once: once
    B has the answer to a request it sends right after ``data``, whatever the server sent in
    return for ``data`` has arrived (no time to wait out)."""
    got: list[Message] = []
    deliver = two.b.data_received

    def spy(link: Link, data: bytes) -> None:
        with contextlib.suppress(Exception):
            got.append(coap_codec.decode(data))
        deliver(link, data)

    two.b.data_received = spy  # type: ignore[method-assign]
    try:
        two.b_link.send(data)
        after = await two.ask_b(request(Code.GET, (*MITIGATE, f"cuid={two.b_cuid}")))
    finally:
        two.b.data_received = deliver  # type: ignore[method-assign]
    assert got and (got[-1].mid, got[-1].token) == (after.mid, after.token), got
    return got[:-1]


def record(content_type: int, epoch: int, seq: int, fragment: bytes,
           length: int | None = None) -> bytes:
    """A DTLS 1.2 record (RFC 6347 §4.1) with any header values."""
    n = len(fragment) if length is None else length
    return (bytes([content_type, 0xFE, 0xFD]) + epoch.to_bytes(2, "big")
            + seq.to_bytes(6, "big") + n.to_bytes(2, "big") + fragment)


async def test_malformed_datagrams_and_records(pki: PkiPaths, tmp_path: Path) -> None:
    async with two_clients(pki, tmp_path / "state") as two:
        before = await two.snapshot()
        dtls = two.net.dtls
        sessions = dtls.session_count
        rnd = random.Random(9132)
        probe = request(Code.GET, (*MITIGATE, f"cuid={two.b_cuid}"))

        # Inside B's DTLS session, CoAP garbage (RFC 7252 §4.2, §4.3): a CON with a
        # reserved option delta is rejected with RST; other junk is ignored.
        replies = await exchange_raw(two, bytes([0x40, 0x01, 0x12, 0x34, 0xF1, 0x61]))
        assert [(r.mtype, r.mid) for r in replies] == [(MessageType.RST, 0x1234)], replies
        for junk in (b"hello", b"\x00", bytes([0x80, 0x01, 0, 3]), rnd.randbytes(300)):
            assert await exchange_raw(two, junk) == [], junk
        assert (await two.ask_b(probe)).code == Code.NOT_FOUND  # B has no mitigation

        # From B's address, outside its session: records that do not authenticate, a
        # plaintext fatal alert, a cookieless ClientHello, plain CoAP, random bytes (RFC 6347
        # §4.1.2.7: invalid records are silently discarded; §4.2.8: a new handshake needs a
        # valid cookie before it replaces the session).
        hello_body = (b"\xfe\xfd" + rnd.randbytes(32) + b"\x00\x00\x00\x02\xc0\x2b\x01\x00")
        hello = record(22, 0, 0, bytes([1]) + len(hello_body).to_bytes(3, "big") + b"\x00\x00"
                       + bytes(3) + len(hello_body).to_bytes(3, "big") + hello_body)
        for data in (record(23, 1, 99, rnd.randbytes(40)),
                     record(23, 1, 100, rnd.randbytes(40), length=0xFFFF),
                     record(23, 0, 5, b"abcd"),
                     record(21, 0, 200, bytes([2, 40])),  # fatal handshake_failure
                     record(21, 1, 201, bytes([2, 40])),
                     hello,
                     coap_codec.encode(Message(mtype=MessageType.CON, code=Code.GET, mid=1,
                                               token=b"x").set_path("/".join(MITIGATE))),
                     *(rnd.randbytes(rnd.randrange(1, 200)) for _ in range(20))):
            two.relay.inject(data)
        # B's next request leaves from the same relay socket, after them: once it is
        # answered, the server has handled them all.
        assert (await two.ask_b(probe)).code == Code.NOT_FOUND
        assert dtls.session_count == sessions

        # From unknown addresses: dropped before any state (RFC 6347 §4.2.1 cookies).
        dropped = dtls.dropped
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((HOST, 0))
            sock.setblocking(False)
            for _ in range(10):
                sock.sendto(rnd.randbytes(rnd.randrange(1, 300)), (HOST, two.net.dtls_port))
            sock.sendto(record(23, 1, 1, rnd.randbytes(64)), (HOST, two.net.dtls_port))
            # Each is dropped as it is read, and an answer would have been sent then (on
            # loopback, in this socket's queue as soon as sent): once all 11 are dropped,
            # nothing came back.
            await wait_until(lambda: dtls.dropped == dropped + 11, STEP, what="11 dropped")
            with pytest.raises(BlockingIOError):
                sock.recv(2048)
        assert dtls.session_count == sessions

        assert (await two.ask_b(probe)).code == Code.NOT_FOUND
        assert await two.snapshot() == before


async def test_alias_check_of_the_server(pki: PkiPaths) -> None:
    """RFC 9132 §4.4.1.3: only aliases the client created (through a data channel, which
    dotsd does not have yet) are accepted; a server given an alias check uses it."""
    from test_signal_server import make_env

    def body(alias: str) -> dict[str, Any]:
        return {"ietf-dots-signal-channel:mitigation-scope": {"scope": [
            {"alias-name": [alias], "lifetime": 60}]}}

    env = make_env(pki, None, alias_check=lambda cuid, cdid, alias: alias == f"{cuid}-web")
    try:
        assert (await env.put(1, body(f"{env.cuid}-web"))).code == Code.CREATED
        refused = await env.put(2, body("someone-elses"))
        assert refused.code == Code.BAD_REQUEST and b"alias" in refused.payload
        default = make_env(pki, None)
        try:
            refused = await default.put(1, body(f"{env.cuid}-web"))
            assert refused.code == Code.BAD_REQUEST and diagnostic_ok(refused)
            assert len(default.server.table) == 0
        finally:
            await default.client.close()
    finally:
        await env.client.close()


async def test_conditional_puts(pki: PkiPaths) -> None:
    """RFC 7252 §5.10.8 on the mitigation resource: If-Match with a value never matches (no
    ETags here), If-None-Match fails on an existing mitigation; RFC 9132 §4.4.3's empty
    If-Match is the efficacy update. A failed precondition changes nothing."""
    from test_signal_server import FIG7, make_env
    from test_signal_server import request as mem_request

    from dotsd.signal.uri import mitigate_path

    env = make_env(pki, None)
    try:
        def conditional(mid: int, number: int, value: bytes) -> Message:
            msg = mem_request(Code.PUT, mitigate_path(env.cuid, mid), FIG7)
            return msg.add(number, value)

        assert (await env.put(1)).code == Code.CREATED
        env.clock.now += 100
        for number, value in ((OptionNumber.IF_NONE_MATCH, b""),
                              (OptionNumber.IF_MATCH, b"\x01")):
            resp = await env.ask(conditional(1, number, value))
            assert resp.code == Code.PRECONDITION_FAILED and diagnostic_ok(resp), resp
        got = await env.get(1)
        scope = cbor2.loads(got.payload)[K_SCOPE_ROOT][K_SCOPE][0]
        assert scope[K_LIFETIME] == 3500  # not refreshed
        # If-None-Match on a new 'mid' creates it; no ETag ever creates anything.
        assert (await env.ask(conditional(2, OptionNumber.IF_MATCH, b"\x01"))).code == \
            Code.PRECONDITION_FAILED
        assert env.server.table.lookup(env.cuid, 2) is None
        created = await env.ask(conditional(3, OptionNumber.IF_NONE_MATCH, b""))
        assert created.code == Code.CREATED, created
    finally:
        await env.client.close()


# ---------------------------------------------------------------------------------------------
# Random bodies (hypothesis), in process


_KEYS = [K_CDID, K_CUID, K_MID, K_PREFIX, K_PORTS, K_LOWER, K_UPPER, K_PROTOCOL, K_FQDN,
         K_URI, 13, K_LIFETIME, 15, K_STATUS, 17, K_ACL, K_ATTACK_STATUS, K_TRIGGER, 127, 128,
         1000, 16384, 49152]
_leaf = (st.none() | st.booleans() | st.integers(-(2**65), 2**65) | st.floats()
         | st.text(max_size=30) | st.binary(max_size=30)
         | st.sampled_from(["2001:db8:bbbb::/48", "198.51.100.0/24", "2001:db8:bbbb::1/128",
                            "www.example.com", "-1", "::/0", "0.0.0.0/0"]))
_any = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.integers(-3, 70000) | st.text(max_size=4), inner,
                                      max_size=4), max_leaves=25)
_entry = st.dictionaries(st.sampled_from(_KEYS), _any | st.lists(_leaf, max_size=3),
                         max_size=6)
_bodies = st.one_of(
    st.binary(max_size=200),
    _any.map(cbor2.dumps),
    _entry.map(lambda e: mitigation(e)),
    st.lists(_entry, max_size=3).map(lambda es: mitigation(*es)),
    st.fixed_dictionaries({K_PREFIX: st.lists(_leaf, max_size=3), K_LIFETIME: _leaf})
    .map(lambda e: mitigation(e)),
)


def test_random_mitigation_bodies(pki: PkiPaths, tmp_path: Path) -> None:
    from support.memlinks import MemLink
    from test_signal_server import cert_links, make_env

    loop = asyncio.new_event_loop()
    try:
        env = make_env(pki, tmp_path)
        other = CoapNode()
        b_link: MemLink
        b_link, _ = cert_links(other, env.server.node, pki.directory / "other.pem")
        b_cuid = cuid_of(pki, "other")
        env_put = env.put(A_MID, {"ietf-dots-signal-channel:mitigation-scope": {"scope": [
            {"target-prefix": ["192.0.2.0/24"], "lifetime": 3600}]}})
        assert loop.run_until_complete(env_put).code == Code.CREATED
        store = env.server.store
        assert store is not None
        a_before = (env.server.table.lookup(env.cuid, A_MID), store.all_mitigations())
        mids = iter(range(1, 10**6))

        async def one(payload: bytes) -> Message:
            path = (*MITIGATE, f"cuid={b_cuid}", f"mid={next(mids)}")
            return await other.request(b_link, request(Code.PUT, path, payload=payload),
                                       timeout=STEP)

        @settings(max_examples=100, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow])
        @given(_bodies)
        def check(payload: bytes) -> None:
            resp = loop.run_until_complete(asyncio.wait_for(one(payload), STEP))
            assert resp.code in (Code.CREATED, Code.CHANGED) or (
                resp.code >> 5 == 4 and diagnostic_ok(resp)), (resp, payload)
            assert resp.code >> 5 != 5, (resp, payload)
            a_now = env.server.table.lookup(env.cuid, A_MID)
            assert a_now == a_before[0]
            assert [r for r in store.all_mitigations() if r.cuid == env.cuid] == [
                r for r in a_before[1] if r.cuid == env.cuid]

        check()
        # The server still serves A.
        assert loop.run_until_complete(env.get(A_MID)).code == Code.CONTENT
    finally:
        with contextlib.suppress(Exception):
            loop.run_until_complete(env.client.close())
            loop.run_until_complete(other.close())
            loop.run_until_complete(env.server.node.close())
            if env.server.store is not None:
                env.server.store.close()
        loop.close()

