"""Relays on loopback between a client and a server, for loss and cut connections.

:class:`UdpRelay` forwards datagrams in both directions through its own sockets (one socket
towards the server per client address, so the server sees each client as its own peer) and
drops what ``drop(direction, index)`` says: ``"up"`` is client → server, ``"down"`` server →
client, ``index`` counts the datagrams of that direction of that client from 0. It can also
inject datagrams towards the server from a client's socket (garbage that looks like it comes
from the client's address).

:class:`TcpRelay` forwards TCP connections and can cut all of them at once (RST both ways).

Both bind 127.0.0.1 only and are closed on exit of their context managers.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

HOST = "127.0.0.1"

DropPolicy = Callable[[str, int], bool]


def every_other(direction: str, index: int) -> bool:
    """Drop the 1st, 3rd, 5th ... datagram of each direction."""
    return index % 2 == 0


def no_loss(direction: str, index: int) -> bool:
    return False


@dataclass
class _Flow:
    client: tuple[str, int]
    sock: socket.socket  # towards the server
    up: int = 0
    down: int = 0


@dataclass
class UdpRelay:
    server: tuple[str, int]
    drop: DropPolicy = no_loss
    front: socket.socket = field(init=False)
    flows: dict[tuple[str, int], _Flow] = field(default_factory=dict)
    forwarded: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})
    dropped: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})

    def __post_init__(self) -> None:
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind((HOST, 0))
        self.front.setblocking(False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.front.fileno(), self._from_client)

    @property
    def port(self) -> int:
        return int(self.front.getsockname()[1])

    def _flow(self, client: tuple[str, int]) -> _Flow:
        flow = self.flows.get(client)
        if flow is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((HOST, 0))
            sock.connect(self.server)
            sock.setblocking(False)
            flow = self.flows[client] = _Flow(client, sock)
            self._loop.add_reader(sock.fileno(), self._from_server, flow)
        return flow

    def _from_client(self) -> None:
        for _ in range(64):  # bounded per wake-up
            try:
                data, addr = self.front.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            flow = self._flow((addr[0], addr[1]))
            index, flow.up = flow.up, flow.up + 1
            if self.drop("up", index):
                self.dropped["up"] += 1
                continue
            self.forwarded["up"] += 1
            with contextlib.suppress(OSError):
                flow.sock.send(data)

    def _from_server(self, flow: _Flow) -> None:
        for _ in range(64):
            try:
                data = flow.sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ICMP port unreachable from a closed server
                continue
            index, flow.down = flow.down, flow.down + 1
            if self.drop("down", index):
                self.dropped["down"] += 1
                continue
            self.forwarded["down"] += 1
            with contextlib.suppress(OSError):
                self.front.sendto(data, flow.client)

    def inject(self, data: bytes, client: tuple[str, int] | None = None) -> None:
        """Send ``data`` to the server from the relay socket of ``client`` (default: the only
        client), bypassing the drop policy: it arrives as if the client had sent it."""
        if client is None:
            (flow,) = self.flows.values()
        else:
            flow = self.flows[client]
        flow.sock.send(data)

    def close(self) -> None:
        for flow in self.flows.values():
            self._loop.remove_reader(flow.sock.fileno())
            flow.sock.close()
        self.flows.clear()
        self._loop.remove_reader(self.front.fileno())
        self.front.close()


@contextlib.asynccontextmanager
async def udp_relay(server: tuple[str, int], drop: DropPolicy = no_loss
                    ) -> AsyncIterator[UdpRelay]:
    relay = UdpRelay(server, drop)
    try:
        yield relay
    finally:
        relay.close()


class TcpRelay:
    """Accepts on a loopback port, connects each client to ``server``, pipes both ways."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.accepted = 0
        self._pairs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._listener: asyncio.Server | None = None

    async def start(self) -> None:
        self._listener = await asyncio.start_server(self._accept, HOST, 0)

    @property
    def port(self) -> int:
        assert self._listener is not None
        return int(self._listener.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.server), 5)
        except (OSError, TimeoutError):
            writer.transport.abort()
            return
        self._pairs.append((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        dst.transport.abort()

    def cut(self) -> int:
        """Reset every relayed connection, both ways (as a crashed middlebox would)."""
        pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for writer in (a, b):
                sock = writer.get_extra_info("socket")
                if sock is not None:  # SO_LINGER 0: close sends RST
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        b"\x01\x00\x00\x00\x00\x00\x00\x00")
                writer.transport.abort()
        return len(pairs)

    async def close(self) -> None:
        self.cut()
        if self._listener is not None:
            self._listener.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._listener.wait_closed(), 5)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def tcp_relay(server: tuple[str, int]) -> AsyncIterator[TcpRelay]:
    relay = TcpRelay(server)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.close()
