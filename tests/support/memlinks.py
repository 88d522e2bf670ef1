"""In-memory links between two LinkHandlers, delivered through the event loop."""

from __future__ import annotations

import asyncio

from dotsd.link import LinkHandler, PeerInfo, make_peer_info


class MemLink:
    def __init__(self, info: PeerInfo) -> None:
        self._info = info
        self.peer: MemLink | None = None
        self.handler: LinkHandler | None = None
        self.closed = False
        self.drop_next = 0

    @property
    def info(self) -> PeerInfo:
        return self._info

    def send(self, data: bytes) -> None:
        if self.closed or self.peer is None:
            return
        if self.drop_next:
            self.drop_next -= 1
            return
        peer = self.peer
        asyncio.get_running_loop().call_soon(peer._deliver, data)

    def _deliver(self, data: bytes) -> None:
        if not self.closed and self.handler is not None:
            self.handler.data_received(self, data)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.handler is not None:
            self.handler.link_down(self, "closed")
        if self.peer is not None and not self.peer.closed:
            self.peer.close()


def link_pair(a: LinkHandler, b: LinkHandler, transport: str = "udp") -> tuple[MemLink, MemLink]:
    """Connect handler a (dialler) with b; returns (a's link, b's link)."""
    la = MemLink(make_peer_info(("127.0.0.1", 2), transport, True))
    lb = MemLink(make_peer_info(("127.0.0.1", 1), transport, False))
    la.peer, lb.peer = lb, la
    la.handler, lb.handler = a, b
    a.link_up(la)
    b.link_up(lb)
    return la, lb
