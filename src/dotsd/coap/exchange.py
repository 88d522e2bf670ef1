"""What the CoAP endpoint keeps: its configuration, per-peer state and exchanges (plain data).

:class:`Exchange` is a request received, :class:`ClientRequest` one sent; :class:`PeerState`
holds everything kept per peer: message IDs, deduplication (RFC 7252 §4.5), CON messages in
flight (§4.2, NSTART §4.7), the RTT estimate, observers (RFC 7641) and block-wise state
(RFC 7959). The rules that fill them are :mod:`dotsd.coap.endpoint`, :mod:`dotsd.coap.blockwise`
and :mod:`dotsd.coap.observe`; attributes whose names start with ``_`` are theirs, not the
application's.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from dotsd.coap.message import Block, Message
from dotsd.coap.numbers import Code
from dotsd.coap.params import TransmissionParameters
from dotsd.coap.timers import TimerEntry

__all__ = [
    "ClientRequest",
    "DedupEntry",
    "EndpointConfig",
    "Exchange",
    "Observer",
    "Outgoing",
    "PeerState",
    "RepeatPolicy",
    "Upload",
]

RepeatPolicy = Callable[["ClientRequest", int, float | None], float | None]
"""Given (request, attempts so far, RTT estimate or None), the delay before repeating a NON
request, or None to stop repeating (the request still waits for its deadline)."""


@dataclass(slots=True)
class EndpointConfig:
    max_message_size: int = 1152  # RFC 7252 §4.6
    preferred_szx: int = 6  # 1024-byte blocks (RFC 7959 §2.2)
    max_body_size: int = 1 << 20  # largest Block1 reassembly we accept (4.13 beyond)
    dedup_entries_per_peer: int = 1024
    separate_ack_delay: float = 0.5  # empty ACK for a CON request not answered by then
    token_length: int = 4
    reregister_margin: float = 5.0  # after Max-Age, before an observation is renewed
    # Per-peer limits: one peer, authenticated but hostile or buggy, must not make us grow
    # without bound. RFC 7641 §4.1: a server may decline to add an observer; beyond this many
    # a GET with Observe=0 is served without registering and the response has no Observe.
    # Re-registering a token already observed (RFC 7641 §3.3.1) is always accepted.
    max_observers_per_peer: int = 64
    # RFC 7959 §2.3 does not oblige a server to keep partial Block1 bodies, and §7.1 asks it
    # to avoid exhaustion by state that peers create. A new upload beyond either limit gets
    # 5.03 with Max-Age, the time to wait (RFC 7252 §5.9.3.4); uploads under way go on. An
    # upload holds the larger of its Size1 (RFC 7959 §4) and the bytes received so far
    # against the byte limit: one that outgrows its Size1 gets 5.03 too if there is no room.
    max_uploads_per_peer: int = 4
    max_upload_bytes_per_peer: int = 2 << 20  # at least max_body_size: one upload fits
    # RFC 7959 §2.4: response bodies kept for their later blocks. Beyond this the oldest is
    # dropped; a request for one of its blocks then reaches the application again.
    max_block2_bodies_per_peer: int = 16

    def __post_init__(self) -> None:
        for name in ("max_observers_per_peer", "max_uploads_per_peer",
                     "max_block2_bodies_per_peer"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.max_upload_bytes_per_peer < self.max_body_size:
            raise ValueError("max_upload_bytes_per_peer must be at least max_body_size")


class Exchange:
    """A request received from a peer, to be answered with ``CoapEndpoint.respond``."""

    __slots__ = ("_ack_due", "_dedup", "acked", "asked_block2", "block1", "observe",
                 "observe_key", "path", "peer", "query", "request", "responded")

    def __init__(self, peer: Hashable, request: Message) -> None:
        self.peer = peer
        self.request = request
        self.acked = False  # an empty ACK went out: the response will be separate
        self.responded = False
        self.block1: Block | None = None  # Block1 of the request (the last one, reassembled)
        self.observe_key: Hashable | None = None
        # Parsed once from the request's options (see CoapEndpoint._parse_request).
        self.path: tuple[str, ...] = ()
        self.query: tuple[str, ...] = ()
        self.observe: int | None = None
        self.asked_block2: Block | None = None
        self._ack_due = 0.0
        self._dedup: DedupEntry | None = None

    @property
    def wants_observe(self) -> bool:
        """RFC 7641 §2: a GET with Observe=0 asks for registration."""
        return self.observe == 0 and self.request.code == Code.GET


class ClientRequest:
    """A request this endpoint sent; its answer arrives as events naming this object."""

    __slots__ = ("_alias_tokens", "_block1_body", "_block1_num", "_block1_szx", "_block2_body",
                 "_deadline_timer", "_internal", "_last_seq", "_last_seq_time", "_outgoing",
                 "_refresh_timer", "_repeat_timer",
                 "attempts", "confirmable", "deadline", "done", "message", "observing",
                 "params", "peer", "repeat", "response", "sent_at", "token")

    def __init__(self, peer: Hashable, message: Message, confirmable: bool,
                 params: TransmissionParameters) -> None:
        self.peer = peer
        self.message = message
        self.token = message.token
        self.confirmable = confirmable
        self.params = params
        self.observing = message.code == Code.GET and message.observe == 0
        self.done = False
        self.response: Message | None = None
        self.deadline: float | None = None
        self.repeat: RepeatPolicy | None = None
        self.attempts = 0
        self.sent_at = 0.0
        self._internal = False
        self._deadline_timer: TimerEntry | None = None
        self._outgoing: Outgoing | None = None  # the CON carrying it, until acknowledged
        self._repeat_timer: TimerEntry | None = None
        self._refresh_timer: TimerEntry | None = None
        self._last_seq: int | None = None
        self._last_seq_time = 0.0
        self._block2_body: bytearray | None = None
        self._block1_body: bytes | None = None
        self._block1_num = 0
        self._block1_szx = 6
        self._alias_tokens: list[bytes] = []


class Outgoing:
    """A CON message of ours awaiting its ACK (RFC 7252 §4.2)."""

    __slots__ = ("attempts", "exchange", "message", "observer", "request", "sent_at", "timeout",
                 "timer")

    def __init__(self, message: Message, timeout: float, now: float) -> None:
        self.message = message
        self.timeout = timeout
        self.attempts = 0
        self.sent_at = now
        self.timer: TimerEntry | None = None
        self.request: ClientRequest | None = None
        self.observer: Observer | None = None
        self.exchange: Exchange | None = None


class DedupEntry:
    __slots__ = ("expires", "response")

    def __init__(self, expires: float) -> None:
        self.expires = expires
        self.response: Message | None = None


class Upload:
    """A Block1 body being reassembled (RFC 7959 §2.3)."""

    __slots__ = ("body", "expires", "next_num", "reserved")

    def __init__(self, expires: float, reserved: int) -> None:
        self.expires = expires
        self.body = bytearray()
        self.next_num = 0
        self.reserved = reserved  # counted against max_upload_bytes_per_peer


class Observer:
    """A registration on our side as a server (RFC 7641 §4.1)."""

    __slots__ = ("key", "last_mid", "peer", "request", "seq", "token")

    def __init__(self, peer: Hashable, token: bytes, key: Hashable, request: Message) -> None:
        self.peer = peer
        self.token = token
        self.key = key
        self.request = request
        self.seq = 1
        self.last_mid = -1


class PeerState:
    """What the endpoint keeps per peer."""

    __slots__ = ("_params", "block2", "con_in_flight", "con_queue", "dedup",
                 "exchange_lifetime", "max_payload", "next_mid", "observers", "outgoing",
                 "recent_non", "reliable", "rttvar", "srtt", "sweep", "upload_bytes", "uploads")

    def __init__(self, params: TransmissionParameters, reliable: bool, first_mid: int) -> None:
        self.params = params
        self.reliable = reliable
        self.next_mid = first_mid
        # In arrival order; an OrderedDict, since a plain dict used as a queue gets slower to
        # iterate from the front as entries are deleted there (measured: 0.8 → 0.3 µs).
        self.dedup: OrderedDict[int, DedupEntry] = OrderedDict()
        self.outgoing: dict[int, Outgoing] = {}
        self.con_in_flight = 0
        self.con_queue: deque[tuple[Message, ClientRequest]] = deque()
        self.observers: dict[bytes, Observer] = {}
        self.recent_non: dict[int, ClientRequest | Observer] = {}
        self.srtt: float | None = None
        self.rttvar = 0.0
        # Largest request body sent whole; above it Block1 is used (RFC 7959 §2.5). On TCP
        # the layer below raises it once the peer's CSM tells its Max-Message-Size.
        self.max_payload = 1024
        # Block-wise state, by resource key (blockwise.resource_key), each in expiry order (oldest
        # first): partial Block1 bodies, and whole response bodies served in Block2 parts.
        self.uploads: dict[bytes, Upload] = {}
        self.upload_bytes = 0  # the sum of the uploads' reservations
        self.block2: dict[bytes, tuple[float, Message]] = {}
        self.sweep: TimerEntry | None = None  # frees expired block-wise state

    @property
    def params(self) -> TransmissionParameters:
        return self._params

    @params.setter
    def params(self, params: TransmissionParameters) -> None:
        self._params = params
        self.exchange_lifetime = params.exchange_lifetime  # cached: used per request

    def new_mid(self) -> int:
        mid = self.next_mid
        self.next_mid = (mid + 1) & 0xFFFF
        return mid

    def rtt_sample(self, sample: float) -> None:
        """Smoothed RTT as RFC 6298 §2 computes it."""
        if self.srtt is None:
            self.srtt = sample
            self.rttvar = sample / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - sample)
            self.srtt = 0.875 * self.srtt + 0.125 * sample
