"""Observe (RFC 7641) for the CoAP endpoint: the server's observers and the sequence numbers.

:class:`ObserverRegistry` is who observes what, on our side as a server (§4.1): each
registration is an :class:`~dotsd.coap.exchange.Observer`, found by resource key here and by
token in its peer's :class:`~dotsd.coap.exchange.PeerState`. :func:`stamp_notification` gives a
notification its token and sequence number (§4.2, §4.4); the endpoint sends it.
:func:`is_fresher` orders the sequence numbers a client receives (§3.4).

Sans-IO: ``now`` is an argument.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Mapping
from typing import Final

from dotsd.coap.events import Event, ObserverRemoved
from dotsd.coap.exchange import EndpointConfig, Observer, PeerState
from dotsd.coap.message import Message
from dotsd.coap.numbers import OptionNumber, is_success
from dotsd.ratelog import RateLimitedLog

__all__ = ["FRESH_WINDOW", "OBSERVE_MAX", "ObserverRegistry", "is_fresher", "stamp_notification"]

OBSERVE_MAX: Final = 1 << 24  # RFC 7641 §4.4: 24-bit sequence numbers
FRESH_WINDOW: Final = 128.0  # RFC 7641 §3.4


class ObserverRegistry:
    """The observations of an endpoint as a server (RFC 7641 §4.1), by resource key.

    ``peers`` is the endpoint's own peer table and ``events`` its event queue, where
    :class:`~dotsd.coap.events.ObserverRemoved` goes when an observation ends.
    """

    def __init__(self, config: EndpointConfig, peers: Mapping[Hashable, PeerState],
                 events: deque[Event], log_limit: RateLimitedLog) -> None:
        self.config = config
        self._peers = peers
        self._events = events
        self._log_limit = log_limit
        self._by_key: dict[Hashable, dict[tuple[Hashable, bytes], Observer]] = {}

    def register(self, state: PeerState, peer: Hashable, request: Message, key: Hashable,
                 now: float) -> Observer | None:
        """Register ``peer`` as an observer of ``key`` for the GET ``request`` (Observe=0).
        A re-registration (same token, RFC 7641 §3.3.1) replaces the old one and its
        sequence keeps growing; a new one is declined (None, RFC 7641 §4.1) while the peer
        has ``max_observers_per_peer`` already."""
        token = request.token
        if (token not in state.observers
                and len(state.observers) >= self.config.max_observers_per_peer):
            self._log_limit(now, "observation declined peer=%r: %d observations already",
                            peer, len(state.observers))
            return None
        old = state.observers.get(token)
        obs = Observer(peer, token, key, request)
        if old is not None:
            self.remove(old, "re-registered", state, notify=False)
            obs.seq = (old.seq + 1) % OBSERVE_MAX
        state.observers[token] = obs
        self._by_key.setdefault(key, {})[(peer, token)] = obs
        return obs

    def remove(self, obs: Observer, reason: str, state: PeerState | None = None,
               notify: bool = True) -> None:
        """End an observation; with ``notify``, the layer above hears why."""
        state = state or self._peers.get(obs.peer)
        if state is not None and state.observers.get(obs.token) is obs:
            del state.observers[obs.token]
        by_key = self._by_key.get(obs.key)
        if by_key is not None and by_key.pop((obs.peer, obs.token), None) is not None:
            if not by_key:
                del self._by_key[obs.key]
            if notify:
                self._events.append(ObserverRemoved(obs.peer, obs.key, reason))

    def of_key(self, key: Hashable) -> list[Observer]:
        """The observations of ``key``, in registration order."""
        return list(self._by_key.get(key, {}).values())

    def peers(self, key: Hashable) -> list[Hashable]:
        """The peers observing ``key``."""
        return [obs.peer for obs in self._by_key.get(key, {}).values()]

    def keys(self) -> list[Hashable]:
        """Every resource key with at least one observer."""
        return [key for key, obs in self._by_key.items() if obs]

    def count(self, key: Hashable | None = None) -> int:
        if key is None:
            return sum(len(v) for v in self._by_key.values())
        return len(self._by_key.get(key, {}))


def stamp_notification(obs: Observer, msg: Message) -> bool:
    """Make ``msg`` the next notification of ``obs``: its token and, for a 2.xx, the next
    sequence number in Observe (RFC 7641 §4.4). Whether the observation goes on: a non-2.xx
    notification ends it (§4.2)."""
    msg.token = obs.token
    if not is_success(msg.code):
        return False
    obs.seq = (obs.seq + 1) % OBSERVE_MAX
    msg.set(OptionNumber.OBSERVE, obs.seq)
    return True


def is_fresher(v2: int, v1: int, elapsed: float) -> bool:
    """RFC 7641 §3.4: is sequence number v2 newer than v1?"""
    return (v1 < v2 and v2 - v1 < (1 << 23)) or (v1 > v2 and v1 - v2 > (1 << 23)) or \
        elapsed > FRESH_WINDOW
