"""The DOTS signal channel client (dotsd.agents.client) against a real SignalServer: in memory
(certificate identities on in-memory links) and once over real DTLS on ::1."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import cbor2
import pytest
from support.memlinks import MemLink
from support.signalnet import STEP, signal_listeners
from support.waiting import wait_until

from dotsd.agents.client import ClientError, Reply, SignalClient
from dotsd.agents.server import SignalServer
from dotsd.coap.message import Message
from dotsd.coap.numbers import Code, ContentFormat, OptionNumber
from dotsd.link import cuid_from_spki_sha256, make_peer_info, spki_sha256
from dotsd.model.codec import to_cbor
from dotsd.node import CoapNode
from dotsd.pki import PkiPaths, load_certificate
from dotsd.signal.client_session import ClientSession, RefreshConfig
from dotsd.signal.config import Attribute, ConfigBounds, ConfigPolicy, ConfigSet
from dotsd.signal.heartbeat import HEARTBEAT_PATH, SendHeartbeat, build_heartbeat_body
from dotsd.signal.lifecycle import MitigationEvent
from dotsd.signal.pacing import RttEstimator
from dotsd.signal.session import SessionState, StateChanged

TIMEOUT = 5.0

SCOPE: dict[str, Any] = {  # RFC 9132 Figure 7
    "target-prefix": ["2001:db8:6401::1/128", "2001:db8:6401::2/128"],
    "target-port-range": [{"lower-port": 80}, {"lower-port": 443}, {"lower-port": 8080}],
    "target-protocol": [6],
    "lifetime": 3600,
}


class LossyLink(MemLink):
    """A MemLink that can drop every other datagram, or all of them (a dead peer)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.every_other = False
        self.blackhole = False
        self.sent = 0
        self.dropped = 0

    def send(self, data: bytes) -> None:
        self.sent += 1
        if self.blackhole or (self.every_other and self.sent % 2 == 1):
            self.dropped += 1
            return
        super().send(data)


def cert_links(client: SignalClient, server: SignalServer, cert_path: Path
               ) -> tuple[LossyLink, LossyLink]:
    """Links where the server sees the client's certificate (as DTLS gives it)."""
    cert = load_certificate(cert_path)
    la = LossyLink(make_peer_info(("::1", 2), "dtls", True))
    lb = LossyLink(make_peer_info(("::1", 1), "dtls", False, certificate=cert))
    la.peer, lb.peer = lb, la
    la.handler, lb.handler = client.node, server.node
    client.node.link_up(la)
    server.node.link_up(lb)
    return la, lb


class Env:
    def __init__(self, pki: PkiPaths, **kw: Any) -> None:
        self.server = SignalServer()
        self.client = SignalClient.for_certificate(load_certificate(pki.client_cert),
                                                   timeout=TIMEOUT, **kw)
        self.pki = pki
        self.links: list[tuple[LossyLink, LossyLink]] = []

    def dial(self) -> LossyLink:
        pair = cert_links(self.client, self.server, self.pki.client_cert)
        self.links.append(pair)
        return pair[0]

    async def connect(self) -> LossyLink:
        return self.dial()

    @property
    def link(self) -> LossyLink:
        return self.links[-1][0]

    @property
    def server_link(self) -> LossyLink:
        return self.links[-1][1]


@contextlib.asynccontextmanager
async def running(pki: PkiPaths, **kw: Any) -> AsyncIterator[Env]:
    env = Env(pki, **kw)
    await env.client.start(env.dial())
    try:
        yield env
    finally:
        await env.client.close()
        await env.server.node.close()


async def next_note(notes: AsyncIterator[Reply]) -> Reply:
    return await asyncio.wait_for(anext(notes), TIMEOUT)


# ---------------------------------------------------------------------------------------------


def test_cuid_and_mids(pki: PkiPaths) -> None:
    cert = load_certificate(pki.client_cert)
    client = SignalClient.for_certificate(cert)
    assert client.cuid == cuid_from_spki_sha256(spki_sha256(cert))
    assert len(client.cuid) == 22  # RFC 9132 §4.4.1.1
    mids = ClientSession(0.0, last_mid=99)
    assert [mids.allocate_mid(), mids.allocate_mid()] == [100, 101]
    mids.mid_used(500)
    assert mids.allocate_mid() == 501
    mids.mid_used(7)  # an older mid does not move the allocator back
    assert mids.allocate_mid() == 502
    err = ClientError(Code.BAD_REQUEST, "nope")
    assert err.code_text == "4.00 BAD_REQUEST" and "nope" in str(err)
    assert ClientError(None, "timeout").code_text == "no response"


async def test_mitigate_status_watch_efficacy_withdraw(pki: PkiPaths) -> None:
    async with running(pki, first_mid=123) as env:
        c = env.client
        reply = await c.mitigate(SCOPE)
        assert reply.code == Code.CREATED and reply.mid == 123
        assert reply.lifetime == 3600  # granted (RFC 9132 Figure 10)
        assert c.mitigating and c.active_mids == {123}

        st = await c.status(123)
        assert st.code == Code.CONTENT and st.status == "attack-mitigation-in-progress"
        assert st.scopes[0]["target-protocol"] == [6]
        assert (await c.status()).scopes[0]["mid"] == 123

        async with contextlib.aclosing(c.watch(123)) as notes:
            first = await next_note(notes)
            assert first.status == "attack-mitigation-in-progress"
            env.server.report(c.cuid, 123, MitigationEvent.MITIGATING)
            assert (await next_note(notes)).status == "attack-successfully-mitigated"

            eff = await c.efficacy(123, "under-attack")  # RFC 9132 §4.4.3
            assert eff.code == Code.CHANGED and eff.lifetime is not None

            gone = await c.withdraw(123)
            assert gone.code == Code.DELETED
            assert not c.mitigating
            # RFC 9132 §4.4.4: status 5, active but terminating.
            assert (await next_note(notes)).status == "dots-client-withdrawn-mitigation"
        await asyncio.sleep(0)
        assert env.server.node.endpoint.observer_count() == 0  # deregistered

        # Efficacy update of a request the server no longer has: "silently ignored"
        # (RFC 9132 §4.4.3), so no answer comes.
        env.server.handle_timer(wall=env.server.clock() + 121)
        c.timeout = 1.0
        with pytest.raises(ClientError) as info:
            await c.efficacy(123, "under-attack", scope=SCOPE)
        assert info.value.code is None
        c.timeout = TIMEOUT
        with pytest.raises(ClientError) as info:
            await c.status(123)
        assert info.value.code == Code.NOT_FOUND

        # The next mid allocated is above the previous one (RFC 9132 §4.4.1.1).
        again = await c.mitigate({"target-prefix": ["192.0.2.0/24"], "lifetime": 60})
        assert again.mid == 124


async def test_errors_carry_code_and_diagnostic(pki: PkiPaths) -> None:
    async with running(pki) as env:
        with pytest.raises(ClientError) as info:
            await env.client.mitigate({"target-prefix": ["8.8.8.0/24"], "lifetime": 60})
        assert info.value.code == Code.BAD_REQUEST
        assert isinstance(info.value.diagnostic, str) and "outside" in info.value.diagnostic
        assert not env.client.mitigating

        # 4.09 with a dots+cbor body (RFC 9132 §4.4.1.3): the diagnostic is the decoded body.
        assert (await env.client.mitigate(SCOPE, mid=50)).code == Code.CREATED
        with pytest.raises(ClientError) as info:
            await env.client.mitigate(SCOPE, mid=10)
        assert info.value.code == Code.CONFLICT
        assert isinstance(info.value.diagnostic, dict)
        assert "conflict-information" in str(info.value.diagnostic)

        # No response at all: code None.
        env.link.blackhole = True
        env.client.timeout = 0.3
        with pytest.raises(ClientError) as info:
            await env.client.status()
        assert info.value.code is None


async def test_mitigation_under_loss(pki: PkiPaths) -> None:
    estimator = RttEstimator(min_rto=0.05)  # a fast RTO for the test (RFC 6298 §2.4)
    estimator.sample(0.02)
    async with running(pki, estimator=estimator) as env:
        env.link.every_other = True
        env.server_link.every_other = True
        reply = await env.client.mitigate(SCOPE)
        # The first copy was lost; a repetition created it (2.01) or, its answer lost too,
        # refreshed it (2.04) — either way it is installed (RFC 9132 §4.4: NON repeated
        # "until a response is received").
        assert reply.code in (Code.CREATED, Code.CHANGED)
        assert reply.lifetime == 3600
        assert env.link.dropped >= 1
        assert env.server.table.lookup(env.client.cuid, reply.mid or 0) is not None


async def test_session_config(pki: PkiPaths) -> None:
    async with running(pki) as env:
        c = env.client
        config = await c.session_config_get()
        assert config.idle[Attribute.HEARTBEAT_INTERVAL].current == 30
        # Values outside the advertised range are clamped (heartbeat max 240).
        reply = await c.session_config_set(
            mitigating={Attribute.MAX_RETRANSMIT: 4, Attribute.ACK_TIMEOUT: Decimal("3.00")},
            idle={Attribute.HEARTBEAT_INTERVAL: 5000, Attribute.MAX_RETRANSMIT: 5})
        assert reply.code == Code.CREATED and c.sid == 1
        state = c.node.endpoint.peer_state(env.link)
        assert state is not None and state.params.max_retransmit == 5  # idle
        assert c.monitor is not None and c.monitor.interval == 240
        server_session = next(iter(env.server.sessions.values()))
        assert server_session.monitor.interval == 240  # both sides agree
        await c.mitigate(SCOPE)
        assert state.params.max_retransmit == 4 and state.params.ack_timeout == 3.0
        # Unclamped, out of range: 4.22 (RFC 9132 §4.5.2).
        with pytest.raises(ClientError) as info:
            await c.session_config_set(idle={Attribute.HEARTBEAT_INTERVAL: 5000}, clamp=False)
        assert info.value.code == Code.UNPROCESSABLE_ENTITY and info.value.diagnostic
        assert (await c.session_config_delete()).code == Code.DELETED
        assert state.params.max_retransmit == 3


async def test_heartbeats_flow_and_dead_server(pki: PkiPaths) -> None:
    lost: list[str] = []
    async with running(pki, heartbeat=(0.05, 3), on_session_lost=lost.append) as env:
        c = env.client
        await wait_until(lambda: c.heartbeats_answered >= 5, TIMEOUT,
                         what="5 heartbeats answered")
        assert not lost
        assert c.estimator.has_estimate  # heartbeats feed the RTT estimate
        assert env.server.sessions  # the server saw the client's heartbeats

        # The server's own heartbeat is answered with 2.04 (RFC 9132 §4.7, Figure 28).
        hb = Message(code=Code.PUT).set_path("/".join(HEARTBEAT_PATH))
        hb.payload = to_cbor(build_heartbeat_body(True))
        hb.add(OptionNumber.CONTENT_FORMAT, ContentFormat.DOTS_CBOR)
        resp = await env.server.node.request(env.server_link, hb, confirmable=False,
                                             timeout=TIMEOUT)
        assert resp.code == Code.CHANGED and resp.payload == b""
        assert c.monitor is not None and c.monitor.peer_reports_receiving is True

        # The server goes silent: lost after 'missing-hb-allowed' missing heartbeats.
        env.server_link.blackhole = True
        await asyncio.wait_for(c.session_lost.wait(), TIMEOUT)
        assert lost and "heartbeat" in lost[0]
        assert not c.connected.is_set()


def server_heartbeat(body: Any = None, *, path: tuple[str, ...] = HEARTBEAT_PATH,
                     payload: bytes | None = None,
                     content_format: int | None = ContentFormat.DOTS_CBOR) -> Message:
    """A heartbeat PUT as a server sends it (RFC 9132 Figure 27), or a broken one."""
    msg = Message(code=Code.PUT).set_path("/".join(path))
    msg.payload = payload if payload is not None else to_cbor(
        build_heartbeat_body(True) if body is None else body)
    if content_format is not None:
        msg.add(OptionNumber.CONTENT_FORMAT, content_format)
    return msg


async def test_the_client_answers_the_server_heartbeats(pki: PkiPaths) -> None:
    """RFC 9132 §4.7: the server's heartbeat is answered 2.04 without payload (Figure 28) and
    its 'peer-hb-status' noted; a malformed one is 4.00 with a diagnostic payload (§9), one
    not in application/dots+cbor 4.15; neither counts as a heartbeat received."""
    async with running(pki, heartbeat=(0.0, 3)) as env:
        c = env.client

        async def send(msg: Message) -> Message:
            return await env.server.node.request(env.server_link, msg, confirmable=False,
                                                 timeout=TIMEOUT)

        resp = await send(server_heartbeat(build_heartbeat_body(False)))
        assert resp.code == Code.CHANGED and resp.payload == b""
        assert c.peer_heartbeats == 1 and c.monitor is not None
        assert c.monitor.peer_reports_receiving is False
        malformed = [
            server_heartbeat({"ietf-dots-signal-channel:heartbeat": {}}),  # mandatory missing
            server_heartbeat(payload=cbor2.dumps({49: {51: 1}})),  # not a boolean (Table 5)
            server_heartbeat(payload=b"\xff\x00"),  # not CBOR
            server_heartbeat(payload=b""),  # no body
            server_heartbeat(path=(*HEARTBEAT_PATH, "cuid=abc")),  # §4.7: no Uri-Path params
        ]
        for msg in malformed:
            resp = await send(msg)
            assert resp.code == Code.BAD_REQUEST and resp.payload, msg
        resp = await send(server_heartbeat(content_format=ContentFormat.TEXT_PLAIN))
        assert resp.code == Code.UNSUPPORTED_CONTENT_FORMAT
        assert c.peer_heartbeats == 1 and c.monitor.peer_reports_receiving is False
        resp = await send(server_heartbeat())
        assert resp.code == Code.CHANGED and c.monitor.peer_reports_receiving is True


async def clients_on_one_node(pki: PkiPaths, n: int) -> tuple[
        SignalServer, CoapNode, list[SignalClient], list[tuple[LossyLink, LossyLink]]]:
    """``n`` clients sharing one CoapNode, each started on a link of its own to one server."""
    server = SignalServer()
    node = CoapNode()
    cert = load_certificate(pki.client_cert)
    clients = [SignalClient.for_certificate(cert, node=node, timeout=TIMEOUT,
                                            heartbeat=(0.0, 3)) for _ in range(n)]
    pairs = []
    for client in clients:
        pair = cert_links(client, server, pki.client_cert)
        await client.start(pair[0])
        pairs.append(pair)
    return server, node, clients, pairs


async def test_each_client_on_a_node_gets_the_heartbeats_of_its_link(pki: PkiPaths) -> None:
    """The node's one /hb resource hands each server heartbeat to the client whose link it
    came on (it was the last client added only)."""
    server, node, clients, pairs = await clients_on_one_node(pki, 2)
    try:
        server_links = [lb for _, lb in pairs]
        resp = await server.node.request(server_links[0], server_heartbeat(), timeout=TIMEOUT)
        assert resp.code == Code.CHANGED
        assert [c.peer_heartbeats for c in clients] == [1, 0]
        await clients[0].close()
        resp = await server.node.request(server_links[1], server_heartbeat(), timeout=TIMEOUT)
        assert resp.code == Code.CHANGED and clients[1].peer_heartbeats == 1
    finally:
        for client in clients:
            await client.close()
        await node.close()
        await server.node.close()


async def test_attack_ongoing_keeps_session(pki: PkiPaths) -> None:
    lost: list[str] = []
    states: list[SessionState] = []
    missing_allowed = 3
    async with running(pki, heartbeat=(0.05, missing_allowed),
                       on_session_lost=lost.append) as env:
        c = env.client
        c.add_listener(lambda e: states.append(e.new) if isinstance(e, StateChanged) else None)
        await c.mitigate(SCOPE)
        env.server_link.blackhole = True
        # 'missing-hb-allowed' heartbeats unanswered: the session is degraded, not lost ...
        await wait_until(lambda: SessionState.DEGRADED in states, TIMEOUT, what="degraded")
        # ... and stays so while twice as many more go unanswered (an idle session would be
        # lost after the first 'missing-hb-allowed'). RFC 9132 §4.7: under attack the client
        # MUST NOT consider the session terminated.
        sent = c.heartbeats_sent
        await wait_until(lambda: c.heartbeats_sent >= sent + 2 * missing_allowed, TIMEOUT,
                         what="more heartbeats sent")
        assert not lost and SessionState.LOST not in states
        assert c.monitor is not None and c.monitor.degraded
        env.server_link.blackhole = False
        await wait_until(lambda: states[-1] is SessionState.ESTABLISHED, TIMEOUT,
                         what="the server heard again")
        assert not c.monitor.degraded and not lost


async def test_under_attack_a_new_session_takes_over(pki: PkiPaths) -> None:
    """RFC 9132 §4.7: nothing comes back from the server (the client's inbound link is
    saturated, or the server lost the session's state) while a mitigation is active: the
    session is kept, a new one is opened beside it, and once up the session moves to it; a
    mitigation request waiting for its answer follows onto the new link."""
    lost: list[str] = []
    env = Env(pki, heartbeat=(0.05, 2), on_session_lost=lost.append, reconnect_delay=0.2)
    env.client.connect = env.connect
    c = env.client
    await c.start()
    try:
        assert (await c.mitigate(SCOPE)).code == Code.CREATED
        old_link, old_server_link = env.links[-1]
        old_server_link.blackhole = True
        pending = asyncio.create_task(c.mitigate({**SCOPE, "target-port-range": [
            {"lower-port": 80}]}))
        await wait_until(lambda: c.spares == 1, TIMEOUT, what="a new session")
        assert c.link is env.link and c.link is not old_link and old_link.closed
        reply = await asyncio.wait_for(pending, TIMEOUT)
        # 2.04 when the first copy got through on the old link (its 2.01 was lost).
        assert reply.code in (Code.CREATED, Code.CHANGED) and reply.mid == 2
        assert not lost and c.reconnects == 0
        await wait_until(lambda: c.session.state is SessionState.ESTABLISHED, TIMEOUT,
                         what="the session established on the new link")
    finally:
        await c.close()
        await env.server.node.close()


async def test_reconnect_after_loss(pki: PkiPaths) -> None:
    lost: list[str] = []
    env = Env(pki, heartbeat=(0.05, 2), on_session_lost=lost.append, reconnect_delay=0.05)
    env.client.connect = env.connect
    await env.client.start()
    try:
        first = env.link
        env.server_link.blackhole = True
        await asyncio.wait_for(env.client.session_lost.wait(), TIMEOUT)
        await asyncio.wait_for(env.client.connected.wait(), TIMEOUT)
        assert env.client.reconnects == 1 and env.client.link is not first
        assert first.closed
        assert (await env.client.mitigate(SCOPE)).code == Code.CREATED
        assert len(lost) == 1
    finally:
        await env.client.close()
        await env.server.node.close()


async def test_link_down_is_session_loss(pki: PkiPaths) -> None:
    lost: list[str] = []
    async with running(pki, on_session_lost=lost.append) as env:
        env.server_link.close()
        await asyncio.wait_for(env.client.session_lost.wait(), TIMEOUT)
        assert lost and "link down" in lost[0]
        with pytest.raises(ClientError):
            await env.client.status()


# ---------------------------------------------------------------------------------------------
# real DTLS


@pytest.mark.network
async def test_over_dtls(pki: PkiPaths, tmp_path: Path) -> None:
    from dotsd.dtls.context import DtlsConfig, client_context, server_context
    from dotsd.transport.dtls import dtls_connect, serve_dtls

    server = SignalServer()
    listener = await serve_dtls(server.node, "::1", 0, server_context(DtlsConfig.from_pki(pki)))
    client = SignalClient.for_certificate(load_certificate(pki.client_cert), timeout=10.0)

    async def dial() -> Any:
        return await dtls_connect(client.node, ("::1", listener.port),
                                  client_context(DtlsConfig.from_pki(pki, client=True)),
                                  timeout=10.0)

    client.connect = dial
    try:
        await client.start()
        await client.session_config_get()
        reply = await client.mitigate(SCOPE)
        assert reply.code == Code.CREATED and reply.lifetime == 3600
        async with contextlib.aclosing(client.watch(reply.mid)) as notes:
            assert (await next_note(notes)).status == "attack-mitigation-in-progress"
            await client.withdraw(reply.mid or 0)
            assert (await next_note(notes)).status == "dots-client-withdrawn-mitigation"
        with pytest.raises(ClientError) as info:
            await client.mitigate({"target-prefix": ["8.8.8.0/24"], "lifetime": 60})
        assert info.value.code == Code.BAD_REQUEST and info.value.diagnostic
    finally:
        await client.close()
        await server.node.close()
        listener.close()
        await listener.wait_closed()
        await asyncio.sleep(0)


# An operator's policy with 1 s heartbeats (RFC 9132 §4.5.2 RECOMMENDS 15 s at least; the
# bounds are the operator's), so that heartbeats flow within a test.
FAST_HB = ConfigBounds(minimum=ConfigSet(heartbeat_interval=1, missing_hb_allowed=3,
                                         probing_rate=5, max_retransmit=2,
                                         ack_timeout=Decimal("1.00"),
                                         ack_random_factor=Decimal("1.10")),
                       default=ConfigSet(heartbeat_interval=1, missing_hb_allowed=3))


@pytest.mark.network
@pytest.mark.parametrize("transport", ["dtls", "tls"])
async def test_both_agents_send_heartbeats_and_hear_each_other(pki: PkiPaths,
                                                                transport: str) -> None:
    """RFC 9132 §4.7 over real sockets: the dotsd server and client each send heartbeats every
    'heartbeat-interval' of the session configuration (1 s here), answer the other's with
    2.04, and, past the first 2 x 'heartbeat-interval', both report 'peer-hb-status' true."""
    policy = ConfigPolicy(mitigating=FAST_HB, idle=FAST_HB)
    async with signal_listeners(pki, None, tls=transport == "tls",
                                config_policy=policy) as net:
        client = SignalClient.for_certificate(load_certificate(pki.client_cert), timeout=STEP)
        sent: list[tuple[float, bool]] = []
        loop = asyncio.get_running_loop()
        client.add_listener(lambda e: isinstance(e, SendHeartbeat)
                            and sent.append((loop.time(), e.peer_hb_status)))

        async def dial() -> Any:
            if transport == "dtls":
                return await net.dial_dtls(client.node)
            return await net.dial_tls(client.node)

        client.connect = dial
        try:
            await client.start()
            await client.session_config_get()  # heartbeat-interval 1 s for both (§4.5)
            start = loop.time()
            (session,) = net.server.sessions.values()
            assert client.monitor is not None and client.monitor.interval == 1
            assert session.monitor.interval == 1
            await wait_until(lambda: loop.time() - start > 2.5 and client.peer_heartbeats >= 3
                             and session.heartbeats_answered >= 3, STEP,
                             what="heartbeats both ways")
            # What each side said of the other in its last heartbeat, and would say now.
            assert session.client_receives_heartbeats is True
            assert client.monitor.peer_reports_receiving is True
            assert session.peer_hb_status(time.monotonic()) is True
            assert client.monitor.peer_hb_status(loop.time()) is True
            assert [status for t, status in sent if t > start + 2] == [True] * len(
                [t for t, _ in sent if t > start + 2])
            assert session.state is SessionState.ESTABLISHED and not session.inbound_saturated
            assert client.state is SessionState.ESTABLISHED
        finally:
            await client.close()


async def test_two_clients_on_one_node_both_see_their_link_go_down(pki: PkiPaths) -> None:
    """Each SignalClient on a shared node is told when its own link goes down (it used to be
    the first client only: the node had one callback attribute)."""
    server, node, clients, pairs = await clients_on_one_node(pki, 2)
    try:
        links = [la for la, _ in pairs]
        links[1].close()  # the second client's link goes down: only it loses its session
        await asyncio.wait_for(clients[1].session_lost.wait(), TIMEOUT)
        assert "link down" in (clients[1].lost_reason or "")
        assert clients[0].connected.is_set() and not clients[0].session_lost.is_set()
        links[0].close()
        await asyncio.wait_for(clients[0].session_lost.wait(), TIMEOUT)
    finally:
        for client in clients:
            await client.close()
        await node.close()
        await server.node.close()


async def test_configuration_refresh_follows_max_age_and_waits_out_a_mitigation(
        pki: PkiPaths) -> None:
    """RFC 9132 §4.5.3: the client refreshes its configuration (a GET with its 'sid') before
    Max-Age runs out, but never while a mitigation is active; once withdrawn, the overdue
    refresh goes. `dotsd client run` used to refresh during mitigations (its own loop ignored
    the rule); the rule now lives in the session, which `run` uses."""
    refreshes: list[RefreshConfig] = []
    async with running(pki, heartbeat=(0.0, 3)) as env:
        env.server.config_policy = ConfigPolicy(max_age=1)  # refresh after 0.9 s
        c = env.client
        c.add_listener(lambda e: isinstance(e, RefreshConfig) and refreshes.append(e))
        await c.session_config_get()
        await wait_until(lambda: len(refreshes) >= 1, 5, what="a first refresh")
        await wait_until(lambda: c.session.refresh_at is not None, 5, what="the next one")
        await c.mitigate(SCOPE)
        # The one timer is not armed for the refresh while mitigating (no heartbeats here).
        assert c.session.refresh_at is not None and c.session.get_timer() is None
        seen = len(refreshes)
        await asyncio.sleep(2.5)  # 2.5 x Max-Age: a refresh would have been due twice
        assert len(refreshes) == seen
        await c.withdraw(reply_mid(c))
        await wait_until(lambda: len(refreshes) > seen, 5, what="the overdue refresh")


def reply_mid(client: SignalClient) -> int:
    (mid,) = client.active_mids
    return mid
