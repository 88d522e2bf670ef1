"""The DOTS signal channel server (dotsd.agents.server) end to end: CoAP nodes over in-memory
links carrying certificate identities, and once over real DTLS sockets on ::1."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import time
from pathlib import Path
from typing import Any

import pytest
from support.memlinks import MemLink
from support.pki import issued_client

from dotsd.agents.server import SignalServer
from dotsd.coap import codec as coap_codec
from dotsd.coap.message import Message
from dotsd.coap.numbers import Code, ContentFormat, MessageType, OptionNumber
from dotsd.link import LinkHandler, cuid_from_psk_identity, make_peer_info, spki_sha256
from dotsd.model.codec import from_cbor, to_cbor
from dotsd.node import CoapNode, Observation, RequestError
from dotsd.pki import PkiPaths, load_certificate
from dotsd.signal.config import config_path
from dotsd.signal.heartbeat import HEARTBEAT_PATH, build_heartbeat_body
from dotsd.signal.identity import client_identity
from dotsd.signal.lifecycle import MitigationEvent
from dotsd.signal.mitigation import Change
from dotsd.signal.policy import ClientMatch, ClientPolicy, Policy, PolicySet
from dotsd.signal.scope import MITIGATION_MEMBER
from dotsd.signal.uri import mitigate_path
from dotsd.store import SqliteStore

T0 = 1_700_000_000.0
TIMEOUT = 5.0

FIG7: dict[str, Any] = {  # RFC 9132 Figure 7
    MITIGATION_MEMBER: {
        "scope": [
            {
                "target-prefix": ["2001:db8:6401::1/128", "2001:db8:6401::2/128"],
                "target-port-range": [
                    {"lower-port": 80},
                    {"lower-port": 443},
                    {"lower-port": 8080},
                ],
                "target-protocol": [6],
                "lifetime": 3600,
            }
        ]
    }
}


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def pki(pki: PkiPaths) -> PkiPaths:
    """The shared test PKI (tests/conftest.py), with a second client's certificate ``other``."""
    issued_client(pki, "other")
    return pki


def cert_links(client: LinkHandler, server: LinkHandler, cert_path: Path,
               transport: str = "dtls") -> tuple[MemLink, MemLink]:
    """In-memory links where the server sees the client's certificate (as DTLS gives it)."""
    cert = load_certificate(cert_path)
    la = MemLink(make_peer_info(("::1", 2), transport, True))
    lb = MemLink(make_peer_info(("::1", 1), transport, False, certificate=cert))
    la.peer, lb.peer = lb, la
    la.handler, lb.handler = client, server
    client.link_up(la)
    server.link_up(lb)
    return la, lb


def cuid_of(cert_path: Path) -> str:
    digest = spki_sha256(load_certificate(cert_path))
    return base64.urlsafe_b64encode(digest[:16]).decode().rstrip("=")


def request(code: Code, path: tuple[str, ...], body: dict[str, Any] | None = None, *,
            content_format: int | None = ContentFormat.DOTS_CBOR,
            payload: bytes | None = None) -> Message:
    msg = Message(code=code).set_path("/".join(path))
    if body is not None or payload is not None:
        msg.payload = payload if payload is not None else to_cbor(body or {})
        if content_format is not None:
            msg.add(OptionNumber.CONTENT_FORMAT, content_format)
    return msg


def entry(msg: Message) -> dict[str, Any]:
    assert msg.content_format == ContentFormat.DOTS_CBOR
    scopes = from_cbor(msg.payload)[MITIGATION_MEMBER]["scope"]
    assert len(scopes) == 1
    result: dict[str, Any] = scopes[0]
    return result


class Env:
    def __init__(self, pki: PkiPaths, server: SignalServer, clock: Clock) -> None:
        self.pki = pki
        self.server = server
        self.clock = clock
        self.client = CoapNode()
        self.link, self.server_link = cert_links(self.client, server.node, pki.client_cert)
        self.cuid = cuid_of(pki.client_cert)

    async def ask(self, msg: Message, link: MemLink | None = None,
                  node: CoapNode | None = None) -> Message:
        return await (node or self.client).request(link or self.link, msg, timeout=TIMEOUT)

    async def put(self, mid: int, body: dict[str, Any] = FIG7, **kw: Any) -> Message:
        return await self.ask(request(Code.PUT, mitigate_path(self.cuid, mid), body, **kw))

    async def get(self, mid: int | None = None) -> Message:
        return await self.ask(request(Code.GET, mitigate_path(self.cuid, mid)))

    def observe(self, mid: int | None = None) -> Observation:
        return self.client.observe(self.link, request(Code.GET, mitigate_path(self.cuid, mid)),
                                   timeout=TIMEOUT)


def make_env(pki: PkiPaths, tmp_path: Path | None = None,
             changes: list[Change] | None = None, **kw: Any) -> Env:
    clock = Clock()
    store = SqliteStore.open(tmp_path / "state") if tmp_path is not None else None
    server = SignalServer(store=store, clock=clock, monotonic=clock,
                          on_change=None if changes is None else changes.append, **kw)
    return Env(pki, server, clock)


async def settle() -> None:
    """Let the event loop deliver what the in-memory links carry (a request, its answer)."""
    for _ in range(8):
        await asyncio.sleep(0)


async def run_timers(server: SignalServer, mono: Clock, until: float) -> list[Change]:
    """Move the monotonic clock from deadline to deadline up to ``until``, firing the server's
    timer at each (heartbeats sent, sessions lost, lifetimes expired) and letting the links
    deliver in between; the changes made."""
    changes: list[Change] = []
    while (due := server.get_timer()) is not None and due <= until:
        mono.now = max(mono.now, due)
        changes += server.handle_timer(mono.now)
        await settle()
    mono.now = max(mono.now, until)
    return changes


# ---------------------------------------------------------------------------------------------
# identity


def test_cuid_derivation(pki: PkiPaths) -> None:
    cert = load_certificate(pki.client_cert)
    ident = client_identity(make_peer_info(("::1", 1), "dtls", False, certificate=cert))
    assert ident is not None
    assert len(ident.cuid) == 22  # RFC 9132 §4.4.1.1
    assert ident.cuid == cuid_of(pki.client_cert)
    assert ident.identity == "spki-sha256:" + spki_sha256(cert).hex()
    psk = client_identity(make_peer_info(("::1", 1), "dtls", False, psk_identity=b"dots"))
    assert psk is not None and psk.cuid == cuid_from_psk_identity(b"dots")
    assert psk.cuid == base64.urlsafe_b64encode(
        hashlib.sha256(b"dots").digest()[:16]).decode().rstrip("=")
    assert client_identity(make_peer_info(("::1", 1), "udp", False)) is None


# ---------------------------------------------------------------------------------------------
# mitigation resource


async def test_create_read_persist(pki: PkiPaths, tmp_path: Path) -> None:
    changes: list[Change] = []
    env = make_env(pki, tmp_path, changes)
    resp = await env.put(123)
    assert resp.code == Code.CREATED, resp.payload
    assert entry(resp) == {"mid": 123, "lifetime": 3600}
    assert [c.mitigation.mid for c in changes] == [123]
    assert changes[0].mitigation.is_active
    # Persisted before the answer, with the cuid bound to the client's identity.
    assert env.server.store is not None
    stored = env.server.store.get_mitigation(env.cuid, 123)
    assert stored is not None and stored.status == 1 and stored.expires_at == T0 + 3600
    binding = env.server.store.get_binding(env.cuid)
    assert binding is not None and binding.identity.startswith("spki-sha256:")

    env.clock.now += 100
    one = await env.get(123)
    assert one.code == Code.CONTENT
    got = entry(one)
    assert got["status"] == "attack-mitigation-in-progress"
    assert got["lifetime"] == 3500
    assert got["target-protocol"] == [6]
    every = await env.get()
    assert every.code == Code.CONTENT and entry(every)["mid"] == 123
    missing = await env.get(999)
    assert missing.code == Code.NOT_FOUND


async def test_observe_efficacy_withdraw(pki: PkiPaths) -> None:
    changes: list[Change] = []
    env = make_env(pki, None, changes)
    assert (await env.put(123)).code == Code.CREATED
    one = env.observe(123)
    every = env.observe()
    first = await one.next(TIMEOUT)
    assert first.observe is not None and entry(first)["status"] == "attack-mitigation-in-progress"
    await every.next(TIMEOUT)

    # Mitigator feedback: a status change is notified to both observations (§4.4.2.1).
    env.server.report(env.cuid, 123, MitigationEvent.MITIGATING)
    for obs in (one, every):
        note = await obs.next(TIMEOUT)
        assert entry(note)["status"] == "attack-successfully-mitigated"

    # Efficacy update (RFC 9132 §4.4.3, Figure 16): If-Match empty, no lifetime.
    env.clock.now += 60
    update = request(Code.PUT, mitigate_path(env.cuid, 123), {
        MITIGATION_MEMBER: {"scope": [{
            **{k: v for k, v in FIG7[MITIGATION_MEMBER]["scope"][0].items() if k != "lifetime"},
            "attack-status": "under-attack"}]}})
    update.add(OptionNumber.IF_MATCH, b"")
    resp = await env.ask(update)
    assert resp.code == Code.CHANGED, resp.payload
    assert entry(resp)["lifetime"] == 3600
    # Unknown mid with If-Match: "silently ignored" (RFC 9132 §4.4.3): no answer, nothing made.
    update.set_path("/".join(mitigate_path(env.cuid, 5)))
    with pytest.raises(RequestError, match="timeout"):
        await env.client.request(env.link, update, timeout=0.5)
    assert env.server.table.lookup(env.cuid, 5) is None

    # Withdraw: 2.02, status 5 (active but terminating), then removal (§4.4.4).
    resp = await env.ask(request(Code.DELETE, mitigate_path(env.cuid, 123)))
    assert resp.code == Code.DELETED and resp.payload == b""
    note = await one.next(TIMEOUT)
    assert entry(note)["status"] == "dots-client-withdrawn-mitigation"
    assert entry(await every.next(TIMEOUT))["status"] == "dots-client-withdrawn-mitigation"
    assert (await env.get(123)).code == Code.CONTENT
    gone = env.server.handle_timer(wall=env.clock.now + 121)
    assert [c.removed for c in gone] == [True]
    note = await one.next(TIMEOUT)
    assert entry(note)["status"] == "attack-mitigation-terminated"
    assert (await env.get(123)).code == Code.NOT_FOUND
    assert changes[-1].removed
    one.cancel()
    every.cancel()


async def test_other_client_cannot_touch(pki: PkiPaths, tmp_path: Path) -> None:
    env = make_env(pki, tmp_path)
    assert (await env.put(123)).code == Code.CREATED
    other_cert = pki.directory / "other.pem"
    other = CoapNode()
    lo, _ = cert_links(other, env.server.node, other_cert)
    path = mitigate_path(env.cuid, 123)
    for msg, code in ((request(Code.GET, path), Code.UNAUTHORIZED),
                      (request(Code.DELETE, path), Code.UNAUTHORIZED),
                      # RFC 9132 §4.4.1.3, Figure 11: a PUT naming a cuid not its own.
                      (request(Code.PUT, path, FIG7), Code.CONFLICT)):
        resp = await env.ask(msg, lo, other)
        assert resp.code == code, msg
        assert resp.payload  # diagnostic, or the conflict information
    assert (await env.get(123)).code == Code.CONTENT  # untouched
    # Its own derived cuid works.
    own = mitigate_path(cuid_of(other_cert), 1)
    body = {MITIGATION_MEMBER: {"scope": [{"target-prefix": ["192.0.2.0/24"], "lifetime": 60}]}}
    assert (await env.ask(request(Code.PUT, own, body), lo, other)).code == Code.CREATED


async def test_cuid_collision_non_strict(pki: PkiPaths, tmp_path: Path) -> None:
    env = make_env(pki, tmp_path, strict_cuid=False)
    assert (await env.put(123)).code == Code.CREATED
    other = CoapNode()
    lo, _ = cert_links(other, env.server.node, pki.directory / "other.pem")
    resp = await env.ask(request(Code.PUT, mitigate_path(env.cuid, 200), FIG7), lo, other)
    assert resp.code == Code.CONFLICT  # RFC 9132 §4.4.1.3, Figure 11
    info = entry(resp)["conflict-information"]
    assert info == {"conflict-cause": "cuid-collision"}
    resp = await env.ask(request(Code.GET, mitigate_path(env.cuid)), lo, other)
    assert resp.code == Code.UNAUTHORIZED


async def test_unauthenticated_peer(pki: PkiPaths) -> None:
    env = make_env(pki)
    anon = CoapNode()
    la = MemLink(make_peer_info(("::1", 2), "udp", True))
    lb = MemLink(make_peer_info(("::1", 1), "udp", False))
    la.peer, lb.peer = lb, la
    la.handler, lb.handler = anon, env.server.node
    anon.link_up(la)
    env.server.node.link_up(lb)
    resp = await env.ask(request(Code.PUT, mitigate_path(env.cuid, 1), FIG7), la, anon)
    assert resp.code == Code.UNAUTHORIZED


async def test_request_errors(pki: PkiPaths) -> None:
    env = make_env(pki)
    bad = await env.put(1, payload=b"\xff\x00garbage")
    assert bad.code == Code.BAD_REQUEST
    assert bad.content_format == ContentFormat.TEXT_PLAIN and b"CBOR" in bad.payload
    wrong = await env.put(1, content_format=ContentFormat.CBOR)
    assert wrong.code == Code.UNSUPPORTED_CONTENT_FORMAT and wrong.payload
    none = await env.put(1, content_format=None)
    assert none.code == Code.UNSUPPORTED_CONTENT_FORMAT
    outside = {MITIGATION_MEMBER: {"scope": [{"target-prefix": ["8.8.8.0/24"], "lifetime": 60}]}}
    rejected = await env.put(2, outside)
    assert rejected.code == Code.BAD_REQUEST and b"outside" in rejected.payload
    no_mid = await env.ask(request(Code.PUT, mitigate_path(env.cuid), FIG7))
    assert no_mid.code == Code.BAD_REQUEST
    # Observe on an invalid path: an error response, no registration, the node keeps going.
    obs = env.client.observe(env.link, request(Code.GET, (*mitigate_path(env.cuid), "x=1")),
                             timeout=TIMEOUT)
    assert (await obs.next(TIMEOUT)).code == Code.BAD_REQUEST
    assert env.server.node.endpoint.observer_count() == 0
    accept = request(Code.GET, mitigate_path(env.cuid))
    accept.add(OptionNumber.ACCEPT, ContentFormat.JSON)
    assert (await env.ask(accept)).code == Code.NOT_ACCEPTABLE
    assert len(env.server.table) == 0


async def test_restart_keeps_lifetime_counting(pki: PkiPaths, tmp_path: Path) -> None:
    env = make_env(pki, tmp_path)
    assert (await env.put(123)).code == Code.CREATED
    assert env.server.store is not None
    env.server.store.close()
    await env.client.close()

    clock = Clock(T0 + 1000)  # the server was down for 1000 s
    changes: list[Change] = []
    server = SignalServer(store=SqliteStore.open(tmp_path / "state"), clock=clock,
                          on_change=changes.append)
    env2 = Env(pki, server, clock)
    resp = await env2.get(123)
    assert resp.code == Code.CONTENT
    assert entry(resp)["lifetime"] == 2600
    assert entry(resp)["status"] == "attack-mitigation-in-progress"
    assert server.table.get_timer() == T0 + 3600
    gone = server.handle_timer(wall=T0 + 3600)
    assert [c.removed for c in gone] == [True] and changes == gone
    assert (await env2.get(123)).code == Code.NOT_FOUND
    assert server.store is not None and server.store.get_mitigation(env2.cuid, 123) is None
    server.store.close()


async def test_expiry_task(pki: PkiPaths) -> None:
    env = make_env(pki)
    env.server.clock = time.time
    body = {MITIGATION_MEMBER: {"scope": [{"target-prefix": ["192.0.2.1/32"], "lifetime": 1}]}}
    assert (await env.put(7, body)).code == Code.CREATED
    obs = env.observe(7)
    await obs.next(TIMEOUT)
    env.server.start()
    try:
        note = await obs.next(TIMEOUT)
        assert entry(note)["status"] == "attack-mitigation-terminated"
        assert len(env.server.table) == 0
    finally:
        await env.server.close()


# ---------------------------------------------------------------------------------------------
# configuration and heartbeat


async def test_session_config(pki: PkiPaths, tmp_path: Path) -> None:
    env = make_env(pki, tmp_path)
    resp = await env.ask(request(Code.GET, config_path()))
    assert resp.code == Code.CONTENT
    discovery = from_cbor(resp.payload)["ietf-dots-signal-channel:signal-config"]
    assert discovery["idle-config"]["heartbeat-interval"]["current-value"] == 30

    body = {"ietf-dots-signal-channel:signal-config": {
        "mitigating-config": {"max-retransmit": {"current-value": 4},
                              "ack-timeout": {"current-value-decimal": "3.00"}},
        "idle-config": {"heartbeat-interval": {"current-value": 60},
                        "max-retransmit": {"current-value": 5},
                        "ack-timeout": {"current-value-decimal": "4.00"}}}}
    resp = await env.ask(request(Code.PUT, config_path(1), body))
    assert resp.code == Code.CREATED, resp.payload
    params = env.server.node.endpoint.peer_state(env.server_link)
    assert params is not None
    assert params.params.max_retransmit == 5 and params.params.ack_timeout == 4.0  # idle
    assert next(iter(env.server.sessions.values())).monitor.interval == 60
    # A mitigation switches to 'mitigating-config' (RFC 9132 §4.5).
    assert (await env.put(1)).code == Code.CREATED
    assert params.params.max_retransmit == 4 and params.params.ack_timeout == 3.0
    got = await env.ask(request(Code.GET, config_path(1)))
    assert got.code == Code.CONTENT
    assert (await env.ask(request(Code.GET, config_path(2)))).code == Code.NOT_FOUND
    refused = {"ietf-dots-signal-channel:signal-config": {
        "idle-config": {"heartbeat-interval": {"current-value": 5000}}}}
    assert (await env.ask(request(Code.PUT, config_path(2), refused))).code == \
        Code.UNPROCESSABLE_ENTITY
    assert env.server.store is not None
    stored = env.server.store.get_session_config(env.cuid)
    assert stored is not None and stored.sid == 1

    # Restart: the stored configuration applies to the client's new session.
    env.server.store.close()
    clock = Clock(T0 + 10)
    server = SignalServer(store=SqliteStore.open(tmp_path / "state"), clock=clock,
                          monotonic=clock)
    env2 = Env(pki, server, clock)
    assert (await env2.get(1)).code == Code.CONTENT
    state = server.node.endpoint.peer_state(env2.server_link)
    assert state is not None and state.params.max_retransmit == 4
    resp = await env2.ask(request(Code.DELETE, config_path()))
    assert resp.code == Code.DELETED
    assert state.params.max_retransmit == 3 and state.params.ack_timeout == 2.0
    assert server.store is not None and server.store.get_session_config(env2.cuid) is None
    server.store.close()


async def test_heartbeat_and_signal_loss(pki: PkiPaths, tmp_path: Path) -> None:
    changes: list[Change] = []
    env = make_env(pki, tmp_path, changes)
    hb = request(Code.PUT, HEARTBEAT_PATH, build_heartbeat_body(True))
    resp = await env.ask(hb)
    assert resp.code == Code.CHANGED and resp.payload == b""
    bad = request(Code.PUT, (*HEARTBEAT_PATH, "cuid=x"), build_heartbeat_body(True))
    assert (await env.ask(bad)).code == Code.BAD_REQUEST

    # A preconfigured mitigation waits for a signal loss (status 8).
    pre = {MITIGATION_MEMBER: {"scope": [{"target-prefix": ["192.0.2.0/24"], "lifetime": 86400,
                               "trigger-mitigation": False}]}}
    assert (await env.put(10, pre)).code == Code.CREATED
    assert (await env.get(10)).code == Code.CONTENT
    assert entry(await env.get(10))["status"] == "attack-mitigation-signal-loss"
    # The server probes the client with its own heartbeats every 30 s (RFC 9132 §4.7). This
    # client is a CoAP node serving no /hb: it answers 4.04, which proves it alive all the
    # same ("any response"): however long it is otherwise silent, nothing is lost.
    (session,) = env.server.sessions.values()
    assert await run_timers(env.server, env.clock, T0 + 2000) == []
    assert session.heartbeats_sent == session.heartbeats_answered == 2000 // 30 + 1
    assert env.server.sessions
    # The client vanishes (nothing reaches it any more; its last answer: the heartbeat of
    # T0 + 1980). 15 heartbeats unanswered and 30 s x 15 without any traffic: the session is
    # lost (§4.7) and the preconfigured request is triggered (§4.4.1.3).
    env.server_link.drop_next = 10**9
    assert await run_timers(env.server, env.clock, T0 + 1980 + 30 * 15 - 1) == []
    lost = await run_timers(env.server, env.clock, T0 + 1980 + 30 * 16)
    assert [c.mitigation.status.label for c in lost] == ["attack-mitigation-in-progress"]
    assert session.heartbeats_sent == 2000 // 30 + 1 + 15
    assert not env.server.sessions
    assert env.server.store is not None
    stored = env.server.store.get_mitigation(env.cuid, 10)
    assert stored is not None and stored.status == 1
    assert changes[-1].mitigation.is_active

    # The attack stops: status 3 is sent four times, then the request is re-armed (8)
    # (RFC 9132 §4.4.2 Table 3), ready for the next signal loss.
    env.server_link.drop_next = 0
    obs = env.observe(10)
    assert entry(await obs.next(TIMEOUT))["status"] == "attack-mitigation-in-progress"
    env.server.report(env.cuid, 10, MitigationEvent.ATTACK_STOPPED)
    seen = [entry(await obs.next(TIMEOUT))["status"] for _ in range(5)]
    assert seen == ["attack-stopped"] * 4 + ["attack-mitigation-signal-loss"]
    stored = env.server.store.get_mitigation(env.cuid, 10)
    assert stored is not None and stored.status == 8
    obs.cancel()


class ResettingPeer:
    """A client whose CoAP stack serves nothing and answers every request with RST (RFC 7252
    §4.3: a Non-confirmable message it cannot process)."""

    def __init__(self) -> None:
        self.resets = 0

    def link_up(self, link: Any) -> None:
        pass

    def link_down(self, link: Any, reason: str | None) -> None:
        pass

    def data_received(self, link: Any, data: bytes) -> None:
        msg = coap_codec.decode(data)
        if 0 < msg.code < 32:  # a request
            self.resets += 1
            link.send(coap_codec.encode(Message(mtype=MessageType.RST, mid=msg.mid)))


async def test_a_client_answering_heartbeats_with_rst_is_alive(pki: PkiPaths) -> None:
    """RFC 9132 §4.7 counts heartbeats without any response; an RST to the server's heartbeat
    (a client that does not serve /hb) is a message of the client over its session: it is
    alive, and keeps its session however long it is otherwise silent."""
    env = make_env(pki)
    peer = ResettingPeer()
    la, _ = cert_links(peer, env.server.node, pki.client_cert)
    first = request(Code.GET, config_path())
    first.mtype, first.mid, first.token = MessageType.NON, 0x1234, b"\x01"
    la.send(coap_codec.encode(first))  # its one request opens the session
    await settle()
    (session,) = env.server.sessions.values()
    assert await run_timers(env.server, env.clock, T0 + 2000) == []
    assert peer.resets == session.heartbeats_sent == session.heartbeats_answered == 66
    assert env.server.sessions and session.state.value == "established"


async def test_heartbeat_loss_follows_the_monotonic_clock(pki: PkiPaths,
                                                          tmp_path: Path) -> None:
    """RFC 9132 §4.7 counts missing heartbeats over time spans: a step of the wall clock (NTP)
    must not lose a session, and a wall clock held back must not keep a silent one."""
    wall, mono = Clock(T0), Clock(500.0)
    server = SignalServer(store=SqliteStore.open(tmp_path / "state"), clock=wall,
                          monotonic=mono)
    env = Env(pki, server, wall)
    pre = {MITIGATION_MEMBER: {"scope": [{"target-prefix": ["192.0.2.0/24"], "lifetime": 86400,
                               "trigger-mitigation": False}]}}
    assert (await env.put(10, pre)).code == Code.CREATED
    assert len(server.sessions) == 1
    env.server_link.drop_next = 10**9  # the client hears nothing more, says nothing more
    wall.now += 3600  # the wall clock jumps an hour ahead
    assert server.handle_timer() == [] and len(server.sessions) == 1
    wall.now -= 3600 * 2  # and back, behind the start
    # The client is silent while its heartbeats run out: 15 sent (t=530..950), each given
    # 30 s, and 15 x 30 s of silence: lost at t=980 (the defaults, RFC 9132 §4.5).
    assert await run_timers(server, mono, 979.0) == []
    lost = await run_timers(server, mono, 980.0)
    assert [c.mitigation.status.label for c in lost] == ["attack-mitigation-in-progress"]
    assert not server.sessions
    await env.client.close()
    assert server.store is not None
    server.store.close()


async def test_client_not_back_after_restart_loses_its_session(pki: PkiPaths,
                                                                tmp_path: Path) -> None:
    """A restarted server knows no session: a client with a preconfigured mitigation that
    does not come back within missing-hb-allowed x heartbeat-interval has lost its session
    (RFC 9132 §4.7), its preconfigured mitigation is triggered (§4.4.1.3); one that comes
    back in time keeps it waiting."""
    pre = {MITIGATION_MEMBER: {"scope": [{"target-prefix": ["192.0.2.0/24"], "lifetime": 86400,
                               "trigger-mitigation": False}]}}
    for returns in (False, True):
        state = tmp_path / f"returns-{returns}"
        env = make_env(pki, state)
        assert (await env.put(10, pre)).code == Code.CREATED
        assert env.server.store is not None
        env.server.store.close()
        await env.client.close()

        clock = Clock(T0 + 50)
        server = SignalServer(store=SqliteStore.open(state / "state"), clock=clock,
                              monotonic=clock)
        deadline = T0 + 50 + 30 * 15  # RFC 9132 §4.5.2 defaults: 30 s x 15
        assert server.get_timer() == deadline
        if returns:
            env2 = Env(pki, server, clock)
            clock.now = T0 + 300  # back before the deadline
            hb = request(Code.PUT, HEARTBEAT_PATH, build_heartbeat_body(True))
            assert (await env2.ask(hb)).code == Code.CHANGED
            clock.now = deadline
            # Its own session counts from T0 + 300.
            assert server.handle_timer(deadline, wall=deadline) == []
            await env2.client.close()
        else:
            assert server.handle_timer(deadline - 1, wall=deadline - 1) == []
            lost = server.handle_timer(deadline, wall=deadline)
            assert [c.mitigation.status.label for c in lost] == ["attack-mitigation-in-progress"]
        assert server.store is not None
        stored = server.store.get_mitigation(cuid_of(pki.client_cert), 10)
        assert stored is not None and stored.status == (8 if returns else 1)
        server.store.close()


# ---------------------------------------------------------------------------------------------
# real DTLS


@pytest.mark.network
async def test_over_dtls(pki: PkiPaths, tmp_path: Path) -> None:
    from dotsd.dtls.context import DtlsConfig, client_context, server_context
    from dotsd.transport.dtls import dtls_connect, serve_dtls

    server = SignalServer(store=SqliteStore.open(tmp_path / "state"))
    listener = await serve_dtls(server.node, "::1", 0,
                                server_context(DtlsConfig.from_pki(pki)))
    client = CoapNode()
    try:
        link = await dtls_connect(client, ("::1", listener.port),
                                  client_context(DtlsConfig.from_pki(pki, client=True)),
                                  timeout=10.0)
        cuid = cuid_of(pki.client_cert)
        resp = await client.request(link, request(Code.PUT, mitigate_path(cuid, 123), FIG7),
                                    timeout=10)
        assert resp.code == Code.CREATED, resp.payload
        obs = client.observe(link, request(Code.GET, mitigate_path(cuid, 123)), timeout=10)
        assert entry(await obs.next(10))["status"] == "attack-mitigation-in-progress"
        server.report(cuid, 123, MitigationEvent.EXCEEDED)
        assert entry(await obs.next(10))["status"] == "attack-exceeded-capability"
        obs.cancel()
        wrong = await client.request(link, request(Code.GET, mitigate_path("x" * 22)),
                                     timeout=10)
        assert wrong.code == Code.UNAUTHORIZED
        assert server.store is not None and server.store.get_mitigation(cuid, 123) is not None
    finally:
        await client.close()
        await server.node.close()
        listener.close()
        await listener.wait_closed()
        await asyncio.sleep(0)
        if server.store is not None:
            server.store.close()


async def test_conflict_body_and_store_failure(pki: PkiPaths, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_hook(change: Change) -> None:
        raise RuntimeError("mitigator bug")

    env = make_env(pki, tmp_path)
    env.server.add_listener(broken_hook)  # a failing mitigator must not fail the request
    assert (await env.put(123)).code == Code.CREATED
    # A lower 'mid' overlapping a higher one: 4.09, conflict-information as dots+cbor
    # (RFC 9132 §4.4.1.3).
    resp = await env.put(100)
    assert resp.code == Code.CONFLICT
    info = entry(resp)["conflict-information"]
    assert info["conflict-cause"] == "overlapping-targets"
    assert info["conflict-scope"]["mid"] == 123

    # The store refuses the write: 5.00, and nothing of the request remains in memory.
    from dotsd.store import StoreError

    assert env.server.store is not None

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise StoreError("disk full")

    monkeypatch.setattr(env.server.store, "put_mitigation", refuse)
    body = {MITIGATION_MEMBER: {"scope": [{"target-prefix": ["192.0.2.0/24"], "lifetime": 60}]}}
    resp = await env.put(200, body)
    assert resp.code == Code.INTERNAL_SERVER_ERROR
    assert env.server.table.lookup(env.cuid, 200) is None
    assert env.server.table.lookup(env.cuid, 123) is not None
    monkeypatch.undo()
    assert (await env.get(200)).code == Code.NOT_FOUND


# ---------------------------------------------------------------------------------------------
# one domain per client (RFC 9132 §10)


async def test_each_client_in_its_own_domain(pki: PkiPaths) -> None:
    """Listed clients get their own prefixes and limits, the others the default; with no
    default an unlisted client is refused 4.01, and a reload changes it for what comes."""
    other_cert = pki.directory / "other.pem"  # CN=other
    own = Policy(allowed_prefixes=(ipaddress.ip_network("198.51.100.0/24"),),
                 allowed_domains=(), max_lifetime=600, name="other")
    default = Policy(allowed_prefixes=(ipaddress.ip_network("203.0.113.0/24"),),
                     allowed_domains=())
    policies = PolicySet(default,
                         (ClientPolicy("other", ClientMatch("common-name", "other"), own),))
    env = make_env(pki, policy=policies)
    other = CoapNode()
    lo, _ = cert_links(other, env.server.node, other_cert)
    other_cuid = cuid_of(other_cert)

    def body(prefix: str, lifetime: int = 3600) -> dict[str, Any]:
        return {MITIGATION_MEMBER: {"scope": [{"target-prefix": [prefix], "lifetime": lifetime}]}}

    async def put_other(mid: int, prefix: str) -> Message:
        return await env.ask(request(Code.PUT, mitigate_path(other_cuid, mid), body(prefix)),
                             lo, other)

    # The listed client: its own prefix, its own max-lifetime; not the default domain.
    resp = await put_other(1, "198.51.100.7/32")
    assert resp.code == Code.CREATED and entry(resp)["lifetime"] == 600
    resp = await put_other(2, "203.0.113.7/32")
    assert resp.code == Code.BAD_REQUEST and b"outside" in resp.payload
    # The unlisted client: the default domain only.
    assert (await env.put(1, body("203.0.113.9/32"))).code == Code.CREATED
    resp = await env.put(2, body("198.51.100.9/32"))
    assert resp.code == Code.BAD_REQUEST
    # No default: the unlisted client is refused everything, the listed one is served.
    env.server.set_policy(PolicySet(None, policies.clients))
    for msg in (request(Code.GET, mitigate_path(env.cuid)),
                request(Code.PUT, mitigate_path(env.cuid, 3), body("203.0.113.9/32")),
                request(Code.GET, config_path())):
        resp = await env.ask(msg)
        assert resp.code == Code.UNAUTHORIZED and b"policy" in resp.payload, msg
    assert (await put_other(3, "198.51.100.8/32")).code == Code.CREATED
    # What was accepted before stays (RFC 9132 §4.4.1: nothing acknowledged is lost).
    assert env.server.table.lookup(env.cuid, 1) is not None


async def test_many_sessions_each_lost_on_its_own_time(pki: PkiPaths) -> None:
    """The heartbeat timers of many sessions (a heap, not a scan): a client that keeps
    sending heartbeats keeps its session, the silent ones are probed and lose theirs when
    their own allowance runs out, and a heartbeat loop does not grow the timer heap."""
    env = make_env(pki)
    server = env.server
    hb = build_heartbeat_body(True)
    nodes: list[tuple[CoapNode, MemLink, MemLink]] = []
    for n in range(20):
        node = CoapNode()
        peer = make_peer_info(("::1", 100 + n), "dtls", False, psk_identity=b"cpe-%d" % n)
        la = MemLink(make_peer_info(("::1", 1), "dtls", True))
        lb = MemLink(peer)
        la.peer, lb.peer = lb, la
        la.handler, lb.handler = node, server.node
        node.link_up(la)
        server.node.link_up(lb)
        nodes.append((node, la, lb))

    async def heartbeat(n: int) -> None:
        node, link, _ = nodes[n]
        resp = await node.request(link, request(Code.PUT, HEARTBEAT_PATH, hb), timeout=TIMEOUT)
        assert resp.code == Code.CHANGED

    for n in range(20):  # client n is first heard at T0 + n, then hears nothing more
        env.clock.now = T0 + n
        await heartbeat(n)
        if n:
            nodes[n][2].drop_next = 10**9
        await run_timers(server, env.clock, T0 + n)
    assert len(server.sessions) == 20
    limit = 30 * 15  # default heartbeat-interval x missing-hb-allowed (RFC 9132 §4.5)
    for k in range(300):  # client 0 keeps talking
        env.clock.now = T0 + 20 + k * 0.5
        await heartbeat(0)
        await run_timers(server, env.clock, env.clock.now)
    assert len(server.core._timers) <= 2 * len(server.sessions) + 64
    # Clients 1..9 are past their allowance, 10..19 not yet.
    await run_timers(server, env.clock, T0 + limit + 9.5)
    alive = {s.client.identity for s in server.sessions.values()}
    assert alive == {"psk:" + (b"cpe-%d" % n).hex() for n in [0, *range(10, 20)]}
    await run_timers(server, env.clock, T0 + limit + 25)
    assert [s.client.identity for s in server.sessions.values()] == [
        "psk:" + b"cpe-0".hex()]
    deadline = server.get_timer()
    assert deadline is not None and deadline > T0 + limit + 25
    for node, _, _ in nodes:
        await node.close()


async def test_a_client_over_its_request_rate_gets_503(pki: PkiPaths) -> None:
    """RFC 9132 §4.4.1.3: a client asking faster than its policy allows is answered 5.03 with
    the seconds to wait as Max-Age; the others, and the same client later, are served."""
    env = make_env(pki, policy=Policy(max_requests_per_second=1.0))  # bursts of 2
    assert (await env.get()).code == Code.NOT_FOUND
    assert (await env.put(1)).code == Code.CREATED
    refused = await env.put(2)
    assert refused.code == Code.SERVICE_UNAVAILABLE and refused.max_age == 1
    assert b"too many requests" in refused.payload
    assert env.server.table.lookup(env.cuid, 2) is None  # nothing done
    other = CoapNode()
    lo, _ = cert_links(other, env.server.node, pki.directory / "other.pem")
    own = mitigate_path(cuid_of(pki.directory / "other.pem"))
    assert (await env.ask(request(Code.GET, own), lo, other)).code == Code.NOT_FOUND
    env.clock.now += 1.0
    assert (await env.put(2)).code == Code.CREATED


async def test_configuration_has_a_max_age_and_can_be_observed(pki: PkiPaths) -> None:
    """RFC 9132 §4.5.3: configuration responses carry a Max-Age (else every client refreshes
    each 60 s), and "if an Observe Option set to 0 is included in the configuration request,
    the DOTS server sends notifications of any configuration change"."""
    env = make_env(pki)
    obs = env.client.observe(env.link, request(Code.GET, config_path()), timeout=TIMEOUT)
    first = await obs.next(TIMEOUT)
    assert first.code == Code.CONTENT and first.max_age == 3600
    assert first.observe is not None  # registered
    body = {"ietf-dots-signal-channel:signal-config": {
        "idle-config": {"heartbeat-interval": {"current-value": 90}}}}
    assert (await env.ask(request(Code.PUT, config_path(1), body))).code == Code.CREATED
    note = await obs.next(TIMEOUT)
    idle = from_cbor(note.payload)["ietf-dots-signal-channel:signal-config"]["idle-config"]
    assert idle["heartbeat-interval"]["current-value"] == 90
    assert (await env.ask(request(Code.DELETE, config_path(1)))).code == Code.DELETED
    back = await obs.next(TIMEOUT)
    idle = from_cbor(back.payload)["ietf-dots-signal-channel:signal-config"]["idle-config"]
    assert idle["heartbeat-interval"]["current-value"] == 30  # the defaults again (§4.5.4)
    obs.cancel()
