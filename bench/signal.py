"""``python -m bench signal``: what one DOTS request costs the signal server as it fills up.

An ISP's DOTS server holds the mitigations and sessions of thousands of clients, and during a
large attack many of them ask at once. This benchmark drives :class:`dotsd.agents.server.
SignalServer` in process (no sockets: the CoAP bytes go straight to its node, as a transport
would hand them over, and the server's timer work runs after each request as its loop would
run it) with its SQLite store, and measures, for tables of 0 to 50,000 stored mitigations and
0 to 10,000 live sessions:

* a new mitigation request (PUT, 2.01): validation, overlap checks, store commit, timers;
* a heartbeat (PUT, 2.04);
* a GET of one mitigation (2.05);
* the time to load the state on start (what a restart costs).

Each client is a PSK identity (no certificate to make); every fourth stored mitigation
belongs to a new client. The table ends with each cost at the largest size divided by its cost
on an empty server: about 1 means a request costs the same however full the server is.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dotsd.agents.server import SignalServer, mitigation_record
from dotsd.coap.codec import decode, encode
from dotsd.coap.message import Message
from dotsd.coap.numbers import Code, ContentFormat, MessageType, OptionNumber
from dotsd.link import cuid_from_psk_identity, make_peer_info
from dotsd.model.codec import to_cbor
from dotsd.signal.heartbeat import HEARTBEAT_PATH, build_heartbeat_body
from dotsd.signal.mitigation import MitigationPutOutcome
from dotsd.signal.policy import Policy
from dotsd.signal.scope import MITIGATION_MEMBER
from dotsd.signal.uri import mitigate_path
from dotsd.store import SqliteStore
from dotsd.transport.base import LinkBase

POLICY = Policy(allowed_prefixes=(ipaddress.ip_network("10.0.0.0/8"),), allowed_domains=(),
                max_lifetime=86400)
T0 = 1_700_000_000.0


class _Link(LinkBase):
    """A transport link that keeps what the server sends."""

    __slots__ = ("sent",)

    def __init__(self, n: int) -> None:
        super().__init__(make_peer_info(("2001:db8::1", 10000 + n), "dtls", False,
                                        psk_identity=f"client-{n}".encode()))
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def close(self) -> None:
        self._closed = True


def _prefix(i: int) -> str:
    return f"{ipaddress.ip_address('10.0.0.0') + 16 * i}/28"


def _mitigation_body(i: int) -> dict[str, Any]:
    return {MITIGATION_MEMBER: {"scope": [{"target-prefix": [_prefix(i)], "target-protocol": [17],
                                "lifetime": 3600}]}}


def _put(path: tuple[str, ...], body: dict[str, Any], mid: int) -> bytes:
    msg = Message(mtype=MessageType.NON, code=Code.PUT, mid=mid & 0xFFFF,
                  token=mid.to_bytes(4, "big")).set_path("/".join(path))
    msg.payload = to_cbor(body)
    msg.add(OptionNumber.CONTENT_FORMAT, ContentFormat.DOTS_CBOR)
    return encode(msg)


def _get(path: tuple[str, ...], mid: int) -> bytes:
    msg = Message(mtype=MessageType.NON, code=Code.GET, mid=mid & 0xFFFF,
                  token=mid.to_bytes(4, "big")).set_path("/".join(path))
    return encode(msg)


@dataclass
class Row:
    mitigations: int
    sessions: int
    load_ms: float
    put_us: float
    heartbeat_us: float
    get_us: float
    checks: dict[str, int] = field(default_factory=dict)


def _populate(state: Path, mitigations: int) -> None:
    """Stored mitigations, as a server that accepted them would have kept them."""
    store = SqliteStore.open(state)
    table_server = SignalServer(policy=POLICY, clock=lambda: T0)
    with store.transaction():
        for i in range(mitigations):
            psk = f"client-{100_000 + i // 4}".encode()
            cuid = cuid_from_psk_identity(psk)
            if i % 4 == 0:
                store.bind_cuid(cuid, f"psk:{psk.hex()}", T0)
            outcome = table_server.table.put(cuid, i % 4 + 1, None, _mitigation_body(i), T0)
            assert isinstance(outcome, MitigationPutOutcome)
            store.put_mitigation(mitigation_record(outcome.mitigation, T0))
    store.close()


async def _measure(mitigations: int, sessions: int, requests: int) -> Row:
    with tempfile.TemporaryDirectory(prefix="dotsd-bench-") as tmp:
        state = Path(tmp)
        _populate(state, mitigations)
        clock = [T0 + 1]
        started = time.perf_counter()
        server = SignalServer(store=SqliteStore.open(state), policy=POLICY,
                              clock=lambda: clock[0])
        load_ms = (time.perf_counter() - started) * 1e3
        assert len(server.table) == mitigations
        node = server.node
        links = [_Link(n) for n in range(max(sessions, 1))]
        for n, link in enumerate(links):  # one heartbeat opens each session
            node.link_up(link)
            node.data_received(link, _put(HEARTBEAT_PATH, build_heartbeat_body(True), n))
        assert len(server.sessions) == len(links)
        link = links[0]
        cuid = cuid_from_psk_identity(b"client-0")
        gc.collect()

        def timed(make: Callable[[int], bytes], expect: Code) -> float:
            times: list[float] = []
            for k in range(requests):
                data = make(k)
                clock[0] += 0.001
                before = len(link.sent)
                t = time.perf_counter()
                node.data_received(link, data)
                server.handle_timer()
                server.get_timer()
                times.append(time.perf_counter() - t)
                reply = decode(link.sent[-1])
                if len(link.sent) == before or reply.code != expect:
                    raise RuntimeError(f"request {k}: {reply.code} {reply.payload[:200]!r}")
            return statistics.median(times) * 1e6

        base = mitigations + 1000
        put_us = timed(lambda k: _put(mitigate_path(cuid, 10 + k), _mitigation_body(base + k),
                                      20_000 + k), Code.CREATED)
        hb_us = timed(lambda k: _put(HEARTBEAT_PATH, build_heartbeat_body(True), 40_000 + k),
                      Code.CHANGED)
        get_us = timed(lambda k: _get(mitigate_path(cuid, 10), 50_000 + k), Code.CONTENT)
        if server.store is not None:
            server.store.close()
        return Row(mitigations, sessions, load_ms, put_us, hb_us, get_us,
                   {"stored": len(server.table)})


def run(sizes: list[int], sessions: list[int], requests: int) -> list[Row]:
    asyncio.run(_measure(0, 1, 20))  # warm-up: imports, caches, the first YANG compile
    rows = []
    for s in sessions:
        for n in sizes:
            rows.append(asyncio.run(_measure(n, s, requests)))
    return rows


def table(rows: list[Row]) -> str:
    lines = [f"{'mitigations':>11} {'sessions':>8} {'load ms':>8} {'PUT new µs':>11} "
             f"{'heartbeat µs':>12} {'GET µs':>8}"]
    for r in rows:
        lines.append(f"{r.mitigations:>11} {r.sessions:>8} {r.load_ms:>8.0f} {r.put_us:>11.0f} "
                     f"{r.heartbeat_us:>12.0f} {r.get_us:>8.0f}")
    first, last = rows[0], rows[-1]
    lines.append(f"ratio largest/empty: PUT {last.put_us / first.put_us:.2f}, heartbeat "
                 f"{last.heartbeat_us / first.heartbeat_us:.2f}, GET "
                 f"{last.get_us / first.get_us:.2f} (1.00: flat)")
    return "\n".join(lines)


def report(quick: bool, requests: int, as_json: bool) -> int:
    """Measure and print (``python -m bench signal``)."""
    if quick:
        sizes, sessions = [0, 2000, 10_000], [1, 1000]
    else:
        sizes, sessions = [0, 10_000, 50_000], [1, 10_000]
    rows = run(sizes, sessions, requests)
    if as_json:
        print(json.dumps([r.__dict__ for r in rows], indent=2))
    else:
        print(table(rows))
    return 0
