"""The DOTS signal channel server agent (RFC 9132): the sans-IO
:class:`~dotsd.signal.server_core.ServerCore` on a :class:`~dotsd.node.CoapNode`, with durable
state in a ``dotsd.store`` store.

    server = SignalServer(store=SqliteStore.open(state_dir), on_change=bridge.on_change)
    await serve_dtls(server.node, "::", 4646, context)
    server.start()          # its one timer: lifetime expiry, heartbeats

(or all of it at once: :func:`dotsd.agents.serve.serve`). The core decides; this agent
carries it out:

* requests on ``/.well-known/dots/mitigate``, ``/config`` and ``/hb`` go to the core with the
  times of two clocks: ``monotonic`` for sessions and heartbeats, ``clock`` (wall-clock epoch
  seconds) only for mitigation lifetimes, which are absolute instants that keep counting
  across restarts (RFC 9132 §4.4.1.1);
* "nothing acknowledged is lost": what the core asks to keep is written to the store in one
  transaction before the response is sent (RFC 9132 §4.4.1: a 2.01 means the request is
  installed), in the writer thread when there is one; if the write fails, the core reloads
  what the store holds and the answer is 5.00 (or 4.09 for a cuid taken meanwhile);
* then the core's events: notifications to the observers (RFC 9132 §4.4.2.1), the change to
  the listeners (the mitigator bridge), transmission parameters to a client's link (§4.5.2),
  the server's heartbeats to its clients (§4.7: Non-confirmable PUTs of
  ``/.well-known/dots/hb``; any response, or an RST, goes back to the core as proof that the
  client is alive; a client that serves no ``/hb``, such as a plain CoAP client, answers 4.04
  or RST and keeps its session);
* one timer, re-armed with ``loop.call_at`` for the core's next deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Any, Final

from dotsd.agents.storewriter import StoreWriter
from dotsd.coap.message import Message, error_response
from dotsd.coap.numbers import Code, code_str
from dotsd.coap.params import dots_defaults
from dotsd.coap.site import IncomingRequest, Resource, Site
from dotsd.model import yang
from dotsd.node import CoapNode, RequestError
from dotsd.signal.config import CONFIG_PATH, ConfigPolicy
from dotsd.signal.heartbeat import HEARTBEAT_PATH
from dotsd.signal.identity import client_identity
from dotsd.signal.lifecycle import MitigationEvent
from dotsd.signal.mitigation import AliasCheck, Change, ConflictPolicy, MitigationTable
from dotsd.signal.policy import LAB, Policy, PolicySet
from dotsd.signal.records import ConflictInfo, Counters, Mitigation
from dotsd.signal.redirect import Redirection
from dotsd.signal.server_core import (
    Changed,
    Collision,
    ForgetConfig,
    Heartbeat,
    Keep,
    KeepChanges,
    KeepConfig,
    Notify,
    Persist,
    Request,
    ServerCore,
    SetParams,
    cbor_response,
    collision_error,
    config_key,
    error_message,
    no_data_channel,
    observe_key,
)
from dotsd.signal.server_session import ServerSession
from dotsd.signal.uri import MITIGATE_PATH
from dotsd.store import base as store_base
from dotsd.store.base import Store, StoreError

__all__ = [
    "ChangeHook",
    "SignalServer",
    "mitigation_from_record",
    "mitigation_record",
    "no_data_channel",
]

log = logging.getLogger("dotsd.signal.server")

ChangeHook = Callable[[Change], None]
"""Called for every accepted / changed / withdrawn / expired mitigation (the mitigator)."""

_EXTRA_KEY: Final = "signal"  # store record 'extra': the full signal-layer record
_MAX_SLEEP: Final = 30.0  # re-check at least this often (wall clock may jump)


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


def _work(keep: Keep, wall: float) -> Callable[[Store], None]:
    """The store writes of ``keep`` as one unit of work. The records are made now, on the
    loop: the unit may run later, in the writer thread."""
    if isinstance(keep, KeepConfig):
        record = store_base.SessionConfigRecord(cuid=keep.cuid, sid=keep.sid,
                                                config=dict(keep.body), updated=wall)

        def keep_config(store: Store) -> None:
            if store.bind_cuid(keep.cuid, keep.identity, wall) is not None:
                raise Collision(keep.cuid)
            store.put_session_config(record)

        return keep_config
    if isinstance(keep, ForgetConfig):
        def forget_config(store: Store) -> None:
            store.delete_session_config(keep.cuid)

        return forget_config
    records = [(c.mitigation.cuid, c.mitigation.mid,
                None if c.removed else mitigation_record(c.mitigation, wall))
               for c in keep.changes]
    bind = keep.bind

    def keep_changes(store: Store) -> None:
        if bind is not None and store.bind_cuid(bind[0], bind[1], wall) is not None:
            raise Collision(bind[0])
        for cuid, mid, record in records:
            if record is None:
                store.delete_mitigation(cuid, mid)
            else:
                store.put_mitigation(record)

    return keep_changes


# ---------------------------------------------------------------------------------------------
# The server


class SignalServer:
    """RFC 9132 server side on a :class:`CoapNode` (see the module docstring).

    ``store``: durable state (None: memory only, for tests; reads on the loop, and writes
    too unless ``writer``, a :class:`~dotsd.agents.storewriter.StoreWriter`, takes them);
    ``policy``: which targets and lifetimes are allowed, one policy for all or a
    :class:`~dotsd.signal.policy.PolicySet` with one per client (default
    :data:`~dotsd.signal.policy.LAB`); ``config_policy``: the session configuration bounds
    (RFC 9132 §4.5); ``on_change``: a first change listener (more with :meth:`add_listener`);
    ``strict_cuid``: require the 'cuid' derived from the client's credentials (RFC 9132
    §4.4.1.1); ``alias_check``: whether a client created an 'alias-name' (default: no data
    channel, none did); ``clock``: wall-clock epoch seconds; ``monotonic``: the clock of
    sessions and heartbeats; ``node``: an existing node to add the resources to (default: a
    new one with the DOTS transmission defaults, RFC 9132 §4.5.2).
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
        self.store = store
        self.writer = writer
        self.clock = clock  # wall: mitigation lifetimes and times on the wire only
        self.monotonic = monotonic  # sessions and heartbeats (RFC 9132 §4.7): NTP cannot step it
        self._listeners: list[ChangeHook] = [] if on_change is None else [on_change]
        self._writes: set[asyncio.Task[Message | None]] = set()
        self.core = ServerCore(mono=monotonic(), policy=policy, config_policy=config_policy,
                               conflict_policy=conflict_policy, strict_cuid=strict_cuid,
                               alias_check=alias_check, **self._stored())
        self.node = node if node is not None else CoapNode(Site(), params=dots_defaults())
        self.site = self.node.site
        self.site.add("/" + "/".join(MITIGATE_PATH), _CoreResource(self, "mitigate", True),
                      prefix=True)
        self.site.add("/" + "/".join(CONFIG_PATH), _CoreResource(self, "config", True),
                      prefix=True)
        self.site.add("/" + "/".join(HEARTBEAT_PATH), _CoreResource(self, "hb"), prefix=True)
        self._timer: asyncio.TimerHandle | None = None  # the one timer, while running
        self._running = False
        # The YANG model is compiled now, not by the first mitigation request (~0.2 s, which
        # the first client under attack would wait for).
        yang.validator()

    def _stored(self) -> dict[str, Any]:
        """What the store holds, as the core takes it."""
        if self.store is None:
            return {}
        return {
            "records": [mitigation_from_record(r) for r in self.store.all_mitigations()],
            "bindings": {b.cuid: b.identity for b in self.store.bindings()},
            "configs": {c.cuid: (c.sid, c.config) for c in self.store.session_configs()},
        }

    # -- the core's state, as the tests and the mitigator bridge see it ----------------------

    @property
    def table(self) -> MitigationTable:
        return self.core.table

    @property
    def sessions(self) -> Mapping[str, ServerSession]:
        return self.core.sessions

    @property
    def config_policy(self) -> ConfigPolicy:
        return self.core.config_policy

    @config_policy.setter
    def config_policy(self, policy: ConfigPolicy) -> None:
        self.core.config_policy = policy

    @property
    def redirection(self) -> Redirection | None:
        return self.core.redirection

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
        self.core.set_policy(policy, config_policy)

    def redirect(self, redirection: Redirection | None) -> int:
        """Send clients to an alternate server (None: stop). Every request is then answered
        5.03 with the 'redirected-signal' body and the TTL as Max-Age, and every observer gets
        it as a "unidirectional notification" (which ends its observation, RFC 7641 §3.2).
        Returns how many observations were notified."""
        response = self.core.redirect(redirection)
        if response is None or redirection is None:
            return 0
        log.warning("redirecting DOTS clients to %s (TTL %d s)", redirection.alt_server,
                    redirection.ttl)

        def make(peer: Hashable, request: Message) -> Message:
            return response

        return sum(self.node.notify(key, make) for key in self.node.endpoint.observed_keys()
                   if isinstance(key, tuple) and key[:1] == ("mitigate",))

    # -- requests ------------------------------------------------------------------------------

    def serve(self, resource: str, req: IncomingRequest
              ) -> Message | Awaitable[Message | None] | None:
        """Answer a request through the core: at once when nothing is to be kept, else once
        it is kept (an awaitable when the writer thread keeps it)."""
        reply = self.core.handle(resource, Request(req.message, req.peer, req.link),
                                 self.monotonic(), self.clock())
        keep = reply.keep
        if keep is None:
            self._pump()
            return reply.response
        if self.writer is None:
            failure = self._keep_now(keep)
            return reply.response if failure is None else failure
        return self._keep_then(keep, reply.response)

    def _keep_now(self, keep: Keep) -> Message | None:
        """Keep ``keep`` here and now, then publish it; the failure's response, if any."""
        wall = self.clock()
        if self.store is not None:
            try:
                with self.store.transaction():
                    _work(keep, wall)(self.store)
            except (Collision, StoreError) as exc:
                return self._failed(keep, exc)
        self._publish(keep)
        return None

    async def _keep_then(self, keep: Keep, response: Message | None) -> Message | None:
        assert self.writer is not None
        try:
            await self.writer.submit(_work(keep, self.clock()))
        except (Collision, StoreError) as exc:
            await self.writer.drain()  # the writes queued before it are done
            return self._failed(keep, exc)
        self._publish(keep)
        return response

    def _publish(self, keep: Keep) -> None:
        """``keep`` is stored: the core publishes it, the events are carried out."""
        self.core.kept(keep, self.monotonic(), self.clock())
        self._pump()

    def _failed(self, keep: Keep, exc: Exception) -> Message:
        """A write failed: memory goes back to what the store holds (nothing that was not
        kept stays), and the answer says so."""
        self.core.lost(keep)
        self.core.reload(**self._stored())
        self._pump()
        if isinstance(exc, Collision):
            return error_message(collision_error(exc.cuid))
        log.error("store failure: %s", exc)
        return error_response(Code.INTERNAL_SERVER_ERROR,
                              "the request could not be stored; nothing was changed")

    # -- the core's events ---------------------------------------------------------------------

    def _pump(self) -> None:
        """Carry out the core's events, then re-arm the one timer."""
        while (event := self.core.next_event()) is not None:
            if isinstance(event, Notify):
                self._notify(event)
            elif isinstance(event, Changed):
                self._tell(event.change)
            elif isinstance(event, SetParams):
                if event.peer in self.node.links:
                    self.node.set_params(event.peer, event.params)
            elif isinstance(event, Persist):
                self._persist(event.keep)
            elif isinstance(event, Heartbeat):
                self._heartbeat(event)
        self._rearm()

    def _notify(self, event: Notify) -> None:
        """RFC 9132 §4.4.2.1: a 2.05 with the status to each observer (a message each: the
        endpoint gives every one its own token and Observe number)."""
        body = event.body

        def make(peer: Hashable, request: Message) -> Message:
            return cbor_response(Code.CONTENT, body)

        for key in event.keys:
            self.node.notify(key, make)

    def _heartbeat(self, hb: Heartbeat) -> None:
        """Send the server's heartbeat (RFC 9132 §4.7: Non-confirmable, not repeated: a
        missing answer is what the core counts). A link gone is a heartbeat missing."""
        link = hb.peer
        if link not in self.node.links:
            return
        sent_at = self.monotonic()
        try:
            fut = self.node.start_request(link, hb.message,
                                          confirmable=False, timeout=max(hb.timeout, 0.001))
        except Exception as exc:
            log.warning("heartbeat to %s not sent: %r", hb.identity, exc)
            return
        fut.add_done_callback(lambda f: self._heartbeat_done(f, hb, sent_at))

    def _heartbeat_done(self, fut: asyncio.Future[Message], hb: Heartbeat,
                        sent_at: float) -> None:
        """Any response proves the client alive (RFC 9132 §4.7); so does an RST, a CoAP
        message of the client over its (D)TLS session. A timeout is a missing heartbeat."""
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            if not (isinstance(exc, RequestError) and exc.reset):
                return
            log.debug("heartbeat to %s answered with RST", hb.identity)
        else:
            code = fut.result().code
            if code != Code.CHANGED:
                log.debug("heartbeat to %s answered %s", hb.identity, code_str(code))
        self.core.heartbeat_answered(hb.identity, hb.peer, self.monotonic(), sent_at)
        self._pump()

    def _tell(self, change: Change) -> None:
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:  # a mitigator must not break the signal channel
                m = change.mitigation
                log.exception("change listener failed for %s/%d", m.cuid, m.mid)

    def _persist(self, keep: KeepChanges) -> None:
        """Keep timer, mitigator or notification changes, then publish them (nobody waits
        for an answer: with a writer, the write is queued)."""
        if self.writer is None:
            failure = self._keep_now(keep)
            if failure is not None:
                log.error("%d change(s) not kept", len(keep.changes))
            return
        task = asyncio.get_running_loop().create_task(self._keep_then(keep, None))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    # -- the mitigator (RFC 9132 §4.4.1.1) -----------------------------------------------------

    def report(self, cuid: str, mid: int, event: MitigationEvent, *,
               counters: Counters | None = None) -> list[Change]:
        """Mitigator feedback; kept and notified (RFC 9132 §4.4.2.1)."""
        changes = self.core.report(cuid, mid, event, self.clock(), counters=counters)
        self._pump()
        return changes

    def report_counters(self, cuid: str, mid: int, counters: Counters) -> list[Change]:
        """The mitigator's counters alone for a running mitigation (RFC 9132 §4.4.2:
        'bytes-dropped', 'pkts-dropped', ...); kept and notified."""
        changes = self.core.report_counters(cuid, mid, counters)
        self._pump()
        return changes

    def report_conflict(self, cuid: str, mid: int, info: ConflictInfo) -> list[Change]:
        """Record a conflict found after acceptance (status 7 when inactive, §4.4.2.1)."""
        changes = self.core.report_conflict(cuid, mid, info, self.clock())
        self._pump()
        return changes

    # -- time ----------------------------------------------------------------------------------

    def handle_timer(self, mono: float | None = None, *, wall: float | None = None
                     ) -> list[Change]:
        """Do what is due: heartbeat timers at the monotonic time ``mono`` (RFC 9132 §4.7; a
        step of the wall clock loses no session), lifetime and active-but-terminating expiry
        at the wall-clock time ``wall`` (§4.4.1.1, §4.4.4); each defaults to its clock.
        Changes are kept and notified, and returned."""
        changes = self.core.handle_timer(self.monotonic() if mono is None else mono,
                                         self.clock() if wall is None else wall)
        self._pump()
        return changes

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` is due next, on the monotonic clock."""
        return self.core.get_timer()

    def start(self) -> None:
        """Run the server's one timer from now on (call from the running loop): what is
        due goes at once (expired records after a restart), then at each deadline."""
        self._running = True
        self._on_timer()

    def _rearm(self) -> None:
        """Arm the one timer (``loop.call_at``) for the earliest deadline, if it is earlier
        than the one armed; at most 30 s ahead (a wall-clock step is noticed)."""
        if not self._running:
            return
        deadline = self.get_timer()
        delay = _MAX_SLEEP if deadline is None else deadline - self.monotonic()
        delay = min(max(delay, 0.0), _MAX_SLEEP)
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        if self._timer is not None:
            if self._timer.when() <= when:
                return
            self._timer.cancel()
        self._timer = loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        try:
            self.handle_timer()
        except Exception:
            log.exception("signal server timer failed")
        self._rearm()

    async def close(self) -> None:
        """Stop the timer and wait for the queued writes (the store, the writer and the node
        are the caller's)."""
        self._running = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._writes:
            await asyncio.wait(set(self._writes), timeout=10.0)


class _CoreResource(Resource):
    """A resource of RFC 9132 §4.2 Table 1, answered by the server's core."""

    def __init__(self, server: SignalServer, name: str, observable: bool = False) -> None:
        self.server = server
        self.name = name
        self.observable = observable

    def handle(self, request: IncomingRequest) -> Message | Awaitable[Message | None] | None:
        return self.server.serve(self.name, request)

    def observe_key(self, request: IncomingRequest) -> Hashable:
        if self.name == "config":  # RFC 9132 §4.5.3: the client's configuration
            ident = client_identity(request.peer)
            return config_key(ident.cuid if ident is not None else "")
        # RFC 9132 §4.4.2.1: one mitigation (Figure 13) or all of the client's (Figure 12).
        return observe_key(request.message)
