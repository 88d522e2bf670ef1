"""Server cost per request on the DTLS path, without sockets.

    python -m bench.dtls_path [N] [--profile]

A real ``DtlsServer`` (fed through a fake datagram transport) runs a ``CoapNode`` with one
resource; a client ``DtlsConnection`` in memory completes a mutual-certificate handshake, then
N CON GETs are encrypted up front and fed to the server back to back. What is timed is the
server's Python work per request (record layer, CoAP, dispatch, response), not the kernel.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dotsd.coap import codec
from dotsd.coap.message import Message
from dotsd.coap.numbers import Code, MessageType, OptionNumber
from dotsd.coap.site import IncomingRequest, Resource, Site
from dotsd.dtls.connection import DtlsConnection
from dotsd.dtls.context import DtlsConfig, client_context, server_context
from dotsd.dtls.events import HandshakeCompleted
from dotsd.node import CoapNode
from dotsd.pki import init_pki
from dotsd.transport.dtls import DtlsServer

_PEER = ("127.0.0.1", 40000)


class _Time(Resource):
    def get(self, request: IncomingRequest) -> Message:
        return Message(code=Code.CONTENT, payload=b"Nov 23 21:42:35").add(
            OptionNumber.MAX_AGE, 1)


class _Capture(asyncio.DatagramTransport):
    def __init__(self) -> None:
        super().__init__()
        self.out: list[bytes] = []

    def sendto(self, data: Any, addr: Any = None) -> None:
        self.out.append(bytes(data))

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5684) if name == "sockname" else default

    def close(self) -> None:
        pass


async def prepare(n: int) -> tuple[DtlsServer, _Capture, list[bytes]]:
    """A server with one established session, and ``n`` protected CON GETs for it."""
    with tempfile.TemporaryDirectory() as tmp:
        pki = init_pki(Path(tmp))
        site = Site()
        site.add("/time", _Time())
        server = DtlsServer(CoapNode(site), server_context(DtlsConfig.from_pki(pki)))
        wire = _Capture()
        server.connection_made(wire)
        client = DtlsConnection(client_context(DtlsConfig.from_pki(pki, client=True)),
                                time.monotonic(), server_hostname="localhost")
    done = False
    for _ in range(20):  # bounded handshake
        for datagram in client.datagrams_to_send():
            server.datagram_received(datagram, _PEER)
        for datagram in wire.out:
            client.receive_datagram(datagram, time.monotonic())
        wire.out.clear()
        while (event := client.next_event()) is not None:
            done = done or isinstance(event, HandshakeCompleted)
        if done:
            break
    if not done:
        raise RuntimeError("handshake did not complete")
    for datagram in client.datagrams_to_send():
        server.datagram_received(datagram, _PEER)
    wire.out.clear()
    requests: list[bytes] = []
    for i in range(n):
        msg = Message(MessageType.CON, Code.GET, i & 0xFFFF, i.to_bytes(4, "big"))
        client.send(codec.encode(msg.set_path("/time")))
        requests.extend(client.datagrams_to_send())
    return server, wire, requests


def run(server: DtlsServer, requests: list[bytes]) -> None:
    """Feed every request to the server, back to back."""
    received = server.datagram_received
    for datagram in requests:
        received(datagram, _PEER)


async def measure(n: int, profile: bool = False) -> float:
    """Microseconds of server work per request (with ``profile``: print where it goes)."""
    server, wire, requests = await prepare(n)
    if profile:
        import cProfile
        import pstats

        with cProfile.Profile() as prof:
            run(server, requests)
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        return 0.0
    start = time.perf_counter()
    run(server, requests)
    elapsed = time.perf_counter() - start
    if len(wire.out) != n:
        raise RuntimeError(f"{len(wire.out)} responses for {n} requests")
    return 1e6 * elapsed / n


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--profile"]
    n = int(args[0]) if args else 50_000
    cost = asyncio.run(measure(n, profile="--profile" in sys.argv))
    if not cost:
        return
    print(f"DTLS server path: {cost:.1f} µs per request ({1e6 / cost:,.0f} requests/s "
          f"of Python work, before any syscall)")


if __name__ == "__main__":
    main()
