"""Who a DOTS client is, and which 'cuid' it must use (RFC 9132 §4.4.1.1, §8).

The transport authenticates the peer (mutual (D)TLS, RFC 9132 §8); :func:`client_identity`
turns its :class:`~dotsd.link.PeerInfo` into a :class:`ClientIdentity`: the stable text the
server binds a 'cuid' to (``dotsd.store`` ``bind_cuid``) and the 'cuid' derived per RFC 9132
§4.4.1.1 (:func:`~dotsd.link.cuid_from_spki_sha256`, :func:`~dotsd.link.cuid_from_psk_identity`,
which :mod:`dotsd.link` quotes). Sans-IO: no store, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from dotsd.link import PeerInfo, cuid_from_psk_identity, cuid_from_spki_sha256, spki_sha256

__all__ = ["ClientIdentity", "client_identity"]


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
