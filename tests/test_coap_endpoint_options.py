"""The request parser of the endpoint and the options it does not take: critical options it
does not implement (RFC 7252 §5.4.1, RFC 9177 §9), option lengths outside RFC 7252 §5.10's
ranges (§5.4.3), Block SZX 7 (RFC 7959 §2.2; BERT over TCP/TLS, RFC 8323 §6)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dotsd.coap import codec
from dotsd.coap.endpoint import CoapEndpoint
from dotsd.coap.events import RequestReceived, ResponseReceived
from dotsd.coap.exchange import EndpointConfig
from dotsd.coap.message import Block, Message
from dotsd.coap.numbers import OPTION_LENGTHS, Code, MessageType, OptionNumber


def request(*options: tuple[int, bytes], code: int = Code.GET,
            payload: bytes = b"") -> Message:
    msg = Message(MessageType.CON, code, 7, b"tk", payload=payload).set_path("/x")
    for number, value in options:
        msg.add(number, value)
    return msg


def answer(msg: Message, reliable: bool = False,
           config: EndpointConfig | None = None) -> tuple[Message | None, Message | None]:
    """What the endpoint does with ``msg`` from a peer: (its answer to the peer, or None;
    the request the application sees, or None)."""
    ep = CoapEndpoint(config or EndpointConfig())
    if reliable:
        ep.add_peer("p", reliable=True)
        ep.receive("p", msg, 0.0)
    else:
        ep.receive_datagram("p", codec.encode(msg), 0.0)
    out = [m for _, m in ep.messages_to_send() if m.code != 0]
    event = ep.next_event()
    seen = event.exchange.request if isinstance(event, RequestReceived) else None
    return (out[0] if out else None), seen


def test_unimplemented_critical_options_are_4_02() -> None:
    """OSCORE (9), Q-Block1 (19), Q-Block2 (31): critical, known by number, not implemented:
    RFC 7252 §5.4.1 (and RFC 9177 §9 for Q-Block) → 4.02, not served without them."""
    for number in (OptionNumber.OSCORE, OptionNumber.Q_BLOCK1, OptionNumber.Q_BLOCK2):
        value = b"" if number == OptionNumber.OSCORE else Block(0, False, 6).encode()
        resp, seen = answer(request((number, value)))
        assert resp is not None and resp.code == Code.BAD_OPTION, number
        assert f"option {int(number)}".encode() in resp.payload and seen is None


def test_uri_path_over_255_bytes_is_4_02() -> None:
    """RFC 7252 §5.10: Uri-Path is 0-255 bytes; longer is treated as unrecognized
    (§5.4.3), and Uri-Path is critical: 4.02, not 4.04."""
    for number in (OptionNumber.URI_PATH, OptionNumber.URI_QUERY):
        resp, seen = answer(request((number, b"a" * 256)))
        assert resp is not None and resp.code == Code.BAD_OPTION, number
        assert b"256 bytes" in resp.payload and seen is None
        _, seen = answer(request((number, b"a" * 255)))
        assert seen is not None


def test_critical_option_of_a_wrong_length_is_4_02() -> None:
    for number, value in ((OptionNumber.IF_MATCH, b"x" * 9),
                          (OptionNumber.URI_HOST, b""),
                          (OptionNumber.IF_NONE_MATCH, b"x"),
                          (OptionNumber.URI_PORT, b"xyz"),
                          (OptionNumber.ACCEPT, b"xyz"),
                          (OptionNumber.BLOCK2, b"abcd"),
                          (OptionNumber.BLOCK1, b"abcd")):
        resp, _ = answer(request((number, value)))
        assert resp is not None and resp.code == Code.BAD_OPTION, number


def test_elective_option_of_a_wrong_length_is_ignored() -> None:
    """RFC 7252 §5.4.3: an elective option outside its length range is ignored, as if
    absent: the request is served, and whoever reads it later does not see it."""
    for number, value in ((OptionNumber.OBSERVE, b"\x00" * 4),
                          (OptionNumber.CONTENT_FORMAT, b"\x00\x00\x3c"),
                          (OptionNumber.ETAG, b""),
                          (OptionNumber.SIZE1, b"\xff" * 5),
                          (OptionNumber.MAX_AGE, b"\x00" * 5)):
        resp, seen = answer(request((number, value), (OptionNumber.ACCEPT, b"\x3c")))
        assert resp is None and seen is not None, number
        assert not seen.has(number) and seen.accept == 60 and seen.uri_path == ("x",)


def test_reserved_szx_7_is_4_00_over_udp() -> None:
    """RFC 7959 §2.2: SZX 7 is reserved and MUST lead to 4.00 in a request."""
    resp, seen = answer(request((OptionNumber.BLOCK2, Block(1, False, 7).encode())))
    assert resp is not None and resp.code == Code.BAD_REQUEST and seen is None
    assert b"Block2 SZX 7" in resp.payload
    resp, seen = answer(request((OptionNumber.BLOCK1, Block(0, True, 7).encode()),
                                code=Code.PUT, payload=b"x" * 2048))
    assert resp is not None and resp.code == Code.BAD_REQUEST and seen is None
    assert b"Block1 SZX 7" in resp.payload


def test_bert_over_tcp() -> None:
    """RFC 8323 §6: over TCP/TLS SZX 7 is BERT. In control usage (Block2 of a request) it
    reads as SZX 6; a BERT Block1 block, which dotsd does not take (it announces no BERT,
    §5.3.2), gets 4.13 with a smaller SZX in its Block1 (RFC 7959 §2.9.3: try that)."""
    resp, seen = answer(request((OptionNumber.BLOCK2, Block(0, False, 7).encode())),
                        reliable=True)
    assert resp is None and seen is not None
    resp, seen = answer(request((OptionNumber.BLOCK1, Block(0, True, 7).encode()),
                                code=Code.PUT, payload=b"x" * 2048), reliable=True)
    assert resp is not None and resp.code == Code.REQUEST_ENTITY_TOO_LARGE and seen is None
    block1 = resp.block1
    assert block1 is not None and block1.szx <= 6 and b"BERT" in resp.payload


def test_bert_block2_is_served_in_non_bert_blocks() -> None:
    ep = CoapEndpoint(EndpointConfig(preferred_szx=6))
    ep.add_peer("p", reliable=True)
    ep.receive("p", request((OptionNumber.BLOCK2, Block(1, False, 7).encode())), 0.0)
    event = ep.next_event()
    assert isinstance(event, RequestReceived)
    assert event.exchange.asked_block2 == Block(1, False, 6)  # the second 1024 bytes
    ep.respond(event.exchange, Message(code=Code.CONTENT, payload=bytes(range(256)) * 12),
               0.0)
    [(_, resp)] = ep.messages_to_send()
    block2 = resp.block2
    assert block2 == Block(1, True, 6) and resp.payload == (bytes(range(256)) * 12)[1024:2048]


@given(st.sampled_from(sorted(OPTION_LENGTHS)), st.integers(0, 1100))
def test_any_option_length_gets_an_answer_per_its_class(number: int, length: int) -> None:
    """Every implemented option at any length: a crash never; outside its range, a critical
    one is 4.02 and an elective one is dropped before the application sees the request."""
    low, high = OPTION_LENGTHS[number]
    value = b"\x01" * length
    resp, seen = answer(request((number, value)))
    if low <= length <= high:
        return  # in range: what the option means decides (proxy, Block1 parts, ...)
    if number & 1:
        assert resp is not None and resp.code == Code.BAD_OPTION and seen is None
    else:
        assert resp is None and seen is not None and not seen.has(number)


def test_client_rejects_a_response_with_an_unrecognized_critical_option() -> None:
    """RFC 7252 §5.4.1: such a response MUST be rejected: a piggybacked one (ACK) or a NON
    silently ignored, a separate CON one with RST (§4.2, §4.3); never taken as the answer."""
    for mtype in (MessageType.ACK, MessageType.CON, MessageType.NON):
        ep = CoapEndpoint()
        ep.send_request("s", Message(code=Code.GET).set_path("/x"), 0.0)
        [(_, sent)] = ep.messages_to_send()
        mid = sent.mid if mtype == MessageType.ACK else 999
        bad = Message(mtype, Code.CONTENT, mid, sent.token, payload=b"v")
        bad.add(OptionNumber.OSCORE, b"")
        ep.receive_datagram("s", codec.encode(bad), 0.1)
        assert ep.next_event() is None, mtype
        out = [(m.mtype, m.mid) for _, m in ep.messages_to_send()]
        assert out == ([(MessageType.RST, 999)] if mtype == MessageType.CON else []), mtype
        good = Message(mtype, Code.CONTENT, mid, sent.token, payload=b"v")
        ep.receive_datagram("s", codec.encode(good), 0.2)  # the same without it: taken
        event = ep.next_event()
        assert isinstance(event, ResponseReceived) and event.response.payload == b"v", mtype
