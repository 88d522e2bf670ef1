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

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from dotsd.agents.client import SignalClient
from dotsd.agents.dial import ServerDialer
from dotsd.agents.settings import DEFAULT_PORT, TRANSPORTS
from dotsd.errors import LocalError

__all__ = ["ClientSettings", "ConnectError", "connect", "new_client"]

DEFAULT_TIMEOUT: Final = 10.0


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
    the session configuration before its Max-Age runs out (§4.5.3).
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


def new_client(settings: ClientSettings) -> SignalClient:
    """A client with its dialer, not yet connected (``await client.start()`` dials)."""
    from dotsd.dtls.context import DtlsConfig, DtlsConfigError, DtlsContext
    from dotsd.dtls.context import client_context as dtls_client_context
    from dotsd.pki import load_certificate
    from dotsd.tls.context import client_context as tls_client_context

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
                                      heartbeat=settings.heartbeat, refresh=settings.refresh)
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
                                              refresh=settings.refresh)
    else:
        raise ConnectError("no credentials: a PKI directory (a certificate) or a PSK identity "
                           "and key", usage=True)
    client.use_dialer(ServerDialer(client.node, settings.host, settings.port, dtls=dtls,
                                   tls=tls, addresses=settings.addresses,
                                   timeout=settings.timeout,
                                   attack=lambda: client.mitigating))
    return client


async def connect(settings: ClientSettings) -> SignalClient:
    """A client connected to its DOTS server (raises ``DialError`` when none answers)."""
    client = new_client(settings)
    try:
        await client.start()
    except BaseException:
        await client.close()
        raise
    return client
