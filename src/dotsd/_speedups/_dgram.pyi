"""Types of the compiled ``dotsd._speedups._dgram`` (source: dgram.c)."""

from typing import Any

MAX_BATCH: int

def recv_batch(fd: int, count: int) -> list[tuple[bytes, Any]]: ...
def send_batch(fd: int, family: int, items: list[tuple[bytes, Any]], start: int) -> int: ...
