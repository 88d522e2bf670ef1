"""A DOTS signal server (dotsd.agents.server) on real DTLS and TLS listeners on loopback, and
dotsd clients dialling it with any certificate of the test PKI.

    async with signal_listeners(pki, tmp_path / "state") as net:
        link = await net.dial_dtls(node, "other")        # client certificate other.pem
        net.server.report(cuid, mid, MitigationEvent.MITIGATING)

Every wait is bounded; the listeners, nodes and the store are closed on exit.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from dotsd.agents.serve import ServerAgent, serve
from dotsd.agents.server import SignalServer
from dotsd.agents.settings import MitigatorSettings, ServerSettings
from dotsd.coap.message import Message
from dotsd.coap.numbers import Code, ContentFormat, OptionNumber
from dotsd.link import Link, spki_sha256
from dotsd.model.codec import to_cbor
from dotsd.node import CoapNode
from dotsd.pki import PkiPaths, load_certificate
from dotsd.store import SqliteStore

HOST = "127.0.0.1"
STEP = 10.0  # seconds any single wait may take


class Clock:
    """Wall-clock epoch seconds that a test can move forward (expiry, withdrawal period)."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def cert_paths(pki: PkiPaths, name: str = "client") -> tuple[Path, Path]:
    """(certificate, key) of a client of the PKI: ``client`` or one made by issue_client."""
    return pki.directory / f"{name}.pem", pki.directory / f"{name}.key"


def cuid_of(pki: PkiPaths, name: str = "client") -> str:
    """The 'cuid' RFC 9132 §4.4.1.1 derives from the certificate's SPKI (computed here, not by
    dotsd.link, so that the server's derivation is checked independently)."""
    digest = spki_sha256(load_certificate(cert_paths(pki, name)[0]))
    return base64.urlsafe_b64encode(digest[:16]).decode("ascii").rstrip("=")


def request(code: Code, path: tuple[str, ...] | str, body: dict[str, Any] | None = None, *,
            payload: bytes | None = None,
            content_format: int | None = ContentFormat.DOTS_CBOR) -> Message:
    """A request with a dots+cbor body (``body``, JSON-shaped) or raw ``payload``."""
    msg = Message(code=code).set_path(path if isinstance(path, str) else "/".join(path))
    if body is not None or payload is not None:
        msg.payload = payload if payload is not None else to_cbor(body or {})
        if content_format is not None:
            msg.add(OptionNumber.CONTENT_FORMAT, content_format)
    return msg


class SignalNet:
    """A SignalServer with DTLS and TLS listeners on one loopback port each."""

    def __init__(self, pki: PkiPaths, server: SignalServer) -> None:
        self.pki = pki
        self.server = server
        self.dtls_port = 0
        self.tls_port = 0
        self.dtls: Any = None
        self.tls: Any = None
        self._closers: list[Callable[[], Any]] = []
        self.agent: ServerAgent | None = None

    def dtls_client_context(self, name: str = "client") -> Any:
        from dotsd.dtls.context import DtlsConfig, client_context

        cert, key = cert_paths(self.pki, name)
        return client_context(DtlsConfig(cert=cert, key=key, ca=self.pki.ca_cert))

    def tls_client_context(self, name: str = "client") -> Any:
        from dotsd.tls.context import client_context

        cert, key = cert_paths(self.pki, name)
        return client_context(cert, key, self.pki.ca_cert)

    async def dial_dtls(self, node: CoapNode, name: str = "client",
                        port: int | None = None, **kw: Any) -> Link:
        """A DTLS link from ``node`` with client certificate ``name`` (to ``port``: e.g. a
        relay; default the server)."""
        from dotsd.transport.dtls import dtls_connect

        link = await dtls_connect(node, (HOST, port or self.dtls_port),
                                  self.dtls_client_context(name), timeout=STEP, **kw)
        self._closers.append(link.close)
        return link

    async def dial_tls(self, node: CoapNode, name: str = "client",
                       port: int | None = None) -> Link:
        from dotsd.transport.tcp import connect_tcp

        link = await connect_tcp(node, HOST, port or self.tls_port,
                                 self.tls_client_context(name), server_hostname="localhost",
                                 timeout=STEP)
        self._closers.append(link.close)
        return link

    async def close(self) -> None:
        for close in reversed(self._closers):
            with contextlib.suppress(Exception):
                close()
        if self.agent is not None:
            await self.agent.close()  # listeners, server, mitigator, store
        await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def signal_listeners(pki: PkiPaths, state: Path | None = None, *, tls: bool = True,
                           dtls_kw: dict[str, Any] | None = None,
                           **server_kw: Any) -> AsyncIterator[SignalNet]:
    """A SignalServer (SQLite store in ``state``, or memory only) serving DTLS (``dtls_kw``:
    more serve_dtls arguments, e.g. handshake timers) and TLS on one port, assembled by
    :func:`dotsd.agents.serve.serve` as the ``dotsd server`` command does."""
    store = SqliteStore.open(state) if state is not None else None
    net = SignalNet(pki, SignalServer(store=store, **server_kw))
    # The log mitigator without feedback: statuses move only as the tests report them.
    quiet = MitigatorSettings("log", {"feedback_delay": None})
    settings = ServerSettings(bind=HOST, port=0, pki=pki.directory, mitigator=quiet,
                              transports=("dtls", "tls") if tls else ("dtls",))
    agent = await serve(settings, server=net.server, dtls_options=dtls_kw)
    net.agent = agent
    net.dtls = agent.listeners[0]
    net.dtls_port = agent.port
    if tls:
        net.tls = agent.listeners[1]
        net.tls_port = agent.port
    try:
        yield net
    finally:
        await net.close()
