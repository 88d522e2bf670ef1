"""``dotsd demo``: the engine at work on loopback, with nothing to set up.

A temporary PKI, a dotsd CoAP server and a dotsd CoAP client with mutual certificates over
DTLS (or TLS), a request and an Observe stream, printed as they happen.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any

from dotsd.cli import CommandError, Subparsers
from dotsd.coap.message import Message
from dotsd.coap.numbers import Code, ContentFormat, OptionNumber, code_str
from dotsd.coap.site import IncomingRequest, Resource, Site
from dotsd.pki import PkiPaths, init_pki
from dotsd.transport.base import Link, PeerInfo
from dotsd.transport.node import CoapNode


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="run a dotsd server and client on loopback and show them talk",
        description="Creates a temporary PKI, starts a dotsd CoAP server and client with "
                    "mutual certificates on loopback, and shows a request and an Observe "
                    "stream. Exits 0 when everything worked.")
    parser.add_argument("--transport", choices=("dtls", "tls"), default="dtls",
                        help="secure transport to use (default: dtls)")
    parser.add_argument("--notifications", type=int, default=5, metavar="N",
                        help="how many Observe notifications to wait for (default: 5)")
    parser.add_argument("--interval", type=float, default=0.3, metavar="S",
                        help="seconds between notifications (default: 0.3)")
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
            print(f"{elapsed:7.3f}s  [{who:6}] {text}", flush=True)


class Hello(Resource):
    def get(self, req: IncomingRequest) -> Message:
        name = _subject(req.peer)
        return Message(code=Code.CONTENT, payload=f"hello, {name}".encode()).add(
            OptionNumber.CONTENT_FORMAT, ContentFormat.TEXT_PLAIN)


class Counter(Resource):
    observable = True

    def __init__(self) -> None:
        self.value = 0

    def get(self, req: IncomingRequest) -> Message:
        return self.representation()

    def representation(self) -> Message:
        return Message(code=Code.CONTENT, payload=str(self.value).encode()).add(
            OptionNumber.CONTENT_FORMAT, ContentFormat.TEXT_PLAIN)


def _subject(peer: PeerInfo) -> str:
    if peer.certificate is not None:
        return peer.certificate.subject.rfc4514_string()
    if peer.psk_identity is not None:
        return f"psk:{peer.psk_identity.decode(errors='replace')}"
    return "anonymous"


async def _serve(transport: str, pki: PkiPaths, node: CoapNode) -> tuple[Any, int]:
    if transport == "tls":
        from dotsd.tls.context import server_context
        from dotsd.transport.tcp import serve_tcp
        server = await serve_tcp(node, "::1", 0, server_context(
            pki.server_cert, pki.server_key, pki.ca_cert))
        return server, server.port
    from dotsd.dtls.context import DtlsConfig
    from dotsd.dtls.context import server_context as dtls_server_context
    from dotsd.transport.dtls import serve_dtls
    dserver = await serve_dtls(node, "::1", 0, dtls_server_context(DtlsConfig.from_pki(pki)))
    return dserver, dserver.port


async def _connect(transport: str, pki: PkiPaths, node: CoapNode, port: int) -> Link:
    if transport == "tls":
        from dotsd.tls.context import client_context
        from dotsd.transport.tcp import connect_tcp
        return await connect_tcp(node, "::1", port, client_context(
            pki.client_cert, pki.client_key, pki.ca_cert), server_hostname="localhost")
    from dotsd.dtls.context import DtlsConfig
    from dotsd.dtls.context import client_context as dtls_client_context
    from dotsd.transport.dtls import dtls_connect
    return await dtls_connect(node, ("::1", port), dtls_client_context(
        DtlsConfig.from_pki(pki, client=True)), timeout=10.0)


async def _demo(args: argparse.Namespace, report: _Reporter, directory: Path) -> None:
    pki = init_pki(directory / "pki")
    report("demo", f"temporary PKI in {pki.directory}: private CA, server and client "
                   "certificates (ECDSA P-256)")
    site = Site()
    counter = Counter()
    site.add("/hello", Hello())
    site.add("/counter", counter)
    server = CoapNode(site)
    server.on_link_up = lambda link: report(
        "server", f"{link.info.transport.upper()} session up with {_subject(link.info)}",
        peer=str(link.info.address), spki_sha256=(link.info.spki_sha256 or b"").hex())
    removed: list[str] = []

    def observer_removed(peer: Hashable, key: Hashable, reason: str) -> None:
        removed.append(reason)
        report("server", f"observer of {key} removed ({reason})")
    server.on_observer_removed = observer_removed

    listener, port = await _serve(args.transport, pki, server)
    scheme = "coaps" if args.transport == "dtls" else "coaps+tcp"
    report("server", f"listening on {scheme}://[::1]:{port} with mutual certificate "
                     "authentication")
    client = CoapNode(Site())
    try:
        started = time.monotonic()
        link = await _connect(args.transport, pki, client, port)
        report("client", f"connected in {1000 * (time.monotonic() - started):.1f} ms; server "
                         f"is {_subject(link.info)}")
        resp = await client.request(link, Message(code=Code.GET).set_path("/hello"), timeout=10)
        report("client", f"GET /hello → {code_str(resp.code)} {resp.payload.decode()!r}")
        if resp.code != Code.CONTENT:
            raise CommandError(f"GET /hello failed: {code_str(resp.code)}")

        obs = client.observe(link, Message(code=Code.GET).set_path("/counter"), timeout=10)
        first = await obs.next(timeout=10)
        report("client", f"observing /counter: value {first.payload.decode()} "
                         f"(Observe seq {first.observe})")
        for _ in range(args.notifications):
            await asyncio.sleep(args.interval)
            counter.value += 1
            server.notify("/counter", lambda peer, req: counter.representation())
            note = await obs.next(timeout=10)
            report("client", f"notification: value {note.payload.decode()} "
                             f"(Observe seq {note.observe})")
            if note.payload != str(counter.value).encode():
                raise CommandError("notification does not carry the current value")
        obs.cancel()
        for _ in range(100):
            if not server.endpoint.observer_count("/counter"):
                break
            await asyncio.sleep(0.02)
        if server.endpoint.observer_count("/counter"):
            raise CommandError("the server still has an observer after deregistration")
        report("client", "deregistered (GET with Observe=1); the server has no observer left")
    finally:
        await client.close()
        await server.close()
        listener.close()


def run(args: argparse.Namespace) -> int:
    if args.notifications < 1:
        raise CommandError("--notifications must be at least 1")
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
