"""The node's short cut for requests answers exactly as its general path does.

The same datagrams (requests of every shape, duplicates, responses, garbage) go to two nodes
that differ only in ``fast_path``; every datagram each sends back, the events its
application sees and the state left behind must be the same.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Hashable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dotsd.coap import codec
from dotsd.coap.endpoint import CoapEndpoint
from dotsd.coap.events import RequestReceived
from dotsd.coap.message import Block, Message
from dotsd.coap.numbers import Code, MessageType, OptionNumber
from dotsd.coap.site import IncomingRequest, Resource, Site
from dotsd.link import PeerInfo, make_peer_info
from dotsd.node import CoapNode


class Echo(Resource):
    """Answers with what it saw, so that any difference in parsing shows in the bytes."""

    observable = True

    def _echo(self, req: IncomingRequest) -> Message:
        msg = req.message
        text = f"{msg.code} {req.rest} {msg.uri_query} {msg.accept} {req.wants_observe}"
        reply = Message(code=Code.CONTENT, payload=text.encode() + msg.payload)
        return reply.add(OptionNumber.MAX_AGE, 7).add(OptionNumber.ETAG, b"e")

    get = post = put = fetch = _echo

    def delete(self, req: IncomingRequest) -> Message:
        return Message(code=Code.DELETED)


class Big(Resource):
    def get(self, req: IncomingRequest) -> Message:
        return Message(code=Code.CONTENT, payload=bytes(range(256)) * 12)  # Block2 (RFC 7959)


class Boom(Resource):
    def get(self, req: IncomingRequest) -> Message:
        raise RuntimeError("handler bug")


class Later(Resource):
    async def get(self, req: IncomingRequest) -> Message:
        await asyncio.sleep(0)
        return Message(code=Code.CONTENT, payload=b"later")


def make_site() -> Site:
    site = Site()
    site.add("/echo", Echo())
    site.add("/p", Echo(), prefix=True)
    site.add("/big", Big())
    site.add("/boom", Boom())
    site.add("/later", Later())
    return site


class CaptureLink:
    def __init__(self, info: PeerInfo) -> None:
        self._info = info
        self.sent: list[bytes] = []

    @property
    def info(self) -> PeerInfo:
        return self._info

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def close(self) -> None:
        pass


PATHS = ["/echo", "/p", "/p/cuid=x/mid=1", "/big", "/boom", "/later", "/nowhere", "/"]
EXTRA = st.sampled_from([
    (OptionNumber.OBSERVE, b""), (OptionNumber.OBSERVE, b"\x01"),
    (OptionNumber.BLOCK2, Block(0, False, 2).encode()),
    (OptionNumber.BLOCK2, Block(1, False, 2).encode()),
    (OptionNumber.BLOCK1, Block(0, True, 0).encode()),
    (OptionNumber.BLOCK1, Block(1, False, 0).encode()),
    (OptionNumber.SIZE1, (1 << 24).to_bytes(4, "big")),
    (OptionNumber.ACCEPT, b"\x3c"), (OptionNumber.CONTENT_FORMAT, b""),
    (OptionNumber.URI_QUERY, b"a=1"), (OptionNumber.URI_QUERY, b"\xff"),
    (OptionNumber.URI_PATH, b"\xc3"), (OptionNumber.PROXY_URI, b"coap://x"),
    (OptionNumber.URI_HOST, b"h"), (65001, b"critical?"), (2048, b"elective"),
])


@st.composite
def datagrams(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 15)) == 0:
        return draw(st.binary(max_size=24))  # garbage, or a message by chance
    msg = Message(draw(st.sampled_from(list(MessageType))),
                  draw(st.sampled_from([Code.GET, Code.GET, Code.POST, Code.PUT, Code.DELETE,
                                        Code.FETCH, 9, 0, Code.CONTENT, 224])),
                  draw(st.integers(0, 6)), draw(st.sampled_from([b"", b"t", b"\x01\x02\x03"])))
    msg.set_path(draw(st.sampled_from(PATHS)))
    for number, value in draw(st.lists(EXTRA, max_size=3)):
        msg.add(number, value)
    msg.payload = draw(st.sampled_from([b"", b"body", b"x" * 1200]))
    return codec.encode(msg)


def state_of(endpoint: CoapEndpoint, peer: Hashable) -> tuple[object, ...]:
    state = endpoint.peer_state(peer)
    assert state is not None
    dedup = [(mid, e.response and codec.encode(e.response)) for mid, e in state.dedup.items()]
    # The next timer relative to now: the two runs read different clocks.
    timer = endpoint.get_timer()
    due = None if timer is None else round(timer - asyncio.get_running_loop().time())
    return (dedup, state.next_mid, sorted(state.observers), endpoint.observer_count(), due)


async def play(steps: list[bytes], fast: bool) -> list[object]:
    node = CoapNode(make_site(), fast_path=fast)
    node.endpoint = CoapEndpoint(rng=random.Random(5))  # the same MIDs on both nodes
    link = CaptureLink(make_peer_info(("192.0.2.1", 5683), "udp", False))
    node.link_up(link)
    removed: list[object] = []
    node.add_observer_listener(lambda *args: removed.append(args))
    seen: list[object] = []
    for data in steps:
        node.data_received(link, data)
        for _ in range(3):
            await asyncio.sleep(0)  # async handlers answer
        seen.append(list(link.sent))
        link.sent.clear()
    seen.append(removed)
    seen.append(state_of(node.endpoint, link))
    await node.close()
    return seen


@given(st.lists(st.one_of(datagrams(), st.integers(0, 7)), min_size=1, max_size=10))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fast_path_answers_like_the_general_path(raw: list[bytes | int]) -> None:
    steps: list[bytes] = []
    for item in raw:  # an int repeats an earlier datagram: duplicates (RFC 7252 §4.5)
        if isinstance(item, int):
            if steps:
                steps.append(steps[item % len(steps)])
        else:
            steps.append(item)
    if not steps:
        return
    fast = asyncio.run(play(steps, fast=True))
    general = asyncio.run(play(steps, fast=False))
    assert fast == general


def test_fast_path_is_taken_for_a_plain_request() -> None:
    """The comparison above means something only if the short cut is really used."""
    endpoint = CoapEndpoint()
    endpoint.add_peer("peer")
    get = Message(MessageType.CON, Code.GET, 1, b"t").set_path("/echo")
    exchange = endpoint.receive_request("peer", codec.encode(get), 0.0)
    assert exchange is not None and exchange.path == ("echo",)
    assert endpoint.next_event() is None and endpoint.get_timer() is None
    # A duplicate, an Observe registration and an unknown peer take the general path.
    assert endpoint.receive_request("peer", codec.encode(get), 0.1) is None
    observe = Message(MessageType.CON, Code.GET, 2, b"u").set_path("/echo").add(
        OptionNumber.OBSERVE, 0)
    assert endpoint.receive_request("peer", codec.encode(observe), 0.1) is None
    event = endpoint.next_event()
    assert isinstance(event, RequestReceived) and event.exchange.wants_observe
    endpoint.respond(event.exchange, Message(code=Code.CONTENT), 0.1)
    assert endpoint.receive_request("other", codec.encode(get), 0.1) is None
    event = endpoint.next_event()
    assert isinstance(event, RequestReceived) and event.exchange.peer == "other"
    endpoint.respond(event.exchange, Message(code=Code.CONTENT), 0.1)
    assert endpoint.get_timer() is None
    # An exchange handed back unanswered gets its empty ACK in time (RFC 7252 §5.2.2).
    get.mid = 3
    later = endpoint.receive_request("peer", codec.encode(get), 1.0)
    assert later is not None
    endpoint.defer(later, 1.0)
    assert endpoint.get_timer() == 1.0 + endpoint.config.separate_ack_delay
