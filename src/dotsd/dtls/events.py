"""What a :class:`~dotsd.dtls.connection.DtlsConnection` reports (``next_event()``).

Events are slotted dataclasses, not frozen ones (one is built per message and a frozen
init costs about 1 µs more); treat them as immutable.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509


@dataclass(slots=True)
class HandshakeCompleted:
    """The peer is authenticated: by its certificate, or by the PSK of ``psk_identity``."""

    certificate: x509.Certificate | None
    psk_identity: bytes | None
    resumed: bool


@dataclass(slots=True)
class DataReceived:
    """The plaintext of one application-data record (one CoAP message)."""

    data: bytes


@dataclass(slots=True)
class ConnectionClosed:
    """The connection is over; ``reason`` says why (peer's alert, timeout, local close...)."""

    reason: str


DtlsEvent = HandshakeCompleted | DataReceived | ConnectionClosed
