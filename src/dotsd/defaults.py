"""The defaults an operator meets first, in one place the command line can read without
loading the rest of dotsd: the DOTS signal channel port (RFC 9132 §4.3 and §10.1,
"dots-signal", UDP and TCP), the listening address and the mitigator plugin."""

from __future__ import annotations

from typing import Final

DEFAULT_PORT: Final = 4646  # RFC 9132 §4.3 / registries.md: "dots-signal" UDP and TCP
DEFAULT_BIND: Final = "::"  # every IPv6 and IPv4 address (dual-stack sockets)
DEFAULT_MITIGATOR: Final = "log"
