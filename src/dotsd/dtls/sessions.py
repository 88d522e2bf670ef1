"""A DTLS client session as bytes, to resume it from another process (RFC 9132 §7.1: "DTLS
session resumption ... SHOULD be supported"; §7.2 under attack: an abbreviated handshake
is one round trip shorter, and its flights carry no certificates).

The bytes are OpenSSL's DER encoding of the session (``i2d_SSL_SESSION``): they hold the
master secret, so whoever stores them keeps them as private as the client's key. Parsing
is OpenSSL's (``d2i_SSL_SESSION``); bytes it refuses give None.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Final

from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

if TYPE_CHECKING:
    from dotsd.dtls.context import DtlsContext

__all__ = ["MAX_SESSION_BYTES", "credentials_digest", "session_from_der", "session_to_der"]

MAX_SESSION_BYTES: Final = 16384  # a session with a ticket and a peer certificate: ~2 KiB


def session_to_der(session: SSL.Session) -> bytes | None:
    """The session's DER encoding, or None if OpenSSL cannot encode it."""
    handle = session._session  # type: ignore[attr-defined]
    size = _lib.i2d_SSL_SESSION(handle, _ffi.NULL)
    if size <= 0 or size > MAX_SESSION_BYTES:
        return None
    buf = _ffi.new("unsigned char[]", size)
    cursor = _ffi.new("unsigned char **", buf)
    if _lib.i2d_SSL_SESSION(handle, cursor) != size:
        return None
    return bytes(_ffi.buffer(buf, size))


def session_from_der(data: bytes, context: DtlsContext) -> SSL.Session | None:
    """A session from :func:`session_to_der`'s bytes, to resume with a connection of
    ``context`` (pyOpenSSL resumes only sessions of the same context); None for anything
    OpenSSL refuses."""
    if not data or len(data) > MAX_SESSION_BYTES:
        return None
    buf = _ffi.new("unsigned char[]", data)
    cursor = _ffi.new("unsigned char **", buf)
    handle = _lib.d2i_SSL_SESSION(_ffi.NULL, cursor, len(data))
    if handle == _ffi.NULL:
        _lib.ERR_clear_error()
        return None
    session = SSL.Session.__new__(SSL.Session)
    session._session = _ffi.gc(handle, _lib.SSL_SESSION_free)  # type: ignore[attr-defined]
    session._context = context.ssl_context  # type: ignore[attr-defined]
    return session


def credentials_digest(context: DtlsContext) -> str:
    """What a stored session is valid for: a digest of the client's credentials (PSK identity
    and key, certificate, private key and CA files). A session made with other credentials
    must not be resumed: it would authenticate with a key the operator replaced."""
    config = context.config
    digest = hashlib.sha256(b"dotsd-dtls-credentials\0")
    for part in (config.psk_identity, config.psk_key):
        digest.update(len(part or b"").to_bytes(4, "big") + (part or b""))
    for path in (config.cert, config.key, config.ca):
        try:
            data = path.read_bytes() if path is not None else b""
        except OSError:
            data = b"\xff unreadable"
        digest.update(len(data).to_bytes(4, "big") + data)
    return digest.hexdigest()
