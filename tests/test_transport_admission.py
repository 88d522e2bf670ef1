"""Limits on unauthenticated connections (dotsd.transport.admission), pure and over TCP/TLS:
one source cannot fill the pool, the oldest pending connection makes room, an established
one is never pushed out, and an idle connection holds no TLS state."""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.loopback import within

from dotsd.link import Link
from dotsd.pki import PkiPaths
from dotsd.tls import client_context, server_context
from dotsd.transport.admission import Admission, AdmissionLimits, source_key
from dotsd.transport.tcp import connect_tcp, serve_tcp


def test_source_key() -> None:
    assert source_key(("192.0.2.7", 1)) == "192.0.2.7"
    assert source_key(("2001:db8:1:2::5", 1)) == source_key(("2001:db8:1:2:ffff::9", 2))
    assert source_key(("2001:db8:1:2::5", 1)) != source_key(("2001:db8:1:3::5", 1))
    assert source_key(("::ffff:192.0.2.7", 1)) == "192.0.2.7"  # IPv4-mapped
    assert source_key(("fe80::1%eth0", 1)) == source_key(("fe80::2", 1))


@given(st.text(max_size=60))
def test_source_key_never_raises(host: str) -> None:
    assert isinstance(source_key((host, 0)), str)


def test_per_source_then_oldest_pending_evicted_established_kept() -> None:
    adm: Admission[str] = Admission(AdmissionLimits(total=4, pending=3, per_source=2))
    assert adm.admit("a1", ("10.0.0.1", 1)) == (True, None)
    assert adm.admit("a2", ("10.0.0.1", 2)) == (True, None)
    assert adm.admit("a3", ("10.0.0.1", 3)) == (False, None)  # per source
    assert adm.admit("b1", ("10.0.0.2", 1)) == (True, None)
    # Pending pool full: the oldest pending one goes.
    assert adm.admit("c1", ("10.0.0.3", 1)) == (True, "a1")
    assert adm.evicted == 1 and adm.refused == 1
    adm.authenticated("a2")
    adm.authenticated("b1")
    adm.authenticated("c1")
    assert (adm.pending, adm.established) == (0, 3)
    assert adm.admit("d1", ("10.0.0.4", 1)) == (True, None)
    # Total reached with only established ones and one pending: the pending one goes, never
    # an established one; with none pending, the newcomer is refused.
    assert adm.admit("e1", ("10.0.0.5", 1)) == (True, "d1")
    adm.authenticated("e1")
    assert adm.admit("f1", ("10.0.0.6", 1)) == (False, None)
    adm.gone("a2", established=True)
    assert adm.admit("f1", ("10.0.0.6", 1)) == (True, None)
    adm.gone("f1", established=False)
    assert adm.pending == 0
    with pytest.raises(ValueError):
        AdmissionLimits(total=1, pending=0, per_source=1)


class _Node:
    def __init__(self) -> None:
        self.ups: asyncio.Queue[Link] = asyncio.Queue()

    def link_up(self, link: Link) -> None:
        self.ups.put_nowait(link)

    def data_received(self, link: Link, data: bytes) -> None:
        pass

    def link_down(self, link: Link, reason: str | None) -> None:
        pass


def _idle(port: int, local: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(local, 0))
    sock.settimeout(5)
    return sock


def _closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, TimeoutError):
        return True


@pytest.mark.network
async def test_idle_connections_cannot_starve_a_tls_client(pki: PkiPaths) -> None:
    server_ctx = server_context(pki.server_cert, pki.server_key, pki.ca_cert)
    node = _Node()
    limits = AdmissionLimits(total=100, pending=3, per_source=2)
    server = await serve_tcp(node, "127.0.0.1", 0, ssl_context=server_ctx, limits=limits)
    socks: list[socket.socket] = []
    try:
        port = server.port
        socks += [_idle(port, "127.0.0.2"), _idle(port, "127.0.0.2")]
        third = _idle(port, "127.0.0.2")  # the same source, one too many: closed at once
        socks.append(third)
        assert await asyncio.to_thread(_closed_by_server, third)
        socks.append(_idle(port, "127.0.0.3"))  # another source
        await within(_until(lambda: server.admission.pending == 3))
        # Idle connections hold no TLS state (it is made when the ClientHello comes).
        assert all(p._tls is None for p in server._protocols)
        # An honest client (from 127.0.0.1): the oldest idle connection makes room.
        client_ctx: ssl.SSLContext = client_context(pki.client_cert, pki.client_key,
                                                    pki.ca_cert)
        link = await connect_tcp(_Node(), "127.0.0.1", port, client_ctx,
                                 server_hostname="localhost")
        await within(node.ups.get())
        assert server.admission.evicted == 1 and server.admission.established == 1
        assert await asyncio.to_thread(_closed_by_server, socks[0])
        link.close()
    finally:
        for sock in socks:
            sock.close()
        server.close()
        await server.wait_closed()


async def _until(check: Any) -> None:
    while not check():
        await asyncio.sleep(0.01)
