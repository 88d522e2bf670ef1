"""The DOTS signal channel client (RFC 9132): what a network under attack runs, on a
:class:`~dotsd.node.CoapNode` with one :class:`~dotsd.link.Link` to its DOTS server.

    client = SignalClient.for_certificate(cert, connect=dial)
    await client.start()                       # dials, starts the heartbeat task
    reply = await client.mitigate({"target-prefix": ["2001:db8:6401::1/128"],
                                   "lifetime": 3600})
    async with contextlib.aclosing(client.watch(reply.mid)) as notes:
        async for note in notes: ...
    await client.withdraw(reply.mid)

Rules applied here:

* 'cuid' is derived from the client's own credentials (SPKI of its certificate, or its PSK
  identity) as RFC 9132 §4.4.1.1 says (:mod:`dotsd.link`);
* mitigation requests and efficacy updates are Non-confirmable PUTs, "sent at regular
  intervals until a response is received" (RFC 9132 §4.4, §4.4.1, §4.4.3), paced by
  :class:`~dotsd.signal.pacing.MitigationRepeatPolicy` fed by an RTT estimate (RFC 6298,
  Karn's rule: only unrepeated exchanges are sampled); bodies are ``application/dots+cbor``
  (Content-Format 271, RFC 9132 §9);
* 'mid' values of new requests increase (RFC 9132 §4.4.1.1: "the DOTS client MUST use a
  'mid' value greater than ... any of its previous mitigation requests");
* an efficacy update carries an empty If-Match Option (RFC 9132 §4.4.3) and repeats the
  scope of the original request (§4.4.1.3 / §4.4.3: "MUST repeat all the other parameters");
* status (GET, with Observe for :meth:`SignalClient.watch`, RFC 9132 §4.4.2), withdrawal
  (DELETE, §4.4.4) and session configuration (§4.5) are Confirmable;
* the negotiated configuration applies to this link: 'mitigating-config' while the client
  has an active mitigation, 'idle-config' otherwise (RFC 9132 §4.5), as CoAP transmission
  parameters (§4.5.2, :meth:`CoapNode.set_params`) and heartbeat values;
* heartbeats (RFC 9132 §4.7): Non-confirmable PUTs every 'heartbeat-interval', the server's
  own heartbeats answered with 2.04 (Figure 28); after 'missing-hb-allowed' unanswered ones
  the session is lost (unless an attack is ongoing: then the client keeps the session) and
  ``on_session_lost`` is called; with a ``connect`` factory the client redials ("the DOTS
  client MUST try to re-establish the DOTS signal channel session", §4.7);
* redirection (RFC 9132 §4.6): a 5.03 carrying 'redirected-signal' (as a response or as a
  notification) is followed when an ``on_redirect`` hook accepts it (the dialer, which knows
  the redirect loops and TTLs): the link is replaced by one to the alternate server and the
  request is sent there once more; otherwise it is a :class:`Redirected` error;
* every failure is a :class:`ClientError` carrying the CoAP code and the server's diagnostic
  payload (plain text, RFC 7252 §5.5.2, or the dots+cbor body RFC 9132 §9 defines).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from cryptography import x509

from dotsd.coap.exchange import ClientRequest
from dotsd.coap.message import Message, error_response
from dotsd.coap.numbers import Code, ContentFormat, OptionNumber, code_str
from dotsd.coap.params import dots_defaults
from dotsd.coap.site import IncomingRequest, Resource, Site
from dotsd.errors import PeerError
from dotsd.link import Link, cuid_from_psk_identity, cuid_from_spki_sha256, spki_sha256
from dotsd.model import codec
from dotsd.model.errors import ModelError
from dotsd.node import CoapNode, RequestError
from dotsd.signal.client_session import (
    REDIAL_MIN,
    ClientEvent,
    ClientSession,
    OpenSpare,
    ParamsChanged,
    ProbeDtls,
    Redial,
    RefreshConfig,
    ReturnToProvisioned,
)
from dotsd.signal.config import (
    Attribute,
    ConfigError,
    ConfigSetKind,
    ServerConfig,
    Value,
    build_put_body,
    choose_values,
    config_path,
    parse_config_response,
)
from dotsd.signal.heartbeat import (
    HEARTBEAT_PATH,
    HeartbeatMonitor,
    SendHeartbeat,
    build_heartbeat_body,
    check_heartbeat_path,
    parse_heartbeat_body,
)
from dotsd.signal.pacing import MitigationRepeatPolicy, RttEstimator
from dotsd.signal.redirect import Redirection, parse_redirect
from dotsd.signal.scope import MITIGATION_MEMBER
from dotsd.signal.session import SessionState, StateChanged
from dotsd.signal.uri import MAX_MID, mitigate_path

if TYPE_CHECKING:
    from dotsd.agents.dial import ServerDialer

__all__ = [
    "ClientError",
    "Redirected",
    "Reply",
    "SessionMoved",
    "SignalClient",
]

log = logging.getLogger("dotsd.signal.client")

SessionLostHook = Callable[[str], object]
"""Called with the reason when the session is lost (may return an awaitable)."""

RedirectHook = Callable[[Redirection], tuple[bool, str]]
"""Asked whether to follow a redirection (RFC 9132 §4.6); answers (follow, reason)."""

MIN_REPEAT_INTERVAL: Final = 0.05
"""Least time between two sends of one unanswered NON mitigation request. RFC 9132 §4.4 caps
the rate at one datagram per RTT; the RTT a fresh session knows may be that of a cheap
exchange (well under a millisecond on a LAN), while the server needs a few milliseconds to
answer a mitigation request (validation, a durable commit): without a floor each request went
out ten times over loopback. 50 ms keeps one per RTT on a WAN (20 a second at a 50 ms RTT)."""


# ---------------------------------------------------------------------------------------------
# Errors and replies


class ClientError(PeerError):
    """A request that did not succeed.

    ``code``: the CoAP response code (None when no response came: timeout, link lost);
    ``diagnostic``: the server's diagnostic payload — text (RFC 7252 §5.5.2) or the decoded
    dots+cbor body (4.09 conflict information, RFC 9132 §4.4.1.3; 5.03 redirection, §4.6) —
    or our own explanation when there was no response.
    """

    def __init__(self, code: int | None, diagnostic: str | dict[str, Any] | None) -> None:
        self.code = code
        self.diagnostic = diagnostic
        super().__init__(f"{self.code_text}: {diagnostic}" if diagnostic else self.code_text)

    @property
    def code_text(self) -> str:
        """``"4.00 BAD_REQUEST"``, or ``"no response"``."""
        return code_str(self.code) if self.code is not None else "no response"


class Redirected(ClientError):
    """A 5.03 sending the client to an alternate server (RFC 9132 §4.6) that was not followed
    (no ``on_redirect`` hook, a redirect loop, or the alternate could not be reached);
    ``reason`` says which."""

    def __init__(self, redirection: Redirection, reason: str,
                 diagnostic: dict[str, Any] | None) -> None:
        super().__init__(Code.SERVICE_UNAVAILABLE, diagnostic)
        self.redirection = redirection
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.code_text}: redirected to {self.redirection.alt_server}: {self.reason}"


def _redirection(msg: Message) -> Redirection | None:
    """The redirection a response or notification carries (RFC 9132 §4.6), if any."""
    if msg.code != Code.SERVICE_UNAVAILABLE or msg.content_format != ContentFormat.DOTS_CBOR:
        return None
    body = _decode_payload(msg)
    return parse_redirect(body if isinstance(body, dict) else None, msg.max_age)


def _fresh(msg: Message) -> Message:
    """A copy of a request to send anew (new Message ID and token, RFC 7252 §4.4, §5.3.1)."""
    return dataclasses.replace(msg, mid=0, token=b"", options=list(msg.options or []))


DTLS_AGAIN: Final = "DTLS available again"
NEW_SESSION: Final = "a new session while the server was unheard"


@dataclass(frozen=True, slots=True)
class SessionMoved:
    """The session moved to another link (``reason``): back from an expired redirection
    (RFC 9132 §4.6), or to DTLS after a TLS fallback (§4.3, :data:`DTLS_AGAIN`)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Reply:
    """A successful response: its code, its decoded dots+cbor body (None without one), the
    'mid' the request was about and the Max-Age option."""

    code: int
    body: dict[str, Any] | None = None
    mid: int | None = None
    max_age: int | None = None

    @property
    def scopes(self) -> list[dict[str, Any]]:
        """The mitigation scope entries of the body (RFC 9132 §4.4.1.1, §4.4.2)."""
        if not self.body:
            return []
        content = self.body.get(MITIGATION_MEMBER)
        if not isinstance(content, dict):
            return []
        scopes = content.get("scope")
        return [s for s in scopes if isinstance(s, dict)] if isinstance(scopes, list) else []

    def _first(self, name: str) -> Any:
        scopes = self.scopes
        return scopes[0].get(name) if scopes else None

    @property
    def lifetime(self) -> int | None:
        """The lifetime the server granted (RFC 9132 §4.4.1.3, Figure 10), or the remaining
        lifetime in a status (§4.4.2)."""
        value = self._first("lifetime")
        return value if isinstance(value, int) else None

    @property
    def status(self) -> str | None:
        """The 'status' of the first scope entry (RFC 9132 §4.4.2 Table 3)."""
        value = self._first("status")
        return value if isinstance(value, str) else None


def _decode_payload(msg: Message) -> str | dict[str, Any] | None:
    """The payload as the server meant it: dots+cbor decoded, else text."""
    if not msg.payload:
        return None
    if msg.content_format == ContentFormat.DOTS_CBOR:
        try:
            return codec.from_cbor(msg.payload)
        except ModelError as exc:
            return f"undecodable dots+cbor payload ({exc})"
    return msg.payload.decode("utf-8", errors="replace")


def _reply(msg: Message, ok: tuple[Code, ...], mid: int | None = None) -> Reply:
    """The response as a :class:`Reply`, or :class:`ClientError` when its code is not one of
    ``ok`` (RFC 9132 §9: errors carry a diagnostic payload)."""
    if msg.code not in ok:
        raise ClientError(msg.code, _decode_payload(msg))
    body: dict[str, Any] | None = None
    if msg.payload:
        if msg.content_format != ContentFormat.DOTS_CBOR:
            raise ClientError(msg.code, f"unexpected Content-Format {msg.content_format} "
                                        f"(expected {int(ContentFormat.DOTS_CBOR)}, "
                                        "RFC 9132 §9)")
        try:
            body = codec.from_cbor(msg.payload)
        except ModelError as exc:
            raise ClientError(msg.code, f"malformed response body: {exc}") from None
    return Reply(msg.code, body, mid, msg.max_age)


# ---------------------------------------------------------------------------------------------
# Repetition


class _TrackedRepeat:
    """A repeat policy that remembers whether the request was repeated (Karn's rule,
    RFC 6298 §3: a repeated exchange gives no RTT sample)."""

    def __init__(self, policy: Callable[[ClientRequest, int, float | None], float | None]
                 ) -> None:
        self.policy = policy
        self.repeated = False

    def __call__(self, request: ClientRequest, attempts: int, rtt: float | None
                 ) -> float | None:
        if attempts:  # called after repetition number ``attempts`` went out
            self.repeated = True
        return self.policy(request, attempts, rtt)


# ---------------------------------------------------------------------------------------------
# The server's heartbeats


class _HeartbeatResource(Resource):
    """``/.well-known/dots/hb`` on the client: the server's heartbeats (RFC 9132 §4.7), answered
    with 2.04 without payload (Figure 28); a malformed one (a Uri-Path parameter, a body without
    'peer-hb-status', not CBOR) is 4.00 with a diagnostic payload (§9), one not in
    application/dots+cbor 4.15. Each received feeds the 'peer-hb-status' of the client's own
    heartbeats: true while the server's arrived in the last 2 x 'heartbeat-interval'. One per
    node: every client on the node gets the heartbeats of its own link."""

    def __init__(self) -> None:
        self.clients: list[SignalClient] = []

    @classmethod
    def of(cls, node: CoapNode) -> _HeartbeatResource:
        """The node's heartbeat resource, added at the first client."""
        route = node.site.resolve(HEARTBEAT_PATH)
        if route is not None and isinstance(route[0], cls):
            return route[0]
        resource = cls()
        # prefix: a parameter after /hb is 4.00, not 4.04 (RFC 9132 §4.7)
        node.site.add("/" + "/".join(HEARTBEAT_PATH), resource, prefix=True)
        return resource

    def put(self, req: IncomingRequest) -> Message:
        msg = req.message
        if msg.content_format != ContentFormat.DOTS_CBOR:  # RFC 9132 §9 / RFC 7252 §5.10.3
            return error_response(Code.UNSUPPORTED_CONTENT_FORMAT,
                                  "Content-Format must be application/dots+cbor")
        try:
            check_heartbeat_path(msg.uri_path)
            status = parse_heartbeat_body(codec.from_cbor(msg.payload))
        except ModelError as exc:
            return error_response(Code.BAD_REQUEST, str(exc))
        for client in self.clients:
            client._peer_heartbeat(req.link, status)  # the one whose link it is
        return Message(code=Code.CHANGED)


# ---------------------------------------------------------------------------------------------
# The client


class SignalClient:
    """RFC 9132 client side (see the module docstring): the asyncio agent that runs a
    :class:`~dotsd.signal.client_session.ClientSession` over a link of a :class:`CoapNode`.

    ``cuid``: the client identifier (see :meth:`for_certificate`, :meth:`for_psk`);
    ``node``: the CoAP node to use (default: a new one with the DOTS defaults, RFC 9132
    §4.5.2; the heartbeat resource is added to its site); ``connect``: dials the server and
    returns the link (used by :meth:`start` without a link and to redial after a session
    loss); ``dialer``: a :class:`~dotsd.agents.dial.ServerDialer`, which then provides
    ``connect`` and ``on_redirect`` and lets the session return from an expired redirection
    (RFC 9132 §4.6) and probe DTLS after a fallback to TLS (§4.3); ``first_mid``: the first
    'mid' to allocate; ``timeout``: how long a request waits for its response (None: the CoAP
    MAX_TRANSMIT_WAIT); ``heartbeat``: a fixed ('heartbeat-interval', 'missing-hb-allowed')
    overriding the negotiated values (tests, or 'heartbeat-interval' 0 to turn heartbeats off);
    ``estimator``: the RTT estimate pacing the repetitions (default: a new
    :class:`RttEstimator`); ``on_session_lost``: called with the reason when the session is
    lost (RFC 9132 §4.7); ``on_redirect``: whether to follow a redirection (RFC 9132 §4.6;
    with ``connect``, which then dials the alternate server); ``refresh``: refresh the session
    configuration before its Max-Age runs out (§4.5.3), once it was read.
    """

    def __init__(
        self,
        cuid: str,
        *,
        node: CoapNode | None = None,
        connect: Callable[[], Awaitable[Link]] | None = None,
        dialer: ServerDialer | None = None,
        first_mid: int = 1,
        first_sid: int = 1,
        timeout: float | None = None,
        heartbeat: tuple[float, int] | None = None,
        estimator: RttEstimator | None = None,
        repeat: MitigationRepeatPolicy | None = None,
        on_session_lost: SessionLostHook | None = None,
        on_redirect: RedirectHook | None = None,
        reconnect_delay: float = REDIAL_MIN,
        refresh: bool = True,
    ) -> None:
        if not 0 <= first_mid <= MAX_MID:
            raise ValueError(f"'mid' must be within 0..{MAX_MID}")
        self.cuid = cuid
        self._own_node = node is None
        self.node = node if node is not None else CoapNode(Site(), params=dots_defaults())
        self._hb_resource = _HeartbeatResource.of(self.node)
        self._hb_resource.clients.append(self)
        self.node.add_link_listener(down=self._link_down)
        self.session = ClientSession(0.0, heartbeat=heartbeat, redial_delay=reconnect_delay,
                                     first_sid=first_sid, last_mid=first_mid - 1)
        self.dialer = dialer
        self._connect = connect if connect is not None or dialer is None else dialer.dial
        self.session.redial = self._connect is not None
        self.timeout = timeout
        self.estimator = estimator if estimator is not None else RttEstimator()
        self.repeat = repeat if repeat is not None else MitigationRepeatPolicy(
            self.estimator, min_interval=MIN_REPEAT_INTERVAL)
        self.on_session_lost = on_session_lost
        self.on_redirect = (on_redirect if on_redirect is not None or dialer is None
                            else dialer.redirect)
        self.refresh = refresh
        self.redirects = 0
        self.link: Link | None = None
        self.connected = asyncio.Event()
        self.session_lost = asyncio.Event()
        self.heartbeats_sent = 0
        self.heartbeats_answered = 0
        self.peer_heartbeats = 0
        self.reconnects = 0
        self.spares = 0  # new sessions opened beside an unheard one (RFC 9132 §4.7)
        self._listeners: list[Callable[[ClientEvent | SessionMoved], object]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._closers: list[Callable[[], object]] = []

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def for_certificate(cls, certificate: x509.Certificate, **kw: Any) -> SignalClient:
        """A client whose 'cuid' is derived from its certificate's SPKI (RFC 9132 §4.4.1.1)."""
        return cls(cuid_from_spki_sha256(spki_sha256(certificate)), **kw)

    @classmethod
    def for_psk(cls, psk_identity: bytes, **kw: Any) -> SignalClient:
        """A client whose 'cuid' is derived from its PSK identity (RFC 9132 §4.4.1.1)."""
        return cls(cuid_from_psk_identity(psk_identity), **kw)

    @property
    def connect(self) -> Callable[[], Awaitable[Link]] | None:
        """Dials the server (None: the application attaches links with :meth:`start`)."""
        return self._connect

    @connect.setter
    def connect(self, connect: Callable[[], Awaitable[Link]] | None) -> None:
        self._connect = connect
        self.session.redial = connect is not None  # RFC 9132 §4.7: redial after a loss

    # -- session state (kept by the ClientSession) ------------------------------------------------

    @property
    def state(self) -> SessionState:
        return self.session.state

    @property
    def monitor(self) -> HeartbeatMonitor | None:
        return self.session.monitor

    @property
    def mitigating(self) -> bool:
        """Whether the client has an active mitigation (RFC 9132 §4.5: 'mitigating-config')."""
        return self.session.mitigating

    @property
    def active_mids(self) -> frozenset[int]:
        return self.session.active_mids

    @property
    def server_config(self) -> ServerConfig | None:
        return self.session.server_config

    @property
    def config_max_age(self) -> int | None:
        return self.session.config_max_age

    @property
    def sid(self) -> int | None:
        return self.session.sid

    @property
    def lost_reason(self) -> str | None:
        return self.session.lost_reason

    def on_close(self, close: Callable[[], object]) -> None:
        """Call ``close`` when the client closes (e.g. the listener of a Call Home client)."""
        self._closers.append(close)

    def use_dialer(self, dialer: ServerDialer) -> None:
        """Reach the server through ``dialer``: it dials (and redials), follows redirections
        (RFC 9132 §4.6) and probes DTLS after a TLS fallback (§4.3)."""
        self.dialer = dialer
        self.connect = dialer.dial
        self.on_redirect = dialer.redirect

    def add_listener(self, listener: Callable[[ClientEvent | SessionMoved], object]) -> None:
        """Call ``listener`` with every event of the session (state changes, redials,
        refreshes, ...) after the client acted on it."""
        self._listeners.append(listener)

    def set_attack_ongoing(self, ongoing: bool | None) -> None:
        """Tell whether an attack is ongoing (None: assume so while a mitigation is active).
        RFC 9132 §4.7: under attack the session is not declared lost on missing heartbeats."""
        self.session.set_attack_ongoing(self._now(), ongoing)
        self._pump()

    # -- session --------------------------------------------------------------------------------

    async def start(self, link: Link | None = None) -> None:
        """Use ``link`` (or dial with ``connect``); the session's timer runs from now on."""
        self._loop = asyncio.get_running_loop()
        self._closed = False
        if self not in self._hb_resource.clients:  # started again after close()
            self._hb_resource.clients.append(self)
        if link is None:
            if self.connect is None:
                raise ValueError("no link and no connect factory")
            link = await self.connect()
        self._attach(link)

    def _now(self) -> float:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop.time()

    def _attach(self, link: Link) -> None:
        self.link = link
        dialer = self.dialer
        now = self._now()
        if link.info.rtt is not None:
            # RFC 9132 §4.4: the handshake just measured this path (dotsd.dtls.connection);
            # the estimate starts from it, not from an older or restored one, and paces the
            # first requests instead of one every 3 s.
            self.estimator.restart(link.info.rtt)
        self.session.link_up(
            now, reliable=link.info.reliable,
            redirect_until=dialer.redirect_expiry() if dialer is not None else None,
            tls_fallback=dialer is not None and dialer.tls_fallback)
        self.session_lost.clear()
        self.connected.set()
        self._pump()

    def _require_link(self) -> Link:
        if self.link is None or self._closed:
            raise ClientError(None, "not connected to a DOTS server")
        return self.link

    def _heard(self) -> None:
        """Any response from the server is traffic for the heartbeat monitor (RFC 9132 §4.7)."""
        self.session.traffic(self._now())
        self._pump()

    def _peer_heartbeat(self, link: Link, status: bool) -> None:
        if link is not self.link:
            return
        self.peer_heartbeats += 1
        self.session.peer_heartbeat(self._now(), status)
        self._pump()

    def _link_down(self, link: Link, reason: str | None) -> None:
        if link is self.link and not self._closed:
            self.session.link_down(self._now(), reason or "closed")
            self._pump()

    # -- the one timer and the session's events ---------------------------------------------------

    def _pump(self) -> None:
        """Act on every event of the session, then re-arm the one timer (RFC 9132 §4.7)."""
        if self._closed:
            return
        while (event := self.session.next_event()) is not None:
            self._act(event)
            self._tell(event)
        self._arm()

    def _tell(self, event: ClientEvent | SessionMoved) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("session listener failed")

    def _arm(self) -> None:
        when = self.session.get_timer()
        if when == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at, self._timer = when, None
        if when is not None and self._loop is not None:
            self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        self.session.handle_timer(self._now())
        self._pump()

    def _act(self, event: ClientEvent) -> None:
        if isinstance(event, SendHeartbeat):
            self._send_heartbeat(event.peer_hb_status)
        elif isinstance(event, ParamsChanged):
            if self.link is not None and self.link in self.node.links:
                self.node.set_params(self.link, event.params)
        elif isinstance(event, StateChanged):
            self._state_changed(event)
        elif isinstance(event, Redial):
            self._spawn(self._redial(event))
        elif isinstance(event, RefreshConfig):
            if self.refresh:
                self._spawn(self._refresh(event.sid))
        elif isinstance(event, ReturnToProvisioned):
            log.warning("cuid=%s: redirection expired: back to the provisioned server",
                        self.cuid)
            self._spawn(self._move(None, "back to the provisioned server"))
        elif isinstance(event, ProbeDtls):
            self._spawn(self._probe_dtls())
        elif isinstance(event, OpenSpare):
            self._spawn(self._open_spare(event))

    def _state_changed(self, event: StateChanged) -> None:
        new = event.new
        if new is SessionState.DEGRADED:
            log.warning("cuid=%s: %s; keeping the session", self.cuid, event.reason)
        elif new is SessionState.ESTABLISHED and event.old is SessionState.DEGRADED:
            log.info("cuid=%s: the DOTS server is reachable again", self.cuid)
        elif new is SessionState.LOST:
            # RFC 9132 §4.7: the session is over; requests fail at once until a new link is
            # attached (by the ``connect`` factory, or by the application with start()).
            log.warning("cuid=%s: DOTS signal channel session lost: %s", self.cuid,
                        event.reason)
            self.connected.clear()
            self.session_lost.set()
            old, self.link = self.link, None
            if old is not None:
                old.close()
            if self.on_session_lost is not None and event.old is not SessionState.CONNECTING:
                self._spawn(self._call_lost_hook(event.reason))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call_lost_hook(self, reason: str) -> None:
        assert self.on_session_lost is not None
        try:
            result = self.on_session_lost(reason)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("on_session_lost hook failed")

    async def _redial(self, event: Redial) -> None:
        """RFC 9132 §4.7: "the DOTS client MUST try to re-establish the DOTS signal channel
        session"; a failure is retried after the session's back-off."""
        if self.connect is None or self._closed:
            return
        try:
            link = await self.connect()
        except Exception as exc:
            log.warning("cuid=%s: reconnect failed: %r", self.cuid, exc)
            self.session.dial_failed(self._now(), repr(exc))
            self._pump()
            return
        if self._closed:
            link.close()
            return
        self.reconnects += 1
        self._attach(link)

    async def _refresh(self, sid: int | None) -> None:
        """RFC 9132 §4.5.3: refresh the configuration with a GET carrying the 'sid'."""
        try:
            await self.session_config_get(sid)
        except ClientError as exc:
            log.info("cuid=%s: configuration refresh failed: %s", self.cuid, exc)
            self.session.refresh_failed(self._now())
            self._pump()

    async def _move(self, link: Link | None, why: str) -> None:
        try:
            await self.reconnect(link)
        except Exception as exc:
            log.warning("cuid=%s: could not move the session (%s): %r", self.cuid, why, exc)
            return
        log.info("cuid=%s: session moved: %s", self.cuid, why)
        self._tell(SessionMoved(why))

    async def _open_spare(self, event: OpenSpare) -> None:
        """RFC 9132 §4.7 under attack: a new session beside the unheard one (requests go on
        over the current one meanwhile); the session moves to it if the current one is
        still unheard when it is up, and requests waiting for an answer follow."""
        if self.connect is None or self._closed:
            return
        log.warning("cuid=%s: %s: trying a new session beside it (attempt %d)", self.cuid,
                    event.reason, event.attempt)
        try:
            link = await self.connect()
        except Exception as exc:
            log.warning("cuid=%s: new session failed: %r", self.cuid, exc)
            self.session.spare_failed(self._now())
            self._pump()
            return
        if self._closed or self.session.state is not SessionState.DEGRADED:
            link.close()  # the current session is heard again ("can stop the new ...")
            return
        self.spares += 1
        await self._move(link, NEW_SESSION)

    async def _probe_dtls(self) -> None:
        """RFC 9132 §4.3: a session that fell back to TLS probes DTLS again."""
        link = await self.dialer.probe_dtls() if self.dialer is not None else None
        if link is None:
            self.session.probe_failed(self._now())
            self._pump()
            return
        await self._move(link, DTLS_AGAIN)

    # -- requests -------------------------------------------------------------------------------

    def _message(self, code: Code, path: tuple[str, ...],
                 body: Mapping[str, Any] | None = None) -> Message:
        msg = Message(code=code).set_path("/".join(path))
        if body is not None:
            msg.payload = codec.to_cbor(dict(body))
            msg.add(OptionNumber.CONTENT_FORMAT, ContentFormat.DOTS_CBOR)  # RFC 9132 §9
        return msg

    async def _request(self, msg: Message) -> Message:
        """A Confirmable request (status, withdrawal, configuration)."""
        return await self._redirectable(self._request_once, msg)

    async def _request_non(self, msg: Message) -> Message:
        """A Non-confirmable request repeated until answered (RFC 9132 §4.4)."""
        return await self._redirectable(self._request_non_once, msg)

    async def _redirectable(self, send: Callable[[Message], Awaitable[Message]],
                            msg: Message) -> Message:
        """``send`` a copy of ``msg``; when redirected, once more to the alternate server
        (RFC 9132 §4.6)."""
        resp = await send(_fresh(msg))
        redirection = _redirection(resp)
        if redirection is not None:
            await self._follow(redirection, resp)
            resp = await send(_fresh(msg))
        return resp

    async def _follow(self, redirection: Redirection, resp: Message) -> None:
        """RFC 9132 §4.6: "it considers the current request to have failed, but it SHOULD try
        resending the request to the alternate DOTS server"; raises :class:`Redirected` when
        the redirection is not followed."""
        body = _decode_payload(resp)
        diagnostic = body if isinstance(body, dict) else None
        if self.on_redirect is None or self.connect is None:
            raise Redirected(redirection, "redirection not followed (no dialer)", diagnostic)
        follow, reason = self.on_redirect(redirection)
        if not follow:
            log.warning("cuid=%s: %s", self.cuid, reason)
            raise Redirected(redirection, reason, diagnostic)
        log.warning("cuid=%s: %s", self.cuid, reason)
        try:
            await self.reconnect()
        except Exception as exc:
            raise Redirected(redirection, f"alternate server unreachable: {exc}",
                             diagnostic) from None
        self.redirects += 1

    async def reconnect(self, link: Link | None = None) -> None:
        """Replace the link with ``link`` or a new one from ``connect`` (after a redirection,
        when a redirection expired, RFC 9132 §4.6, or to move from TLS to DTLS, §4.3)."""
        if link is None and self.connect is None:
            raise ValueError("no connect factory")
        old, self.link = self.link, None
        if old is not None:
            old.close()  # not self.link any more: its link_down is no session loss
        if link is None:
            assert self.connect is not None
            try:
                link = await self.connect()
            except BaseException as exc:
                # Nothing to send on: the session is lost, and redialled (RFC 9132 §4.7).
                self.session.link_down(self._now(), f"reconnect failed: {exc!r}")
                self._pump()
                raise
        self._attach(link)

    async def _request_once(self, msg: Message) -> Message:
        link = self._require_link()
        try:
            resp = await self.node.request(link, msg, timeout=self.timeout)
        except RequestError as exc:
            raise ClientError(None, f"{msg.path_str}: {exc}") from None
        self._heard()
        return resp

    async def _request_non_once(self, msg: Message) -> Message:
        """Sampled for the RTT estimate when it was not repeated (RFC 6298 §3). When the
        session moves to another link meanwhile (a new session under attack, §4.7; DTLS
        again, §4.3), the request goes on over the new link within the same deadline."""
        link = self._require_link()
        deadline = None if self.timeout is None else self._now() + self.timeout
        while True:
            tracked = _TrackedRepeat(self.repeat)
            sent_at = self._now()
            left = None if deadline is None else deadline - sent_at
            try:
                resp = await self.node.request(link, msg, confirmable=False, timeout=left,
                                               repeat=tracked)
                break
            except RequestError as exc:
                current = self.link
                if (current is None or current is link or self._closed
                        or (deadline is not None and self._now() >= deadline)):
                    raise ClientError(None, f"{msg.path_str}: {exc}") from None
                link, msg = current, _fresh(msg)
        if not link.info.reliable:  # the pacing of datagrams; TCP times its own
            self.estimator.on_exchange(sent_at, self._now(), repeated=tracked.repeated)
        self._heard()
        return resp

    # -- mitigation (RFC 9132 §4.4) ---------------------------------------------------------------

    async def mitigate(self, scope: Mapping[str, Any], mid: int | None = None) -> Reply:
        """Request (or, with an existing ``mid``, refresh) a mitigation (RFC 9132 §4.4.1).

        ``scope``: one scope entry, JSON-shaped ('target-prefix', 'target-port-range',
        'target-protocol', 'lifetime', 'trigger-mitigation', ...). Returns the 2.01 / 2.04
        reply, whose :attr:`Reply.lifetime` is the granted lifetime."""
        if mid is None:
            mid = self.session.allocate_mid()  # RFC 9132 §4.4.1.1: above the previous ones
        elif not 0 <= mid <= MAX_MID:
            raise ValueError(f"'mid' must be within 0..{MAX_MID}")
        else:
            self.session.mid_used(mid)
        entry = {k: v for k, v in scope.items() if k != "mid"}  # 'mid' goes in the Uri-Path
        msg = self._message(Code.PUT, mitigate_path(self.cuid, mid),
                            {MITIGATION_MEMBER: {"scope": [entry]}})
        reply = _reply(await self._request_non(msg), (Code.CREATED, Code.CHANGED), mid)
        self.session.mitigation_active(self._now(), mid, entry)  # §4.5: 'mitigating-config'
        self._pump()
        return reply

    async def efficacy(self, mid: int, attack_status: str, *,
                       scope: Mapping[str, Any] | None = None) -> Reply:
        """Efficacy update (RFC 9132 §4.4.3): a PUT with an empty If-Match Option repeating the
        request's scope (default: as this client sent it) with 'attack-status' ("under-attack",
        "attack-successfully-mitigated"). 2.04 expected; 4.12 when the server no longer has
        the request."""
        base = scope if scope is not None else self.session.scope_of(mid)
        if base is None:
            raise ValueError(f"no scope known for mid {mid}: pass scope=")
        entry = {k: v for k, v in base.items() if k not in ("mid", "lifetime")}
        entry["attack-status"] = attack_status
        msg = self._message(Code.PUT, mitigate_path(self.cuid, mid),
                            {MITIGATION_MEMBER: {"scope": [entry]}})
        msg.add(OptionNumber.IF_MATCH, b"")  # RFC 9132 §4.4.3
        return _reply(await self._request_non(msg), (Code.CHANGED,), mid)

    async def status(self, mid: int | None = None) -> Reply:
        """The status of one mitigation, or of all of the client's (RFC 9132 §4.4.2)."""
        msg = self._message(Code.GET, mitigate_path(self.cuid, mid))
        return _reply(await self._request(msg), (Code.CONTENT,), mid)

    async def watch(self, mid: int | None = None) -> AsyncGenerator[Reply, None]:
        """Observe one mitigation or all of the client's (RFC 9132 §4.4.2.1, RFC 7641): the
        current status first, then every notification. An error answer to the registration is
        a :class:`ClientError`; the iteration ends when the observation ends. Close the
        iterator (``contextlib.aclosing``) to deregister."""
        link = self._require_link()
        msg = self._message(Code.GET, mitigate_path(self.cuid, mid))
        obs = self.node.observe(link, _fresh(msg), timeout=self.timeout)
        first = True
        try:
            while True:
                try:
                    note = await obs.next()
                except RequestError as exc:
                    if first:
                        raise ClientError(None, f"{msg.path_str}: {exc}") from None
                    return
                self._heard()
                redirection = _redirection(note)
                if redirection is not None:
                    # RFC 9132 §4.6: a 5.03 response or "unidirectional notification":
                    # observe the same resource at the alternate server.
                    obs.cancel()
                    await self._follow(redirection, note)
                    obs = self.node.observe(self._require_link(), _fresh(msg),
                                            timeout=self.timeout)
                    first = True
                    continue
                if not first and note.code != Code.CONTENT:
                    return  # RFC 7641 §3.2: a non-2.05 notification ends the observation
                first = False
                yield _reply(note, (Code.CONTENT,), mid)
        finally:
            obs.cancel()

    async def withdraw(self, mid: int) -> Reply:
        """Withdraw a mitigation (RFC 9132 §4.4.4): DELETE, 2.02 expected."""
        msg = self._message(Code.DELETE, mitigate_path(self.cuid, mid))
        reply = _reply(await self._request(msg), (Code.DELETED,), mid)
        self.session.mitigation_ended(self._now(), mid)  # §4.5: 'idle-config' when none left
        self._pump()
        return reply

    # -- session configuration (RFC 9132 §4.5) ----------------------------------------------------

    async def session_config_get(self, sid: int | None = None) -> ServerConfig:
        """Discover (or, with ``sid``, read) the session configuration (RFC 9132 §4.5.1) and
        apply the server's current values to this link."""
        msg = self._message(Code.GET, config_path(sid))
        resp = await self._request(msg)
        reply = _reply(resp, (Code.CONTENT,))
        try:
            config = parse_config_response(reply.body or {})
        except ConfigError as exc:
            raise ClientError(resp.code, f"malformed configuration: {exc}") from None
        # The server's current values apply; Max-Age says when to refresh (RFC 9132 §4.5.3).
        self.session.config_received(self._now(), config, reply.max_age)
        self._pump()
        return config

    async def session_config_set(
        self,
        mitigating: Mapping[Attribute, Value] | None = None,
        idle: Mapping[Attribute, Value] | None = None,
        *,
        sid: int | None = None,
        clamp: bool = True,
    ) -> Reply:
        """Convey the client's configuration (RFC 9132 §4.5.2): PUT with a new 'sid' (default:
        the next from a monotonically increasing allocator). With ``clamp`` the values are
        first fitted into the ranges the server advertises (discovered with a GET when not
        yet known) so that the server does not refuse them with 4.22. The values are applied
        to this link once the server accepted them (2.01 / 2.04)."""
        link = self._require_link()
        chosen: dict[ConfigSetKind, dict[Attribute, Value]] = {}
        for kind, wanted in ((ConfigSetKind.MITIGATING, mitigating),
                             (ConfigSetKind.IDLE, idle)):
            if wanted is None:
                continue
            values = dict(wanted)
            if clamp:
                if self.server_config is None:
                    await self.session_config_get()
                assert self.server_config is not None
                values = choose_values(self.server_config.advertised(kind), values)
            chosen[kind] = values
        body = build_put_body(chosen.get(ConfigSetKind.MITIGATING),
                              chosen.get(ConfigSetKind.IDLE), reliable=link.info.reliable)
        if sid is None:
            sid = self.session.sids.next()
        msg = self._message(Code.PUT, config_path(sid), body)
        reply = _reply(await self._request(msg), (Code.CREATED, Code.CHANGED))
        self.session.config_installed(self._now(), sid, chosen)  # §4.5.2: "MUST use" them
        self._pump()
        return reply

    async def session_config_delete(self) -> Reply:
        """Back to the server's defaults (RFC 9132 §4.5.4), re-read with a GET."""
        reply = _reply(await self._request(self._message(Code.DELETE, config_path())),
                       (Code.DELETED,))
        self.session.config_deleted()
        await self.session_config_get()
        return reply

    # -- heartbeats (RFC 9132 §4.7) ---------------------------------------------------------------

    def _send_heartbeat(self, peer_hb_status: bool) -> None:
        """A Non-confirmable heartbeat PUT (RFC 9132 §4.7, Figure 27), not repeated: a missing
        answer is what the monitor counts."""
        link, monitor = self.link, self.session.monitor
        if link is None or monitor is None:
            return
        msg = self._message(Code.PUT, HEARTBEAT_PATH, build_heartbeat_body(peer_hb_status))
        now = self._now()
        self.session.heartbeat_sent(now)
        try:
            fut = self.node.start_request(link, msg, confirmable=False,
                                          timeout=max(monitor.interval, 0.001))
        except Exception as exc:  # a send failure is a missing heartbeat
            log.warning("heartbeat not sent: %r", exc)
            return
        self.heartbeats_sent += 1
        fut.add_done_callback(lambda f: self._heartbeat_done(f, monitor, now))

    def _heartbeat_done(self, fut: asyncio.Future[Message], monitor: HeartbeatMonitor,
                        sent_at: float) -> None:
        if fut.cancelled() or fut.exception() is not None or monitor is not self.monitor:
            return
        resp = fut.result()
        if resp.code != Code.CHANGED:
            log.info("heartbeat answered %s: %s", code_str(resp.code), _decode_payload(resp))
        self.heartbeats_answered += 1
        sample = self.session.heartbeat_answered(self._now(), sent_at)
        link = self.link
        if sample is not None and link is not None and not link.info.reliable:
            # RFC 9132 §4.4: an RTT estimate for the pacing of datagrams. Not over TCP: its
            # round trips include TCP's own retransmissions, and would slow the repetitions
            # once the session is back on DTLS (or in the next run, dotsd.agents.paths).
            self.estimator.sample(sample)
        self._pump()

    async def close(self) -> None:
        """Stop the session's timer and tasks; close the link (and the node when it is ours)."""
        self._closed = True
        self.session.close()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._timer_at = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.connected.clear()
        self.node.remove_link_listener(down=self._link_down)
        if self in self._hb_resource.clients:
            self._hb_resource.clients.remove(self)
        for close in reversed(self._closers):
            with contextlib.suppress(Exception):
                close()
        if self._own_node:
            await self.node.close()
        elif self.link is not None:
            self.link.close()
