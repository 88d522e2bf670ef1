"""``dotsd demo``: a DOTS server and a DOTS client on loopback, with nothing to set up.

A temporary PKI and state directory; the signal-channel server (RFC 9132) with the ``log``
mitigator, on DTLS and TLS; a client that dials it (Happy Eyeballs, RFC 9132 §4.3), reads the
session configuration, asks mitigation for a documentation prefix, observes it through its status
changes (the mitigator's feedback), sends an efficacy update and withdraws it. Every step is
printed as it happens (``--json``: one report at the end). Exit 0 when all of it worked.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from dotsd.cli import CommandError, Subparsers

if TYPE_CHECKING:  # the rest of dotsd is loaded when the demo runs, not to parse its options
    from dotsd.agents.client import Reply
    from dotsd.agents.server import SignalServer

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
    from dotsd.agents.serve import ServeError, serve
    from dotsd.agents.settings import ServerSettings
    from dotsd.mitigate.base import Feedback
    from dotsd.signal.mitigation import Change

    settings = ServerSettings(bind="127.0.0.1", port=0, pki=directory / "pki",
                              state=directory / "state")
    try:
        agent = await serve(settings)
    except ServeError as exc:
        raise CommandError(f"the demo server did not start: {exc}") from exc
    name = agent.mitigator.name

    def on_change(change: Change) -> None:
        m = change.mitigation
        report("server", f"mid {m.mid}: {change.before.label if change.before else 'new'} → "
                         f"{m.status.label} ({change.reason.value}); order to the "
                         f"'{name}' mitigator")

    def on_feedback(fb: Feedback) -> None:
        if fb.status is not None:
            report("mitigator", f"mid {fb.mid}: {fb.status.value}")

    agent.server.add_listener(on_change)
    agent.bridge.add_feedback_listener(on_feedback)
    try:
        report("server", f"DOTS server on 127.0.0.1:{agent.port} (DTLS and TLS), lab mode: "
                         "documentation prefixes only", port=agent.port)
        yield agent.server, agent.port
    finally:
        await agent.close()


async def _next(notes: AsyncIterator[Reply]) -> Reply:
    import asyncio

    try:
        return await asyncio.wait_for(anext(notes), STEP_TIMEOUT)
    except (TimeoutError, StopAsyncIteration):
        raise CommandError("no status notification came in time") from None


async def _demo(args: argparse.Namespace, report: _Reporter, directory: Path) -> None:
    from dotsd.agents.client import ClientError
    from dotsd.agents.connect import ClientSettings, new_client
    from dotsd.coap.numbers import code_str
    from dotsd.pki import init_pki
    from dotsd.signal.config import ConfigSetKind

    pki = init_pki(directory / "pki")
    report("demo", f"temporary PKI in {pki.directory}: private CA, server and client "
                   "certificates (ECDSA P-256)")
    async with _server(report, directory) as (_server_obj, port):
        transports = ("dtls", "tls") if args.transport == "auto" else (args.transport,)
        client = new_client(ClientSettings("127.0.0.1", port, pki=pki.directory,
                                           transports=transports, timeout=STEP_TIMEOUT))
        dialer = client.dialer
        assert dialer is not None
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
    import asyncio

    report = _Reporter(args.json)
    import tempfile

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
