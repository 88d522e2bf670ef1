"""``dotsd pki``: create the private CA and the certificates of DOTS agents."""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from dotsd.cli import EXIT_OK, CommandError, Subparsers, emit


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "pki", help="private CA and certificates",
        description="Create a private CA and the certificates DOTS agents authenticate with.")
    commands = parser.add_subparsers(dest="pki_command", metavar="COMMAND", required=True)

    init = commands.add_parser(
        "init", help="create a CA, a server and a client certificate",
        description="Create ca.pem/ca.key and, signed by that CA, server.pem/server.key and "
                    "client.pem/client.key in DIR (created if missing). Keys are ECDSA P-256, "
                    "certificates valid for localhost, 127.0.0.1 and ::1.")
    init.add_argument("directory", metavar="DIR", type=Path)
    _add_force(init)
    init.set_defaults(func=_init)

    client = commands.add_parser(
        "issue-client", help="issue a client certificate NAME.pem/NAME.key",
        description="Issue NAME.pem/NAME.key in DIR, a client certificate (CN=NAME) signed by "
                    "the CA of DIR.")
    client.add_argument("name", metavar="NAME")
    _add_dir(client)
    _add_force(client)
    client.set_defaults(func=_issue_client)

    server = commands.add_parser(
        "issue-server", help="issue a server certificate NAME.pem/NAME.key",
        description="Issue NAME.pem/NAME.key in DIR, a server certificate signed by the CA of "
                    "DIR, for the names and addresses given (default: localhost, 127.0.0.1 "
                    "and ::1).")
    server.add_argument("name", metavar="NAME")
    _add_dir(server)
    server.add_argument("--dns", metavar="HOST", action="append", default=[],
                        help="a DNS name of the server (repeatable)")
    server.add_argument("--ip", metavar="ADDR", action="append", default=[],
                        help="an IP address of the server (repeatable)")
    _add_force(server)
    server.set_defaults(func=_issue_server)

    show = commands.add_parser(
        "show", help="show a certificate, its SPKI hash and the cuid of a client using it",
        description="Print what identifies a certificate: subject, SANs, fingerprint, the "
                    "SHA-256 of its SPKI and the 'cuid' a DOTS client using it derives "
                    "(RFC 9132 §4.4.1.1); the names a server's [[client]] section can use.")
    show.add_argument("files", metavar="FILE", type=Path, nargs="+")
    show.set_defaults(func=_show)


def _add_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", dest="directory", metavar="DIR", type=Path, required=True,
                        help="the PKI directory (made by `dotsd pki init`)")


def _add_force(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="replace existing files")


def _init(args: argparse.Namespace) -> int:
    from dotsd.pki import init_pki

    with _pki_errors():
        paths = init_pki(args.directory, force=args.force)
    return _report(args, paths.directory, paths.files(),
                   [paths.ca_cert, paths.server_cert, paths.client_cert])


def _issue_client(args: argparse.Namespace) -> int:
    from dotsd.pki import issue_client

    with _pki_errors():
        issued = issue_client(args.directory, args.name, force=args.force)
    return _report(args, issued.directory, issued.files(), [issued.cert])


def _show(args: argparse.Namespace) -> int:
    from dotsd.pki import PkiError, load_certificate

    with _pki_errors():
        for path in args.files:
            try:
                load_certificate(path)
            except OSError as exc:
                raise PkiError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return _report(args, None, [], args.files)


def _issue_server(args: argparse.Namespace) -> int:
    from dotsd.pki import DEFAULT_HOSTNAMES, DEFAULT_IPS, issue_server

    dns, ips = args.dns, args.ip
    if not dns and not ips:
        dns, ips = list(DEFAULT_HOSTNAMES), list(DEFAULT_IPS)
    with _pki_errors():
        issued = issue_server(args.directory, args.name, dns, ips, force=args.force)
    return _report(args, issued.directory, issued.files(), [issued.cert])


@contextmanager
def _pki_errors() -> Iterator[None]:
    """Turn library errors into CLI errors, with the CLI's wording for --force."""
    from dotsd.pki import PkiError, PkiExistsError

    try:
        yield
    except PkiExistsError as exc:
        names = ", ".join(str(p) for p in exc.paths)
        raise CommandError(f"refusing to overwrite existing file(s): {names}; "
                           "use --force to replace them") from exc
    except PkiError as exc:
        raise CommandError(str(exc)) from exc


def _report(args: argparse.Namespace, directory: Path | None, written: Sequence[Path],
            certs: Sequence[Path]) -> int:
    from dotsd.pki import load_certificate, summarize

    summaries = [(path, summarize(load_certificate(path))) for path in certs]
    data: dict[str, object] = {
        "certificates": [{"path": str(p), **s.to_json()} for p, s in summaries],
    }
    lines = []
    if directory is not None:
        data.update({"directory": str(directory), "files": [str(p) for p in written]})
        lines = [f"wrote {len(written)} files:"] + [f"  {p}" for p in written]
    for path, s in summaries:
        info = s.to_json()
        lines += [
            f"{path}",
            f"  subject    {s.subject}",
            f"  SANs       {', '.join(s.sans) or '(none)'}",
            f"  SHA-256    {s.sha256}",
            f"  not after  {info['not_after']}",
            f"  SPKI       {s.spki_sha256}",
            f"  cuid       {s.cuid}",
        ]
    emit(args, data, "\n".join(lines))
    return EXIT_OK
