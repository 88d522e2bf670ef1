"""What a :class:`~dotsd.dtls.connection.DtlsConnection` reports (``next_event()``)."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509


@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    """The peer is authenticated: by its certificate, or by the PSK of ``psk_identity``."""

    certificate: x509.Certificate | None
    psk_identity: bytes | None
    resumed: bool


@dataclass(frozen=True, slots=True)
class DataReceived:
    """The plaintext of one application-data record (one CoAP message)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The connection is over; ``reason`` says why (peer's alert, timeout, local close...)."""

    reason: str


DtlsEvent = HandshakeCompleted | DataReceived | ConnectionClosed
