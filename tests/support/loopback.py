"""Helpers shared by the network tests: loopback hosts and bounded waits."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable
from typing import TypeVar

import pytest

from dotsd.link import Link
from dotsd.node import CoapNode

T = TypeVar("T")
STEP = 5.0  # seconds any single wait in a network test may take


async def within(aw: Awaitable[T], limit: float = STEP) -> T:
    return await asyncio.wait_for(aw, limit)


def ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


HOSTS = ["127.0.0.1", pytest.param("::1", marks=pytest.mark.skipif(
    not ipv6_loopback(), reason="no IPv6 loopback"))]


def tap(node: CoapNode) -> list[bytes]:
    """Every datagram ``node`` receives from now on, in order (it still handles them)."""
    seen: list[bytes] = []
    deliver = node.data_received

    def counting(link: Link, data: bytes) -> None:
        seen.append(data)
        deliver(link, data)

    node.data_received = counting  # type: ignore[method-assign]
    return seen
