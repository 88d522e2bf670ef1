"""Private CA and certificates for DOTS agents (``dotsd pki``)."""

from dotsd.pki.ca import (
    DEFAULT_HOSTNAMES,
    DEFAULT_IPS,
    CertificateSummary,
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

__all__ = [
    "DEFAULT_HOSTNAMES",
    "DEFAULT_IPS",
    "CertificateSummary",
    "IssuedPaths",
    "PkiError",
    "PkiExistsError",
    "PkiPaths",
    "fingerprint",
    "init_pki",
    "issue_client",
    "issue_server",
    "load_certificate",
    "load_private_key",
    "summarize",
]
