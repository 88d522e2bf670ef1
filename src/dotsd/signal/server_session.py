"""One DOTS client's signal channel session as the DOTS server holds it, sans-IO (RFC 9132 §4.5,
§4.7).

:class:`ServerSession` keeps, for one authenticated client: its session configuration
(:class:`~dotsd.signal.config.SessionConfig`), which set applies ('mitigating-config' while
the client has an active mitigation, 'idle-config' otherwise, §4.5), its heartbeat monitor
(server role: the session is lost only when *no* traffic at all came from the client during
'missing-hb-allowed' x 'heartbeat-interval', §4.7) and its lifecycle
(:mod:`dotsd.signal.session`). It reads no clock: every input takes the monotonic ``now``.
The agent (``dotsd.agents.server``) applies :class:`ParamsChanged` to the client's link, arms
:meth:`ServerSession.get_timer` and acts on the :class:`StateChanged` events (a LOST session
triggers the client's preconfigured mitigations, §4.4.1.3).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable

from dotsd.signal.client_session import ParamsChanged
from dotsd.signal.config import EffectiveConfig, SessionConfig
from dotsd.signal.heartbeat import HeartbeatMonitor, Role
from dotsd.signal.identity import ClientIdentity
from dotsd.signal.session import (
    SessionEvent,
    SessionLifecycle,
    SessionState,
    StateChanged,
    monitor_event,
)

__all__ = ["ParamsChanged", "ServerSession", "StateChanged"]

ServerEvent = ParamsChanged | StateChanged


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
        effective = self.effective()
        self.monitor = HeartbeatMonitor(effective.heartbeat_interval,
                                        effective.missing_hb_allowed, now, role=Role.SERVER,
                                        reliable=reliable, send_heartbeats=False)
        self._events: deque[ServerEvent] = deque()
        self._reason = ""
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
        self.monitor.on_peer_heartbeat(now, peer_hb_status)

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
            # RFC 9132 §4.7: a client still heard is only DEGRADED (its inbound link is
            # likely saturated): the session is lost only after a silent span.
            verdict = monitor_event(action)
            if verdict is not None:
                self._change(*verdict)
                if self.lost:
                    return

    def next_event(self) -> ServerEvent | None:
        return self._events.popleft() if self._events else None

    def _change(self, event: SessionEvent, reason: str) -> None:
        self._reason = reason
        change = self.lifecycle.apply(event, reason)
        if change.old is not change.new:
            self._events.append(change)

