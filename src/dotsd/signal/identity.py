"""Who a DOTS client is, and which 'cuid' it must use (RFC 9132 §4.4.1.1, §8).

RFC 9132 §4.4.1.1 ('cuid'): "implementations SHOULD set 'cuid' using the following procedure:
first, the DOTS client inputs one of the following into the SHA-256 cryptographic hash: the
DER-encoded ASN.1 representation of the Subject Public Key Info (SPKI) of its X.509
certificate, its raw public key, the 'PSK identity' it uses in the TLS 1.2 ClientKeyExchange
message, or the 'identity' it uses in the 'pre_shared_key' TLS 1.3 extension. Then, the output
of the cryptographic hash algorithm is truncated to 16 bytes ...  The truncated output is then
base64url encoded (Section 5 of RFC 4648) with the two trailing '=' removed from the encoding".

The transport authenticates the peer (mutual (D)TLS, RFC 9132 §8); :func:`client_identity`
turns its :class:`~dotsd.transport.base.PeerInfo` into a :class:`ClientIdentity`: the stable
text the server binds a 'cuid' to (``dotsd.store`` ``bind_cuid``) and the 'cuid' derived as
above. Sans-IO: no store, no clock.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Final

from dotsd.transport.base import PeerInfo, spki_sha256

__all__ = ["CUID_HASH_BYTES", "ClientIdentity", "client_identity", "cuid_from_digest",
           "cuid_from_psk_identity", "cuid_from_spki_sha256"]

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
    ``spki_sha256`` (:func:`dotsd.transport.base.spki_sha256`)."""
    return cuid_from_digest(spki_sha256)


def cuid_from_psk_identity(psk_identity: bytes) -> str:
    """The 'cuid' of a PSK client: SHA-256 of its PSK identity (RFC 9132 §4.4.1.1)."""
    return cuid_from_digest(hashlib.sha256(psk_identity).digest())


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    """An authenticated DOTS client.

    ``identity``: the text the server binds 'cuid' values to (``spki-sha256:<hex>`` for a
    certificate, ``psk:<hex>`` for a PSK identity), the whole hash so that two clients whose
    truncated hashes collide are still told apart (RFC 9132 §4.4.1.3 cuid collision).
    ``cuid``: the 'cuid' derived per RFC 9132 §4.4.1.1.
    """

    identity: str
    cuid: str


def client_identity(peer: PeerInfo) -> ClientIdentity | None:
    """The identity of an authenticated peer; None for an unauthenticated one (plain UDP/TCP,
    which RFC 9132 §8 does not allow for the signal channel)."""
    digest = peer.spki_sha256
    if digest is None and peer.certificate is not None:
        digest = spki_sha256(peer.certificate)
    if digest is not None:
        return ClientIdentity(f"spki-sha256:{digest.hex()}", cuid_from_spki_sha256(digest))
    if peer.psk_identity is not None:
        return ClientIdentity(f"psk:{peer.psk_identity.hex()}",
                              cuid_from_psk_identity(peer.psk_identity))
    return None
