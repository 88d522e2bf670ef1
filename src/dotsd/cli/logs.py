"""The logs of the ``dotsd`` command: one ``key=value`` line per record on stderr.

A module of its own so that a command that does not log (``dotsd client`` through a running
``dotsd client run``) does not load :mod:`logging` to start (dotsd.cli.main).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
from typing import Final

__all__ = ["KeyValueFormatter", "configure_logging"]

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
