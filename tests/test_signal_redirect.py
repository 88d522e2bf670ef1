"""Redirected signaling (RFC 9132 §4.6) and Happy Eyeballs (§4.3): the sans-IO rules, then
real dotsd servers on loopback over DTLS and TLS with a client following redirections."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.loopback import ipv6_loopback
from support.ports import free_port

from dotsd.agents.client import Redirected, SessionMoved, SignalClient
from dotsd.agents.connect import ClientSettings, new_client
from dotsd.agents.dial import (
    CACHED_HEAD_START,
    AttemptCache,
    Candidate,
    DialError,
    ServerDialer,
    order_candidates,
)
from dotsd.agents.serve import ServerAgent
from dotsd.agents.serve import serve as serve_agent
from dotsd.agents.server import SignalServer
from dotsd.agents.settings import MitigatorSettings, ServerSettings
from dotsd.coap.numbers import Code
from dotsd.coap.params import dots_defaults
from dotsd.coap.site import Site
from dotsd.dtls.context import DtlsConfig
from dotsd.dtls.context import server_context as dtls_server_context
from dotsd.link import Link
from dotsd.model import yang
from dotsd.model.codec import from_cbor, to_cbor
from dotsd.node import CoapNode
from dotsd.pki import PkiPaths
from dotsd.signal.client_session import ProbeDtls
from dotsd.signal.lifecycle import MitigationEvent
from dotsd.signal.redirect import (
    INFINITE_TTL,
    LOOP_WINDOW,
    Redirection,
    RedirectState,
    parse_redirect,
    redirect_body,
)
from dotsd.store import SqliteStore
from dotsd.transport.dtls import serve_dtls

EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "spec" / "examples"
SCOPE: dict[str, Any] = {"target-prefix": ["2001:db8:6401::1/128"], "lifetime": 3600}

needs_v6 = pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback")


# ---------------------------------------------------------------------------------------------
# The body and the client's memory (sans-IO)


def test_body_is_figure_26_and_valid_yang() -> None:
    r = Redirection("alt-server.example", ("2001:db8:6401::1", "2001:db8:6401::2"), 3600)
    body = redirect_body(r)
    yang.validate_response(body)  # the official ietf-dots-signal-channel module
    assert from_cbor(to_cbor(body)) == body
    fig = EXAMPLES / "rfc9132-fig26.txt"
    if fig.exists():
        text = fig.read_text()
        assert "alt-server.example" in text and "2001:db8:6401::2" in text
    assert parse_redirect(body, 3600) == r
    assert parse_redirect(body, None) == Redirection(r.alt_server, r.records, 60)  # RFC 7252


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=45), inner, max_size=4), max_leaves=12),
       st.none() | st.integers(0, INFINITE_TTL))
def test_parse_never_raises(body: Any, max_age: int | None) -> None:
    wrapped = {"ietf-dots-signal-channel:redirected-signal": body}
    for candidate in (body, wrapped):
        result = parse_redirect(candidate if isinstance(candidate, dict) else None, max_age)
        assert result is None or isinstance(result, Redirection)


def test_malformed_redirections_are_ignored() -> None:
    member = "ietf-dots-signal-channel:redirected-signal"
    assert parse_redirect({member: {"alt-server-record": ["2001:db8::1"]}}, 10) is None
    assert parse_redirect({member: {"alt-server": "a.example",
                                    "alt-server-record": ["not an address"]}}, 10) is None
    assert parse_redirect({member: {"alt-server": ""}}, 10) is None
    with pytest.raises(ValueError):
        Redirection("a.example", ttl=-1)


def test_ttl_loop_and_attack_rules() -> None:
    state = RedirectState("dots.example")
    state.contacted("dots.example", 0.0)
    ok, _ = state.accept(Redirection("alt.example", ("2001:db8::2",), 100), 1.0)
    assert ok and state.target(50.0) is not None
    assert state.target(101.0, attack=True) is not None  # kept during an attack
    assert state.target(101.0) is None  # then back to the provisioned server at once
    # Sent back to a server contacted within five minutes: ignored (loop).
    ok, why = state.accept(Redirection("dots.example", (), 100), 200.0)
    assert not ok and "loop" in why and state.refused
    ok, _ = state.accept(Redirection("dots.example", (), 100), LOOP_WINDOW + 1.0)
    assert ok
    # Infinite TTL: until redirected again; TTL 0: only the request in progress.
    state.accept(Redirection("inf.example", (), INFINITE_TTL), 1000.0)
    assert state.target(1e12) is not None and state.expiry() is None
    state.accept(Redirection("once.example", (), 0), 2000.0)
    assert state.target(2000.0) is not None  # for the connection of the request in progress
    assert state.target(2000.0, attack=True) is None


def test_candidate_order_and_cache() -> None:
    order = order_candidates(["192.0.2.1", "2001:db8::1", "192.0.2.1", "2001:db8::2"], 4646)
    assert [str(c) for c in order] == [
        "dtls://[2001:db8::1]:4646", "dtls://[2001:db8::2]:4646", "dtls://192.0.2.1:4646",
        "tls://[2001:db8::1]:4646", "tls://[2001:db8::2]:4646", "tls://192.0.2.1:4646"]
    assert [c.transport for c in order_candidates(["192.0.2.1"], 1, ("tls",))] == ["tls"]
    cache = AttemptCache(ttl=600)
    cache.remember("s", order[3], 0.0)
    assert cache.lookup("s", 599.0) == order[3]
    assert cache.lookup("s", 600.0) is None and cache.lookup("s", 1.0) is None  # flushed


# ---------------------------------------------------------------------------------------------
# Real servers on loopback




@contextlib.asynccontextmanager
async def serve(pki: PkiPaths, host: str, port: int, state: Path, *, dtls: bool = True,
                tls: bool = True, shared: bool = False) -> AsyncIterator[ServerAgent]:
    """``shared``: the store of ``state`` opened beside a server already running on it (an
    alternate server with synchronized state, RFC 9132 §4.6), past the lock that keeps a
    second ``dotsd server`` off a state directory (a shared database's case)."""
    transports = tuple(t for t, on in (("dtls", dtls), ("tls", tls)) if on)
    server = SignalServer(store=SqliteStore.open(state), node=CoapNode(
        Site(), params=dots_defaults())) if shared else None
    agent = await serve_agent(ServerSettings(
        bind=host, port=port, pki=pki.directory, state=state, transports=transports,
        mitigator=MitigatorSettings("log", {"feedback_delay": None})), server=server)
    try:
        yield agent
    finally:
        await agent.close()


def make_client(pki: PkiPaths, host: str, port: int, *, dtls: bool = True, tls: bool = True,
                follow: bool = True, addresses: tuple[str, ...] = ()
                ) -> tuple[SignalClient, ServerDialer]:
    transports = tuple(t for t, on in (("dtls", dtls), ("tls", tls)) if on)
    client = new_client(ClientSettings(host, port, addresses=addresses, pki=pki.directory,
                                       transports=transports, timeout=5.0,
                                       heartbeat=(0.0, 15)))
    assert client.dialer is not None
    if not follow:
        client.on_redirect = None
    return client, client.dialer


@pytest.mark.network
@needs_v6
async def test_client_follows_redirections(pki: PkiPaths, tmp_path: Path) -> None:
    """A redirects (response and unidirectional notification) to B on ::1; B's redirection
    back to A within five minutes is a loop and is not followed."""
    port = free_port()
    state = tmp_path / "state"  # one database: the state synchronization §4.6 assumes
    async with serve(pki, "127.0.0.1", port, state) as a:
        client, dialer = make_client(pki, "127.0.0.1", port)
        try:
            async with asyncio.timeout(30):
                await client.start()
                assert dialer.current is not None and dialer.current.transport == "dtls"
                created = await client.mitigate(SCOPE)
                assert created.code == Code.CREATED and created.mid is not None
                mid = created.mid
                async with serve(pki, "::1", port, state, shared=True) as b, \
                        contextlib.aclosing(client.watch(mid)) as notes:
                    first = await anext(notes)
                    assert first.status == "attack-mitigation-in-progress"
                    alt = Redirection("localhost", ("::1",), 600)
                    assert a.server.redirect(alt) == 1  # the watch is told
                    again = await anext(notes)  # re-registered at B
                    assert again.status == "attack-mitigation-in-progress"
                    assert client.link is not None and client.link.info.address[0] == "::1"
                    assert dialer.server_name == "localhost" and client.redirects == 1
                    b.server.report(client.cuid, mid, MitigationEvent.MITIGATING)
                    assert (await anext(notes)).status == "attack-successfully-mitigated"
                    # A request now goes to B directly.
                    assert (await client.status(mid)).code == Code.CONTENT
                    # B sends it back to A, contacted seconds ago: a loop, not followed.
                    b.server.redirect(Redirection("127.0.0.1", (), 600))
                    with pytest.raises(Redirected) as info:
                        await client.status(mid)
                    assert info.value.code == Code.SERVICE_UNAVAILABLE
                    assert "loop" in info.value.reason
                    assert dialer.redirects.refused
        finally:
            await client.close()


@pytest.mark.network
async def test_request_redirected_to_alternate(pki: PkiPaths, tmp_path: Path) -> None:
    """A mitigation request answered 5.03 is sent to the alternate, where it is created;
    without a redirect hook the 5.03 is an error naming the alternate."""
    port = free_port()
    async with serve(pki, "127.0.0.1", port, tmp_path / "a") as a, \
            serve(pki, "127.0.0.2", port, tmp_path / "b") as b:
        a.server.redirect(Redirection("localhost", ("127.0.0.2",), 0))
        plain, _ = make_client(pki, "127.0.0.1", port, follow=False)
        client, dialer = make_client(pki, "127.0.0.1", port)
        try:
            async with asyncio.timeout(30):
                await plain.start()
                with pytest.raises(Redirected) as info:
                    await plain.mitigate(SCOPE)
                assert info.value.redirection.alt_server == "localhost"
                assert not list(a.server.table) and not list(b.server.table)
                await client.start()
                reply = await client.mitigate(SCOPE)
                assert reply.code == Code.CREATED
                assert [m.mid for m in b.server.table] == [reply.mid]
                assert not list(a.server.table)
                assert dialer.current is not None and dialer.current.address == "127.0.0.2"
        finally:
            await plain.close()
            await client.close()


@pytest.mark.network
async def test_happy_eyeballs_falls_back_to_tls(pki: PkiPaths, tmp_path: Path) -> None:
    """UDP is black-holed (a socket that never answers): TLS starts after the attempt delay
    and wins well before a DTLS handshake would time out; the outcome is cached; once DTLS
    answers again, the probe moves the session to it."""
    port = free_port()
    hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    hole.bind(("127.0.0.1", port))
    try:
        async with serve(pki, "127.0.0.1", port, tmp_path / "s", dtls=False) as served:
            client, dialer = make_client(pki, "127.0.0.1", port)
            events: list[object] = []
            probed, moved = asyncio.Event(), asyncio.Event()

            def seen(event: object) -> None:
                events.append(event)
                if isinstance(event, ProbeDtls):
                    probed.set()
                if isinstance(event, SessionMoved):
                    moved.set()

            client.add_listener(seen)
            # How each dial attempt ends (RFC 8305 §5, RFC 9132 §4.3: the next one starts
            # after the attempt delay; the first link up wins, the others are cancelled).
            ended = record_attempts(dialer)
            try:
                await asyncio.wait_for(client.start(), 10)
                # TLS won while the DTLS attempt (it allows 5 s) was still waiting for an
                # answer: DTLS was cancelled, it had not timed out.
                assert ended == [("tls", "up"), ("dtls", "cancelled")], ended
                assert dialer.current == Candidate("tls", "127.0.0.1", port)
                assert (await client.session_config_get()).current is not None
                loop = asyncio.get_running_loop()
                assert dialer.cache.lookup(f"127.0.0.1:{port}", loop.time()) == dialer.current
                # RFC 9132 §4.3: DTLS is probed again, not before 5 minutes.
                assert dialer.tls_fallback
                due = client.session.probe_at
                assert due is not None and due - loop.time() > 290
                # Still black-holed: the probe fails and the session stays on TLS.
                client.session.dtls_probe_interval = 0.2
                client.session.probe_failed(loop.time())
                dialer.timeout = 0.5
                client.set_attack_ongoing(None)  # re-arms the session's timer
                await asyncio.wait_for(probed.wait(), 10)
                assert dialer.current.transport == "tls" and not moved.is_set()
                # DTLS becomes available: a probe succeeds, the session moves to it.
                hole.close()
                listener = await serve_dtls(
                    served.server.node, "127.0.0.1", port,
                    dtls_server_context(DtlsConfig.from_pki(pki)))
                served.listeners.append(listener)
                await asyncio.wait_for(moved.wait(), 10)
                assert dialer.current.transport == "dtls"
                assert client.link is not None and client.link.info.transport == "dtls"
                assert (await client.mitigate(SCOPE)).code == Code.CREATED
            finally:
                await client.close()
    finally:
        hole.close()


def record_attempts(dialer: ServerDialer) -> list[tuple[str, str]]:
    """How each of ``dialer``'s attempts ends, in order."""
    ended: list[tuple[str, str]] = []
    attempt = dialer._attempt

    async def recorded(cand: Candidate, server_name: str) -> Link:
        try:
            link = await attempt(cand, server_name)
        except asyncio.CancelledError:
            ended.append((cand.transport, "cancelled"))
            raise
        except Exception as exc:
            ended.append((cand.transport, f"failed: {exc!r}"))
            raise
        ended.append((cand.transport, "up"))
        return link

    dialer._attempt = recorded  # type: ignore[method-assign]
    return ended


@pytest.mark.network
async def test_cached_winner_does_not_hold_back_the_race(pki: PkiPaths, tmp_path: Path) -> None:
    """DTLS won and is cached (RFC 9132 §4.3); then UDP is black-holed. The redial tries DTLS
    first and alone for a head start, then TLS joins the race and wins, long before the
    DTLS attempt's own timeout (5 s); the DTLS handshake measured a round trip."""
    port = free_port()
    async with serve(pki, "127.0.0.1", port, tmp_path / "s"):
        client, dialer = make_client(pki, "127.0.0.1", port)
        try:
            await asyncio.wait_for(client.start(), 10)
            assert dialer.current == Candidate("dtls", "127.0.0.1", port)
            assert client.link is not None and client.link.info.rtt is not None
            assert 0 < client.link.info.rtt < 1.0
            # The pacing estimate starts from the handshake's round trip (RFC 9132 §4.4).
            assert client.estimator.srtt == client.link.info.rtt
        finally:
            await client.close()
    hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    hole.bind(("127.0.0.1", port))
    try:
        async with serve(pki, "127.0.0.1", port, tmp_path / "s", dtls=False):
            again, redialer = make_client(pki, "127.0.0.1", port)
            redialer.cache = dialer.cache
            ended = record_attempts(redialer)
            loop = asyncio.get_running_loop()
            try:
                started = loop.time()
                await asyncio.wait_for(again.start(), 10)
                took = loop.time() - started
                assert ended == [("tls", "up"), ("dtls", "cancelled")], ended
                assert redialer.current == Candidate("tls", "127.0.0.1", port)
                assert CACHED_HEAD_START <= took < redialer.timeout
                # Round trips over TCP (its retransmissions included) do not pace datagrams.
                assert (await again.mitigate(SCOPE)).code == Code.CREATED
                assert not again.estimator.has_estimate
            finally:
                await again.close()
    finally:
        hole.close()


@pytest.mark.network
async def test_rtt_hint_sets_the_first_handshake_timer(pki: PkiPaths) -> None:
    """With an RTT estimate the ClientHello is resent after 2 RTT (RFC 6347 §4.2.4.1 asks for
    1 s only without one): a server that never answers sees it three times in 0.5 s
    (0, 0.1, 0.3 s) instead of once."""
    seen: dict[str, int] = {}
    for label, hint in (("hint", 0.05), ("none", None)):
        hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        hole.bind(("127.0.0.1", 0))
        hole.setblocking(False)
        port = hole.getsockname()[1]
        try:
            client, dialer = make_client(pki, "127.0.0.1", port, tls=False)
            dialer.rtt = lambda hint=hint: hint  # type: ignore[misc]
            dialer.timeout = 0.5
            try:
                with pytest.raises(DialError):
                    await asyncio.wait_for(client.start(), 5)
            finally:
                await client.close()
            count = 0
            with contextlib.suppress(BlockingIOError):
                for _ in range(100):
                    hole.recv(4096)
                    count += 1
            seen[label] = count
        finally:
            hole.close()
    assert seen["none"] == 1, seen
    assert seen["hint"] >= 3, seen


@pytest.mark.network
@needs_v6
async def test_happy_eyeballs_ipv4_when_ipv6_refuses(pki: PkiPaths, tmp_path: Path) -> None:
    """The server 'localhost' is configured with ::1 and 127.0.0.1; only IPv4 serves: DTLS
    over IPv6 is refused, DTLS over IPv4 wins (before TLS over IPv6 is tried)."""
    port = free_port()
    async with serve(pki, "127.0.0.1", port, tmp_path / "s"):
        client, dialer = make_client(pki, "localhost", port, addresses=("127.0.0.1", "::1"))
        try:
            await asyncio.wait_for(client.start(), 10)
            assert dialer.current == Candidate("dtls", "127.0.0.1", port)
        finally:
            await client.close()


@pytest.mark.network
async def test_nothing_listening_is_a_dial_error(pki: PkiPaths) -> None:
    port = free_port()
    client, dialer = make_client(pki, "127.0.0.1", port)
    dialer.timeout = 1.0
    try:
        with pytest.raises(DialError) as info:
            await asyncio.wait_for(client.start(), 10)
        assert "dtls://127.0.0.1" in str(info.value) and "tls://127.0.0.1" in str(info.value)
    finally:
        await client.close()
