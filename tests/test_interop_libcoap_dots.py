"""libcoap's coap-client-openssl as an independent DOTS client (RFC 9132) of a real dotsd
signal server (SignalServer on DTLS and TLS listeners on loopback).

The requests are built here from the specification only: CBOR bodies with the integer keys of
RFC 9132 §6 Table 5 (spec/cbor-keys.tsv) encoded by cbor2, Content-Format 271
(application/dots+cbor, RFC 9132 §10.3), and the 'cuid' derived from the client certificate's
SPKI as RFC 9132 §4.4.1.1 says. libcoap presents the dotsd client certificate (mutual
authentication, RFC 9132 §8).
"""

from __future__ import annotations

import asyncio
import io
import logging
from decimal import Decimal
from pathlib import Path
from typing import Any

import cbor2
import pytest
from support.peers import COAPS, COAPS_TCP, Completed, bounded, libcoap_client, needs_libcoap_client
from support.signalnet import HOST, Clock, SignalNet, cuid_of, signal_listeners
from support.waiting import wait_until

from dotsd.pki import PkiPaths
from dotsd.signal.config import ConfigBounds, ConfigPolicy, ConfigSet
from dotsd.signal.lifecycle import MitigationEvent
from dotsd.signal.session import SessionState

pytestmark = [pytest.mark.interop, pytest.mark.network, pytest.mark.timeout(60),
              needs_libcoap_client]

# RFC 9132 §6 Table 5 (cbor-keys.tsv): the keys used below.
MITIGATION_SCOPE, SCOPE, MID, TARGET_PREFIX, TARGET_PORT_RANGE, LOWER_PORT = 1, 2, 5, 6, 7, 8
TARGET_PROTOCOL, LIFETIME, STATUS, SIGNAL_CONFIG, MITIGATING_CONFIG = 10, 14, 16, 30, 32
HEARTBEAT_INTERVAL, CURRENT_VALUE, IDLE_CONFIG = 33, 36, 44
DOTS_CBOR = "271"  # Content-Format application/dots+cbor (RFC 9132 §10.3)
DOTS_CBOR_NAMES = {DOTS_CBOR, "application/dots+cbor"}  # how libcoap prints it

# RFC 9132 §4.4.2 Table 3 status values.
IN_PROGRESS, MITIGATED, EXCEEDED, CLIENT_WITHDRAWN = 1, 2, 4, 5

REQUEST = {MITIGATION_SCOPE: {SCOPE: [{  # RFC 9132 Figure 7, in CBOR keys
    TARGET_PREFIX: ["2001:db8:6401::1/128", "2001:db8:6401::2/128"],
    TARGET_PORT_RANGE: [{LOWER_PORT: 80}, {LOWER_PORT: 443}],
    TARGET_PROTOCOL: [6],
    LIFETIME: 3600,
}]}}


def uri(net: SignalNet, scheme: str, path: str) -> str:
    port = net.dtls_port if scheme == COAPS else net.tls_port
    return f"{scheme}://{HOST}:{port}/.well-known/dots/{path}"


async def coap(net: SignalNet, scheme: str, path: str, *args: str, wait: int = 4
               ) -> Completed:
    """coap-client-openssl with the dotsd client certificate and the test CA."""
    p = net.pki
    return await libcoap_client(uri(net, scheme, path), "-c", str(p.client_cert),
                                "-j", str(p.client_key), "-C", str(p.ca_cert), *args,
                                wait=wait)


def codes(run: Completed) -> list[str]:
    """The response codes libcoap printed (it exits 0 even without an answer)."""
    return run.codes()


def cbor_items(data: bytes) -> list[Any]:
    """All CBOR data items of ``data`` (libcoap's -o appends every notification)."""
    stream = io.BytesIO(data)
    items = []
    while stream.tell() < len(data):
        items.append(cbor2.CBORDecoder(stream).decode())
    return items


def scope_entry(item: Any) -> dict[int, Any]:
    scopes = item[MITIGATION_SCOPE][SCOPE]
    assert isinstance(scopes, list) and len(scopes) == 1, item
    entry: dict[int, Any] = scopes[0]
    return entry


@pytest.mark.parametrize("scheme", [COAPS, COAPS_TCP])
async def test_libcoap_mitigation_lifecycle(scheme: str, pki: PkiPaths, tmp_path: Path) -> None:
    clock = Clock()
    async with signal_listeners(pki, tmp_path / "state", clock=clock) as net:
        server = net.server
        assert server.store is not None
        cuid = cuid_of(pki)
        mid = 123
        path = f"mitigate/cuid={cuid}/mid={mid}"
        body = tmp_path / "request.cbor"
        body.write_bytes(cbor2.dumps(REQUEST))

        # Create (RFC 9132 §4.4.1): 2.01 with 'mid' and the granted lifetime (Figure 10).
        out = tmp_path / "created.cbor"
        run = await coap(net, scheme, path, "-m", "put", "-t", DOTS_CBOR, "-f", str(body),
                         "-o", str(out))
        assert codes(run) == ["2.01"], run
        assert scope_entry(cbor2.loads(out.read_bytes())) == {MID: mid, LIFETIME: 3600}
        stored = server.store.get_mitigation(cuid, mid)
        assert stored is not None and stored.status == IN_PROGRESS
        binding = server.store.get_binding(cuid)
        assert binding is not None and binding.identity.startswith("spki-sha256:")

        # Read (RFC 9132 §4.4.2): the status and the remaining lifetime.
        clock.now += 100
        out = tmp_path / "status.cbor"
        run = await coap(net, scheme, path, "-o", str(out))
        assert codes(run) == ["2.05"], run
        assert run.responses[0].opt("Content-Format") in DOTS_CBOR_NAMES, run
        entry = scope_entry(cbor2.loads(out.read_bytes()))
        assert entry[MID] == mid and entry[STATUS] == IN_PROGRESS
        assert entry[LIFETIME] == 3500 and entry[TARGET_PROTOCOL] == [6]
        assert sorted(entry[TARGET_PREFIX]) == sorted(REQUEST[MITIGATION_SCOPE][SCOPE][0][
            TARGET_PREFIX])

        # Observe (RFC 9132 §4.4.2.1): each status change is notified.
        notes_file = tmp_path / "notes.cbor"
        task = asyncio.create_task(coap(net, scheme, path, "-s", "3", "-o", str(notes_file),
                                        wait=5))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        key = ("mitigate", cuid, mid)
        while server.node.endpoint.observer_count(key) == 0:
            assert loop.time() < deadline and not task.done(), "libcoap never registered"
            await asyncio.sleep(0.02)
        server.report(cuid, mid, MitigationEvent.MITIGATING)
        await asyncio.sleep(0.3)
        server.report(cuid, mid, MitigationEvent.EXCEEDED)
        run = await bounded(task, 15)
        observed = [d for d in run.responses if d.opt("Observe") is not None]
        assert len(observed) >= 3, run
        statuses = [scope_entry(item)[STATUS] for item in cbor_items(notes_file.read_bytes())]
        assert statuses == [IN_PROGRESS, MITIGATED, EXCEEDED], run
        stored = server.store.get_mitigation(cuid, mid)
        assert stored is not None and stored.status == EXCEEDED

        # Withdraw (RFC 9132 §4.4.4): 2.02 without payload, status 5 during the
        # active-but-terminating period, then gone: 4.04.
        run = await coap(net, scheme, path, "-m", "delete")
        assert codes(run) == ["2.02"] and run.responses[0].payload is None, run
        out = tmp_path / "withdrawn.cbor"
        run = await coap(net, scheme, path, "-o", str(out))
        assert codes(run) == ["2.05"], run
        assert scope_entry(cbor2.loads(out.read_bytes()))[STATUS] == CLIENT_WITHDRAWN
        removed = server.handle_timer(wall=clock.now + 121)
        assert [c.removed for c in removed] == [True]
        run = await coap(net, scheme, path)
        assert codes(run) == ["4.04"], run
        assert server.store.get_mitigation(cuid, mid) is None

        # All of the client's mitigations: none left (RFC 9132 §4.4.2: 4.04).
        run = await coap(net, scheme, f"mitigate/cuid={cuid}")
        assert codes(run) == ["4.04"], run


@pytest.mark.parametrize("scheme", [COAPS, COAPS_TCP])
async def test_libcoap_session_config(scheme: str, pki: PkiPaths, tmp_path: Path) -> None:
    async with signal_listeners(pki, None) as net:
        out = tmp_path / "config.cbor"
        run = await coap(net, scheme, "config", "-o", str(out))
        assert codes(run) == ["2.05"], run
        assert run.responses[0].opt("Content-Format") in DOTS_CBOR_NAMES, run
        config = cbor2.loads(out.read_bytes())[SIGNAL_CONFIG]
        # RFC 9132 §4.5.1: both sets, with the default heartbeat interval (30 s, §4.5.2).
        for kind in (MITIGATING_CONFIG, IDLE_CONFIG):
            assert config[kind][HEARTBEAT_INTERVAL][CURRENT_VALUE] == 30, config

        # A 'cuid' that is not the one derived from libcoap's certificate: 4.01 (RFC 9132
        # §4.4.1.1, §9), with a diagnostic payload.
        run = await coap(net, scheme, "mitigate/cuid=" + "A" * 22)
        assert codes(run) == ["4.01"], run
        assert run.responses[0].payload, run
        # A body that is not dots+cbor: 4.15 (RFC 9132 §9).
        body = tmp_path / "text"
        body.write_bytes(b"mitigate please")
        run = await coap(net, scheme, f"mitigate/cuid={cuid_of(net.pki)}/mid=1", "-m", "put",
                         "-t", "0", "-f", str(body))
        assert codes(run) == ["4.15"], run
        assert len(net.server.table) == 0


# An operator's policy with 1 s heartbeats (the bounds are the operator's; RFC 9132 §4.5.2
# RECOMMENDS 15 s at least), so that the server's heartbeats reach libcoap within the test.
FAST_HB = ConfigBounds(minimum=ConfigSet(heartbeat_interval=1, missing_hb_allowed=3,
                                         probing_rate=5, max_retransmit=2,
                                         ack_timeout=Decimal("1.00"),
                                         ack_random_factor=Decimal("1.10")),
                       default=ConfigSet(heartbeat_interval=1, missing_hb_allowed=3))


@pytest.mark.parametrize("scheme", [COAPS, COAPS_TCP])
async def test_libcoap_answers_the_server_heartbeats_with_4_04(
        scheme: str, pki: PkiPaths, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The dotsd server sends its heartbeats (RFC 9132 §4.7) to libcoap too, which serves no
    /.well-known/dots/hb and answers 4.04: an answer all the same, proof that the client is
    alive. Its session (held by an observation, during which libcoap sends nothing) is kept
    while heartbeats go every second, although 3 missing in 3 s of silence would lose it."""
    caplog.set_level(logging.DEBUG, logger="dotsd.signal.server")
    policy = ConfigPolicy(mitigating=FAST_HB, idle=FAST_HB)
    async with signal_listeners(pki, None, config_policy=policy) as net:
        cuid = cuid_of(pki)
        body = tmp_path / "request.cbor"
        body.write_bytes(cbor2.dumps(REQUEST))
        run = await coap(net, scheme, f"mitigate/cuid={cuid}/mid=1", "-m", "put", "-t",
                         DOTS_CBOR, "-f", str(body))
        assert codes(run) == ["2.01"], run
        task = asyncio.create_task(coap(net, scheme, f"mitigate/cuid={cuid}", "-s", "4",
                                        wait=5))
        (session,) = net.server.sessions.values()
        try:
            await wait_until(lambda: session.heartbeats_answered >= 3, 10,
                             what="3 heartbeats answered")
            assert not session.lost and session.state is SessionState.ESTABLISHED
            assert session.monitor.missed <= 1  # the last one may be on its way
        finally:
            run = await bounded(task, 15)
        assert codes(run)[:1] == ["2.05"], run
        answers = [r.getMessage() for r in caplog.records if "heartbeat to" in r.getMessage()]
        assert answers and all(a.endswith("answered 4.04 NOT_FOUND") for a in answers), answers


async def test_libcoap_against_dotsd_server_process(pki: PkiPaths, tmp_path: Path) -> None:
    """The operator's `dotsd server` (a subprocess, log mitigator): libcoap observes all of
    its mitigations, creates one, and sees it notified twice: when created (status 1) and
    when the mitigator reports it mitigated one second later (status 2, RFC 9132 §4.4.2.1)."""
    from test_cli_server import running

    cuid = cuid_of(pki)
    p = pki
    creds = ("-c", str(p.client_cert), "-j", str(p.client_key), "-C", str(p.ca_cert))
    async with running(pki, tmp_path / "state") as server:
        def at(path: str) -> str:
            return f"coaps://[::1]:{server.port}/.well-known/dots/{path}"

        body = tmp_path / "request.cbor"
        body.write_bytes(cbor2.dumps(REQUEST))
        run = await libcoap_client(at(f"mitigate/cuid={cuid}/mid=1"), *creds, "-m", "put",
                                   "-t", DOTS_CBOR, "-f", str(body))
        assert codes(run) == ["2.01"], run

        notes_file = tmp_path / "notes.cbor"
        watcher = asyncio.create_task(libcoap_client(
            at(f"mitigate/cuid={cuid}"), *creds, "-s", "4", "-o", str(notes_file), wait=5))
        await asyncio.sleep(0.8)  # registered (a handshake and one exchange on loopback)
        other = {MITIGATION_SCOPE: {SCOPE: [{TARGET_PREFIX: ["2001:db8:6402::/48"],
                                             LIFETIME: 600}]}}
        body.write_bytes(cbor2.dumps(other))
        run = await libcoap_client(at(f"mitigate/cuid={cuid}/mid=2"), *creds, "-m", "put",
                                   "-t", DOTS_CBOR, "-f", str(body))
        assert codes(run) == ["2.01"], run
        run = await bounded(watcher, 15)
        items = cbor_items(notes_file.read_bytes())
        assert {e[MID] for e in items[0][MITIGATION_SCOPE][SCOPE]} == {1}, run
        mid2 = [scope_entry(item)[STATUS] for item in items[1:]
                if scope_entry(item)[MID] == 2]
        assert mid2 == [IN_PROGRESS, MITIGATED], (items, run)

        run = await libcoap_client(at(f"mitigate/cuid={cuid}/mid=2"), *creds, "-m", "delete")
        assert codes(run) == ["2.02"], run
        run = await libcoap_client(at("config"), *creds)
        assert codes(run) == ["2.05"], run
