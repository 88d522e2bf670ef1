"""The asyncio CoAP node over in-memory datagram and stream links."""

from __future__ import annotations

import asyncio

import pytest
from support.memlinks import link_pair
from support.waiting import wait_until

from dotsd.coap.message import Message
from dotsd.coap.numbers import Code, MessageType
from dotsd.coap.site import IncomingRequest, Resource, Site
from dotsd.node import CoapNode, RequestError


class Counter(Resource):
    observable = True

    def __init__(self) -> None:
        self.value = 0

    def get(self, req: IncomingRequest) -> Message:
        return Message(code=Code.CONTENT, payload=str(self.value).encode())

    def put(self, req: IncomingRequest) -> Message:
        self.value = int(req.message.payload)
        return Message(code=Code.CHANGED)


class Slow(Resource):
    async def get(self, req: IncomingRequest) -> Message:
        await asyncio.sleep(0.7)
        return Message(code=Code.CONTENT, payload=b"slow")


class Boom(Resource):
    def get(self, req: IncomingRequest) -> Message:
        raise RuntimeError("bug")


def make_site() -> tuple[Site, Counter]:
    site = Site()
    counter = Counter()
    site.add("/counter", counter)
    site.add("/slow", Slow())
    site.add("/boom", Boom())
    return site, counter


@pytest.fixture(params=["udp", "tcp"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_request_response_both_roles(transport: str) -> None:
    site_a, _ = make_site()
    site_b, counter_b = make_site()
    a, b = CoapNode(site_a), CoapNode(site_b)
    la, lb = link_pair(a, b, transport)
    # a (dialler) asks b, and b (acceptor) asks a on the same link.
    resp = await a.request(la, Message(code=Code.PUT, payload=b"7").set_path("/counter"))
    assert resp.code == Code.CHANGED and counter_b.value == 7
    resp = await b.request(lb, Message(code=Code.GET).set_path("/counter"), timeout=5)
    assert resp.payload == b"0"
    assert (await a.request(la, Message(code=Code.GET).set_path("/nope"))).code == Code.NOT_FOUND
    boom = await a.request(la, Message(code=Code.GET).set_path("/boom"))
    assert boom.code == Code.INTERNAL_SERVER_ERROR
    put = await a.request(la, Message(code=Code.POST).set_path("/counter"))
    assert put.code == Code.METHOD_NOT_ALLOWED and put.payload


async def test_async_handler_separate_response() -> None:
    site, _ = make_site()
    a, b = CoapNode(Site()), CoapNode(site)
    la, _lb = link_pair(a, b, "udp")
    resp = await asyncio.wait_for(a.request(la, Message(code=Code.GET).set_path("/slow")), 5)
    assert resp.payload == b"slow" and resp.mtype == MessageType.CON


async def test_observe(transport: str) -> None:
    site, counter = make_site()
    a, b = CoapNode(Site()), CoapNode(site)
    la, _ = link_pair(a, b, transport)
    obs = a.observe(la, Message(code=Code.GET).set_path("/counter"))
    assert (await obs.next(5)).payload == b"0"
    for i in (1, 2, 3):
        counter.value = i
        b.notify("/counter", lambda peer, req: Message(code=Code.CONTENT,
                                                       payload=str(counter.value).encode()))
        assert (await obs.next(5)).payload == str(i).encode()
    obs.cancel()
    await wait_until(lambda: b.endpoint.observer_count("/counter") == 0,
                     what="the observer deregistered")


async def test_link_loss_fails_pending_request() -> None:
    site, _ = make_site()
    a, b = CoapNode(Site()), CoapNode(site)
    la, _ = link_pair(a, b, "udp")
    fut = a.start_request(la, Message(code=Code.GET).set_path("/slow"))
    await asyncio.sleep(0.05)
    la.close()
    with pytest.raises(RequestError, match="link lost"):
        await asyncio.wait_for(fut, 5)


async def test_timeout_when_peer_is_silent() -> None:
    a, b = CoapNode(Site()), CoapNode(Site())
    la, _ = link_pair(a, b, "udp")
    la.drop_next = 100
    with pytest.raises(RequestError, match="timeout"):
        await a.request(la, Message(code=Code.GET).set_path("/x"), confirmable=False,
                        timeout=0.3)


class BadKey(Resource):
    observable = True

    def observe_key(self, request: IncomingRequest) -> str:
        raise RuntimeError("bug")

    def get(self, req: IncomingRequest) -> Message:
        return Message(code=Code.CONTENT, payload=b"x")


async def test_failing_observe_key_still_answers() -> None:
    site = Site()
    site.add("/bad", BadKey())
    a, b = CoapNode(Site()), CoapNode(site)
    la, _ = link_pair(a, b, "udp")
    obs = a.observe(la, Message(code=Code.GET).set_path("/bad"), timeout=5)
    resp = await obs.next(5)
    assert resp.code == Code.INTERNAL_SERVER_ERROR
    assert b.endpoint.observer_count() == 0
