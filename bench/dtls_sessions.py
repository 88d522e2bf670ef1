"""Handshakes, round trips and memory per idle session of the DTLS server, on loopback.

    python -m bench.dtls_sessions [SESSIONS]

A child process runs a DTLS echo server (``dotsd.transport.dtls.serve_dtls``, mutual
certificates from ``dotsd.pki.init_pki`` in a temporary directory) that reports its own
memory on request; this process dials it: 200 handshakes one at a time, then 200 at once,
5,000 echo round trips over one session, then SESSIONS idle sessions (default 2,000) and the
round trips again, spread over 100 of them. Printed: handshakes/s, the round-trip time with
and without the idle sessions, and the server's heap (glibc mallinfo2), RSS and Python objects
(tracemalloc) per idle session. Client and server each have a process of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import multiprocessing
import os
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from dotsd.dtls import DtlsConfig, DtlsContext, client_context, server_context
from dotsd.link import Link
from dotsd.pki import init_pki
from dotsd.transport.dtls import DtlsLink, dtls_connect, serve_dtls

HANDSHAKES = 200  # timed one at a time, then as many at once
ROUND_TRIPS = 5000


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _heap_in_use() -> int:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _Echo:
    """The server's link handler: sends every datagram back."""

    def link_up(self, link: Link) -> None:
        pass

    def data_received(self, link: Link, data: bytes) -> None:
        link.send(data)

    def link_down(self, link: Link, reason: str | None) -> None:
        pass


class _Client:
    """The client's link handler: queues what comes back."""

    def __init__(self) -> None:
        self.data: asyncio.Queue[tuple[Link, bytes]] = asyncio.Queue()

    def link_up(self, link: Link) -> None:
        pass

    def data_received(self, link: Link, data: bytes) -> None:
        self.data.put_nowait((link, data))

    def link_down(self, link: Link, reason: str | None) -> None:
        pass


def _measured_server(pki_dir: str, pipe: Connection) -> None:
    """Runs in the child process: the echo server, answering the parent's commands."""
    import tracemalloc

    async def main() -> None:
        ctx = server_context(DtlsConfig.from_pki(Path(pki_dir)))
        server = await serve_dtls(_Echo(), "127.0.0.1", 0, ctx, idle_timeout=None)
        pipe.send(server.port)
        loop = asyncio.get_running_loop()
        while True:
            command = await loop.run_in_executor(None, pipe.recv)
            gc.collect()
            if command == "mark":
                traced = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0
                pipe.send((_heap_in_use(), _rss(), traced, server.session_count))
            elif command == "trace":
                tracemalloc.start()
                pipe.send(None)
            elif command == "untrace":
                tracemalloc.stop()
                pipe.send(None)
            else:
                server.close()
                pipe.send(None)
                return

    asyncio.run(main())


async def measure(cctx: DtlsContext, pipe: Connection, idle_sessions: int) -> None:
    loop = asyncio.get_running_loop()

    async def ask(command: str) -> Any:
        pipe.send(command)
        return await loop.run_in_executor(None, pipe.recv)

    try:
        port = await loop.run_in_executor(None, pipe.recv)
        node = _Client()
        addr = ("127.0.0.1", port)
        for _ in range(10):  # warm-up
            (await dtls_connect(node, addr, cctx)).close()
        started = time.perf_counter()
        links = [await dtls_connect(node, addr, cctx) for _ in range(HANDSHAKES)]
        sequential = HANDSHAKES / (time.perf_counter() - started)
        started = time.perf_counter()
        links += await asyncio.gather(*[dtls_connect(node, addr, cctx)
                                        for _ in range(HANDSHAKES)])
        concurrent = HANDSHAKES / (time.perf_counter() - started)
        link, n = links[0], ROUND_TRIPS
        started = time.perf_counter()
        for _ in range(n):
            link.send(b"x" * 60)
            await node.data.get()
        rtt = (time.perf_counter() - started) / n
        for lk in links:
            lk.close()
        await asyncio.sleep(0.3)  # the close_notify alerts reach the server
        heap0, rss0, _, count0 = await ask("mark")
        await ask("trace")
        _, _, traced0, _ = await ask("mark")
        idle: list[DtlsLink] = []
        for _ in range(0, idle_sessions, 100):
            idle += await asyncio.gather(*[dtls_connect(node, addr, cctx, timeout=30)
                                           for _ in range(100)])
        await asyncio.sleep(0.3)  # the server's last handshakes complete
        _, _, traced1, _ = await ask("mark")
        await ask("untrace")
        heap1, rss1, _, count1 = await ask("mark")
        started = time.perf_counter()
        for i in range(n):
            idle[i % 100].send(b"x" * 60)
            await node.data.get()
        rtt_loaded = (time.perf_counter() - started) / n
        sessions = count1 - count0
        print(f"mutual-certificate handshakes/s on loopback: {sequential:.0f} one at a time, "
              f"{concurrent:.0f} with {HANDSHAKES} dialling at once (client and server "
              "processes)")
        print(f"echo round trips over one session: {1 / rtt:.0f}/s ({rtt * 1e6:.0f} us); "
              f"with {count1} idle sessions: {rtt_loaded * 1e6:.0f} us")
        print(f"server memory per idle session ({sessions} sessions): "
              f"heap {(heap1 - heap0) / sessions / 1024:.1f} KiB, "
              f"RSS {(rss1 - rss0) / sessions / 1024:.1f} KiB, "
              f"Python objects (tracemalloc) {(traced1 - traced0) / sessions / 1024:.1f} KiB")
        for lk in idle:
            lk.close()
    finally:
        with contextlib.suppress(Exception):
            await ask("stop")


def main() -> None:
    args = sys.argv[1:]
    idle_sessions = int(args[0]) if args else 2000
    if not 100 <= idle_sessions <= 30_000:
        sys.exit("SESSIONS must be 100..30000")
    with tempfile.TemporaryDirectory() as tmp:
        pki = init_pki(Path(tmp) / "pki")
        ours, theirs = multiprocessing.Pipe()
        # Forked before this process runs an event loop.
        child = multiprocessing.get_context("fork").Process(
            target=_measured_server, args=(str(pki.directory), theirs))
        child.start()
        try:
            cctx = client_context(DtlsConfig.from_pki(pki, client=True))
            asyncio.run(measure(cctx, ours, idle_sessions))
        finally:
            child.join(10)
            if child.is_alive():
                child.kill()


if __name__ == "__main__":
    main()
