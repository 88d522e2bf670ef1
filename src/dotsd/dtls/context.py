"""``OpenSSL.SSL.Context`` objects for DTLS 1.2, as DOTS profiles it (RFC 9132 §7.1).

Two kinds of credentials, alone or together on a server:

- X.509 mutual authentication: ECDSA P-256 certificates (RFC 7925 §4.4, what
  ``dotsd pki init`` makes). The server requires a client certificate signed by its CA
  file; the client verifies the server's certificate and, by default, its name
  (RFC 6125).
- PSK (RFC 4279, RFC 5489): the client has one identity and key; the server looks keys up
  by identity. aiocoap's tinydtls client speaks only TLS_PSK_WITH_AES_128_CCM_8
  (RFC 6655), which OpenSSL ranks at security level 0: PSK-only contexts allow it unless
  ``allow_ccm8`` is False.

Flights are kept small: only the leaf certificate is sent (no chain), one ECDHE group.
Servers keep a session cache (and issue RFC 5077 tickets: RFC 9132 §7.1 wants resumption
without server state) so that clients resume with ``DtlsConnection.session``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from OpenSSL import SSL, crypto
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

from dotsd.errors import LocalError
from dotsd.pki import PkiPaths

if TYPE_CHECKING:
    from dotsd.dtls.connection import DtlsConnection

StrPath = str | os.PathLike[str]
PskLookup = Callable[[bytes], bytes | None]

# RFC 9132 §7.3: assume a PMTU of 1280 (IPv6 minimum) when it is unknown; the datagram
# payload is that minus the IPv6 (40) and UDP (8) headers.
DEFAULT_MTU: Final = 1280 - 40 - 8
MIN_MTU: Final = 256

DTLS1_2_VERSION: Final = 0xFEFD
_SSL_MODE_NO_AUTO_CHAIN: Final = 0x00000008  # send our certificate without building a chain

# RFC 7525 §4.2 (ECDHE, AEAD) with the credentials of RFC 7925 §4.4.
CERT_CIPHERS: Final = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-CCM"
CERT_CIPHERS_CCM8: Final = "ECDHE-ECDSA-AES128-CCM8"
# RFC 9132 §7.1: PSK with (EC)DHE first; plain PSK for constrained peers (RFC 7925 §4.2).
PSK_CIPHERS: Final = "ECDHE-PSK-CHACHA20-POLY1305:PSK-AES128-GCM-SHA256:PSK-AES128-CCM"
PSK_CIPHERS_CCM8: Final = "PSK-AES128-CCM8"
ECDHE_GROUPS: Final = b"P-256:X25519"
SESSION_ID_CONTEXT: Final = b"dotsd-dtls"

_PSK_MAX_IDENTITY: Final = 128  # RFC 4279 §5.3


class DtlsConfigError(LocalError, ValueError):
    """A DTLS configuration that cannot work (missing key, no credentials...)."""


@dataclass(frozen=True)
class DtlsConfig:
    """What a DTLS endpoint authenticates with. Paths are PEM files.

    A server with ``cert``/``key`` requires client certificates signed by ``ca`` unless
    ``require_client_cert`` is False. A server with ``psk_lookup`` (or a single
    ``psk_identity``/``psk_key``) accepts PSK clients. A client uses a certificate or a
    PSK, and verifies a certificate-based server against ``ca``.
    """

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    psk_identity: bytes | None = None
    psk_key: bytes | None = field(default=None, repr=False)
    psk_lookup: PskLookup | None = field(default=None, repr=False)
    psk_hint: bytes | None = None
    require_client_cert: bool = True
    check_hostname: bool = True
    mtu: int = DEFAULT_MTU
    ciphers: str | None = None  # overrides the suites chosen from the credentials
    allow_ccm8: bool | None = None  # None: allowed for PSK-only contexts
    session_timeout: int = 3600  # seconds a server-side session can be resumed
    session_tickets: bool = True

    @classmethod
    def from_pki(cls, pki: PkiPaths | StrPath, client: bool = False,
                 **kwargs: Any) -> DtlsConfig:
        """The server (or, with ``client``, the client) credentials of a ``dotsd pki``
        directory."""
        directory = pki.directory if isinstance(pki, PkiPaths) else Path(pki)
        role = "client" if client else "server"
        return cls(cert=directory / f"{role}.pem", key=directory / f"{role}.key",
                   ca=directory / "ca.pem", **kwargs)

    def with_psk(self, identity: bytes, key: bytes) -> DtlsConfig:
        return replace(self, psk_identity=identity, psk_key=key)


class DtlsContext:
    """An ``SSL.Context`` for one role, with the Python state its callbacks need."""

    __slots__ = ("__weakref__", "_callbacks", "check_hostname", "config", "mtu", "psk_identity",
                 "server_side", "ssl_context", "uses_certificates", "uses_psk")

    def __init__(self, ssl_context: SSL.Context, config: DtlsConfig, server_side: bool,
                 callbacks: tuple[Any, ...]) -> None:
        self.ssl_context = ssl_context
        self.config = config
        self.server_side = server_side
        self.mtu = config.mtu
        self.check_hostname = config.check_hostname and not server_side
        self.psk_identity = config.psk_identity if not server_side else None
        self.uses_certificates = config.cert is not None or (not server_side
                                                             and config.ca is not None)
        self.uses_psk = bool((server_side and (config.psk_lookup or config.psk_key))
                             or (not server_side and config.psk_key))
        self._callbacks = callbacks  # ffi callbacks must outlive the SSL_CTX

    def __repr__(self) -> str:
        kinds = [k for k, on in (("x509", self.uses_certificates), ("psk", self.uses_psk)) if on]
        return f"<DtlsContext {'server' if self.server_side else 'client'} {'+'.join(kinds)}>"


def _owner(ssl: Any) -> DtlsConnection | None:
    conn = SSL.Connection._reverse_mapping.get(ssl)  # type: ignore[attr-defined]
    return None if conn is None else conn.get_app_data()


def _cipher_list(config: DtlsConfig, certs: bool, psk: bool) -> str:
    if config.ciphers is not None:
        return config.ciphers
    ccm8 = config.allow_ccm8 if config.allow_ccm8 is not None else (psk and not certs)
    parts: list[str] = []
    if certs:
        parts.append(CERT_CIPHERS)
        if ccm8:
            parts.append(CERT_CIPHERS_CCM8)
    if psk:
        parts.append(PSK_CIPHERS)
        if ccm8:
            parts.append(PSK_CIPHERS_CCM8)
    if ccm8:
        # OpenSSL puts 64-bit-tag suites at security level 0 (RFC 6655 allows them).
        parts.append("@SECLEVEL=0")
    return ":".join(parts)


def _base_context(config: DtlsConfig) -> SSL.Context:
    if config.mtu < MIN_MTU:
        raise DtlsConfigError(f"MTU {config.mtu} is too small (at least {MIN_MTU})")
    ctx = SSL.Context(SSL.DTLS_METHOD)
    # RFC 9132 §7.1: DTLS 1.2 or later only.
    ctx.set_min_proto_version(DTLS1_2_VERSION)
    # RFC 7525 §3.3, §3.5: no compression, no renegotiation. The MTU is set per connection
    # (memory BIOs cannot be asked for it).
    ctx.set_options(SSL.OP_NO_COMPRESSION | _lib.SSL_OP_NO_RENEGOTIATION | SSL.OP_NO_QUERY_MTU
                    | SSL.OP_CIPHER_SERVER_PREFERENCE)
    if not config.session_tickets:
        ctx.set_options(SSL.OP_NO_TICKET)
    # Idle sessions give their read/write buffers back; only our certificate is sent.
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS | _SSL_MODE_NO_AUTO_CHAIN)
    _lib.SSL_CTX_set1_curves_list(ctx._context, ECDHE_GROUPS)
    return ctx


def _load_x509(ctx: SSL.Context, config: DtlsConfig, server_side: bool) -> None:
    if config.cert is not None:
        if config.key is None:
            raise DtlsConfigError("a certificate was given without its private key")
        ctx.use_certificate_file(os.fspath(config.cert))
        ctx.use_privatekey_file(os.fspath(config.key))
        ctx.check_privatekey()
    elif config.key is not None:
        raise DtlsConfigError("a private key was given without its certificate")
    if config.ca is not None:
        ctx.load_verify_locations(os.fspath(config.ca))
        store = ctx.get_cert_store()
        if store is not None:
            store.set_flags(crypto.X509StoreFlags.X509_STRICT)
        mode = SSL.VERIFY_PEER
        if server_side and config.require_client_cert:
            mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        ctx.set_verify(mode)


def server_context(config: DtlsConfig) -> DtlsContext:
    """A DTLS server context (it serves any number of DtlsConnections)."""
    psk_lookup = config.psk_lookup
    if psk_lookup is None and config.psk_key is not None:
        if config.psk_identity is None:
            raise DtlsConfigError("a server PSK needs its identity (or use psk_lookup)")
        only_identity, only_key = config.psk_identity, config.psk_key
        psk_lookup = lambda identity: only_key if identity == only_identity else None  # noqa: E731
    certs = config.cert is not None
    if not certs and psk_lookup is None:
        raise DtlsConfigError("a DTLS server needs a certificate or PSKs")
    if certs and config.ca is None and config.require_client_cert:
        raise DtlsConfigError("mutual authentication needs the CA file that signs clients")
    ctx = _base_context(config)
    _load_x509(ctx, config, server_side=True)
    ctx.set_cipher_list(_cipher_list(config, certs, psk_lookup is not None).encode())
    # Resumption (RFC 9132 §7.1, RFC 5077): sessions of this context only.
    ctx.set_session_id(SESSION_ID_CONTEXT)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
    ctx.set_timeout(config.session_timeout)

    # The cookie was checked before the connection was made (dotsd.dtls.cookie); OpenSSL's
    # DTLSv1_listen checks it again against the value that connection holds.
    def cookie_generate(conn: SSL.Connection) -> bytes:
        owner = conn.get_app_data()
        return owner.expected_cookie if owner is not None and owner.expected_cookie else b"-"

    def cookie_verify(conn: SSL.Connection, cookie: bytes) -> bool:
        owner = conn.get_app_data()
        return owner is not None and owner.cookie_matches(cookie)

    ctx.set_cookie_generate_callback(cookie_generate)
    ctx.set_cookie_verify_callback(cookie_verify)
    callbacks: tuple[Any, ...] = ()
    if psk_lookup is not None:
        lookup = psk_lookup
        if config.psk_hint is not None:
            _lib.SSL_CTX_use_psk_identity_hint(ctx._context, config.psk_hint)

        def psk_server(ssl: Any, identity: Any, psk_out: Any, max_len: int) -> int:
            # RFC 4279 §2: unknown identity -> 0 (OpenSSL sends unknown_psk_identity or
            # decrypt_error). Exceptions must not cross the C boundary.
            try:
                ident = _ffi.string(identity)
                owner = _owner(ssl)
                if owner is not None:
                    owner.psk_identity_seen = ident
                key = lookup(ident)
                if not key or len(key) > max_len:
                    return 0
                _ffi.memmove(psk_out, key, len(key))
                return len(key)
            except Exception:
                return 0

        cb = _ffi.callback("unsigned int(SSL *, char *, unsigned char *, unsigned int)",
                           psk_server)
        _lib.SSL_CTX_set_psk_server_callback(ctx._context, cb)
        callbacks = (cb, psk_server)
    return DtlsContext(ctx, config, True, callbacks)


def client_context(config: DtlsConfig) -> DtlsContext:
    """A DTLS client context (one context can dial any number of connections)."""
    certs = config.cert is not None or config.ca is not None
    psk = config.psk_key is not None
    if psk and (config.psk_identity is None or len(config.psk_identity) > _PSK_MAX_IDENTITY):
        raise DtlsConfigError("a PSK client needs an identity of 1..128 bytes")
    if not certs and not psk:
        raise DtlsConfigError("a DTLS client needs a CA file (to verify the server) or a PSK")
    if config.cert is not None and config.ca is None:
        raise DtlsConfigError("a client certificate needs the CA file that signs the server")
    ctx = _base_context(config)
    _load_x509(ctx, config, server_side=False)
    ctx.set_cipher_list(_cipher_list(config, certs, psk).encode())
    callbacks: tuple[Any, ...] = ()
    if psk:
        identity = (config.psk_identity or b"") + b"\x00"
        key = config.psk_key or b""

        def psk_client(ssl: Any, hint: Any, identity_out: Any, max_identity: int,
                       psk_out: Any, max_psk: int) -> int:
            if len(identity) > max_identity or len(key) > max_psk:
                return 0
            _ffi.memmove(identity_out, identity, len(identity))
            _ffi.memmove(psk_out, key, len(key))
            return len(key)

        cb = _ffi.callback(
            "unsigned int(SSL *, char *, char *, unsigned int, unsigned char *, unsigned int)",
            psk_client)
        _lib.SSL_CTX_set_psk_client_callback(ctx._context, cb)
        callbacks = (cb, psk_client)
    return DtlsContext(ctx, config, False, callbacks)
