"""DTLS 1.2 for the DOTS signal channel (RFC 9132 §7.1), sans I/O.

- :mod:`~dotsd.dtls.context`: OpenSSL contexts (X.509 mutual authentication, PSK);
- :mod:`~dotsd.dtls.cookie`: the stateless cookie exchange (RFC 6347 §4.2.1);
- :mod:`~dotsd.dtls.connection`: one association, driven with datagrams and ``now``;
- :mod:`~dotsd.dtls.records`: record framing and post-handshake record protection.
"""

from dotsd.dtls.connection import DtlsConnection, DtlsStateError, HandshakeTimers, Retransmit
from dotsd.dtls.context import (
    DEFAULT_MTU,
    DtlsConfig,
    DtlsConfigError,
    DtlsContext,
    client_context,
    server_context,
)
from dotsd.dtls.cookie import ClientHello, CookieJar, HelloCheck, Verdict, parse_client_hello
from dotsd.dtls.events import ConnectionClosed, DataReceived, DtlsEvent, HandshakeCompleted

__all__ = [
    "DEFAULT_MTU",
    "ClientHello",
    "ConnectionClosed",
    "CookieJar",
    "DataReceived",
    "DtlsConfig",
    "DtlsConfigError",
    "DtlsConnection",
    "DtlsContext",
    "DtlsEvent",
    "DtlsStateError",
    "HandshakeCompleted",
    "HandshakeTimers",
    "HelloCheck",
    "Retransmit",
    "Verdict",
    "client_context",
    "parse_client_hello",
    "server_context",
]
