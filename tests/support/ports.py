"""Ports free for a test's listeners (bounded tries)."""

from __future__ import annotations

import socket
from collections.abc import Sequence


def free_port(hosts: Sequence[str] = ("127.0.0.1", "::1")) -> int:
    """A port free for UDP and TCP on each of ``hosts`` (loopback addresses): DTLS and TLS
    share one port (RFC 9132 §4.3)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as first:
            first.bind((hosts[0] if ":" not in hosts[0] else "127.0.0.1", 0))
            port = int(first.getsockname()[1])
        try:
            for host in hosts:
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    with socket.socket(family, kind) as probe:
                        probe.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")
