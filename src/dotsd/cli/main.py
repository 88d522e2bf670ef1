"""Entry point of the ``dotsd`` command: global options, sub-commands, exit codes, logging.

Exit codes: 0 success, 1 operational failure (one ``dotsd: error: ...`` line on stderr),
2 usage error (argparse). Logs go to stderr as ``key=value`` lines.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Final, Protocol

from dotsd import __version__
from dotsd.cli import EXIT_FAILURE, EXIT_USAGE, CommandError, Handler, Subparsers
from dotsd.cli import client as client_command
from dotsd.cli import demo as demo_command
from dotsd.cli import pki as pki_command
from dotsd.cli import server as server_command


class CommandModule(Protocol):
    def register(self, subparsers: Subparsers) -> None: ...


# The sub-command modules, in the order `dotsd --help` lists them. To add a command, write
# dotsd/cli/NAME.py with `register(subparsers)` (see the dotsd.cli docstring) and add it here.
COMMANDS: Final[Sequence[CommandModule]] = (
    server_command,
    client_command,
    pki_command,
    demo_command,
)

PROG: Final = "dotsd"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="DOTS (DDoS Open Threat Signaling) client, server and tools.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _add_global_options(parser, json_default=False, verbose_default=0)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.register(subparsers)
    # The global options are also accepted after the sub-command (`dotsd pki init D --json`);
    # there they default to SUPPRESS so as not to reset what was given before it.
    for sub in _all_subparsers(parser):
        _add_global_options(sub, json_default=argparse.SUPPRESS,
                            verbose_default=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: argparse has printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    configure_logging(args.verbose)
    handler: Handler = args.func
    try:
        code = handler(args)
        # Buffered output goes now: a reader that went away shows here as BrokenPipeError,
        # not at interpreter exit (which would end with status 120 and a message).
        sys.stdout.flush()
        return code
    except CommandError as exc:
        return _fail(str(exc), exc.exit_code)
    except BrokenPipeError:
        # The reader went away (`dotsd … | head`): stop quietly, as other tools do.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except OSError as exc:
        return _fail(_os_error_text(exc))
    except KeyboardInterrupt:
        return 130


EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a killed writer


def _fail(message: str, code: int = EXIT_FAILURE) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def _os_error_text(exc: OSError) -> str:
    if exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc) or type(exc).__name__


def _add_global_options(parser: argparse.ArgumentParser, *, json_default: object,
                        verbose_default: object) -> None:
    if "--json" in parser._option_string_actions:
        return
    parser.add_argument("--json", action="store_true", default=json_default,
                        help="machine-readable output (JSON) on stdout")
    parser.add_argument("-v", "--verbose", action="count", default=verbose_default,
                        help="log more on stderr (-v: info, -vv: debug)")


def _all_subparsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    seen: set[int] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if id(sub) not in seen:  # aliases map several names to one parser
                    seen.add(id(sub))
                    yield sub
                    yield from _all_subparsers(sub)


# ---------------------------------------------------------------------------------------
# Logging: one `key=value` line per record on stderr


_RECORD_ATTRS: Final = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime",
                                                                 "taskName"}
_BARE: Final = re.compile(r"[^\s\"=\\]+")


def _kv_value(value: object) -> str:
    text = str(value)
    return text if _BARE.fullmatch(text) else json.dumps(text)


class KeyValueFormatter(logging.Formatter):
    """``ts=... level=... logger=... msg="..."`` then any ``extra=`` fields of the record."""

    def format(self, record: logging.LogRecord) -> str:
        ts = dt.datetime.fromtimestamp(record.created, dt.UTC)
        fields: dict[str, object] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                fields[key] = value
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        return " ".join(f"{k}={_kv_value(v)}" for k, v in fields.items())


_handler: logging.Handler | None = None


def configure_logging(verbose: int) -> None:
    """Route every log record at the level chosen by ``-v`` to stderr, as key=value lines."""
    global _handler
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    root = logging.getLogger()
    if _handler is not None:  # main() may run more than once in a process (tests)
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(KeyValueFormatter())
    root.addHandler(_handler)
    root.setLevel(level)


if __name__ == "__main__":
    sys.exit(main())
