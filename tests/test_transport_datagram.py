"""The batch-draining datagram transport, on real loopback sockets."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from dotsd.transport import datagram
from dotsd.transport.base import loop_clock
from dotsd.transport.datagram import BatchDatagramTransport, open_datagram

pytestmark = pytest.mark.timeout(30)


def _pending(sock: socket.socket) -> list[bytes]:
    out: list[bytes] = []
    while True:
        try:
            out.append(sock.recv(2048))
        except BlockingIOError:
            return out


class Echo(asyncio.DatagramProtocol):
    """Answers each datagram twice; notes what the client had received at that moment."""

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.transport: BatchDatagramTransport | None = None
        self.seen_by_client: list[int] = []
        self.arrived: list[bytes] = []
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, BatchDatagramTransport)
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        assert self.transport is not None
        self.arrived += _pending(self.client)
        self.seen_by_client.append(len(self.arrived))
        self.transport.sendto(data + b"/1", addr)
        self.transport.sendto(bytearray(data + b"/2"), addr)  # copied when held
        if data == b"bye":
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


@pytest.fixture(params=["mmsg", "python"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of reading and writing a batch: the compiled recvmmsg/sendmmsg one and the
    one-call-per-datagram Python one."""
    if request.param == "python":
        monkeypatch.setattr(datagram, "_dgram", None)
    elif datagram._dgram is None:
        pytest.skip("dotsd._speedups._dgram is not built, or DOTSD_PURE_PYTHON=1")
    return str(request.param)


@pytest.fixture
def sockets(mode: str) -> Any:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.setblocking(False)
    yield server, client
    client.close()
    server.close()


async def _until(cond: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.005)


async def _receive(client: socket.socket, into: list[bytes], count: int) -> list[bytes]:
    def enough() -> bool:
        into.extend(_pending(client))
        return len(into) >= count

    await _until(enough)
    return into


@pytest.mark.network
async def test_answers_leave_after_the_batch_in_order(sockets: Any) -> None:
    server, client = sockets
    proto = Echo(client)
    transport = open_datagram(proto, server, batch=64)
    for i in range(5):  # all queued before the loop reads: one batch
        client.sendto(b"m%d" % i, server.getsockname())
    await _until(lambda: len(proto.seen_by_client) == 5)
    assert proto.seen_by_client == [0] * 5  # nothing went out while the batch was read
    got = await _receive(client, list(proto.arrived), 10)
    assert got == [b"m%d/%d" % (i, k) for i in range(5) for k in (1, 2)]
    # Outside a batch a send leaves at once.
    transport.sendto(b"now", client.getsockname())
    assert _pending(client) == [b"now"]
    transport.close()


@pytest.mark.network
async def test_what_was_sent_before_a_close_still_leaves(sockets: Any) -> None:
    server, client = sockets
    proto = Echo(client)
    transport = open_datagram(proto, server)
    client.sendto(b"bye", server.getsockname())
    assert await _receive(client, [], 2) == [b"bye/1", b"bye/2"]
    assert transport.is_closing()
    transport.sendto(b"after", client.getsockname())  # closed: dropped
    # Once the transport has finished closing (connection_lost; its socket is closed then),
    # nothing more can leave: what has not arrived by then never will.
    await _until(lambda: proto.lost)
    assert _pending(client) == []


async def test_loop_clock_is_the_loops_time() -> None:
    loop = asyncio.get_running_loop()
    clock = loop_clock(loop)
    assert abs(clock() - loop.time()) < 0.05

    class Shifted(asyncio.SelectorEventLoop):
        def time(self) -> float:
            return 1000.0 + super().time()

    other = Shifted()
    try:
        assert abs(loop_clock(other)() - other.time()) < 0.05  # a loop's own clock is kept
    finally:
        other.close()


class Sink(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.errors: list[OSError] = []
        self.got: list[tuple[bytes, Any]] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.got.append((data, addr))

    def error_received(self, exc: Exception) -> None:
        assert isinstance(exc, OSError)
        self.errors.append(exc)


@pytest.mark.network
async def test_a_batch_of_sends_mixing_names_and_addresses_all_arrive(sockets: Any) -> None:
    # A host name cannot go through sendmmsg: it is sent the careful way, and so is
    # everything after it; all arrive, in order.
    server, client = sockets
    transport = open_datagram(Sink(), server)
    port = client.getsockname()[1]
    transport._held = held = []  # as during a read batch
    for i, host in enumerate(["127.0.0.1", "127.0.0.1", "localhost", "127.0.0.1"]):
        transport.sendto(b"d%d" % i, (host, port))
    transport._held = None
    transport._send_held(held)
    assert await _receive(client, [], 4) == [b"d0", b"d1", b"d2", b"d3"]
    transport.close()


@pytest.mark.network
async def test_sources_come_as_recvfrom_gives_them(sockets: Any) -> None:
    server, client = sockets
    sink = Sink()
    transport = open_datagram(sink, server)
    for i in range(3):
        client.sendto(b"x%d" % i, server.getsockname())
    await _until(lambda: len(sink.got) == 3)
    assert sink.got == [(b"x%d" % i, client.getsockname()) for i in range(3)]
    transport.close()


@pytest.mark.network
async def test_an_icmp_error_on_a_connected_socket_is_reported(mode: str) -> None:
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    gone = closed.getsockname()
    closed.close()  # nobody listens there now: the kernel answers port unreachable
    conn = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    conn.connect(gone)
    sink = Sink()
    transport = open_datagram(sink, conn)
    transport.sendto(b"anyone?")
    await _until(lambda: bool(sink.errors))
    assert isinstance(sink.errors[0], ConnectionRefusedError)
    transport.close()
    await asyncio.sleep(0)
