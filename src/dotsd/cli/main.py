"""Entry point of the ``dotsd`` command: global options, sub-commands, exit codes, logging
(:mod:`dotsd.cli.logs`, loaded only by the commands that log).

Exit codes: 0 success, 1 operational failure (one ``dotsd: error: ...`` line on stderr),
2 usage error (argparse). Logs go to stderr as ``key=value`` lines.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Final, Protocol

from dotsd import __version__
from dotsd.cli import EXIT_FAILURE, EXIT_USAGE, CommandError, Handler, Subparsers


class CommandModule(Protocol):
    def register(self, subparsers: Subparsers) -> None: ...


# The sub-command modules (dotsd.cli.NAME), in the order `dotsd --help` lists them. To add a
# command, write dotsd/cli/NAME.py with `register(subparsers)` (see the dotsd.cli docstring)
# and add NAME here. A command line naming one of them loads and builds only that one: a
# detector calling `dotsd client mitigate` during an attack waits for little.
COMMANDS: Final[Sequence[str]] = ("server", "client", "pki", "demo")

PROG: Final = "dotsd"


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or only of the one ``argv`` names (its first word)."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="DOTS (DDoS Open Threat Signaling) client, server and tools.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _add_global_options(parser, json_default=False, verbose_default=0)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    first = next((a for a in argv or () if not a.startswith("-")), None)
    for name in (first,) if first in COMMANDS else COMMANDS:
        module: CommandModule = importlib.import_module(f"dotsd.cli.{name}")
        module.register(subparsers)
    # The global options are also accepted after the sub-command (`dotsd pki init D --json`);
    # there they default to SUPPRESS so as not to reset what was given before it.
    for sub in _all_subparsers(parser):
        _add_global_options(sub, json_default=argparse.SUPPRESS,
                            verbose_default=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: argparse has printed
        try:
            sys.stdout.flush()  # here, not at interpreter exit (status 120 and a message)
        except BrokenPipeError:
            return _reader_gone()
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if getattr(args, "setup_logging", True):  # `dotsd client` does it when it needs to
        from dotsd.cli.logs import configure_logging

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
        return _reader_gone()
    except OSError as exc:
        return _fail(_os_error_text(exc))
    except KeyboardInterrupt:
        return 130


EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a killed writer


def _reader_gone() -> int:
    """The reader went away (`dotsd … | head`): stop quietly, as other tools do. What is
    still buffered goes to /dev/null, so the flush at interpreter exit cannot fail again."""
    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_BROKEN_PIPE


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


if __name__ == "__main__":
    sys.exit(main())
