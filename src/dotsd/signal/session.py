"""The lifecycle of one DOTS signal channel session, as a transition table (RFC 9132 §4.7).

Both agents use it: a DOTS client for its session with its server, a DOTS server for each
client session it holds. The states::

    CONNECTING ──link-up──▶ ESTABLISHED ◀──peer-reachable── DEGRADED
        ▲                       │  ▲ ──threshold-reached──────▶ │
        │                       │  └──link-up (moved)           │
      redial               lost / link-down                lost / link-down
        │                       ▼                               ▼
       LOST ◀─────────────────────────────────────────────────────
    (any state but CLOSED) ──close──▶ CLOSED

* ESTABLISHED: the (D)TLS session is up and heartbeats are answered (or disabled, §4.5.1);
* DEGRADED: 'missing-hb-allowed' was reached but the session MUST NOT be considered lost
  (RFC 9132 §4.7): a client under attack keeps sending on it, a server still hears the client;
* LOST: disconnected (§4.7): a client MUST try to re-establish it (``redial``), a server
  triggers the client's preconfigured mitigations (§4.4.1.3);
* ``link-up`` from ESTABLISHED or DEGRADED moves the session to another link (redirection,
  §4.6; DTLS available again, §4.3) without passing through LOST.

An event the table does not list for the current state is a :class:`InvalidTransition`
(our bug, a :class:`~dotsd.errors.LocalError`), as for the mitigation lifecycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Final

from dotsd.errors import LocalError
from dotsd.signal.heartbeat import (
    HeartbeatAction,
    PeerReachable,
    SessionLost,
    ThresholdReached,
)

__all__ = [
    "SESSION_TRANSITIONS",
    "InvalidSessionTransition",
    "SessionEvent",
    "SessionLifecycle",
    "SessionState",
    "StateChanged",
    "monitor_event",
]


class SessionState(Enum):
    CONNECTING = "connecting"
    ESTABLISHED = "established"
    DEGRADED = "degraded"
    LOST = "lost"
    CLOSED = "closed"


class SessionEvent(Enum):
    LINK_UP = "link-up"
    THRESHOLD_REACHED = "threshold-reached"  # RFC 9132 §4.7, under attack / traffic seen
    PEER_REACHABLE = "peer-reachable"
    HEARTBEATS_LOST = "heartbeats-lost"  # RFC 9132 §4.7: session disconnected
    LINK_DOWN = "link-down"  # the (D)TLS session or TCP connection ended
    REDIAL = "redial"  # RFC 9132 §4.7: "MUST try to re-establish"
    CLOSE = "close"


_S = SessionState
_E = SessionEvent
_LIVE: Final = (_S.ESTABLISHED, _S.DEGRADED)

SESSION_TRANSITIONS: Final[Mapping[tuple[SessionState, SessionEvent], SessionState]] = {
    (_S.CONNECTING, _E.LINK_UP): _S.ESTABLISHED,
    (_S.CONNECTING, _E.LINK_DOWN): _S.LOST,  # the dial failed
    (_S.LOST, _E.LINK_UP): _S.ESTABLISHED,  # a link handed over by the application
    (_S.LOST, _E.REDIAL): _S.CONNECTING,
    (_S.LOST, _E.LINK_DOWN): _S.LOST,  # the old link's late notice
    **{(s, _E.LINK_UP): _S.ESTABLISHED for s in _LIVE},  # moved to a new link
    (_S.ESTABLISHED, _E.THRESHOLD_REACHED): _S.DEGRADED,
    (_S.DEGRADED, _E.THRESHOLD_REACHED): _S.DEGRADED,
    (_S.DEGRADED, _E.PEER_REACHABLE): _S.ESTABLISHED,
    (_S.ESTABLISHED, _E.PEER_REACHABLE): _S.ESTABLISHED,
    **{(s, _E.HEARTBEATS_LOST): _S.LOST for s in _LIVE},
    **{(s, _E.LINK_DOWN): _S.LOST for s in _LIVE},
    **{(s, _E.CLOSE): _S.CLOSED for s in SessionState},
}


class InvalidSessionTransition(LocalError, RuntimeError):
    """An event the session lifecycle does not allow in its current state (our bug)."""

    def __init__(self, state: SessionState, event: SessionEvent) -> None:
        super().__init__(f"session event {event.value!r} is not allowed in state "
                         f"{state.value!r}")
        self.state = state
        self.event = event


@dataclass(frozen=True, slots=True)
class StateChanged:
    """The session moved from ``old`` to ``new`` because of ``event`` (``reason`` for logs)."""

    old: SessionState
    new: SessionState
    event: SessionEvent
    reason: str = ""


class SessionLifecycle:
    """The state of one session, moved only through :data:`SESSION_TRANSITIONS`."""

    def __init__(self, state: SessionState = SessionState.CONNECTING) -> None:
        self.state = state

    def can(self, event: SessionEvent) -> bool:
        return (self.state, event) in SESSION_TRANSITIONS

    def apply(self, event: SessionEvent, reason: str = "") -> StateChanged:
        """Move by ``event``; raises :class:`InvalidSessionTransition` when not allowed."""
        new = SESSION_TRANSITIONS.get((self.state, event))
        if new is None:
            raise InvalidSessionTransition(self.state, event)
        old, self.state = self.state, new
        return StateChanged(old, new, event, reason)

    @property
    def live(self) -> bool:
        """Whether the session carries signals now (ESTABLISHED or DEGRADED)."""
        return self.state in _LIVE


def monitor_event(action: HeartbeatAction) -> tuple[SessionEvent, str] | None:
    """The lifecycle event a heartbeat monitor's verdict is (RFC 9132 §4.7), with its reason;
    None for an action to perform (a heartbeat to send)."""
    if isinstance(action, ThresholdReached):
        return SessionEvent.THRESHOLD_REACHED, f"{action.missed} heartbeats unanswered, but " \
            "the session is kept (traffic seen, or an attack ongoing)"
    if isinstance(action, PeerReachable):
        return SessionEvent.PEER_REACHABLE, "the peer is heard again"
    if isinstance(action, SessionLost):
        return SessionEvent.HEARTBEATS_LOST, action.reason
    return None
