"""Interop with aiocoap, an independent Python CoAP implementation, on loopback.

aiocoap client → dotsd server and dotsd client → aiocoap server, over coap (UDP),
coap+tcp, coaps+tcp (aiocoap's TLS client authenticates the server only) and coaps with a
PSK (aiocoap's tinydtls transport, when its DTLSSocket module is there).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
from collections.abc import AsyncIterator
from typing import Any

import pytest
from support.peers import (
    BIG_BODY,
    COAP,
    COAP_TCP,
    COAPS_PSK,
    COAPS_TCP,
    Creds,
    bounded,
    dotsd_client,
    dotsd_server,
    free_port,
    hostport,
    needs_transport,
    tls_server_context,
)

from dotsd.coap.message import Message
from dotsd.coap.numbers import Code
from dotsd.pki import PkiPaths

aiocoap = pytest.importorskip("aiocoap", reason="aiocoap is not installed (pip install aiocoap)")
from aiocoap import resource as aioresource  # noqa: E402
from aiocoap.credentials import DTLS, CredentialsMap, TLSCert  # noqa: E402

pytestmark = [pytest.mark.interop, pytest.mark.network, pytest.mark.timeout(40)]

HAVE_DTLSSOCKET = importlib.util.find_spec("DTLSSocket") is not None
NO_TINYDTLS = ("aiocoap's DTLS transport (tinydtls) needs the DTLSSocket package, which is "
               "not importable here (pip install DTLSSocket; its build needs autoconf and "
               "automake)")

# What aiocoap calls its transports, per scheme (client side).
CLIENT_TRANSPORT = {COAP: "udp6", COAP_TCP: "tcpclient", COAPS_TCP: "tlsclient",
                    COAPS_PSK: "tinydtls"}
AIO_SCHEMES = [
    pytest.param(COAP, id=COAP),
    pytest.param(COAP_TCP, id=COAP_TCP),
    pytest.param(COAPS_TCP, id=COAPS_TCP),
    pytest.param(COAPS_PSK, id=COAPS_PSK,
                 marks=pytest.mark.skipif(not HAVE_DTLSSOCKET, reason=NO_TINYDTLS)),
]


@pytest.fixture(scope="module")
def creds(pki: PkiPaths, rogue_pki: PkiPaths) -> Creds:
    return Creds(pki, rogue_pki)


def aio_uri(scheme: str, host: str, port: int, path: str) -> str:
    return f"{'coaps' if scheme == COAPS_PSK else scheme}://{hostport(host, port)}{path}"


@contextlib.asynccontextmanager
async def aiocoap_client(scheme: str, creds: Creds, host: str,
                         port: int) -> AsyncIterator[Any]:
    ctx = await aiocoap.Context.create_client_context(transports=[CLIENT_TRANSPORT[scheme]])
    # Credentials are looked up by "scheme://host:port/*".
    if scheme == COAPS_TCP:
        ctx.client_credentials[f"coaps+tcp://{hostport(host, port)}/*"] = TLSCert(
            certfile=str(creds.pki.ca_cert))
    elif scheme == COAPS_PSK:
        ctx.client_credentials[f"coaps://{hostport(host, port)}/*"] = DTLS(
            psk=creds.psk_key, client_identity=creds.psk_identity)
    try:
        yield ctx
    finally:
        await asyncio.wait_for(ctx.shutdown(), 5)


async def aio_request(ctx: Any, code: Any, uri: str, payload: bytes = b"") -> Any:
    msg = aiocoap.Message(code=code, uri=uri, payload=payload)
    return await bounded(ctx.request(msg).response, 10)


async def wait_no_observer(endpoint: Any, bump: Any = None, timeout: float = 5) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while endpoint.observer_count("/counter") and loop.time() < deadline:
        if bump is not None:
            bump(confirmable=True)
        await asyncio.sleep(0.1)
    assert endpoint.observer_count("/counter") == 0


# --- aiocoap client → dotsd server -------------------------------------------------------------

@pytest.mark.parametrize("scheme", AIO_SCHEMES)
async def test_aiocoap_client_to_dotsd(scheme: str, creds: Creds) -> None:
    host = "127.0.0.1"
    async with dotsd_server(creds, host=host) as server:
        # aiocoap's TLS client has no client certificate: TLS authenticates the server only.
        port = await server.start(scheme, host, require_client_cert=False)

        def uri(path: str) -> str:
            return aio_uri(scheme, host, port, path)

        async with aiocoap_client(scheme, creds, host, port) as ctx:
            resp = await aio_request(ctx, aiocoap.GET, uri("/hello"))
            assert resp.code == aiocoap.CONTENT and resp.payload == b"hello from dotsd"
            resp = await aio_request(ctx, aiocoap.PUT, uri("/store"), b"from aiocoap")
            assert resp.code == aiocoap.CREATED and server.store.puts == [b"from aiocoap"]
            resp = await aio_request(ctx, aiocoap.GET, uri("/store"))
            assert resp.payload == b"from aiocoap"
            resp = await aio_request(ctx, aiocoap.DELETE, uri("/store"))
            assert resp.code == aiocoap.DELETED and server.store.value is None
            resp = await aio_request(ctx, aiocoap.GET, uri("/nope"))
            assert resp.code == aiocoap.NOT_FOUND

            # Block2 and Block1 (aiocoap reassembles and splits on its own).
            resp = await aio_request(ctx, aiocoap.GET, uri("/big"))
            assert resp.code == aiocoap.CONTENT and resp.payload == BIG_BODY
            resp = await aio_request(ctx, aiocoap.PUT, uri("/store"), BIG_BODY[::-1])
            assert resp.code == aiocoap.CREATED, resp
            assert server.store.puts[-1] == BIG_BODY[::-1]

            # Observe: the registration response, then one notification per change.
            req = ctx.request(aiocoap.Message(code=aiocoap.GET, uri=uri("/counter"),
                                              observe=0))
            first = await bounded(req.response)
            assert first.payload == b"count=0" and first.opt.observe is not None
            seen = []
            notifications = aiter(req.observation)
            for i in range(4):
                assert server.bump(confirmable=i % 2 == 1) == 1
                note = await bounded(anext(notifications), 5)
                seen.append(note.payload)
            assert seen == [b"count=1", b"count=2", b"count=3", b"count=4"]
            req.observation.cancel()
            if scheme in (COAP, COAPS_PSK):
                # On UDP the next notification is rejected with RST (RFC 7641 §3.6). On TCP
                # there is none: the observation ends with the connection (see below).
                await wait_no_observer(server.node.endpoint, bump=server.bump)


async def test_release_from_aiocoap_closes_the_connection(creds: Creds) -> None:
    async with dotsd_server(creds, COAP_TCP) as server:
        port = server.ports[COAP_TCP]
        async with aiocoap_client(COAP_TCP, creds, "127.0.0.1", port) as ctx:
            req = ctx.request(aiocoap.Message(
                code=aiocoap.GET, uri=aio_uri(COAP_TCP, "127.0.0.1", port, "/counter"),
                observe=0))
            assert (await bounded(req.response)).payload == b"count=0"
            assert len(server.node.links) == 1
        # ctx.shutdown() sent Release; RFC 8323 §5.5: "A peer will normally respond to a
        # Release message by closing the TCP/TLS connection".
        await wait_no_observer(server.node.endpoint, timeout=1)
        assert not server.node.links


# --- dotsd client → aiocoap server -------------------------------------------------------------

class AioText(aioresource.Resource):  # type: ignore[misc]
    def __init__(self, body: bytes) -> None:
        super().__init__()
        self.body = body

    async def render_get(self, request: Any) -> Any:
        return aiocoap.Message(payload=self.body)


class AioStore(aioresource.Resource):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.value: bytes | None = None

    async def render_get(self, request: Any) -> Any:
        if self.value is None:
            return aiocoap.Message(code=aiocoap.NOT_FOUND)
        return aiocoap.Message(payload=self.value)

    async def render_put(self, request: Any) -> Any:
        created = self.value is None
        self.value = request.payload
        return aiocoap.Message(code=aiocoap.CREATED if created else aiocoap.CHANGED)

    async def render_delete(self, request: Any) -> Any:
        self.value = None
        return aiocoap.Message(code=aiocoap.DELETED)


class AioCounter(aioresource.ObservableResource):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.value = 0

    def bump(self) -> None:
        self.value += 1
        self.updated_state()

    async def render_get(self, request: Any) -> Any:
        return aiocoap.Message(payload=b"n=%d" % self.value)


@contextlib.asynccontextmanager
async def aiocoap_server(creds: Creds, host: str) -> AsyncIterator[tuple[int, Any, Any]]:
    """aiocoap serving UDP and TCP on P, TLS (and DTLS) on P+1; yields (P, counter, store)."""
    site = aioresource.Site()
    counter, store = AioCounter(), AioStore()
    site.add_resource(["hello"], AioText(b"hello from aiocoap"))
    site.add_resource(["big"], AioText(BIG_BODY))
    site.add_resource(["store"], store)
    site.add_resource(["counter"], counter)
    port = free_port(host, count=2)
    transports = ["udp6", "tcpserver", "tlsserver"]
    server_credentials = CredentialsMap()
    if HAVE_DTLSSOCKET:
        transports.append("tinydtls_server")  # PSK only, on P+1
        server_credentials[":dotsd"] = DTLS(psk=creds.psk_key,
                                            client_identity=creds.psk_identity)
    ctx = await aiocoap.Context.create_server_context(
        site, bind=(host, port), transports=transports, _ssl_context=tls_server_context(creds),
        server_credentials=server_credentials)
    try:
        yield port, counter, store
    finally:
        await asyncio.wait_for(ctx.shutdown(), 5)


@pytest.mark.parametrize("scheme", AIO_SCHEMES)
async def test_dotsd_client_to_aiocoap(scheme: str, creds: Creds) -> None:
    needs_transport(scheme)
    host = "127.0.0.1"
    async with aiocoap_server(creds, host) as (port, counter, store), \
            dotsd_client(creds) as dc:
        link = await dc.connect(scheme, host, port + 1 if scheme in (COAPS_TCP, COAPS_PSK)
                                else port)
        resp = await dc.request(link, Code.GET, "/hello")
        assert (resp.code, resp.payload) == (Code.CONTENT, b"hello from aiocoap"), resp
        resp = await dc.request(link, Code.PUT, "/store", b"from dotsd")
        assert resp.code == Code.CREATED and store.value == b"from dotsd", resp
        resp = await dc.request(link, Code.GET, "/store")
        assert resp.payload == b"from dotsd", resp
        resp = await dc.request(link, Code.DELETE, "/store")
        assert resp.code == Code.DELETED and store.value is None, resp
        resp = await dc.request(link, Code.GET, "/store")
        assert resp.code == Code.NOT_FOUND, resp

        resp = await dc.request(link, Code.GET, "/big")
        assert resp.code == Code.CONTENT and resp.payload == BIG_BODY, resp
        resp = await dc.request(link, Code.PUT, "/store", BIG_BODY)
        assert resp.code == Code.CREATED and store.value == BIG_BODY, resp

        obs = dc.node.observe(link, Message(code=Code.GET).set_path("/counter"), timeout=5)
        first = await obs.next(5)
        assert first.payload == b"n=0" and first.observe is not None, first
        for i in range(1, 4):
            counter.bump()
            note = await obs.next(5)
            assert note.payload == b"n=%d" % i and note.observe is not None, note
        obs.cancel()
        await asyncio.sleep(0.2)
        resp = await dc.request(link, Code.GET, "/hello")
        assert resp.code == Code.CONTENT

