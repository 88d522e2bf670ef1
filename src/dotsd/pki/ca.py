"""A private CA for DOTS agents: the CA itself, then server and client certificates it signs.

RFC 9132 §7.1 wants mutual PKIX authentication between DOTS agents. This module makes the
smallest PKI that satisfies it: one CA, one server certificate, any number of client
certificates, all ECDSA P-256 (the credentials of RFC 7925 §4.4), signed with SHA-256.

Files are PEM; private keys are unencrypted PKCS#8, mode 0600. Every file is written
atomically (temporary file in the same directory, then rename), and an existing file is
replaced only when asked to (``force``): otherwise nothing at all is written.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import re
import secrets
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dotsd.errors import LocalError
from dotsd.link import cuid_from_spki_sha256, spki_sha256

log = logging.getLogger(__name__)

CA_VALIDITY: Final = dt.timedelta(days=3650)
LEAF_VALIDITY: Final = dt.timedelta(days=730)
# Backdate notBefore a little, so that a peer whose clock is slightly behind accepts it.
CLOCK_SKEW: Final = dt.timedelta(minutes=5)

DEFAULT_HOSTNAMES: Final[tuple[str, ...]] = ("localhost",)
DEFAULT_IPS: Final[tuple[str, ...]] = ("127.0.0.1", "::1")
ORGANIZATION: Final = "dotsd"

_NAME_RE: Final = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Key types a CA brought by an operator may have (ours are always ECDSA P-256).
_ISSUER_KEY_TYPES: Final = (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey,
                            ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)


class PkiError(LocalError):
    """A PKI operation cannot be done as asked (missing CA, bad name, existing files...)."""


class PkiExistsError(PkiError):
    """Files that would be written exist already and ``force`` was not given."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = tuple(paths)
        names = ", ".join(str(p) for p in self.paths)
        super().__init__(f"refusing to overwrite existing file(s): {names} "
                         "(pass force=True to replace them)")


@dataclass(frozen=True)
class PkiPaths:
    """The conventional file names of a dotsd PKI directory (nothing is created)."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def of(cls, directory: str | os.PathLike[str]) -> PkiPaths:
        d = Path(directory)
        return cls(d, d / "ca.pem", d / "ca.key", d / "server.pem", d / "server.key",
                   d / "client.pem", d / "client.key")

    def files(self) -> tuple[Path, ...]:
        return (self.ca_cert, self.ca_key, self.server_cert, self.server_key,
                self.client_cert, self.client_key)


@dataclass(frozen=True)
class IssuedPaths:
    """A certificate and its private key written by ``issue_client``/``issue_server``."""

    directory: Path
    name: str
    cert: Path
    key: Path
    ca_cert: Path

    def files(self) -> tuple[Path, ...]:
        return (self.cert, self.key)


@dataclass(frozen=True)
class CertificateSummary:
    """What a person checks in a certificate."""

    subject: str
    issuer: str
    sans: tuple[str, ...]
    sha256: str
    not_before: dt.datetime
    not_after: dt.datetime
    spki_sha256: str = ""  # hex, what a server's [[client]] spki-sha256 names
    cuid: str = ""  # the 'cuid' a DOTS client with this certificate uses (RFC 9132 §4.4.1.1)

    def to_json(self) -> dict[str, object]:
        return {"subject": self.subject, "issuer": self.issuer, "sans": list(self.sans),
                "sha256": self.sha256, "not_before": _iso(self.not_before),
                "not_after": _iso(self.not_after), "spki_sha256": self.spki_sha256,
                "cuid": self.cuid}


# ---------------------------------------------------------------------------------------
# Public operations


def init_pki(directory: str | os.PathLike[str], force: bool = False) -> PkiPaths:
    """Create a CA and, signed by it, ``server.pem``/``.key`` and ``client.pem``/``.key``.

    The directory is created (mode 0700) if missing. Raises ``PkiExistsError`` naming every
    target file that exists, unless ``force``; in that case nothing is written.
    """
    paths = PkiPaths.of(directory)
    _check_absent(paths.files(), force)
    now = _now()
    ca_key = _new_key()
    ca_cert = _ca_certificate(ca_key, now)
    server_key = _new_key()
    server_cert = _leaf_certificate(
        ca_cert, ca_key, server_key.public_key(), "server", now,
        dns=DEFAULT_HOSTNAMES, ips=_parse_ips(DEFAULT_IPS), server=True)
    client_key = _new_key()
    client_cert = _leaf_certificate(
        ca_cert, ca_key, client_key.public_key(), "client", now,
        dns=DEFAULT_HOSTNAMES, ips=_parse_ips(DEFAULT_IPS), server=False)
    _write_all(paths.directory, [
        (paths.ca_key, _key_pem(ca_key), True),
        (paths.ca_cert, _cert_pem(ca_cert), False),
        (paths.server_key, _key_pem(server_key), True),
        (paths.server_cert, _cert_pem(server_cert), False),
        (paths.client_key, _key_pem(client_key), True),
        (paths.client_cert, _cert_pem(client_cert), False),
    ])
    log.info("pki initialised", extra={"dir": str(paths.directory),
                                       "ca_sha256": fingerprint(ca_cert)})
    return paths


def issue_client(directory: str | os.PathLike[str], name: str,
                 force: bool = False) -> IssuedPaths:
    """Write ``NAME.pem``/``NAME.key``: a client certificate (CN=NAME) signed by the CA.

    NAME: letters, digits, ``-``, ``_`` and ``.``, at most 64, not starting with ``.``;
    ``ca`` and ``server`` are reserved. Its SANs are those of the default client.
    """
    _check_name(name, reserved=("ca", "server"))
    return _issue(Path(directory), name, DEFAULT_HOSTNAMES, _parse_ips(DEFAULT_IPS),
                  server=False, force=force)


def issue_server(directory: str | os.PathLike[str], name: str,
                 hostnames: Iterable[str] = DEFAULT_HOSTNAMES,
                 ips: Iterable[str | IpAddress] = DEFAULT_IPS,
                 force: bool = False) -> IssuedPaths:
    """Write ``NAME.pem``/``NAME.key``: a server certificate with the given SANs.

    Like ``init_pki``'s server certificate (serverAuth and clientAuth, so that it can also
    dial in Call Home), for the DNS names and IP addresses a server is reached at.
    ``ca`` and ``client`` are reserved names; ``server`` re-issues the default one.
    """
    _check_name(name, reserved=("ca", "client"))
    dns = tuple(_check_hostname(h) for h in hostnames)
    addresses = _parse_ips(ips)
    if not dns and not addresses:
        raise PkiError("a server certificate needs at least one DNS name or IP address")
    return _issue(Path(directory), name, dns, addresses, server=True, force=force)


def load_certificate(path: str | os.PathLike[str]) -> x509.Certificate:
    """The first certificate of a PEM file (or a DER file)."""
    data = Path(path).read_bytes()
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise PkiError(f"{path}: not a certificate ({exc})") from exc


def load_private_key(path: str | os.PathLike[str]) -> CertificateIssuerPrivateKeyTypes:
    """An unencrypted PEM private key that can sign certificates."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"{path}: not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, _ISSUER_KEY_TYPES):
        raise PkiError(f"{path}: a {type(key).__name__} cannot sign certificates")
    return key


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, as colon-separated upper-case hex (like openssl)."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def summarize(cert: x509.Certificate) -> CertificateSummary:
    digest = spki_sha256(cert)
    return CertificateSummary(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        sans=_san_strings(cert),
        sha256=fingerprint(cert),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        spki_sha256=digest.hex(),
        cuid=cuid_from_spki_sha256(digest),
    )


# ---------------------------------------------------------------------------------------
# Certificates


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _hash_for(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | None:
    # EdDSA signs the message itself: no separate digest.
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    return hashes.SHA256()


def _ca_certificate(key: ec.EllipticCurvePrivateKey, now: dt.datetime) -> x509.Certificate:
    # A random tag in the CA name: two dotsd CAs trusted side by side stay distinguishable.
    subject = _name(f"dotsd CA {secrets.token_hex(4)}")
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public),
                       critical=False)
        .sign(key, hashes.SHA256())
    )


def _leaf_certificate(ca_cert: x509.Certificate, ca_key: CertificateIssuerPrivateKeyTypes,
                      public: ec.EllipticCurvePublicKey, common_name: str, now: dt.datetime,
                      *, dns: Sequence[str], ips: Sequence[IpAddress],
                      server: bool) -> x509.Certificate:
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server \
        else [ExtendedKeyUsageOID.CLIENT_AUTH]
    sans: list[x509.GeneralName] = [x509.DNSName(h) for h in dns]
    sans += [x509.IPAddress(a) for a in ips]
    not_after = min(now + LEAF_VALIDITY, ca_cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(_authority_key_id(ca_cert, ca_key), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, _hash_for(ca_key))


def _authority_key_id(ca_cert: x509.Certificate,
                      ca_key: CertificateIssuerPrivateKeyTypes) -> x509.AuthorityKeyIdentifier:
    # RFC 5280 §4.2.1.1: the issuer's own subjectKeyIdentifier, whatever method made it.
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _issue(directory: Path, name: str, dns: Sequence[str], ips: Sequence[IpAddress], *,
           server: bool, force: bool) -> IssuedPaths:
    paths = PkiPaths.of(directory)
    result = IssuedPaths(directory, name, directory / f"{name}.pem", directory / f"{name}.key",
                         paths.ca_cert)
    ca_cert, ca_key = _load_ca(paths)
    _check_absent(result.files(), force)
    key = _new_key()
    cert = _leaf_certificate(ca_cert, ca_key, key.public_key(), name, _now(),
                             dns=dns, ips=ips, server=server)
    _write_all(directory, [(result.key, _key_pem(key), True),
                           (result.cert, _cert_pem(cert), False)])
    log.info("certificate issued", extra={"kind": "server" if server else "client",
                                          "cert_name": name, "sha256": fingerprint(cert)})
    return result


def _load_ca(paths: PkiPaths) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes]:
    missing = [p for p in (paths.ca_cert, paths.ca_key) if not p.exists()]
    if missing:
        raise PkiError(f"no CA in {paths.directory}: missing "
                       + ", ".join(str(p) for p in missing))
    cert = load_certificate(paths.ca_cert)
    key = load_private_key(paths.ca_key)
    if key.public_key() != cert.public_key():
        raise PkiError(f"{paths.ca_key} is not the private key of {paths.ca_cert}")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise PkiError(f"{paths.ca_cert} is not a CA certificate")
    return cert, key


def _san_strings(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    out = [f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)]
    out += [f"IP:{a}" for a in san.get_values_for_type(x509.IPAddress)]
    return tuple(out)


# ---------------------------------------------------------------------------------------
# Input checks


def _check_name(name: str, reserved: Sequence[str]) -> None:
    if not _NAME_RE.fullmatch(name):
        raise PkiError(f"invalid name {name!r}: use 1 to 64 letters, digits, '-', '_' or '.', "
                       "not starting with '.'")
    # Compared case-insensitively: on such file systems "CA.pem" would be "ca.pem".
    if name.lower() in reserved:
        raise PkiError(f"the name {name!r} is reserved")


_LABEL_RE: Final = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _check_hostname(host: str) -> str:
    labels = host.split(".")
    if host.startswith("*."):  # one wildcard, leftmost label only (RFC 6125 §6.4.3)
        labels = labels[1:]
    if not host or len(host) > 253 or not all(_LABEL_RE.fullmatch(lb) for lb in labels):
        raise PkiError(f"invalid DNS name {host!r} (ASCII/A-label names only)")
    return host


def _parse_ips(ips: Iterable[str | IpAddress]) -> tuple[IpAddress, ...]:
    out: list[IpAddress] = []
    for ip in ips:
        try:
            out.append(ipaddress.ip_address(ip))
        except ValueError as exc:
            raise PkiError(str(exc)) from exc
    return tuple(out)


# ---------------------------------------------------------------------------------------
# Files


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _check_absent(targets: Iterable[Path], force: bool) -> None:
    if force:
        return
    existing = [p for p in targets if p.exists() or p.is_symlink()]
    if existing:
        raise PkiExistsError(existing)


def _write_all(directory: Path, files: Sequence[tuple[Path, bytes, bool]]) -> None:
    """Write every (path, data, secret) atomically; secret files get mode 0600, others 0644.

    All contents are first written to temporary files; they are renamed into place only once
    all of them are on disk, so a failure while writing leaves no file behind.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    temps: list[tuple[Path, Path]] = []
    try:
        for path, data, secret in files:
            # mkstemp creates the file with mode 0600, before any byte is written.
            fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.",
                                            suffix=".tmp")
            temps.append((Path(tmp_name), path))
            with os.fdopen(fd, "wb") as f:
                if not secret:
                    os.fchmod(f.fileno(), 0o644)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for tmp, path in temps:
            os.replace(tmp, path)
            log.debug("file written", extra={"path": str(path)})
    finally:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
