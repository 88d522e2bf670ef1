"""The DOTS signal channel server (RFC 9132): the sans-IO rules of ``dotsd.signal`` on a
:class:`~dotsd.node.CoapNode`, with durable state in a ``dotsd.store`` store.

    server = SignalServer(store=SqliteStore.open(state_dir), on_change=bridge.on_change)
    await serve_dtls(server.node, "::", 4646, context)
    server.start()          # lifetime expiry / heartbeat timer task

Resources (RFC 9132 §4.2 Table 1):

* ``/.well-known/dots/mitigate/...`` (prefix route): PUT, GET (with Observe), DELETE
  (RFC 9132 §4.4), on :class:`~dotsd.signal.mitigation.MitigationTable`;
* ``/.well-known/dots/config[/sid=N]``: GET, PUT, DELETE (RFC 9132 §4.5);
* ``/.well-known/dots/hb``: heartbeat PUT (RFC 9132 §4.7).

Rules applied here (the rest lives in the sans-IO modules):

* the client must be authenticated (RFC 9132 §8: mutual (D)TLS); its identity and the 'cuid'
  it must use come from :mod:`dotsd.signal.identity`; a request from an unauthenticated peer,
  or (``strict_cuid``) naming a 'cuid' that is not the one derived from the client's
  credentials, is 4.01 (RFC 9132 §9: "the DOTS client is not authorized");
* the first PUT binds a 'cuid' to the client identity in the store; a PUT with a 'cuid' bound
  to another identity is a cuid collision: 4.09 with conflict-cause 3 (RFC 9132 §4.4.1.3,
  Figure 11); a GET / DELETE of it is 4.01 (RFC 9132 §4.1: "A DOTS client is entitled to
  access only the resources it creates");
* "nothing acknowledged is lost": every change is written to the store in one transaction
  before the response is sent (RFC 9132 §4.4.1: a 2.01 means the request is installed); if
  the write fails the in-memory table is reloaded from the store and the answer is 5.00;
* request bodies must be ``application/dots+cbor`` (Content-Format 271): anything else is
  4.15 (RFC 9132 §9, RFC 7252 §5.10.3); an Accept other than 271 is 4.06 (RFC 7252 §5.10.4);
* 'cdid' Uri-Paths are ignored: "DOTS servers MUST ignore 'cdid' attributes that are directly
  supplied by source DOTS clients" (RFC 9132 §4.4.1.2); no gateway is trusted here;
* every status change is notified to the observers of the client's mitigations (RFC 9132
  §4.4.2.1) — of the mitigation (key ``("mitigate", cuid, mid)``) and of all the client's
  mitigations (key ``("mitigate", cuid)``), each notification carrying the changed
  mitigation's status entry; for a preconfigured request, status 3 and 7 are sent four times
  and the request returns to 8 (RFC 9132 §4.4.2 Table 3);
* a heartbeat monitor per client session (RFC 9132 §4.7, server role: only the absence of any
  traffic counts); on session loss the client's preconfigured requests are triggered
  (RFC 9132 §4.4.1.3);
* times are wall-clock epoch seconds (``clock``, default :func:`time.time`): expiry is an
  absolute instant that keeps counting across restarts (RFC 9132 §4.4.1.1 lifetime).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from typing import Any, Final

from dotsd.agents.storewriter import StoreWriter
from dotsd.coap.message import Message, error_response
from dotsd.coap.numbers import Code, ContentFormat, OptionNumber
from dotsd.coap.params import TransmissionParameters, dots_defaults
from dotsd.coap.site import IncomingRequest, Resource, Site
from dotsd.errors import PeerError
from dotsd.link import Link
from dotsd.model import codec, yang
from dotsd.model.errors import ModelError
from dotsd.node import CoapNode
from dotsd.signal.config import (
    CONFIG_PATH,
    ConfigError,
    ConfigPolicy,
    SessionConfig,
    parse_config_path,
)
from dotsd.signal.errors import (
    Conflict,
    ServiceUnavailable,
    SignalError,
    Unauthorized,
    from_model_error,
)
from dotsd.signal.heartbeat import (
    HEARTBEAT_PATH,
    check_heartbeat_path,
    parse_heartbeat_body,
)
from dotsd.signal.identity import ClientIdentity, client_identity
from dotsd.signal.lifecycle import PRECONFIGURED_REPEATS, ConflictCause, MitigationEvent, Status
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
from dotsd.signal.server_session import ParamsChanged, ServerSession
from dotsd.signal.session import SessionState
from dotsd.signal.uri import MITIGATE_PATH, parse_mitigate_uri
from dotsd.store import base as store_base
from dotsd.store.base import Store, StoreError

__all__ = [
    "ChangeHook",
    "ConfigResource",
    "HeartbeatResource",
    "MitigateResource",
    "SignalServer",
    "mitigation_from_record",
    "mitigation_record",
    "no_data_channel",
]

log = logging.getLogger("dotsd.signal.server")

ChangeHook = Callable[[Change], None]
"""Called for every accepted / changed / withdrawn / expired mitigation (the mitigator)."""

_REPEATED: Final = frozenset({Status.ATTACK_STOPPED, Status.ATTACK_MITIGATION_WITHDRAWN})
_EXTRA_KEY: Final = "signal"  # store record 'extra': the full signal-layer record
_MAX_SLEEP: Final = 30.0  # re-check at least this often (wall clock may jump)


def no_data_channel(cuid: str, cdid: str | None, alias: str) -> bool:
    """The alias check of a server without a DOTS data channel (RFC 8783): no client created
    any alias, so a request naming one is refused with 4.00 ("If the aliases were not created
    by the DOTS client, the DOTS server MUST return 4.00", RFC 9132 §4.4.1.3)."""
    return False


# ---------------------------------------------------------------------------------------------
# Store records


def mitigation_record(m: Mitigation, now: float) -> store_base.MitigationRecord:
    """The store record of a signal-layer mitigation (the whole record kept in ``extra``)."""
    return store_base.MitigationRecord(
        cuid=m.cuid,
        mid=m.mid,
        scope=m.scope.to_json(),
        status=int(m.status),
        lifetime=m.lifetime,
        expires_at=m.expires_at,
        trigger_mitigation=m.scope.trigger_mitigation,
        cdid=m.cdid,
        created=m.created_at,
        updated=now,
        extra={_EXTRA_KEY: m.to_dict()},
    )


def mitigation_from_record(record: store_base.MitigationRecord) -> Mitigation:
    """The signal-layer mitigation of a store record (also one written by other tools, with
    no ``extra``: then rebuilt from the plain columns)."""
    data = record.extra.get(_EXTRA_KEY)
    if isinstance(data, dict):
        return Mitigation.from_dict(data)
    return Mitigation.from_dict({
        "cuid": record.cuid,
        "mid": record.mid,
        "cdid": record.cdid,
        "scope": {**record.scope, "trigger-mitigation": record.trigger_mitigation},
        "lifetime": record.lifetime,
        "expires_at": record.expires_at,
        "status": record.status,
        "created_at": record.created,
        "mitigation_start": record.created,
    })


# ---------------------------------------------------------------------------------------------
# Responses


def _cbor_response(code: Code, body: dict[str, Any] | None) -> Message:
    msg = Message(code=code)
    if body is not None:
        msg.payload = codec.to_cbor(body)
        msg.add(OptionNumber.CONTENT_FORMAT, ContentFormat.DOTS_CBOR)
    return msg


def _error(exc: SignalError) -> Message:
    """A SignalError as its response: the RFC-defined body as dots+cbor (4.09 conflict
    information, RFC 9132 §4.4.1.3; 5.03 redirection, §4.6), else a plain-text diagnostic
    payload (RFC 7252 §5.5.2, RFC 9132 §9)."""
    if exc.body is not None:
        msg = _cbor_response(exc.code, exc.body)
    else:
        msg = error_response(exc.code, exc.diagnostic)
    if exc.max_age is not None:
        msg.add(OptionNumber.MAX_AGE, exc.max_age)  # RFC 7252 §5.9.3.4: when to retry
    return msg


def _model_error(exc: ModelError) -> Message:
    return _error(from_model_error(exc))


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


# ---------------------------------------------------------------------------------------------
# Sessions


# ---------------------------------------------------------------------------------------------
# The server


class SignalServer:
    """RFC 9132 server side on a :class:`CoapNode` (see the module docstring).

    ``store``: durable state (None: memory only, for tests); ``policy``: which targets and
    lifetimes are allowed, one policy for all or a :class:`~dotsd.signal.policy.PolicySet`
    with one per client (default :data:`~dotsd.signal.policy.LAB`); ``config_policy``: the
    session configuration bounds (RFC 9132 §4.5); ``on_change``: a first change listener
    (more with :meth:`add_listener`);
    ``strict_cuid``: require the 'cuid' derived from the client's credentials (RFC 9132
    §4.4.1.1); ``alias_check``: whether a client created an 'alias-name' (default: no data
    channel, none did); ``clock``: wall-clock epoch seconds. ``node``: an existing node to add the
    resources to (default: a new one with the DOTS transmission defaults, RFC 9132 §4.5.2).
    """

    def __init__(
        self,
        *,
        store: Store | None = None,
        policy: Policy | PolicySet = LAB,
        config_policy: ConfigPolicy | None = None,
        conflict_policy: ConflictPolicy = ConflictPolicy.ACCEPT,
        on_change: ChangeHook | None = None,
        strict_cuid: bool = True,
        alias_check: AliasCheck = no_data_channel,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        node: CoapNode | None = None,
        writer: StoreWriter | None = None,
    ) -> None:
        self.store = store  # reads on the loop; writes here too unless a writer is given
        self.writer = writer
        self._writes: set[asyncio.Task[None]] = set()
        self.policies = policy if isinstance(policy, PolicySet) else PolicySet(policy)
        self.config_policy = config_policy or ConfigPolicy()
        self.conflict_policy = conflict_policy
        self._listeners: list[ChangeHook] = [] if on_change is None else [on_change]
        self.strict_cuid = strict_cuid
        self.alias_check = alias_check
        self.clock = clock  # wall: mitigation lifetimes and times on the wire only
        self.monotonic = monotonic  # sessions and heartbeats (RFC 9132 §4.7): NTP cannot step it
        self.node = node if node is not None else CoapNode(Site(), params=dots_defaults())
        self.site = self.node.site
        self.site.add("/" + "/".join(MITIGATE_PATH), MitigateResource(self), prefix=True)
        self.site.add("/" + "/".join(CONFIG_PATH), ConfigResource(self), prefix=True)
        self.site.add("/" + "/".join(HEARTBEAT_PATH), HeartbeatResource(self), prefix=True)
        self.sessions: dict[str, ServerSession] = {}  # by client identity
        self._by_cuid: dict[str, ServerSession] = {}  # the same, by the client's derived cuid
        # (due, identity) of the sessions' heartbeat timers, a heap with stale entries skipped:
        # no request costs O(sessions) (an ISP's server holds thousands).
        self._timers: list[tuple[float, str]] = []
        self._rates = RateLimiter()  # per client identity (policy max_requests_per_second)
        self.table = self._load_table()
        self._awaiting = self._awaiting_clients()
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self.redirection: Redirection | None = None
        # The YANG model is compiled now, not by the first mitigation request (~0.2 s, which
        # the first client under attack would wait for).
        yang.validator()

    def add_listener(self, listener: ChangeHook) -> None:
        """Call ``listener`` with every accepted / changed / withdrawn / expired mitigation,
        after it was stored (the mitigator bridge, a progress display, ...)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: ChangeHook) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def set_policy(self, policy: Policy | PolicySet,
                   config_policy: ConfigPolicy | None = None) -> None:
        """A new operator policy for the requests to come (what was accepted stays); a new
        session configuration policy applies to sessions started from now on."""
        self.policies = policy if isinstance(policy, PolicySet) else PolicySet(policy)
        self.table.policy = self.policies.default or LAB
        if config_policy is not None:
            self.config_policy = config_policy

    # -- redirection (RFC 9132 §4.6) ------------------------------------------------------

    def redirect(self, redirection: Redirection | None) -> int:
        """Send clients to an alternate server (None: stop). Every request is then answered
        5.03 with the 'redirected-signal' body and the TTL as Max-Age, and every observer gets
        it as a "unidirectional notification" (which ends its observation, RFC 7641 §3.2).
        Returns how many observations were notified."""
        self.redirection = redirection
        if redirection is None:
            return 0
        log.warning("redirecting DOTS clients to %s (TTL %d s)", redirection.alt_server,
                    redirection.ttl)
        response = _error(_redirect_error(redirection))

        def make(peer: Hashable, request: Message) -> Message:
            return response

        return sum(self.node.notify(key, make) for key in self.node.endpoint.observed_keys()
                   if isinstance(key, tuple) and key[:1] == ("mitigate",))

    # -- table and store --------------------------------------------------------------------

    def _new_table(self, records: Iterable[Mitigation] = ()) -> MitigationTable:
        return MitigationTable(self.policies.default or LAB, conflict_policy=self.conflict_policy,
                               alias_check=self.alias_check, records=records)

    def _load_table(self) -> MitigationTable:
        """RFC 9132 §4.4.1: acknowledged requests survive a restart; expiry is absolute, so
        what expired while the server was down goes at the first :meth:`handle_timer`."""
        if self.store is None:
            return self._new_table()
        return self._new_table(mitigation_from_record(r) for r in self.store.all_mitigations())

    def _work(self, changes: Iterable[Change], now: float, bind: ClientIdentity | None = None,
              cuid: str | None = None) -> Callable[[Store], None]:
        """The store writes of ``changes`` (and the binding of ``cuid``) as one unit of work.
        The records are made now, on the loop: the unit may run later, in the writer."""
        records = [(c.mitigation.cuid, c.mitigation.mid,
                    None if c.removed else mitigation_record(c.mitigation, now))
                   for c in changes]

        def work(store: Store) -> None:
            if bind is not None and cuid is not None:
                other = store.bind_cuid(cuid, bind.identity, now)
                if other is not None:
                    raise _Collision(cuid)
            for key_cuid, mid, record in records:
                if record is None:
                    store.delete_mitigation(key_cuid, mid)
                else:
                    store.put_mitigation(record)

        return work

    def _persist(self, changes: Iterable[Change], now: float,
                 bind: ClientIdentity | None = None, cuid: str | None = None) -> None:
        """Write ``changes`` (and the binding of ``cuid``) in one transaction, here and now;
        on failure the table is reloaded from the store, so memory never holds what was not
        kept."""
        self._write_now(self._work(changes, now, bind, cuid))

    def _write_now(self, work: Callable[[Store], None]) -> None:
        if self.store is None:
            return
        try:
            with self.store.transaction():
                work(self.store)
        except BaseException:
            self.table = self._load_table()
            raise

    async def _write(self, work: Callable[[Store], None]) -> None:
        """One unit of work, durably, before the caller acknowledges: in the writer thread
        when there is one (the loop keeps serving meanwhile), else here. On failure, once
        the writes queued before it are done, the table is reloaded from the store."""
        writer = self.writer
        if writer is None:
            self._write_now(work)
            return
        try:
            await writer.submit(work)
        except BaseException:
            await writer.drain()
            self.table = self._load_table()
            raise

    def _publish(self, changes: Iterable[Change], now: float) -> None:
        """After the changes are kept: notify observers (RFC 9132 §4.4.2.1), call the
        mitigator hook, switch sessions between idle and mitigating configuration (§4.5)."""
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
                self._notify(m, now)
                if m.preconfigured and m.status in _REPEATED and not change.removed:
                    follow_up.extend(self._repeat_notifications(m, now))
            for listener in list(self._listeners):
                try:
                    listener(change)
                except Exception:  # a mitigator must not break the signal channel
                    log.exception("change listener failed for %s/%d", m.cuid, m.mid)
        sessions = {id(s): s for key in touched
                    for s in (self.sessions.get(key), self._by_cuid.get(key)) if s is not None}
        for session in sessions.values():
            self._apply_session_params(session)
        if self._wake is not None:
            self._wake.set()
        self._commit(follow_up, now)

    def _repeat_notifications(self, m: Mitigation, now: float) -> list[Change]:
        """RFC 9132 §4.4.2 Table 3: for a preconfigured request, status 3 and 7 are
        "transmitted four times and then transition to '8'". The notification was sent once;
        it is repeated (Non-confirmable, so repetition is what makes it reach the client)
        until the table re-arms the request. Counted even without observers, so that the
        request always returns to 8 and a later signal loss triggers it again."""
        for _ in range(PRECONFIGURED_REPEATS):
            changes = self.table.on_notified(m.cuid, m.mid, now)
            if changes:
                return changes
            self._notify(m, now)
        return []

    def _commit(self, changes: Iterable[Change], now: float) -> None:
        """Keep ``changes``, then publish them. With a writer, the write is queued and the
        changes are published once it is committed (timer and mitigator changes: nobody
        waits for an answer)."""
        changes = list(changes)
        if not changes:
            return
        if self.writer is None:
            self._persist(changes, now)
            self._publish(changes, now)
            return
        task = asyncio.get_running_loop().create_task(self._write(self._work(changes, now)))
        self._writes.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._writes.discard(task)
            if task.cancelled():
                return
            exc = task.exception()
            if exc is not None:
                log.error("store failure, %d change(s) not kept: %s", len(changes), exc)
                return
            self._publish(changes, now)

        task.add_done_callback(done)

    async def _commit_and_publish(self, changes: Sequence[Change], now: float,
                                  bind: ClientIdentity | None = None,
                                  cuid: str | None = None) -> None:
        """For a request: keep ``changes`` durably (and bind ``cuid``), then publish them;
        the answer waits for this (RFC 9132 §4.4.1: acknowledged means installed)."""
        await self._write(self._work(changes, now, bind, cuid))
        self._publish(changes, now)

    def _notify(self, m: Mitigation, now: float) -> None:
        body = self.table.status_body(m, now)

        def make(peer: Hashable, request: Message) -> Message:
            return _cbor_response(Code.CONTENT, body)

        self.node.notify(("mitigate", m.cuid, m.mid), make)
        self.node.notify(("mitigate", m.cuid), make)

    # -- identity / cuid --------------------------------------------------------------------

    def authenticate(self, req: IncomingRequest) -> ClientIdentity:
        """RFC 9132 §8: the DOTS client is authenticated by the (D)TLS layer; else 4.01. A
        client the operator's policy does not admit is 4.01 too (RFC 9132 §9)."""
        return self.authorize(req)[0]

    def authorize(self, req: IncomingRequest) -> tuple[ClientIdentity, Policy]:
        """:meth:`authenticate`, with the client's policy (its domain and limits, §10)."""
        ident = client_identity(req.peer)
        if ident is None:
            raise Unauthorized("the DOTS signal channel requires an authenticated (D)TLS "
                               "session", rule="RFC 9132 §8")
        policy = self.client_policy(ident, req)
        wait = self._rates.check(ident.identity, policy.max_requests_per_second,
                                 self.monotonic())
        if wait is not None:
            raise ServiceUnavailable(
                f"too many requests from this DOTS client (at most "
                f"{policy.max_requests_per_second:g} a second); retry in {wait} s",
                max_age=wait, rule="RFC 9132 §4.4.1.3, §9")
        return ident, policy

    def client_policy(self, ident: ClientIdentity, req: IncomingRequest) -> Policy:
        """The client's domain and limits (RFC 9132 §10); 4.01 for a client not admitted."""
        policy = self.policies.for_client(ident, req.peer)
        if policy is None:
            raise Unauthorized("this DOTS client is not authorized by the server's policy "
                               f"(cuid {ident.cuid})", rule="RFC 9132 §9")
        return policy

    def check_cuid(self, ident: ClientIdentity, cuid: str, method: Code) -> None:
        """The client may only use its own 'cuid' (module docstring)."""
        if self.strict_cuid and cuid != ident.cuid:
            raise Unauthorized(f"cuid {cuid!r} is not the one derived from the client's "
                               f"credentials ({ident.cuid})", rule="RFC 9132 §4.4.1.1")
        if self.store is None:
            owners = {m.owner for m in self.table.of_client(cuid)} - {None, ident.identity}
            bound_other = bool(owners)
        else:
            binding = self.store.get_binding(cuid)
            bound_other = binding is not None and binding.identity != ident.identity
        if bound_other:
            if method == Code.PUT:
                raise _collision(cuid)
            raise Unauthorized(f"cuid {cuid!r} belongs to another DOTS client",
                               rule="RFC 9132 §4.1")

    # -- sessions ---------------------------------------------------------------------------

    def session(self, ident: ClientIdentity, link: Link) -> ServerSession:
        """The session of the client (created at its first request; RFC 9132 §4.5: the
        session configuration stored for it is reapplied)."""
        now = self.monotonic()
        session = self.sessions.get(ident.identity)
        if session is not None:
            if session.peer is not link:  # a new (D)TLS session of the same client
                session.mitigating = self._mitigating(ident)
                session.moved(link, now)
                self._drain(session)
            return session
        session = ServerSession(ident, self._session_config(ident.cuid, link.info.reliable),
                                link, now, reliable=link.info.reliable,
                                mitigating=self._mitigating(ident))
        self.sessions[ident.identity] = session
        self._by_cuid[ident.cuid] = session
        self._drain(session)
        return session

    def _drain(self, session: ServerSession) -> None:
        """Act on the session's events, then re-arm its timer."""
        cuid = session.client.cuid
        while (event := session.next_event()) is not None:
            if isinstance(event, ParamsChanged):
                self._set_params(session.peer, event.params)  # RFC 9132 §4.5.2
            elif SessionState.DEGRADED in (event.new, event.old):  # RFC 9132 §4.7
                log.info("cuid=%s: %s", cuid, event.reason)
        self._arm(session)
        if self._wake is not None:
            self._wake.set()

    def _session_config(self, cuid: str, reliable: bool) -> SessionConfig:
        """The client's session configuration: the stored one, else the defaults (§4.5)."""
        config = SessionConfig(self.config_policy, reliable=reliable)
        stored = self.store.get_session_config(cuid) if self.store is not None else None
        if stored is not None:
            try:
                config.put(stored.sid, stored.config)
            except ConfigError as exc:  # the policy changed since: back to the defaults
                log.warning("stored session configuration of %s not applied: %s", cuid, exc)
        return config

    def _awaiting_clients(self) -> dict[str, float]:
        """After a restart, the clients with preconfigured mitigations (status 8) have no
        session yet. A client that does not come back within its 'missing-hb-allowed' x
        'heartbeat-interval' has lost its session as surely as one whose heartbeats stopped
        (RFC 9132 §4.7): then its preconfigured mitigations are triggered (§4.4.1.3)."""
        now = self.monotonic()
        waiting: dict[str, float] = {}
        for m in self.table:
            if m.preconfigured and m.status is Status.ATTACK_MITIGATION_SIGNAL_LOSS \
                    and m.cuid not in waiting:
                idle = self._session_config(m.cuid, reliable=False).effective(False)
                waiting[m.cuid] = now + idle.heartbeat_interval * idle.missing_hb_allowed
        return waiting

    def _mitigating(self, ident: ClientIdentity) -> bool:
        """Whether the client has an active mitigation (its own 'cuid', or another 'cuid'
        it owns when ``strict_cuid`` is off)."""
        if any(m.is_active for m in self.table.of_client(ident.cuid)):
            return True
        if self.strict_cuid:  # its records all carry its own cuid
            return False
        return any(m.is_active for m in self.table if m.owner == ident.identity)

    def _apply_session_params(self, session: ServerSession, force: bool = False) -> None:
        """RFC 9132 §4.5: 'mitigating-config' while the client has an active mitigation,
        'idle-config' otherwise, switched automatically (``force``: the configuration itself
        changed)."""
        now = self.monotonic()
        mitigating = self._mitigating(session.client)
        if force:
            session.mitigating = mitigating
            session.reconfigure(now)
        else:
            session.set_mitigating(now, mitigating)
        self._drain(session)

    def _set_params(self, link: Hashable, params: TransmissionParameters) -> None:
        if link in self.node.links:
            self.node.set_params(link, params)

    def _heard(self, ident: ClientIdentity, link: Link) -> ServerSession:
        """Any request of the client is traffic for its heartbeat monitor (RFC 9132 §4.7)."""
        session = self.session(ident, link)
        session.heard(self.monotonic())
        self._arm(session)
        return session

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

    # -- mitigator API ----------------------------------------------------------------------

    def report(self, cuid: str, mid: int, event: MitigationEvent, *,
               counters: Counters | None = None) -> list[Change]:
        """Mitigator feedback (RFC 9132 §4.4.1.1); persisted and notified (§4.4.2.1)."""
        now = self.clock()
        changes = self.table.mitigator_report(cuid, mid, event, now, counters=counters)
        self._commit(changes, now)
        return changes

    def report_counters(self, cuid: str, mid: int, counters: Counters) -> list[Change]:
        """The mitigator's counters alone for a running mitigation (RFC 9132 §4.4.2:
        'bytes-dropped', 'pkts-dropped', ...); persisted and notified."""
        now = self.clock()
        changes = self.table.update_counters(cuid, mid, counters)
        self._commit(changes, now)
        return changes

    def report_conflict(self, cuid: str, mid: int, info: ConflictInfo) -> list[Change]:
        """Record a conflict found after acceptance (status 7 when inactive, §4.4.2.1)."""
        now = self.clock()
        changes = self.table.report_conflict(cuid, mid, info, now)
        self._commit(changes, now)
        return changes

    # -- time -------------------------------------------------------------------------------

    def handle_timer(self, mono: float | None = None, *, wall: float | None = None
                     ) -> list[Change]:
        """Do what is due: heartbeat timers at the monotonic time ``mono`` (RFC 9132 §4.7; a
        step of the wall clock loses no session), lifetime and active-but-terminating expiry
        at the wall-clock time ``wall`` (§4.4.1.1, §4.4.4); each defaults to its clock.
        Changes are persisted and notified, and returned."""
        now = self.clock() if wall is None else wall
        mono = self.monotonic() if mono is None else mono
        self.table.handle_timer(now)
        changes = list(iter(self.table.next_event, None))
        self._commit(changes, now)
        done = list(changes)
        if len(self._rates) > len(self.sessions) + 1024:
            self._rates.forget_idle(mono)
        for cuid, deadline in list(self._awaiting.items()):
            if cuid in self._by_cuid:
                del self._awaiting[cuid]  # it came back: its own session watches it now
            elif mono >= deadline:
                del self._awaiting[cuid]
                log.info("cuid=%s did not come back after the restart: session lost", cuid)
                lost = self.table.on_session_lost(cuid, now)
                self._commit(lost, now)
                done.extend(lost)
        due_now: list[str] = []
        while self._timers and self._timers[0][0] <= mono:
            due, key = heapq.heappop(self._timers)
            if self._timer_stands(due, key):
                due_now.append(key)
        for key in due_now:
            session = self.sessions[key]
            session.armed = None
            session.handle_timer(mono)
            if session.lost:
                # RFC 9132 §4.4.1.3 / §4.7: preconfigured mitigations are triggered.
                cuid = session.client.cuid
                log.info("signal channel session lost cuid=%s: %s", cuid,
                         session.lifecycle_reason)
                del self.sessions[key]
                self._by_cuid.pop(cuid, None)
                lost = self.table.on_session_lost(cuid, now)
                self._commit(lost, now)
                done.extend(lost)
            else:
                self._drain(session)
        return done

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` is due next, on the monotonic clock; the table's wall-clock
        deadlines are converted with the clocks' current offset (the timer task also wakes
        every 30 s, so a stepped wall clock is noticed)."""
        while self._timers and not self._timer_stands(*self._timers[0]):
            heapq.heappop(self._timers)
        expiry = self.table.get_timer()
        if expiry is not None:
            expiry += self.monotonic() - self.clock()
        times = [t for t in (expiry, *self._awaiting.values(),
                             self._timers[0][0] if self._timers else None)
                 if t is not None]
        return min(times) if times else None

    def start(self) -> asyncio.Task[None]:
        """Start the timer task (call from the running loop); expired records go at once."""
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())
        return self._task

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            try:
                self.handle_timer()
            except Exception:
                log.exception("signal server timer failed")
            deadline = self.get_timer()
            delay = _MAX_SLEEP if deadline is None else deadline - self.monotonic()
            delay = min(max(delay, 0.0), _MAX_SLEEP)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def close(self) -> None:
        """Stop the timer task and wait for the queued writes (the store, the writer and
        the node are the caller's)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._writes:
            await asyncio.wait(set(self._writes), timeout=10.0)


class _Collision(PeerError):
    """The store found the cuid bound to another identity inside the write transaction."""

    def __init__(self, cuid: str) -> None:
        super().__init__(cuid)
        self.cuid = cuid


def _collision(cuid: str) -> Conflict:
    # RFC 9132 §4.4.1.3, Figure 11: conflict-cause 3, no status, scope or retry-timer.
    return Conflict(f"cuid {cuid!r} is already in use by another DOTS client",
                    body=conflict_body(ConflictInfo(ConflictCause.CUID_COLLISION)),
                    rule="RFC 9132 §4.4.1.1, §4.4.1.3")


# ---------------------------------------------------------------------------------------------
# Resources


def _redirect_error(redirection: Redirection) -> SignalError:
    return ServiceUnavailable(f"redirected to {redirection.alt_server}",
                              body=redirect_body(redirection), max_age=redirection.ttl,
                              rule="RFC 9132 §4.6")


def _failure_reply(req: IncomingRequest, exc: Exception) -> Message | None:
    """The CoAP response of an expected failure (RFC 9132 §9), or None for a bug."""
    if isinstance(exc, SignalError):
        log.info("%s %s → %s", req.message.path_str, exc.rule or "", exc)
        return _error(exc)
    if isinstance(exc, ModelError):
        return _model_error(exc)
    if isinstance(exc, _Collision):
        return _error(_collision(exc.cuid))
    if isinstance(exc, StoreError):
        log.error("store failure: %s", exc)
        return error_response(Code.INTERNAL_SERVER_ERROR,
                              "the request could not be stored; nothing was changed")
    return None


Handler = Callable[[IncomingRequest], "Message | Awaitable[Message]"]


def _guard(server: SignalServer, handler: Handler) -> Handler:
    """Every error as its CoAP response (RFC 9132 §9), also of a handler that answers once
    its write is durable (an awaitable); while the server redirects, every request is
    answered with the redirection (RFC 9132 §4.6)."""

    def run(req: IncomingRequest) -> Message | Awaitable[Message]:
        try:
            if server.redirection is not None:
                raise _redirect_error(server.redirection)
            reply = handler(req)
        except Exception as exc:
            failure = _failure_reply(req, exc)
            if failure is None:
                raise
            return failure
        if isinstance(reply, Message):
            return reply
        return _guarded(req, reply)

    return run


async def _guarded(req: IncomingRequest, reply: Awaitable[Message]) -> Message:
    try:
        return await reply
    except Exception as exc:
        failure = _failure_reply(req, exc)
        if failure is None:
            raise
        return failure


async def _after(work: Awaitable[None], response: Message) -> Message:
    """``response`` once ``work`` is done (an exception is the guard's to answer)."""
    await work
    return response


class MitigateResource(Resource):
    """``/.well-known/dots/mitigate`` (RFC 9132 §4.4)."""

    observable = True

    def __init__(self, server: SignalServer) -> None:
        self.server = server
        self.put = _guard(server, self._put)
        self.get = _guard(server, self._get)
        self.delete = _guard(server, self._delete)

    def observe_key(self, request: IncomingRequest) -> Hashable:
        # RFC 9132 §4.4.2.1: one mitigation (Figure 13) or all of the client's (Figure 12).
        # Called for error responses too (which register nothing): it must not raise.
        try:
            uri = parse_mitigate_uri(request.message.uri_path, method=Code.GET)
        except SignalError:
            return ("mitigate-invalid", request.message.path_str)
        if uri.mid is None:
            return ("mitigate", uri.cuid)
        return ("mitigate", uri.cuid, uri.mid)

    def _put(self, req: IncomingRequest) -> Message | Awaitable[Message]:
        s = self.server
        msg = req.message
        uri = parse_mitigate_uri(msg.uri_path, msg.uri_query, method=Code.PUT)
        ident, policy = s.authorize(req)
        s.check_cuid(ident, uri.cuid, Code.PUT)
        body = _decode(msg)
        s._heard(ident, req.link)
        now = s.clock()
        assert uri.mid is not None  # parse_mitigate_uri: mandatory for PUT (§4.4.1.3)
        # RFC 9132 §4.4.3: an efficacy update carries an empty If-Match Option. RFC 7252
        # §5.10.8: no ETag is ever assigned here, so an If-Match naming one cannot match, and
        # If-None-Match fails when the mitigation exists: 4.12, nothing done.
        conditions = msg.opts(OptionNumber.IF_MATCH)
        if_match = b"" in conditions
        if (conditions and not if_match) or (msg.opt(OptionNumber.IF_NONE_MATCH) is not None
                                             and s.table.lookup(uri.cuid, uri.mid) is not None):
            return error_response(Code.PRECONDITION_FAILED,
                                  "precondition failed (If-Match / If-None-Match)")
        outcome = s.table.put(uri.cuid, uri.mid, None, body, now,
                              identity=ident.identity, if_match=if_match,
                              policy=policy)
        if isinstance(outcome, Ignored):
            # RFC 9132 §4.4.3 "silently ignored"; a CoAP request still gets an answer: the
            # precondition failed (RFC 7252 §5.10.8.1).
            return error_response(Code.PRECONDITION_FAILED, outcome.reason)
        response = _cbor_response(outcome.code, outcome.body)
        if s.writer is None:
            s._persist(outcome.changes, now, bind=ident, cuid=uri.cuid)
            s._publish(outcome.changes, now)
            return response
        return _after(s._commit_and_publish(outcome.changes, now, ident, uri.cuid), response)

    def _get(self, req: IncomingRequest) -> Message:
        s = self.server
        msg = req.message
        uri = parse_mitigate_uri(msg.uri_path, msg.uri_query, method=Code.GET)
        ident = s.authenticate(req)
        s.check_cuid(ident, uri.cuid, Code.GET)
        _check_accept(msg)
        s._heard(ident, req.link)
        now = s.clock()
        outcome = s.table.get(uri.cuid, uri.mid, now, identity=ident.identity,
                              content=uri.content)
        return _cbor_response(outcome.code, outcome.body)

    def _delete(self, req: IncomingRequest) -> Message | Awaitable[Message]:
        s = self.server
        msg = req.message
        uri = parse_mitigate_uri(msg.uri_path, msg.uri_query, method=Code.DELETE)
        ident = s.authenticate(req)
        s.check_cuid(ident, uri.cuid, Code.DELETE)
        s._heard(ident, req.link)
        now = s.clock()
        assert uri.mid is not None  # parse_mitigate_uri: mandatory for DELETE (§4.4.4)
        outcome = s.table.delete(uri.cuid, uri.mid, now, identity=ident.identity)
        response = Message(code=outcome.code)  # RFC 9132 §4.4.4: 2.02 without payload
        if s.writer is None or not outcome.changes:
            s._commit(outcome.changes, now)
            return response
        return _after(s._commit_and_publish(outcome.changes, now), response)


class ConfigResource(Resource):
    """``/.well-known/dots/config`` (RFC 9132 §4.5)."""

    def __init__(self, server: SignalServer) -> None:
        self.server = server
        self.put = _guard(server, self._put)
        self.get = _guard(server, self._get)
        self.delete = _guard(server, self._delete)

    def _start(self, req: IncomingRequest) -> tuple[int | None, ServerSession, float]:
        s = self.server
        sid = parse_config_path(req.message.uri_path)
        ident = s.authenticate(req)
        return sid, s._heard(ident, req.link), s.clock()

    def _get(self, req: IncomingRequest) -> Message:
        _check_accept(req.message)
        sid, session, _ = self._start(req)
        body = session.config.get(sid)  # RFC 9132 §4.5.1 discovery / §4.5.2 with 'sid'
        msg = _cbor_response(Code.CONTENT, body)
        if self.server.config_policy.max_age is not None:  # RFC 9132 §4.5.3
            msg.add(OptionNumber.MAX_AGE, self.server.config_policy.max_age)
        return msg

    def _put(self, req: IncomingRequest) -> Message | Awaitable[Message]:
        body = _decode(req.message)
        sid, session, now = self._start(req)
        outcome = session.config.put(sid, body)
        client = session.client

        def work(store: Store) -> None:
            if store.bind_cuid(client.cuid, client.identity, now) is not None:
                raise _collision(client.cuid)
            store.put_session_config(store_base.SessionConfigRecord(
                cuid=client.cuid, sid=outcome.sid, config=body, updated=now))

        return self._keep(session, work, Message(code=outcome.code))

    def _delete(self, req: IncomingRequest) -> Message | Awaitable[Message]:
        sid, session, _ = self._start(req)
        cuid = session.client.cuid
        code = session.config.delete(sid)  # RFC 9132 §4.5.4: back to the defaults

        def work(store: Store) -> None:
            store.delete_session_config(cuid)

        return self._keep(session, work, Message(code=code))

    def _keep(self, session: ServerSession, work: Callable[[Store], None],
              response: Message) -> Message | Awaitable[Message]:
        """Store the session's configuration change, then apply it (RFC 9132 §4.5.2) and
        answer; if it cannot be stored, the session is dropped (rebuilt from the store at
        the client's next request) and the answer is the failure."""
        s = self.server

        def applied() -> Message:
            s._apply_session_params(session, force=True)
            return response

        if s.store is None:
            return applied()
        if s.writer is None:
            try:
                with s.store.transaction():
                    work(s.store)
            except BaseException:
                s.sessions.pop(session.client.identity, None)
                raise
            return applied()

        async def later() -> Message:
            assert s.writer is not None
            try:
                await s.writer.submit(work)
            except BaseException:
                s.sessions.pop(session.client.identity, None)
                raise
            return applied()

        return later()


class HeartbeatResource(Resource):
    """``/.well-known/dots/hb`` (RFC 9132 §4.7): answer 2.04 without payload (Figure 28)."""

    def __init__(self, server: SignalServer) -> None:
        self.server = server
        self.put = _guard(server, self._put)

    def _put(self, req: IncomingRequest) -> Message:
        s = self.server
        check_heartbeat_path(req.message.uri_path)
        body = _decode(req.message)
        status = parse_heartbeat_body(body)
        ident = s.authenticate(req)
        session = s.session(ident, req.link)
        session.peer_heartbeat(s.monotonic(), status)
        s._arm(session)
        return Message(code=Code.CHANGED)
