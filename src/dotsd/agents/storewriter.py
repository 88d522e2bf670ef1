"""The store's write transactions in a thread of their own, off the event loop.

A durable commit costs an fsync (``synchronous=FULL``, see :mod:`dotsd.store.sqlite`): a few
milliseconds on a disk, far longer on a busy one. Done on the event loop, every acknowledged
mitigation request would stall every other client's heartbeats and requests for that long,
just when an attack brings many of them at once. :class:`StoreWriter` owns a second
connection to the same store, in one worker thread, and runs each write there as one
transaction, in the order submitted; the caller awaits its completion before it acknowledges
(RFC 9132 §4.4.1: a 2.01 means the request is installed, so nothing acknowledged is lost).
Reads stay on the loop's own connection: in WAL mode they never wait for the writer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from dotsd.store.base import Store

__all__ = ["StoreWriter"]

log = logging.getLogger("dotsd.agents.storewriter")

T = TypeVar("T")


class StoreWriter:
    """One worker thread with its own store from ``open_store`` (called in that thread: an
    SQLite connection belongs to the thread that opened it). Raises what ``open_store``
    raises."""

    def __init__(self, open_store: Callable[[], Store]) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="dotsd-store-writer")
        self._store: Store | None = None
        self._thread: threading.Thread | None = None
        self.commits = 0
        self.failures = 0
        try:
            self._pool.submit(self._open, open_store).result()
        except BaseException:
            self._pool.shutdown(wait=True)
            raise

    def _open(self, open_store: Callable[[], Store]) -> None:
        self._store = open_store()
        self._thread = threading.current_thread()

    def _run(self, work: Callable[[Store], T]) -> T:
        store = self._store
        assert store is not None and threading.current_thread() is self._thread
        try:
            with store.transaction():
                result = work(store)
        except BaseException:
            self.failures += 1
            raise
        self.commits += 1
        return result

    def submit(self, work: Callable[[Store], T]) -> asyncio.Future[T]:
        """Run ``work(store)`` as one transaction after those submitted before; the future
        completes once it is committed (or with its exception, rolled back)."""
        loop = asyncio.get_running_loop()
        return asyncio.wrap_future(self._pool.submit(self._run, work), loop=loop)

    async def drain(self) -> None:
        """Wait until every write submitted so far is done."""
        await asyncio.wrap_future(self._pool.submit(lambda: None))

    def close(self) -> None:
        """Finish the queued writes, then close the writer's store (blocks until done)."""
        def close_store() -> None:
            if self._store is not None:
                self._store.close()
                self._store = None

        try:
            self._pool.submit(close_store).result()
        except RuntimeError:  # already shut down
            pass
        except Exception:
            log.exception("closing the store writer failed")
        self._pool.shutdown(wait=True)
