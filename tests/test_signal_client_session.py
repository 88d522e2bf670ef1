"""The DOTS client's session behaviour (dotsd.signal.client_session) on fake time: heartbeats,
configuration refresh, redial, redirection expiry, DTLS probing, configuration sets."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dotsd.signal.client_session import (
    REDIAL_MAX,
    REDIAL_MIN,
    ClientSession,
    OpenSpare,
    ParamsChanged,
    ProbeDtls,
    Redial,
    RefreshConfig,
    ReturnToProvisioned,
    SendHeartbeat,
)
from dotsd.signal.config import ConfigSetKind, parse_config_response
from dotsd.signal.session import (
    SESSION_TRANSITIONS,
    InvalidSessionTransition,
    SessionEvent,
    SessionLifecycle,
    SessionState,
    StateChanged,
)

SCOPE = {"target-prefix": ["2001:db8:6401::1/128"], "lifetime": 3600}


def drain(session: ClientSession) -> list[Any]:
    events = []
    while (ev := session.next_event()) is not None:
        events.append(ev)
    return events


def run_until(session: ClientSession, until: float, *, answer: bool = False) -> list[Any]:
    """Fire every timer up to ``until``; heartbeats are sent (and answered with ``answer``)."""
    events: list[Any] = []
    for _ in range(10_000):
        due = session.get_timer()
        if due is None or due > until:
            break
        session.handle_timer(due)
        for ev in drain(session):
            events.append(ev)
            if isinstance(ev, SendHeartbeat):
                session.heartbeat_sent(due)
                if answer:
                    session.heartbeat_answered(due + 0.01, due)
    return events


def up(now: float = 0.0, **kw: Any) -> ClientSession:
    session = ClientSession(now, heartbeat=kw.pop("heartbeat", (10.0, 3)))
    session.link_up(now, reliable=False, **kw)
    return session


def config(max_age: int | None = None) -> Any:
    body = {"ietf-dots-signal-channel:signal-config": {
        "mitigating-config": {"heartbeat-interval": {"current-value": 15}},
        "idle-config": {"heartbeat-interval": {"current-value": 30}}}}
    return parse_config_response(body)


# -- the lifecycle table ---------------------------------------------------------------------


def test_every_state_is_reachable_and_closed_is_final() -> None:
    reached = {SessionState.CONNECTING}
    frontier = [SessionState.CONNECTING]
    while frontier:
        state = frontier.pop()
        for (src, _event), dst in SESSION_TRANSITIONS.items():
            if src is state and dst not in reached:
                reached.add(dst)
                frontier.append(dst)
    assert reached == set(SessionState)
    assert [e for (s, e) in SESSION_TRANSITIONS if s is SessionState.CLOSED] == [
        SessionEvent.CLOSE]


def test_an_event_not_in_the_table_is_an_error() -> None:
    life = SessionLifecycle(SessionState.CONNECTING)
    with pytest.raises(InvalidSessionTransition, match="heartbeats-lost"):
        life.apply(SessionEvent.HEARTBEATS_LOST)
    assert life.state is SessionState.CONNECTING  # unchanged
    change = life.apply(SessionEvent.LINK_UP, "up")
    assert change == StateChanged(SessionState.CONNECTING, SessionState.ESTABLISHED,
                                  SessionEvent.LINK_UP, "up")
    life.apply(SessionEvent.CLOSE)
    with pytest.raises(InvalidSessionTransition):
        life.apply(SessionEvent.LINK_UP)


# -- heartbeats (RFC 9132 §4.7) --------------------------------------------------------------


def test_heartbeats_every_interval_and_the_session_survives_while_answered() -> None:
    session = up()
    first = drain(session)
    assert StateChanged(SessionState.CONNECTING, SessionState.ESTABLISHED,
                        SessionEvent.LINK_UP, "link up") in first
    assert session.get_timer() == 10.0
    events = run_until(session, 100.0, answer=True)
    beats = [e for e in events if isinstance(e, SendHeartbeat)]
    assert len(beats) == 10
    assert session.state is SessionState.ESTABLISHED


def test_unanswered_heartbeats_lose_the_session_and_redial_at_once() -> None:
    session = up()
    drain(session)
    events = run_until(session, 100.0)
    lost = [e for e in events if isinstance(e, StateChanged) and e.new is SessionState.LOST]
    assert len(lost) == 1 and lost[0].event is SessionEvent.HEARTBEATS_LOST
    assert isinstance(events[-1], Redial) and events[-1].attempt == 1
    assert session.state is SessionState.CONNECTING
    assert "heartbeats" in (session.lost_reason or "")


def test_under_attack_the_session_is_degraded_not_lost() -> None:
    session = up()
    session.mitigation_active(0.0, 1, SCOPE)  # an active mitigation: attack assumed
    drain(session)
    events = run_until(session, 200.0)
    states = [e.new for e in events if isinstance(e, StateChanged)]
    assert states == [SessionState.DEGRADED]
    assert not any(isinstance(e, Redial) for e in events)
    session.traffic(201.0)  # the server is heard again
    events = run_until(session, 201.0)
    assert [e.new for e in events if isinstance(e, StateChanged)] == [SessionState.ESTABLISHED]


def test_under_attack_a_new_session_is_tried_beside() -> None:
    """RFC 9132 §4.7: once 'missing-hb-allowed' is reached under attack the client "SHOULD try
    to establish a new DOTS signal channel session" and keeps the current one; a failed try is
    repeated no sooner than the redial interval; none once the server is heard again."""
    session = up()
    session.mitigation_active(0.0, 1, SCOPE)
    drain(session)
    events = run_until(session, 200.0)
    spares = [e for e in events if isinstance(e, OpenSpare)]
    assert [e.attempt for e in spares] == [1]
    assert session.state is SessionState.DEGRADED
    started = 40.0  # 3 unanswered heartbeats, 10 s apart, after the first one at 10 s
    assert session._spare_started == started
    session.spare_failed(started + 12.0)
    assert not any(isinstance(e, OpenSpare)
                   for e in run_until(session, started + REDIAL_MIN - 0.1))
    again = [e for e in run_until(session, started + REDIAL_MIN) if isinstance(e, OpenSpare)]
    assert [e.attempt for e in again] == [2]
    session.spare_failed(started + REDIAL_MIN + 5.0)
    session.traffic(started + REDIAL_MIN + 10.0)  # heard again: no third attempt
    later = run_until(session, 1000.0, answer=True)
    assert not any(isinstance(e, OpenSpare) for e in later)
    assert session.state is SessionState.ESTABLISHED
    # Without an attack the session is lost instead (and redialled), no new session beside.
    idle = up()
    drain(idle)
    assert not any(isinstance(e, OpenSpare) for e in run_until(idle, 200.0))
    assert idle.state is not SessionState.DEGRADED


def test_the_new_session_takes_over() -> None:
    session = up()
    session.mitigation_active(0.0, 1, SCOPE)
    drain(session)
    run_until(session, 200.0)
    assert session.state is SessionState.DEGRADED
    session.link_up(201.0, reliable=False)  # the new session is up: the session moves
    assert session.state is SessionState.ESTABLISHED
    assert not any(isinstance(e, OpenSpare) for e in run_until(session, 230.0))


def test_server_heartbeats_feed_peer_hb_status() -> None:
    session = up()
    drain(session)
    session.peer_heartbeat(1.0, False)  # the server does not get ours: reply at once (§4.7)
    assert session.get_timer() == 1.0
    events = run_until(session, 1.0)
    assert any(isinstance(e, SendHeartbeat) for e in events)


def test_peer_hb_status_says_whether_the_server_heartbeats_arrive() -> None:
    """RFC 9132 §4.7: the client's 'peer-hb-status' is true while a heartbeat of the server
    arrived in the last 2 x 'heartbeat-interval' (10 s here): false once they stop ("receives
    a 2.04 response for its heartbeat messages but no server-initiated heartbeat messages"),
    true again when one gets through."""
    session = up()
    drain(session)
    sent: list[tuple[float, bool]] = []
    for k in range(1, 13):
        t = 10.0 * k
        if k <= 3 or k >= 10:  # the server's heartbeat, just before ours
            session.peer_heartbeat(t - 0.5, True)
        sent += [(t, ev.peer_hb_status) for ev in run_until(session, t, answer=True)
                 if isinstance(ev, SendHeartbeat)]
    # The server's last before the pause came at 29.5: more than 20 s before t=50.
    assert sent == [(10.0, True), (20.0, True), (30.0, True), (40.0, True), (50.0, False),
                    (60.0, False), (70.0, False), (80.0, False), (90.0, False),
                    (100.0, True), (110.0, True), (120.0, True)]
    assert session.state is SessionState.ESTABLISHED  # answered: the session is fine


# -- configuration refresh (RFC 9132 §4.5.3) -------------------------------------------------


def test_refresh_before_max_age_runs_out() -> None:
    session = up(heartbeat=(0.0, 3))
    session.config_received(0.0, config(), 100)
    drain(session)
    assert session.get_timer() == pytest.approx(90.0)
    events = run_until(session, 95.0)
    assert events == [RefreshConfig(None)]
    assert session.get_timer() is None  # until the answer comes
    session.config_received(96.0, config(), 100)
    assert session.get_timer() == pytest.approx(186.0)


def test_refresh_every_60_s_without_max_age_and_never_for_an_infinite_one() -> None:
    session = up(heartbeat=(0.0, 3))
    session.config_received(0.0, config(), None)
    assert session.get_timer() == pytest.approx(54.0)
    session.config_received(0.0, config(), 2**32 - 1)
    assert session.get_timer() is None


def test_no_refresh_while_a_mitigation_is_active() -> None:
    """The bug of `dotsd client run`: it refreshed during an active mitigation, which
    RFC 9132 §4.5.3 forbids ("refresh requests MUST NOT be sent by DOTS clients")."""
    session = up(heartbeat=(0.0, 3))
    session.config_received(0.0, config(), 100)
    session.mitigation_active(10.0, 7, SCOPE)
    drain(session)
    assert session.get_timer() is None
    session.handle_timer(500.0)  # even when called late, nothing
    assert not any(isinstance(e, RefreshConfig) for e in drain(session))
    session.mitigation_ended(600.0, 7)  # the attack is over: the refresh is overdue
    drain(session)
    assert session.get_timer() == pytest.approx(90.0)
    assert RefreshConfig(None) in run_until(session, 600.0)


def test_a_failed_refresh_is_tried_again() -> None:
    session = up(heartbeat=(0.0, 3))
    session.config_received(0.0, config(), 10)
    run_until(session, 9.0)
    session.refresh_failed(9.5)
    assert session.get_timer() == pytest.approx(69.5)


# -- configuration sets (RFC 9132 §4.5) ------------------------------------------------------


def test_mitigating_config_while_a_mitigation_is_active() -> None:
    session = ClientSession(0.0)
    session.link_up(0.0, reliable=False)
    session.config_received(0.0, config(), None)
    kinds = [e.kind for e in drain(session) if isinstance(e, ParamsChanged)]
    assert kinds[-1] is ConfigSetKind.IDLE
    assert session.monitor is not None and session.monitor.interval == 30
    session.mitigation_active(1.0, 1, SCOPE)
    assert [e.kind for e in drain(session) if isinstance(e, ParamsChanged)] == [
        ConfigSetKind.MITIGATING]
    assert session.monitor.interval == 15
    session.mitigation_active(2.0, 2, SCOPE)
    assert not any(isinstance(e, ParamsChanged) for e in drain(session))  # no change
    session.mitigation_ended(3.0, 1)
    session.mitigation_ended(3.0, 2)
    assert [e.kind for e in drain(session) if isinstance(e, ParamsChanged)] == [
        ConfigSetKind.IDLE]


# -- redial (RFC 9132 §4.7) ------------------------------------------------------------------


def test_redial_backs_off_while_dialing_fails() -> None:
    session = up()
    drain(session)
    session.link_down(5.0, "closed by peer")
    events = drain(session)
    assert [e.new for e in events if isinstance(e, StateChanged)] == [
        SessionState.LOST, SessionState.CONNECTING]
    now, delays = 5.0, []
    for _ in range(10):
        session.dial_failed(now, "refused")
        due = session.get_timer()
        assert due is not None
        delays.append(due - now)
        now = due
        session.handle_timer(now)
        assert isinstance(drain(session)[-1], Redial)
    # RFC 9132 §4.7: never sooner than 60 s after the previous attempt, then towards 300 s.
    assert delays[:5] == [REDIAL_MIN, 120.0, 240.0, REDIAL_MAX, REDIAL_MAX]
    assert (REDIAL_MIN, REDIAL_MAX) == (60.0, 300.0)
    # Start to start: an attempt that took 45 s is followed 15 s after it failed.
    session.handle_timer(now)
    session.dial_failed(now + 45.0, "timed out")
    assert session.get_timer() == now + REDIAL_MAX
    session.link_up(now, reliable=True)
    assert session.state is SessionState.ESTABLISHED


def test_without_redial_a_lost_session_waits_for_the_application() -> None:
    session = ClientSession(0.0, redial=False)
    session.link_up(0.0, reliable=False)
    session.link_down(1.0, "reset")
    assert not any(isinstance(e, Redial) for e in drain(session))
    assert session.state is SessionState.LOST and session.get_timer() is None
    session.link_up(2.0, reliable=False)
    assert session.state is SessionState.ESTABLISHED


# -- redirection (RFC 9132 §4.6) and DTLS probing (§4.3) -------------------------------------


def test_back_to_the_provisioned_server_when_the_redirection_ends() -> None:
    session = up(heartbeat=(0.0, 3), redirect_until=100.0)
    drain(session)
    assert session.get_timer() == 100.0
    assert run_until(session, 100.0) == [ReturnToProvisioned()]


def test_the_alternate_server_is_kept_during_an_attack() -> None:
    session = up(heartbeat=(0.0, 3), redirect_until=100.0)
    session.set_attack_ongoing(50.0, True)
    drain(session)
    assert run_until(session, 1000.0) == []
    session.set_attack_ongoing(1000.0, False)
    assert run_until(session, 1000.0) == [ReturnToProvisioned()]


def test_dtls_is_probed_again_every_five_minutes_after_a_tls_fallback() -> None:
    session = up(heartbeat=(0.0, 3), tls_fallback=True)
    drain(session)
    assert run_until(session, 299.0) == []
    assert run_until(session, 300.0) == [ProbeDtls()]
    session.probe_failed(301.0)
    assert session.get_timer() == 601.0
    session.link_up(305.0, reliable=False)  # moved to DTLS
    assert session.get_timer() is None


# -- mids (RFC 9132 §4.4.1.1) ----------------------------------------------------------------


def test_mids_increase_and_stay_above_those_chosen_elsewhere() -> None:
    session = ClientSession(0.0, last_mid=41)
    assert session.allocate_mid() == 42
    session.mid_used(100)
    assert session.allocate_mid() == 101
    session.mid_used(5)
    assert session.allocate_mid() == 102


# -- any sequence of inputs ------------------------------------------------------------------

_OPS = st.sampled_from(["tick", "beat", "answer", "peer", "traffic", "down", "dial-failed",
                        "up", "mitigate", "withdraw", "config", "attack", "probe-failed"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_OPS, st.floats(0.0, 40.0)), max_size=60), st.booleans())
def test_any_input_sequence_keeps_the_timer_ahead(ops: list[tuple[str, float]],
                                                  redial: bool) -> None:
    session = ClientSession(0.0, redial=redial, heartbeat=(10.0, 2))
    session.link_up(0.0, reliable=False, redirect_until=50.0, tls_fallback=True)
    now = 0.0
    for op, step in ops:
        now += step
        if op == "tick":
            due = session.get_timer()
            if due is not None:
                now = max(now, due)
            session.handle_timer(now)
            after = session.get_timer()
            assert after is None or after > now
        elif op == "beat":
            session.heartbeat_sent(now)
        elif op == "answer":
            session.heartbeat_answered(now, now - 0.01)
        elif op == "peer":
            session.peer_heartbeat(now, step > 20)
        elif op == "traffic":
            session.traffic(now)
        elif op == "down":
            session.link_down(now, "test")
        elif op == "dial-failed":
            session.dial_failed(now, "test")
        elif op == "up":
            session.link_up(now, reliable=step > 20)
        elif op == "mitigate":
            session.mitigation_active(now, session.allocate_mid(), SCOPE)
        elif op == "withdraw" and session.active_mids:
            session.mitigation_ended(now, min(session.active_mids))
        elif op == "config":
            session.config_received(now, config(), int(step) + 1)
        elif op == "attack":
            session.set_attack_ongoing(now, None if step < 10 else step > 25)
        elif op == "probe-failed":
            session.probe_failed(now)
        drain(session)
    session.close()
    assert session.state is SessionState.CLOSED and session.get_timer() is None
