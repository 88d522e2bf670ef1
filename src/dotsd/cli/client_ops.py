"""What ``dotsd client`` does with a session of its own, and ``dotsd client run``: the commands
(each is (session, params) -> Outcome, the same in direct mode and over the control socket of
`dotsd client run`), the session they run on, their failures as exit codes, and `run` with its
control socket. Imported only when a command does not go through a running client
(:mod:`dotsd.cli.client` decides)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from dotsd.agents.client import (
    DTLS_AGAIN,
    ClientError,
    Redirected,
    Reply,
    SessionMoved,
    SignalClient,
)
from dotsd.agents.connect import ClientSettings, ConnectError, new_client
from dotsd.agents.dial import DialError, ServerDialer
from dotsd.agents.mids import MidFile
from dotsd.agents.paths import PathMemory
from dotsd.cli import EXIT_USAGE, CommandError
from dotsd.cli.client import (
    CONTROL_SOCKET,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    MID_FILE,
    PATH_FILE,
    PROTOCOLS,
    REQUEST_KEYS,
    Outcome,
    _print,
    _split_server,
    _state_dir,
)
from dotsd.coap.numbers import Code, code_dotted, code_str
from dotsd.model.errors import ModelError
from dotsd.signal.client_session import REDIAL_MIN, ReturnToProvisioned
from dotsd.signal.config import Attribute, ConfigSetKind, ServerConfig
from dotsd.signal.mids import ROLLOVER_MID, MidStateError
from dotsd.signal.session import SessionState, StateChanged

log = logging.getLogger("dotsd.client")


# ---------------------------------------------------------------------------------------------
# Results and failures


def _failure(exc: BaseException, server: str) -> CommandError:
    """Every expected failure as its message and exit code (module docstring)."""
    if isinstance(exc, DialError):
        return CommandError(str(exc), EXIT_UNREACHABLE)
    if isinstance(exc, Redirected):
        return CommandError(f"{server}: {exc}", EXIT_REFUSED)
    if isinstance(exc, ClientError):
        if exc.code is None:
            return CommandError(f"{server}: {exc.diagnostic or 'no response'}",
                                EXIT_UNREACHABLE)
        detail = exc.diagnostic
        if isinstance(detail, dict):
            detail = json.dumps(detail, separators=(",", ":"))
        return CommandError(f"{server} refused the request: {code_str(exc.code)}"
                            + (f": {detail}" if detail else ""), EXIT_REFUSED)
    if isinstance(exc, ModelError):  # a value our own encoder refuses (YANG types)
        return CommandError(f"invalid value: {exc}", 2)
    if isinstance(exc, MidStateError):
        return CommandError(str(exc))
    if isinstance(exc, TimeoutError):
        return CommandError(f"{server}: no answer in time", EXIT_UNREACHABLE)
    if isinstance(exc, OSError):
        return CommandError(f"{server}: {exc.strerror or exc}", EXIT_UNREACHABLE)
    raise exc


# ---------------------------------------------------------------------------------------------
# A session


@dataclass(slots=True)
class Session:
    """One client session and what the commands need around it."""

    client: SignalClient
    dialer: ServerDialer
    mids: MidFile
    server: str  # HOST:PORT as given

    def link_text(self) -> str:
        return f"{self.dialer.server_name} over {self.dialer.current}"


def _psk_key(args: argparse.Namespace) -> bytes:
    """The pre-shared key, in hex, from its file (never from the command line)."""
    if args.psk_key_file is None:
        raise CommandError("--psk-identity needs --psk-key-file", exit_code=EXIT_USAGE)
    try:
        text = args.psk_key_file.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"{args.psk_key_file}: cannot read the PSK: {exc}") from None
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise CommandError(f"{args.psk_key_file}: the PSK must be hexadecimal") from None
    if not secret:
        raise CommandError(f"{args.psk_key_file}: empty PSK")
    return secret


def client_settings(args: argparse.Namespace, *, heartbeats: bool) -> ClientSettings:
    """The command line as the client agent's settings."""
    host, port = _split_server(args.server)
    if args.pki is None and args.psk_identity is None:
        raise CommandError("give --pki DIR (a certificate) or --psk-identity ID with "
                           "--psk-key-file FILE", exit_code=EXIT_USAGE)
    psk_identity = psk_key = None
    if args.psk_identity is not None:
        if args.transport == "tls":
            raise CommandError("--psk-identity works over DTLS only (--transport dtls or "
                               "auto)", exit_code=EXIT_USAGE)
        psk_identity, psk_key = args.psk_identity.encode("utf-8"), _psk_key(args)
    transports = ("dtls", "tls") if args.transport == "auto" else (args.transport,)
    if psk_identity is not None:
        transports = ("dtls",)
    return ClientSettings(
        host, port, addresses=tuple(args.address),
        pki=None if args.pki is None or psk_identity is not None else Path(args.pki),
        cert=args.cert, psk_identity=psk_identity, psk_key=psk_key, transports=transports,
        timeout=args.timeout, heartbeat=None if heartbeats else (0.0, 15),
        redial_interval=getattr(args, "redial_interval", REDIAL_MIN))


@contextlib.asynccontextmanager
async def open_session(args: argparse.Namespace, *, heartbeats: bool) -> AsyncIterator[Session]:
    settings = client_settings(args, heartbeats=heartbeats)
    try:
        client = new_client(settings)
    except ConnectError as exc:
        raise CommandError(str(exc).replace("PSK:", "--psk-identity:"),
                           exit_code=EXIT_USAGE if exc.usage else 1) from None
    assert client.dialer is not None
    session = Session(client, client.dialer, MidFile(_state_dir(args) / MID_FILE),
                      f"{settings.host}:{settings.port}")
    # The RTT and Happy Eyeballs outcome of earlier runs: a cold start paces its handshake
    # and its requests from them (dotsd.agents.paths).
    paths = PathMemory(_state_dir(args) / PATH_FILE)
    loop = asyncio.get_running_loop()
    paths.restore(session.server, client.estimator, client.dialer, wall=time.time(),
                  mono=loop.time())
    try:
        try:
            await client.start()
        except BaseException as exc:
            if isinstance(exc, Exception):
                raise _failure(exc, session.server) from None
            raise
        yield session
    finally:
        paths.save(session.server, client.estimator, client.dialer, wall=time.time(),
                   mono=loop.time())
        await client.close()


# ---------------------------------------------------------------------------------------------
# Commands: each one is (session, params) -> Outcome, the same in direct mode and over the
# control socket of `dotsd client run`.


def _scope_text(scope: dict[str, Any]) -> str:
    parts = [f"mid {scope.get('mid', '?')}", str(scope.get("status", "-"))]
    targets = [*scope.get("target-prefix", []), *scope.get("target-fqdn", []),
               *scope.get("target-uri", []), *(f"alias {a}" for a in scope.get("alias-name",
                                                                             []))]
    parts.append(", ".join(targets) or "-")
    ports = [f"{r.get('lower-port')}" + (f"-{r['upper-port']}" if "upper-port" in r else "")
             for r in scope.get("target-port-range", [])]
    if ports:
        parts.append("port " + ",".join(ports))
    protocols = scope.get("target-protocol", [])
    if protocols:
        names = {v: k for k, v in reversed(PROTOCOLS.items())}
        parts.append("proto " + ",".join(names.get(p, str(p)) for p in protocols))
    lifetime = scope.get("lifetime")
    if lifetime is not None:
        parts.append("lifetime indefinite" if lifetime == -1 else f"lifetime {lifetime} s")
    for key in ("bytes-dropped", "pkts-dropped"):
        if key in scope:
            parts.append(f"{key} {scope[key]}")
    return "  ".join(parts)


async def _server_mids(session: Session) -> list[int]:
    """The active 'mid' values that matter to choose a new one (RFC 9132 §4.4.1.1). The 'mid'
    file knows the last one used, so the server is asked only when the file knows none (a
    new state directory) or the rollover point is near (all must be withdrawn to restart
    at 0): one round trip fewer, that could be lost, before a request under attack."""
    client = session.client
    last = session.mids.last(session.server, client.cuid)
    if last is not None and last < ROLLOVER_MID - 1:
        return list(client.active_mids)
    return await _active_mids(session)


async def _active_mids(session: Session) -> list[int]:
    try:
        reply = await session.client.status()
    except ClientError as exc:
        if exc.code == Code.NOT_FOUND:  # RFC 9132 §4.4.2: none
            return []
        raise
    return [s["mid"] for s in reply.scopes if isinstance(s.get("mid"), int)]


async def op_mitigate(session: Session, params: dict[str, Any]) -> Outcome:
    client = session.client
    mid = params.get("mid")
    fresh = mid is None
    if mid is None:
        mid = session.mids.allocate(session.server, client.cuid,
                                    await _server_mids(session), attack=client.mitigating)
    else:
        session.mids.seen(session.server, client.cuid, mid)
    reply = await client.mitigate(params["scope"], mid=mid)
    # A new 'mid' answered 2.04: a repetition found the request its lost 2.01 had created
    # (RFC 9132 §4.4.1): it is still this command that created it.
    verb = "created" if reply.code == Code.CREATED or fresh else "updated"
    lifetime = reply.lifetime
    granted = ("indefinite" if lifetime == -1 else f"{lifetime} s") if lifetime is not None \
        else "?"
    return Outcome({"mid": mid, "cuid": client.cuid, "code": code_dotted(reply.code),
                    "result": verb, "lifetime": lifetime, "server": session.link_text()},
                   f"mitigation {mid} {verb} on {session.dialer.server_name}, "
                   f"lifetime {granted} granted")


async def op_status(session: Session, params: dict[str, Any]) -> Outcome:
    reply = await session.client.status(params.get("mid"))
    scopes = reply.scopes
    text = "\n".join(_scope_text(s) for s in scopes) or "no mitigation"
    return Outcome({"mitigations": scopes}, text)


async def op_withdraw(session: Session, params: dict[str, Any]) -> Outcome:
    mid = params["mid"]
    reply = await session.client.withdraw(mid)
    return Outcome({"mid": mid, "code": code_dotted(reply.code), "result": "withdrawn"},
                   f"mitigation {mid} withdrawn")


async def op_efficacy(session: Session, params: dict[str, Any]) -> Outcome:
    """RFC 9132 §4.4.3: the update repeats the request's scope, read from the server."""
    mid, level = params["mid"], params["level"]
    current = (await session.client.status(mid)).scopes
    if not current:
        raise ClientError(Code.NOT_FOUND, f"mitigation {mid} not found")
    scope = {k: v for k, v in current[0].items() if k in REQUEST_KEYS}
    reply = await session.client.efficacy(mid, level, scope=scope)
    return Outcome({"mid": mid, "code": code_dotted(reply.code), "attack-status": level},
                   f"efficacy update for mitigation {mid}: {level}")


def _config_text(config: ServerConfig, sid: int | None) -> str:
    lines = [f"session configuration (sid {sid if sid is not None else '-'}):"]
    for kind in ConfigSetKind:
        lines.append(f"  {kind.value}:")
        for attr, adv in config.advertised(kind).items():
            bounds = f"  [{adv.minimum} .. {adv.maximum}]" if adv.minimum is not None else ""
            lines.append(f"    {attr.value:20} {adv.current}{bounds}")
    return "\n".join(lines)


def _config_data(config: ServerConfig) -> dict[str, Any]:
    return {kind.value: {attr.value: {k: (str(v) if v is not None else None) for k, v in
                                      dataclasses.asdict(adv).items()}
                         for attr, adv in config.advertised(kind).items()}
            for kind in ConfigSetKind}


async def op_session_config(session: Session, params: dict[str, Any]) -> Outcome:
    from decimal import Decimal, InvalidOperation

    client = session.client
    action = params.get("action", "get")
    if action == "delete":
        await client.session_config_delete()
    elif action == "set":
        values: dict[Attribute, int | Decimal] = {}
        for name, text in params["values"].items():
            attr = Attribute(name)
            try:
                values[attr] = Decimal(str(text)) if attr.is_decimal else int(text)
            except (ValueError, InvalidOperation):
                raise CommandError(f"--{name} {text!r}: expected "
                                   f"{'a decimal' if attr.is_decimal else 'an integer'}",
                                   2) from None
        if params.get("idle"):
            await client.session_config_set(idle=values, clamp=False)
        else:
            await client.session_config_set(mitigating=values, clamp=False)
    config = await client.session_config_get(client.sid)
    return Outcome({"sid": client.sid, "config": _config_data(config),
                    "max-age": client.config_max_age}, _config_text(config, client.sid))


OPS: Final[dict[str, Callable[[Session, dict[str, Any]], Awaitable[Outcome]]]] = {
    "mitigate": op_mitigate,
    "status": op_status,
    "withdraw": op_withdraw,
    "efficacy": op_efficacy,
    "session-config": op_session_config,
}


# ---------------------------------------------------------------------------------------------
# Output


def _note_line(args: argparse.Namespace, reply: Reply, count: int) -> None:
    stamp = time.strftime("%H:%M:%S")
    if args.json:
        data = {"time": stamp, "notification": count, "mitigations": reply.scopes}
        sys.stdout.write(json.dumps(data, default=str) + "\n")
    else:
        for scope in reply.scopes or [{}]:
            sys.stdout.write(f"{stamp}  {_scope_text(scope)}\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------------
# Running a command


async def main(args: argparse.Namespace, name: str, params: dict[str, Any]) -> int:
    if name == "run":
        return await _run(args)
    watch = name == "status" and args.watch
    async with open_session(args, heartbeats=watch) as session:
        try:
            if watch:
                return await _watch(args, session, params.get("mid"), args.count)
            _print(args, await OPS[name](session, params))
        except CommandError:
            raise
        except Exception as exc:
            raise _failure(exc, session.server) from None
    return 0


async def _watch(args: argparse.Namespace, session: Session, mid: int | None,
                 count: int | None) -> int:
    """RFC 9132 §4.4.2.1: print the current status, then every notification."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    seen = 0
    async with contextlib.aclosing(session.client.watch(mid)) as notes:
        while count is None or seen < count:
            nxt = asyncio.ensure_future(anext(notes))
            stopper = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({nxt, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if nxt not in done:
                nxt.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await nxt
                break
            try:
                reply = nxt.result()
            except StopAsyncIteration:
                sys.stderr.write("dotsd: the observation ended\n")
                break
            seen += 1
            _note_line(args, reply, seen)
    return 0


# ---------------------------------------------------------------------------------------------
# `run` and its control socket


async def _serve_control(args: argparse.Namespace, session: Session
                         ) -> asyncio.AbstractServer:
    path = _state_dir(args) / CONTROL_SOCKET
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # left by a client that did not stop cleanly

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5.0)
            answer = await _control_answer(args, session, line)
            writer.write(json.dumps(answer, default=str).encode() + b"\n")
            await writer.drain()
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()

    old = os.umask(0o177)  # the socket: owner only
    try:
        return await asyncio.start_unix_server(handle, path=str(path))
    finally:
        os.umask(old)


async def _control_answer(args: argparse.Namespace, session: Session, line: bytes
                          ) -> dict[str, Any]:
    try:
        request = json.loads(line)
        name, params = request["command"], request["params"]
        if request.get("server") != args.server or request.get("cert") != args.cert:
            return {"other-session": True}
        op = OPS[name]
    except (ValueError, KeyError, TypeError):
        return {"exit": 2, "error": "malformed control request"}
    try:
        outcome = await op(session, params)
    except CommandError as exc:
        return {"exit": exc.exit_code, "error": str(exc)}
    except Exception as exc:
        try:
            failure = _failure(exc, session.server)
        except Exception:
            log.exception("control request %s failed", name)
            return {"exit": 1, "error": f"internal error: {exc!r}"}
        return {"exit": failure.exit_code, "error": str(failure)}
    return {"exit": 0, "data": outcome.data, "text": outcome.text}


def _say(args: argparse.Namespace, text: str, **fields: Any) -> None:
    if args.json:
        sys.stdout.write(json.dumps({"event": text, **fields}, default=str) + "\n")
    else:
        sys.stdout.write(f"{time.strftime('%H:%M:%S')}  {text}\n")
    sys.stdout.flush()


async def _run(args: argparse.Namespace) -> int:
    """A long-lived client: the session kept up by the client's own session behaviour
    (heartbeats and redial, RFC 9132 §4.7; configuration refresh, §4.5.3; return from an
    expired redirection, §4.6; DTLS probed again after a TLS fallback, §4.3), each step
    printed; the other commands served on the control socket."""
    async with open_session(args, heartbeats=True) as session:
        client = session.client
        try:
            await client.session_config_get()
        except ClientError as exc:
            raise _failure(exc, session.server) from None
        control = await _serve_control(args, session)
        _say(args, f"session up with {session.link_text()}, cuid {client.cuid}; control "
                   f"socket {_state_dir(args) / CONTROL_SOCKET}",
             server=session.dialer.server_name, transport=str(session.dialer.current),
             cuid=client.cuid)
        client.add_listener(lambda event: _say_event(args, session, event))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        watcher = loop.create_task(_run_watch(args, session)) if args.watch else None
        try:
            await stop.wait()
        finally:
            control.close()
            with contextlib.suppress(FileNotFoundError):
                (_state_dir(args) / CONTROL_SOCKET).unlink()
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await watcher
        _say(args, "stopping", reason="signal")
    return 0


def _say_event(args: argparse.Namespace, session: Session, event: object) -> None:
    """The session's steps that an operator wants to see, as `run` prints them."""
    client = session.client
    if isinstance(event, StateChanged) and event.new is SessionState.ESTABLISHED \
            and event.old is SessionState.CONNECTING:
        _say(args, f"session re-established with {session.link_text()}",
             reconnects=client.reconnects)
    elif isinstance(event, ReturnToProvisioned):
        _say(args, "redirection expired: back to the provisioned server")
    elif isinstance(event, SessionMoved) and event.reason == DTLS_AGAIN:
        _say(args, f"DTLS available again: session moved to {session.link_text()}")


async def _run_watch(args: argparse.Namespace, session: Session) -> None:
    """Print every status change of the client's mitigations; re-register after a loss."""
    count = 0
    while True:
        try:
            async with contextlib.aclosing(session.client.watch()) as notes:
                async for reply in notes:
                    count += 1
                    _note_line(args, reply, count)
        except ClientError as exc:
            log.info("watch: %s", exc)
        await asyncio.sleep(2.0)
