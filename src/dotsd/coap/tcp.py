"""CoAP over reliable transports (RFC 8323 §3 and §5) as a sans-IO connection object.

One :class:`CoapTcpConnection` per TCP or TLS connection. It never touches a socket or a
clock (nothing here depends on time): feed it the bytes read from the stream with
:meth:`~CoapTcpConnection.receive_data`, write out whatever
:meth:`~CoapTcpConnection.data_to_send` returns, and take what happened from
:meth:`~CoapTcpConnection.next_event`::

    conn = CoapTcpConnection()
    link.send(conn.data_to_send())           # our CSM goes first (RFC 8323 §5.3)
    ...
    conn.receive_data(chunk)
    while (event := conn.next_event()) is not None:
        ...
    link.send(conn.data_to_send())           # Pongs, Aborts, our own messages

Requests and responses both come out as :class:`MessageReceived`: matching tokens is the
job of the layer above. Signaling (7.xx) is handled here: CSM bookkeeping, automatic Pong,
Release and Abort. The connection states form the table ``_RECEIVE`` below
(``AWAIT_CSM`` → ``OPEN`` → ``CLOSED``); a peer's protocol error is answered with an Abort
(RFC 8323 §5.6) and reported as :class:`ConnectionAborted`; a mistake of ours raises
:class:`LocalProtocolError`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Final

from dotsd.coap.codec import (
    Incomplete,
    LocalProtocolError,
    MessageFormatError,
    decode_tcp,
    encode_tcp,
    tcp_frame_length,
)
from dotsd.coap.message import Message, decode_uint
from dotsd.coap.numbers import Code, SignalOption, code_class, code_str, is_critical

# RFC 8323 §5.3.1: the base value of Max-Message-Size, before any CSM says otherwise.
BASE_MAX_MESSAGE_SIZE: Final = 1152

# RFC 8323 §5.3.1: Max-Message-Size is a uint of 0-4 bytes.
_MAX_MESSAGE_SIZE_LEN: Final = 4

# Our Abort diagnostics are cut to this many bytes (RFC 7252 §5.5.2: keep them short).
_MAX_DIAGNOSTIC: Final = 128


# --- errors (LocalProtocolError, the root of ours, is shared with the endpoint: coap/codec.py) -

class ConnectionClosedError(LocalProtocolError):
    """The connection was aborted or closed: nothing more can be sent (RFC 8323 §5.6)."""


class MessageTooLargeError(LocalProtocolError):
    """The encoded message exceeds the Max-Message-Size the peer announced (RFC 8323 §5.3.1)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"message of {size} bytes exceeds the peer's Max-Message-Size of {limit} bytes "
            "(RFC 8323 §5.3.1); use block-wise transfer or a smaller payload"
        )
        self.size = size
        self.limit = limit


# --- events ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TcpEvent:
    """Base class of what :meth:`CoapTcpConnection.next_event` returns."""


@dataclass(frozen=True, slots=True)
class MessageReceived(TcpEvent):
    """A request or a response (RFC 8323 §3.3); Empty messages are not reported (§3.4)."""

    message: Message


@dataclass(frozen=True, slots=True)
class CsmReceived(TcpEvent):
    """The peer sent a CSM; the values are the cumulative ones now in force (RFC 8323 §5.3)."""

    max_message_size: int
    block_wise: bool


@dataclass(frozen=True, slots=True)
class PongReceived(TcpEvent):
    """Answer to one of our Pings (RFC 8323 §5.4); ``custody`` per §5.4.1."""

    token: bytes
    custody: bool


@dataclass(frozen=True, slots=True)
class ReleaseReceived(TcpEvent):
    """The peer asks us to close the connection in an orderly way (RFC 8323 §5.5).

    ``alternative_address`` holds every Alternative-Address option ("authority" strings;
    the option is repeatable), ``hold_off`` the Hold-Off seconds or None.
    """

    alternative_address: tuple[str, ...]
    hold_off: int | None
    diagnostic: str = ""


@dataclass(frozen=True, slots=True)
class ConnectionAborted(TcpEvent):
    """An Abort was sent (``by_peer`` False) or received (True); the connection is closed.

    ``reason`` is the diagnostic payload (RFC 8323 §5.6); ``bad_csm_option`` the number of
    the CSM option the aborting side could not process, if it said so.
    """

    reason: str
    by_peer: bool
    bad_csm_option: int | None = None


@dataclass(frozen=True, slots=True)
class _DeferredPong:
    """Queue marker: send this Pong once the events before it were taken (RFC 8323 §5.4.1)."""

    token: bytes


# --- the state table -------------------------------------------------------------------------

class State(Enum):
    AWAIT_CSM = "AWAIT_CSM"  # our CSM is sent; the peer's is not in yet
    OPEN = "OPEN"  # both CSMs exchanged
    CLOSED = "CLOSED"  # Abort sent or received, or the stream is gone


class _Kind(Enum):
    EMPTY = "Empty"
    MESSAGE = "request/response"
    CSM = "CSM"
    PING = "Ping"
    PONG = "Pong"
    RELEASE = "Release"
    ABORT = "Abort"
    OTHER_SIGNAL = "unassigned signaling code"
    RESERVED = "reserved code class"


_SIGNAL_KINDS: Final[dict[int, _Kind]] = {
    Code.CSM: _Kind.CSM,
    Code.PING: _Kind.PING,
    Code.PONG: _Kind.PONG,
    Code.RELEASE: _Kind.RELEASE,
    Code.ABORT: _Kind.ABORT,
}


def _kind_of(code: int) -> _Kind:
    if code == 0:
        return _Kind.EMPTY
    cls = code_class(code)
    if cls == 7:
        return _SIGNAL_KINDS.get(code, _Kind.OTHER_SIGNAL)
    if cls in (0, 2, 3, 4, 5):
        return _Kind.MESSAGE
    return _Kind.RESERVED  # RFC 7252 §12.1: classes 1 and 6 are reserved


# What a received message does in each state: the next state. A (state, kind) pair that is
# not listed is a protocol error by the peer, answered with Abort (RFC 8323 §5.6).
_RECEIVE: Final[dict[tuple[State, _Kind], State]] = {
    (State.AWAIT_CSM, _Kind.EMPTY): State.AWAIT_CSM,  # §3.4: always allowed, always ignored
    (State.AWAIT_CSM, _Kind.CSM): State.OPEN,  # §3.3: the first message is a CSM
    (State.AWAIT_CSM, _Kind.ABORT): State.CLOSED,  # the peer gave up before its CSM
    (State.OPEN, _Kind.EMPTY): State.OPEN,
    (State.OPEN, _Kind.MESSAGE): State.OPEN,
    (State.OPEN, _Kind.CSM): State.OPEN,  # §5.3: more CSMs may come at any time
    (State.OPEN, _Kind.PING): State.OPEN,
    (State.OPEN, _Kind.PONG): State.OPEN,
    (State.OPEN, _Kind.RELEASE): State.OPEN,  # §5.5: the receiver closes when it is done
    (State.OPEN, _Kind.OTHER_SIGNAL): State.OPEN,  # not defined by RFC 8323: ignored
    (State.OPEN, _Kind.ABORT): State.CLOSED,
}

# RFC 8323 §5.2: signaling option numbers are per code. These are the ones we understand.
_KNOWN_SIGNAL_OPTIONS: Final[dict[_Kind, frozenset[int]]] = {
    _Kind.CSM: frozenset({SignalOption.MAX_MESSAGE_SIZE, SignalOption.BLOCK_WISE_TRANSFER}),
    _Kind.PING: frozenset({SignalOption.CUSTODY}),
    _Kind.PONG: frozenset({SignalOption.CUSTODY}),
    _Kind.RELEASE: frozenset({SignalOption.ALTERNATIVE_ADDRESS, SignalOption.HOLD_OFF}),
    _Kind.ABORT: frozenset({SignalOption.BAD_CSM_OPTION}),
}


def _diagnostic(payload: bytes) -> str:
    """RFC 7252 §5.5.2: a diagnostic payload is UTF-8 text (tolerate junk)."""
    return payload.decode("utf-8", errors="replace")


# --- the connection --------------------------------------------------------------------------

class CoapTcpConnection:
    """One RFC 8323 connection, either side (who dialled does not matter here).

    ``max_message_size`` is the largest frame we accept and announce in our CSM
    (RFC 8323 §5.3.1); ``block_wise`` announces Block-Wise-Transfer (§5.3.2). Our CSM is
    queued at once, so the first :meth:`data_to_send` carries it (§3.3: the initiator must
    not wait for the acceptor's CSM; the acceptor may, but need not).
    """

    def __init__(self, *, max_message_size: int = BASE_MAX_MESSAGE_SIZE,
                 block_wise: bool = False) -> None:
        if max_message_size < 16:
            raise ValueError("max_message_size below 16 bytes cannot carry any real message")
        if max_message_size >= 1 << 32:
            raise ValueError("max_message_size must fit the 4-byte CSM option")
        self._state = State.AWAIT_CSM
        self._max_message_size = max_message_size
        self._block_wise = block_wise
        self._peer_max_message_size = BASE_MAX_MESSAGE_SIZE
        self._peer_block_wise = False
        self._in = bytearray()
        self._out = bytearray()
        self._events: deque[TcpEvent | _DeferredPong] = deque()
        self._pending_messages = 0  # MessageReceived events not yet taken
        self._released = False

        csm = Message(code=Code.CSM)
        if max_message_size != BASE_MAX_MESSAGE_SIZE:
            csm.add(SignalOption.MAX_MESSAGE_SIZE, max_message_size)
        if block_wise:
            csm.add(SignalOption.BLOCK_WISE_TRANSFER, b"")
        self._out += encode_tcp(csm)

    # --- state -------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def closed(self) -> bool:
        return self._state is State.CLOSED

    @property
    def max_message_size(self) -> int:
        """The limit we announced and enforce on received frames."""
        return self._max_message_size

    @property
    def block_wise(self) -> bool:
        """Whether our CSM announced Block-Wise-Transfer (RFC 8323 §5.3.2)."""
        return self._block_wise

    @property
    def peer_max_message_size(self) -> int:
        """The limit the peer announced (1152 until its CSM says otherwise)."""
        return self._peer_max_message_size

    @property
    def peer_block_wise(self) -> bool:
        return self._peer_block_wise

    @property
    def peer_bert(self) -> bool:
        """RFC 8323 §5.3.2: Block-Wise-Transfer with Max-Message-Size over 1152 means BERT."""
        return self._peer_block_wise and self._peer_max_message_size > BASE_MAX_MESSAGE_SIZE

    @property
    def release_sent(self) -> bool:
        return self._released

    # --- input -------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the stream; ignored once the connection is closed."""
        if self._state is State.CLOSED or not data:
            return
        buf = self._in
        buf += data
        while buf and not self.closed:
            try:
                # RFC 8323 §5.3.1: the size check needs only the length header, so an
                # oversized frame is refused before it is buffered.
                total = tcp_frame_length(buf, self._max_message_size)
            except Incomplete:
                break
            except MessageFormatError as exc:
                self._abort(f"bad frame: {exc.reason}")
                break
            if len(buf) < total:
                break
            frame = bytes(buf[:total])
            del buf[:total]
            try:
                msg = decode_tcp(frame)
            except MessageFormatError as exc:
                # RFC 8323 §5.6: syntax violations are answered with Abort.
                self._abort(f"malformed message: {exc.reason}")
                break
            self._handle(msg)
        if self.closed:
            buf.clear()
        self._flush_deferred_pongs()

    def _handle(self, msg: Message) -> None:
        kind = _kind_of(msg.code)
        next_state = _RECEIVE.get((self._state, kind))
        if next_state is None:
            if self._state is State.AWAIT_CSM:
                self._abort(f"first message must be a CSM (RFC 8323 §5.3), got "
                            f"{code_str(msg.code)}")
            else:
                self._abort(f"unexpected message code {code_str(msg.code)}")
            return
        known = _KNOWN_SIGNAL_OPTIONS.get(kind)
        if known is not None and kind is not _Kind.ABORT:
            for number, _value in msg.options or ():
                if number not in known and is_critical(number):
                    # RFC 8323 §5.2: an unknown critical signaling option aborts; for a CSM
                    # the Abort names it in Bad-CSM-Option (§5.6).
                    self._abort(
                        f"unknown critical option {number} in {code_str(msg.code)}",
                        bad_csm_option=number if kind is _Kind.CSM else None,
                    )
                    return
        if kind is _Kind.CSM:
            self._on_csm(msg)
        elif kind is _Kind.MESSAGE:
            self._events.append(MessageReceived(msg))
            self._pending_messages += 1
        elif kind is _Kind.PING:
            self._on_ping(msg)
        elif kind is _Kind.PONG:
            self._events.append(PongReceived(msg.token, msg.has(SignalOption.CUSTODY)))
        elif kind is _Kind.RELEASE:
            self._on_release(msg)
        elif kind is _Kind.ABORT:
            self._on_abort(msg)
        # EMPTY (RFC 8323 §3.4) and OTHER_SIGNAL are ignored.
        if self._state is not State.CLOSED:
            self._state = next_state

    def _on_csm(self, msg: Message) -> None:
        raw = msg.opt(SignalOption.MAX_MESSAGE_SIZE)
        if raw is not None:
            if len(raw) > _MAX_MESSAGE_SIZE_LEN:
                # RFC 8323 §5.6: a parameter problem with an elective option's value.
                self._abort(f"Max-Message-Size of {len(raw)} bytes (at most 4 allowed)",
                            bad_csm_option=SignalOption.MAX_MESSAGE_SIZE)
                return
            # RFC 8323 §5.3.1: the active value is replaced each time the option is sent.
            self._peer_max_message_size = decode_uint(raw)
        if msg.has(SignalOption.BLOCK_WISE_TRANSFER):
            # RFC 8323 §5.3: capabilities are cumulative; a later CSM without the
            # option does not withdraw it.
            self._peer_block_wise = True
        self._events.append(CsmReceived(self._peer_max_message_size, self._peer_block_wise))

    def _on_ping(self, msg: Message) -> None:
        # RFC 8323 §5.4: answer with a Pong carrying the same token. With Custody (§5.4.1)
        # the Pong waits until the layer above has taken every message received before it.
        if msg.has(SignalOption.CUSTODY) and self._pending_messages:
            self._events.append(_DeferredPong(msg.token))
        else:
            self._send_pong(msg.token, msg.has(SignalOption.CUSTODY))

    def _send_pong(self, token: bytes, custody: bool) -> None:
        pong = Message(code=Code.PONG, token=token)
        if custody:
            pong.add(SignalOption.CUSTODY, b"")
        self._out += encode_tcp(pong)

    def _on_release(self, msg: Message) -> None:
        hold_off = msg.opt(SignalOption.HOLD_OFF)
        self._events.append(ReleaseReceived(
            tuple(_diagnostic(v) for v in msg.opts(SignalOption.ALTERNATIVE_ADDRESS)),
            None if hold_off is None else decode_uint(hold_off),
            _diagnostic(msg.payload),
        ))

    def _on_abort(self, msg: Message) -> None:
        bad = msg.opt(SignalOption.BAD_CSM_OPTION)
        self._state = State.CLOSED
        self._drop_deferred_pongs()
        self._events.append(ConnectionAborted(
            _diagnostic(msg.payload) or "aborted by peer", True,
            None if bad is None else decode_uint(bad),
        ))

    # --- output ------------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Bytes to write to the stream now (possibly empty)."""
        if not self._out:
            return b""
        data = bytes(self._out)
        self._out.clear()
        return data

    def next_event(self) -> TcpEvent | None:
        """The next event, or None when there is none."""
        events = self._events
        while events:
            event = events.popleft()
            if isinstance(event, _DeferredPong):
                if self._state is not State.CLOSED:
                    self._send_pong(event.token, True)
                continue
            if isinstance(event, MessageReceived):
                self._pending_messages -= 1
            return event
        return None

    def _flush_deferred_pongs(self) -> None:
        # Markers at the front have nothing left before them: send those Pongs now.
        events = self._events
        while events and isinstance(events[0], _DeferredPong):
            self.next_event()

    def _drop_deferred_pongs(self) -> None:
        self._events = deque(e for e in self._events if not isinstance(e, _DeferredPong))

    def _check_open(self) -> None:
        if self._state is State.CLOSED:
            raise ConnectionClosedError("the connection is closed (RFC 8323 §5.6)")

    def _queue(self, msg: Message) -> None:
        frame = encode_tcp(msg)
        if len(frame) > self._peer_max_message_size:
            raise MessageTooLargeError(len(frame), self._peer_max_message_size)
        self._out += frame

    def send(self, msg: Message) -> None:
        """Queue a request, a response or an Empty message (``mtype`` and ``mid`` unused).

        Raises :class:`MessageTooLargeError` when the frame exceeds the peer's
        Max-Message-Size, :class:`ConnectionClosedError` after an Abort, and
        :class:`LocalProtocolError` for signaling codes (use :meth:`ping`, :meth:`release`,
        :meth:`abort`).
        """
        self._check_open()
        kind = _kind_of(msg.code)
        if kind is not _Kind.MESSAGE and kind is not _Kind.EMPTY:
            raise LocalProtocolError(
                f"send() takes requests, responses and Empty messages, not {code_str(msg.code)}"
            )
        self._queue(msg)

    def ping(self, token: bytes = b"", custody: bool = False) -> None:
        """Send a Ping (RFC 8323 §5.4); the answer is a :class:`PongReceived` with ``token``."""
        self._check_open()
        if len(token) > 8:
            raise LocalProtocolError("token longer than 8 bytes")
        msg = Message(code=Code.PING, token=token)
        if custody:
            msg.add(SignalOption.CUSTODY, b"")  # RFC 8323 §5.4.1
        self._queue(msg)

    def release(self, alternative_addresses: Iterable[str] = (), hold_off: int | None = None,
                diagnostic: str = "") -> None:
        """Ask the peer to close the connection (RFC 8323 §5.5).

        The connection stays open: answer what is outstanding, then close the stream.
        """
        self._check_open()
        msg = Message(code=Code.RELEASE)
        for address in alternative_addresses:
            raw = address.encode("utf-8")
            if not 1 <= len(raw) <= 255:
                raise LocalProtocolError("Alternative-Address must be 1-255 bytes (§5.5)")
            msg.add(SignalOption.ALTERNATIVE_ADDRESS, raw)
        if hold_off is not None:
            if not 0 <= hold_off < 1 << 24:
                raise LocalProtocolError("Hold-Off must fit in 3 bytes (RFC 8323 §5.5)")
            msg.add(SignalOption.HOLD_OFF, hold_off)
        msg.payload = diagnostic.encode("utf-8")
        self._queue(msg)
        self._released = True

    def abort(self, reason: str, bad_csm_option: int | None = None) -> None:
        """Send Abort and close (RFC 8323 §5.6); a :class:`ConnectionAborted` event follows.

        After this nothing more is sent or accepted; write out :meth:`data_to_send` and
        close the stream.
        """
        self._check_open()
        self._abort(reason, bad_csm_option)

    def close(self) -> None:
        """The stream is gone (or about to be closed): stop without sending anything."""
        self._state = State.CLOSED
        self._in.clear()
        self._drop_deferred_pongs()

    def _abort(self, reason: str, bad_csm_option: int | None = None) -> None:
        msg = Message(code=Code.ABORT)
        if bad_csm_option is not None:
            msg.add(SignalOption.BAD_CSM_OPTION, bad_csm_option)
        # RFC 8323 §5.6: a diagnostic payload SHOULD be included; keep the frame within
        # the peer's limit.
        room = max(0, min(_MAX_DIAGNOSTIC, self._peer_max_message_size - 16))
        msg.payload = reason.encode("utf-8")[:room].decode("utf-8", "ignore").encode("utf-8")
        self._out += encode_tcp(msg)
        self._state = State.CLOSED
        self._in.clear()
        self._drop_deferred_pongs()
        self._events.append(ConnectionAborted(reason, False, bad_csm_option))
