"""``dotsd server``: the DOTS signal-channel server (RFC 9132) as an operator runs it.

DTLS over UDP and TLS over TCP on the same port (RFC 9132 §4.3: both are defined on the
default port 4646, registries.md), mutual certificate authentication from a dotsd PKI
directory, durable state in ``--state`` (SQLite), mitigations handed to a mitigator plugin.
Settings come from an optional TOML file (``--config``, :mod:`dotsd.cli.settings`) and the
flags, a flag given on the command line winning over the file. With a ``[policy]`` the server
serves the operator's prefixes and domains (RFC 9132 §4.4.1.1, §10) and says which; without
one it runs in lab mode: the documentation prefixes only, and it says so. ``--check``
validates the settings and prints them without listening.
Runs until SIGTERM / SIGINT, then closes the links, waits (bounded) for the mitigator and
closes the store: exit 0.

Exit codes: 0 clean stop, 1 start failure (one ``dotsd: error:`` line), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dotsd.cli import CommandError, Subparsers, emit
from dotsd.defaults import DEFAULT_BIND, DEFAULT_MITIGATOR, DEFAULT_PORT

if TYPE_CHECKING:  # the rest of dotsd is loaded when the command runs, not to parse it
    import logging

    from dotsd.agents.serve import ServerAgent
    from dotsd.agents.settings import ServerSettings


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "server", help="run a DOTS server (signal channel over DTLS and TLS)",
        description="Run a DOTS signal-channel server (RFC 9132): DTLS/UDP and TLS/TCP on "
                    "the same port, mutual certificate authentication, state kept in "
                    "--state. Settings come from --config FILE (TOML) and the flags; a flag "
                    "given on the command line wins over the file. Stops cleanly on SIGTERM "
                    "or SIGINT.")
    # Defaults are None: a flag left out does not override the file (see _settings).
    parser.add_argument("--config", metavar="FILE",
                        help="TOML configuration file (see docs/server.example.toml)")
    parser.add_argument("--check", action="store_true",
                        help="validate the configuration, print the effective settings and "
                             "exit (0 valid, 1 not) without listening")
    parser.add_argument("--pki", metavar="DIR",
                        help="PKI directory with ca.pem, server.pem, server.key "
                             "(dotsd pki init DIR); required here or as [server] pki")
    parser.add_argument("--state", metavar="DIR",
                        help="state directory (created if missing; SQLite database); "
                             "required here or as [server] state")
    parser.add_argument("--bind", metavar="ADDR",
                        help=f"address to listen on (default {DEFAULT_BIND} = every IPv6 and "
                             "IPv4 address)")
    parser.add_argument("--port", type=_port,
                        help=f"UDP and TCP port (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--mitigator", metavar="NAME",
                        help=f"mitigator plugin (default {DEFAULT_MITIGATOR}); the file's "
                             "[mitigator] options apply only to the plugin it names")
    parser.add_argument("--no-tls", action="store_true", default=None,
                        help="serve DTLS only (no TLS over TCP)")
    parser.set_defaults(func=run)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 0-65535: {value}")
    return value


def _settings(args: argparse.Namespace) -> ServerSettings:
    """The file's settings (or the defaults) with every flag given on the command line
    applied over them; ``--pki`` and ``--state`` must come from one or the other."""
    from dotsd.agents.settings import MitigatorSettings, ServerSettings
    from dotsd.cli import settings as server_config
    from dotsd.cli.settings import ConfigFileError
    try:
        settings = server_config.load(args.config) if args.config else ServerSettings()
    except ConfigFileError as exc:
        raise CommandError(str(exc)) from None
    changes: dict[str, Any] = {}
    if args.bind is not None:
        changes["bind"] = args.bind
    if args.port is not None:
        changes["port"] = args.port
    for key in ("pki", "state"):
        if getattr(args, key) is not None:
            changes[key] = Path(getattr(args, key))
    if args.mitigator is not None and args.mitigator != settings.mitigator.name:
        # The file's options belong to the plugin it names, not to this one.
        changes["mitigator"] = MitigatorSettings(args.mitigator)
    if args.no_tls:
        transports = tuple(t for t in settings.transports if t != "tls")
        if not transports:
            raise CommandError("--no-tls leaves no transport (the configuration serves "
                               "TLS only)")
        changes["transports"] = transports
    settings = settings.replace(**changes)
    where = f" (or [server] {{}} in {args.config})" if args.config else " (or --config FILE)"
    if settings.pki is None:
        raise CommandError("no PKI directory: give --pki DIR" + where.format("pki"))
    if settings.state is None:
        raise CommandError("no state directory: give --state DIR" + where.format("state"))
    return settings


def _check(args: argparse.Namespace, settings: ServerSettings) -> int:
    """``--check``: everything that can be validated without listening or writing."""
    from dotsd.agents.serve import ServeError, check_pki, make_mitigator
    from dotsd.cli import settings as server_config
    from dotsd.pki import PkiPaths
    assert settings.pki is not None
    try:
        check_pki(PkiPaths.of(settings.pki))
        make_mitigator(settings, None)
    except ServeError as exc:
        raise CommandError(str(exc)) from exc
    if settings.state is not None and settings.state.exists() and not settings.state.is_dir():
        raise CommandError(f"state {settings.state}: not a directory")
    source = args.config or "(command line)"
    lines = [f"configuration {source}: valid", *server_config.describe(settings)]
    emit(args, {"config": args.config, "valid": True,
                "mode": "lab" if settings.lab_mode else "policy",
                "settings": settings.to_dict()}, "\n".join(lines))
    return 0


def _say(args: argparse.Namespace, text: str, **fields: Any) -> None:
    if args.json:
        sys.stdout.write(json.dumps({"event": text, **fields}) + "\n")
    else:
        sys.stdout.write(text + "\n")
    sys.stdout.flush()


async def _serve(args: argparse.Namespace, settings: ServerSettings) -> None:
    import asyncio

    from dotsd import _speedups as speedups
    from dotsd.agents.serve import ServeError, serve
    from dotsd.cli import settings as server_config

    try:
        agent = await serve(settings)
    except ServeError as exc:
        raise CommandError(str(exc)) from exc
    try:
        # RFC 9132 §4.4.1.1, §10: targets outside the client's domain are refused (4.00);
        # the operator sees which domain this server serves.
        policy = settings.effective_policy
        summary = server_config.policy_summary(settings)
        _say(args, summary, mode="lab" if settings.lab_mode else "policy",
             prefixes=[str(p) for p in policy.allowed_prefixes],
             domains=list(policy.allowed_domains),
             clients=[c.name for c in settings.clients],
             unlisted="refuse" if settings.refuse_unlisted else "allow")
        if settings.lab_mode:
            _log().warning("lab mode: documentation prefixes only")
        if settings.redirect is not None:
            _say(args, server_config.redirect_summary(settings.redirect),
                 redirect=settings.to_dict()["redirect"])
        transports = "+".join(settings.transports)
        name = agent.mitigator.name
        _say(args, f"listening on [{settings.bind}]:{agent.port} ({transports}), state "
                   f"{settings.state}, mitigator {name}, {agent.resumed} active "
                   "mitigation(s) resumed",
             bind=settings.bind, port=agent.port, transports=list(settings.transports),
             state=str(settings.state), mitigator=name, resumed=agent.resumed,
             config=args.config)
        _say(args, speedups.report(), speedups=speedups.status())
        import signal

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: _reload(args, agent))
        await stop.wait()
        _say(args, "stopping", reason="signal")
    finally:
        await agent.close()


def _reload(args: argparse.Namespace, agent: ServerAgent) -> None:
    """SIGHUP: read the configuration again and apply what can change while serving — the
    policy, the session configuration bounds (for new sessions) and the redirection (RFC 9132
    §4.6); the rest needs a restart. A bad file changes nothing."""
    from dotsd.cli import settings as server_config
    try:
        new = _settings(args)
    except CommandError as exc:
        _log().error("reload failed, configuration unchanged: %s", exc)
        _say(args, f"reload failed, configuration unchanged: {exc}", reload="failed")
        return
    restart = agent.reload(new)
    summary = server_config.policy_summary(new)
    if new.redirect is not None:
        summary += "; " + server_config.redirect_summary(new.redirect)
    _say(args, f"reloaded: {summary}"
               + (f"; needs a restart: {', '.join(restart)}" if restart else ""),
         reload="ok", mode="lab" if new.lab_mode else "policy",
         redirect=new.redirect.alt_server if new.redirect else None, restart=restart)


def run(args: argparse.Namespace) -> int:
    import asyncio

    settings = _settings(args)
    if args.check:
        return _check(args, settings)
    asyncio.run(_serve(args, settings))
    return 0


def _log() -> logging.Logger:
    import logging  # not at import: `dotsd client` commands load this module too

    return logging.getLogger("dotsd.server")
