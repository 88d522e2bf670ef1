"""The DOTS server's side of the signal channel for all its clients, sans-IO (RFC 9132).

:class:`ServerCore` takes a CoAP request of an authenticated peer with the times ``mono``
(monotonic: sessions, heartbeats, rate limits) and ``wall`` (epoch seconds: mitigation
lifetimes, timestamps in records) and gives back a :class:`Reply`: the CoAP response, and the
state to keep durably *before* the response goes (:class:`KeepChanges`,
:class:`KeepConfig`, :class:`ForgetConfig`; RFC 9132 §4.4.1: a 2.01 means the request is
installed). Once the agent has kept it, it calls :meth:`ServerCore.kept`, and the core
publishes what changed through :meth:`ServerCore.next_event`: notifications for the
observers (:class:`Notify`, §4.4.2.1), changed mitigations for the mitigator
(:class:`Changed`), transmission parameters for a client's link (:class:`SetParams`, §4.5.2),
the server's heartbeats to its clients (:class:`Heartbeat`, §4.7; the responses come back
through :meth:`ServerCore.heartbeat_answered`) and further state to keep (:class:`Persist`:
timer and mitigator changes, the repeated notifications of preconfigured requests). The one
timer is :meth:`~ServerCore.get_timer`/:meth:`~ServerCore.handle_timer`.

The core reads no clock, opens no socket and touches no store: the agent
(``dotsd.agents.server``) loads its state (mitigations, cuid bindings, stored session
configurations) and carries out its outputs. Resources (RFC 9132 §4.2 Table 1):

* ``/.well-known/dots/mitigate/...``: PUT, GET (with Observe), DELETE (§4.4), on
  :class:`~dotsd.signal.mitigation.MitigationTable`;
* ``/.well-known/dots/config[/sid=N]``: GET, PUT, DELETE (§4.5);
* ``/.well-known/dots/hb``: heartbeat PUT (§4.7).

Rules applied here (the others live in the modules it uses):

* the client must be authenticated (RFC 9132 §8); its identity and the 'cuid' it must use
  come from :mod:`dotsd.signal.identity`; an unauthenticated peer, a client the policy does
  not admit, or (``strict_cuid``) a 'cuid' that is not the one derived from the client's
  credentials is 4.01 (§9);
* the first PUT binds a 'cuid' to the client identity; a PUT with a 'cuid' bound to another
  identity is a cuid collision: 4.09 with conflict-cause 3 (§4.4.1.3, Figure 11); a GET or
  DELETE of it is 4.01 (§4.1: "entitled to access only the resources it creates");
* request bodies must be ``application/dots+cbor``: else 4.15 (§9, RFC 7252 §5.10.3); an
  Accept other than 271 is 4.06 (RFC 7252 §5.10.4);
* a client over its request rate is 5.03 with Max-Age (§4.4.1.3, §9);
* every status change is notified to the observers of the mitigation and of all the client's
  mitigations (§4.4.2.1); for a preconfigured request, status 3 and 7 are sent four times and
  the request returns to 8 (§4.4.2 Table 3);
* the server sends heartbeats to each client and probes a quiet one before it declares its
  session lost (§4.7, :mod:`dotsd.signal.server_session`);
* on a session loss the client's preconfigured requests are triggered (§4.4.1.3), also for a
  client that does not come back after a restart within its heartbeat allowance (§4.7); a
  client whose inbound link looks saturated (it reports 'peer-hb-status' false, or leaves our
  heartbeats unanswered while it is heard) has not lost its session: it is logged, and its
  'trigger-mitigation' false requests keep waiting for a loss (§4.4.1);
* while redirecting, every request is answered 5.03 with the redirection (§4.6).
"""

from __future__ import annotations

import heapq
import logging
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from dotsd.coap.message import Message, error_response
from dotsd.coap.numbers import Code, ContentFormat, OptionNumber
from dotsd.coap.params import TransmissionParameters
from dotsd.errors import PeerError
from dotsd.link import PeerInfo
from dotsd.model import codec
from dotsd.model.errors import ModelError
from dotsd.signal.config import ConfigError, ConfigPolicy, SessionConfig, parse_config_path
from dotsd.signal.errors import (
    Conflict,
    ServiceUnavailable,
    SignalError,
    Unauthorized,
    from_model_error,
)
from dotsd.signal.heartbeat import (
    HEARTBEAT_PATH,
    SendHeartbeat,
    build_heartbeat_body,
    check_heartbeat_path,
    parse_heartbeat_body,
)
from dotsd.signal.identity import ClientIdentity, client_identity
from dotsd.signal.lifecycle import (
    PRECONFIGURED_REPEATS,
    ConflictCause,
    MitigationEvent,
    Status,
)
from dotsd.signal.mitigation import (
    AliasCheck,
    Change,
    ConflictPolicy,
    Ignored,
    MitigationTable,
    Reason,
    conflict_body,
)
from dotsd.signal.policy import LAB, Policy, PolicySet
from dotsd.signal.ratelimit import RateLimiter
from dotsd.signal.records import ConflictInfo, Counters, Mitigation
from dotsd.signal.redirect import Redirection, redirect_body
from dotsd.signal.server_session import InboundSaturation, ParamsChanged, ServerSession
from dotsd.signal.session import SessionState
from dotsd.signal.uri import parse_mitigate_uri

__all__ = [
    "Changed",
    "Collision",
    "ForgetConfig",
    "Heartbeat",
    "Keep",
    "KeepChanges",
    "KeepConfig",
    "Notify",
    "Persist",
    "Reply",
    "Request",
    "ServerCore",
    "SetParams",
    "config_key",
    "error_message",
    "heartbeat_request",
    "no_data_channel",
    "observe_key",
]

log = logging.getLogger("dotsd.signal.server")

_REPEATED: Final = frozenset({Status.ATTACK_STOPPED, Status.ATTACK_MITIGATION_WITHDRAWN})
_MAX_RATES_SLACK: Final = 1024  # idle rate-limit buckets kept before a sweep


def no_data_channel(cuid: str, cdid: str | None, alias: str) -> bool:
    """The alias check of a server without a DOTS data channel (RFC 8783): no client created
    any alias, so a request naming one is refused with 4.00 ("If the aliases were not created
    by the DOTS client, the DOTS server MUST return 4.00", RFC 9132 §4.4.1.3)."""
    return False


# ---------------------------------------------------------------------------------------------
# Inputs and outputs


@dataclass(frozen=True, slots=True)
class Request:
    """A CoAP request as the core needs it: the message, who sent it (as the (D)TLS layer
    authenticated the peer) and the agent's handle of the link it came on."""

    message: Message
    peer: PeerInfo
    link: Hashable


@dataclass(frozen=True, slots=True)
class KeepChanges:
    """Store these mitigation changes (and bind ``bind`` = (cuid, identity)) in one
    transaction."""

    changes: tuple[Change, ...]
    bind: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class KeepConfig:
    """Store a client's session configuration (and bind its cuid) in one transaction."""

    cuid: str
    identity: str
    sid: int
    body: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ForgetConfig:
    """Remove a client's stored session configuration (RFC 9132 §4.5.4)."""

    cuid: str
    identity: str


Keep = KeepChanges | KeepConfig | ForgetConfig


@dataclass(frozen=True, slots=True)
class Reply:
    """The response to send, once ``keep`` (if any) is durably stored (None: answer nothing,
    the request is silently ignored)."""

    response: Message | None
    keep: Keep | None = None


@dataclass(frozen=True, slots=True)
class Notify:
    """Notify the observers of ``keys`` with a 2.05 carrying ``body`` (RFC 9132 §4.4.2.1)."""

    keys: tuple[Hashable, ...]
    body: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Changed:
    """A mitigation changed and was kept (for the mitigator and other listeners)."""

    change: Change


@dataclass(frozen=True, slots=True)
class SetParams:
    """Apply these CoAP transmission parameters to the link ``peer`` (RFC 9132 §4.5.2)."""

    peer: Hashable
    params: TransmissionParameters


@dataclass(frozen=True, slots=True)
class Persist:
    """Keep this (timer, mitigator or notification changes), then call
    :meth:`ServerCore.kept`; nobody waits for an answer."""

    keep: KeepChanges


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Send the server's heartbeat ``message`` (RFC 9132 §4.7, Figure 27: a Non-confirmable
    PUT of ``/.well-known/dots/hb``) on the link ``peer`` of the client ``identity``, and wait
    up to ``timeout`` ('heartbeat-interval') for its response: any response, an RST included,
    goes to :meth:`ServerCore.heartbeat_answered`; none is a missing heartbeat."""

    peer: Hashable
    identity: str
    message: Message
    timeout: float


ServerEvent = Notify | Changed | SetParams | Persist | Heartbeat


class Collision(PeerError):
    """The store found the cuid bound to another identity inside the write transaction (a
    race between two clients' first requests)."""

    def __init__(self, cuid: str) -> None:
        super().__init__(cuid)
        self.cuid = cuid


# ---------------------------------------------------------------------------------------------
# Responses


def cbor_response(code: Code, body: Mapping[str, Any] | None) -> Message:
    msg = Message(code=code)
    if body is not None:
        msg.payload = codec.to_cbor(dict(body))
        msg.add(OptionNumber.CONTENT_FORMAT, ContentFormat.DOTS_CBOR)
    return msg


def error_message(exc: SignalError) -> Message:
    """A SignalError as its response: the RFC-defined body as dots+cbor (4.09 conflict
    information, RFC 9132 §4.4.1.3; 5.03 redirection, §4.6), else a plain-text diagnostic
    payload (RFC 7252 §5.5.2, RFC 9132 §9)."""
    if exc.body is not None:
        msg = cbor_response(exc.code, exc.body)
    else:
        msg = error_response(exc.code, exc.diagnostic)
    if exc.max_age is not None:
        msg.add(OptionNumber.MAX_AGE, exc.max_age)  # RFC 7252 §5.9.3.4: when to retry
    return msg


def collision_error(cuid: str) -> Conflict:
    # RFC 9132 §4.4.1.3, Figure 11: conflict-cause 3, no status, scope or retry-timer.
    return Conflict(f"cuid {cuid!r} is already in use by another DOTS client",
                    body=conflict_body(ConflictInfo(ConflictCause.CUID_COLLISION)),
                    rule="RFC 9132 §4.4.1.1, §4.4.1.3")


def redirect_error(redirection: Redirection) -> SignalError:
    return ServiceUnavailable(f"redirected to {redirection.alt_server}",
                              body=redirect_body(redirection), max_age=redirection.ttl,
                              rule="RFC 9132 §4.6")


def heartbeat_request(peer_hb_status: bool) -> Message:
    """A heartbeat (RFC 9132 §4.7, Figure 27): PUT ``/.well-known/dots/hb``, no 'cuid',
    'cdid' or 'mid' Uri-Path, the mandatory 'peer-hb-status' as dots+cbor."""
    msg = Message(code=Code.PUT).set_path("/".join(HEARTBEAT_PATH))
    msg.payload = codec.to_cbor(build_heartbeat_body(peer_hb_status))
    msg.add(OptionNumber.CONTENT_FORMAT, ContentFormat.DOTS_CBOR)
    return msg


def _check_content_format(msg: Message) -> None:
    """RFC 9132 §9 / RFC 7252 §5.10.3: bodies are application/dots+cbor, else 4.15."""
    if msg.content_format != ContentFormat.DOTS_CBOR:
        raise SignalError(Code.UNSUPPORTED_CONTENT_FORMAT,
                          f"Content-Format must be application/dots+cbor "
                          f"({int(ContentFormat.DOTS_CBOR)}), got {msg.content_format}",
                          rule="RFC 9132 §9")


def _check_accept(msg: Message) -> None:
    """RFC 7252 §5.10.4: an Accept we cannot satisfy is 4.06."""
    accept = msg.accept
    if accept is not None and accept != ContentFormat.DOTS_CBOR:
        raise SignalError(Code.NOT_ACCEPTABLE,
                          f"only application/dots+cbor ({int(ContentFormat.DOTS_CBOR)}) "
                          f"is served, Accept was {accept}", rule="RFC 7252 §5.10.4")


def _decode(msg: Message) -> dict[str, Any]:
    _check_content_format(msg)
    try:
        return codec.from_cbor(msg.payload)
    except ModelError as exc:
        raise from_model_error(exc) from None


def config_key(cuid: str) -> Hashable:
    """What a GET of ``/config`` with Observe observes: the client's configuration
    (RFC 9132 §4.5.3: "notifications of any configuration change")."""
    return ("config", cuid)


def observe_key(message: Message) -> Hashable:
    """What a GET of ``/mitigate`` observes (RFC 9132 §4.4.2.1): one mitigation (Figure 13) or
    all of the client's (Figure 12). Never raises (called for error answers too)."""
    try:
        uri = parse_mitigate_uri(message.uri_path, method=Code.GET)
    except SignalError:
        return ("mitigate-invalid", message.path_str)
    if uri.mid is None:
        return ("mitigate", uri.cuid)
    return ("mitigate", uri.cuid, uri.mid)


# ---------------------------------------------------------------------------------------------
# The core


class ServerCore:
    """The DOTS server's rules and state (module docstring).

    ``records``, ``bindings`` (cuid → client identity) and ``configs`` (cuid → stored
    ('sid', body)) are what the store holds at start; ``policy``: one policy for all or a
    :class:`~dotsd.signal.policy.PolicySet`; ``config_policy``: the session configuration
    bounds (§4.5); ``strict_cuid``: require the 'cuid' derived from the client's credentials
    (§4.4.1.1); ``alias_check``: whether a client created an 'alias-name'; ``mono``: the
    monotonic time at start (clients with preconfigured requests must be back within their
    allowance, §4.7).
    """

    def __init__(
        self,
        *,
        mono: float,
        policy: Policy | PolicySet = LAB,
        config_policy: ConfigPolicy | None = None,
        conflict_policy: ConflictPolicy = ConflictPolicy.ACCEPT,
        strict_cuid: bool = True,
        alias_check: AliasCheck = no_data_channel,
        records: Iterable[Mitigation] = (),
        bindings: Mapping[str, str] | None = None,
        configs: Mapping[str, tuple[int, Mapping[str, Any]]] | None = None,
    ) -> None:
        self.policies = policy if isinstance(policy, PolicySet) else PolicySet(policy)
        self.config_policy = config_policy or ConfigPolicy()
        self.conflict_policy = conflict_policy
        self.strict_cuid = strict_cuid
        self.alias_check = alias_check
        self.redirection: Redirection | None = None
        self.sessions: dict[str, ServerSession] = {}  # by client identity
        self._by_cuid: dict[str, ServerSession] = {}  # the same, by the client's derived cuid
        # (due, identity) of the sessions' heartbeat timers, a heap with stale entries skipped:
        # no request costs O(sessions) (an ISP's server holds thousands).
        self._timers: list[tuple[float, str]] = []
        self._rates = RateLimiter()  # per client identity (policy max_requests_per_second)
        self._events: deque[ServerEvent] = deque()
        self._routes: dict[tuple[str, int], Callable[[Request, float, float], Reply]] = {
            ("mitigate", Code.PUT): self._put_mitigation,
            ("mitigate", Code.GET): self._get_mitigation,
            ("mitigate", Code.DELETE): self._delete_mitigation,
            ("config", Code.PUT): self._put_config,
            ("config", Code.GET): self._get_config,
            ("config", Code.DELETE): self._delete_config,
            ("hb", Code.PUT): self._heartbeat,
        }
        self._offset = 0.0  # wall - mono at the last input: converts lifetimes to the timer
        self.reload(records, bindings or {}, configs or {})
        self._awaiting = self._awaiting_clients(mono)

    # -- state ---------------------------------------------------------------------------------

    def reload(self, records: Iterable[Mitigation], bindings: Mapping[str, str],
               configs: Mapping[str, tuple[int, Mapping[str, Any]]]) -> None:
        """The state as the store holds it (at start, and after a write failed: memory never
        holds what was not kept). RFC 9132 §4.4.1: acknowledged requests survive a restart;
        expiry is absolute, so what expired meanwhile goes at the first timer."""
        self.table = MitigationTable(self.policies.default or LAB,
                                     conflict_policy=self.conflict_policy,
                                     alias_check=self.alias_check, records=records,
                                     request_limits=self.policies.limits)
        self.bindings: dict[str, str] = dict(bindings)
        self.configs: dict[str, tuple[int, Mapping[str, Any]]] = dict(configs)

    def set_policy(self, policy: Policy | PolicySet,
                   config_policy: ConfigPolicy | None = None) -> None:
        """A new operator policy for the requests to come (what was accepted stays); a new
        session configuration policy applies to sessions started from now on."""
        self.policies = policy if isinstance(policy, PolicySet) else PolicySet(policy)
        self.table.policy = self.policies.default or LAB
        self.table.request_limits = self.policies.limits
        if config_policy is not None:
            self.config_policy = config_policy

    def redirect(self, redirection: Redirection | None) -> Message | None:
        """Send clients to an alternate server (None: stop); returns the 5.03 that every
        request, and every observer, gets meanwhile (RFC 9132 §4.6)."""
        self.redirection = redirection
        return None if redirection is None else error_message(redirect_error(redirection))

    # -- requests (RFC 9132 §4.2 Table 1) ------------------------------------------------------

    def handle(self, resource: str, req: Request, mono: float, wall: float) -> Reply:
        """Answer a request on ``resource`` ("mitigate", "config" or "hb"); every failure is
        its CoAP response (RFC 9132 §9)."""
        self._offset = wall - mono
        try:
            handler = self._routes.get((resource, req.message.code))
            if handler is None:
                raise SignalError(Code.METHOD_NOT_ALLOWED,
                                  f"method not allowed on {req.message.path_str}")
            if self.redirection is not None:
                raise redirect_error(self.redirection)
            return handler(req, mono, wall)
        except SignalError as exc:
            log.info("%s %s → %s", req.message.path_str, exc.rule or "", exc)
            return Reply(error_message(exc))
        except ModelError as exc:
            return Reply(error_message(from_model_error(exc)))

    def _put_mitigation(self, req: Request, mono: float, wall: float) -> Reply:
        msg = req.message
        uri = parse_mitigate_uri(msg.uri_path, msg.uri_query, method=Code.PUT)
        ident, policy = self._authorize(req, mono)
        self._check_cuid(ident, uri.cuid, Code.PUT)
        body = _decode(msg)
        self._heard(ident, req, mono)
        assert uri.mid is not None  # parse_mitigate_uri: mandatory for PUT (§4.4.1.3)
        # RFC 9132 §4.4.3: an efficacy update carries an empty If-Match Option. RFC 7252
        # §5.10.8: no ETag is ever assigned here, so an If-Match naming one cannot match, and
        # If-None-Match fails when the mitigation exists: 4.12, nothing done.
        conditions = msg.opts(OptionNumber.IF_MATCH)
        if_match = b"" in conditions
        if (conditions and not if_match) or (msg.opt(OptionNumber.IF_NONE_MATCH) is not None
                                             and self.table.lookup(uri.cuid, uri.mid)
                                             is not None):
            raise SignalError(Code.PRECONDITION_FAILED,
                              "precondition failed (If-Match / If-None-Match)")
        outcome = self.table.put(uri.cuid, uri.mid, None, body, wall, identity=ident.identity,
                                 if_match=if_match, policy=policy)
        if isinstance(outcome, Ignored):
            # RFC 9132 §4.4.3: an efficacy update (If-Match) for a 'mid' the server does not
            # have "is silently ignored": no answer (a CON one gets its empty ACK).
            log.info("%s ignored: %s", msg.path_str, outcome.reason)
            return Reply(None)
        self.bindings.setdefault(uri.cuid, ident.identity)  # kept with the changes
        return Reply(cbor_response(outcome.code, outcome.body),
                     KeepChanges(tuple(outcome.changes), (uri.cuid, ident.identity)))

    def _get_mitigation(self, req: Request, mono: float, wall: float) -> Reply:
        msg = req.message
        uri = parse_mitigate_uri(msg.uri_path, msg.uri_query, method=Code.GET)
        ident = self._authorize(req, mono)[0]
        self._check_cuid(ident, uri.cuid, Code.GET)
        _check_accept(msg)
        self._heard(ident, req, mono)
        outcome = self.table.get(uri.cuid, uri.mid, wall, identity=ident.identity,
                                 content=uri.content)
        return Reply(cbor_response(outcome.code, outcome.body))

    def _delete_mitigation(self, req: Request, mono: float, wall: float) -> Reply:
        msg = req.message
        uri = parse_mitigate_uri(msg.uri_path, msg.uri_query, method=Code.DELETE)
        ident = self._authorize(req, mono)[0]
        self._check_cuid(ident, uri.cuid, Code.DELETE)
        self._heard(ident, req, mono)
        assert uri.mid is not None  # parse_mitigate_uri: mandatory for DELETE (§4.4.4)
        outcome = self.table.delete(uri.cuid, uri.mid, wall, identity=ident.identity)
        response = Message(code=outcome.code)  # RFC 9132 §4.4.4: 2.02 without payload
        return Reply(response, KeepChanges(tuple(outcome.changes)) if outcome.changes
                     else None)

    def _config_session(self, req: Request, mono: float) -> tuple[int | None, ServerSession]:
        sid = parse_config_path(req.message.uri_path)
        ident = self._authorize(req, mono)[0]
        return sid, self._heard(ident, req, mono)

    def _get_config(self, req: Request, mono: float, wall: float) -> Reply:
        _check_accept(req.message)
        sid, session = self._config_session(req, mono)
        body = session.config.get(sid)  # RFC 9132 §4.5.1 discovery / §4.5.2 with 'sid'
        msg = cbor_response(Code.CONTENT, body)
        msg.add(OptionNumber.MAX_AGE, self.config_policy.response_max_age)  # RFC 9132 §4.5.3
        return Reply(msg)

    def _put_config(self, req: Request, mono: float, wall: float) -> Reply:
        body = _decode(req.message)
        sid, session = self._config_session(req, mono)
        outcome = session.config.put(sid, body)
        client = session.client
        if self.bindings.get(client.cuid, client.identity) != client.identity:
            raise collision_error(client.cuid)
        self.bindings.setdefault(client.cuid, client.identity)
        self.configs[client.cuid] = (outcome.sid, body)
        return Reply(Message(code=outcome.code),
                     KeepConfig(client.cuid, client.identity, outcome.sid, body))

    def _delete_config(self, req: Request, mono: float, wall: float) -> Reply:
        sid, session = self._config_session(req, mono)
        code = session.config.delete(sid)  # RFC 9132 §4.5.4: back to the defaults
        self.configs.pop(session.client.cuid, None)
        return Reply(Message(code=code),
                     ForgetConfig(session.client.cuid, session.client.identity))

    def _heartbeat(self, req: Request, mono: float, wall: float) -> Reply:
        check_heartbeat_path(req.message.uri_path)
        if not req.message.payload:  # RFC 9132 §4.7: 'peer-hb-status' is mandatory
            raise SignalError(Code.BAD_REQUEST, "a heartbeat carries 'peer-hb-status' "
                              "(RFC 9132 §4.7, Figure 27)", rule="RFC 9132 §4.7")
        status = parse_heartbeat_body(_decode(req.message))
        ident = self._authorize(req, mono)[0]
        session = self._session(ident, req, mono)
        session.peer_heartbeat(mono, status)
        self._drain(session)  # 'false': our next heartbeat goes at once (§4.7)
        return Reply(Message(code=Code.CHANGED))  # RFC 9132 §4.7, Figure 28

    def heartbeat_answered(self, identity: str, link: Hashable, mono: float,
                           sent_at: float | None = None) -> None:
        """A response to a :class:`Heartbeat` arrived on ``link``: whatever its code (a
        client that serves no ``/hb`` answers 4.04, or RST), it proves the client alive
        (RFC 9132 §4.7 counts heartbeats without any response)."""
        session = self.sessions.get(identity)
        if session is None or session.peer is not link:
            return  # a late answer from a link the session has left
        session.heartbeat_answered(mono, sent_at)
        self._drain(session)

    # -- after a keep --------------------------------------------------------------------------

    def kept(self, keep: Keep, mono: float, wall: float) -> None:
        """``keep`` is durably stored: publish it (events out of :meth:`next_event`)."""
        self._offset = wall - mono
        if isinstance(keep, KeepChanges):
            self._publish(keep.changes, mono, wall)
        else:  # a configuration change applies once kept (RFC 9132 §4.5.2)
            session = self.sessions.get(keep.identity)
            if session is not None:
                self._apply_session_params(session, mono, force=True)
                # RFC 9132 §4.5.3: observers of the configuration are told of any change.
                self._events.append(Notify((config_key(keep.cuid),), session.config.get()))

    def lost(self, keep: Keep) -> None:
        """``keep`` could not be stored: the agent reloads the state from the store; a
        session whose configuration was not kept is rebuilt at its next request."""
        if not isinstance(keep, KeepChanges):
            self._forget_session(keep.identity)

    def _publish(self, changes: Iterable[Change], mono: float, wall: float) -> None:
        """Notify observers (RFC 9132 §4.4.2.1), tell the mitigator, switch sessions between
        idle and mitigating configuration (§4.5)."""
        touched: set[str] = set()
        follow_up: list[Change] = []
        for change in changes:
            m = change.mitigation
            touched.add(m.cuid)
            if m.owner is not None:
                touched.add(m.owner)
            # RFC 9132 §4.4.2.1: status changes, and conflict information appearing or going
            # (also for the other client's request) and mitigator counters; a refresh /
            # efficacy update is answered to the client itself (2.04) only.
            if change.before is not m.status or change.removed or change.reason in (
                    Reason.CONFLICT, Reason.CONFLICT_RESOLVED, Reason.MITIGATOR):
                self._notify(m, wall)
                if m.preconfigured and m.status in _REPEATED and not change.removed:
                    follow_up.extend(self._repeat_notifications(m, wall))
            self._events.append(Changed(change))
        sessions = {id(s): s for key in touched
                    for s in (self.sessions.get(key), self._by_cuid.get(key)) if s is not None}
        for session in sessions.values():
            self._apply_session_params(session, mono)
        self._keep_later(follow_up)

    def _repeat_notifications(self, m: Mitigation, wall: float) -> list[Change]:
        """RFC 9132 §4.4.2 Table 3: for a preconfigured request, status 3 and 7 are
        "transmitted four times and then transition to '8'". The notification was sent once;
        it is repeated (Non-confirmable, so repetition is what makes it reach the client)
        until the table re-arms the request. Counted even without observers, so that the
        request always returns to 8 and a later signal loss triggers it again."""
        for _ in range(PRECONFIGURED_REPEATS):
            changes = self.table.on_notified(m.cuid, m.mid, wall)
            if changes:
                return changes
            self._notify(m, wall)
        return []

    def _notify(self, m: Mitigation, wall: float) -> None:
        self._events.append(Notify((("mitigate", m.cuid, m.mid), ("mitigate", m.cuid)),
                                   self.table.status_body(m, wall)))

    def _keep_later(self, changes: Iterable[Change]) -> None:
        changes = tuple(changes)
        if changes:
            self._events.append(Persist(KeepChanges(changes)))

    # -- the mitigator (RFC 9132 §4.4.1.1) -----------------------------------------------------

    def report(self, cuid: str, mid: int, event: MitigationEvent, wall: float, *,
               counters: Counters | None = None) -> list[Change]:
        """Mitigator feedback; the changes are kept, then published (:class:`Persist`)."""
        changes = self.table.mitigator_report(cuid, mid, event, wall, counters=counters)
        self._keep_later(changes)
        return changes

    def report_counters(self, cuid: str, mid: int, counters: Counters) -> list[Change]:
        """The mitigator's counters alone for a running mitigation (§4.4.2)."""
        changes = self.table.update_counters(cuid, mid, counters)
        self._keep_later(changes)
        return changes

    def report_conflict(self, cuid: str, mid: int, info: ConflictInfo, wall: float
                        ) -> list[Change]:
        """A conflict found after acceptance (status 7 when inactive, §4.4.2.1)."""
        changes = self.table.report_conflict(cuid, mid, info, wall)
        self._keep_later(changes)
        return changes

    # -- identity / cuid -----------------------------------------------------------------------

    def _authorize(self, req: Request, mono: float) -> tuple[ClientIdentity, Policy]:
        """RFC 9132 §8: the DOTS client is authenticated by the (D)TLS layer, else 4.01; a
        client the policy does not admit is 4.01 too (§9); one over its rate 5.03."""
        ident = client_identity(req.peer)
        if ident is None:
            raise Unauthorized("the DOTS signal channel requires an authenticated (D)TLS "
                               "session", rule="RFC 9132 §8")
        policy = self.policies.for_client(ident, req.peer)
        if policy is None:
            raise Unauthorized("this DOTS client is not authorized by the server's policy "
                               f"(cuid {ident.cuid})", rule="RFC 9132 §9")
        wait = self._rates.check(ident.identity, policy.max_requests_per_second, mono)
        if wait is not None:
            raise ServiceUnavailable(
                f"too many requests from this DOTS client (at most "
                f"{policy.max_requests_per_second:g} a second); retry in {wait} s",
                max_age=wait, rule="RFC 9132 §4.4.1.3, §9")
        return ident, policy

    def _check_cuid(self, ident: ClientIdentity, cuid: str, method: Code) -> None:
        """The client may only use its own 'cuid' (module docstring)."""
        if self.strict_cuid and cuid != ident.cuid:
            if method == Code.PUT:  # RFC 9132 §4.4.1.3, Figure 11: a 'cuid' not its own
                raise collision_error(cuid)
            raise Unauthorized(f"cuid {cuid!r} is not the one derived from the client's "
                               f"credentials ({ident.cuid})", rule="RFC 9132 §4.4.1.1")
        owner = self.bindings.get(cuid)
        if owner is not None and owner != ident.identity:
            if method == Code.PUT:
                raise collision_error(cuid)
            raise Unauthorized(f"cuid {cuid!r} belongs to another DOTS client",
                               rule="RFC 9132 §4.1")

    # -- sessions (RFC 9132 §4.5, §4.7) --------------------------------------------------------

    def _session(self, ident: ClientIdentity, req: Request, mono: float) -> ServerSession:
        """The session of the client (created at its first request; §4.5: the session
        configuration stored for it is reapplied)."""
        link = req.link
        session = self.sessions.get(ident.identity)
        if session is not None:
            if session.peer is not link:  # a new (D)TLS session of the same client
                session.mitigating = self._mitigating(ident)
                session.moved(link, mono)
                self._drain(session)
            return session
        reliable = req.peer.reliable
        session = ServerSession(ident, self._session_config(ident.cuid, reliable), link,
                                mono, reliable=reliable, mitigating=self._mitigating(ident))
        self.sessions[ident.identity] = session
        self._by_cuid[ident.cuid] = session
        self._drain(session)
        return session

    def _forget_session(self, identity: str) -> None:
        session = self.sessions.pop(identity, None)
        if session is not None:
            self._by_cuid.pop(session.client.cuid, None)

    def _heard(self, ident: ClientIdentity, req: Request, mono: float) -> ServerSession:
        """Any request of the client is traffic for its heartbeat monitor (RFC 9132 §4.7)."""
        session = self._session(ident, req, mono)
        session.heard(mono)
        self._arm(session)
        return session

    def _drain(self, session: ServerSession) -> None:
        """Act on the session's events, then re-arm its timer."""
        cuid = session.client.cuid
        while (event := session.next_event()) is not None:
            if isinstance(event, ParamsChanged):
                self._events.append(SetParams(session.peer, event.params))  # RFC 9132 §4.5.2
            elif isinstance(event, SendHeartbeat):  # RFC 9132 §4.7, Figure 27
                self._events.append(Heartbeat(session.peer, session.client.identity,
                                              heartbeat_request(event.peer_hb_status),
                                              session.monitor.interval))
            elif isinstance(event, InboundSaturation):
                self._saturation(session, event)
            elif SessionState.DEGRADED in (event.new, event.old):  # RFC 9132 §4.7
                log.info("cuid=%s: %s", cuid, event.reason)
        self._arm(session)

    def _saturation(self, session: ServerSession, event: InboundSaturation) -> None:
        """RFC 9132 §4.7: the client's inbound link looks saturated: "the DOTS client is
        under attack"; without a mitigation request it "has not detected the attack", with
        one "the applied DDoS mitigation actions are not yet effectively handling the DDoS
        attack volume". The session is kept and used."""
        cuid = session.client.cuid
        if not event.saturated:
            log.info("cuid=%s: inbound link no longer looks saturated: %s", cuid,
                     event.reason)
            return
        if self._mitigating(session.client):
            meaning = "its mitigation is not yet handling the attack volume"
        else:
            meaning = "it has not requested mitigation (attack not detected?)"
        log.warning("cuid=%s: the DOTS client looks under attack, its inbound link "
                    "saturated (RFC 9132 §4.7): %s; %s; the session is kept", cuid,
                    event.reason, meaning)

    def _session_config(self, cuid: str, reliable: bool) -> SessionConfig:
        """The client's session configuration: the stored one, else the defaults (§4.5)."""
        config = SessionConfig(self.config_policy, reliable=reliable)
        stored = self.configs.get(cuid)
        if stored is not None:
            try:
                config.put(stored[0], stored[1])
            except ConfigError as exc:  # the policy changed since: back to the defaults
                log.warning("stored session configuration of %s not applied: %s", cuid, exc)
        return config

    def _awaiting_clients(self, mono: float) -> dict[str, float]:
        """After a restart, the clients with preconfigured mitigations (status 8) have no
        session yet. A client that does not come back within its 'missing-hb-allowed' x
        'heartbeat-interval' has lost its session as surely as one whose heartbeats stopped
        (RFC 9132 §4.7): then its preconfigured mitigations are triggered (§4.4.1.3)."""
        waiting: dict[str, float] = {}
        for m in self.table:
            if m.preconfigured and m.status is Status.ATTACK_MITIGATION_SIGNAL_LOSS \
                    and m.cuid not in waiting:
                idle = self._session_config(m.cuid, reliable=False).effective(False)
                waiting[m.cuid] = mono + idle.heartbeat_interval * idle.missing_hb_allowed
        return waiting

    def _mitigating(self, ident: ClientIdentity) -> bool:
        """Whether the client has an active mitigation (its own 'cuid', or another 'cuid'
        it owns when ``strict_cuid`` is off)."""
        if any(m.is_active for m in self.table.of_client(ident.cuid)):
            return True
        if self.strict_cuid:  # its records all carry its own cuid
            return False
        return any(m.is_active for m in self.table if m.owner == ident.identity)

    def _apply_session_params(self, session: ServerSession, mono: float,
                              force: bool = False) -> None:
        """RFC 9132 §4.5: 'mitigating-config' while the client has an active mitigation,
        'idle-config' otherwise, switched automatically (``force``: the configuration itself
        changed)."""
        mitigating = self._mitigating(session.client)
        if force:
            session.mitigating = mitigating
            session.reconfigure(mono)
        else:
            session.set_mitigating(mono, mitigating)
        self._drain(session)

    def _arm(self, session: ServerSession) -> None:
        """Put the session's heartbeat timer in the heap (after any call on its monitor)."""
        due = session.get_timer()
        if due is None or due == session.armed:
            return
        session.armed = due
        heapq.heappush(self._timers, (due, session.client.identity))
        if len(self._timers) > 2 * len(self.sessions) + 64:
            # Every heartbeat moves a timer and leaves a stale entry: compact.
            self._timers = [(s.armed, key) for key, s in self.sessions.items()
                            if s.armed is not None]
            heapq.heapify(self._timers)

    def _timer_stands(self, due: float, key: str) -> bool:
        session = self.sessions.get(key)
        return session is not None and session.armed == due

    # -- the one timer -------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` is due next, on the monotonic clock; lifetimes (wall
        clock) are converted with the offset of the last input."""
        while self._timers and not self._timer_stands(*self._timers[0]):
            heapq.heappop(self._timers)
        expiry = self.table.get_timer()
        if expiry is not None:
            expiry -= self._offset
        times = [t for t in (expiry, *self._awaiting.values(),
                             self._timers[0][0] if self._timers else None)
                 if t is not None]
        return min(times) if times else None

    def handle_timer(self, mono: float, wall: float) -> list[Change]:
        """Do what is due: lifetime and active-but-terminating expiry at ``wall``
        (RFC 9132 §4.4.1.1, §4.4.4), heartbeat timers at ``mono`` (§4.7: a step of the wall
        clock loses no session). The changes are returned and queued to be kept
        (:class:`Persist`)."""
        self._offset = wall - mono
        self.table.handle_timer(wall)
        done = list(iter(self.table.next_event, None))
        self._keep_later(done)
        if len(self._rates) > len(self.sessions) + _MAX_RATES_SLACK:
            self._rates.forget_idle(mono)
        for cuid, deadline in list(self._awaiting.items()):
            if cuid in self._by_cuid:
                del self._awaiting[cuid]  # it came back: its own session watches it now
            elif mono >= deadline:
                del self._awaiting[cuid]
                log.info("cuid=%s did not come back after the restart: session lost", cuid)
                lost = self.table.on_session_lost(cuid, wall)
                self._keep_later(lost)
                done.extend(lost)
        due_now: dict[str, None] = {}  # once each: a timer moved away and back stands twice
        while self._timers and self._timers[0][0] <= mono:
            due, key = heapq.heappop(self._timers)
            if self._timer_stands(due, key):
                due_now[key] = None
        for key in due_now:
            session = self.sessions[key]
            session.armed = None
            session.handle_timer(mono)
            if session.lost:
                # RFC 9132 §4.4.1.3 / §4.7: preconfigured mitigations are triggered.
                cuid = session.client.cuid
                log.info("signal channel session lost cuid=%s: %s", cuid,
                         session.lifecycle_reason)
                self._forget_session(key)
                lost = self.table.on_session_lost(cuid, wall)
                self._keep_later(lost)
                done.extend(lost)
            else:
                self._drain(session)
        return done

    def next_event(self) -> ServerEvent | None:
        return self._events.popleft() if self._events else None
