"""``dotsd server``: the DOTS signal-channel server (RFC 9132) as an operator runs it.

DTLS over UDP and TLS over TCP on the same port (RFC 9132 §4.3: both are defined on the
default port 4646, registries.md), mutual certificate authentication from a dotsd PKI
directory, durable state in ``--state`` (SQLite), mitigations handed to a mitigator plugin.
Without a policy the server runs in lab mode: the documentation prefixes only, and it says so.
Runs until SIGTERM / SIGINT, then closes the links, waits (bounded) for the mitigator and
closes the store: exit 0.

Exit codes: 0 clean stop, 1 start failure (one ``dotsd: error:`` line), 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any, Final

from dotsd.cli import CommandError, Subparsers
from dotsd.mitigate import registry
from dotsd.mitigate.base import MitigatorError
from dotsd.mitigate.bridge import MitigatorBridge
from dotsd.pki import PkiPaths
from dotsd.signal.policy import LAB
from dotsd.signal.server import SignalServer
from dotsd.store.base import StoreError
from dotsd.store.sqlite import SqliteStore

DEFAULT_PORT: Final = 4646  # RFC 9132 §4.3 / registries.md: "dots-signal" UDP and TCP

log = logging.getLogger("dotsd.server")


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "server", help="run a DOTS server (signal channel over DTLS and TLS)",
        description="Run a DOTS signal-channel server (RFC 9132): DTLS/UDP and TLS/TCP on "
                    "the same port, mutual certificate authentication, state kept in "
                    "--state. Stops cleanly on SIGTERM or SIGINT.")
    parser.add_argument("--pki", required=True, metavar="DIR",
                        help="PKI directory with ca.pem, server.pem, server.key "
                             "(dotsd pki init DIR)")
    parser.add_argument("--state", required=True, metavar="DIR",
                        help="state directory (created if missing; SQLite database)")
    parser.add_argument("--bind", default="::", metavar="ADDR",
                        help="address to listen on (default :: = every IPv6 and IPv4 address)")
    parser.add_argument("--port", type=_port, default=DEFAULT_PORT,
                        help=f"UDP and TCP port (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--mitigator", default=registry.DEFAULT, metavar="NAME",
                        help="mitigator plugin (default %(default)s)")
    parser.add_argument("--no-tls", action="store_true",
                        help="serve DTLS only (no TLS over TCP)")
    parser.set_defaults(func=run)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 0-65535: {value}")
    return value


def _check_pki(pki: PkiPaths) -> None:
    for path in (pki.ca_cert, pki.server_cert, pki.server_key):
        if not path.is_file():
            raise CommandError(f"{path}: missing (create a PKI with: dotsd pki init "
                               f"{pki.directory})")


def _say(args: argparse.Namespace, text: str, **fields: Any) -> None:
    if args.json:
        sys.stdout.write(json.dumps({"event": text, **fields}) + "\n")
    else:
        sys.stdout.write(text + "\n")
    sys.stdout.flush()


async def _serve(args: argparse.Namespace) -> None:
    from dotsd.dtls.context import DtlsConfig
    from dotsd.dtls.context import server_context as dtls_server_context
    from dotsd.tls.context import server_context as tls_server_context
    from dotsd.transport.dtls import serve_dtls
    from dotsd.transport.tcp import serve_tcp

    pki = PkiPaths.of(args.pki)
    _check_pki(pki)
    try:
        store = SqliteStore.open(Path(args.state))
    except StoreError as exc:
        raise CommandError(f"state {args.state}: {exc}") from exc
    listeners: list[Any] = []
    server: SignalServer | None = None
    bridge: MitigatorBridge | None = None
    try:
        try:
            bridge_holder: list[MitigatorBridge] = []
            mitigator = registry.create(
                args.mitigator, report=lambda fb: bridge_holder[0].feedback(fb))
        except (MitigatorError, LookupError, ValueError) as exc:
            raise CommandError(str(exc) if isinstance(exc, LookupError)
                               else f"mitigator {args.mitigator!r}: {exc}") from exc
        bridge = MitigatorBridge(mitigator)
        bridge_holder.append(bridge)
        server = SignalServer(store=store, policy=LAB)
        bridge.attach(server)
        await mitigator.start()
        resumed = bridge.resume(server.table)
        try:
            dtls = await serve_dtls(server.node, args.bind, args.port,
                                    dtls_server_context(DtlsConfig.from_pki(pki)))
            listeners.append(dtls)
            port = dtls.port
            if not args.no_tls:
                tls = await serve_tcp(server.node, args.bind, port, tls_server_context(
                    pki.server_cert, pki.server_key, pki.ca_cert))
                listeners.append(tls)
        except OSError as exc:
            raise CommandError(f"cannot listen on [{args.bind}]:{args.port}: "
                               f"{exc.strerror or exc}") from exc
        server.start()
        # The policy: until operator policy files exist, lab mode (issue 4, RFC 9132 §4.4.1:
        # targets outside the client's domain are refused).
        _say(args, "lab mode: mitigation only for the documentation prefixes "
                   "2001:db8::/32, 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24",
             mode="lab")
        log.warning("lab mode: documentation prefixes only")
        transports = "dtls" if args.no_tls else "dtls+tls"
        _say(args, f"listening on [{args.bind}]:{port} ({transports}), state {args.state}, "
                   f"mitigator {mitigator.name}, {resumed} active mitigation(s) resumed",
             bind=args.bind, port=port, transports=transports.split("+"),
             state=str(args.state), mitigator=mitigator.name, resumed=resumed)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        _say(args, "stopping", reason="signal")
    finally:
        for listener in listeners:
            with contextlib.suppress(Exception):
                listener.close()
        if server is not None:
            await server.close()
            await server.node.close()
        if bridge is not None:
            await bridge.drain(5.0)
            with contextlib.suppress(Exception):
                await bridge.mitigator.stop()
        store.close()


def run(args: argparse.Namespace) -> int:
    asyncio.run(_serve(args))
    return 0
