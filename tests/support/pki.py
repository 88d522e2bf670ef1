"""Client certificates of the shared test PKI (the session fixture ``pki``, tests/conftest.py)."""

from __future__ import annotations

from dotsd.pki import IssuedPaths, PkiPaths, issue_client


def issued_client(pki: PkiPaths, name: str) -> IssuedPaths:
    """``NAME.pem``/``NAME.key``, a client certificate (CN=NAME) signed by ``pki``'s CA: issued
    by the first test that asks for it, the same files for every later one (the PKI lives for
    the whole session, and ``issue_client`` refuses to overwrite)."""
    paths = IssuedPaths(pki.directory, name, pki.directory / f"{name}.pem",
                        pki.directory / f"{name}.key", pki.ca_cert)
    if paths.cert.exists() and paths.key.exists():
        return paths
    return issue_client(pki.directory, name)
