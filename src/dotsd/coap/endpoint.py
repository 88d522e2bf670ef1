"""The sans-IO CoAP endpoint: the message layer and request matching.

One object serves many peers. It never touches a socket or a clock: the layer below feeds it
messages with ``receive(peer, msg, now)`` (or raw datagrams with ``receive_datagram``) and
takes what to send from ``messages_to_send()``; the layer above reads ``next_event()`` and
answers requests with ``respond``. ``get_timer()``/``handle_timer(now)`` drive time.

A peer is any hashable key chosen by the layer below (a link). Datagram peers (UDP, DTLS)
get the RFC 7252 message layer: CON retransmission with exponential back-off, ACK/RST,
deduplication with the cached response replayed. Reliable peers (TCP, TLS; RFC 8323) skip
it: no message IDs, no retransmission, no ACKs.

Both roles run on every peer at once: either end of any link may send requests. The endpoint
delegates block-wise transfers (RFC 7959) to :mod:`dotsd.coap.blockwise` and the server side
of Observe (RFC 7641) to :mod:`dotsd.coap.observe`; what it keeps per peer and per exchange is
:mod:`dotsd.coap.exchange`.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Callable, Hashable
from functools import partial

from dotsd.coap import codec
from dotsd.coap.blockwise import (
    BlockwiseServer,
    add_block2,
    first_block1,
    next_block1_part,
    next_block2_request,
    too_large,
)
from dotsd.coap.events import (
    Event,
    MessageRejected,
    PeerReset,
    RequestFailed,
    RequestReceived,
    ResponseReceived,
)
from dotsd.coap.exchange import (
    ClientRequest,
    DedupEntry,
    EndpointConfig,
    Exchange,
    Observer,
    Outgoing,
    PeerState,
    RepeatPolicy,
)
from dotsd.coap.message import Block, Message, copy_message, decode_uint, error_response
from dotsd.coap.numbers import (
    OPTION_LENGTHS,
    UNIMPLEMENTED_OPTIONS,
    Code,
    MessageType,
    OptionNumber,
    code_dotted,
    is_request,
    is_response,
    is_success,
)
from dotsd.coap.observe import ObserverRegistry, is_fresher, stamp_notification
from dotsd.coap.params import TransmissionParameters
from dotsd.coap.timers import TimerHeap
from dotsd.ratelog import RateLimitedLog

__all__ = ["CoapEndpoint", "probing_rate_policy"]

log = logging.getLogger("dotsd.coap")

CON = MessageType.CON
NON = MessageType.NON
ACK = MessageType.ACK
RST = MessageType.RST

# The request parser's table (a plain dict of int keys: the fastest lookup per option).
_OPTION_LENGTHS: dict[int, tuple[int, int]] = {int(k): v for k, v in OPTION_LENGTHS.items()}


def _bad_length(number: int, value: bytes) -> Message:
    """RFC 7252 §5.4.3: a critical option of a length outside its range (§5.10) is treated
    like an unrecognized one: in a request, 4.02 (§5.4.1)."""
    low, high = OPTION_LENGTHS.get(number, (0, 0))
    return error_response(Code.BAD_OPTION, f"option {number} has {len(value)} bytes "
                                           f"(allowed: {low} to {high})")


def _other_option(number: int, value: bytes) -> Message | bool:
    """A request option the parser does not read itself: an error answer, True to ignore
    it, False to leave it for whoever reads it later."""
    bounds = _OPTION_LENGTHS.get(number)
    if bounds is None:
        if number & 1:
            # RFC 7252 §5.4.1: unrecognized critical option in a request → 4.02 (OSCORE,
            # Q-Block1, Q-Block2 too: not implemented, RFC 9177 §9).
            what = "not supported" if number in UNIMPLEMENTED_OPTIONS else "unknown"
            return error_response(Code.BAD_OPTION, f"{what} critical option {number}")
        return False  # unrecognized elective: ignored where it is (RFC 7252 §5.4.1)
    if not bounds[0] <= len(value) <= bounds[1]:
        # RFC 7252 §5.4.3: treated like an unrecognized option (critical: 4.02).
        return _bad_length(number, value) if number & 1 else True
    if number == 35 or number == 39:  # Proxy-Uri, Proxy-Scheme
        return error_response(Code.PROXYING_NOT_SUPPORTED, "not a proxy")
    return False


def _ignore(msg: Message, option: tuple[int, bytes]) -> None:
    """RFC 7252 §5.4.3: an elective option of a length outside its range is ignored: gone
    from the request, for whoever reads it later. A new list: the parser's loop goes on
    over the old one."""
    msg.options = [o for o in msg.options or () if o is not option]


def _unrecognized_critical(msg: Message) -> int | None:
    """The first critical option of ``msg`` this engine does not implement, if any."""
    for number, _ in msg.options or ():
        if number & 1 and number not in _OPTION_LENGTHS:
            return number
    return None


def _reserved_szx(name: str) -> Message:
    """RFC 7959 §2.2: SZX 7 is reserved; in a request it MUST lead to 4.00."""
    return error_response(Code.BAD_REQUEST, f"{name} SZX 7 is reserved (RFC 7959 §2.2)")


def probing_rate_policy(req: ClientRequest, attempts: int, rtt: float | None) -> float | None:
    """Default NON repetition: one per RTT (1 s without an estimate), but never faster than
    the peer's probing rate allows for a peer that has not answered (RFC 7252 §4.7)."""
    size = len(codec.encode(req.message))
    floor = size / req.params.probing_rate
    return max(rtt if rtt is not None else 1.0, floor)


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
        # Refusals under the per-peer limits: a flooding peer must not flood the log.
        self._log_limit = RateLimitedLog(log, "refusals under per-peer limits")
        self._blocks = BlockwiseServer(self.config, self._timers, self._peers, self._log_limit)
        self._observe = ObserverRegistry(self.config, self._peers, self._events, self._log_limit)

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
            self._observe.remove(obs, reason, state)

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
        error = self._parse_request(exchange, state.reliable) if msg.options else None
        if error is None:
            if msg.payload and len(msg.payload) > self.config.max_message_size:
                error = too_large(self.config.max_body_size)
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
        """Process a decoded message from ``peer``: its type and code class decide (RFC 7252
        §4; a reliable peer has no message layer, RFC 8323 §2)."""
        state = self._peers.get(peer)
        if state is None and (state := self._first_contact(peer, msg)) is None:
            return
        code = msg.code
        if state.reliable:
            if is_request(code):
                self._on_request(state, peer, msg, now)
            elif is_response(code):
                self._on_response(state, peer, msg, now)
            return
        mtype = msg.mtype
        if code == 0:
            self._on_empty(state, peer, msg, now)
            return
        request = is_request(code)
        if request:
            if mtype > NON:
                return  # a request in an ACK or RST is a format error: ignore
        elif not is_response(code):
            if mtype == CON:
                # Reserved code class (1, 6, 7 on UDP): RFC 7252 §4.2 says reject.
                self._out.append((peer, Message(RST, 0, msg.mid)))
            return
        elif mtype == RST or (msg.options and self._rejected_response(peer, msg)):
            return
        elif mtype == ACK:
            self._on_ack(state, peer, msg, now)  # a piggybacked response (§5.2.1)
            return
        entry = state.dedup.get(msg.mid)
        if entry is not None and entry.expires > now:
            self._on_duplicate(peer, msg, entry)
            return
        if request:
            self._on_request(state, peer, msg, now)
        elif mtype == CON:
            # A separate response (§5.2.2): acknowledged, the ACK replayed to a duplicate.
            ack = Message(ACK, 0, msg.mid)
            self._remember(state, msg.mid, now).response = ack
            self._on_response(state, peer, msg, now, ack_with=ack)
        else:
            self._remember(state, msg.mid, now)
            self._on_response(state, peer, msg, now)

    def _rejected_response(self, peer: Hashable, msg: Message) -> bool:
        """RFC 7252 §5.4.1: a response with an unrecognized critical option MUST be rejected:
        a CON with RST; an ACK or a NON silently ignored (§4.2, §4.3)."""
        if _unrecognized_critical(msg) is None:
            return False
        if msg.mtype == CON:
            self._out.append((peer, Message(RST, 0, msg.mid)))
        return True

    def _first_contact(self, peer: Hashable, msg: Message) -> PeerState | None:
        """A message from a peer without state. Only a request creates state for an unknown
        peer; anything else from it cannot belong to an exchange of ours (a CON is rejected,
        the rest dropped)."""
        if not is_request(msg.code) or msg.mtype > NON:
            if msg.mtype == CON:
                self._out.append((peer, Message(RST, 0, msg.mid)))
            return None
        return self.add_peer(peer)

    def _on_empty(self, state: PeerState, peer: Hashable, msg: Message, now: float) -> None:
        """An empty message (RFC 7252 §4.1): the ACK or RST of a CON of ours, or a CON."""
        mtype = msg.mtype
        if mtype == ACK:
            self._on_ack(state, peer, msg, now)
        elif mtype == RST:
            self._on_rst(state, peer, msg)
        elif mtype == CON:
            # RFC 7252 §4.3: an empty CON is a "CoAP ping", answered with RST.
            self._out.append((peer, Message(RST, 0, msg.mid)))

    def _on_duplicate(self, peer: Hashable, msg: Message, entry: DedupEntry) -> None:
        """RFC 7252 §4.5: a duplicate CON gets the same answer again; NON is ignored."""
        if msg.mtype == CON and entry.response is not None:
            self._out.append((peer, entry.response))

    def _remember(self, state: PeerState, mid: int, now: float) -> DedupEntry:
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
        entry = dedup[mid] = DedupEntry(now + state.exchange_lifetime)
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
        error = self._parse_request(exchange, state.reliable) if msg.options else None
        if error is None and len(msg.payload) > self.config.max_message_size:
            error = too_large(self.config.max_body_size)
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
                self._observe.remove(obs, "deregistered", state)
        if exchange.block1 is not None:
            answer = self._blocks.reassemble_block1(state, exchange, now)  # RFC 7959 §2.3
            if answer is not None:  # 2.31 Continue, or the error ending the upload
                exchange.block1 = None
                self.respond(exchange, answer, now)
                return
        block2 = exchange.asked_block2
        if block2 is not None and block2.num > 0:
            cached = self._blocks.cached_block(state, exchange, now)  # RFC 7959 §2.4
            if cached is not None:
                self.respond(exchange, cached, now)
                return
        self.defer(exchange, now)
        self._events.append(RequestReceived(exchange))

    def _parse_request(self, exchange: Exchange, reliable: bool) -> Message | None:
        """Read the request's options in one pass; returns an error response, if any.
        ``reliable``: over TCP/TLS, where Block SZX 7 means BERT (RFC 8323 §6)."""
        path: list[str] = []
        query: list[str] | None = None
        try:
            for option in exchange.request.options or ():
                number, value = option
                # The usual options of the usual lengths inline; the rest, and lengths
                # outside RFC 7252 §5.10's ranges (§5.4.3), in _other_option.
                if number == 11 and len(value) <= 255:  # Uri-Path
                    path.append(value.decode("utf-8"))
                elif number == 15 and len(value) <= 255:  # Uri-Query
                    if query is None:
                        query = []
                    query.append(value.decode("utf-8"))
                elif number == 6 and len(value) <= 3:  # Observe
                    exchange.observe = decode_uint(value)
                elif number == 23 or number == 27:  # Block2, Block1
                    error = self._parse_block(exchange, number, value, reliable)
                    if error is not None:
                        return error
                elif number == 60 and len(value) <= 4:  # Size1
                    if decode_uint(value) > self.config.max_body_size:
                        return too_large(self.config.max_body_size)
                elif (other := _other_option(number, value)) is True:
                    _ignore(exchange.request, option)
                elif other is not False:
                    return other
        except UnicodeDecodeError:
            return error_response(Code.BAD_REQUEST, "Uri-Path or Uri-Query is not UTF-8")
        except ValueError as exc:
            return error_response(Code.BAD_OPTION, str(exc))
        exchange.path = tuple(path)
        if query is not None:
            exchange.query = tuple(query)
        return None

    def _parse_block(self, exchange: Exchange, number: int, value: bytes,
                     reliable: bool) -> Message | None:
        """Block2 or Block1 of a request (RFC 7959 §2.2; RFC 8323 §6 over TCP/TLS)."""
        block = Block.decode(value)  # ValueError over 3 bytes: 4.02 (RFC 7252 §5.4.3)
        if block.szx == 7:
            if not reliable:
                return _reserved_szx("Block2" if number == 23 else "Block1")
            if number == 27:
                # RFC 8323 §6: a BERT block, which we do not take (our CSM announces no
                # BERT, §5.3.2). RFC 7959 §2.9.3: a 4.13 with a smaller SZX in its Block1
                # is the hint to send blocks of that size.
                szx = self.config.preferred_szx
                exchange.block1 = Block(0, False, szx)
                return error_response(Code.REQUEST_ENTITY_TOO_LARGE,
                                      "BERT blocks (Block1 SZX 7) not supported: send "
                                      f"blocks of at most {1 << (szx + 4)} bytes")
            # RFC 8323 §6: a BERT Block2 in control usage reads as SZX 6; the answer may
            # come in non-BERT blocks (we announce no BERT, §5.3.2).
            block = Block(block.num, block.more, 6)
        if number == 23:
            exchange.asked_block2 = block
        else:
            exchange.block1 = block
        return None

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
                and (obs := self._observe.register(state, peer, req, observe_key, now))
                is not None):
            exchange.observe_key = observe_key
            response.set(OptionNumber.OBSERVE, obs.seq)
        elif exchange.observe is not None:
            response.remove(OptionNumber.OBSERVE)
        if (exchange.asked_block2 is not None
                or len(response.payload) > 1 << (self.config.preferred_szx + 4)):
            self._blocks.apply_block2(state, exchange, response, now)  # RFC 7959 §2.4
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

    def ignore(self, exchange: Exchange, now: float) -> None:
        """Answer nothing (a request the application must "silently ignore", e.g. RFC 9132
        §4.4.3): a CON request still gets its empty ACK, so that the peer stops
        retransmitting it (RFC 7252 §4.2), and so does a duplicate of it (§4.5)."""
        if exchange.responded:
            raise codec.LocalProtocolError("request already answered")
        exchange.responded = True
        req = exchange.request
        state = self._peers.get(exchange.peer)
        if state is None or state.reliable or req.mtype != CON or exchange.acked:
            return
        ack = Message(ACK, 0, req.mid)
        self._out.append((exchange.peer, ack))
        if exchange._dedup is not None:
            exchange._dedup.response = ack

    # --- Observe, server side (RFC 7641 §4) --------------------------------------------
    def observers(self, key: Hashable) -> list[Hashable]:
        """The peers observing ``key``."""
        return self._observe.peers(key)

    def observed_keys(self) -> list[Hashable]:
        """Every resource key with at least one observer."""
        return self._observe.keys()

    def observer_count(self, key: Hashable | None = None) -> int:
        return self._observe.count(key)

    def notify(self, key: Hashable, make: Callable[[Hashable, Message], Message | None],
               now: float, confirmable: bool = False) -> int:
        """Send a notification to every observer of ``key``.

        ``make(peer, registration_request)`` builds the response (code, options, payload) for
        one observer, or returns None to skip it. A non-2.xx notification ends the
        observation (RFC 7641 §4.2). Returns the number of notifications sent.
        """
        sent = 0
        for obs in self._observe.of_key(key):
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
        success = stamp_notification(obs, msg)
        exchange = Exchange(peer, obs.request)
        exchange.responded = True
        self._blocks.apply_block2(state, exchange, msg, now)
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
            self._observe.remove(obs, f"final notification {code_dotted(msg.code)}", state)

    def _note_non(self, state: PeerState, mid: int, ref: ClientRequest | Observer) -> None:
        """Remember recent NON MIDs so an RST can be matched (RFC 7641 §3.6, §4.2)."""
        recent = state.recent_non
        recent[mid] = ref
        if len(recent) > 64:
            del recent[next(iter(recent))]

    # ------------------------------------------------------------------ message layer
    def _send_con(self, state: PeerState, peer: Hashable, msg: Message, now: float) -> Outgoing:
        """Send a CON message with retransmission (RFC 7252 §4.2)."""
        msg.mtype = CON
        msg.mid = state.new_mid()
        p = state.params
        timeout = self._rng.uniform(p.ack_timeout, p.ack_timeout * p.ack_random_factor)
        out = Outgoing(msg, timeout, now)
        state.outgoing[msg.mid] = out
        out.timer = self._timers.schedule(now + timeout,
                                          partial(self._retransmit, state, peer, out))
        self._out.append((peer, msg))
        return out

    def _retransmit(self, state: PeerState, peer: Hashable, out: Outgoing, now: float) -> None:
        if state.outgoing.get(out.message.mid) is not out:
            return
        if out.attempts >= state.params.max_retransmit:
            del state.outgoing[out.message.mid]
            self._con_finished(state, peer, out, now)
            if out.request is not None:
                self._fail(out.request, "timeout: no acknowledgement")
            elif out.observer is not None:
                self._observe.remove(out.observer, "notification not acknowledged")
            return
        out.attempts += 1
        out.timeout *= 2
        out.timer = self._timers.schedule(now + out.timeout,
                                          partial(self._retransmit, state, peer, out))
        self._out.append((peer, out.message))

    def _con_finished(self, state: PeerState, peer: Hashable, out: Outgoing,
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
        if req is None:
            return
        req._outgoing = None  # acknowledged: nothing left to abandon
        if req.done:
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
                self._fail(out.request, "reset by peer", reset=True)
            elif out.observer is not None:
                self._observe.remove(out.observer, "reset by peer")
            return
        ref = state.recent_non.pop(msg.mid, None)
        if isinstance(ref, Observer):
            self._observe.remove(ref, "reset by peer")
        elif isinstance(ref, ClientRequest):
            self._fail(ref, "reset by peer", reset=True)
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
        wire = copy_message(msg)
        if len(msg.payload) > state.max_payload:
            # RFC 7959 §2.5: send the body in Block1 parts, one exchange each.
            wire = first_block1(req, self.config.preferred_szx)
        self._transmit_request(state, peer, req, wire, now)
        return req

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
            out = self._send_con(state, peer, msg, now)
            out.request = req
            req._outgoing = out
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
        again = copy_message(msg)
        again.mid = state.new_mid()
        self._note_non(state, again.mid, req)
        self._out.append((peer, again))
        self._schedule_repeat(state, peer, req, again, now)

    def _on_response(self, state: PeerState, peer: Hashable, msg: Message, now: float,
                     ack_with: Message | None = None) -> None:
        """A response from ``peer``, matched to our request by its token (RFC 7252 §5.3.2);
        ``ack_with`` acknowledges a separate CON response. Then, in steps: the next Block1
        part (RFC 7959 §2.3), the Block2 parts (§2.4), a notification (RFC 7641 §3.2), or
        the final answer."""
        req = self._requests.get((peer, msg.token))
        if req is None or req.done:
            self._on_unmatched_response(state, peer, msg, ack_with)
            return
        if ack_with is not None:
            self._out.append((peer, ack_with))
        if req._repeat_timer is not None:
            req._repeat_timer.cancel()
            req._repeat_timer = None
        if req.attempts == 0 and not req.confirmable and req.sent_at:
            state.rtt_sample(now - req.sent_at)  # a NON answered before any repetition
        if req._block1_body is not None:
            part = next_block1_part(req, msg)
            if part is not None:
                self._transmit_request(state, peer, req, part, now)
                return
        try:
            blk2 = msg.block2
        except ValueError:
            blk2 = None
        if (blk2 is not None and (blk2.more or req._block2_body is not None)
                and self._collect_block2(state, peer, req, msg, blk2, now)):
            return
        seq = msg.observe
        if req.observing and seq is not None and is_success(msg.code):
            self._on_notification(req, msg, seq, now)
            return
        self._finish(req, now)
        req.response = msg
        if not req._internal:
            self._events.append(ResponseReceived(req, msg, notification=req.observing and
                                                 req._last_seq is not None))

    def _on_unmatched_response(self, state: PeerState, peer: Hashable, msg: Message,
                               ack_with: Message | None) -> None:
        """A response for no request of ours (late, cancelled, unknown). RFC 7641 §3.6 /
        RFC 7252 §4.2: reject what we cannot match (a CON or a notification, with RST, also
        to its duplicates); acknowledge and drop the rest."""
        if not state.reliable and (msg.mtype == CON or msg.observe is not None):
            if ack_with is not None and state.dedup.get(msg.mid) is not None:
                state.dedup[msg.mid].response = Message(RST, 0, msg.mid)
            self._out.append((peer, Message(RST, 0, msg.mid)))
            return
        if ack_with is not None:
            self._out.append((peer, ack_with))

    def _collect_block2(self, state: PeerState, peer: Hashable, req: ClientRequest,
                        msg: Message, blk: Block, now: float) -> bool:
        """RFC 7959 §2.4: add a Block2 part to the body and fetch the next one. False once the
        body is whole (``msg`` then carries it, to be delivered); True while parts are still
        to come, or when the transfer failed."""
        failure = add_block2(req, msg, blk, self.config.max_body_size)
        if failure is not None:
            self._fail(req, failure, now)
            return True
        if blk.more:
            self._fetch_next_block(state, peer, req, blk, now, msg.opt(OptionNumber.ETAG))
            return True
        return False

    def _on_notification(self, req: ClientRequest, msg: Message, seq: int, now: float) -> None:
        """A 2.xx response with Observe to an observation of ours: its first response or a
        notification (RFC 7641 §3.2)."""
        # RFC 7641 §3.4: drop notifications older than the newest one seen.
        last = req._last_seq
        if last is not None and not is_fresher(seq, last, now - req._last_seq_time):
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

    def _fetch_next_block(self, state: PeerState, peer: Hashable, req: ClientRequest,
                          blk: Block, now: float, etag: bytes | None = None) -> None:
        nxt = next_block2_request(req, blk, etag)
        if req.observing:
            # Fetch the rest of a notification under a token of its own (RFC 7959 §2.6).
            token = self.new_token(peer)
            req._alias_tokens.append(token)
            self._requests[(peer, token)] = req
            nxt.token = token
        self._transmit_request(state, peer, req, nxt, now)

    def _finish(self, req: ClientRequest, now: float | None = None) -> None:
        req.done = True
        for timer in (req._deadline_timer, req._repeat_timer, req._refresh_timer):
            if timer is not None:
                timer.cancel()
        self._requests.pop((req.peer, req.token), None)
        for token in req._alias_tokens:
            self._requests.pop((req.peer, token), None)
        self._abandon(req, req.sent_at if now is None else now)

    def _abandon(self, req: ClientRequest, now: float) -> None:
        """A finished request's CON still unacknowledged (it timed out, was cancelled, or its
        response came separately) is not retransmitted any more and frees its NSTART slot
        (RFC 7252 §4.7): a lost request must not hold back the ones after it."""
        out, req._outgoing = req._outgoing, None
        if out is None:
            return
        state = self._peers.get(req.peer)
        if state is None or state.outgoing.get(out.message.mid) is not out:
            return  # acknowledged, reset or given up already
        del state.outgoing[out.message.mid]
        if out.timer is not None:
            out.timer.cancel()
        self._con_finished(state, req.peer, out, now)

    def _expire(self, req: ClientRequest, now: float) -> None:
        self._fail(req, "timeout: no response", now)

    def _fail(self, req: ClientRequest, reason: str, now: float | None = None, *,
              reset: bool = False) -> None:
        if req.done:
            return
        self._finish(req, now)
        if not req._internal:
            self._events.append(RequestFailed(req, reason, reset))

    def cancel(self, req: ClientRequest, now: float, deregister: bool = True) -> None:
        """Stop waiting for a request. For an observation, ``deregister`` sends a GET with
        Observe=1 (RFC 7641 §3.6); otherwise later notifications are answered with RST."""
        if req.done:
            return
        was_observing = req.observing and req.response is not None
        self._fail(req, "cancelled", now)
        if was_observing and deregister and req.peer in self._peers:
            msg = copy_message(req.message)
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
        msg = copy_message(req.message)
        self._transmit_request(state, req.peer, req, msg, now)

    def pending_requests(self) -> int:
        return len({id(r) for r in self._requests.values()})

