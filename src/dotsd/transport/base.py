"""What the asyncio transports share: the base of their links, the listener interface and
the loop clock.

The link types every layer uses (:class:`~dotsd.link.Address`, :class:`~dotsd.link.PeerInfo`,
the :class:`~dotsd.link.Link` and :class:`~dotsd.link.LinkHandler` protocols) live in
:mod:`dotsd.link`, below the transports.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Callable
from typing import Self

from dotsd.link import PeerInfo


class LinkBase:
    """What every concrete link shares: who the peer is, and whether the link is closed."""

    __slots__ = ("_closed", "_info")

    def __init__(self, info: PeerInfo) -> None:
        self._info = info
        self._closed = False

    @property
    def info(self) -> PeerInfo:
        return self._info

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        # How the layers above (which take a link as an opaque peer key) name it in logs.
        host, port = self._info.address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"<{type(self).__name__} {self._info.transport} {host}:{port}>"


class Listener(abc.ABC):
    """What every listening transport offers: ``close()``, ``await wait_closed()`` and
    ``async with``."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop serving and close every link."""

    @abc.abstractmethod
    async def wait_closed(self, timeout: float = 5.0) -> None:
        """Wait until everything is closed (at most ``timeout`` seconds)."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()


def loop_clock(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    """``loop.time`` as a function to call per datagram: ``time.monotonic`` itself when that
    is all the loop's ``time()`` does (asyncio's own loops), which saves a Python call."""
    if (getattr(type(loop), "time", None) is asyncio.BaseEventLoop.time
            and "time" not in getattr(loop, "__dict__", {})):
        return time.monotonic
    return loop.time


async def wait_event(event: asyncio.Event | None, timeout: float) -> None:
    """Wait for ``event`` if there is one (``wait_closed`` of the datagram listeners)."""
    if event is not None:
        await asyncio.wait_for(event.wait(), timeout)
