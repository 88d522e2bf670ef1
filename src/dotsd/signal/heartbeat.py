"""DOTS heartbeat mechanism (RFC 9132 §4.7), sans-IO, for DOTS clients and servers alike.

Heartbeats are Non-confirmable PUTs on ``/.well-known/dots/hb`` with the body
``{"ietf-dots-signal-channel:heartbeat": {"peer-hb-status": <bool>}}`` (Figure 27), answered
with an empty 2.04 (Figure 28); both agents send them (§4.7 implementation note).

:class:`HeartbeatMonitor` keeps one session's heartbeat state. It reads no clock and sends
nothing: the caller feeds it (``on_heartbeat_sent``, ``on_heartbeat_response``,
``on_peer_heartbeat``, ``on_traffic``), arms one timer at :meth:`~HeartbeatMonitor.get_timer`,
calls :meth:`~HeartbeatMonitor.handle_timer` when it fires and then performs the actions
:meth:`~HeartbeatMonitor.next_event` gives (:class:`SendHeartbeat`, :class:`ThresholdReached`,
:class:`PeerReachable`, :class:`SessionLost`): the surface of every sans-IO layer here.

Counting rules, as read from RFC 9132:

* a heartbeat is *missing* when no response to it arrived before the next one is due, i.e.
  within 'heartbeat-interval' (§4.5 b: "consecutive heartbeat messages for which a DOTS agent
  did not receive a response"); only a heartbeat response resets the count;
* a DOTS client, under normal conditions, concludes the session is disconnected after
  'missing-hb-allowed' missing heartbeats (§4.7). While an attack is ongoing it MUST NOT: it
  keeps sending heartbeats and SHOULD try a new session in parallel (:class:`ThresholdReached`);
  traffic from the server afterwards means the current session works again
  (:class:`PeerReachable`, "the DOTS client can stop the new DOTS signal channel session
  attempt");
* a DOTS server probes the client with its own heartbeats too (§4.7: "the DOTS client will
  probe the DOTS server ... and vice versa"). When it reaches the threshold but still receives
  traffic from the client (its heartbeats, mitigation requests, responses, ...) it MUST NOT
  consider the session disconnected: the client's inbound link is likely saturated
  (:class:`ThresholdReached`). It concludes the session is lost only when the threshold is
  reached *and* no traffic at all came from the client during 'missing-hb-allowed' x
  'heartbeat-interval';
* 'heartbeat-interval' 0 disables the mechanism (§4.5.1): nothing is sent or checked;
* over a reliable transport (TCP/TLS), 'missing-hb-allowed' is not negotiated (§4.5) and the
  sender "has to allow up to 'heartbeat-interval' seconds when waiting for a heartbeat reply"
  (§4.7): one reply missing after that long reaches the threshold. A DOTS client then
  recovers the session; a DOTS server still needs the silence above before it concludes
  (its traffic rule has no exception for TCP, and a client heard less often than once an
  interval is alive). A pure observer (``send_heartbeats`` False) waits for no reply: only
  that silence counts;
* heartbeats sent in reply to the peer's (``reply_to_peer_heartbeat``, or the peer reporting
  'peer-hb-status' false, §4.7) go at most once every half interval (:data:`REPLY_GAP`): a
  peer sending fast does not set our pace.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from dotsd.errors import PeerError
from dotsd.model.errors import ModelError

__all__ = [
    "HEARTBEAT_MEMBER",
    "HEARTBEAT_PATH",
    "REPLY_GAP",
    "HeartbeatAction",
    "HeartbeatError",
    "HeartbeatMonitor",
    "PeerReachable",
    "Role",
    "SendHeartbeat",
    "SessionLost",
    "ThresholdReached",
    "build_heartbeat_body",
    "check_heartbeat_path",
    "parse_heartbeat_body",
]

HEARTBEAT_MEMBER: Final = "ietf-dots-signal-channel:heartbeat"  # RFC 9132 §4.7, Table 5
REPLY_GAP: Final = 0.5
"""A heartbeat sent in reply to the peer's (RFC 9132 §4.7) goes only when our last one is at
least this many intervals old: at most two per interval, whatever the peer's pace."""
HEARTBEAT_PATH: Final = (".well-known", "dots", "hb")  # RFC 9132 §4.2 Table 1


class HeartbeatError(PeerError, ModelError):
    """A malformed heartbeat request (4.00, RFC 9132 §9)."""


def build_heartbeat_body(peer_hb_status: bool) -> dict[str, Any]:
    """Heartbeat PUT body (RFC 9132 Figure 27); 'peer-hb-status' is mandatory."""
    return {HEARTBEAT_MEMBER: {"peer-hb-status": bool(peer_hb_status)}}


def parse_heartbeat_body(body: Mapping[str, Any]) -> bool:
    """The 'peer-hb-status' of a heartbeat body (JSON-shaped, as ``from_cbor`` gives it)."""
    if not isinstance(body, Mapping) or set(body) != {HEARTBEAT_MEMBER}:
        raise HeartbeatError(f"a heartbeat body has the single member {HEARTBEAT_MEMBER!r}",
                             path="/")
    content = body[HEARTBEAT_MEMBER]
    where = f"/{HEARTBEAT_MEMBER}"
    if not isinstance(content, Mapping) or set(content) != {"peer-hb-status"}:
        raise HeartbeatError("expected exactly the mandatory 'peer-hb-status'", path=where)
    status = content["peer-hb-status"]
    if not isinstance(status, bool):
        raise HeartbeatError(f"'peer-hb-status' must be a boolean, got {status!r}",
                             path=f"{where}/peer-hb-status")
    return status


def check_heartbeat_path(path: Sequence[str]) -> None:
    """RFC 9132 §4.7: "The PUT request used for DOTS heartbeat MUST NOT have a 'cuid',
    'cdid', or 'mid' Uri-Path" — nothing may follow ``/.well-known/dots/hb``."""
    if tuple(path[:3]) != HEARTBEAT_PATH:
        raise HeartbeatError(f"not the heartbeat path: /{'/'.join(path)}")
    if len(path) > 3:
        raise HeartbeatError(f"heartbeat requests take no Uri-Path parameters, got "
                             f"{list(path[3:])} (RFC 9132 §4.7)")


class Role(Enum):
    """The DOTS role of the agent owning the monitor (the rules differ, RFC 9132 §4.7)."""

    CLIENT = "client"
    SERVER = "server"


@dataclass(frozen=True, slots=True)
class SendHeartbeat:
    """Send a heartbeat now (NON PUT, Figure 27) carrying ``peer_hb_status``; then call
    :meth:`HeartbeatMonitor.on_heartbeat_sent`."""

    peer_hb_status: bool


@dataclass(frozen=True, slots=True)
class ThresholdReached:
    """'missing-hb-allowed' reached but the session must not be considered lost (RFC 9132
    §4.7): a client under attack SHOULD open a new session in parallel and keep sending
    heartbeats (and mitigation requests) on this one; a server still receiving the client's
    traffic can infer the client's inbound link is saturated."""

    missed: int


@dataclass(frozen=True, slots=True)
class PeerReachable:
    """After :class:`ThresholdReached`, the peer is heard again on this session (RFC 9132
    §4.7: the client "can stop the new DOTS signal channel session attempt")."""


@dataclass(frozen=True, slots=True)
class SessionLost:
    """The session is disconnected (RFC 9132 §4.7). A client MUST try to re-establish it,
    preferably by resuming the (D)TLS session; a server can trigger the client's
    preconfigured mitigations."""

    missed: int
    reason: str


HeartbeatAction = SendHeartbeat | ThresholdReached | PeerReachable | SessionLost


class HeartbeatMonitor:
    """Heartbeat state of one DOTS signal channel session.

    ``interval`` is 'heartbeat-interval' in seconds (0: disabled), ``missing_allowed`` is
    'missing-hb-allowed', ``now`` the session start. The first heartbeat is due one interval
    after the start. ``send_heartbeats`` False makes a pure observer (then only the absence of
    the peer's traffic counts). ``reply_to_peer_heartbeat`` sends our heartbeat right after
    each peer heartbeat (RFC 9132 §4.7: "DOTS servers MAY trigger their heartbeat requests
    immediately after receiving heartbeat probes"); this is also done whenever the peer
    reports 'peer-hb-status' false (§4.7: "send a server-initiated heartbeat immediately after
    receiving a client-initiated heartbeat message"), at most once every half interval.
    """

    def __init__(
        self,
        interval: float,
        missing_allowed: int,
        now: float,
        *,
        role: Role = Role.CLIENT,
        reliable: bool = False,
        send_heartbeats: bool = True,
        reply_to_peer_heartbeat: bool = False,
    ) -> None:
        _check(interval, missing_allowed)
        self.role = role
        self.reliable = reliable
        self.send_heartbeats = send_heartbeats
        self.reply_to_peer_heartbeat = reply_to_peer_heartbeat
        self._interval = float(interval)
        self._missing_allowed = missing_allowed
        self._started = now
        self._judged_from = now  # 'peer-hb-status': the start, or the last interval change
        self._attack_ongoing = False
        self._unanswered = 0  # heartbeats sent since the last response
        self._last_sent: float | None = None
        self._last_response: float | None = None
        self._last_peer_hb: float | None = None
        self._peer_hb_status: bool | None = None
        # Last evidence of the peer (any traffic), or the (re)start of monitoring.
        self._last_traffic = now
        self._degraded = False  # ThresholdReached reported, not yet cleared
        self._lost = False
        self._pending: list[HeartbeatAction] = []
        self._ready: deque[HeartbeatAction] = deque()  # what handle_timer found due
        self._pending_at = now
        self._next_send: float | None = now + self._interval if self._sending else None

    # -- state -------------------------------------------------------------------------------

    @property
    def interval(self) -> float:
        return self._interval

    @property
    def missing_allowed(self) -> int:
        return self._missing_allowed

    @property
    def enabled(self) -> bool:
        return self._interval > 0

    @property
    def _sending(self) -> bool:
        return self.enabled and self.send_heartbeats

    @property
    def threshold(self) -> int:
        """Missing heartbeats that exhaust the allowance: 1 for a sender waiting for its
        reply over a reliable transport (RFC 9132 §4.7: "allow up to 'heartbeat-interval'
        seconds when waiting for a heartbeat reply"), else 'missing-hb-allowed'. A pure
        observer waits for no reply. A server still needs :attr:`silence` to conclude."""
        return 1 if self.reliable and self._sending else self._missing_allowed

    @property
    def silence(self) -> float:
        """The silence after which a DOTS server (or a pure observer) whose threshold is
        reached concludes the session is disconnected: 'missing-hb-allowed' x
        'heartbeat-interval' (RFC 9132 §4.7: no traffic "during the time span required to
        exhaust the maximum 'missing-hb-allowed' threshold"), over TCP too: the client paces
        its heartbeats by the same interval, and one interval of silence is one late message,
        not a lost client."""
        return self._missing_allowed * self._interval

    @property
    def missed(self) -> int:
        """Heartbeats sent since the last response (the newest may still be answered)."""
        return self._unanswered

    @property
    def lost(self) -> bool:
        return self._lost

    @property
    def degraded(self) -> bool:
        """:class:`ThresholdReached` was reported and the peer has not been heard since."""
        return self._degraded

    @property
    def peer_reports_receiving(self) -> bool | None:
        """The 'peer-hb-status' of the last heartbeat received from the peer (None: none
        yet): whether the peer receives *our* heartbeats (RFC 9132 §4.7)."""
        return self._peer_hb_status

    @property
    def attack_ongoing(self) -> bool:
        return self._attack_ongoing

    def set_attack_ongoing(self, ongoing: bool) -> None:
        """Tell a client monitor whether an attack is ongoing: then the threshold does not end
        the session (RFC 9132 §4.7, "In case of a massive DDoS attack ...")."""
        self._attack_ongoing = ongoing

    def peer_hb_status(self, now: float) -> bool:
        """'peer-hb-status' to send: whether a heartbeat from the peer arrived in the last
        2 x 'heartbeat-interval' (RFC 9132 §4.7). Until that long has passed since the start,
        or since the interval changed (the peer switches its set as we do, §4.5, and its
        heartbeats come at the new pace from then on), there is no period to judge: True."""
        window = 2 * self._interval
        if self._last_peer_hb is not None and now - self._last_peer_hb <= window:
            return True
        return now - self._judged_from < window

    # -- inputs ------------------------------------------------------------------------------

    def set_interval(self, interval: float, missing_allowed: int, now: float) -> None:
        """New 'heartbeat-interval' / 'missing-hb-allowed' at run time: a session
        configuration change or the switch between 'idle-config' and 'mitigating-config'
        (RFC 9132 §4.5). Enabling the mechanism restarts the count."""
        _check(interval, missing_allowed)
        was_enabled = self.enabled
        if float(interval) != self._interval:
            self._judged_from = now
        self._interval = float(interval)
        self._missing_allowed = missing_allowed
        if not self.enabled:
            self._next_send = None
            self._unanswered = 0
            self._degraded = False
            return
        if not was_enabled:
            self._unanswered = 0
            self._last_traffic = max(self._last_traffic, now)
            self._started = now
        if self._sending:
            base = self._last_sent if self._last_sent is not None else self._started
            self._next_send = max(base + self._interval, now)

    def on_heartbeat_sent(self, now: float) -> None:
        """We sent a heartbeat (after :class:`SendHeartbeat`, or on our own)."""
        self._unanswered += 1
        self._last_sent = now
        if self._sending:
            self._next_send = now + self._interval

    def on_heartbeat_response(self, now: float, sent_at: float | None = None) -> float | None:
        """A response to one of our heartbeats arrived. Returns a round-trip sample when it
        is unambiguous (``sent_at`` given by the CoAP layer, or only one heartbeat
        outstanding), for the RTT estimator of :mod:`dotsd.signal.pacing`."""
        sample: float | None = None
        if sent_at is not None:
            sample = now - sent_at
        elif self._unanswered == 1 and self._last_sent is not None:
            sample = now - self._last_sent
        self._unanswered = 0
        self._last_response = now
        self._heard(now, proves_session=True)
        return sample if sample is not None and sample >= 0 else None

    def on_peer_heartbeat(self, now: float, peer_hb_status: bool) -> None:
        """A heartbeat request from the peer arrived (answer it with 2.04, Figure 28)."""
        self._last_peer_hb = now
        self._peer_hb_status = peer_hb_status
        self._heard(now, proves_session=self.role is Role.CLIENT)
        # RFC 9132 §4.7: a peer reporting 'false' does not get our heartbeats; one strategy
        # is to "send a server-initiated heartbeat immediately after receiving a
        # client-initiated heartbeat message" (the peer's packet has just refreshed bindings).
        if self._sending and not self._lost and (
            self.reply_to_peer_heartbeat or not peer_hb_status
        ) and (self._last_sent is None or now - self._last_sent >= REPLY_GAP * self._interval):
            self._next_send = now

    def on_traffic(self, now: float) -> None:
        """Any other message from the peer (mitigation request or response, ...)."""
        self._heard(now, proves_session=self.role is Role.CLIENT)

    def _heard(self, now: float, *, proves_session: bool) -> None:
        self._last_traffic = max(self._last_traffic, now)
        if self._degraded and proves_session and not self._lost:
            # RFC 9132 §4.7: traffic from the server reaching the client again ends the
            # saturation episode; a server learns it from responses to its heartbeats.
            self._degraded = False
            self._unanswered = 0
            self._queue(PeerReachable(), now)

    def _queue(self, action: HeartbeatAction, now: float) -> None:
        if not self._pending:
            self._pending_at = now
        self._pending.append(action)

    # -- timer -------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must be called next (None: nothing scheduled)."""
        if self._pending:
            return self._pending_at
        if self._lost or not self.enabled:
            return None
        if self._sending:
            return self._next_send
        return self._last_traffic + self.silence  # observer: only silence counts

    @property
    def _span(self) -> float:
        """The time needed to exhaust the threshold (RFC 9132 §4.7)."""
        return self.threshold * self._interval

    def handle_timer(self, now: float) -> None:
        """Do what is due at ``now``; the actions come out of :meth:`next_event`."""
        self._ready.extend(self._timer_actions(now))

    def next_event(self) -> HeartbeatAction | None:
        """The next action to perform (None: nothing to do now)."""
        return self._ready.popleft() if self._ready else None

    def _timer_actions(self, now: float) -> list[HeartbeatAction]:
        actions, self._pending = self._pending, []
        if self._lost or not self.enabled:
            return actions
        if not self._sending:
            if now >= self._last_traffic + self.silence:
                actions.append(self._lose(0, "no traffic from the peer"))
            return actions
        if self._next_send is None or now < self._next_send:
            return actions
        missed = self._unanswered
        if missed and self._last_sent is not None and now - self._last_sent < self._interval:
            missed -= 1  # the newest has not had its 'heartbeat-interval' to be answered yet
        if missed >= self.threshold:
            verdict = self._on_threshold(now, missed)
            if verdict is not None:
                actions.append(verdict)
                if isinstance(verdict, SessionLost):
                    return actions
        actions.append(SendHeartbeat(self.peer_hb_status(now)))
        # Provisional until on_heartbeat_sent; keeps the timer from firing again at once.
        self._next_send = now + self._interval
        return actions

    def _on_threshold(self, now: float, missed: int) -> HeartbeatAction | None:
        if self.role is Role.SERVER:
            quiet = now - self._last_traffic
            if quiet >= self.silence:
                # RFC 9132 §4.7: "does not receive any traffic from the peer DOTS client
                # during the time span required to exhaust the ... threshold".
                return self._lose(missed, f"{missed} heartbeats unanswered and no traffic "
                                          "from the DOTS client for 'missing-hb-allowed' x "
                                          "'heartbeat-interval'")
            if quiet < self._span:
                # RFC 9132 §4.7: traffic from the client but threshold reached: MUST NOT
                # consider the session disconnected; keep using it.
                return self._degrade(missed)
            return None  # quiet for less than the span (TCP): keep probing
        if self._attack_ongoing:
            # RFC 9132 §4.7: under attack the client MUST NOT consider the session
            # terminated and SHOULD keep sending heartbeats over it.
            return self._degrade(missed)
        return self._lose(missed, f"{missed} consecutive heartbeats without response")

    def _degrade(self, missed: int) -> ThresholdReached | None:
        if self._degraded:
            return None
        self._degraded = True
        return ThresholdReached(missed)

    def _lose(self, missed: int, reason: str) -> SessionLost:
        self._lost = True
        self._next_send = None
        return SessionLost(missed, reason)


def _check(interval: float, missing_allowed: int) -> None:
    if interval < 0:
        raise ValueError("heartbeat-interval must be >= 0 (0 disables heartbeats)")
    if missing_allowed < 1:
        raise ValueError("missing-hb-allowed must be >= 1")
