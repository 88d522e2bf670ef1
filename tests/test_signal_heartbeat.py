"""Heartbeat mechanism (RFC 9132 §4.7) in fake time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from dotsd.model.codec import from_cbor, to_cbor
from dotsd.model.yang import validate_request, validate_response
from dotsd.signal.heartbeat import (
    HEARTBEAT_MEMBER,
    HEARTBEAT_PATH,
    HeartbeatAction,
    HeartbeatError,
    HeartbeatMonitor,
    PeerReachable,
    Role,
    SendHeartbeat,
    SessionLost,
    ThresholdReached,
    build_heartbeat_body,
    check_heartbeat_path,
    parse_heartbeat_body,
)


def fire(mon: HeartbeatMonitor, now: float) -> list[HeartbeatAction]:
    """handle_timer, then every action next_event gives."""
    mon.handle_timer(now)
    actions = []
    while (action := mon.next_event()) is not None:
        actions.append(action)
    return actions


def run(mon: HeartbeatMonitor, until: float, *, answered: Callable[[float], bool],
        peer: Callable[[float], bool] | None = None) -> list[tuple[float, HeartbeatAction]]:
    """Drive the monitor like an event loop: fire its timer, perform SendHeartbeat (and, if
    ``answered(t)``, deliver the 2.04 0.1 s later); ``peer(t)`` adds peer heartbeats at every
    whole 10 s."""
    log: list[tuple[float, HeartbeatAction]] = []
    t = 0.0
    inbox: list[float] = []
    while t <= until:
        timer = mon.get_timer()
        candidates = [x for x in (timer, *inbox) if x is not None]
        if peer is not None:
            candidates.append((t // 10 + 1) * 10)
        if not candidates:
            break
        t = max(t, min(candidates))
        if t > until:
            break
        if t in inbox:
            inbox.remove(t)
            mon.on_heartbeat_response(t)
        if peer is not None and t % 10 == 0 and peer(t):
            mon.on_peer_heartbeat(t, True)
        if timer is not None and t >= timer:
            for action in fire(mon, t):
                log.append((t, action))
                if isinstance(action, SendHeartbeat):
                    mon.on_heartbeat_sent(t)
                    if answered(t):
                        inbox.append(t + 0.1)
        elif peer is not None:
            t += 1e-9
    return log


def sends(log: list[tuple[float, HeartbeatAction]]) -> list[float]:
    return [t for t, a in log if isinstance(a, SendHeartbeat)]


# ------------------------------------------------------------------------------- bodies


def test_body_figure_27_and_yang() -> None:
    body = build_heartbeat_body(True)
    assert body == {"ietf-dots-signal-channel:heartbeat": {"peer-hb-status": True}}
    validate_request(body)  # client-initiated
    validate_response(body)  # server-initiated (RFC 9132 §4.7: both directions)
    assert parse_heartbeat_body(from_cbor(to_cbor(build_heartbeat_body(False)))) is False


@pytest.mark.parametrize("body", [
    {}, {HEARTBEAT_MEMBER: {}}, {HEARTBEAT_MEMBER: {"peer-hb-status": 1}},
    {HEARTBEAT_MEMBER: {"peer-hb-status": True, "x": 1}}, {HEARTBEAT_MEMBER: True},
    {"ietf-dots-signal-channel:signal-config": {}},
])
def test_bad_bodies(body: dict[str, Any]) -> None:
    with pytest.raises(HeartbeatError):
        parse_heartbeat_body(body)


def test_path_rules() -> None:
    check_heartbeat_path(HEARTBEAT_PATH)
    for extra in ("cuid=abc", "mid=1", "cdid=x"):
        with pytest.raises(HeartbeatError):
            check_heartbeat_path((*HEARTBEAT_PATH, extra))
    with pytest.raises(HeartbeatError):
        check_heartbeat_path((".well-known", "dots", "config"))


# ------------------------------------------------------------------------------- cadence


def test_sends_every_interval_when_answered() -> None:
    mon = HeartbeatMonitor(30, 15, 0.0)
    assert mon.get_timer() == 30.0
    log = run(mon, 300.5, answered=lambda t: True)
    assert sends(log) == [30.0 * k for k in range(1, 11)]
    assert not mon.lost
    assert mon.missed == 0


def test_client_loses_session_after_missing_hb_allowed() -> None:
    mon = HeartbeatMonitor(30, 15, 0.0)
    log = run(mon, 10_000, answered=lambda t: False)
    lost = [(t, a) for t, a in log if isinstance(a, SessionLost)]
    assert len(lost) == 1
    t, action = lost[0]
    assert isinstance(action, SessionLost)
    # 15 heartbeats (t=30..450) each waited 30 s unanswered: lost at t=480.
    assert t == 480.0
    assert action.missed == 15
    assert len(sends(log)) == 15
    assert mon.lost and mon.get_timer() is None
    assert fire(mon, 10_001) == []


def test_one_response_resets_the_count() -> None:
    mon = HeartbeatMonitor(10, 3, 0.0)
    # Answer only the heartbeat sent at t=30: no loss until 3 misses after it.
    log = run(mon, 200, answered=lambda t: t == 30.0)
    lost = [t for t, a in log if isinstance(a, SessionLost)]
    assert lost == [70.0]  # 40, 50, 60 missing; checked when the next is due at 70


def test_other_traffic_does_not_reset_client_count_in_normal_conditions() -> None:
    mon = HeartbeatMonitor(10, 2, 0.0)
    for t in (10.0, 20.0):
        assert [type(a) for a in fire(mon, t)] == [SendHeartbeat]
        mon.on_heartbeat_sent(t)
        mon.on_traffic(t + 1)  # e.g. a mitigation response: not a heartbeat response
    actions = fire(mon, 30.0)
    assert len(actions) == 1 and isinstance(actions[0], SessionLost)


def test_rtt_sample_from_response() -> None:
    mon = HeartbeatMonitor(30, 15, 0.0)
    fire(mon, 30.0)
    mon.on_heartbeat_sent(30.0)
    assert mon.on_heartbeat_response(30.25) == pytest.approx(0.25)
    fire(mon, 60.0)
    mon.on_heartbeat_sent(60.0)
    fire(mon, 90.0)
    mon.on_heartbeat_sent(90.0)
    assert mon.on_heartbeat_response(90.5) is None  # two outstanding: ambiguous (Karn)
    assert mon.on_heartbeat_response(91.0, sent_at=90.0) == pytest.approx(1.0)


# ------------------------------------------------------------------------------- attack


def test_client_under_attack_keeps_session_and_keeps_sending() -> None:
    mon = HeartbeatMonitor(10, 3, 0.0)
    mon.set_attack_ongoing(True)
    log = run(mon, 100, answered=lambda t: False)
    kinds = [(t, type(a)) for t, a in log if not isinstance(a, SendHeartbeat)]
    assert kinds == [(40.0, ThresholdReached)]  # once; no SessionLost
    assert sends(log) == [10.0 * k for k in range(1, 11)]
    assert mon.degraded and not mon.lost
    # Traffic from the server gets through again: the client can stop the new session.
    mon.on_traffic(101.0)
    assert mon.get_timer() == 101.0
    assert fire(mon, 101.0) == [PeerReachable()]
    assert not mon.degraded and mon.missed == 0


def test_client_attack_over_then_lost() -> None:
    mon = HeartbeatMonitor(10, 2, 0.0)
    mon.set_attack_ongoing(True)
    log = run(mon, 30, answered=lambda t: False)
    assert any(isinstance(a, ThresholdReached) for _, a in log)
    mon.set_attack_ongoing(False)
    actions = fire(mon, 40.0)
    assert isinstance(actions[0], SessionLost)


# ------------------------------------------------------------------------------- server


def test_server_with_client_traffic_does_not_lose_session() -> None:
    mon = HeartbeatMonitor(10, 3, 0.0, role=Role.SERVER)
    # The client's inbound link is saturated: our heartbeats go unanswered, but the
    # client's own heartbeats keep arriving (RFC 9132 §4.7).
    log = run(mon, 200, answered=lambda t: False, peer=lambda t: True)
    kinds = [type(a) for _, a in log if not isinstance(a, SendHeartbeat)]
    assert kinds == [ThresholdReached]
    assert not mon.lost
    # A heartbeat response makes the session whole again.
    mon.on_heartbeat_response(201.0)
    assert fire(mon, 201.0) == [PeerReachable()]


def test_server_traffic_does_not_clear_threshold_but_silence_loses() -> None:
    mon = HeartbeatMonitor(10, 3, 0.0, role=Role.SERVER)
    log = run(mon, 60, answered=lambda t: False, peer=lambda t: t <= 40)
    # t=40: heartbeats of 10, 20, 30 missing, but the client was heard at t=40.
    assert [(t, type(a)) for t, a in log if not isinstance(a, SendHeartbeat)] == [
        (40.0, ThresholdReached)]
    log = run(mon, 200, answered=lambda t: False)
    lost = [(t, a) for t, a in log if isinstance(a, SessionLost)]
    assert len(lost) == 1
    # Last client traffic at t=40; span 3 x 10 s; checked at heartbeat times.
    assert lost[0][0] == 70.0


def test_server_over_tcp_keeps_a_client_until_the_whole_silence() -> None:
    """Over TCP one reply missing for an interval reaches the threshold (RFC 9132 §4.7); a
    server still hearing the client keeps the session (DEGRADED), and concludes only when
    nothing came for 'missing-hb-allowed' x 'heartbeat-interval' (here 3 x 10 s after the
    client's last heartbeat at t=20), not one interval after it."""
    mon = HeartbeatMonitor(10, 3, 0.0, role=Role.SERVER, reliable=True)
    assert mon.threshold == 1 and mon.silence == 30.0
    log = run(mon, 200, answered=lambda t: False, peer=lambda t: t <= 20)
    assert [(t, type(a)) for t, a in log if not isinstance(a, SendHeartbeat)] == [
        (20.0, ThresholdReached), (50.0, SessionLost)]


def test_server_observer_without_own_heartbeats() -> None:
    mon = HeartbeatMonitor(30, 15, 0.0, role=Role.SERVER, send_heartbeats=False)
    assert mon.get_timer() == 450.0
    mon.on_peer_heartbeat(30.0, True)
    assert mon.get_timer() == 480.0
    assert fire(mon, 479.0) == []
    actions = fire(mon, 480.0)
    assert len(actions) == 1 and isinstance(actions[0], SessionLost)


# ------------------------------------------------------------------------------- peer status


def test_peer_hb_status_window() -> None:
    mon = HeartbeatMonitor(30, 15, 0.0)
    assert mon.peer_hb_status(59.0) is True  # no 2 x interval period elapsed yet
    assert mon.peer_hb_status(60.0) is False
    mon.on_peer_heartbeat(70.0, True)
    assert mon.peer_hb_status(130.0) is True
    assert mon.peer_hb_status(130.5) is False
    assert mon.peer_reports_receiving is True


def test_peer_hb_status_after_an_interval_change_waits_for_the_new_pace() -> None:
    """The switch to 'mitigating-config' (RFC 9132 §4.5) shortens the interval on both sides:
    the peer's heartbeats of the old, slower pace are no reason to report 'peer-hb-status'
    false (the server then took the client for one under attack at every switch); 2 x the
    new interval without one is."""
    mon = HeartbeatMonitor(30, 15, 0.0)
    mon.on_peer_heartbeat(50.0, True)
    mon.set_interval(15, 15, 75.0)
    assert mon.peer_hb_status(90.0) is True  # 40 s since the last, 15 s at the new pace
    assert mon.peer_hb_status(104.9) is True
    assert mon.peer_hb_status(105.0) is False  # 2 x 15 s at the new pace without one
    mon.on_peer_heartbeat(106.0, True)
    assert mon.peer_hb_status(136.0) is True and mon.peer_hb_status(136.5) is False
    mon.set_interval(15, 5, 140.0)  # the same interval: nothing to wait for
    assert mon.peer_hb_status(140.0) is False


def test_client_reports_false_when_server_heartbeats_stop() -> None:
    mon = HeartbeatMonitor(10, 15, 0.0)
    log = run(mon, 100, answered=lambda t: True, peer=lambda t: t < 30)
    statuses = [(t, a.peer_hb_status) for t, a in log if isinstance(a, SendHeartbeat)]
    assert statuses[:4] == [(10.0, True), (20.0, True), (30.0, True), (40.0, True)]
    assert (50.0, False) in statuses  # last peer heartbeat at t=20, 2 x 10 s before 50


def test_peer_reporting_false_triggers_immediate_heartbeat() -> None:
    mon = HeartbeatMonitor(30, 15, 0.0, role=Role.SERVER)
    mon.on_peer_heartbeat(12.0, False)
    assert mon.get_timer() == 12.0
    actions = fire(mon, 12.0)
    assert actions == [SendHeartbeat(True)]
    mon.on_heartbeat_sent(12.0)
    assert mon.get_timer() == 42.0
    assert mon.peer_reports_receiving is False


def test_reply_to_peer_heartbeat_option_and_no_premature_miss() -> None:
    mon = HeartbeatMonitor(30, 1, 0.0, role=Role.CLIENT, reply_to_peer_heartbeat=True)
    assert [type(a) for a in fire(mon, 30.0)] == [SendHeartbeat]
    mon.on_heartbeat_sent(30.0)
    mon.on_peer_heartbeat(31.0, True)
    assert mon.get_timer() == 60.0  # ours went 1 s ago: no reply (at most 2 an interval)
    mon.on_peer_heartbeat(46.0, True)
    assert mon.get_timer() == 46.0
    # The heartbeat of t=30 has had only 16 s: not yet missing.
    assert [type(a) for a in fire(mon, 46.0)] == [SendHeartbeat]


# ------------------------------------------------------------------------------- config


def test_disabled_when_interval_zero_and_reenabled() -> None:
    mon = HeartbeatMonitor(0, 15, 0.0)
    assert not mon.enabled
    assert mon.get_timer() is None
    assert fire(mon, 1000.0) == []
    # Mitigation starts: switch from idle-config (0) to mitigating-config (RFC 9132 §4.5).
    mon.set_interval(30, 15, 1000.0)
    assert mon.get_timer() == 1030.0
    assert mon.peer_hb_status(1030.0) is True


def test_interval_change_at_run_time() -> None:
    mon = HeartbeatMonitor(30, 15, 0.0)
    fire(mon, 30.0)
    mon.on_heartbeat_sent(30.0)
    mon.set_interval(60, 5, 40.0)
    assert mon.get_timer() == 90.0
    assert mon.missing_allowed == 5
    mon.set_interval(15, 5, 80.0)
    assert mon.get_timer() == 80.0  # 30 + 15 is already past
    mon.set_interval(0, 5, 81.0)
    assert mon.get_timer() is None and mon.missed == 0


def test_reliable_transport_one_reply_per_interval() -> None:
    mon = HeartbeatMonitor(30, 15, 0.0, reliable=True)
    log = run(mon, 1000, answered=lambda t: False)
    lost = [t for t, a in log if isinstance(a, SessionLost)]
    assert lost == [60.0]  # RFC 9132 §4.7: allow up to 'heartbeat-interval' for the reply


def test_bad_values() -> None:
    with pytest.raises(ValueError):
        HeartbeatMonitor(-1, 15, 0.0)
    with pytest.raises(ValueError):
        HeartbeatMonitor(30, 0, 0.0)
