"""The ``dotsd`` command: one module per sub-command, assembled by ``dotsd.cli.main``.

A command module defines ``register(subparsers: Subparsers) -> None``. It adds its parser
(``subparsers.add_parser(...)``) and sets ``func`` on it with ``set_defaults(func=...)``: a
handler ``(args: argparse.Namespace) -> int`` that returns the exit code. Then the module
is named in ``COMMANDS`` in ``dotsd.cli.main``.

Every handler sees the global options ``args.json`` (bool: machine-readable output on
stdout) and ``args.verbose`` (int). An expected failure is reported by raising
``CommandError`` (or letting an ``OSError`` through): ``main`` prints
``dotsd: error: <message>`` on stderr and exits 1, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from typing import TypeAlias

from dotsd.errors import LocalError

# A string alias: argparse._SubParsersAction is generic only for type checkers.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Handler: TypeAlias = Callable[[argparse.Namespace], int]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class CommandError(LocalError):
    """An expected, operational failure: one line on stderr and ``exit_code`` (default 1; a
    command documents its other codes)."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def emit(args: argparse.Namespace, data: Mapping[str, object], text: str) -> None:
    """Write a command's result on stdout: ``data`` as JSON with ``--json``, else ``text``."""
    if getattr(args, "json", False):
        json.dump(data, sys.stdout, indent=2, sort_keys=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
