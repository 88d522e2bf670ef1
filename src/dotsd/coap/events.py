"""Events the sans-IO CoAP endpoint reports to the layer above (aioquic style).

Events are slotted dataclasses, not frozen ones (one is built per message and a frozen
init costs about 1 µs more); treat them as immutable.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dotsd.coap.message import Message

if TYPE_CHECKING:
    from dotsd.coap.exchange import ClientRequest, Exchange


@dataclass(slots=True)
class Event:
    pass


@dataclass(slots=True)
class RequestReceived(Event):
    """A complete request (Block1 reassembled); answer it with ``endpoint.respond``."""

    exchange: Exchange


@dataclass(slots=True)
class ResponseReceived(Event):
    """A response (or an Observe notification, Block2 reassembled) to one of our requests."""

    request: ClientRequest
    response: Message
    notification: bool = False


@dataclass(slots=True)
class RequestFailed(Event):
    """No response will come: retransmissions exhausted, deadline passed, RST, or cancelled."""

    request: ClientRequest
    reason: str
    reset: bool = False  # the peer answered with RST (RFC 7252 §4.2): it is there


@dataclass(slots=True)
class ObserverRemoved(Event):
    """Server side: an observer is gone (RST, deregistration, failed CON notification)."""

    peer: Hashable
    key: Hashable
    reason: str


@dataclass(slots=True)
class PeerReset(Event):
    """The peer answered with RST to something that was not a request of ours."""

    peer: Hashable
    mid: int = field(default=0)


@dataclass(slots=True)
class MessageRejected(Event):
    """A datagram that is not valid CoAP was dropped (and RST sent if it was a CON)."""

    peer: Hashable
    reason: str
