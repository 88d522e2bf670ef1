"""``dotsd demo``: a DOTS server and a DOTS client on loopback, with nothing to set up.

A temporary PKI and state directory; the signal-channel server (RFC 9132) with the ``log``
mitigator, on DTLS and TLS; a client that dials it (Happy Eyeballs, RFC 9132 §4.3), reads the
session configuration, asks mitigation for a documentation prefix, observes it through its status
changes (the mitigator's feedback), sends an efficacy update and withdraws it. Every step is
printed as it happens (``--json``: one report at the end). Exit 0 when all of it worked.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

from dotsd.agents.bridge import MitigatorBridge
from dotsd.agents.client import ClientError, Reply, SignalClient
from dotsd.agents.dial import ServerDialer
from dotsd.agents.server import SignalServer
from dotsd.cli import CommandError, Subparsers
from dotsd.coap.numbers import code_str
from dotsd.mitigate import registry
from dotsd.mitigate.base import Feedback
from dotsd.pki import init_pki, load_certificate
from dotsd.signal.config import ConfigSetKind
from dotsd.signal.mitigation import Change
from dotsd.store.sqlite import SqliteStore

SCOPE: Final[dict[str, Any]] = {  # RFC 9132 Figure 7, trimmed: a documentation prefix
    "target-prefix": ["2001:db8:6401::1/128"],
    "target-port-range": [{"lower-port": 443}],
    "target-protocol": [6],
    "lifetime": 3600,
}
STEP_TIMEOUT: Final = 15.0


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="run a DOTS server and client on loopback and show a mitigation",
        description="Creates a temporary PKI and state, starts a DOTS server (log mitigator) "
                    "and a DOTS client on loopback, and shows a mitigation requested, "
                    "observed through its status changes, and withdrawn. Exits 0 when "
                    "everything worked.")
    parser.add_argument("--transport", choices=("auto", "dtls", "tls"), default="auto",
                        help="signal channel transport (default: auto, Happy Eyeballs)")
    parser.set_defaults(func=run)


class _Reporter:
    """Prints each step for people, or collects them for --json."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.steps: list[dict[str, Any]] = []
        self.start = time.monotonic()

    def __call__(self, who: str, text: str, **fields: Any) -> None:
        elapsed = time.monotonic() - self.start
        self.steps.append({"t": round(elapsed, 4), "who": who, "event": text, **fields})
        if not self.as_json:
            print(f"{elapsed:7.3f}s  [{who:9}] {text}", flush=True)


@contextlib.asynccontextmanager
async def _server(report: _Reporter, directory: Path) -> AsyncIterator[tuple[SignalServer,
                                                                              int]]:
    from dotsd.dtls.context import DtlsConfig
    from dotsd.dtls.context import server_context as dtls_server_context
    from dotsd.pki import PkiPaths
    from dotsd.tls.context import server_context as tls_server_context
    from dotsd.transport.dtls import serve_dtls
    from dotsd.transport.tcp import serve_tcp

    pki = PkiPaths.of(directory / "pki")
    store = SqliteStore.open(directory / "state")
    holder: list[MitigatorBridge] = []

    def feedback(fb: Feedback) -> None:
        if fb.status is not None:
            report("mitigator", f"mid {fb.mid}: {fb.status.value}")
        holder[0].feedback(fb)

    mitigator = registry.create("log", report=feedback)
    bridge = MitigatorBridge(mitigator)
    holder.append(bridge)
    server = SignalServer(store=store)
    bridge.attach(server)
    to_bridge = server.on_change

    def on_change(change: Change) -> None:
        m = change.mitigation
        report("server", f"mid {m.mid}: {change.before.label if change.before else 'new'} → "
                         f"{m.status.label} ({change.reason.value}); order to the "
                         f"'{mitigator.name}' mitigator")
        if to_bridge is not None:
            to_bridge(change)

    server.on_change = on_change
    await mitigator.start()
    listeners: list[Any] = []
    try:
        dtls = await serve_dtls(server.node, "127.0.0.1", 0,
                                dtls_server_context(DtlsConfig.from_pki(pki)))
        listeners.append(dtls)
        listeners.append(await serve_tcp(server.node, "127.0.0.1", dtls.port,
                                         tls_server_context(pki.server_cert, pki.server_key,
                                                            pki.ca_cert)))
        server.start()
        report("server", f"DOTS server on 127.0.0.1:{dtls.port} (DTLS and TLS), lab mode: "
                         "documentation prefixes only", port=dtls.port)
        yield server, dtls.port
    finally:
        for listener in listeners:
            listener.close()
        await server.close()
        await server.node.close()
        await bridge.drain(5.0)
        await mitigator.stop()
        store.close()


async def _next(notes: AsyncIterator[Reply]) -> Reply:
    try:
        return await asyncio.wait_for(anext(notes), STEP_TIMEOUT)
    except (TimeoutError, StopAsyncIteration):
        raise CommandError("no status notification came in time") from None


async def _demo(args: argparse.Namespace, report: _Reporter, directory: Path) -> None:
    from dotsd.dtls.context import DtlsConfig
    from dotsd.dtls.context import client_context as dtls_client_context
    from dotsd.tls.context import client_context as tls_client_context

    pki = init_pki(directory / "pki")
    report("demo", f"temporary PKI in {pki.directory}: private CA, server and client "
                   "certificates (ECDSA P-256)")
    async with _server(report, directory) as (_server_obj, port):
        client = SignalClient.for_certificate(load_certificate(pki.client_cert),
                                              timeout=STEP_TIMEOUT)
        dialer = ServerDialer(
            client.node, "127.0.0.1", port,
            dtls=dtls_client_context(DtlsConfig.from_pki(pki, client=True))
            if args.transport != "tls" else None,
            tls=tls_client_context(pki.client_cert, pki.client_key, pki.ca_cert)
            if args.transport != "dtls" else None)
        client.connect = dialer.dial
        client.on_redirect = dialer.redirect
        try:
            await client.start()
            report("client", f"session up over {dialer.current}; cuid {client.cuid} "
                             "(from the certificate's public key)", cuid=client.cuid,
                   transport=str(dialer.current))
            config = await client.session_config_get()
            idle = config.current(ConfigSetKind.IDLE)
            report("client", f"session configuration: heartbeat every "
                             f"{idle.heartbeat_interval} s, {idle.missing_hb_allowed} missed "
                             f"allowed, ack-timeout {idle.ack_timeout} s")
            reply = await client.mitigate(SCOPE)
            assert reply.mid is not None
            mid = reply.mid
            report("client", f"mitigation requested for {SCOPE['target-prefix'][0]} tcp/443: "
                             f"{code_str(reply.code)}, mid {mid}, lifetime {reply.lifetime} s",
                   mid=mid)
            async with contextlib.aclosing(client.watch(mid)) as notes:
                status = (await _next(notes)).status
                report("client", f"observing mid {mid}: {status}", status=status)
                while status != "attack-successfully-mitigated":
                    status = (await _next(notes)).status
                    report("client", f"notification: {status}", status=status)
                efficacy = await client.efficacy(mid, "attack-successfully-mitigated")
                report("client", f"efficacy update (attack-successfully-mitigated): "
                                 f"{code_str(efficacy.code)}")
                gone = await client.withdraw(mid)
                report("client", f"withdrawn: {code_str(gone.code)}")
                while status != "dots-client-withdrawn-mitigation":
                    status = (await _next(notes)).status
                    report("client", f"notification: {status}", status=status)
        except ClientError as exc:
            raise CommandError(f"the demo failed: {exc}") from None
        finally:
            await client.close()


def run(args: argparse.Namespace) -> int:
    report = _Reporter(args.json)
    with tempfile.TemporaryDirectory(prefix="dotsd-demo-") as tmp:
        try:
            asyncio.run(asyncio.wait_for(_demo(args, report, Path(tmp)), timeout=60))
        except TimeoutError as exc:
            raise CommandError("the demo did not finish within 60 s") from exc
    report("demo", "done")
    if args.json:
        json.dump({"ok": True, "transport": args.transport, "steps": report.steps},
                  sys.stdout, indent=2)
        sys.stdout.write("\n")
    return 0
