"""One DOTS client's signal channel session as the DOTS server holds it, sans-IO (RFC 9132 §4.5,
§4.7).

:class:`ServerSession` keeps, for one authenticated client: its session configuration
(:class:`~dotsd.signal.config.SessionConfig`), which set applies ('mitigating-config' while
the client has an active mitigation, 'idle-config' otherwise, §4.5), its heartbeat monitor
and its lifecycle (:mod:`dotsd.signal.session`). It reads no clock: every input takes the
monotonic ``now``.

Heartbeats, server side (RFC 9132 §4.7, :class:`~dotsd.signal.heartbeat.HeartbeatMonitor`,
server role):

* the server sends its own heartbeats to the client (:class:`SendHeartbeat`, "the DOTS client
  will probe the DOTS server ... and vice versa") every 'heartbeat-interval' of the set in
  force, and one right after each of the client's heartbeats (§4.7: "DOTS servers MAY trigger
  their heartbeat requests immediately after receiving heartbeat probes"), at most two per
  interval; each carries 'peer-hb-status': whether a heartbeat of the client arrived in the
  last 2 x 'heartbeat-interval';
* any response to one of them (:meth:`ServerSession.heartbeat_answered`) proves the client
  alive: a 2.04, but also the 4.04 or RST of a client that serves no ``/hb``;
* a quiet client is probed, and the session is lost (:class:`StateChanged` to LOST) only
  after 'missing-hb-allowed' heartbeats went unanswered *and* nothing at all came from the
  client for 'missing-hb-allowed' x 'heartbeat-interval' (§4.7); while its traffic arrives the
  session is kept (DEGRADED);
* the client's inbound link looks saturated (:class:`InboundSaturation`) when it reports
  'peer-hb-status' false (it does not receive our heartbeats) or leaves our heartbeats
  unanswered while it is heard: "the DOTS server can identify that the DOTS client is under
  attack and that the inbound link to the DOTS client (domain) is saturated" (§4.7). That is
  no session loss: the session stays in use, and 'trigger-mitigation' false requests wait
  for a loss (§4.4.1).

The agent (``dotsd.agents.server``, through :class:`~dotsd.signal.server_core.ServerCore`)
sends the heartbeats, applies :class:`ParamsChanged` to the client's link, arms
:meth:`ServerSession.get_timer` and acts on the :class:`StateChanged` events (a LOST session
triggers the client's preconfigured mitigations, §4.4.1.3).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass

from dotsd.signal.client_session import ParamsChanged
from dotsd.signal.config import EffectiveConfig, SessionConfig
from dotsd.signal.heartbeat import HeartbeatMonitor, Role, SendHeartbeat
from dotsd.signal.identity import ClientIdentity
from dotsd.signal.session import (
    SessionEvent,
    SessionLifecycle,
    SessionState,
    StateChanged,
    monitor_event,
)

__all__ = ["InboundSaturation", "ParamsChanged", "SendHeartbeat", "ServerSession",
           "StateChanged"]


@dataclass(frozen=True, slots=True)
class InboundSaturation:
    """The client's inbound link looks saturated (``saturated``), or no longer (RFC 9132 §4.7;
    module docstring): an event for the operator, not a session loss."""

    saturated: bool
    reason: str


ServerEvent = ParamsChanged | StateChanged | SendHeartbeat | InboundSaturation


class ServerSession:
    """The server's state of one client session (module docstring). ``peer``: the agent's
    handle of the client's link (opaque here)."""

    def __init__(self, client: ClientIdentity, config: SessionConfig, peer: Hashable,
                 now: float, *, reliable: bool, mitigating: bool) -> None:
        self.client = client
        self.config = config
        self.peer = peer
        self.reliable = reliable
        self.mitigating = mitigating
        self.lifecycle = SessionLifecycle(SessionState.CONNECTING)
        self.armed: float | None = None  # the agent's bookkeeping of this session's timer
        self.heartbeats_sent = 0
        self.heartbeats_answered = 0
        effective = self.effective()
        self.monitor = HeartbeatMonitor(effective.heartbeat_interval,
                                        effective.missing_hb_allowed, now, role=Role.SERVER,
                                        reliable=reliable, reply_to_peer_heartbeat=True)
        self._events: deque[ServerEvent] = deque()
        self._reason = ""
        self._saturated = False
        self._change(SessionEvent.LINK_UP, "first request")
        self._events.append(ParamsChanged(effective.params, effective.kind))

    @property
    def state(self) -> SessionState:
        return self.lifecycle.state

    @property
    def lifecycle_reason(self) -> str:
        """Why the session is in its state (for logs)."""
        return self._reason

    @property
    def lost(self) -> bool:
        return self.lifecycle.state in (SessionState.LOST, SessionState.CLOSED)

    @property
    def inbound_saturated(self) -> bool:
        """Whether the client's inbound link looks saturated now (RFC 9132 §4.7): it reports
        'peer-hb-status' false, or leaves our heartbeats unanswered while it is heard."""
        return self._saturated

    @property
    def client_receives_heartbeats(self) -> bool | None:
        """The 'peer-hb-status' of the client's last heartbeat: whether our heartbeats reach
        it (None: no heartbeat from it yet)."""
        return self.monitor.peer_reports_receiving

    def peer_hb_status(self, now: float) -> bool:
        """The 'peer-hb-status' our heartbeats carry now: whether a heartbeat of the client
        arrived in the last 2 x 'heartbeat-interval' (RFC 9132 §4.7)."""
        return self.monitor.peer_hb_status(now)

    def effective(self) -> EffectiveConfig:
        """The configuration set in force (RFC 9132 §4.5)."""
        return self.config.effective(self.mitigating)

    # -- inputs --------------------------------------------------------------------------------

    def moved(self, peer: Hashable, now: float) -> None:
        """The client came back on a new (D)TLS session: the negotiated values apply to it."""
        self.peer = peer
        self._change(SessionEvent.LINK_UP, "new (D)TLS session")
        self.reconfigure(now)

    def set_mitigating(self, now: float, mitigating: bool) -> None:
        """Whether the client has an active mitigation: agents "MUST switch automatically"
        between the two configuration sets (RFC 9132 §4.5)."""
        if mitigating != self.mitigating:
            self.mitigating = mitigating
            self.reconfigure(now)

    def reconfigure(self, now: float) -> None:
        """The configuration (or the set in force) changed: new transmission parameters for
        the link (§4.5.2) and new heartbeat values for the monitor."""
        effective = self.effective()
        self.monitor.set_interval(effective.heartbeat_interval, effective.missing_hb_allowed,
                                  now)
        self._events.append(ParamsChanged(effective.params, effective.kind))

    def heard(self, now: float) -> None:
        """Any request from the client is traffic for its heartbeat monitor (§4.7)."""
        self.monitor.on_traffic(now)

    def peer_heartbeat(self, now: float, peer_hb_status: bool) -> None:
        """A heartbeat of the client (answered 2.04, Figure 28). 'peer-hb-status' false: our
        heartbeats do not reach it; the monitor then sends the next one right away (§4.7:
        "send a server-initiated heartbeat immediately after receiving a client-initiated
        heartbeat message")."""
        self.monitor.on_peer_heartbeat(now, peer_hb_status)
        self._check_saturation()

    def heartbeat_answered(self, now: float, sent_at: float | None = None) -> None:
        """A response to one of our heartbeats arrived: any response (2.04, an error code, an
        RST) proves the client alive (§4.7: missing heartbeats are those "for which a DOTS
        agent did not receive a response")."""
        self.heartbeats_answered += 1
        self.monitor.on_heartbeat_response(now, sent_at)

    def close(self) -> None:
        if self.state is not SessionState.CLOSED:
            self._change(SessionEvent.CLOSE, "closed")

    # -- outputs -------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        return None if self.lost else self.monitor.get_timer()

    def handle_timer(self, now: float) -> None:
        if self.lost:
            return
        self.monitor.handle_timer(now)
        while (action := self.monitor.next_event()) is not None:
            if isinstance(action, SendHeartbeat):
                # The agent sends it now (RFC 9132 §4.7, Figure 27); a send that fails is a
                # heartbeat missing like any other.
                self.monitor.on_heartbeat_sent(now)
                self.heartbeats_sent += 1
                self._events.append(action)
                continue
            # RFC 9132 §4.7: a client still heard is only DEGRADED (its inbound link is
            # likely saturated): the session is lost only after a silent span.
            verdict = monitor_event(action)
            if verdict is not None:
                self._change(*verdict)
                if self.lost:
                    return
        self._check_saturation()

    def next_event(self) -> ServerEvent | None:
        return self._events.popleft() if self._events else None

    def _change(self, event: SessionEvent, reason: str) -> None:
        self._reason = reason
        change = self.lifecycle.apply(event, reason)
        if change.old is not change.new:
            self._events.append(change)

    def _check_saturation(self) -> None:
        """RFC 9132 §4.7: report when the client's inbound link starts or stops looking
        saturated."""
        reports_false = self.monitor.peer_reports_receiving is False
        unanswered = self.state is SessionState.DEGRADED
        saturated = reports_false or unanswered
        if saturated == self._saturated:
            return
        self._saturated = saturated
        if reports_false:
            reason = ("the client reports 'peer-hb-status' false: the server's heartbeats do "
                      "not reach it")
        elif unanswered:
            reason = (f"{self.monitor.missed} heartbeats of the server unanswered while the "
                      "client's traffic still arrives")
        else:
            reason = "the client receives the server's heartbeats again"
        self._events.append(InboundSaturation(saturated, reason))
