"""RFC 7252 §3 and RFC 8323 §3.2 codec: round trips, known vectors, malformed input."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dotsd.coap import codec
from dotsd.coap.codec import MessageFormatError
from dotsd.coap.message import Block, Message, decode_uint, encode_uint
from dotsd.coap.numbers import Code, MessageType, OptionNumber

options = st.lists(
    st.tuples(st.integers(min_value=1, max_value=65535), st.binary(max_size=300)), max_size=12
).map(lambda opts: sorted(opts, key=lambda o: o[0]))

messages = st.builds(
    Message,
    mtype=st.sampled_from(list(MessageType)),
    code=st.integers(min_value=1, max_value=255),
    mid=st.integers(min_value=0, max_value=0xFFFF),
    token=st.binary(max_size=8),
    options=options.map(lambda o: o or None),
    payload=st.binary(max_size=2000),
)


@given(messages)
def test_udp_round_trip(msg: Message) -> None:
    assert codec.decode(codec.encode(msg)) == msg


@given(messages)
def test_tcp_round_trip(msg: Message) -> None:
    msg.mtype, msg.mid = 0, 0
    assert codec.decode_tcp(codec.encode_tcp(msg)) == msg


def test_known_vector_rfc7252_figure() -> None:
    # CON GET mid 0x7d34, token 0x71, Uri-Path "temperature" (RFC 7252 Appendix A style).
    msg = Message(MessageType.CON, Code.GET, 0x7D34, b"\x71").add(OptionNumber.URI_PATH,
                                                                "temperature")
    wire = codec.encode(msg)
    assert wire == bytes.fromhex("41017d3471bb") + b"temperature"
    assert codec.decode(wire).uri_path == ("temperature",)


def test_extended_delta_and_length() -> None:
    msg = Message(MessageType.NON, Code.PUT, 1, b"").add(300, b"x" * 400).add(2000, b"")
    wire = codec.encode(msg)
    # delta 300 → nibble 14 (2-byte ext), length 400 → nibble 14.
    assert wire[4] == 0xEE
    assert codec.decode(wire).opts(300) == [b"x" * 400]


@pytest.mark.parametrize("data, reason", [
    (b"\x40\x01", "shorter than the 4-byte header"),
    (b"\x80\x01\x00\x01", "unknown version"),
    (b"\x49\x01\x00\x01" + b"x" * 9, "token length 9-15"),
    (b"\x44\x01\x00\x01ab", "shorter than its token"),
    (b"\x40\x01\x00\x01\xff", "empty payload"),
    (b"\x40\x01\x00\x01\xf1a", "reserved option delta 15"),
    (b"\x40\x01\x00\x01\x1fa", "reserved option length 15"),
    (b"\x40\x01\x00\x01\x15ab", "runs past the end"),
    (b"\x40\x00\x00\x01\x11a", "empty message with options"),
])
def test_malformed(data: bytes, reason: str) -> None:
    with pytest.raises(MessageFormatError, match=reason):
        codec.decode(data)


def test_malformed_keeps_header_for_rst() -> None:
    with pytest.raises(MessageFormatError) as info:
        codec.decode(b"\x40\x01\x12\x34\xf0")
    assert info.value.mid == 0x1234 and info.value.mtype == MessageType.CON


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_uint(value: int) -> None:
    raw = encode_uint(value)
    assert decode_uint(raw) == value
    assert len(raw) == (value.bit_length() + 7) // 8


@given(st.integers(min_value=0, max_value=(1 << 20) - 1), st.booleans(),
       st.integers(min_value=0, max_value=7))
def test_block_round_trip(num: int, more: bool, szx: int) -> None:
    blk = Block(num, more, szx)
    assert Block.decode(blk.encode()) == blk


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_fuzz_random_never_raises_other(data: bytes) -> None:
    for decoder in (codec.decode, codec.decode_tcp):
        with contextlib.suppress(codec.CoapDecodeError):
            decoder(data)


def test_fuzz_mutated_datagrams() -> None:
    rng = random.Random(7)
    base = codec.encode(Message(MessageType.CON, Code.PUT, 99, b"tok").set_path(
        "/.well-known/dots/mitigate/cuid=abc/mid=1").add(OptionNumber.CONTENT_FORMAT, 271)
        .add(OptionNumber.BLOCK2, Block(0, False, 6).encode())).__add__(b"\xff" + b"\xa1" * 40)
    decoded = errors = 0
    for _ in range(20000):
        data = bytearray(base)
        for _ in range(rng.randint(1, 6)):
            op = rng.random()
            pos = rng.randrange(len(data))
            if op < 0.5:
                data[pos] = rng.randrange(256)
            elif op < 0.75:
                del data[pos]
            else:
                data.insert(pos, rng.randrange(256))
        try:
            codec.decode(bytes(data))
            decoded += 1
        except MessageFormatError:
            errors += 1
    assert decoded + errors == 20000
    assert errors > 1000  # the mutations really produce invalid input
