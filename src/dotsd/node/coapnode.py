"""The asyncio CoAP node: runs the sans-IO endpoint over the links of any transport.

One node can hold links of every kind at once (UDP, DTLS, TCP, TLS), dialled or accepted:
it is a LinkHandler for the transports and offers requests, observations and notifications
to the application. Per datagram it does: feed the endpoint, answer requests from the
site, send what is due, re-arm one timer.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import Any

from dotsd.coap import codec
from dotsd.coap.endpoint import CoapEndpoint
from dotsd.coap.events import (
    MessageRejected,
    ObserverRemoved,
    RequestFailed,
    RequestReceived,
    ResponseReceived,
)
from dotsd.coap.exchange import ClientRequest, EndpointConfig, Exchange, RepeatPolicy
from dotsd.coap.message import Message, error_response
from dotsd.coap.numbers import Code, code_str, is_request, is_success
from dotsd.coap.params import TransmissionParameters
from dotsd.coap.site import IncomingRequest, Site
from dotsd.coap.tcp import (
    CoapTcpConnection,
    ConnectionAborted,
    CsmReceived,
    MessageReceived,
    ReleaseReceived,
)
from dotsd.errors import PeerError
from dotsd.link import Link
from dotsd.ratelog import RateLimitedLog
from dotsd.transport.base import loop_clock

log = logging.getLogger("dotsd.coap")
_REJECT_LOG_RATE = 10


class RequestError(PeerError):
    """A request of ours got no response (timeout, reset, link lost, cancelled); ``reset``:
    the peer answered with RST."""

    def __init__(self, reason: str, *, reset: bool = False) -> None:
        super().__init__(reason)
        self.reset = reset


class Observation:
    """A client-side observation: iterate for notifications; ``cancel()`` deregisters."""

    def __init__(self, node: CoapNode, request: ClientRequest) -> None:
        self._node = node
        self.request = request
        self._queue: asyncio.Queue[Message | RequestError] = asyncio.Queue()
        self.closed = False

    def _push(self, item: Message | RequestError) -> None:
        self._queue.put_nowait(item)

    async def next(self, timeout: float | None = None) -> Message:
        """The next notification (the first is the registration response)."""
        item = await asyncio.wait_for(self._queue.get(), timeout)
        if isinstance(item, RequestError):
            self.closed = True
            raise item
        return item

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[Message]:
        while True:
            try:
                yield await self.next()
            except RequestError:
                return

    def cancel(self, deregister: bool = True) -> None:
        if not self.closed:
            self.closed = True
            self._node._cancel(self.request, deregister)


class CoapNode:
    """A LinkHandler (see transport/base.py) that speaks CoAP on every link."""

    def __init__(self, site: Site | None = None, config: EndpointConfig | None = None,
                 params: TransmissionParameters | None = None,
                 max_message_size: int = 1152, fast_path: bool = True) -> None:
        self.site = site or Site()
        # A new request in a datagram is answered without going through events
        # (CoapEndpoint.receive_request); False keeps every datagram on the general path.
        self.fast_path = fast_path
        self.endpoint = CoapEndpoint(config, params)
        self.max_message_size = max_message_size
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clock: Callable[[], float] | None = None  # loop.time, per datagram
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._streams: dict[Link, CoapTcpConnection] = {}
        self._waiters: dict[ClientRequest, asyncio.Future[Message] | Observation] = {}
        self.links: set[Link] = set()
        self._tasks: set[asyncio.Future[None]] = set()
        self._log_malformed = RateLimitedLog(log, "malformed datagrams", _REJECT_LOG_RATE)
        # Listeners, each told in turn (several clients or agents may share one node).
        self._up_listeners: list[Callable[[Link], None]] = []
        self._down_listeners: list[Callable[[Link, str | None], None]] = []
        self._observer_listeners: list[Callable[[Hashable, Hashable, str], None]] = []

    def add_link_listener(self, *, up: Callable[[Link], None] | None = None,
                          down: Callable[[Link, str | None], None] | None = None) -> None:
        """Be told of every link that comes up (``up``) or goes down (``down``, with the
        reason)."""
        if up is not None:
            self._up_listeners.append(up)
        if down is not None:
            self._down_listeners.append(down)

    def remove_link_listener(self, *, up: Callable[[Link], None] | None = None,
                             down: Callable[[Link, str | None], None] | None = None) -> None:
        if up is not None and up in self._up_listeners:
            self._up_listeners.remove(up)
        if down is not None and down in self._down_listeners:
            self._down_listeners.remove(down)

    def add_observer_listener(self, removed: Callable[[Hashable, Hashable, str], None]
                              ) -> None:
        """Be told of every observer the endpoint removed: (peer, key, reason)."""
        self._observer_listeners.append(removed)

    def _tell(self, listeners: list[Callable[..., None]], *args: Any) -> None:
        for listener in list(listeners):
            try:
                listener(*args)
            except Exception:  # one listener's bug must not break the node or the others
                log.exception("node listener failed")

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    # ----------------------------------------------------------------- LinkHandler
    def link_up(self, link: Link) -> None:
        self.links.add(link)
        reliable = link.info.reliable
        self.endpoint.add_peer(link, reliable=reliable)
        if reliable:
            conn = CoapTcpConnection(max_message_size=self.max_message_size)
            self._streams[link] = conn
            self._flush_stream(link, conn)
        if self._up_listeners:
            self._tell(self._up_listeners, link)

    def data_received(self, link: Link, data: bytes) -> None:
        clock = self._clock
        if clock is None:
            clock = self._clock = loop_clock(self.loop)
        now = clock()
        conn = self._streams.get(link)
        if conn is None:
            if self.fast_path:
                ep = self.endpoint
                exchange = ep.receive_request(link, data, now)
                if exchange is not None:
                    self._dispatch(exchange, now)
                    if not exchange.responded:
                        ep.defer(exchange, now)  # answered later (async handler)
                    elif not ep.has_events:
                        # The usual case: the response and nothing else. No timer changed:
                        # the handler's own calls on this node pumped for themselves.
                        for peer, msg in ep.messages_to_send():
                            self._send(peer, msg)  # type: ignore[arg-type]
                        return
            else:
                self.endpoint.receive_datagram(link, data, now)
        else:
            conn.receive_data(data)
            while (ev := conn.next_event()) is not None:
                if isinstance(ev, MessageReceived):
                    self.endpoint.receive(link, ev.message, now)
                elif isinstance(ev, CsmReceived):
                    # Bodies that do not fit the peer's Max-Message-Size go block-wise.
                    self.endpoint.set_max_payload(link, ev.max_message_size - 128)
                elif isinstance(ev, ReleaseReceived):
                    # RFC 8323 §5.5: the peer asks for an orderly close; we close.
                    log.info("coap-tcp release peer=%s alternative=%s hold_off=%s",
                             link.info.address, ",".join(ev.alternative_address),
                             ev.hold_off)
                    self._flush_stream(link, conn)
                    link.close()
                    break
                elif isinstance(ev, ConnectionAborted):
                    log.info("coap-tcp abort peer=%s reason=%r by_peer=%s",
                             link.info.address, ev.reason, ev.by_peer)
                    self._flush_stream(link, conn)
                    link.close()
            self._flush_stream(link, conn)
        self._pump()

    def link_down(self, link: Link, reason: str | None) -> None:
        self.links.discard(link)
        self._streams.pop(link, None)
        self.endpoint.remove_peer(link, f"link lost: {reason or 'closed'}")
        self._pump()
        self._tell(self._down_listeners, link, reason)

    # ----------------------------------------------------------------- client API
    def set_params(self, link: Link, params: TransmissionParameters) -> None:
        self.endpoint.set_params(link, params)

    def start_request(self, link: Link, msg: Message, *, confirmable: bool = True,
                      timeout: float | None = None,
                      repeat: RepeatPolicy | None = None) -> asyncio.Future[Message]:
        """Send a request; the future resolves with the response or RequestError."""
        req = self.endpoint.send_request(link, msg, self.loop.time(), confirmable=confirmable,
                                         timeout=timeout, repeat=repeat)
        fut: asyncio.Future[Message] = self.loop.create_future()
        self._waiters[req] = fut
        self._pump()
        return fut

    async def request(self, link: Link, msg: Message, *, confirmable: bool = True,
                      timeout: float | None = None,
                      repeat: RepeatPolicy | None = None) -> Message:
        return await self.start_request(link, msg, confirmable=confirmable, timeout=timeout,
                                        repeat=repeat)

    def observe(self, link: Link, msg: Message, *, confirmable: bool = True,
                timeout: float | None = None) -> Observation:
        """Register an observation (msg is a GET; Observe=0 is added)."""
        msg.set(6, 0)
        req = self.endpoint.send_request(link, msg, self.loop.time(), confirmable=confirmable,
                                         timeout=timeout)
        obs = Observation(self, req)
        self._waiters[req] = obs
        self._pump()
        return obs

    def _cancel(self, req: ClientRequest, deregister: bool) -> None:
        self._waiters.pop(req, None)
        self.endpoint.cancel(req, self.loop.time(), deregister)
        self._pump()

    # ----------------------------------------------------------------- server API
    def notify(self, key: Hashable, make: Callable[[Hashable, Message], Message | None],
               confirmable: bool = False) -> int:
        """Notify every observer of ``key``; see CoapEndpoint.notify."""
        sent = self.endpoint.notify(key, make, self.loop.time(), confirmable)
        self._pump()
        return sent

    def respond(self, exchange: Exchange, response: Message,
                observe_key: Hashable | None = None) -> None:
        self.endpoint.respond(exchange, response, self.loop.time(), observe_key)
        self._pump()

    # ----------------------------------------------------------------- the pump
    def _pump(self) -> None:
        """Dispatch events, send what is due, re-arm the timer."""
        ep = self.endpoint
        for _ in range(10000):  # bounded: handlers may produce more events and output
            ev = ep.next_event()
            while ev is not None:
                if isinstance(ev, RequestReceived):
                    self._dispatch(ev.exchange, self.loop.time())
                elif isinstance(ev, ResponseReceived):
                    self._resolve(ev.request, ev.response)
                elif isinstance(ev, RequestFailed):
                    self._reject(ev.request, ev.reason, reset=ev.reset)
                elif isinstance(ev, ObserverRemoved) and self._observer_listeners:
                    self._tell(self._observer_listeners, ev.peer, ev.key, ev.reason)
                elif isinstance(ev, MessageRejected):
                    self._log_rejected(ev)
                ev = ep.next_event()
            for link, msg in ep.messages_to_send():
                self._send(link, msg)  # type: ignore[arg-type]
            if not ep.has_events:
                break
        self._arm_timer()

    def _send(self, link: Link, msg: Message) -> None:
        conn = self._streams.get(link)
        try:
            if conn is None:
                link.send(codec.encode(msg))
            else:
                conn.send(msg)
                self._flush_stream(link, conn)
        except Exception as exc:  # a send failure must not break the node
            log.warning("send failed peer=%s error=%r", link.info.address, exc)
            if is_request(msg.code):
                self.endpoint.fail_token(link, msg.token, f"send failed: {exc}")

    def _log_rejected(self, ev: MessageRejected) -> None:
        """Log malformed datagrams, at most ``_REJECT_LOG_RATE`` lines a second."""
        link: Link = ev.peer  # type: ignore[assignment]
        self._log_malformed(self.loop.time(), "malformed datagram peer=%s reason=%r",
                            link.info.address, ev.reason)

    @staticmethod
    def _flush_stream(link: Link, conn: CoapTcpConnection) -> None:
        data = conn.data_to_send()
        if data:
            link.send(data)

    def _arm_timer(self) -> None:
        when = self.endpoint.get_timer()
        if when is None:
            return
        if self._timer is not None and self._timer_at is not None and self._timer_at <= when:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.endpoint.handle_timer(self.loop.time())
        self._pump()

    # ----------------------------------------------------------------- dispatch
    def _dispatch(self, exchange: Exchange, now: float) -> None:
        link: Link = exchange.peer  # type: ignore[assignment]
        msg = exchange.request
        route = self.site.resolve(exchange.path)
        if route is None:
            self.endpoint.respond(exchange, error_response(
                Code.NOT_FOUND, f"no resource at {msg.path_str}"), now)
            return
        resource, rest = route
        request = IncomingRequest(msg, link, exchange, rest)
        try:
            reply = resource.handle(request)
        except Exception as exc:
            log.exception("handler failed path=%s", msg.path_str)
            self.endpoint.respond(exchange, error_response(
                Code.INTERNAL_SERVER_ERROR, f"internal error: {type(exc).__name__}"), now)
            return
        if reply is None:  # silently ignored (an empty ACK for a CON request)
            self.endpoint.ignore(exchange, now)
            return
        if not isinstance(reply, Message) and inspect.isawaitable(reply):
            task = asyncio.ensure_future(self._finish_async(resource, request, reply))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        if exchange.observe is None:  # no registration to consider (RFC 7641 §4.1)
            self.endpoint.respond(exchange, reply, now)
        else:
            self._answer(resource, request, reply, now)

    async def _finish_async(self, resource: Any, request: IncomingRequest,
                            reply: Awaitable[Message | None]) -> None:
        try:
            response = await reply
        except Exception as exc:
            log.exception("handler failed path=%s", request.message.path_str)
            response = error_response(Code.INTERNAL_SERVER_ERROR,
                                      f"internal error: {type(exc).__name__}")
        if request.exchange.responded:
            return
        if response is None:
            self.endpoint.ignore(request.exchange, self.loop.time())
        else:
            self._answer(resource, request, response, self.loop.time())
        self._pump()

    def _answer(self, resource: Any, request: IncomingRequest, response: Message,
                now: float) -> None:
        key = None
        if resource.observable and request.exchange.wants_observe and \
                is_success(response.code):  # only a 2.xx registers (RFC 7641 §4.1)
            try:
                key = resource.observe_key(request)
            except Exception:
                log.exception("observe_key failed path=%s", request.message.path_str)
                response = error_response(Code.INTERNAL_SERVER_ERROR,
                                          "internal error: observe registration")
        self.endpoint.respond(request.exchange, response, now, key)

    def _resolve(self, req: ClientRequest, response: Message) -> None:
        waiter = self._waiters.get(req)
        if waiter is None:
            return
        if isinstance(waiter, Observation):
            waiter._push(response)
            if req.done:
                self._waiters.pop(req, None)
                waiter._push(RequestError(f"observation ended with {code_str(response.code)}"))
            return
        self._waiters.pop(req, None)
        if not waiter.done():
            waiter.set_result(response)

    def _reject(self, req: ClientRequest, reason: str, *, reset: bool = False) -> None:
        waiter = self._waiters.pop(req, None)
        if waiter is None:
            return
        if isinstance(waiter, Observation):
            waiter._push(RequestError(reason, reset=reset))
        elif not waiter.done():
            waiter.set_exception(RequestError(reason, reset=reset))

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for link in list(self.links):
            link.close()
