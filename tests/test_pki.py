"""The private CA: what it writes, what it refuses, and that TLS stacks accept the result."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dotsd.pki import (
    IssuedPaths,
    PkiError,
    PkiExistsError,
    PkiPaths,
    fingerprint,
    init_pki,
    issue_client,
    issue_server,
    load_certificate,
    load_private_key,
    summarize,
)

try:
    from cryptography.x509 import verification
except ImportError:  # cryptography < 42
    verification = None  # type: ignore[assignment]


@pytest.fixture
def own_pki(tmp_path: Path) -> PkiPaths:
    """A PKI of this test's own, which it may extend or overwrite (the shared session ``pki``
    of tests/conftest.py must stay as it is)."""
    return init_pki(tmp_path / "pki")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _ext(cert: x509.Certificate, kind: type[Any]) -> x509.Extension[Any]:
    return cert.extensions.get_extension_for_class(kind)


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


# ---------------------------------------------------------------------------------------
# init_pki


def test_paths_of_creates_nothing(tmp_path: Path) -> None:
    paths = PkiPaths.of(tmp_path / "nowhere")
    assert paths.ca_cert == tmp_path / "nowhere" / "ca.pem"
    assert paths.client_key == tmp_path / "nowhere" / "client.key"
    assert len(paths.files()) == 6
    assert not (tmp_path / "nowhere").exists()


def test_init_writes_six_files_with_modes(own_pki: PkiPaths) -> None:
    assert sorted(p.name for p in own_pki.directory.iterdir()) == sorted(
        p.name for p in own_pki.files())  # no temporary file left behind
    for key in (own_pki.ca_key, own_pki.server_key, own_pki.client_key):
        assert _mode(key) == 0o600
        assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, clear
    for cert in (own_pki.ca_cert, own_pki.server_cert, own_pki.client_cert):
        assert _mode(cert) == 0o644
        assert cert.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert _mode(own_pki.directory) == 0o700


def test_keys_are_p256_and_match_certificates(own_pki: PkiPaths) -> None:
    for cert_path, key_path in ((own_pki.ca_cert, own_pki.ca_key),
                                (own_pki.server_cert, own_pki.server_key),
                                (own_pki.client_cert, own_pki.client_key)):
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert isinstance(key.curve, ec.SECP256R1)
        cert = load_certificate(cert_path)
        assert cert.public_key() == key.public_key()
        assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)


def test_ca_certificate(own_pki: PkiPaths) -> None:
    ca = load_certificate(own_pki.ca_cert)
    assert ca.subject == ca.issuer
    ca.verify_directly_issued_by(ca)
    bc = _ext(ca, x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = _ext(ca, x509.KeyUsage)
    assert ku.critical
    assert ku.value.digital_signature and ku.value.key_cert_sign and ku.value.crl_sign
    ski = _ext(ca, x509.SubjectKeyIdentifier).value
    assert _ext(ca, x509.AuthorityKeyIdentifier).value.key_identifier == ski.digest
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert dt.timedelta(days=3649) < lifetime < dt.timedelta(days=3651)


@pytest.mark.parametrize(("which", "usages"), [
    ("server", {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}),
    ("client", {ExtendedKeyUsageOID.CLIENT_AUTH}),
])
def test_leaf_certificates(own_pki: PkiPaths, which: str,
                           usages: set[x509.ObjectIdentifier]) -> None:
    ca = load_certificate(own_pki.ca_cert)
    cert = load_certificate(own_pki.directory / f"{which}.pem")
    cert.verify_directly_issued_by(ca)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == which
    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = _ext(cert, x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign and not ku.crl_sign
    assert set(_ext(cert, x509.ExtendedKeyUsage).value) == usages
    san = _ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    ca_ski = _ext(ca, x509.SubjectKeyIdentifier).value.digest
    assert _ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == ca_ski
    assert _ext(cert, x509.SubjectKeyIdentifier).value == \
        x509.SubjectKeyIdentifier.from_public_key(load_private_key(
            own_pki.directory / f"{which}.key").public_key())
    now = dt.datetime.now(dt.UTC)
    assert cert.not_valid_before_utc <= now
    assert dt.timedelta(days=700) < cert.not_valid_after_utc - now < dt.timedelta(days=740)


def test_serials_are_random_and_distinct(tmp_path: Path) -> None:
    serials = set()
    for i in range(2):
        paths = init_pki(tmp_path / str(i))
        for cert in (paths.ca_cert, paths.server_cert, paths.client_cert):
            serial = load_certificate(cert).serial_number
            assert serial.bit_length() > 64
            serials.add(serial)
    assert len(serials) == 6


@pytest.mark.skipif(verification is None or not hasattr(verification.PolicyBuilder,
                                                         "build_client_verifier"),
                    reason="cryptography.x509.verification lacks client verification")
def test_chains_verify_with_x509_verification(own_pki: PkiPaths) -> None:
    ca = load_certificate(own_pki.ca_cert)
    alice = issue_client(own_pki.directory, "alice")
    builder = verification.PolicyBuilder().store(verification.Store([ca])).time(
        dt.datetime.now(dt.UTC))
    server = load_certificate(own_pki.server_cert)
    for name in (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                 x509.IPAddress(ipaddress.ip_address("::1"))):
        chain = builder.build_server_verifier(name).verify(server, [])
        assert chain[-1] == ca
    with pytest.raises(verification.VerificationError):
        builder.build_server_verifier(x509.DNSName("example.com")).verify(server, [])
    client_verifier = builder.build_client_verifier()
    for path in (own_pki.client_cert, alice.cert, own_pki.server_cert):  # server: Call Home dialler
        verified = client_verifier.verify(load_certificate(path), [])
        assert verified.chain[-1] == ca
    # A client certificate cannot serve: no serverAuth.
    with pytest.raises(verification.VerificationError):
        builder.build_server_verifier(x509.DNSName("localhost")).verify(
            load_certificate(own_pki.client_cert), [])


def test_refuses_to_overwrite_and_writes_nothing(own_pki: PkiPaths) -> None:
    before = _snapshot(own_pki.directory)
    with pytest.raises(PkiExistsError) as info:
        init_pki(own_pki.directory)
    assert set(info.value.paths) == set(own_pki.files())
    assert "ca.pem" in str(info.value) and "force" in str(info.value)
    assert _snapshot(own_pki.directory) == before


def test_one_existing_file_blocks_all(tmp_path: Path) -> None:
    paths = PkiPaths.of(tmp_path)
    paths.client_key.write_bytes(b"mine")
    with pytest.raises(PkiExistsError) as info:
        init_pki(tmp_path)
    assert info.value.paths == (paths.client_key,)
    assert _snapshot(tmp_path) == {"client.key": b"mine"}


def test_dangling_symlink_counts_as_existing(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PkiExistsError):
        init_pki(tmp_path)
    assert not (tmp_path / "elsewhere").exists()


def test_force_overwrites(own_pki: PkiPaths) -> None:
    old = fingerprint(load_certificate(own_pki.ca_cert))
    old_key = own_pki.client_key.read_bytes()
    init_pki(own_pki.directory, force=True)
    assert fingerprint(load_certificate(own_pki.ca_cert)) != old
    assert own_pki.client_key.read_bytes() != old_key
    assert _mode(own_pki.client_key) == 0o600
    load_certificate(own_pki.server_cert).verify_directly_issued_by(load_certificate(own_pki.ca_cert))


# ---------------------------------------------------------------------------------------
# issue_client / issue_server


def test_issue_client(own_pki: PkiPaths) -> None:
    issued = issue_client(own_pki.directory, "site-A_1.example")
    assert issued == IssuedPaths(own_pki.directory, "site-A_1.example",
                                 own_pki.directory / "site-A_1.example.pem",
                                 own_pki.directory / "site-A_1.example.key", own_pki.ca_cert)
    cert = load_certificate(issued.cert)
    cert.verify_directly_issued_by(load_certificate(own_pki.ca_cert))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == \
        "site-A_1.example"
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert _mode(issued.key) == 0o600
    key = load_private_key(issued.key)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    assert key.public_key() == cert.public_key()


@pytest.mark.parametrize("name", [
    "", ".hidden", "..", "a/b", "../x", "a" * 65, "sp ace", "caf\u00e9", "x\n", "ca", "CA",
    "server",
])
def test_issue_client_rejects_bad_names(own_pki: PkiPaths, name: str) -> None:
    before = _snapshot(own_pki.directory)
    with pytest.raises(PkiError):
        issue_client(own_pki.directory, name, force=True)
    assert _snapshot(own_pki.directory) == before


@pytest.mark.parametrize("name", ["a" * 64, "a", "0", "-x", "_x", "a.b.c", "client"])
def test_issue_client_accepts_good_names(own_pki: PkiPaths, name: str) -> None:
    issue_client(own_pki.directory, name, force=True)
    assert (own_pki.directory / f"{name}.pem").exists()


def test_issue_client_needs_the_ca(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match=r"ca\.pem"):
        issue_client(tmp_path, "alice")
    assert list(tmp_path.iterdir()) == []


def test_issue_client_rejects_a_foreign_ca_key(own_pki: PkiPaths, tmp_path: Path) -> None:
    other = init_pki(tmp_path / "other")
    own_pki.ca_key.write_bytes(other.ca_key.read_bytes())
    with pytest.raises(PkiError, match="not the private key"):
        issue_client(own_pki.directory, "alice")


def test_issue_client_refuses_to_overwrite(own_pki: PkiPaths) -> None:
    first = issue_client(own_pki.directory, "alice")
    before = _snapshot(own_pki.directory)
    with pytest.raises(PkiExistsError) as info:
        issue_client(own_pki.directory, "alice")
    assert set(info.value.paths) == {first.cert, first.key}
    assert _snapshot(own_pki.directory) == before
    issue_client(own_pki.directory, "alice", force=True)
    assert first.cert.read_bytes() != before["alice.pem"]


def test_issue_server_with_chosen_names(own_pki: PkiPaths) -> None:
    issued = issue_server(own_pki.directory, "edge", ["dots.example.net", "*.example.org"],
                          ["192.0.2.1", ipaddress.ip_address("2001:db8::1")])
    cert = load_certificate(issued.cert)
    cert.verify_directly_issued_by(load_certificate(own_pki.ca_cert))
    assert summarize(cert).sans == ("DNS:dots.example.net", "DNS:*.example.org",
                                    "IP:192.0.2.1", "IP:2001:db8::1")
    assert ExtendedKeyUsageOID.SERVER_AUTH in _ext(cert, x509.ExtendedKeyUsage).value


@pytest.mark.parametrize(("dns", "ips"), [
    ([], []), (["bad_name"], []), (["-x.example"], []), ([], ["300.1.1.1"]), (["a..b"], []),
])
def test_issue_server_rejects_bad_names(own_pki: PkiPaths, dns: list[str], ips: list[str]) -> None:
    with pytest.raises(PkiError):
        issue_server(own_pki.directory, "edge", dns, ips)
    assert not (own_pki.directory / "edge.pem").exists()


def test_issue_server_reserved_names(own_pki: PkiPaths) -> None:
    for name in ("ca", "client"):
        with pytest.raises(PkiError, match="reserved"):
            issue_server(own_pki.directory, name, force=True)
    issue_server(own_pki.directory, "server", ["other.example"], [], force=True)
    assert summarize(load_certificate(own_pki.server_cert)).sans == ("DNS:other.example",)


def test_summarize(own_pki: PkiPaths) -> None:
    cert = load_certificate(own_pki.server_cert)
    s = summarize(cert)
    assert s.subject == "CN=server,O=dotsd"
    assert s.issuer.startswith("CN=dotsd CA ")
    assert s.sans == ("DNS:localhost", "IP:127.0.0.1", "IP:::1")
    assert s.sha256 == cert.fingerprint(hashes.SHA256()).hex(":").upper()
    j = s.to_json()
    assert j["not_after"] == cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_load_certificate_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    with pytest.raises(PkiError):
        load_certificate(junk)
    with pytest.raises(PkiError):
        load_private_key(junk)


# ---------------------------------------------------------------------------------------
# The standard library's TLS (OpenSSL) accepts the result: mutual auth on loopback


TIMEOUT = 10.0


def _server_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(cafile=ca)
    return ctx


def _client_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname, CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(cafile=ca)
    return ctx


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, host: str,
               server_hostname: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """One TLS connection on loopback; returns (peer cert seen by the server, by the client)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    seen: dict[str, Any] = {}

    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.bind((host, 0))
        listener.listen(1)
        listener.settimeout(TIMEOUT)
        port = listener.getsockname()[1]

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                conn.settimeout(TIMEOUT)
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    seen["peer"] = tls.getpeercert()
                    tls.sendall(b"ok")
            except Exception as exc:
                seen["error"] = exc

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with socket.create_connection((host, port), timeout=TIMEOUT) as raw, \
                    client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
                server_cert = tls.getpeercert()
                assert server_cert is not None
                assert tls.recv(2) == b"ok"  # TLS 1.3: the server has accepted our cert
        finally:
            thread.join(TIMEOUT)
    assert not thread.is_alive()
    if "error" in seen:
        raise seen["error"]
    return seen["peer"], server_cert


def _cn(peer: dict[str, Any]) -> str:
    return str(next(v for rdn in peer["subject"] for k, v in rdn if k == "commonName"))


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.network
@pytest.mark.parametrize(("host", "server_hostname"), [
    ("127.0.0.1", "localhost"),
    ("127.0.0.1", "127.0.0.1"),
    pytest.param("::1", "::1", marks=pytest.mark.skipif(not _ipv6_loopback(),
                                                        reason="no IPv6 loopback")),
])
def test_mutual_tls_handshake(own_pki: PkiPaths, host: str, server_hostname: str) -> None:
    server_ctx = _server_context(own_pki.server_cert, own_pki.server_key, own_pki.ca_cert)
    client_ctx = _client_context(own_pki.client_cert, own_pki.client_key, own_pki.ca_cert)
    client_seen_by_server, server_seen_by_client = _handshake(
        server_ctx, client_ctx, host, server_hostname)
    assert _cn(client_seen_by_server) == "client"
    assert _cn(server_seen_by_client) == "server"


@pytest.mark.network
def test_server_certificate_can_dial_and_issued_client_works(own_pki: PkiPaths) -> None:
    alice = issue_client(own_pki.directory, "alice")
    server_ctx = _server_context(own_pki.server_cert, own_pki.server_key, own_pki.ca_cert)
    for cert, key, cn in ((own_pki.server_cert, own_pki.server_key, "server"),  # Call Home
                          (alice.cert, alice.key, "alice")):
        client_ctx = _client_context(cert, key, own_pki.ca_cert)
        seen, _ = _handshake(server_ctx, client_ctx, "127.0.0.1", "localhost")
        assert _cn(seen) == cn


@pytest.mark.network
def test_tls_rejects_a_server_from_another_ca(own_pki: PkiPaths, tmp_path: Path) -> None:
    other = init_pki(tmp_path / "other")
    server_ctx = _server_context(other.server_cert, other.server_key, own_pki.ca_cert)
    client_ctx = _client_context(own_pki.client_cert, own_pki.client_key, own_pki.ca_cert)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(server_ctx, client_ctx, "127.0.0.1", "localhost")


@pytest.mark.network
def test_tls_rejects_a_client_certificate_as_server(own_pki: PkiPaths) -> None:
    server_ctx = _server_context(own_pki.client_cert, own_pki.client_key, own_pki.ca_cert)
    client_ctx = _client_context(own_pki.client_cert, own_pki.client_key, own_pki.ca_cert)
    with pytest.raises(ssl.SSLCertVerificationError):  # no serverAuth in its EKU
        _handshake(server_ctx, client_ctx, "127.0.0.1", "localhost")


def test_key_files_are_not_world_readable_even_with_lax_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        paths = init_pki(tmp_path / "p")
    finally:
        os.umask(old)
    assert _mode(paths.ca_key) == 0o600
