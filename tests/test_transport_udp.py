"""Plain UDP links on loopback: dotsd.transport.udp."""

from __future__ import annotations

import asyncio
import socket

import pytest
from support.loopback import HOSTS, within
from support.waiting import wait_until

from dotsd.link import Link
from dotsd.transport.udp import UdpEndpoint, open_udp, peer_key

pytestmark = [pytest.mark.network, pytest.mark.timeout(30)]







class Recorder:
    """A LinkHandler that records everything; echoes with a prefix when ``echo``."""

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.ups: asyncio.Queue[Link] = asyncio.Queue()
        self.data: asyncio.Queue[tuple[Link, bytes]] = asyncio.Queue()
        self.downs: list[tuple[Link, str | None]] = []

    def link_up(self, link: Link) -> None:
        self.ups.put_nowait(link)

    def data_received(self, link: Link, data: bytes) -> None:
        if self.echo:
            link.send(b"echo:" + data)
        else:
            self.data.put_nowait((link, data))

    def link_down(self, link: Link, reason: str | None) -> None:
        self.downs.append((link, reason))


@pytest.mark.parametrize("host", HOSTS)
async def test_echo_and_link_per_peer(host: str) -> None:
    server_h, client_h = Recorder(echo=True), Recorder()
    async with await open_udp(server_h, (host, 0)) as server, \
            await open_udp(client_h, (host, 0)) as client:
        link = client.connect((host, server.port))
        assert (await within(client_h.ups.get())) is link
        assert link.info.transport == "udp" and link.info.initiator
        assert not link.info.secure and not link.info.reliable
        assert client.connect((host, server.port)) is link  # one link per address
        for i in range(5):
            link.send(b"m%d" % i)
            got_link, data = await within(client_h.data.get())
            assert got_link is link and data == b"echo:m%d" % i
        (server_link,) = server.links
        assert not server_link.info.initiator
        assert peer_key(server_link.info.address) == peer_key(client.address)
        assert len(server) == 1
    assert [reason for _, reason in client_h.downs] == ["closed"]
    assert [reason for _, reason in server_h.downs] == ["closed"]


async def test_many_peers_one_socket() -> None:
    server_h = Recorder(echo=True)
    async with await open_udp(server_h, ("127.0.0.1", 0)) as server:
        clients = []
        handlers = []
        for _ in range(50):
            h = Recorder()
            ep = await open_udp(h, ("127.0.0.1", 0))
            clients.append(ep)
            handlers.append(h)
            ep.connect(("127.0.0.1", server.port)).send(b"hi")
        for h in handlers:
            _, data = await within(h.data.get())
            assert data == b"echo:hi"
        assert len(server) == 50
        for ep in clients:
            ep.close()


async def test_link_limit_and_idle_cleanup() -> None:
    server_h = Recorder()
    async with await open_udp(server_h, ("127.0.0.1", 0), max_links=2, idle_timeout=0.3,
                              sweep_interval=0.05) as server:
        senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
        try:
            for s in senders:
                s.sendto(b"x", ("127.0.0.1", server.port))
            for _ in range(2):
                await within(server_h.data.get())
            await wait_until(lambda: server.dropped == 1, what="the third sender dropped")
            assert len(server) == 2
            # Keep the first one busy; the second goes idle.
            for _ in range(8):
                senders[0].sendto(b"keepalive", ("127.0.0.1", server.port))
                await asyncio.sleep(0.06)
            reasons = [reason for _, reason in server_h.downs]
            assert reasons == ["idle timeout"]
            assert len(server) == 1
            (alive,) = server.links
            assert alive.info.address[1] == senders[0].getsockname()[1]
        finally:
            for s in senders:
                s.close()


async def test_handler_errors_do_not_break_the_endpoint() -> None:
    class Broken(Recorder):
        def data_received(self, link: Link, data: bytes) -> None:
            if data == b"boom":
                raise RuntimeError("handler bug")
            super().data_received(link, data)

    h = Broken()
    async with await open_udp(h, ("127.0.0.1", 0)) as server:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"boom", ("127.0.0.1", server.port))
            s.sendto(b"fine", ("127.0.0.1", server.port))
            _, data = await within(h.data.get())
            assert data == b"fine"


async def test_closed_link_is_forgotten_and_recreated() -> None:
    h = Recorder()
    async with await open_udp(h, ("127.0.0.1", 0)) as server:
        assert isinstance(server, UdpEndpoint)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"one", ("127.0.0.1", server.port))
            first, _ = await within(h.data.get())
            first.close()
            first.send(b"dropped")  # no error, nothing sent
            assert len(server) == 0
            s.sendto(b"two", ("127.0.0.1", server.port))
            second, _ = await within(h.data.get())
            assert second is not first
            assert h.ups.qsize() == 2
