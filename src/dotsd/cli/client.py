"""``dotsd client``: the DOTS signal-channel client (RFC 9132) as an operator runs it.

    dotsd client --pki DIR --server HOST[:PORT] mitigate --target-prefix P [...]
    dotsd client ... status [--mid N] [--watch]
    dotsd client ... withdraw --mid N
    dotsd client ... efficacy --mid N --level attack-successfully-mitigated
    dotsd client ... session-config [get | set ... | delete]
    dotsd client ... run

Each command opens a session (Happy Eyeballs over DTLS/TLS and IPv6/IPv4, RFC 9132 §4.3),
follows redirections (§4.6), does its work and closes. ``run`` keeps one session up
(heartbeats, reconnection, configuration refresh, redirection expiry) and serves the other
commands on a local control socket in the state directory, so that a request made during an
attack needs no new handshake: commands use it when it is there (``--direct`` does not).

'mid' values are kept in the state directory (:mod:`dotsd.agents.mids`), so they keep
increasing across runs (RFC 9132 §4.4.1.1).

Exit codes: 0 success; 1 local failure (files, state); 2 usage; 3 the DOTS server could not
be reached or did not answer; 4 the server refused the request (its CoAP code and diagnostic
are printed).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from dotsd.cli import CommandError, Subparsers
from dotsd.defaults import DEFAULT_PORT
from dotsd.signal.attributes import Attribute

if TYPE_CHECKING:
    pass

EXIT_UNREACHABLE: Final = 3
EXIT_REFUSED: Final = 4
CONTROL_SOCKET: Final = "client.sock"
MID_FILE: Final = "mids.json"
PATH_FILE: Final = "paths.json"

PROTOCOLS: Final = {"icmp": 1, "tcp": 6, "udp": 17, "ipv6-icmp": 58, "icmpv6": 58, "sctp": 132,
                    "dccp": 33, "gre": 47, "esp": 50, "ah": 51}
ATTACK_STATUS: Final = ("under-attack", "attack-successfully-mitigated")  # RFC 9132 §4.4.3
# What a mitigation request may carry (RFC 9132 §4.4.1.1): an efficacy update repeats these.
REQUEST_KEYS: Final = ("target-prefix", "target-port-range", "target-protocol", "target-fqdn",
                       "target-uri", "alias-name", "trigger-mitigation")
EPILOG: Final = ("exit codes: 0 success, 1 local failure, 2 usage, 3 server unreachable or "
                 "silent, 4 request refused by the server")


# ---------------------------------------------------------------------------------------------
# Command line


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "client", help="run DOTS client commands against a DOTS server",
        description="DOTS signal-channel client (RFC 9132): ask a DOTS server for mitigation, "
                    "follow it, withdraw it, tune the session; `run` keeps a session up.",
        epilog=EPILOG)
    parser.set_defaults(setup_logging=False)  # run_command sets it up on the direct path
    parser.add_argument("--pki", metavar="DIR",
                        help="PKI directory with ca.pem and the client certificate")
    parser.add_argument("--psk-identity", metavar="ID",
                        help="authenticate with a pre-shared key instead of a certificate "
                             "(DTLS only; the server lists it in a [[client]] psk-identity)")
    parser.add_argument("--psk-key-file", metavar="FILE", type=Path,
                        help="file holding the PSK in hexadecimal (with --psk-identity)")
    parser.add_argument("--cert", default="client", metavar="NAME",
                        help="client certificate NAME.pem / NAME.key in --pki (default client)")
    parser.add_argument("--server", required=True, metavar="HOST[:PORT]",
                        help=f"the DOTS server (name or address; port {DEFAULT_PORT} by default)")
    parser.add_argument("--address", action="append", default=[], metavar="ADDR",
                        help="an address of the server (repeatable; default: resolve HOST)")
    parser.add_argument("--transport", choices=("auto", "dtls", "tls"), default="auto",
                        help="auto: Happy Eyeballs over DTLS and TLS (default)")
    parser.add_argument("--state", metavar="DIR", default=None,
                        help="client state directory ('mid' values, control socket; default "
                             "$DOTSD_CLIENT_STATE or ~/.local/state/dotsd/client)")
    parser.add_argument("--timeout", type=_positive, default=10.0, metavar="S",
                        help="seconds to wait for the server (default 10)")
    parser.add_argument("--direct", action="store_true",
                        help="open a session even when `dotsd client run` is running")
    sub = parser.add_subparsers(dest="client_command", metavar="COMMAND", required=True)

    p = sub.add_parser("mitigate", help="request (or refresh, with --mid) a mitigation",
                       epilog=EPILOG)
    p.add_argument("--target-prefix", action="append", default=[], metavar="PREFIX")
    p.add_argument("--target-port", action="append", default=[], metavar="N[-M]")
    p.add_argument("--protocol", action="append", default=[], metavar="NAME|N",
                   help="tcp, udp, icmp, ... or a protocol number (repeatable)")
    p.add_argument("--target-fqdn", action="append", default=[], metavar="FQDN")
    p.add_argument("--target-uri", action="append", default=[], metavar="URI")
    p.add_argument("--alias", action="append", default=[], metavar="NAME",
                   help="an alias created on the data channel (alias-name)")
    p.add_argument("--lifetime", type=_lifetime, default=3600, metavar="S",
                   help="seconds, or 'indefinite' (default 3600)")
    p.add_argument("--trigger-mitigation", choices=("true", "false"), default=None,
                   help="false: mitigate only when the signal channel is lost")
    p.add_argument("--mid", type=_mid, default=None, help="'mid' (default: the next one)")
    p.set_defaults(func=run_command, params=_mitigate_params)

    p = sub.add_parser("status", help="show mitigations (all, or one with --mid)",
                       epilog=EPILOG)
    p.add_argument("--mid", type=_mid, default=None)
    p.add_argument("--watch", action="store_true",
                   help="observe: print every status change until interrupted")
    p.add_argument("--count", type=int, default=None, metavar="N",
                   help="with --watch: stop after N notifications")
    p.set_defaults(func=run_command, params=lambda a: {"mid": a.mid})

    p = sub.add_parser("withdraw", help="withdraw a mitigation", epilog=EPILOG)
    p.add_argument("--mid", type=_mid, required=True)
    p.set_defaults(func=run_command, params=lambda a: {"mid": a.mid})

    p = sub.add_parser("efficacy", help="tell the server how well a mitigation works",
                       epilog=EPILOG)
    p.add_argument("--mid", type=_mid, required=True)
    p.add_argument("--level", choices=ATTACK_STATUS, required=True,
                   help="the attack-status to report")
    p.set_defaults(func=run_command, params=lambda a: {"mid": a.mid, "level": a.level})

    p = sub.add_parser("session-config", help="get, set or delete the session configuration",
                       epilog=EPILOG)
    p.add_argument("action", nargs="?", choices=("get", "set", "delete"), default="get")
    for attr in Attribute:
        p.add_argument(f"--{attr.value}", dest=attr.name.lower(), default=None,
                       metavar="VALUE", help=f"with set: {attr.value}")
    p.add_argument("--idle", action="store_true",
                   help="with set: change the idle values (default: the mitigating ones)")
    p.set_defaults(func=run_command, params=_config_params)

    p = sub.add_parser("run", help="keep a session up and serve the other commands",
                       epilog=EPILOG)
    p.add_argument("--watch", action="store_true", help="also print every status change")
    p.add_argument("--redial-interval", type=_positive, default=60.0, metavar="S",
                   help="seconds between the starts of two attempts to re-establish a lost "
                        "session, doubled up to 300 (default 60, the least RFC 9132 §4.7 "
                        "allows; less only in a test bed)")
    p.set_defaults(func=run_command, params=lambda a: {})


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


def _mid(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a mid: {text!r}") from None
    if not 0 <= value <= 2**32 - 1:  # RFC 9132 §5.3: uint32
        raise argparse.ArgumentTypeError(f"mid out of range 0..4294967295: {value}")
    return value


def _lifetime(text: str) -> int:
    if text in ("indefinite", "-1"):
        return -1  # RFC 9132 §4.4.1.1
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a lifetime: {text!r} (seconds or "
                                         "'indefinite')") from None
    if not 1 <= value <= 2**32 - 1:
        raise argparse.ArgumentTypeError(f"lifetime out of range: {value}")
    return value


def _port_range(text: str) -> dict[str, int]:
    lower, _, upper = text.partition("-")
    try:
        low, high = int(lower), int(upper) if upper else None
    except ValueError:
        raise CommandError(f"--target-port {text!r}: expected N or N-M", 2) from None
    if not 0 <= low <= 65535 or (high is not None and not low <= high <= 65535):
        raise CommandError(f"--target-port {text!r}: ports are 0-65535, lower first", 2)
    return {"lower-port": low} | ({"upper-port": high} if high is not None else {})


def _protocol(text: str) -> int:
    if text.lower() in PROTOCOLS:
        return PROTOCOLS[text.lower()]
    try:
        value = int(text)
    except ValueError:
        raise CommandError(f"--protocol {text!r}: unknown (use a number or one of "
                           f"{', '.join(sorted(PROTOCOLS))})", 2) from None
    if not 0 <= value <= 255:
        raise CommandError(f"--protocol {value}: out of range 0-255", 2)
    return value


def _mitigate_params(args: argparse.Namespace) -> dict[str, Any]:
    scope: dict[str, Any] = {}
    prefixes = []
    for text in args.target_prefix:
        try:
            prefixes.append(str(ipaddress.ip_network(text, strict=False)))
        except ValueError:
            raise CommandError(f"--target-prefix {text!r}: not an IP prefix", 2) from None
    if prefixes:
        scope["target-prefix"] = prefixes
    if args.target_port:
        scope["target-port-range"] = [_port_range(t) for t in args.target_port]
    if args.protocol:
        scope["target-protocol"] = [_protocol(t) for t in args.protocol]
    for key, values in (("target-fqdn", args.target_fqdn), ("target-uri", args.target_uri),
                        ("alias-name", args.alias)):
        if values:
            scope[key] = list(values)
    if not any(k in scope for k in ("target-prefix", "target-fqdn", "target-uri",
                                    "alias-name")):
        # RFC 9132 §4.4.1.2: at least one of these MUST be present.
        raise CommandError("mitigate needs a target: --target-prefix, --target-fqdn, "
                           "--target-uri or --alias", 2)
    scope["lifetime"] = args.lifetime
    if args.trigger_mitigation is not None:
        scope["trigger-mitigation"] = args.trigger_mitigation == "true"
    return {"scope": scope, "mid": args.mid}


def _config_params(args: argparse.Namespace) -> dict[str, Any]:
    values = {attr.value: getattr(args, attr.name.lower()) for attr in Attribute
              if getattr(args, attr.name.lower()) is not None}
    if args.action == "set" and not values:
        raise CommandError("session-config set needs at least one value, e.g. "
                           "--heartbeat-interval 60", 2)
    if args.action != "set" and values:
        raise CommandError(f"values are only for `session-config set`, not "
                           f"{args.action!r}", 2)
    return {"action": args.action, "values": values, "idle": args.idle}


def _split_server(text: str) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[V6]:PORT`` or a bare IPv6 address."""
    host, port = text, DEFAULT_PORT
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise CommandError(f"--server {text!r}: missing ']'", 2)
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise CommandError(f"--server {text!r}: expected [ADDR]:PORT", 2)
            port = _server_port(text, rest[1:])
    elif text.count(":") == 1:
        host, _, rest = text.partition(":")
        port = _server_port(text, rest)
    if not host:
        raise CommandError(f"--server {text!r}: no host", 2)
    return host, port


def _server_port(text: str, port: str) -> int:
    if not port.isdigit() or not 0 < int(port) <= 65535:
        raise CommandError(f"--server {text!r}: bad port {port!r}", 2)
    return int(port)


def _state_dir(args: argparse.Namespace) -> Path:
    if args.state:
        return Path(args.state)
    env = os.environ.get("DOTSD_CLIENT_STATE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "dotsd" / "client"


# ---------------------------------------------------------------------------------------------
# Results


class Outcome(NamedTuple):
    """What a command produced: data for --json, text for people."""

    data: dict[str, Any]
    text: str


def _print(args: argparse.Namespace, outcome: Outcome) -> None:
    if args.json:
        sys.stdout.write(json.dumps(outcome.data, default=str) + "\n")
    else:
        sys.stdout.write(outcome.text + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------------
# Running a command: through a running `dotsd client run` when there is one (nothing else is
# imported then: a detector calling this during an attack waits for little), else with a
# session of its own (dotsd.cli.client_ops).


def run_command(args: argparse.Namespace) -> int:
    name = args.client_command
    _split_server(args.server)  # usage errors first, before any network
    params = args.params(args)
    watch = name == "status" and args.watch
    if name != "run" and not args.direct and not watch:
        answered = _via_control(args, name, params)
        if answered is not None:
            return answered
    import asyncio

    from dotsd.cli import client_ops
    from dotsd.cli.logs import configure_logging

    configure_logging(args.verbose)

    try:
        return asyncio.run(client_ops.main(args, name, params))
    except KeyboardInterrupt:
        return 130


def _via_control(args: argparse.Namespace, name: str, params: dict[str, Any]) -> int | None:
    """Send the command to a running `dotsd client run` of the same server, if any (a plain
    blocking Unix socket: no event loop to start for one line each way)."""
    import socket

    path = _state_dir(args) / CONTROL_SOCKET
    if not path.exists():
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(2.0)
        try:
            sock.connect(str(path))
        except OSError:
            return None  # a stale socket: no client is running
        request = {"server": args.server, "cert": args.cert, "command": name,
                   "params": params}
        try:
            sock.sendall(json.dumps(request).encode() + b"\n")
            sock.settimeout(args.timeout * 4 + 5)
            line = _read_line(sock)
        except OSError as exc:
            raise CommandError(f"{path}: the running client did not answer ({exc})") from None
    finally:
        sock.close()
    try:
        answer = json.loads(line)
    except ValueError:
        raise CommandError(f"{path}: malformed answer from the running client") from None
    if answer.get("other-session"):
        return None  # that client serves another server or certificate
    if answer.get("exit", 1) != 0:
        raise CommandError(str(answer.get("error", "failed")), int(answer.get("exit", 1)))
    data = answer.get("data", {})
    _print(args, Outcome({**data, "via": "dotsd client run"} if isinstance(data, dict) else {},
                         answer.get("text", "")))
    return 0


def _read_line(sock: Any, limit: int = 1 << 20) -> bytes:
    """One line (the answer), at most ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if b"\n" in chunk:
            break
    return b"".join(chunks)
