"""One assembly of a DOTS server agent: :func:`serve` takes a :class:`ServerSettings`.

    agent = await serve(ServerSettings(pki=Path("/etc/dotsd/pki"), state=Path("/var/lib/dotsd")))
    ...                     # agent.port, agent.server (the SignalServer), agent.mitigator
    await agent.close()

It opens the store (reads on the loop, commits in a writer thread:
:mod:`dotsd.agents.storewriter`), makes the mitigator plugin and its bridge, builds the
:class:`~dotsd.agents.server.SignalServer` on a CoAP node with the operator's per-peer limits,
resumes the active mitigations on the plugin, listens on DTLS and TLS on one port (RFC 9132
§4.3), starts the server's timer and applies the redirection; :meth:`ServerAgent.reload`
applies new settings while serving, :meth:`ServerAgent.close` stops in order. The
``dotsd server`` command, ``dotsd demo`` and the tests all use it.

Every failure to start is a :class:`ServeError` with one line for the operator; what was
already opened is closed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dotsd.agents.bridge import MitigatorBridge, MitigatorFactory
from dotsd.agents.server import SignalServer
from dotsd.agents.settings import ServerSettings
from dotsd.agents.statelock import StateLock, StateLockError
from dotsd.agents.storewriter import StoreWriter
from dotsd.coap.params import dots_defaults
from dotsd.coap.site import Site
from dotsd.errors import LocalError
from dotsd.mitigate import registry
from dotsd.mitigate.base import FeedbackSink, Mitigator, MitigatorError
from dotsd.node import CoapNode
from dotsd.pki import PkiPaths
from dotsd.store import SqliteStore, StoreError
from dotsd.store.base import Store

__all__ = ["ServeError", "ServerAgent", "check_pki", "make_mitigator", "serve"]

log = logging.getLogger("dotsd.agents.serve")

# What needs a restart when it changes (everything else is applied by ServerAgent.reload).
RESTART_FIELDS = ("bind", "port", "transports", "pki", "state", "mitigator", "endpoint",
                  "listener_limits", "listen", "call_home")


class ServeError(LocalError):
    """The server cannot start as configured (the message says why, for the operator)."""


def check_pki(pki: PkiPaths) -> None:
    """The server's certificate, key and CA must exist (RFC 9132 §8: mutual authentication)."""
    for path in (pki.ca_cert, pki.server_cert, pki.server_key):
        if not path.is_file():
            raise ServeError(f"{path}: missing (create a PKI with: dotsd pki init "
                             f"{pki.directory})")


def make_mitigator(settings: ServerSettings, report: FeedbackSink | None) -> Mitigator:
    """The configured plugin, its options checked by its constructor (before serving)."""
    name = settings.mitigator.name
    try:
        return registry.create(name, settings.mitigator.options, report=report)
    except (MitigatorError, LookupError, ValueError) as exc:
        raise ServeError(str(exc) if isinstance(exc, LookupError)
                         else f"mitigator {name!r}: {exc}") from exc


class CallHomeDialer:
    """Keeps a link from the server's node to one Call Home DOTS client (RFC 9066 §5.1): the
    DOTS server is the (D)TLS client, with its own certificate, and dials with Happy Eyeballs
    (RFC 9132 §4.3); when the link goes down it dials again, with a doubling back-off."""

    def __init__(self, node: CoapNode, host: str, port: int, pki: PkiPaths,
                 transports: tuple[str, ...], *, first_delay: float = 1.0,
                 max_delay: float = 60.0) -> None:
        from dotsd.agents.dial import ServerDialer
        from dotsd.dtls.context import DtlsConfig
        from dotsd.dtls.context import client_context as dtls_client_context
        from dotsd.tls.context import client_context as tls_client_context

        cert, key, ca = pki.server_cert, pki.server_key, pki.ca_cert
        self.dialer = ServerDialer(
            node, host, port,
            dtls=dtls_client_context(DtlsConfig(cert=cert, key=key, ca=ca))
            if "dtls" in transports else None,
            tls=tls_client_context(cert, key, ca) if "tls" in transports else None)
        self.node = node
        self.link: Any = None
        self.connected = asyncio.Event()
        self.dials = 0
        self._down = asyncio.Event()
        self._first_delay, self._max_delay = first_delay, max_delay
        node.add_link_listener(down=self._link_down)
        self._task = asyncio.get_running_loop().create_task(self._run())

    def _link_down(self, link: Any, reason: str | None) -> None:
        if link is self.link:
            log.info("call home link to %s down: %s", self.dialer.host, reason)
            self.link = None
            self.connected.clear()
            self._down.set()

    async def _run(self) -> None:
        delay = self._first_delay
        while True:
            try:
                self.link = await self.dialer.dial()
            except Exception as exc:
                log.warning("call home to %s:%d failed: %s (again in %.0f s)",
                            self.dialer.host, self.dialer.port, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_delay)
                continue
            self.dials += 1
            delay = self._first_delay
            self._down.clear()
            self.connected.set()
            log.info("call home: connected to the DOTS client at %s", self.dialer.current)
            await self._down.wait()

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.node.remove_link_listener(down=self._link_down)
        if self.link is not None:
            self.link.close()


@dataclass(eq=False)
class ServerAgent:
    """A running DOTS server: its settings, the signal server, the mitigator bridge, the
    listeners and the port they share."""

    settings: ServerSettings
    server: SignalServer
    bridge: MitigatorBridge
    port: int
    resumed: int
    listeners: list[Any] = field(default_factory=list)
    psk: dict[bytes, bytes] = field(default_factory=dict)  # the DTLS PSK lookup, reloadable
    psk_at_start: bool = False  # whether the DTLS listener was started with PSK lookup
    dialers: list[CallHomeDialer] = field(default_factory=list)  # RFC 9066: links we dial
    closers: list[Callable[[], None]] = field(default_factory=list)

    @property
    def mitigator(self) -> Mitigator:
        return self.bridge.mitigator

    def reload(self, new: ServerSettings) -> list[str]:
        """Apply what can change while serving: the policy and client list, the session
        configuration bounds (for new sessions), the DTLS PSKs and the redirection (RFC 9132
        §4.6). Returns the changed settings that need a restart."""
        self.server.set_policy(new.policy_set, new.session_config)
        self.psk.clear()
        self.psk.update(new.psk_keys)  # the DTLS context looks keys up here
        self.server.redirect(new.redirect)
        current, self.settings = self.settings, new
        restart = list(dict.fromkeys(
            "limits" if name in ("endpoint", "listener_limits") else name
            for name in RESTART_FIELDS if getattr(new, name) != getattr(current, name)))
        if new.psk_keys and not self.psk_at_start:
            restart.append("psk (DTLS PSK is enabled at start when a [[client]] has a psk-key)")
        return restart

    async def close(self) -> None:
        """Stop dialing and listening, stop the server's timer, let the mitigator finish its orders
        (bounded), stop it, close the store."""
        for dialer in self.dialers:
            await dialer.close()
        for listener in self.listeners:
            with contextlib.suppress(Exception):
                listener.close()
        for listener in self.listeners:
            with contextlib.suppress(Exception):
                await listener.wait_closed()
        await self.server.close()
        await self.server.node.close()
        await self.bridge.drain(5.0)
        with contextlib.suppress(Exception):
            await self.bridge.mitigator.stop()
        for close in reversed(self.closers):
            with contextlib.suppress(Exception):
                close()


def _signal_server(settings: ServerSettings, closers: list[Callable[[], None]]
                   ) -> SignalServer:
    """The signal server of ``settings``: its state directory locked, its store opened
    (reads on the loop's connection, commits in a writer thread of their own, answers
    waiting for them), or memory only."""
    store: Store | None = None
    writer: StoreWriter | None = None
    if settings.state is not None:
        state = settings.state
        try:
            # One server per directory of embedded state (dotsd.agents.statelock); held
            # until close, released last (closers run in reverse).
            closers.append(StateLock.acquire(state).release)
        except StateLockError as exc:
            raise ServeError(str(exc)) from exc
        try:
            store = SqliteStore.open(state)
            closers.append(store.close)
            writer = StoreWriter(lambda: SqliteStore.open(state, check=False))
            closers.append(writer.close)
        except StoreError as exc:
            for close in reversed(closers):
                close()
            raise ServeError(f"state {state}: {exc}") from exc
    return SignalServer(store=store, writer=writer, policy=settings.policy_set,
                        config_policy=settings.session_config,
                        node=CoapNode(Site(), config=settings.endpoint, params=dots_defaults()))


async def _listen(agent: ServerAgent, pki: PkiPaths, dtls_options: dict[str, Any] | None
                  ) -> int:
    """Listen on DTLS and TLS on one port (RFC 9132 §4.3; with port 0 the first listener
    picks it and the second follows); returns the port."""
    from dotsd.dtls.context import DtlsConfig
    from dotsd.dtls.context import server_context as dtls_server_context
    from dotsd.tls.context import server_context as tls_server_context
    from dotsd.transport.admission import AdmissionLimits
    from dotsd.transport.dtls import serve_dtls
    from dotsd.transport.tcp import serve_tcp

    settings, node = agent.settings, agent.server.node
    transports = settings.transports if settings.listen else ()
    port = settings.port
    if "dtls" in transports:
        # [[client]] PSKs (DTLS only: Python's ssl has no TLS PSK before 3.13); the dict is
        # refilled by reload, so keys change without a restart.
        agent.psk.update(settings.psk_keys)
        psk = agent.psk
        limits = settings.listener_limits
        options: dict[str, Any] = {
            "max_half_open": limits.pending, "max_half_open_per_source":
            limits.pending_per_source, "max_sessions": limits.dtls_sessions,
            **(dtls_options or {})}
        dtls = await serve_dtls(node, settings.bind, port, dtls_server_context(
            DtlsConfig.from_pki(pki, psk_lookup=psk.get if psk else None)), **options)
        agent.listeners.append(dtls)
        port = dtls.port
    if "tls" in transports:
        limits = settings.listener_limits
        tls = await serve_tcp(node, settings.bind, port, tls_server_context(
            pki.server_cert, pki.server_key, pki.ca_cert), limits=AdmissionLimits(
                total=limits.tls_connections, pending=limits.pending,
                per_source=limits.pending_per_source))
        agent.listeners.append(tls)
        port = tls.port
    return port


async def serve(
    settings: ServerSettings,
    *,
    server: SignalServer | None = None,
    mitigator: MitigatorFactory | None = None,
    dtls_options: dict[str, Any] | None = None,
) -> ServerAgent:
    """Start a DOTS server agent as ``settings`` say (module docstring).

    ``settings.state`` None keeps state in memory only (tests). For tests and embedding:
    ``server``, a SignalServer built by the caller (its own store, clock or policy), used
    instead of one made from the settings; ``mitigator``, a factory used instead of the
    registry's plugin; ``dtls_options``, more arguments for the DTLS listener (handshake
    timers, limits)."""
    if settings.pki is None:
        raise ServeError("no PKI directory given")
    pki = PkiPaths.of(settings.pki)
    check_pki(pki)
    closers: list[Callable[[], None]] = []
    if server is None:
        server = _signal_server(settings, closers)
    elif server.store is not None:
        closers.append(server.store.close)

    def create(report: FeedbackSink) -> Mitigator:
        return make_mitigator(settings, report) if mitigator is None else mitigator(report)

    try:
        bridge = MitigatorBridge(create, server)
    except BaseException:
        for close in reversed(closers):
            with contextlib.suppress(Exception):
                close()
        raise
    agent = ServerAgent(settings, server, bridge, settings.port, 0,
                        psk_at_start=bool(settings.psk_keys), closers=closers)
    try:
        await bridge.mitigator.start()
        agent.resumed = bridge.resume(server.table)
        agent.port = await _listen(agent, pki, dtls_options)
    except OSError as exc:
        await agent.close()
        raise ServeError(f"cannot listen on [{settings.bind}]:{settings.port}: "
                         f"{exc.strerror or exc}") from exc
    except BaseException:
        await agent.close()
        raise
    for host, client_port in settings.call_home:  # RFC 9066 §5.1: the server dials
        agent.dialers.append(CallHomeDialer(server.node, host, client_port, pki,
                                            settings.transports))
    server.start()
    if settings.redirect is not None:
        server.redirect(settings.redirect)
    log.info("DOTS server listening on [%s]:%d (%s)", settings.bind, agent.port,
             "+".join(settings.transports))
    return agent
