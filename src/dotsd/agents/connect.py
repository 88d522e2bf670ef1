"""One assembly of a DOTS client agent: :func:`connect` takes a :class:`ClientSettings`.

    client = await connect(ClientSettings("dots.example.net", pki=Path("/etc/dotsd/pki")))
    reply = await client.mitigate({"target-prefix": ["2001:db8:6401::1/128"]})
    await client.close()

It loads the client's credentials (a certificate from the PKI directory, or a DTLS pre-shared
key, RFC 9132 §8), derives the 'cuid' from them (§4.4.1.1), builds the
:class:`~dotsd.agents.client.SignalClient` with its
:class:`~dotsd.agents.dial.ServerDialer` (Happy Eyeballs over DTLS and TLS, IPv6 and IPv4,
§4.3; redirection, §4.6) and dials. :func:`new_client` does the same without dialing. The
``dotsd client`` command, ``dotsd demo`` and the tests use them.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from dotsd.agents.client import SignalClient
from dotsd.agents.dial import ServerDialer
from dotsd.agents.settings import DEFAULT_PORT, TRANSPORTS
from dotsd.errors import LocalError
from dotsd.link import Link
from dotsd.signal.client_session import REDIAL_MIN

__all__ = ["ClientSettings", "ConnectError", "connect", "new_client"]

DEFAULT_TIMEOUT: Final = 10.0

log = logging.getLogger("dotsd.client")


class ConnectError(LocalError):
    """The client cannot be set up as configured (the message says why); ``usage`` marks a
    contradiction in the settings themselves (e.g. a PSK over TLS)."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """Everything a DOTS client agent needs.

    ``host``/``port``: the provisioned DOTS server (RFC 9132 §4.1); ``addresses``: its
    addresses when configured (else ``host`` is resolved, §4.3); ``pki`` and ``cert``: the
    directory holding ``ca.pem``, ``CERT.pem`` and ``CERT.key``; or ``psk_identity`` and
    ``psk_key`` for a client without a certificate (DTLS only); ``transports``: which of
    "dtls" and "tls" to try; ``timeout``: per request and per connection attempt;
    ``heartbeat``: a fixed ('heartbeat-interval', 'missing-hb-allowed') instead of the
    negotiated values (0 turns heartbeats off, for one-shot commands); ``refresh``: refresh
    the session configuration before its Max-Age runs out (§4.5.3); ``listen``: (address,
    port) where this client waits for its Call Home DOTS server to dial it (RFC 9066 §5.1:
    the client is then the (D)TLS server, with its certificate, which must allow serverAuth)
    instead of dialing ``host``; ``redial_interval``: between the starts of two attempts to
    re-establish a lost session (RFC 9132 §4.7: at least 60 s; less only in a test bed).
    """

    host: str
    port: int = DEFAULT_PORT
    addresses: tuple[str, ...] = ()
    pki: Path | None = None
    cert: str = "client"
    psk_identity: bytes | None = None
    psk_key: bytes | None = None
    transports: tuple[str, ...] = TRANSPORTS
    timeout: float = DEFAULT_TIMEOUT
    heartbeat: tuple[float, int] | None = None
    refresh: bool = True
    listen: tuple[str, int] | None = None
    redial_interval: float = REDIAL_MIN


def new_client(settings: ClientSettings) -> SignalClient:
    """A client with its dialer, not yet connected (``await client.start()`` dials)."""
    from dotsd.dtls.context import DtlsConfig, DtlsConfigError, DtlsContext
    from dotsd.dtls.context import client_context as dtls_client_context
    from dotsd.pki import load_certificate
    from dotsd.tls.context import client_context as tls_client_context

    if settings.redial_interval < REDIAL_MIN:
        log.warning("redial interval %g s: below RFC 9132 §4.7's 60 s (test beds only)",
                    settings.redial_interval)
    unknown = set(settings.transports) - set(TRANSPORTS)
    if unknown or not settings.transports:
        raise ConnectError(f"transports: {sorted(unknown) or 'none'}; expected some of "
                           f"{', '.join(TRANSPORTS)}", usage=True)
    dtls: DtlsContext | None = None
    if settings.psk_identity is not None:
        if settings.psk_key is None:
            raise ConnectError("a PSK identity needs its key", usage=True)
        if "dtls" not in settings.transports:
            raise ConnectError("a pre-shared key works over DTLS only (RFC 9132 §8)",
                               usage=True)
        try:
            dtls = dtls_client_context(DtlsConfig(psk_identity=settings.psk_identity,
                                                  psk_key=settings.psk_key))
        except DtlsConfigError as exc:
            raise ConnectError(f"PSK: {exc}", usage=True) from None
        client = SignalClient.for_psk(settings.psk_identity, timeout=settings.timeout,
                                      heartbeat=settings.heartbeat, refresh=settings.refresh,
                                      reconnect_delay=settings.redial_interval)
        tls = None
    elif settings.pki is not None:
        pki = settings.pki
        name = settings.cert
        cert, key, ca = pki / f"{name}.pem", pki / f"{name}.key", pki / "ca.pem"
        for path in (ca, cert, key):
            if not path.is_file():
                raise ConnectError(f"{path}: missing (create a PKI with: dotsd pki init {pki})")
        try:
            certificate = load_certificate(cert)
            if "dtls" in settings.transports:
                dtls = dtls_client_context(DtlsConfig(cert=cert, key=key, ca=ca))
            tls = (tls_client_context(cert, key, ca) if "tls" in settings.transports
                   else None)
        except (DtlsConfigError, ValueError, OSError) as exc:
            raise ConnectError(f"{pki}: cannot load the client credentials {name!r}: "
                               f"{exc}") from None
        client = SignalClient.for_certificate(certificate, timeout=settings.timeout,
                                              heartbeat=settings.heartbeat,
                                              refresh=settings.refresh,
                                              reconnect_delay=settings.redial_interval)
    else:
        raise ConnectError("no credentials: a PKI directory (a certificate) or a PSK identity "
                           "and key", usage=True)
    client.use_dialer(ServerDialer(client.node, settings.host, settings.port, dtls=dtls,
                                   tls=tls, addresses=settings.addresses,
                                   timeout=settings.timeout,
                                   attack=lambda: client.mitigating,
                                   rtt=lambda: client.estimator.srtt))
    return client


async def connect(settings: ClientSettings) -> SignalClient:
    """A client connected to its DOTS server (raises ``DialError`` when none answers); with
    ``settings.listen``, once its Call Home DOTS server has dialed it (``TimeoutError`` when
    none did within ``settings.timeout``)."""
    client = new_client(settings)
    try:
        if settings.listen is None:
            await client.start()
        else:
            await _await_call_home(client, settings)
    except BaseException:
        await client.close()
        raise
    return client


async def _await_call_home(client: SignalClient, settings: ClientSettings) -> None:
    """RFC 9066 §5.1: listen, as the (D)TLS server, for the Call Home DOTS server; every link
    it makes becomes the client's session (a lost session waits for the next one: the
    client does not dial)."""
    from dotsd.dtls.context import DtlsConfig
    from dotsd.dtls.context import server_context as dtls_server_context
    from dotsd.tls.context import server_context as tls_server_context
    from dotsd.transport.dtls import serve_dtls
    from dotsd.transport.tcp import serve_tcp

    assert settings.listen is not None
    if settings.pki is None:
        raise ConnectError("a Call Home DOTS client needs a certificate (--pki)", usage=True)
    host, port = settings.listen
    pki, name = settings.pki, settings.cert
    cert, key, ca = pki / f"{name}.pem", pki / f"{name}.key", pki / "ca.pem"
    client.connect = None  # RFC 9066: the server dials
    client.on_redirect = None
    first: asyncio.Future[Link] = asyncio.get_running_loop().create_future()

    def link_up(link: Link) -> None:
        if not first.done():
            first.set_result(link)
        else:
            asyncio.get_running_loop().create_task(client.start(link))

    client.node.add_link_listener(up=link_up)
    if "dtls" in settings.transports:
        dtls = await serve_dtls(client.node, host, port, dtls_server_context(
            DtlsConfig(cert=cert, key=key, ca=ca)))
        client.on_close(dtls.close)
        port = dtls.port
    if "tls" in settings.transports:
        tls = await serve_tcp(client.node, host, port, tls_server_context(cert, key, ca))
        client.on_close(tls.close)
    await client.start(await asyncio.wait_for(first, settings.timeout))
