"""The one assembly of each agent: dotsd.agents.serve.serve(ServerSettings) and
dotsd.agents.connect.connect(ClientSettings), end to end on loopback and on bad settings."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from pathlib import Path

import pytest
from support.ports import free_port

from dotsd.agents.client import ClientError
from dotsd.agents.connect import ClientSettings, ConnectError, connect, new_client
from dotsd.agents.serve import ServeError, serve
from dotsd.agents.settings import MitigatorSettings, ServerSettings
from dotsd.agents.statelock import LOCK_FILENAME, StateLock, StateLockError
from dotsd.coap.numbers import Code
from dotsd.pki import PkiPaths, issue_server
from dotsd.signal.config import ConfigSetKind
from dotsd.signal.mitigation import Change
from dotsd.store import SqliteStore, StoreError

pytestmark = pytest.mark.network

SCOPE = {"target-prefix": ["2001:db8:6401::1/128"], "lifetime": 3600}


def settings(pki: PkiPaths, state: Path | None, **kw: object) -> ServerSettings:
    return ServerSettings(bind="127.0.0.1", port=0, pki=pki.directory, state=state,
                          mitigator=MitigatorSettings("log", {"feedback_delay": None}),
                          **kw)  # type: ignore[arg-type]


async def test_serve_and_connect_end_to_end(pki: PkiPaths, tmp_path: Path) -> None:
    agent = await serve(settings(pki, tmp_path / "state"))
    changes: list[Change] = []
    agent.server.add_listener(changes.append)
    try:
        assert agent.port > 0 and len(agent.listeners) == 2  # DTLS and TLS, one port
        for transport in ("dtls", "tls"):
            client = await connect(ClientSettings("127.0.0.1", agent.port, pki=pki.directory,
                                                  transports=(transport,), timeout=5.0))
            try:
                assert client.link is not None and client.link.info.transport == transport
                reply = await client.mitigate(SCOPE)
                assert reply.code == Code.CREATED
                assert agent.server.store is not None
                assert agent.server.store.get_mitigation(client.cuid, reply.mid or 0)
                assert (await client.withdraw(reply.mid or 0)).code == Code.DELETED
            finally:
                await client.close()
        # Both listeners saw the change, and the bridge ordered the mitigator.
        assert [c.mitigation.status.label for c in changes].count(
            "attack-mitigation-in-progress") == 2
        await agent.bridge.drain(5.0)
        assert agent.bridge.failures == 0
    finally:
        await agent.close()
    # The store is closed with the agent: a new one opens the same state, nothing lost.
    again = await serve(settings(pki, tmp_path / "state"))
    try:
        assert again.server.store is not None
        # The withdrawn request is kept through its active-but-terminating period (RFC 9132
        # §4.4.4); both clients used the same certificate, so the same cuid and mid 1.
        kept = list(again.server.table)
        assert [(m.mid, m.status.label) for m in kept] == [
            (1, "dots-client-withdrawn-mitigation")]
    finally:
        await again.close()


async def test_serve_refuses_a_missing_pki_and_a_busy_port(pki: PkiPaths,
                                                           tmp_path: Path) -> None:
    with pytest.raises(ServeError, match="missing"):
        await serve(ServerSettings(pki=tmp_path / "nowhere", state=None))
    with pytest.raises(ServeError, match="mitigator"):
        await serve(settings(pki, None).replace(
            mitigator=MitigatorSettings("log", {"no-such-option": 1})))
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", 0))
    try:
        port = busy.getsockname()[1]
        with pytest.raises(ServeError, match="cannot listen"):
            await serve(settings(pki, tmp_path / "s").replace(port=port))
    finally:
        busy.close()
    # What was opened before the failure was closed: the same state opens again.
    agent = await serve(settings(pki, tmp_path / "s"))
    await agent.close()


async def test_reload_applies_the_policy_and_names_what_needs_a_restart(
        pki: PkiPaths) -> None:
    agent = await serve(settings(pki, None))
    try:
        redirect_off = agent.settings
        restart = agent.reload(redirect_off.replace(port=1234, transports=("dtls",)))
        assert restart == ["port", "transports"]
        assert agent.reload(agent.settings) == []
    finally:
        await agent.close()


def test_new_client_refuses_contradictory_settings(pki: PkiPaths, tmp_path: Path) -> None:
    with pytest.raises(ConnectError) as info:
        new_client(ClientSettings("127.0.0.1"))
    assert info.value.usage
    with pytest.raises(ConnectError, match="DTLS only") as info:
        new_client(ClientSettings("127.0.0.1", psk_identity=b"cpe", psk_key=b"k" * 16,
                                  transports=("tls",)))
    assert info.value.usage
    with pytest.raises(ConnectError, match="missing"):
        new_client(ClientSettings("127.0.0.1", pki=tmp_path))
    with pytest.raises(ConnectError, match="transports"):
        new_client(ClientSettings("127.0.0.1", pki=pki.directory, transports=("quic",)))
    client = new_client(ClientSettings("127.0.0.1", pki=pki.directory))
    assert client.dialer is not None and client.connect is not None
    assert client.cuid and client.state.value == "connecting"



async def test_answers_wait_for_the_commit_and_the_loop_keeps_serving(
        pki: PkiPaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """serve() commits in a writer thread: while a commit is held back, the same client's
    other requests are answered, and its mitigation request is answered only once the
    mitigation is in the store (RFC 9132 §4.4.1: acknowledged means installed). A commit
    that fails is 5.00 and leaves nothing behind."""
    agent = await serve(settings(pki, tmp_path / "state"))
    writer, store = agent.server.writer, agent.server.store
    assert writer is not None and store is not None
    client = await connect(ClientSettings("127.0.0.1", agent.port, pki=pki.directory,
                                          transports=("dtls",), timeout=10.0))
    try:
        gate = threading.Event()
        held = writer.submit(lambda _store: gate.wait(10))  # the writer is busy
        request = asyncio.create_task(client.mitigate(SCOPE))
        config = await client.session_config_get()  # answered meanwhile
        assert config.current(ConfigSetKind.IDLE) is not None
        assert not request.done() and store.get_mitigation(client.cuid, 1) is None
        gate.set()
        reply = await request
        assert reply.code == Code.CREATED and held.done()
        assert store.get_mitigation(client.cuid, reply.mid or 0) is not None

        def broken(self: SqliteStore, record: object) -> None:
            if threading.current_thread().name.startswith("dotsd-store-writer"):
                raise StoreError("disk full")

        monkeypatch.setattr(SqliteStore, "put_mitigation", broken)
        with pytest.raises(ClientError) as info:
            await client.mitigate({**SCOPE, "target-prefix": ["2001:db8:6401::2/128"]})
        assert info.value.code == Code.INTERNAL_SERVER_ERROR
        assert [m.mid for m in agent.server.table] == [reply.mid]  # reloaded: only the first
    finally:
        await client.close()
        await agent.close()


@pytest.mark.parametrize("transport", ["dtls", "tls"])
async def test_call_home_is_a_configuration_of_the_same_agents(
        pki: PkiPaths, tmp_path: Path, transport: str) -> None:
    """RFC 9066 §5.1: the DOTS server dials (as the (D)TLS client) and the DOTS client
    listens (as the (D)TLS server); the DOTS roles and the signal channel stay the same. Both
    agents are the usual serve()/connect() with two settings changed. A link lost is dialed
    again by the server, and the client's session goes on over the new one."""
    # The client's certificate: one that serverAuth allows too (the client is the TLS server).
    issue_server(pki.directory, "home", force=True)
    port = free_port(("127.0.0.1",))
    client_task = asyncio.create_task(connect(ClientSettings(
        "unused", pki=pki.directory, cert="home", transports=(transport,), timeout=10.0,
        listen=("127.0.0.1", port))))
    await asyncio.sleep(0)  # the client listens before the server dials (bounded below)
    agent = await serve(settings(pki, tmp_path / "state", listen=False,
                                 transports=(transport,),
                                 call_home=(("127.0.0.1", port),)))
    try:
        assert agent.listeners == []  # the server listens nowhere: it dials
        client = await asyncio.wait_for(client_task, 15)
        try:
            link = client.link
            assert link is not None and not link.info.initiator  # the client accepted it
            reply = await client.mitigate(SCOPE)
            assert reply.code == Code.CREATED
            assert agent.server.table.lookup(client.cuid, reply.mid or 0) is not None
            dialer = agent.dialers[0]
            assert dialer.link is not None and dialer.link.info.initiator
            # The server's link goes down: it dials again; the client carries on.
            dialer.link.close()
            await asyncio.wait_for(client.session_lost.wait(), 10)
            await asyncio.wait_for(client.connected.wait(), 15)
            assert dialer.dials == 2
            assert (await client.status(reply.mid)).code == Code.CONTENT
        finally:
            await client.close()
    finally:
        if not client_task.done():
            client_task.cancel()
        await agent.close()


async def test_one_server_per_state_directory(pki: PkiPaths, tmp_path: Path) -> None:
    """Two servers on one state directory would write conflicting records: the second
    refuses to start and names the holder; once the first has closed, a new one starts."""
    state = tmp_path / "state"
    first = await serve(settings(pki, state))
    try:
        assert (state / LOCK_FILENAME).read_text() == f"{os.getpid()}\n"
        with pytest.raises(ServeError, match=rf"in use by another dotsd server \(PID "
                                             rf"{os.getpid()};"):
            await serve(settings(pki, state))
        assert first.server.store is not None  # the refusal left the first one alone
        assert first.server.store.all_mitigations() == []
    finally:
        await first.close()
    again = await serve(settings(pki, state))  # a lock file left behind stops nobody
    await again.close()


async def test_state_lock_released_when_the_store_fails(pki: PkiPaths,
                                                        tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "dotsd.sqlite3").write_bytes(b"garbage\n")
    with pytest.raises(ServeError, match="not a database"):
        await serve(settings(pki, state))
    StateLock.acquire(state).release()  # not left held by the failed start


def test_state_lock_errors(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StateLockError, match="not a directory"):
        StateLock.acquire(tmp_path / "file")
    state = tmp_path / "new" / "state"
    lock = StateLock.acquire(state)  # created, like the store would
    assert state.is_dir() and state.stat().st_mode & 0o777 == 0o700
    with pytest.raises(StateLockError, match=f"PID {os.getpid()}"):
        StateLock.acquire(state)
    lock.release()
    lock.release()  # idempotent
    assert not lock.held and (state / LOCK_FILENAME).read_text() == ""
    StateLock.acquire(state).release()
