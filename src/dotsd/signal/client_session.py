"""What a DOTS client does with its signal channel session, sans-IO (RFC 9132 §4.3-§4.7).

:class:`ClientSession` holds the client's whole session behaviour and reads no clock: the agent
(``dotsd.agents.client``) feeds it what happened, with the monotonic time ``now``, and performs
what it asks, one event at a time from :meth:`ClientSession.next_event`; it arms one timer at
:meth:`ClientSession.get_timer` and calls :meth:`ClientSession.handle_timer` when it fires.

What it decides:

* the session lifecycle (:mod:`dotsd.signal.session`), reported as :class:`StateChanged`;
* heartbeats (RFC 9132 §4.7, :class:`~dotsd.signal.heartbeat.HeartbeatMonitor`, client role):
  :class:`SendHeartbeat` every 'heartbeat-interval'; after 'missing-hb-allowed' unanswered ones
  the session is lost, unless an attack is ongoing (then it is only DEGRADED);
* which configuration set applies (RFC 9132 §4.5): 'mitigating-config' while the client has an
  active mitigation, 'idle-config' otherwise, handed out as :class:`ParamsChanged` (the CoAP
  transmission parameters of §4.5.2) and applied to the heartbeat monitor;
* the configuration refresh (RFC 9132 §4.5.3, :func:`~dotsd.signal.config.refresh_delay`):
  :class:`RefreshConfig` before Max-Age runs out, every 60 s without Max-Age, never while an
  attack is active ("refresh requests MUST NOT be sent by DOTS clients");
* under attack, once 'missing-hb-allowed' is reached, a new session in parallel (§4.7):
  :class:`OpenSpare`, again no sooner than the redial intervals below while it fails and the
  current session stays unheard;
* re-establishing a lost session (§4.7: "MUST try to re-establish"): :class:`Redial` at once;
  while dialing fails, the next attempt starts 60 s after the previous one started, then
  120 s, 240 s, 300 s ("MUST NOT retry more frequently than every 60 seconds", "SHOULD NOT
  ... than every 300 seconds");
* the end of a redirection (RFC 9132 §4.6): :class:`ReturnToProvisioned` when its TTL runs out,
  except while an attack is active (then when the attack ends);
* a session that fell back to TLS probing DTLS again (§4.3), at most every 5 minutes:
  :class:`ProbeDtls`;
* 'mid' values of new requests (§4.4.1.1, :func:`~dotsd.signal.mids.next_mid`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from dotsd.coap.params import TransmissionParameters
from dotsd.signal.config import (
    Attribute,
    ConfigSet,
    ConfigSetKind,
    ServerConfig,
    SidAllocator,
    Value,
    refresh_delay,
)
from dotsd.signal.heartbeat import HeartbeatMonitor, Role, SendHeartbeat
from dotsd.signal.mids import next_mid
from dotsd.signal.session import (
    SessionEvent,
    SessionLifecycle,
    SessionState,
    StateChanged,
    monitor_event,
)

__all__ = [
    "DTLS_PROBE_INTERVAL",
    "REDIAL_MAX",
    "REDIAL_MIN",
    "ClientEvent",
    "ClientSession",
    "OpenSpare",
    "ParamsChanged",
    "ProbeDtls",
    "Redial",
    "RefreshConfig",
    "ReturnToProvisioned",
    "SendHeartbeat",
    "StateChanged",
]

DTLS_PROBE_INTERVAL: Final = 300.0  # RFC 9132 §4.3: "not ... more frequently than every 5 min"
# RFC 9132 §4.7: "If a new DOTS signal channel session cannot be established, the DOTS client
# SHOULD NOT retry to establish the DOTS signal channel session more frequently than every 300
# seconds (5 minutes) and MUST NOT retry more frequently than every 60 seconds (1 minute)."
# Between the starts of two attempts: 60 s, then doubling up to 300 s.
REDIAL_MIN: Final = 60.0
REDIAL_MAX: Final = 300.0
REFRESH_RETRY: Final = 60.0  # a refresh that failed is tried again after this long


@dataclass(frozen=True, slots=True)
class ParamsChanged:
    """Apply these CoAP transmission parameters to the session's link (RFC 9132 §4.5.2):
    ``kind`` is the configuration set in force."""

    params: TransmissionParameters
    kind: ConfigSetKind


@dataclass(frozen=True, slots=True)
class RefreshConfig:
    """Refresh the session configuration: a GET carrying ``sid`` (RFC 9132 §4.5.3); then call
    :meth:`ClientSession.config_received` (or :meth:`ClientSession.refresh_failed`)."""

    sid: int | None


@dataclass(frozen=True, slots=True)
class Redial:
    """Dial the server again (RFC 9132 §4.7); then :meth:`ClientSession.link_up` or
    :meth:`ClientSession.dial_failed`."""

    reason: str
    attempt: int


@dataclass(frozen=True, slots=True)
class OpenSpare:
    """RFC 9132 §4.7, under attack once 'missing-hb-allowed' is reached: "the DOTS client SHOULD
    try to establish a new DOTS signal channel session", while it keeps using the current
    one. Dial; then move the session to the new link (:meth:`ClientSession.link_up`) if the
    current one is still :attr:`~SessionState.DEGRADED` ("if a new DOTS signal channel session
    is successful then disconnect the current"), else close it ("can stop the new ...
    attempt"); or :meth:`ClientSession.spare_failed`."""

    reason: str
    attempt: int


@dataclass(frozen=True, slots=True)
class ReturnToProvisioned:
    """The redirection expired (RFC 9132 §4.6): move the session back to the provisioned
    server (dial it, then :meth:`ClientSession.link_up`)."""


@dataclass(frozen=True, slots=True)
class ProbeDtls:
    """Try DTLS again after a fallback to TLS (RFC 9132 §4.3); then
    :meth:`ClientSession.link_up` with the DTLS link, or :meth:`ClientSession.probe_failed`."""


ClientEvent = (SendHeartbeat | ParamsChanged | RefreshConfig | Redial | ReturnToProvisioned
               | ProbeDtls | OpenSpare | StateChanged)


class ClientSession:
    """The behaviour of one DOTS client's signal channel session (module docstring).

    ``now``: the monotonic time at creation; ``heartbeat``: a fixed ('heartbeat-interval',
    'missing-hb-allowed') overriding the negotiated values (tests, or an interval of 0 to turn
    heartbeats off); ``redial``: whether a lost session is re-established; ``redial_delay``:
    the time between the starts of a failed redial and the next (RFC 9132 §4.7: at least
    :data:`REDIAL_MIN`; less only for tests), doubled up to :data:`REDIAL_MAX`; ``last_mid``:
    the last 'mid' used before.
    """

    def __init__(
        self,
        now: float,
        *,
        heartbeat: tuple[float, int] | None = None,
        redial: bool = True,
        redial_delay: float = REDIAL_MIN,
        dtls_probe_interval: float = DTLS_PROBE_INTERVAL,
        first_sid: int = 1,
        last_mid: int | None = None,
    ) -> None:
        self.lifecycle = SessionLifecycle(SessionState.CONNECTING)
        self.heartbeat_override = heartbeat
        self.redial = redial
        self.redial_delay = redial_delay
        self.dtls_probe_interval = dtls_probe_interval
        self.sids = SidAllocator(first_sid)
        self.last_mid = last_mid
        self.monitor: HeartbeatMonitor | None = None
        self.server_config: ServerConfig | None = None
        self.config_max_age: int | None = None
        self.sid: int | None = None
        self.lost_reason: str | None = None
        self._config: dict[ConfigSetKind, ConfigSet] = {k: ConfigSet() for k in ConfigSetKind}
        self._kind: ConfigSetKind | None = None  # the set last handed out
        self._active: dict[int, dict[str, Any]] = {}  # mid -> scope entry as sent
        self._attack_override: bool | None = None
        self._reliable = False
        self._events: deque[ClientEvent] = deque()
        self._refresh_at: float | None = None
        self._redial_at: float | None = None
        self._redial_started: float | None = None
        self._redial_attempt = 0
        self._spare_at: float | None = None  # the next new-session attempt under attack
        self._spare_started: float | None = None
        self._spare_attempt = 0
        self._spare_delay = redial_delay
        self._next_delay = redial_delay
        self._return_at: float | None = None  # the redirection's end, while on an alternate
        self._probe_at: float | None = None

    # -- state ---------------------------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        return self.lifecycle.state

    @property
    def mitigating(self) -> bool:
        """Whether the client has an active mitigation (RFC 9132 §4.5: 'mitigating-config')."""
        return bool(self._active)

    @property
    def attack(self) -> bool:
        """Whether an attack is taken to be ongoing: as told, else while mitigating."""
        if self._attack_override is not None:
            return self._attack_override
        return self.mitigating

    @property
    def active_mids(self) -> frozenset[int]:
        return frozenset(self._active)

    def scope_of(self, mid: int) -> dict[str, Any] | None:
        """The scope entry of an active request as this client sent it (efficacy updates
        repeat it, RFC 9132 §4.4.3)."""
        return self._active.get(mid)

    def values(self, kind: ConfigSetKind) -> ConfigSet:
        return self._config[kind]

    @property
    def refresh_at(self) -> float | None:
        """When the configuration is refreshed next (None: not scheduled)."""
        return self._refresh_at

    @property
    def probe_at(self) -> float | None:
        """When DTLS is probed next after a TLS fallback (None: not on a fallback)."""
        return self._probe_at

    # -- the link ------------------------------------------------------------------------------

    def link_up(self, now: float, *, reliable: bool, redirect_until: float | None = None,
                tls_fallback: bool = False) -> None:
        """A link to the server is up (first, redialled, or the session moved to it).
        ``redirect_until``: the end of the redirection the link's server was reached by
        (RFC 9132 §4.6; None: the provisioned server, or no end); ``tls_fallback``: TLS was
        used although DTLS is configured (RFC 9132 §4.3: DTLS is probed again later)."""
        self._reliable = reliable
        self._change(SessionEvent.LINK_UP, "link up")
        self.lost_reason = None
        self._redial_at = None
        self._redial_attempt = 0
        self._next_delay = self.redial_delay
        self._clear_spare()
        self._return_at = redirect_until
        self._probe_at = now + self.dtls_probe_interval if tls_fallback else None
        interval, missing = self._heartbeat_values(self._config[ConfigSetKind.IDLE])
        self.monitor = HeartbeatMonitor(interval, missing, now, role=Role.CLIENT,
                                        reliable=reliable)
        self._kind = None
        self._apply(now)

    def link_down(self, now: float, reason: str) -> None:
        """The link ended (closed by the peer, TCP reset, DTLS alert)."""
        if self.lifecycle.live:
            self._lose(now, SessionEvent.LINK_DOWN, f"link down: {reason}")

    def dial_failed(self, now: float, reason: str) -> None:
        """A :class:`Redial` did not reach the server: the next try after a back-off."""
        if self.state is not SessionState.CONNECTING:
            return
        self._change(SessionEvent.LINK_DOWN, f"redial failed: {reason}")
        started = self._redial_started if self._redial_started is not None else now
        self._redial_at = max(now, started + self._next_delay)  # start to start (§4.7)
        self._next_delay = min(self._next_delay * 2, max(REDIAL_MAX, self.redial_delay))

    def spare_failed(self, now: float) -> None:
        """An :class:`OpenSpare` did not reach the server: another one, no sooner than the
        §4.7 retry interval after this one started, while the session stays unheard."""
        if self.state is not SessionState.DEGRADED or self._spare_started is None:
            return
        self._spare_at = max(now, self._spare_started + self._spare_delay)
        self._spare_delay = min(self._spare_delay * 2, max(REDIAL_MAX, self.redial_delay))

    def _open_spare(self, now: float, reason: str) -> None:
        self._spare_at = None
        self._spare_started = now
        self._spare_attempt += 1
        self._events.append(OpenSpare(reason, self._spare_attempt))

    def _clear_spare(self) -> None:
        self._spare_at = self._spare_started = None
        self._spare_attempt = 0
        self._spare_delay = self.redial_delay

    def probe_failed(self, now: float) -> None:
        """A :class:`ProbeDtls` failed: the next one waits another interval (RFC 9132 §4.3)."""
        if self.lifecycle.live:
            self._probe_at = now + self.dtls_probe_interval

    def close(self) -> None:
        if self.state is not SessionState.CLOSED:
            self._change(SessionEvent.CLOSE, "closed")
        self.monitor = None
        self._events.clear()

    # -- traffic and heartbeats (RFC 9132 §4.7) ------------------------------------------------

    def heartbeat_sent(self, now: float) -> None:
        if self.monitor is not None:
            self.monitor.on_heartbeat_sent(now)

    def heartbeat_answered(self, now: float, sent_at: float) -> float | None:
        """A response to our heartbeat; returns an RTT sample when unambiguous."""
        if self.monitor is None:
            return None
        return self.monitor.on_heartbeat_response(now, sent_at)

    def peer_heartbeat(self, now: float, peer_hb_status: bool) -> None:
        if self.monitor is not None:
            self.monitor.on_peer_heartbeat(now, peer_hb_status)

    def traffic(self, now: float) -> None:
        """Any response or notification from the server."""
        if self.monitor is not None:
            self.monitor.on_traffic(now)

    # -- mitigations (RFC 9132 §4.4) -----------------------------------------------------------

    def allocate_mid(self) -> int:
        """The 'mid' of a new request (RFC 9132 §4.4.1.1; raises MidStateError when the
        space is exhausted)."""
        mid = next_mid(self.last_mid, self._active, self.attack)
        self.last_mid = mid
        return mid

    def mid_used(self, mid: int) -> None:
        """A 'mid' chosen elsewhere (by the caller, another process): later ones go above."""
        if mid >= (self.last_mid if self.last_mid is not None else -1):
            self.last_mid = mid

    def mitigation_active(self, now: float, mid: int, scope: Mapping[str, Any]) -> None:
        """The server accepted a mitigation request (2.01 / 2.04)."""
        self.mid_used(mid)
        self._active[mid] = dict(scope)
        self._apply(now)

    def mitigation_ended(self, now: float, mid: int) -> None:
        """The request was withdrawn (2.02), or the server no longer has it."""
        if self._active.pop(mid, None) is not None:
            self._apply(now)

    def set_attack_ongoing(self, now: float, ongoing: bool | None) -> None:
        """Whether an attack is ongoing (None: assume so while a mitigation is active).
        Under attack the session is not declared lost on missing heartbeats (§4.7), the
        configuration is not refreshed (§4.5.3) and a redirection outlives its TTL (§4.6)."""
        self._attack_override = ongoing
        self._apply(now)

    # -- session configuration (RFC 9132 §4.5) -------------------------------------------------

    def config_received(self, now: float, config: ServerConfig, max_age: int | None) -> None:
        """The answer to a configuration GET (discovery §4.5.1, or refresh §4.5.3)."""
        self.server_config = config
        self.config_max_age = max_age
        for kind in ConfigSetKind:
            self._config[kind] = config.current(kind)
        delay = refresh_delay(max_age, attack_active=False)
        self._refresh_at = None if delay is None else now + delay
        self._kind = None
        self._apply(now)

    def refresh_failed(self, now: float) -> None:
        if self._refresh_at is None:
            self._refresh_at = now + REFRESH_RETRY

    def config_installed(self, now: float, sid: int,
                         chosen: Mapping[ConfigSetKind, Mapping[Attribute, Value]]) -> None:
        """The server accepted our configuration PUT (RFC 9132 §4.5.2: "MUST use the
        negotiated values")."""
        self.sid = sid
        for kind, values in chosen.items():
            self._config[kind] = self._config[kind].replace(values)
        self._kind = None
        self._apply(now)

    def config_deleted(self) -> None:
        """RFC 9132 §4.5.4: back to the server's defaults (re-read them with a GET)."""
        self.sid = None

    # -- outputs -------------------------------------------------------------------------------

    def next_event(self) -> ClientEvent | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must be called next (None: nothing scheduled)."""
        times: list[float] = []
        if self.lifecycle.live:
            if self.monitor is not None:
                due = self.monitor.get_timer()
                if due is not None:
                    times.append(due)
            if self._refresh_at is not None and not self.attack:
                times.append(self._refresh_at)  # §4.5.3: none while an attack is active
            if self._return_at is not None and not self.attack:
                times.append(self._return_at)  # §4.6: the alternate is kept under attack
            if self._probe_at is not None:
                times.append(self._probe_at)
            if self._spare_at is not None:
                times.append(self._spare_at)
        elif self.state is SessionState.LOST and self._redial_at is not None:
            times.append(self._redial_at)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        if self.state is SessionState.LOST:
            if self._redial_at is not None and now >= self._redial_at:
                self._start_redial(now, "redial")
            return
        if not self.lifecycle.live:
            return
        monitor = self.monitor
        if monitor is not None:
            monitor.handle_timer(now)
            while (action := monitor.next_event()) is not None:
                if isinstance(action, SendHeartbeat):
                    self._events.append(action)
                    continue
                verdict = monitor_event(action)
                if verdict is None:
                    continue
                if verdict[0] is SessionEvent.HEARTBEATS_LOST:
                    self._lose(now, *verdict)
                    return
                # RFC 9132 §4.7: under attack, the session and its heartbeats go on ...
                self._change(*verdict)
                if verdict[0] is SessionEvent.THRESHOLD_REACHED and self.redial:
                    self._open_spare(now, verdict[1])  # ... and a new one is tried beside
                elif verdict[0] is SessionEvent.PEER_REACHABLE:
                    self._spare_at = None  # heard again: no further attempt
        attack = self.attack
        if self._refresh_at is not None and now >= self._refresh_at and not attack:
            self._refresh_at = None
            self._events.append(RefreshConfig(self.sid))
        if self._return_at is not None and now >= self._return_at and not attack:
            self._return_at = None
            self._events.append(ReturnToProvisioned())
        if self._probe_at is not None and now >= self._probe_at:
            self._probe_at = None
            self._events.append(ProbeDtls())
        if (self._spare_at is not None and now >= self._spare_at
                and self.state is SessionState.DEGRADED):
            self._open_spare(now, "the DOTS server is still unheard")

    # -- internals -----------------------------------------------------------------------------

    def _change(self, event: SessionEvent, reason: str) -> None:
        change = self.lifecycle.apply(event, reason)
        if change.old is not change.new:
            self._events.append(change)

    def _lose(self, now: float, event: SessionEvent, reason: str) -> None:
        self.lost_reason = reason
        self._change(event, reason)
        self.monitor = None
        self._probe_at = None
        self._clear_spare()
        if self.redial:
            self._start_redial(now, reason)

    def _start_redial(self, now: float, reason: str) -> None:
        self._redial_at = None
        self._redial_started = now
        self._redial_attempt += 1
        self._change(SessionEvent.REDIAL, reason)
        self._events.append(Redial(reason, self._redial_attempt))

    def _heartbeat_values(self, values: ConfigSet) -> tuple[float, int]:
        if self.heartbeat_override is not None:
            return self.heartbeat_override
        return float(values.heartbeat_interval), values.missing_hb_allowed

    def _apply(self, now: float) -> None:
        """RFC 9132 §4.5: the set that applies now, on the CoAP parameters (§4.5.2) and the
        heartbeat monitor; agents "MUST switch automatically" when mitigation starts/ends."""
        monitor = self.monitor
        if monitor is None or not self.lifecycle.live:
            return
        kind = ConfigSetKind.MITIGATING if self._active else ConfigSetKind.IDLE
        values = self._config[kind]
        interval, missing = self._heartbeat_values(values)
        monitor.set_interval(interval, missing, now)
        monitor.set_attack_ongoing(self.attack)
        if kind is not self._kind:
            self._kind = kind
            self._events.append(ParamsChanged(values.transmission_parameters(), kind))
