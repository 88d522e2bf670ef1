"""Bounded waits on a condition, for tests that would otherwise sleep and then assert."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

INTERVAL = 0.01  # seconds between two looks at the condition


async def wait_until(condition: Callable[[], object], timeout: float = 5.0, *,
                     what: str = "", interval: float = INTERVAL) -> None:
    """Return as soon as ``condition()`` is true; it is looked at every ``interval`` seconds
    (the event loop runs in between). Fails with an ``AssertionError`` naming ``what`` when it
    is still false after ``timeout`` seconds: the bound of a wait that should end much sooner,
    not a measure of speed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() >= deadline:
            raise AssertionError(f"still false after {timeout} s: {what or condition}")
        await asyncio.sleep(interval)
