"""A deterministic two-endpoint CoAP network in fake time, for sans-IO tests."""

from __future__ import annotations

import random
from collections.abc import Callable

from dotsd.coap import codec
from dotsd.coap.endpoint import CoapEndpoint
from dotsd.coap.events import Event
from dotsd.coap.exchange import EndpointConfig
from dotsd.coap.message import Message
from dotsd.coap.params import TransmissionParameters


class Net:
    """Endpoints "a" and "b"; each names the other by its letter. ``drop(src, data)`` decides
    loss; datagrams are delivered after ``delay`` seconds."""

    def __init__(self, seed: int = 1, delay: float = 0.01,
                 params: TransmissionParameters | None = None,
                 config: EndpointConfig | None = None) -> None:
        self.now = 0.0
        self.delay = delay
        self.eps = {
            "a": CoapEndpoint(config, params, random.Random(seed)),
            "b": CoapEndpoint(config, params, random.Random(seed + 1)),
        }
        self.drop: Callable[[str, bytes], bool] = lambda src, data: False
        self.in_flight: list[tuple[float, str, bytes]] = []
        self.sent: dict[str, list[Message]] = {"a": [], "b": []}
        self.events: dict[str, list[Event]] = {"a": [], "b": []}
        self.on_event: Callable[[str, Event], None] = lambda name, ev: None

    def flush(self) -> None:
        """Collect output and events until both endpoints are quiet (handlers may answer)."""
        for _ in range(1000):
            if not self._flush_once():
                return
        raise AssertionError("endpoints never went quiet")

    def _flush_once(self) -> bool:
        busy = False
        for name, ep in self.eps.items():
            other = "b" if name == "a" else "a"
            for peer, msg in ep.messages_to_send():
                busy = True
                assert peer == other
                data = codec.encode(msg)
                self.sent[name].append(codec.decode(data))
                if not self.drop(name, data):
                    self.in_flight.append((self.now + self.delay, other, data))
            while (ev := ep.next_event()) is not None:
                busy = True
                self.events[name].append(ev)
                self.on_event(name, ev)
        return busy

    def run(self, until: float, max_steps: int = 100000) -> None:
        """Advance fake time to ``until``, delivering datagrams and firing timers."""
        for _ in range(max_steps):
            self.flush()
            deadlines = [t for t, _, _ in self.in_flight]
            deadlines += [d for ep in self.eps.values() if (d := ep.get_timer()) is not None]
            nxt = min(deadlines, default=None)
            if nxt is None or nxt > until:
                self.now = until
                self.flush()
                return
            self.now = max(self.now, nxt)
            due = [f for f in self.in_flight if f[0] <= self.now]
            self.in_flight = [f for f in self.in_flight if f[0] > self.now]
            for _, dst, data in due:
                src = "b" if dst == "a" else "a"
                self.eps[dst].receive_datagram(src, data, self.now)
            for ep in self.eps.values():
                ep.handle_timer(self.now)
        raise AssertionError("simulation did not settle")
