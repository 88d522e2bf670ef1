"""What a link is, shared by every layer: the bottom of the package, importing nothing of dotsd.

A *link* is one established path to one peer: a UDP address, a DTLS session, or a TCP/TLS
connection. Who dialled (``initiator``) says nothing about who is CoAP client or server:
both may send requests on any link (RFC 9066 Call Home reverses the usual roles).

The transports (:mod:`dotsd.transport`) make links; the CoAP node drives them through the
:class:`Link` and :class:`LinkHandler` protocols; the layers above identify the peer by its
:class:`PeerInfo`. The 'cuid' derivations of RFC 9132 §4.4.1.1 live here too, next to
:func:`spki_sha256`, so that the PKI tools and the signal channel derive it the same way.

RFC 9132 §4.4.1.1 ('cuid'): "implementations SHOULD set 'cuid' using the following procedure:
first, the DOTS client inputs one of the following into the SHA-256 cryptographic hash: the
DER-encoded ASN.1 representation of the Subject Public Key Info (SPKI) of its X.509
certificate, its raw public key, the 'PSK identity' it uses in the TLS 1.2 ClientKeyExchange
message, or the 'identity' it uses in the 'pre_shared_key' TLS 1.3 extension. Then, the output
of the cryptographic hash algorithm is truncated to 16 bytes ...  The truncated output is then
base64url encoded (Section 5 of RFC 4648) with the two trailing '=' removed from the encoding".
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from typing import Final, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = ["CUID_HASH_BYTES", "Address", "Link", "LinkHandler", "PeerInfo", "cuid_from_digest",
           "cuid_from_psk_identity", "cuid_from_spki_sha256", "make_peer_info", "spki_sha256"]

Address = tuple[str, int] | tuple[str, int, int, int]


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """Who is at the other end, as the transport authenticated it."""

    address: Address
    transport: str  # "udp", "dtls", "tcp" or "tls"
    initiator: bool  # True when this side dialled
    certificate: x509.Certificate | None = None
    psk_identity: bytes | None = None
    spki_sha256: bytes | None = field(default=None, compare=False)
    # A round trip measured while the link came up (the DTLS handshake), seconds: a first
    # RTT estimate for what runs over the link.
    rtt: float | None = field(default=None, compare=False)

    @property
    def reliable(self) -> bool:
        return self.transport in ("tcp", "tls")

    @property
    def secure(self) -> bool:
        return self.transport in ("dtls", "tls")


def spki_sha256(cert: x509.Certificate) -> bytes:
    """SHA-256 of the DER SubjectPublicKeyInfo (RFC 9132 §4.4.1 derives the cuid from it)."""
    der = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).digest()


def make_peer_info(address: Address, transport: str, initiator: bool,
                   certificate: x509.Certificate | None = None,
                   psk_identity: bytes | None = None, rtt: float | None = None) -> PeerInfo:
    return PeerInfo(address, transport, initiator, certificate, psk_identity,
                    spki_sha256(certificate) if certificate is not None else None, rtt)


class Link(Protocol):
    """One path to a peer. ``send`` takes one datagram (UDP, DTLS) or stream bytes (TCP, TLS)."""

    @property
    def info(self) -> PeerInfo: ...

    def send(self, data: bytes) -> None: ...

    def close(self) -> None: ...

    def __hash__(self) -> int: ...


class LinkHandler(Protocol):
    """Implemented by the layer above (the CoAP node); called by transports."""

    def link_up(self, link: Link) -> None:
        """A link is ready: after the (D)TLS handshake, or at once for plain UDP/TCP."""

    def data_received(self, link: Link, data: bytes) -> None:
        """One datagram (UDP, DTLS) or a chunk of the byte stream (TCP, TLS)."""

    def link_down(self, link: Link, reason: str | None) -> None:
        """The link is gone (closed, idle timeout, alert, connection reset)."""


CUID_HASH_BYTES: Final = 16  # RFC 9132 §4.4.1.1: SHA-256 output truncated to 16 bytes


def cuid_from_digest(digest: bytes) -> str:
    """base64url (RFC 4648 §5) of the first 16 bytes of a SHA-256 digest, without padding:
    22 characters (RFC 9132 §4.4.1.1)."""
    if len(digest) != hashlib.sha256().digest_size:
        raise ValueError("a SHA-256 digest has 32 bytes")
    text = base64.urlsafe_b64encode(digest[:CUID_HASH_BYTES]).decode("ascii")
    return text.rstrip("=")


def cuid_from_spki_sha256(spki_sha256: bytes) -> str:
    """The 'cuid' of a certificate (or raw public key) whose DER SPKI hashes to
    ``spki_sha256`` (:func:`spki_sha256`)."""
    return cuid_from_digest(spki_sha256)


def cuid_from_psk_identity(psk_identity: bytes) -> str:
    """The 'cuid' of a PSK client: SHA-256 of its PSK identity (RFC 9132 §4.4.1.1)."""
    return cuid_from_digest(hashlib.sha256(psk_identity).digest())
