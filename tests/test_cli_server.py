"""``dotsd server`` as a real process: start, serve DTLS and TLS, mitigator feedback, kill -9 and
restart on the same state, SIGTERM, start failures, an operator policy and session
configuration from ``--config``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from dotsd.agents.client import ClientError, Reply, SignalClient
from dotsd.coap.numbers import Code
from dotsd.pki import PkiPaths, load_certificate
from dotsd.signal.config import Attribute, ConfigBounds, ConfigSetKind

pytestmark = pytest.mark.network  # every test runs `dotsd server` as a process

SCOPE: dict[str, Any] = {"target-prefix": ["2001:db8:6401::1/128"], "lifetime": 3600}
DOTSD = [sys.executable, "-m", "dotsd"]


class Server:
    def __init__(self, proc: asyncio.subprocess.Process, port: int,
                 events: list[dict[str, Any]]) -> None:
        self.proc = proc
        self.port = port
        self.events = events  # what it printed up to "listening" (--json)


async def _start(pki: PkiPaths | None, state: Path | None, *extra: str) -> Server:
    """``dotsd server`` on [::1] and a free port; ``pki`` / ``state`` None: not given as
    flags (``extra`` gives ``--config FILE``)."""
    argv = [*DOTSD, "server", "--bind", "::1", "--port", "0", "--json", *extra]
    if pki is not None:
        argv += ["--pki", str(pki.directory)]
    if state is not None:
        argv += ["--state", str(state)]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE,
                                                stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    events: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(20):
            while True:
                line = await proc.stdout.readline()
                assert line, "the server exited before listening"
                events.append(json.loads(line))
                if "port" in events[-1]:
                    return Server(proc, int(events[-1]["port"]), events)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        raise


@contextlib.asynccontextmanager
async def running(pki: PkiPaths | None, state: Path | None, *extra: str
                  ) -> AsyncIterator[Server]:
    server = await _start(pki, state, *extra)
    try:
        yield server
    finally:
        if server.proc.returncode is None:
            server.proc.kill()
        await server.proc.wait()


@contextlib.asynccontextmanager
async def client_of(pki: PkiPaths, port: int, transport: str = "dtls"
                    ) -> AsyncIterator[SignalClient]:
    from dotsd.dtls.context import DtlsConfig, client_context
    from dotsd.tls.context import client_context as tls_client_context
    from dotsd.transport.dtls import dtls_connect
    from dotsd.transport.tcp import connect_tcp

    client = SignalClient.for_certificate(load_certificate(pki.client_cert), timeout=10.0)

    async def dial() -> Any:
        if transport == "tls":
            return await connect_tcp(client.node, "::1", port, tls_client_context(
                pki.client_cert, pki.client_key, pki.ca_cert), server_hostname="localhost")
        return await dtls_connect(client.node, ("::1", port),
                                  client_context(DtlsConfig.from_pki(pki, client=True)),
                                  timeout=10.0)

    client.connect = dial
    try:
        await client.start()
        yield client
    finally:
        await client.close()


async def _next(notes: AsyncIterator[Reply]) -> Reply:
    async with asyncio.timeout(10):
        return await anext(notes)


async def test_kill9_and_restart_keep_the_mitigation(pki: PkiPaths, tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with running(pki, state) as server, client_of(pki, server.port) as client:
        reply = await client.mitigate(SCOPE)
        assert reply.code == Code.CREATED
        mid = reply.mid
        assert mid is not None
        # The log mitigator reports success after its delay: the bridge feeds it back and
        # the observer sees status 1 → 2 (RFC 9132 §4.4.2.1).
        async with contextlib.aclosing(client.watch(mid)) as notes:
            seen = [(await _next(notes)).status]
            while "attack-successfully-mitigated" not in seen and len(seen) < 5:
                seen.append((await _next(notes)).status)
        assert seen[-1] == "attack-successfully-mitigated"
        before = (await client.status(mid)).lifetime
        assert before is not None and 0 < before <= 3600
        server.proc.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(server.proc.wait(), 10) == -signal.SIGKILL
    await asyncio.sleep(1.1)  # lifetimes keep counting while the server is down
    async with running(pki, state) as server:
        async with client_of(pki, server.port, "tls") as client:
            status = await client.status(mid)
            assert status.status == "attack-successfully-mitigated"
            assert status.lifetime is not None and status.lifetime < before
            withdrawn = await client.withdraw(mid)
            assert withdrawn.code == Code.DELETED
            after = await client.status(mid)
            assert after.status == "dots-client-withdrawn-mitigation"
        server.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(server.proc.wait(), 15) == 0


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DOTSD, "server", *args], capture_output=True, text=True,
                          timeout=30, check=False)


def test_start_failures_are_one_clear_line(pki: PkiPaths, tmp_path: Path) -> None:
    missing = _run("--pki", str(tmp_path / "nope"), "--state", str(tmp_path / "s"))
    assert missing.returncode == 1
    assert "ca.pem: missing" in missing.stderr and "Traceback" not in missing.stderr
    bogus = _run("--pki", str(pki.directory), "--state", str(tmp_path / "s"),
                 "--mitigator", "bogus")
    assert bogus.returncode == 1 and "unknown mitigator 'bogus'" in bogus.stderr
    assert "Traceback" not in bogus.stderr
    port = _run("--pki", str(pki.directory), "--state", str(tmp_path / "s"), "--port", "70000")
    assert port.returncode == 2 and "port out of range" in port.stderr


async def test_port_in_use_is_an_error(pki: PkiPaths, tmp_path: Path) -> None:
    async with running(pki, tmp_path / "a") as first:
        proc = await asyncio.create_subprocess_exec(
            *DOTSD, "server", "--pki", str(pki.directory), "--state", str(tmp_path / "b"),
            "--bind", "::1", "--port", str(first.port), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 1, out
        assert b"cannot listen on" in err and b"Traceback" not in err


async def test_second_server_on_one_state_is_refused(pki: PkiPaths, tmp_path: Path) -> None:
    """Two servers on one state directory would write conflicting records: the second
    exits 1 with one line naming the first's PID."""
    async with running(pki, tmp_path / "state") as first:
        proc = await asyncio.create_subprocess_exec(
            *DOTSD, "server", "--pki", str(pki.directory), "--state", str(tmp_path / "state"),
            "--bind", "::1", "--port", "0", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 1, out
        text = err.decode()
        assert text.startswith("dotsd: error: ") and text.count("\n") == 1, text
        assert f"in use by another dotsd server (PID {first.proc.pid};" in text
        assert first.proc.returncode is None  # the first one serves on


def test_corrupt_state_is_refused_and_kept(pki: PkiPaths, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    db = state / "dotsd.sqlite3"
    db.write_bytes(b"garbage\n")
    result = _run("--pki", str(pki.directory), "--state", str(state), "--port", "0")
    assert result.returncode == 1 and "not a database" in result.stderr
    assert db.read_bytes() == b"garbage\n"  # never replaced: an operator may recover it


async def test_operator_policy_and_session_config_from_a_file(pki: PkiPaths,
                                                              tmp_path: Path) -> None:
    """A server whose --config admits 10.0.0.0/8 (RFC 9132 §4.4.1.1, §10) and sets session
    configuration bounds (§4.5); --pki and --state come from the file."""
    config = tmp_path / "server.toml"
    config.write_text(f"""
[server]
pki = "{pki.directory}"
state = "state"
[policy]
allowed-prefixes = ["10.0.0.0/8"]
max-lifetime = 600
[session-config]
max-age = 1234
[session-config.idle]
heartbeat-interval = {{ min = 20, max = 90, default = 45 }}
ack-timeout = {{ min = 1.5, max = 5.25, default = 2.5 }}
[session-config.mitigating]
missing-hb-allowed = {{ min = 4, max = 8, default = 6 }}
[mitigator]
options = {{ feedback_delay = 0.1 }}
""")
    async with running(None, None, "--config", str(config)) as server:
        announced = server.events[0]
        assert announced["mode"] == "policy" and announced["prefixes"] == ["10.0.0.0/8"]
        assert server.events[-1]["state"] == str(tmp_path / "state")
        async with client_of(pki, server.port) as client:
            reply = await client.mitigate({"target-prefix": ["10.1.2.3/32"],
                                           "lifetime": 3600})
            assert reply.code == Code.CREATED
            assert reply.lifetime == 600  # shortened to the policy's max-lifetime
            with pytest.raises(ClientError) as refused:
                await client.mitigate({"target-prefix": ["192.0.2.1/32"], "lifetime": 60})
            assert refused.value.code == Code.BAD_REQUEST
            assert "outside the DOTS client domain" in str(refused.value.diagnostic)
            # The bounds a client discovers are the file's (RFC 9132 §4.5.1, GET /config).
            advertised = await client.session_config_get()
            assert client.config_max_age == 1234
            idle = advertised.advertised(ConfigSetKind.IDLE)
            hb = idle[Attribute.HEARTBEAT_INTERVAL]
            assert (hb.minimum, hb.maximum, hb.current) == (20, 90, 45)
            ack = idle[Attribute.ACK_TIMEOUT]
            assert (ack.minimum, ack.maximum, ack.current) == (
                Decimal("1.50"), Decimal("5.25"), Decimal("2.50"))
            missing = advertised.advertised(ConfigSetKind.MITIGATING)[
                Attribute.MISSING_HB_ALLOWED]
            assert (missing.minimum, missing.maximum, missing.current) == (4, 8, 6)
            # Not in the file: the RFC 9132 defaults.
            default = ConfigBounds()
            rate = idle[Attribute.PROBING_RATE]
            assert (rate.minimum, rate.maximum) == (default.minimum.probing_rate,
                                                    default.maximum.probing_rate)
        server.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(server.proc.wait(), 15) == 0


async def test_lab_mode_is_announced_without_a_policy(pki: PkiPaths, tmp_path: Path) -> None:
    async with running(pki, tmp_path / "state") as server:
        assert server.events[0]["mode"] == "lab"
        assert "192.0.2.0/24" in server.events[0]["prefixes"]


async def test_limits_section_reaches_the_coap_layer(pki: PkiPaths, tmp_path: Path) -> None:
    """[limits] max-observations = 1: the server answers a second observation of the same
    client without registering it (no Observe option, RFC 7641 §4.1)."""
    from dotsd.coap.message import Message
    from dotsd.signal.uri import mitigate_path

    config = tmp_path / "server.toml"
    config.write_text("[limits]\nmax-observations = 1\n")
    async with running(pki, tmp_path / "state", "--config", str(config)) as server, \
            client_of(pki, server.port) as client:
        assert (await client.mitigate(SCOPE)).code == Code.CREATED
        link = client.link
        assert link is not None
        first = client.node.observe(link, Message(code=Code.GET).set_path(
            "/".join(mitigate_path(client.cuid))), timeout=10)
        second = client.node.observe(link, Message(code=Code.GET).set_path(
            "/".join(mitigate_path(client.cuid))), timeout=10)
        one, two = await first.next(10), await second.next(10)
        assert one.code == two.code == Code.CONTENT
        assert one.observe is not None and two.observe is None
        first.cancel()
        second.cancel()


async def test_psk_client_from_the_config(pki: PkiPaths, tmp_path: Path) -> None:
    """A [[client]] with psk-identity and psk-key: a CPE with no certificate reaches the
    server over DTLS with that PSK, gets its own domain and the cuid of its identity; a wrong
    key gets no session; certificate clients are served as before."""
    from dotsd.dtls.context import DtlsConfig, client_context
    from dotsd.transport.dtls import dtls_connect

    key = "5e" * 32
    config = tmp_path / "server.toml"
    config.write_text('[[client]]\nname = "cpe"\npsk-identity = "cpe-17"\n'
                      f'psk-key = "{key}"\nallowed-prefixes = ["10.17.0.0/16"]\n')
    async with running(pki, tmp_path / "state", "--config", str(config)) as server:
        assert "DTLS PSK" not in json.dumps(server.events)  # printed only by --check
        assert key not in json.dumps(server.events)

        async def psk_client(secret: bytes) -> SignalClient:
            client = SignalClient.for_psk(b"cpe-17", timeout=5.0)
            ctx = client_context(DtlsConfig(psk_identity=b"cpe-17", psk_key=secret))

            async def dial() -> Any:
                return await dtls_connect(client.node, ("::1", server.port), ctx, timeout=3.0)

            client.connect = dial
            return client

        cpe = await psk_client(bytes.fromhex(key))
        try:
            await cpe.start()
            reply = await cpe.mitigate({"target-prefix": ["10.17.0.9/32"], "lifetime": 60})
            assert reply.code == Code.CREATED
            with pytest.raises(ClientError) as refused:
                await cpe.mitigate({"target-prefix": ["2001:db8::1/128"], "lifetime": 60})
            assert "outside the DOTS client domain" in str(refused.value)
        finally:
            await cpe.close()
        intruder = await psk_client(b"\x00" * 32)
        try:
            with pytest.raises((OSError, TimeoutError, ClientError)):
                await intruder.start()
        finally:
            await intruder.close()
        async with client_of(pki, server.port) as client:  # certificates still work
            assert (await client.mitigate(SCOPE)).code == Code.CREATED
