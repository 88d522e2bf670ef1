"""``ssl.SSLContext`` factories for the DOTS signal and data channels over TLS.

RFC 9132 §7.1: TLS 1.2 or later only, RFC 7525 recommendations, mutual authentication with
PKIX certificates and RFC 6125 name checks by the client. RFC 8323 §8.2/§11.7: "coap" in
ALPN. The contexts are plain ``ssl`` objects: the asyncio transport (or anything else)
drives them.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Sequence
from typing import Final

StrPath = str | os.PathLike[str]

# RFC 8323 §11.7: the ALPN protocol identifier of CoAP over TLS.
ALPN_COAP: Final = "coap"

# TLS 1.2 suites (RFC 7525 §4.2 with the ECDSA credentials of RFC 7925 §4.4): ECDHE only,
# AEAD only. TLS 1.3 suites are not affected by this string (OpenSSL defaults: AES-GCM and
# ChaCha20-Poly1305).
TLS12_CIPHERS: Final = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
))


def _common(ctx: ssl.SSLContext, cert: StrPath | None, key: StrPath | None, ca: StrPath,
            alpn: Sequence[str] | None, ciphers: str) -> ssl.SSLContext:
    # RFC 9132 §7.1: DOTS agents implement only TLS 1.2 or later.
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(ciphers)
    # RFC 7525 §3.3 (no compression) and §3.5 (no renegotiation).
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.load_verify_locations(cafile=os.fspath(ca))
    if cert is not None:
        ctx.load_cert_chain(os.fspath(cert), None if key is None else os.fspath(key))
    elif key is not None:
        raise ValueError("a private key was given without its certificate")
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def server_context(cert: StrPath, key: StrPath, ca: StrPath, require_client_cert: bool = True,
                   *, alpn: Sequence[str] | None = (ALPN_COAP,),
                   ciphers: str = TLS12_CIPHERS) -> ssl.SSLContext:
    """A TLS server context: our certificate chain and key, the CA that signs client certs.

    With ``require_client_cert`` (the DOTS default, RFC 9132 §7.1: mutual authentication) a
    client without a certificate signed by ``ca`` is refused in the handshake; without it, a
    client certificate is requested and verified if sent, but not required.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    return _common(ctx, cert, key, ca, alpn, ciphers)


def client_context(cert: StrPath | None, key: StrPath | None, ca: StrPath,
                   server_hostname_check: bool = True, *,
                   alpn: Sequence[str] | None = (ALPN_COAP,),
                   ciphers: str = TLS12_CIPHERS) -> ssl.SSLContext:
    """A TLS client context: our certificate chain and key, the CA that signs the server.

    The server's chain is always verified (RFC 9132 §7.1, RFC 5280); its name is checked
    against the name or address dialled (RFC 6125) unless ``server_hostname_check`` is
    False. ``cert``/``key`` may be None to dial without a client certificate.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = server_hostname_check
    ctx.verify_mode = ssl.CERT_REQUIRED
    return _common(ctx, cert, key, ca, alpn, ciphers)
