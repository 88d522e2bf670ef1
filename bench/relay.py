"""A layer-2 relay with delay and seeded random loss, for ``python -m bench loss``.

Runs in the middle namespace of a lane (client <-> relay <-> server, two veth pairs) and
copies every Ethernet frame from one veth end to the other with AF_PACKET raw sockets, so
both ends keep their addresses as if on one link. Each direction holds its frames for a
fixed delay (25 ms: a 50 ms round trip) and drops a seeded random share of the IP packets
that carry UDP or TCP. Nothing else is ever dropped (ARP, ICMP, neighbour discovery).

    ip netns exec NS python -m bench.relay --a IF_CLIENT_SIDE --b IF_SERVER_SIDE \\
        --control /path/relay.sock [--delay 0.025] [--max-seconds 14400]

"up" is a→b (client → server), "down" is b→a. The driver talks to it over a Unix stream
socket, one command per line, one JSON line back:

    loss UP DOWN SEED   loss percentages (0..100) and a seed: each direction gets
                        random.Random(f"{SEED}/up") or ".../down", so a trial's loss draws
                        are reproducible
    reset               zero the counters (a new trial)
    stats               the counters since the last reset
    trace               the first lossable frames since the last reset: [wall time,
                        "up"/"down", length, "drop"/"hold"], at most 400
    ping                {"ok": true}
    quit                stop

The pure parts (frame classification, the delay line, the loss gate, the counters) are
separate from the sockets so tests/test_bench_relay.py can check them without a network.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import selectors
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Final

ETH_P_ALL: Final = 0x0003
ETH_P_IP: Final = 0x0800
ETH_P_IPV6: Final = 0x86DD
ETH_P_8021Q: Final = 0x8100
PACKET_OUTGOING: Final = 4  # linux/if_packet.h: a frame this host sent (the relay's own copies)
IPPROTO_TCP: Final = 6
IPPROTO_UDP: Final = 17
LOSSY_PROTOCOLS: Final = frozenset({IPPROTO_TCP, IPPROTO_UDP})
MAX_FRAME: Final = 65536
MAX_QUEUE: Final = 10000  # frames held per direction; beyond that a frame is dropped (counted)
MAX_LATENESS_SAMPLES: Final = 20000
MAX_COMMAND: Final = 4096
MAX_TRACE: Final = 400


def lossable(frame: bytes) -> bool:
    """Whether loss may apply to ``frame``: an IPv4 or IPv6 packet carrying UDP or TCP.

    ARP, ICMP, ICMPv6 (neighbour discovery) and anything not understood are never dropped.
    An IPv6 packet whose first next header is an extension header is not looked into
    (the lanes carry none)."""
    if len(frame) < 14:
        return False
    ethertype = int.from_bytes(frame[12:14], "big")
    offset = 14
    if ethertype == ETH_P_8021Q and len(frame) >= 18:
        ethertype = int.from_bytes(frame[16:18], "big")
        offset = 18
    if ethertype == ETH_P_IP:
        if len(frame) < offset + 20 or frame[offset] >> 4 != 4:
            return False
        return frame[offset + 9] in LOSSY_PROTOCOLS
    if ethertype == ETH_P_IPV6:
        if len(frame) < offset + 40 or frame[offset] >> 4 != 6:
            return False
        return frame[offset + 6] in LOSSY_PROTOCOLS
    return False


class LossGate:
    """Drops a share ``percent`` (0..100) of what it is asked about, from a seeded generator:
    the same seed gives the same sequence of decisions."""

    def __init__(self, percent: float = 0.0, seed: str | int = 0) -> None:
        if not 0.0 <= percent <= 100.0:
            raise ValueError(f"loss percentage out of 0..100: {percent}")
        self.percent = percent
        self._rng = random.Random(seed)

    def drop(self) -> bool:
        if self.percent <= 0.0:
            return False
        # One draw per decision even at 100 %, so a sequence does not depend on the rate's
        # boundary cases.
        return self._rng.random() * 100.0 < self.percent


class DelayLine:
    """Frames held for a fixed delay, released in arrival order (a fixed delay keeps FIFO
    order, so a deque suffices; due times never decrease)."""

    def __init__(self, delay: float, limit: int = MAX_QUEUE) -> None:
        if delay < 0:
            raise ValueError("negative delay")
        self.delay = delay
        self.limit = limit
        self._queue: collections.deque[tuple[float, bytes]] = collections.deque()

    def __len__(self) -> int:
        return len(self._queue)

    def push(self, frame: bytes, now: float) -> bool:
        """Hold ``frame`` until ``now + delay``; False (not held) when the line is full."""
        if len(self._queue) >= self.limit:
            return False
        self._queue.append((now + self.delay, frame))
        return True

    def next_due(self) -> float | None:
        return self._queue[0][0] if self._queue else None

    def pop_due(self, now: float) -> list[tuple[float, bytes]]:
        """The (due time, frame) pairs due at ``now``, oldest first."""
        out: list[tuple[float, bytes]] = []
        while self._queue and self._queue[0][0] <= now:
            out.append(self._queue.popleft())
        return out

    def clear(self) -> None:
        self._queue.clear()


@dataclass
class Counters:
    """What one direction saw since the last reset. ``first_wall``/``last_wall``: wall-clock
    times (time.time()) of the first and last lossable frame offered to the direction."""

    seen: int = 0  # lossable frames offered (sent by the end host)
    dropped: int = 0  # lossable frames dropped by the loss gate
    forwarded: int = 0  # frames of any kind sent on
    other: int = 0  # frames loss never applies to (ARP, ICMP, ...)
    overflow: int = 0  # frames dropped because the delay line was full
    first_wall: float | None = None
    last_wall: float | None = None
    lateness: list[float] = field(default_factory=list)  # send time - due time, seconds

    def offered(self, is_lossable: bool, wall: float) -> None:
        if not is_lossable:
            self.other += 1
            return
        self.seen += 1
        if self.first_wall is None:
            self.first_wall = wall
        self.last_wall = wall

    def late(self, seconds: float) -> None:
        if len(self.lateness) < MAX_LATENESS_SAMPLES:
            self.lateness.append(seconds)

    def summary(self) -> dict[str, Any]:
        late = sorted(self.lateness)
        return {
            "seen": self.seen, "dropped": self.dropped, "forwarded": self.forwarded,
            "other": self.other, "overflow": self.overflow,
            "first_wall": self.first_wall, "last_wall": self.last_wall,
            "late_p50_ms": _ms(_quantile(late, 0.5)), "late_p99_ms": _ms(_quantile(late, 0.99)),
            "late_max_ms": _ms(late[-1] if late else None),
        }


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, int(q * len(values)))]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000.0, 3)


class Direction:
    """One way through the relay: a loss gate, a delay line and counters."""

    def __init__(self, name: str, delay: float) -> None:
        self.name = name
        self.gate = LossGate()
        self.line = DelayLine(delay)
        self.counters = Counters()

    def offer(self, frame: bytes, now: float, wall: float) -> str:
        """A frame arrived from this direction's sender: count it, maybe drop it, else hold
        it. Returns what happened: "drop", "hold", "other" (held, never lossable) or
        "overflow"."""
        is_lossable = lossable(frame)
        self.counters.offered(is_lossable, wall)
        if is_lossable and self.gate.drop():
            self.counters.dropped += 1
            return "drop"
        if not self.line.push(frame, now):
            self.counters.overflow += 1
            return "overflow"
        return "hold" if is_lossable else "other"

    def set_loss(self, percent: float, seed: str) -> None:
        self.gate = LossGate(percent, f"{seed}/{self.name}")

    def reset(self) -> None:
        self.counters = Counters()


def handle_command(line: str, up: Direction, down: Direction,
                   trace: list[tuple[float, str, int, str]]) -> tuple[dict[str, Any], bool]:
    """The answer to one control line, and whether to stop."""
    words = line.split()
    if not words:
        return {"ok": False, "error": "empty command"}, False
    verb, args = words[0], words[1:]
    try:
        if verb == "loss" and len(args) == 3:
            up_pct, down_pct = float(args[0]), float(args[1])
            up.set_loss(up_pct, args[2])
            down.set_loss(down_pct, args[2])
            return {"ok": True, "up": up_pct, "down": down_pct, "seed": args[2]}, False
        if verb == "reset" and not args:
            up.reset()
            down.reset()
            trace.clear()
            return {"ok": True}, False
        if verb == "trace" and not args:
            return {"ok": True, "trace": trace}, False
        if verb == "stats" and not args:
            return {"ok": True, "up": up.counters.summary(), "down": down.counters.summary(),
                    "queued": [len(up.line), len(down.line)]}, False
        if verb == "ping" and not args:
            return {"ok": True}, False
        if verb == "quit" and not args:
            return {"ok": True}, True
    except ValueError as exc:
        return {"ok": False, "error": str(exc)}, False
    return {"ok": False, "error": f"unknown command {line.strip()!r}"}, False


# ---------------------------------------------------------------------------------------------
# The sockets (Linux, root, inside the relay namespace)


def _packet_socket(ifname: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((ifname, 0))
    sock.setblocking(False)
    return sock


class Relay:
    def __init__(self, a: str, b: str, control: str, delay: float) -> None:
        self.up = Direction("up", delay)  # a -> b
        self.down = Direction("down", delay)  # b -> a
        self.sock_a = _packet_socket(a)
        self.sock_b = _packet_socket(b)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(control)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(control)
        self.listener.listen(4)
        self.listener.setblocking(False)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.sock_a, selectors.EVENT_READ, "a")
        self.sel.register(self.sock_b, selectors.EVENT_READ, "b")
        self.sel.register(self.listener, selectors.EVENT_READ, "listen")
        self.buffers: dict[socket.socket, bytes] = {}
        self.trace: list[tuple[float, str, int, str]] = []
        self.stopping = False

    def _read_frames(self, sock: socket.socket, direction: Direction) -> None:
        for _ in range(256):  # bounded: back to the timers after a burst
            try:
                frame, address = sock.recvfrom(MAX_FRAME)
            except BlockingIOError:
                return
            if address[2] == PACKET_OUTGOING:
                continue  # our own transmission on this interface, seen by the tap
            wall = time.time()
            what = direction.offer(frame, time.monotonic(), wall)
            if what != "other" and len(self.trace) < MAX_TRACE:
                self.trace.append((round(wall, 4), direction.name, len(frame), what))

    def _flush(self) -> None:
        now = time.monotonic()
        for direction, out in ((self.up, self.sock_b), (self.down, self.sock_a)):
            for due, frame in direction.line.pop_due(now):
                try:
                    out.send(frame)
                except OSError:
                    direction.counters.overflow += 1
                    continue
                direction.counters.forwarded += 1
                direction.counters.late(time.monotonic() - due)

    def _control(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(MAX_COMMAND)
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        buffer = self.buffers.get(conn, b"") + data
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            answer, stop = handle_command(line.decode("utf-8", "replace"), self.up, self.down,
                                          self.trace)
            try:
                conn.sendall(json.dumps(answer).encode() + b"\n")
            except OSError:
                self._close(conn)
                return
            if stop:
                self.stopping = True
        if len(buffer) > MAX_COMMAND:
            self._close(conn)
            return
        self.buffers[conn] = buffer

    def _close(self, conn: socket.socket) -> None:
        self.buffers.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(conn)
        conn.close()

    def run(self, max_seconds: float) -> None:
        deadline = time.monotonic() + max_seconds
        while not self.stopping and time.monotonic() < deadline:
            dues = [d for d in (self.up.line.next_due(), self.down.line.next_due())
                    if d is not None]
            timeout = 0.5 if not dues else max(0.0, min(dues) - time.monotonic())
            for key, _ in self.sel.select(min(timeout, 0.5)):
                tag = key.data
                if tag == "a":
                    self._read_frames(self.sock_a, self.up)
                elif tag == "b":
                    self._read_frames(self.sock_b, self.down)
                elif tag == "listen":
                    conn, _ = self.listener.accept()
                    conn.setblocking(True)
                    conn.settimeout(2.0)
                    self.sel.register(conn, selectors.EVENT_READ, "control")
                else:
                    self._control(key.fileobj)  # type: ignore[arg-type]
            self._flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.relay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", required=True, help="interface towards the client")
    parser.add_argument("--b", required=True, help="interface towards the server")
    parser.add_argument("--control", required=True, help="Unix socket path for commands")
    parser.add_argument("--delay", type=float, default=0.025, help="one-way delay, seconds")
    parser.add_argument("--max-seconds", type=float, default=4 * 3600.0,
                        help="stop after this long whatever happens (default 4 h)")
    args = parser.parse_args(argv)
    if not 0 <= args.delay <= 10 or not 0 < args.max_seconds <= 86400:
        parser.error("--delay must be 0..10 s and --max-seconds 0..86400")
    relay = Relay(args.a, args.b, args.control, args.delay)
    print("ready", flush=True)
    try:
        relay.run(args.max_seconds)
    except KeyboardInterrupt:
        pass
    finally:
        with contextlib.suppress(OSError):
            os.unlink(args.control)
    return 0


if __name__ == "__main__":
    sys.exit(main())
