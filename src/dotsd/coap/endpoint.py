"""The sans-IO CoAP endpoint: message layer, exchanges, Observe and Block-wise transfers.

One object serves many peers. It never touches a socket or a clock: the layer below feeds it
messages with ``receive(peer, msg, now)`` (or raw datagrams with ``receive_datagram``) and
takes what to send from ``messages_to_send()``; the layer above reads ``next_event()`` and
answers requests with ``respond``. ``get_timer()``/``handle_timer(now)`` drive time.

A peer is any hashable key chosen by the layer below (a link). Datagram peers (UDP, DTLS)
get the RFC 7252 message layer: CON retransmission with exponential back-off, ACK/RST,
deduplication with the cached response replayed. Reliable peers (TCP, TLS; RFC 8323) skip
it: no message IDs, no retransmission, no ACKs.

Both roles run on every peer at once: either end of any link may send requests.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from functools import partial

from dotsd.coap import codec
from dotsd.coap.events import (
    Event,
    MessageRejected,
    ObserverRemoved,
    PeerReset,
    RequestFailed,
    RequestReceived,
    ResponseReceived,
)
from dotsd.coap.message import Block, Message, decode_uint, encode_uint
from dotsd.coap.numbers import (
    KNOWN_OPTIONS,
    Code,
    MessageType,
    OptionNumber,
    code_dotted,
    is_request,
    is_response,
    is_success,
)
from dotsd.coap.params import TransmissionParameters
from dotsd.coap.timers import TimerEntry, TimerHeap
from dotsd.ratelog import RateLimitedLog

log = logging.getLogger("dotsd.coap")

CON = MessageType.CON
NON = MessageType.NON
ACK = MessageType.ACK
RST = MessageType.RST

_OBSERVE_MAX = 1 << 24  # RFC 7641 §4.4: 24-bit sequence numbers
_OBSERVE_FRESH_WINDOW = 128.0  # RFC 7641 §3.4
_BLOCK_CACHE_LIFETIME = 60.0

RepeatPolicy = Callable[["ClientRequest", int, float | None], float | None]
"""Given (request, attempts so far, RTT estimate or None), the delay before repeating a NON
request, or None to stop repeating (the request still waits for its deadline)."""


def probing_rate_policy(req: ClientRequest, attempts: int, rtt: float | None) -> float | None:
    """Default NON repetition: one per RTT (1 s without an estimate), but never faster than
    the peer's probing rate allows for a peer that has not answered (RFC 7252 §4.7)."""
    size = len(codec.encode(req.message))
    floor = size / req.params.probing_rate
    return max(rtt if rtt is not None else 1.0, floor)


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
        self._dedup: _DedupEntry | None = None

    @property
    def wants_observe(self) -> bool:
        """RFC 7641 §2: a GET with Observe=0 asks for registration."""
        return self.observe == 0 and self.request.code == Code.GET


class ClientRequest:
    """A request this endpoint sent; its answer arrives as events naming this object."""

    __slots__ = ("_alias_tokens", "_block1_body", "_block1_num", "_block1_szx", "_block2_body",
                 "_deadline_timer", "_internal", "_last_seq", "_last_seq_time", "_refresh_timer",
                 "_repeat_timer",
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
        self._repeat_timer: TimerEntry | None = None
        self._refresh_timer: TimerEntry | None = None
        self._last_seq: int | None = None
        self._last_seq_time = 0.0
        self._block2_body: bytearray | None = None
        self._block1_body: bytes | None = None
        self._block1_num = 0
        self._block1_szx = 6
        self._alias_tokens: list[bytes] = []


class _Outgoing:
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
        self.observer: _Observer | None = None
        self.exchange: Exchange | None = None


class _DedupEntry:
    __slots__ = ("expires", "response")

    def __init__(self, expires: float) -> None:
        self.expires = expires
        self.response: Message | None = None


class _Upload:
    """A Block1 body being reassembled (RFC 7959 §2.3)."""

    __slots__ = ("body", "expires", "next_num", "reserved")

    def __init__(self, expires: float, reserved: int) -> None:
        self.expires = expires
        self.body = bytearray()
        self.next_num = 0
        self.reserved = reserved  # counted against max_upload_bytes_per_peer


class _Observer:
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
        self.dedup: OrderedDict[int, _DedupEntry] = OrderedDict()
        self.outgoing: dict[int, _Outgoing] = {}
        self.con_in_flight = 0
        self.con_queue: deque[tuple[Message, ClientRequest]] = deque()
        self.observers: dict[bytes, _Observer] = {}
        self.recent_non: dict[int, ClientRequest | _Observer] = {}
        self.srtt: float | None = None
        self.rttvar = 0.0
        # Largest request body sent whole; above it Block1 is used (RFC 7959 §2.5). On TCP
        # the layer below raises it once the peer's CSM tells its Max-Message-Size.
        self.max_payload = 1024
        # Block-wise state, by resource key (_resource_key), each dict in expiry order (oldest
        # first): partial Block1 bodies, and whole response bodies served in Block2 parts.
        self.uploads: dict[bytes, _Upload] = {}
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


class CoapEndpoint:
    def __init__(self, config: EndpointConfig | None = None,
                 default_params: TransmissionParameters | None = None,
                 rng: random.Random | None = None) -> None:
        self.config = config or EndpointConfig()
        self.default_params = default_params or TransmissionParameters()
        self._rng = rng or random.Random()
        self._peers: dict[Hashable, PeerState] = {}
        self._out: list[tuple[Hashable, Message]] = []
        self._events: deque[Event] = deque()
        self._timers = TimerHeap()
        self._ack_queue: deque[Exchange] = deque()
        self._requests: dict[tuple[Hashable, bytes], ClientRequest] = {}
        self._observers: dict[Hashable, dict[tuple[Hashable, bytes], _Observer]] = {}
        # Refusals under the per-peer limits: a flooding peer must not flood the log.
        self._log_limit = RateLimitedLog(log, "refusals under per-peer limits")

    # ------------------------------------------------------------------ peers
    def add_peer(self, peer: Hashable, reliable: bool = False,
                 params: TransmissionParameters | None = None) -> PeerState:
        state = self._peers.get(peer)
        if state is None:
            state = PeerState(params or self.default_params.copy(), reliable,
                              self._rng.randrange(0x10000))
            self._peers[peer] = state
        elif params is not None:
            state.params = params
        return state

    def peer_state(self, peer: Hashable) -> PeerState | None:
        return self._peers.get(peer)

    def set_params(self, peer: Hashable, params: TransmissionParameters) -> None:
        """Change a peer's transmission parameters at run time (RFC 9132 §4.5)."""
        params.validate()
        self.add_peer(peer).params = params

    def rtt(self, peer: Hashable) -> float | None:
        state = self._peers.get(peer)
        return state.srtt if state else None

    def set_max_payload(self, peer: Hashable, size: int) -> None:
        """The largest request body the peer takes in one message (e.g. from its CSM)."""
        self.add_peer(peer).max_payload = max(16, size)

    def fail_token(self, peer: Hashable, token: bytes, reason: str) -> None:
        """The layer below could not send our request: fail it now instead of at timeout."""
        req = self._requests.get((peer, token))
        if req is not None:
            self._fail(req, reason)

    def remove_peer(self, peer: Hashable, reason: str = "peer gone") -> None:
        """Forget a peer: its pending requests fail, its observers are removed, and the rest
        of its state (block-wise bodies included) goes with its PeerState."""
        state = self._peers.pop(peer, None)
        if state is None:
            return
        for out in state.outgoing.values():
            if out.timer:
                out.timer.cancel()
        if state.sweep is not None:
            state.sweep.cancel()
            state.sweep = None
        for key, req in list(self._requests.items()):
            if key[0] == peer:
                self._fail(req, reason)
        for obs in list(state.observers.values()):
            self._remove_observer(obs, reason, state)

    @property
    def peer_count(self) -> int:
        return len(self._peers)

    # ------------------------------------------------------------------ outputs
    def messages_to_send(self) -> list[tuple[Hashable, Message]]:
        out = self._out
        if out:
            self._out = []
        return out

    @property
    def has_events(self) -> bool:
        return bool(self._events)

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        deadline = self._timers.next_deadline()
        queue = self._ack_queue
        while queue and queue[0].responded:
            queue.popleft()
        if queue and (deadline is None or queue[0]._ack_due < deadline):
            return queue[0]._ack_due
        return deadline

    def handle_timer(self, now: float) -> None:
        if self._ack_queue:
            self._send_due_acks(now)
        self._timers.run_due(now)

    # ------------------------------------------------------------------ input
    def receive_datagram(self, peer: Hashable, data: bytes, now: float) -> None:
        """Decode a datagram and process it; a malformed CON is answered with RST."""
        try:
            msg = codec.decode(data)
        except codec.MessageFormatError as exc:
            self._malformed(peer, exc)
            return
        self.receive(peer, msg, now)

    def receive_request(self, peer: Hashable, data: bytes, now: float) -> Exchange | None:
        """``receive_datagram``, with a short cut for the usual datagram: a new request.

        A CON or NON request from a known datagram peer that is not a duplicate and needs
        nothing more from this layer (no Observe, Block1, Block2, nor an error answer) is
        deduplicated as usual (RFC 7252 §4.5) and returned instead of queued as
        :class:`RequestReceived`. The caller must then either ``respond`` to it at once or
        hand it back with ``defer`` (a CON request then gets its empty ACK in time).
        Anything else is processed as by ``receive_datagram`` and None is returned.
        """
        try:
            msg = codec.decode(data)
        except codec.MessageFormatError as exc:
            self._malformed(peer, exc)
            return None
        state = self._peers.get(peer)
        code = msg.code
        if (state is None or state.reliable or msg.mtype > NON or not 0 < code < 32
                or ((entry := state.dedup.get(msg.mid)) is not None and entry.expires > now)):
            self.receive(peer, msg, now)
            return None
        # _open_exchange, for a datagram peer:
        exchange = Exchange(peer, msg)
        exchange._dedup = self._remember(state, msg.mid, now)
        error = self._parse_request(exchange) if msg.options else None
        if error is None:
            if msg.payload and len(msg.payload) > self.config.max_message_size:
                error = self._too_large()
            elif (exchange.observe is None and exchange.block1 is None
                  and exchange.asked_block2 is None):
                return exchange
        self._serve(state, exchange, error, now)
        return None

    def defer(self, exchange: Exchange, now: float) -> None:
        """An exchange from ``receive_request`` that is not answered yet: a CON request
        gets an empty ACK if still unanswered after ``separate_ack_delay`` (RFC 7252
        §5.2.2), as every request received through events does."""
        if exchange.responded or exchange.request.mtype != CON or exchange._dedup is None:
            return  # answered, NON, or a reliable peer (no ACKs, RFC 8323 §2)
        # Deadlines grow in arrival order, so a FIFO replaces one heap timer per request.
        exchange._ack_due = now + self.config.separate_ack_delay
        self._ack_queue.append(exchange)

    def _malformed(self, peer: Hashable, exc: codec.MessageFormatError) -> None:
        # RFC 7252 §4.2/§4.3: reject a malformed CON with RST, silently drop the rest.
        if exc.mtype == CON and exc.mid is not None:
            self._out.append((peer, Message(RST, 0, exc.mid)))
        self._events.append(MessageRejected(peer, exc.reason))

    def receive(self, peer: Hashable, msg: Message, now: float) -> None:
        state = self._peers.get(peer)
        code = msg.code
        if state is None:
            # Only a request creates state for an unknown peer; anything else from it cannot
            # belong to an exchange of ours (a CON is rejected, the rest dropped).
            if not is_request(code) or msg.mtype > NON:
                if msg.mtype == CON:
                    self._out.append((peer, Message(RST, 0, msg.mid)))
                return
            state = self.add_peer(peer)
        if state.reliable:
            if is_request(code):
                self._on_request(state, peer, msg, now)
            elif is_response(code):
                self._on_response(state, peer, msg, now)
            return
        mtype = msg.mtype
        if code == 0:
            if mtype == ACK:
                self._on_ack(state, peer, msg, now)
            elif mtype == RST:
                self._on_rst(state, peer, msg)
            elif mtype == CON:
                # RFC 7252 §4.3: an empty CON is a "CoAP ping", answered with RST.
                self._out.append((peer, Message(RST, 0, msg.mid)))
            return
        if is_request(code):
            if mtype > NON:
                return  # a request in an ACK or RST is a format error: ignore
            entry = state.dedup.get(msg.mid)
            if entry is not None and entry.expires > now:
                # RFC 7252 §4.5: a duplicate CON gets the same answer again; NON is ignored.
                if mtype == CON and entry.response is not None:
                    self._out.append((peer, entry.response))
                return
            self._on_request(state, peer, msg, now)
        elif is_response(code):
            if mtype == ACK:
                self._on_ack(state, peer, msg, now)
                return
            if mtype == RST:
                return
            entry = state.dedup.get(msg.mid)
            if entry is not None and entry.expires > now:
                if mtype == CON and entry.response is not None:
                    self._out.append((peer, entry.response))
                return
            if mtype == CON:
                ack = Message(ACK, 0, msg.mid)
                self._remember(state, msg.mid, now).response = ack
                self._on_response(state, peer, msg, now, ack_with=ack)
            else:
                self._remember(state, msg.mid, now)
                self._on_response(state, peer, msg, now)
        elif mtype == CON:
            # Reserved code class (1, 6, 7 on UDP): RFC 7252 §4.2 says reject.
            self._out.append((peer, Message(RST, 0, msg.mid)))

    def _remember(self, state: PeerState, mid: int, now: float) -> _DedupEntry:
        """Record a received MID for deduplication for EXCHANGE_LIFETIME (RFC 7252 §4.5)."""
        dedup = state.dedup
        # Entries are inserted in time order: cap the size, then expire from the front, at
        # most one per insertion (a flat cost; the cap bounds the size).
        if dedup:
            if len(dedup) >= self.config.dedup_entries_per_peer:
                dedup.popitem(last=False)
            for first in dedup.values():
                if first.expires <= now:
                    dedup.popitem(last=False)
                break
            if mid in dedup:
                del dedup[mid]  # an expired entry of a reused MID: to the back
        entry = dedup[mid] = _DedupEntry(now + state.exchange_lifetime)
        return entry

    # ------------------------------------------------------------------ server side
    def _on_request(self, state: PeerState, peer: Hashable, msg: Message, now: float) -> None:
        exchange, error = self._open_exchange(state, peer, msg, now)
        self._serve(state, exchange, error, now)

    def _open_exchange(self, state: PeerState, peer: Hashable, msg: Message,
                       now: float) -> tuple[Exchange, Message | None]:
        """A new request: remember its MID, read its options; the error answer, if any."""
        entry = None if state.reliable else self._remember(state, msg.mid, now)
        exchange = Exchange(peer, msg)
        exchange._dedup = entry
        error = self._parse_request(exchange) if msg.options else None
        if error is None and len(msg.payload) > self.config.max_message_size:
            error = self._too_large()
        return exchange, error

    def _serve(self, state: PeerState, exchange: Exchange, error: Message | None,
               now: float) -> None:
        """Everything after parsing: errors, Observe deregistration, Block1/Block2, event."""
        msg = exchange.request
        if error is not None:
            self.respond(exchange, error, now)
            return
        if exchange.observe == 1:
            # RFC 7641 §3.6: GET with Observe=1 deregisters, then is served normally.
            obs = state.observers.get(msg.token)
            if obs is not None:
                self._remove_observer(obs, "deregistered", state)
        if exchange.block1 is not None and not self._reassemble_block1(state, exchange, now):
            return
        block2 = exchange.asked_block2
        if block2 is not None and block2.num > 0 and self._serve_cached_block(state, exchange,
                                                                               now):
            return
        self.defer(exchange, now)
        self._events.append(RequestReceived(exchange))

    def _parse_request(self, exchange: Exchange) -> Message | None:
        """Read the request's options in one pass; returns an error response, if any."""
        path: list[str] = []
        query: list[str] | None = None
        try:
            for number, value in exchange.request.options or ():
                if number == 11:  # Uri-Path
                    path.append(value.decode("utf-8"))
                elif number == 15:  # Uri-Query
                    if query is None:
                        query = []
                    query.append(value.decode("utf-8"))
                elif number == 6:  # Observe
                    exchange.observe = decode_uint(value)
                elif number == 23:  # Block2
                    exchange.asked_block2 = Block.decode(value)
                elif number == 27:  # Block1
                    exchange.block1 = Block.decode(value)
                elif number == 60:  # Size1
                    if decode_uint(value) > self.config.max_body_size:
                        return self._too_large()
                elif number in (35, 39):  # Proxy-Uri, Proxy-Scheme
                    return error_response(Code.PROXYING_NOT_SUPPORTED, "not a proxy")
                elif number & 1 and number not in KNOWN_OPTIONS:
                    # RFC 7252 §5.4.1: unrecognized critical option in a request → 4.02.
                    return error_response(Code.BAD_OPTION, f"unknown critical option {number}")
        except UnicodeDecodeError:
            return error_response(Code.BAD_REQUEST, "Uri-Path or Uri-Query is not UTF-8")
        except ValueError as exc:
            return error_response(Code.BAD_OPTION, str(exc))
        exchange.path = tuple(path)
        if query is not None:
            exchange.query = tuple(query)
        return None

    def _too_large(self) -> Message:
        # RFC 7959 §4: 4.13 carries Size1, the largest body we accept.
        err = error_response(Code.REQUEST_ENTITY_TOO_LARGE, "request body too large")
        return err.add(OptionNumber.SIZE1, self.config.max_body_size)

    def _reassemble_block1(self, state: PeerState, exchange: Exchange, now: float) -> bool:
        """RFC 7959 §2.3: collect Block1 parts; True when the whole body is here."""
        msg = exchange.request
        block = exchange.block1
        assert block is not None
        key = _resource_key(msg)
        upload = state.uploads.get(key)
        if block.num == 0:
            if upload is not None:
                self._drop_upload(state, key)  # the client starts over
            if not block.more:
                msg.remove(OptionNumber.BLOCK1)
                return True  # the whole body in one block
            reserved = max(len(msg.payload), msg.size1 or 0)
            refusal = self._upload_refusal(state, exchange.peer, reserved, now)
            if refusal is not None:
                return self._block1_failed(state, exchange, key,
                                           self._busy(state, refusal, now), now)
            upload = state.uploads[key] = _Upload(now + _BLOCK_CACHE_LIFETIME, reserved)
            state.upload_bytes += reserved
        elif upload is None or upload.next_num != block.num or upload.expires <= now:
            return self._block1_failed(state, exchange, key, error_response(
                Code.REQUEST_ENTITY_INCOMPLETE, f"block {block.num} out of sequence"), now)
        if block.more and len(msg.payload) != block.size:
            return self._block1_failed(state, exchange, key, error_response(
                Code.BAD_REQUEST, "block size mismatch"), now)
        body = upload.body
        size = len(body) + len(msg.payload)
        if size > self.config.max_body_size:
            return self._block1_failed(state, exchange, key, self._too_large(), now)
        if size > upload.reserved:
            # More than its Size1 said (or it said none): hold more, if the peer has room.
            more = size - upload.reserved
            if state.upload_bytes + more > self.config.max_upload_bytes_per_peer:
                self._log_limit(now, "block-wise upload stopped peer=%r: %d bytes held "
                                "already", exchange.peer, state.upload_bytes)
                return self._block1_failed(state, exchange, key, self._busy(
                    state, "too many bytes in block-wise uploads at once", now), now)
            state.upload_bytes += more
            upload.reserved = size
        body += msg.payload
        if not block.more:
            self._drop_upload(state, key)
            msg.payload = bytes(body)
            msg.remove(OptionNumber.BLOCK1)
            return True
        upload.next_num = block.num + 1
        upload.expires = now + _BLOCK_CACHE_LIFETIME
        del state.uploads[key]
        state.uploads[key] = upload  # to the back: the dict stays in expiry order
        self._arm_sweep(state, exchange.peer, upload.expires)
        szx = min(block.szx, self.config.preferred_szx)
        cont = Message(code=Code.CONTINUE).add(OptionNumber.BLOCK1,
                                               Block(block.num, True, szx).encode())
        exchange.block1 = None
        self.respond(exchange, cont, now)
        return False

    def _upload_refusal(self, state: PeerState, peer: Hashable, reserved: int,
                        now: float) -> str | None:
        """Why a new Block1 upload holding ``reserved`` bytes would pass the peer's limits,
        or None if it fits. Expired uploads are freed first: they do not count."""
        self._purge_uploads(state, now)
        config = self.config
        if len(state.uploads) >= config.max_uploads_per_peer:
            self._log_limit(now, "block-wise upload refused peer=%r: %d uploads under way",
                            peer, len(state.uploads))
            return "too many block-wise uploads at once"
        if state.upload_bytes + reserved > config.max_upload_bytes_per_peer:
            self._log_limit(now, "block-wise upload refused peer=%r: %d bytes held, %d more "
                            "announced", peer, state.upload_bytes, reserved)
            return "too many bytes in block-wise uploads at once"
        return None

    def _block1_failed(self, state: PeerState, exchange: Exchange, key: bytes,
                       response: Message, now: float) -> bool:
        """Abandon the upload to ``key``, answering with ``response`` (no Block1 option)."""
        self._drop_upload(state, key)
        exchange.block1 = None
        self.respond(exchange, response, now)
        return False

    def _busy(self, state: PeerState, reason: str, now: float) -> Message:
        """5.03 for an upload over the peer's limits; Max-Age (RFC 7252 §5.9.3.4) is when
        the oldest upload under way expires, the latest time a slot frees up."""
        wait = _BLOCK_CACHE_LIFETIME
        for oldest in state.uploads.values():
            wait = oldest.expires - now
            break
        return error_response(Code.SERVICE_UNAVAILABLE, f"{reason}; try again later").add(
            OptionNumber.MAX_AGE, max(1, math.ceil(wait)))

    def _drop_upload(self, state: PeerState, key: bytes) -> None:
        upload = state.uploads.pop(key, None)
        if upload is not None:
            state.upload_bytes -= upload.reserved

    def _purge_uploads(self, state: PeerState, now: float) -> None:
        uploads = state.uploads
        while uploads:
            key, oldest = next(iter(uploads.items()))
            if oldest.expires > now:
                return
            del uploads[key]
            state.upload_bytes -= oldest.reserved

    def _serve_cached_block(self, state: PeerState, exchange: Exchange, now: float) -> bool:
        cached = state.block2.get(_resource_key(exchange.request))
        if cached is None or cached[0] <= now:
            return False
        self.respond(exchange, _copy(cached[1]), now)
        return True

    def _keep_block2(self, state: PeerState, peer: Hashable, key: bytes, full: Message,
                     now: float) -> None:
        """Keep a whole response body for requests of its later blocks (RFC 7959 §2.4)."""
        kept = state.block2
        kept.pop(key, None)  # a newer body replaces it, at the back: expiry order
        limit = self.config.max_block2_bodies_per_peer
        while kept and len(kept) >= limit:
            del kept[next(iter(kept))]  # the oldest goes
        if limit > 0:
            expires = now + _BLOCK_CACHE_LIFETIME
            kept[key] = (expires, full)
            self._arm_sweep(state, peer, expires)

    def _arm_sweep(self, state: PeerState, peer: Hashable, when: float) -> None:
        """One timer per peer with block-wise state, at its oldest entry's expiry: what a
        peer abandons is freed even if it sends nothing more."""
        if state.sweep is None:
            state.sweep = self._timers.schedule(when, partial(self._sweep, state, peer))

    def _sweep(self, state: PeerState, peer: Hashable, now: float) -> None:
        state.sweep = None
        if self._peers.get(peer) is not state:
            return
        self._purge_uploads(state, now)
        kept = state.block2
        while kept:
            key = next(iter(kept))
            if kept[key][0] > now:
                break
            del kept[key]
        due = [upload.expires for upload in itertools.islice(state.uploads.values(), 1)]
        due += [entry[0] for entry in itertools.islice(kept.values(), 1)]
        if due:
            self._arm_sweep(state, peer, min(due))

    def _send_due_acks(self, now: float) -> None:
        queue = self._ack_queue
        while queue and (queue[0].responded or queue[0]._ack_due <= now):
            exchange = queue.popleft()
            if not exchange.responded and exchange.peer in self._peers:  # not removed since
                self._send_empty_ack(exchange)

    def _send_empty_ack(self, exchange: Exchange) -> None:
        """RFC 7252 §5.2.2: a separate response follows; stop the peer's retransmissions."""
        if exchange.responded or exchange.acked:
            return
        exchange.acked = True
        ack = Message(ACK, 0, exchange.request.mid)
        if exchange._dedup is not None:
            exchange._dedup.response = ack
        self._out.append((exchange.peer, ack))

    def respond(self, exchange: Exchange, response: Message, now: float,
                observe_key: Hashable | None = None) -> None:
        """Answer a request. With ``observe_key`` and a GET carrying Observe=0, a 2.xx
        response registers the peer as an observer of that key (RFC 7641 §4.1), unless the
        peer has ``max_observers_per_peer`` already: then the response goes without Observe
        and ``exchange.observe_key`` stays None."""
        if exchange.responded:
            raise codec.LocalProtocolError("request already answered")
        exchange.responded = True
        req = exchange.request
        peer = exchange.peer
        state = self._peers.get(peer)
        if state is None:
            return  # the peer went away meanwhile
        response.token = req.token
        if exchange.block1 is not None:
            response.set(OptionNumber.BLOCK1, Block(exchange.block1.num, False,
                                                    exchange.block1.szx).encode())
        if (observe_key is not None and exchange.wants_observe and is_success(response.code)
                and self._may_observe(state, peer, req.token, now)):
            old = state.observers.get(req.token)
            obs = _Observer(peer, req.token, observe_key, req)
            if old is not None:
                # Re-registration (RFC 7641 §3.3.1): the sequence keeps growing.
                self._remove_observer(old, "re-registered", state, notify=False)
                obs.seq = (old.seq + 1) % _OBSERVE_MAX
            state.observers[req.token] = obs
            self._observers.setdefault(observe_key, {})[(peer, req.token)] = obs
            exchange.observe_key = observe_key
            response.set(OptionNumber.OBSERVE, obs.seq)
        elif exchange.observe is not None:
            response.remove(OptionNumber.OBSERVE)
        if (exchange.asked_block2 is not None
                or len(response.payload) > 1 << (self.config.preferred_szx + 4)):
            self._apply_block2(state, exchange, response, now)  # RFC 7959 §2.4
        if state.reliable:
            self._out.append((peer, response))
            return
        if req.mtype == CON and not exchange.acked:
            response.mtype = ACK  # piggybacked (RFC 7252 §5.2.1)
            response.mid = req.mid
            self._out.append((peer, response))
            if exchange._dedup is not None:
                exchange._dedup.response = response  # replayed to a duplicate (§4.5)
        elif req.mtype == CON:
            response.mtype = CON
            self._send_con(state, peer, response, now).exchange = exchange
        else:
            response.mtype = NON
            response.mid = state.new_mid()
            self._out.append((peer, response))

    def _apply_block2(self, state: PeerState, exchange: Exchange, response: Message,
                      now: float) -> None:
        """RFC 7959 §2.4: slice a body that does not fit into blocks; keep it for the rest."""
        asked = exchange.asked_block2
        preferred = self.config.preferred_szx
        req = exchange.request
        szx = min(asked.szx if asked else preferred, preferred)
        size = 1 << (szx + 4)
        body = response.payload
        if len(body) <= size and (asked is None or asked.num == 0):
            return
        num = asked.num if asked else 0
        if num * size >= len(body) and num > 0:
            response.code = Code.BAD_OPTION
            response.payload = b"block number out of range"
            response.options = None
            return
        if num == 0 and len(body) > size:
            full = _copy(response)
            full.remove(OptionNumber.OBSERVE)
            self._keep_block2(state, exchange.peer, _resource_key(req), full, now)
        chunk = body[num * size:(num + 1) * size]
        more = (num + 1) * size < len(body)
        response.payload = chunk
        response.set(OptionNumber.BLOCK2, Block(num, more, szx).encode())
        if num == 0:
            response.set(OptionNumber.SIZE2, len(body))

    # --- Observe, server side (RFC 7641 §4) --------------------------------------------
    def _may_observe(self, state: PeerState, peer: Hashable, token: bytes,
                     now: float) -> bool:
        """Whether a registration is accepted: a re-registration always is (it replaces
        the old one); a new one while the peer has fewer than max_observers_per_peer."""
        if token in state.observers or len(state.observers) < self.config.max_observers_per_peer:
            return True
        self._log_limit(now, "observation declined peer=%r: %d observations already", peer,
                        len(state.observers))
        return False

    def observers(self, key: Hashable) -> list[Hashable]:
        """The peers observing ``key``."""
        return [obs.peer for obs in self._observers.get(key, {}).values()]

    def observed_keys(self) -> list[Hashable]:
        """Every resource key with at least one observer."""
        return [key for key, obs in self._observers.items() if obs]

    def observer_count(self, key: Hashable | None = None) -> int:
        if key is None:
            return sum(len(v) for v in self._observers.values())
        return len(self._observers.get(key, {}))

    def notify(self, key: Hashable, make: Callable[[Hashable, Message], Message | None],
               now: float, confirmable: bool = False) -> int:
        """Send a notification to every observer of ``key``.

        ``make(peer, registration_request)`` builds the response (code, options, payload) for
        one observer, or returns None to skip it. A non-2.xx notification ends the
        observation (RFC 7641 §4.2). Returns the number of notifications sent.
        """
        sent = 0
        for obs in list(self._observers.get(key, {}).values()):
            msg = make(obs.peer, obs.request)
            if msg is None:
                continue
            self.notify_one(obs.peer, obs.token, msg, now, confirmable)
            sent += 1
        return sent

    def notify_one(self, peer: Hashable, token: bytes, msg: Message, now: float,
                   confirmable: bool = False) -> None:
        state = self._peers.get(peer)
        obs = state.observers.get(token) if state else None
        if state is None or obs is None:
            return
        msg.token = token
        success = is_success(msg.code)
        if success:
            obs.seq = (obs.seq + 1) % _OBSERVE_MAX
            msg.set(OptionNumber.OBSERVE, obs.seq)
        exchange = Exchange(peer, obs.request)
        exchange.responded = True
        self._apply_block2(state, exchange, msg, now)
        if state.reliable:
            self._out.append((peer, msg))
        elif confirmable:
            msg.mtype = CON
            self._send_con(state, peer, msg, now).observer = obs
            obs.last_mid = msg.mid
        else:
            msg.mtype = NON
            msg.mid = state.new_mid()
            obs.last_mid = msg.mid
            self._out.append((peer, msg))
            self._note_non(state, msg.mid, obs)
        if not success:
            self._remove_observer(obs, f"final notification {code_dotted(msg.code)}", state)

    def _remove_observer(self, obs: _Observer, reason: str, state: PeerState | None = None,
                         notify: bool = True) -> None:
        state = state or self._peers.get(obs.peer)
        if state is not None and state.observers.get(obs.token) is obs:
            del state.observers[obs.token]
        by_key = self._observers.get(obs.key)
        if by_key is not None and by_key.pop((obs.peer, obs.token), None) is not None:
            if not by_key:
                del self._observers[obs.key]
            if notify:
                self._events.append(ObserverRemoved(obs.peer, obs.key, reason))

    def _note_non(self, state: PeerState, mid: int, ref: ClientRequest | _Observer) -> None:
        """Remember recent NON MIDs so an RST can be matched (RFC 7641 §3.6, §4.2)."""
        recent = state.recent_non
        recent[mid] = ref
        if len(recent) > 64:
            del recent[next(iter(recent))]

    # ------------------------------------------------------------------ message layer
    def _send_con(self, state: PeerState, peer: Hashable, msg: Message, now: float) -> _Outgoing:
        """Send a CON message with retransmission (RFC 7252 §4.2)."""
        msg.mtype = CON
        msg.mid = state.new_mid()
        p = state.params
        timeout = self._rng.uniform(p.ack_timeout, p.ack_timeout * p.ack_random_factor)
        out = _Outgoing(msg, timeout, now)
        state.outgoing[msg.mid] = out
        out.timer = self._timers.schedule(now + timeout,
                                          partial(self._retransmit, state, peer, out))
        self._out.append((peer, msg))
        return out

    def _retransmit(self, state: PeerState, peer: Hashable, out: _Outgoing, now: float) -> None:
        if state.outgoing.get(out.message.mid) is not out:
            return
        if out.attempts >= state.params.max_retransmit:
            del state.outgoing[out.message.mid]
            self._con_finished(state, peer, out, now)
            if out.request is not None:
                self._fail(out.request, "timeout: no acknowledgement")
            elif out.observer is not None:
                self._remove_observer(out.observer, "notification not acknowledged")
            return
        out.attempts += 1
        out.timeout *= 2
        out.timer = self._timers.schedule(now + out.timeout,
                                          partial(self._retransmit, state, peer, out))
        self._out.append((peer, out.message))

    def _con_finished(self, state: PeerState, peer: Hashable, out: _Outgoing,
                      now: float) -> None:
        """NSTART accounting (RFC 7252 §4.7) for our CON requests."""
        if out.request is None:
            return
        state.con_in_flight = max(0, state.con_in_flight - 1)
        while state.con_queue and state.con_in_flight < state.params.nstart:
            msg, req = state.con_queue.popleft()
            if not req.done:
                self._transmit_request(state, peer, req, msg, now)

    def _on_ack(self, state: PeerState, peer: Hashable, msg: Message, now: float) -> None:
        out = state.outgoing.pop(msg.mid, None)
        if out is None:
            return  # late or duplicate ACK
        if out.timer is not None:
            out.timer.cancel()
        if out.attempts == 0:
            state.rtt_sample(now - out.sent_at)  # Karn: only unambiguous samples
        self._con_finished(state, peer, out, now)
        req = out.request
        if req is None or req.done:
            return
        if msg.code == 0:
            return  # empty ACK: a separate response will follow (RFC 7252 §5.2.2)
        if msg.token != out.message.token:
            return  # RFC 7252 §5.3.2: piggybacked response must echo the token
        self._on_response(state, peer, msg, now)

    def _on_rst(self, state: PeerState, peer: Hashable, msg: Message) -> None:
        out = state.outgoing.pop(msg.mid, None)
        if out is not None:
            if out.timer is not None:
                out.timer.cancel()
            if out.request is not None:
                state.con_in_flight = max(0, state.con_in_flight - 1)
                self._fail(out.request, "reset by peer")
            elif out.observer is not None:
                self._remove_observer(out.observer, "reset by peer")
            return
        ref = state.recent_non.pop(msg.mid, None)
        if isinstance(ref, _Observer):
            self._remove_observer(ref, "reset by peer")
        elif isinstance(ref, ClientRequest):
            self._fail(ref, "reset by peer")
        else:
            self._events.append(PeerReset(peer, msg.mid))

    # ------------------------------------------------------------------ client side
    def new_token(self, peer: Hashable) -> bytes:
        n = self.config.token_length
        while True:
            token = self._rng.getrandbits(8 * n).to_bytes(n, "big")
            if (peer, token) not in self._requests:
                return token

    def send_request(self, peer: Hashable, msg: Message, now: float, *,
                     confirmable: bool = True, timeout: float | None = None,
                     repeat: RepeatPolicy | None = None) -> ClientRequest:
        """Send a request. The outcome arrives as ResponseReceived (one, or several for an
        Observe registration) or RequestFailed. ``timeout`` bounds the wait for the (first)
        response; ``repeat`` makes a NON request repeat until answered or timed out."""
        if not is_request(msg.code):
            raise codec.LocalProtocolError("not a request code")
        state = self.add_peer(peer)
        if not msg.token:
            msg.token = self.new_token(peer)
        elif (peer, msg.token) in self._requests:
            raise codec.LocalProtocolError("token already in use with this peer")
        req = ClientRequest(peer, msg, confirmable, state.params)
        req.repeat = repeat if not confirmable else None
        self._requests[(peer, msg.token)] = req
        if timeout is None:
            timeout = state.params.max_transmit_wait
        req.deadline = now + timeout
        req._deadline_timer = self._timers.schedule(req.deadline, partial(self._expire, req))
        wire = _copy(msg)
        if len(msg.payload) > state.max_payload:
            # RFC 7959 §2.5: send the body in Block1 parts, one exchange each.
            req._block1_body = msg.payload
            req._block1_szx = self.config.preferred_szx
            wire = self._block1_part(req, 0)
        self._transmit_request(state, peer, req, wire, now)
        return req

    def _block1_part(self, req: ClientRequest, num: int) -> Message:
        body = req._block1_body or b""
        size = 1 << (req._block1_szx + 4)
        part = _copy(req.message)
        part.payload = body[num * size:(num + 1) * size]
        more = (num + 1) * size < len(body)
        part.set(OptionNumber.BLOCK1, Block(num, more, req._block1_szx).encode())
        if num == 0:
            part.set(OptionNumber.SIZE1, len(body))
        req._block1_num = num
        return part

    def _transmit_request(self, state: PeerState, peer: Hashable, req: ClientRequest,
                          msg: Message, now: float) -> None:
        req.sent_at = now
        req.attempts = 0
        if state.reliable:
            self._out.append((peer, msg))
            return
        if req.confirmable:
            if state.con_in_flight >= state.params.nstart:
                state.con_queue.append((msg, req))
                return
            state.con_in_flight += 1
            self._send_con(state, peer, msg, now).request = req
            return
        msg.mtype = NON
        msg.mid = state.new_mid()
        self._note_non(state, msg.mid, req)
        self._out.append((peer, msg))
        self._schedule_repeat(state, peer, req, msg, now)

    def _schedule_repeat(self, state: PeerState, peer: Hashable, req: ClientRequest,
                         msg: Message, now: float) -> None:
        if req.repeat is None:
            return
        delay = req.repeat(req, req.attempts, state.srtt)
        if delay is None:
            return
        req._repeat_timer = self._timers.schedule(
            now + delay, partial(self._repeat_non, state, peer, req, msg))

    def _repeat_non(self, state: PeerState, peer: Hashable, req: ClientRequest, msg: Message,
                    now: float) -> None:
        """Repeat an unanswered NON request with a fresh MID and the same token."""
        if req.done or self._peers.get(peer) is not state:
            return
        req.attempts += 1
        again = _copy(msg)
        again.mid = state.new_mid()
        self._note_non(state, again.mid, req)
        self._out.append((peer, again))
        self._schedule_repeat(state, peer, req, again, now)

    def _on_response(self, state: PeerState, peer: Hashable, msg: Message, now: float,
                     ack_with: Message | None = None) -> None:
        req = self._requests.get((peer, msg.token))
        if req is None or req.done:
            # RFC 7641 §3.6 / RFC 7252 §4.2: reject what we cannot match.
            if not state.reliable and (msg.mtype == CON or msg.observe is not None):
                if ack_with is not None and state.dedup.get(msg.mid) is not None:
                    state.dedup[msg.mid].response = Message(RST, 0, msg.mid)
                self._out.append((peer, Message(RST, 0, msg.mid)))
                return
            if ack_with is not None:
                self._out.append((peer, ack_with))
            return
        if ack_with is not None:
            self._out.append((peer, ack_with))
        if req._repeat_timer is not None:
            req._repeat_timer.cancel()
            req._repeat_timer = None
        if req.attempts == 0 and not req.confirmable and req.sent_at:
            state.rtt_sample(now - req.sent_at)
        # Block1 continuation (RFC 7959 §2.3).
        if req._block1_body is not None:
            blk = msg.block1
            if msg.code == Code.CONTINUE and blk is not None and blk.more:
                if blk.szx < req._block1_szx:
                    # The server asked for smaller blocks: renumber from the bytes sent.
                    sent = (req._block1_num + 1) << (req._block1_szx + 4)
                    req._block1_szx = blk.szx
                    next_num = sent >> (blk.szx + 4)
                else:
                    next_num = req._block1_num + 1
                self._transmit_request(state, peer, req, self._block1_part(req, next_num), now)
                return
            req._block1_body = None
        # Block2 (RFC 7959 §2.4): fetch the remaining blocks, then deliver the whole body.
        try:
            blk2 = msg.block2
        except ValueError:
            blk2 = None
        if blk2 is not None and (blk2.more or req._block2_body is not None):
            if blk2.num == 0:
                req._block2_body = bytearray()
            body = req._block2_body
            if body is None or len(body) != blk2.offset:
                req._block2_body = None
                self._fail(req, "block-wise response out of order")
                return
            body += msg.payload
            if blk2.more:
                if len(body) > self.config.max_body_size:
                    self._fail(req, "response body too large")
                    return
                self._fetch_next_block(state, peer, req, msg, blk2, now)
                return
            msg.payload = bytes(body)
            req._block2_body = None
            msg.remove(OptionNumber.BLOCK2)
            msg.token = req.token
        seq = msg.observe
        if req.observing and seq is not None and is_success(msg.code):
            # RFC 7641 §3.4: drop notifications older than the newest one seen.
            last = req._last_seq
            if last is not None and not _is_fresher(seq, last, now - req._last_seq_time):
                return
            first = req.response is None
            req._last_seq = seq
            req._last_seq_time = now
            req.response = msg
            if req._deadline_timer is not None:
                req._deadline_timer.cancel()
                req._deadline_timer = None
            # RFC 7641 §3.3.1: when the representation's Max-Age passes without a fresh
            # notification, re-register (same token) to learn whether it is still observed.
            if req._refresh_timer is not None:
                req._refresh_timer.cancel()
            max_age = msg.max_age
            req._refresh_timer = self._timers.schedule(
                now + (60 if max_age is None else max_age) + self.config.reregister_margin,
                partial(self._refresh, req))
            if not req._internal:
                self._events.append(ResponseReceived(req, msg, notification=not first))
            return
        self._finish(req)
        req.response = msg
        if not req._internal:
            self._events.append(ResponseReceived(req, msg, notification=req.observing and
                                                 req._last_seq is not None))

    def _fetch_next_block(self, state: PeerState, peer: Hashable, req: ClientRequest,
                          msg: Message, blk: Block, now: float) -> None:
        nxt = _copy(req.message)
        nxt.remove(OptionNumber.OBSERVE)
        nxt.payload = b""
        nxt.set(OptionNumber.BLOCK2, Block(blk.num + 1, False, blk.szx).encode())
        if req.observing:
            # Fetch the rest of a notification under a token of its own (RFC 7959 §2.6).
            token = self.new_token(peer)
            req._alias_tokens.append(token)
            self._requests[(peer, token)] = req
            nxt.token = token
        self._transmit_request(state, peer, req, nxt, now)

    def _finish(self, req: ClientRequest) -> None:
        req.done = True
        for timer in (req._deadline_timer, req._repeat_timer, req._refresh_timer):
            if timer is not None:
                timer.cancel()
        self._requests.pop((req.peer, req.token), None)
        for token in req._alias_tokens:
            self._requests.pop((req.peer, token), None)

    def _expire(self, req: ClientRequest, now: float) -> None:
        self._fail(req, "timeout: no response")

    def _fail(self, req: ClientRequest, reason: str) -> None:
        if req.done:
            return
        self._finish(req)
        if not req._internal:
            self._events.append(RequestFailed(req, reason))

    def cancel(self, req: ClientRequest, now: float, deregister: bool = True) -> None:
        """Stop waiting for a request. For an observation, ``deregister`` sends a GET with
        Observe=1 (RFC 7641 §3.6); otherwise later notifications are answered with RST."""
        if req.done:
            return
        was_observing = req.observing and req.response is not None
        self._fail(req, "cancelled")
        if was_observing and deregister and req.peer in self._peers:
            msg = _copy(req.message)
            msg.set(OptionNumber.OBSERVE, 1)
            msg.mid = 0
            dereg = self.send_request(req.peer, msg, now, confirmable=req.confirmable)
            dereg._internal = True

    def _refresh(self, req: ClientRequest, now: float) -> None:
        self.reregister(req, now)
        if not req.done:
            # Give the renewal a deadline of its own: no answer means the observation is lost.
            req._deadline_timer = self._timers.schedule(
                now + req.params.max_transmit_wait, partial(self._expire, req))

    def reregister(self, req: ClientRequest, now: float) -> None:
        """RFC 7641 §3.3.1: renew an observation (same token) when notifications stopped."""
        if req.done or not req.observing:
            return
        state = self._peers.get(req.peer)
        if state is None:
            return
        msg = _copy(req.message)
        self._transmit_request(state, req.peer, req, msg, now)

    def pending_requests(self) -> int:
        return len({id(r) for r in self._requests.values()})


def _is_fresher(v2: int, v1: int, elapsed: float) -> bool:
    """RFC 7641 §3.4: is sequence number v2 newer than v1?"""
    return (v1 < v2 and v2 - v1 < (1 << 23)) or (v1 > v2 and v1 - v2 > (1 << 23)) or \
        elapsed > _OBSERVE_FRESH_WINDOW


def _resource_key(msg: Message) -> bytes:
    """Identifies a resource for block-wise state: Uri-Path and Uri-Query, raw."""
    return b"\x00".join(v for n, v in (msg.options or ())
                        if n in (OptionNumber.URI_PATH, OptionNumber.URI_QUERY))


def _copy(msg: Message) -> Message:
    return Message(msg.mtype, msg.code, msg.mid, msg.token,
                   list(msg.options) if msg.options else None, msg.payload)


def error_response(code: int, diagnostic: str) -> Message:
    """An error response with a diagnostic payload (RFC 7252 §5.5.2), text/plain."""
    msg = Message(code=code, payload=diagnostic.encode("utf-8"))
    msg.add(OptionNumber.CONTENT_FORMAT, encode_uint(0))
    return msg
