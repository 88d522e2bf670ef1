"""Resource routing by Uri-Path (RFC 7252 §6.5), independent of any transport.

A resource answers one method at a time; a handler returns the response message, or an
awaitable of it for work that must wait (the node then answers separately). Routes match
whole path segments; a prefix route also takes the segments below it (DOTS puts the cuid and
mid in trailing segments: ``/.well-known/dots/mitigate/cuid=…/mid=…``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dotsd.coap.exchange import Exchange
from dotsd.coap.message import Message, error_response
from dotsd.coap.numbers import Code

if TYPE_CHECKING:
    from dotsd.link import Link, PeerInfo

Reply = Message | None | Awaitable[Message | None]
"""The response, or None to answer nothing (the request is silently ignored)."""


@dataclass(slots=True)
class IncomingRequest:
    """What a handler sees: the request, the link it came on and the path below the route."""

    message: Message
    link: Link
    exchange: Exchange
    rest: tuple[str, ...]

    @property
    def peer(self) -> PeerInfo:
        return self.link.info

    @property
    def wants_observe(self) -> bool:
        return self.exchange.wants_observe


class Resource:
    """Subclass and define ``get``/``put``/``post``/``delete``/``fetch``/``patch``/``ipatch``.

    A resource that sets ``observable`` registers observers of ``observe_key(request)`` on
    every successful GET with Observe=0 (RFC 7641 §4.1).
    """

    observable: bool = False

    def observe_key(self, request: IncomingRequest) -> Hashable:
        return request.message.path_str

    def handle(self, request: IncomingRequest) -> Reply:
        method = _METHOD_NAMES.get(request.message.code)
        handler: Callable[[IncomingRequest], Reply] | None = (
            getattr(self, method, None) if method else None)
        if handler is None:
            return error_response(Code.METHOD_NOT_ALLOWED,
                                  f"method not allowed on {request.message.path_str}")
        return handler(request)


_METHOD_NAMES: dict[int, str] = {
    Code.GET: "get", Code.POST: "post", Code.PUT: "put", Code.DELETE: "delete",
    Code.FETCH: "fetch", Code.PATCH: "patch", Code.IPATCH: "ipatch",
}


class Site:
    """Uri-Path → resource. Exact routes win over prefix routes; longer prefixes win."""

    def __init__(self) -> None:
        # Exact routes map to what resolve returns, built once: (resource, no rest).
        self._exact: dict[tuple[str, ...], tuple[Resource, tuple[str, ...]]] = {}
        self._prefix: list[tuple[tuple[str, ...], Resource]] = []

    @staticmethod
    def _split(path: str) -> tuple[str, ...]:
        return tuple(seg for seg in path.split("/") if seg)

    def add(self, path: str, resource: Resource, prefix: bool = False) -> None:
        key = self._split(path)
        if prefix:
            self._prefix.append((key, resource))
            self._prefix.sort(key=lambda item: -len(item[0]))
        else:
            self._exact[key] = (resource, ())

    def resolve(self, path: tuple[str, ...]) -> tuple[Resource, tuple[str, ...]] | None:
        route = self._exact.get(path)
        if route is not None:
            return route
        for key, res in self._prefix:
            if path[:len(key)] == key:
                return res, path[len(key):]
        return None
