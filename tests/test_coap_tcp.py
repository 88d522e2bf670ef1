"""CoAP over TCP framing (RFC 8323 §3.2) and the sans-IO connection (RFC 8323 §3.3, §5)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dotsd.coap.codec import LocalProtocolError, decode_tcp, encode_tcp, tcp_frame_length
from dotsd.coap.message import Message, decode_uint
from dotsd.coap.numbers import Code, SignalOption
from dotsd.coap.tcp import (
    BASE_MAX_MESSAGE_SIZE,
    CoapTcpConnection,
    ConnectionAborted,
    ConnectionClosedError,
    CsmReceived,
    MessageReceived,
    MessageTooLargeError,
    PongReceived,
    ReleaseReceived,
    State,
    TcpEvent,
)

# --- helpers -----------------------------------------------------------------------------------

options_st = st.lists(
    st.tuples(st.integers(0, 65535), st.binary(max_size=300)), max_size=6
)
messages_st = st.builds(
    lambda code, token, opts, payload: Message(0, code, 0, token, opts or None, payload),
    st.integers(0, 255),
    st.binary(max_size=8),
    options_st,
    st.one_of(st.binary(max_size=1500), st.sampled_from([b"x" * n for n in (11, 12, 268, 269)])),
)
chunks_st = st.lists(st.integers(1, 97), min_size=1, max_size=16)


def normalized(msg: Message) -> Message:
    """What decoding returns: options sorted by number (stable, RFC 7252 §5.4.5)."""
    opts = sorted(msg.options, key=lambda o: o[0]) if msg.options else None
    return Message(0, msg.code, 0, msg.token, opts, msg.payload)


def split(data: bytes, sizes: list[int]) -> list[bytes]:
    out: list[bytes] = []
    pos = i = 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        out.append(data[pos:pos + size])
        pos += size
        i += 1
    return out


def drain(conn: CoapTcpConnection) -> list[TcpEvent]:
    events: list[TcpEvent] = []
    for _ in range(10_000):
        event = conn.next_event()
        if event is None:
            return events
        events.append(event)
    raise AssertionError("event queue does not drain")


def pump(a: CoapTcpConnection, b: CoapTcpConnection) -> tuple[list[TcpEvent], list[TcpEvent]]:
    """Exchange bytes until both sides are quiet; return the events of a and b."""
    ev_a: list[TcpEvent] = []
    ev_b: list[TcpEvent] = []
    for _ in range(20):
        da, db = a.data_to_send(), b.data_to_send()
        if not da and not db:
            return ev_a, ev_b
        b.receive_data(da)
        a.receive_data(db)
        ev_a += drain(a)
        ev_b += drain(b)
    raise AssertionError("connections do not settle")


def frames(data: bytes) -> list[Message]:
    """The messages of a stream of whole RFC 8323 frames (what a connection sent)."""
    out: list[Message] = []
    while data:
        total = tcp_frame_length(data, 1 << 20)
        out.append(decode_tcp(data[:total]))
        data = data[total:]
    return out


def opened() -> tuple[CoapTcpConnection, CoapTcpConnection]:
    a, b = CoapTcpConnection(), CoapTcpConnection()
    pump(a, b)
    assert a.state is State.OPEN and b.state is State.OPEN
    return a, b


CSM = encode_tcp(Message(code=Code.CSM))


def aborted_by_us(conn: CoapTcpConnection, data: bytes) -> tuple[ConnectionAborted, Message]:
    """Feed data, expect an Abort from conn; return the event and the Abort sent."""
    conn.data_to_send()
    conn.receive_data(data)
    events = drain(conn)
    assert conn.state is State.CLOSED
    assert isinstance(events[-1], ConnectionAborted)
    assert not events[-1].by_peer
    sent = frames(conn.data_to_send())
    assert [m.code for m in sent] == [Code.ABORT]
    assert sent[0].payload, "RFC 8323 §5.6: Abort SHOULD carry a diagnostic payload"
    return events[-1], sent[0]


# --- framing (RFC 8323 §3.2) ---------------------------------------------------------------------

@settings(max_examples=100, deadline=None)
@given(messages_st)
def test_decode_tcp_single_frame(msg: Message) -> None:
    assert decode_tcp(encode_tcp(msg)) == normalized(msg)


@pytest.mark.parametrize("size", [0, 12, 13, 268, 269, 65804, 65805, 70000])
def test_length_nibble_boundaries(size: int) -> None:
    # RFC 8323 §3.2: Len 0-12 inline, 13/14/15 with 1, 2 or 4 extension bytes.
    msg = Message(0, Code.CONTENT, 0, b"\x01", None, b"p" * (size - 1) if size else b"")
    data = encode_tcp(msg)
    extension = 0 if size < 13 else 1 if size < 269 else 2 if size < 65805 else 4
    assert len(data) == 1 + extension + 1 + 1 + size
    assert decode_tcp(data) == msg


def test_rfc8323_ping_pong_example() -> None:
    # RFC 8323 §5.7, Figures 11 and 12.
    a = CoapTcpConnection()
    a.data_to_send()
    a.receive_data(CSM + bytes.fromhex("01e242"))
    assert a.data_to_send() == bytes.fromhex("01e342")


# --- the connection -----------------------------------------------------------------------------

def test_our_csm_goes_first() -> None:
    assert CoapTcpConnection().state is State.AWAIT_CSM
    assert CoapTcpConnection().data_to_send() == bytes.fromhex("00e1")  # 7.01, no options
    conn = CoapTcpConnection(max_message_size=8192, block_wise=True)
    (csm,) = frames(conn.data_to_send())
    assert csm.code == Code.CSM
    assert decode_uint(csm.opt(SignalOption.MAX_MESSAGE_SIZE) or b"") == 8192
    assert csm.has(SignalOption.BLOCK_WISE_TRANSFER)


def test_csm_negotiation() -> None:
    a = CoapTcpConnection(max_message_size=8192, block_wise=True)
    b = CoapTcpConnection()
    ev_a, ev_b = pump(a, b)
    assert ev_a == [CsmReceived(BASE_MAX_MESSAGE_SIZE, False)]
    assert ev_b == [CsmReceived(8192, True)]
    assert b.peer_max_message_size == 8192 and b.peer_block_wise and b.peer_bert
    assert a.peer_max_message_size == BASE_MAX_MESSAGE_SIZE and not a.peer_bert
    assert a.state is State.OPEN and b.state is State.OPEN


def test_later_csm_is_cumulative() -> None:
    # RFC 8323 §5.3: a CSM without an option does not withdraw an earlier capability.
    a = CoapTcpConnection()
    bw = Message(code=Code.CSM).add(SignalOption.BLOCK_WISE_TRANSFER, b"")
    size = Message(code=Code.CSM).add(SignalOption.MAX_MESSAGE_SIZE, 4000)
    a.receive_data(encode_tcp(bw) + encode_tcp(size))
    assert drain(a) == [CsmReceived(1152, True), CsmReceived(4000, True)]


def test_requests_and_responses_flow_both_ways() -> None:
    a, b = opened()
    a.send(Message(code=Code.GET, token=b"t1").set_path("/.well-known/dots/hb"))
    b.send(Message(code=Code.PUT, token=b"t2", payload=b"x"))
    ev_a, ev_b = pump(a, b)
    assert [type(e) for e in ev_a] == [MessageReceived]
    assert [type(e) for e in ev_b] == [MessageReceived]
    assert isinstance(ev_b[0], MessageReceived) and ev_b[0].message.token == b"t1"
    assert ev_b[0].message.uri_path == (".well-known", "dots", "hb")
    b.send(Message(code=Code.CONTENT, token=b"t1", payload=b"ok"))
    ev_a, _ = pump(a, b)
    assert isinstance(ev_a[0], MessageReceived) and ev_a[0].message.payload == b"ok"


def test_initiator_may_send_before_the_peer_csm() -> None:
    # RFC 8323 §3.3: no need to wait for the acceptor's CSM.
    a = CoapTcpConnection()
    a.send(Message(code=Code.GET, token=b"1"))
    assert [m.code for m in frames(a.data_to_send())] == [Code.CSM, Code.GET]


def test_empty_messages_are_ignored() -> None:
    # RFC 8323 §3.4: Empty (0.00) is a keep-alive, always allowed, always ignored.
    a = CoapTcpConnection()
    a.data_to_send()
    a.receive_data(b"\x00\x00" + CSM + b"\x00\x00" + encode_tcp(Message(code=0, token=b"ab")))
    assert drain(a) == [CsmReceived(1152, False)]
    assert a.data_to_send() == b""
    a.send(Message(code=Code.EMPTY))
    assert a.data_to_send() == b"\x00\x00"


def test_ping_pong() -> None:
    a, b = opened()
    a.ping(b"\x42")
    ev_a, ev_b = pump(a, b)
    assert ev_a == [PongReceived(b"\x42", False)]
    assert ev_b == []  # answered automatically
    a.ping(b"", custody=True)
    ev_a, _ = pump(a, b)
    assert ev_a == [PongReceived(b"", True)]


def test_custody_pong_waits_for_earlier_messages() -> None:
    # RFC 8323 §5.4.1: the Pong with Custody waits until earlier requests were processed.
    a, b = opened()
    a.send(Message(code=Code.GET, token=b"r"))
    a.ping(b"p", custody=True)
    b.receive_data(a.data_to_send())
    assert b.data_to_send() == b""
    event = b.next_event()
    assert isinstance(event, MessageReceived)
    b.send(Message(code=Code.CONTENT, token=b"r"))
    assert b.next_event() is None
    assert [(m.code, m.token) for m in frames(b.data_to_send())] == [
        (Code.CONTENT, b"r"), (Code.PONG, b"p")]


def test_release() -> None:
    a, b = opened()
    a.release(["[2001:db8::1]:4646", "dots.example.net"], hold_off=30, diagnostic="maint")
    assert a.release_sent
    _, ev_b = pump(a, b)
    assert ev_b == [ReleaseReceived(("[2001:db8::1]:4646", "dots.example.net"), 30, "maint")]
    # RFC 8323 §5.5: outstanding responses may still be sent.
    b.send(Message(code=Code.CONTENT, token=b"x"))
    ev_a, _ = pump(a, b)
    assert len(ev_a) == 1 and a.state is State.OPEN and b.state is State.OPEN


def test_release_option_limits() -> None:
    a, _ = opened()
    with pytest.raises(LocalProtocolError):
        a.release(["x" * 256])
    with pytest.raises(LocalProtocolError):
        a.release(hold_off=1 << 24)


def test_abort_by_us_and_by_peer() -> None:
    a, b = opened()
    a.abort("shutting down")
    ev_a, ev_b = pump(a, b)
    assert ev_a == [ConnectionAborted("shutting down", False)]
    assert ev_b == [ConnectionAborted("shutting down", True)]
    for conn in (a, b):
        assert conn.state is State.CLOSED
        with pytest.raises(ConnectionClosedError):
            conn.send(Message(code=Code.GET))
        with pytest.raises(ConnectionClosedError):
            conn.ping()
    # Nothing more is accepted after the Abort.
    b.receive_data(encode_tcp(Message(code=Code.GET)))
    assert drain(b) == [] and b.data_to_send() == b""


def test_first_message_not_csm_aborts() -> None:
    event, abort = aborted_by_us(CoapTcpConnection(), encode_tcp(Message(code=Code.GET)))
    assert "CSM" in event.reason and b"CSM" in abort.payload
    assert abort.opt(SignalOption.BAD_CSM_OPTION) is None


def test_frames_after_an_abort_are_not_processed() -> None:
    conn = CoapTcpConnection()
    abort = encode_tcp(Message(code=Code.ABORT, payload=b"bye"))
    conn.receive_data(CSM + abort + encode_tcp(Message(code=Code.GET)))
    events = drain(conn)
    assert events == [CsmReceived(1152, False), ConnectionAborted("bye", True)]
    assert conn.data_to_send() == CSM  # our own CSM only: an Abort is not answered


def test_abort_before_the_peer_csm() -> None:
    conn = CoapTcpConnection()
    conn.receive_data(encode_tcp(
        Message(code=Code.ABORT).add(SignalOption.BAD_CSM_OPTION, 9)))
    assert drain(conn) == [ConnectionAborted("aborted by peer", True, 9)]


def test_oversized_frame_aborts() -> None:
    big = encode_tcp(Message(code=Code.POST, token=b"1", payload=b"x" * 1200))
    conn = CoapTcpConnection()
    # The size is known from the header: the first 3 bytes are enough to refuse it.
    event, _ = aborted_by_us(conn, CSM + big[:3])
    assert "1152" in event.reason
    conn.receive_data(big[3:])
    assert drain(conn) == []


def test_configured_max_message_size() -> None:
    conn = CoapTcpConnection(max_message_size=8192)
    conn.receive_data(CSM + encode_tcp(Message(code=Code.POST, payload=b"x" * 8000)))
    assert [type(e) for e in drain(conn)] == [CsmReceived, MessageReceived]
    aborted_by_us(conn, encode_tcp(Message(code=Code.POST, payload=b"x" * 8200)))


@pytest.mark.parametrize("junk", [
    bytes([0x09, 0x01]) + b"\x00" * 9,  # TKL 9 is reserved (RFC 8323 §3.2)
    bytes([0x20, 0x01, 0xF0, 0x00]),  # option delta 15 (RFC 7252 §3.1)
    bytes([0x10, 0x45, 0xFF]),  # payload marker with an empty payload (RFC 7252 §3)
    bytes([0x10, 0x45, 0x03]),  # option value runs past the end
    bytes([0x00, 0x20]),  # reserved code class 1
    bytes([0x00, 0xC0]),  # reserved code class 6
])
def test_malformed_frame_aborts(junk: bytes) -> None:
    aborted_by_us(CoapTcpConnection(), CSM + junk)


def test_unknown_critical_csm_option_aborts_with_bad_csm_option() -> None:
    csm = Message(code=Code.CSM).add(9, b"\x01")
    event, abort = aborted_by_us(CoapTcpConnection(), encode_tcp(csm))
    assert event.bad_csm_option == 9
    assert decode_uint(abort.opt(SignalOption.BAD_CSM_OPTION) or b"") == 9
    assert b"9" in abort.payload


def test_bad_max_message_size_value_aborts() -> None:
    csm = Message(code=Code.CSM).add(SignalOption.MAX_MESSAGE_SIZE, b"\x01" * 5)
    event, abort = aborted_by_us(CoapTcpConnection(), encode_tcp(csm))
    assert event.bad_csm_option == SignalOption.MAX_MESSAGE_SIZE
    assert decode_uint(abort.opt(SignalOption.BAD_CSM_OPTION) or b"") == 2


def test_unknown_elective_signaling_options_are_ignored() -> None:
    conn = CoapTcpConnection()
    conn.data_to_send()
    conn.receive_data(encode_tcp(Message(code=Code.CSM).add(10, b"x").add(200, b"")))
    conn.receive_data(encode_tcp(Message(code=Code.PING, token=b"a").add(6, b"")))
    assert drain(conn) == [CsmReceived(1152, False)]
    assert [m.code for m in frames(conn.data_to_send())] == [Code.PONG]


def test_unknown_critical_ping_option_aborts() -> None:
    conn = CoapTcpConnection()
    event, abort = aborted_by_us(conn, CSM + encode_tcp(Message(code=Code.PING).add(7, b"")))
    assert event.bad_csm_option is None and abort.opt(SignalOption.BAD_CSM_OPTION) is None


def test_unassigned_signaling_code_is_ignored() -> None:
    conn = CoapTcpConnection()
    conn.data_to_send()
    conn.receive_data(CSM + encode_tcp(Message(code=(7 << 5) | 9).add(1, b"")))
    assert drain(conn) == [CsmReceived(1152, False)]
    assert conn.state is State.OPEN and conn.data_to_send() == b""


def test_outgoing_message_over_peer_limit_raises() -> None:
    conn = CoapTcpConnection()
    # Before the peer's CSM the base value 1152 applies (RFC 8323 §5.3.1).
    with pytest.raises(MessageTooLargeError) as info:
        conn.send(Message(code=Code.POST, payload=b"x" * 1200))
    assert info.value.limit == 1152 and info.value.size > 1152
    conn.receive_data(encode_tcp(Message(code=Code.CSM).add(SignalOption.MAX_MESSAGE_SIZE, 100)))
    conn.send(Message(code=Code.POST, payload=b"x" * 90))
    with pytest.raises(MessageTooLargeError, match="Max-Message-Size of 100"):
        conn.send(Message(code=Code.POST, payload=b"x" * 100))
    assert conn.state is State.OPEN  # our mistake does not hurt the connection


def test_signaling_through_send_is_refused() -> None:
    conn = CoapTcpConnection()
    for code in (Code.CSM, Code.PING, Code.ABORT):
        with pytest.raises(LocalProtocolError):
            conn.send(Message(code=code))


def test_abort_diagnostic_respects_a_small_peer_limit() -> None:
    conn = CoapTcpConnection()
    conn.receive_data(encode_tcp(Message(code=Code.CSM).add(SignalOption.MAX_MESSAGE_SIZE, 40)))
    conn.data_to_send()
    conn.abort("é" * 200)
    data = conn.data_to_send()
    assert len(data) <= 40
    (abort,) = frames(data)
    abort.payload.decode("utf-8")  # not cut inside a character


def test_close_stops_everything() -> None:
    a, _ = opened()
    a.close()
    assert a.closed
    a.receive_data(encode_tcp(Message(code=Code.PING)))
    assert a.data_to_send() == b"" and drain(a) == []


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), chunks_st)
def test_random_bytes_never_raise(junk: bytes, sizes: list[int]) -> None:
    conn = CoapTcpConnection()
    for chunk in split(CSM + junk, sizes):
        conn.receive_data(chunk)
        drain(conn)
    # Whatever happened, what we sent is well-formed and ends with at most one Abort.
    sent = frames(conn.data_to_send())
    assert sent[0].code == Code.CSM
    assert sum(m.code == Code.ABORT for m in sent) == (1 if conn.closed else 0)
    if conn.closed:
        assert sent[-1].code == Code.ABORT


@settings(max_examples=100, deadline=None)
@given(st.lists(messages_st.filter(lambda m: (m.code >> 5) in (0, 2, 3, 4, 5) and m.code != 0),
                max_size=6), chunks_st)
def test_messages_through_connections(msgs: list[Message], sizes: list[int]) -> None:
    a = CoapTcpConnection(max_message_size=1 << 16)
    b = CoapTcpConnection(max_message_size=1 << 16)
    b.receive_data(a.data_to_send())
    a.receive_data(b.data_to_send())
    drain(a)
    drain(b)
    for m in msgs:
        a.send(m)
    for chunk in split(a.data_to_send(), sizes):
        b.receive_data(chunk)
    got = [e.message for e in drain(b) if isinstance(e, MessageReceived)]
    assert got == [normalized(m) for m in msgs]
