"""One domain per DOTS client (dotsd.signal.policy.PolicySet, RFC 9132 §10)."""

from __future__ import annotations

import hashlib
import ipaddress
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.pki import issued_client

from dotsd.link import PeerInfo, cuid_from_psk_identity, make_peer_info, spki_sha256
from dotsd.pki import PkiPaths, load_certificate
from dotsd.signal.identity import ClientIdentity, client_identity
from dotsd.signal.policy import (
    LAB,
    MATCH_KINDS,
    ClientMatch,
    ClientPolicy,
    Policy,
    PolicySet,
    common_names,
)


@pytest.fixture(scope="module")
def pki_dir(pki: PkiPaths) -> Path:
    """The shared test PKI's directory (tests/conftest.py), with a client certificate CN=acme."""
    issued_client(pki, "acme")
    return pki.directory


def cert_peer(path: Path) -> tuple[ClientIdentity, PeerInfo]:
    peer = make_peer_info(("::1", 1), "dtls", False, certificate=load_certificate(path))
    ident = client_identity(peer)
    assert ident is not None
    return ident, peer


def domain(prefix: str, name: str) -> Policy:
    return Policy(allowed_prefixes=(ipaddress.ip_network(prefix),), allowed_domains=(),
                  name=name)


def test_every_way_of_naming_a_client(pki_dir: Path) -> None:
    ident, peer = cert_peer(pki_dir / "acme.pem")
    cert = load_certificate(pki_dir / "acme.pem")
    assert common_names(cert) == ("acme",)
    ways = [ClientMatch("common-name", "acme"), ClientMatch("cuid", ident.cuid),
            ClientMatch("spki-sha256", spki_sha256(cert).hex().upper())]
    for match in ways:
        own = domain("198.51.100.0/24", "acme")
        policies = PolicySet(LAB, (ClientPolicy("acme", match, own),))
        assert policies.for_client(ident, peer) is own, match
        # Another client is not matched: it gets the default.
        other_ident, other_peer = cert_peer(pki_dir / "client.pem")
        assert policies.for_client(other_ident, other_peer) is LAB, match
        assert PolicySet(None, policies.clients).for_client(other_ident, other_peer) is None
    # A PSK client by its identity text.
    psk_peer = make_peer_info(("::1", 2), "dtls", False, psk_identity=b"cpe-17")
    psk_ident = client_identity(psk_peer)
    assert psk_ident is not None and psk_ident.cuid == cuid_from_psk_identity(b"cpe-17")
    own = domain("192.0.2.0/24", "cpe")
    policies = PolicySet(None, (ClientPolicy("cpe", ClientMatch("psk-identity", "cpe-17"), own),))
    assert policies.for_client(psk_ident, psk_peer) is own
    assert policies.for_client(ident, peer) is None


def test_first_listed_wins(pki_dir: Path) -> None:
    ident, peer = cert_peer(pki_dir / "acme.pem")
    first = ClientPolicy("by-cuid", ClientMatch("cuid", ident.cuid),
                         domain("198.51.100.0/24", "a"))
    second = ClientPolicy("by-name", ClientMatch("common-name", "acme"),
                          domain("203.0.113.0/24", "b"))
    assert PolicySet(LAB, (first, second)).lookup(ident, peer) is first
    assert PolicySet(LAB, (second, first)).lookup(ident, peer) is second


@pytest.mark.parametrize(("kind", "value"), [
    ("spki-sha256", "abcd"), ("spki-sha256", "zz" * 32), ("cuid", ""), ("common-name", ""),
    ("serial", "1"),
])
def test_bad_matches_refused(kind: str, value: str) -> None:
    with pytest.raises(ValueError):
        ClientMatch(kind, value)  # type: ignore[arg-type]


names = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=6)


@given(st.lists(st.tuples(st.sampled_from(MATCH_KINDS), names), max_size=12),
       names, names, names)
def test_lookup_is_the_first_matching_entry(entries: list[tuple[str, str]], cn: str,
                                            cuid: str, psk: str) -> None:
    """The indexed lookup gives what a scan of the list in order would."""
    def value(kind: str, text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest() if kind == "spki-sha256" else text

    clients = tuple(ClientPolicy(f"c{i}", ClientMatch(kind, value(kind, text)),  # type: ignore[arg-type]
                                 LAB)
                    for i, (kind, text) in enumerate(entries))
    policies = PolicySet(None, clients)
    digest = hashlib.sha256(cn.encode()).hexdigest()
    for ident, peer, facts in (
        # A "certificate" client whose SPKI hash is sha256(cn): only cuid and spki apply
        # (no certificate object here, so no common name).
        (ClientIdentity(f"spki-sha256:{digest}", cuid),
         make_peer_info(("::1", 1), "dtls", False),
         {("cuid", cuid), ("spki-sha256", digest)}),
        (ClientIdentity(f"psk:{psk.encode().hex()}", cuid),
         make_peer_info(("::1", 1), "dtls", False, psk_identity=psk.encode()),
         {("cuid", cuid), ("psk-identity", psk)}),
    ):
        expected = next((c for c in clients if (c.match.kind, c.match.value) in facts), None)
        assert policies.lookup(ident, peer) is expected
