"""The server's view of one client session (dotsd.signal.server_session) on fake time: the
configuration set in force, the heartbeat rules of the server role (it sends heartbeats of its
own and probes a quiet client, RFC 9132 §4.7), the lifecycle."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dotsd.signal.config import ConfigPolicy, ConfigSetKind, SessionConfig
from dotsd.signal.identity import ClientIdentity
from dotsd.signal.server_session import (
    InboundSaturation,
    ParamsChanged,
    SendHeartbeat,
    ServerSession,
)
from dotsd.signal.session import SessionState, StateChanged

CLIENT = ClientIdentity(identity="spki-sha256:00", cuid="cuid-1")
SPAN = 30 * 15  # the idle defaults: heartbeat-interval x missing-hb-allowed (RFC 9132 §4.5)


def drain(session: ServerSession) -> list[Any]:
    events = []
    while (ev := session.next_event()) is not None:
        events.append(ev)
    return events


def timeline(session: ServerSession, until: float, *,
             answer: Callable[[float], bool] = lambda t: False) -> list[tuple[float, Any]]:
    """Fire every timer up to ``until``: (time, event) of what came out. The server's
    heartbeats (SendHeartbeat) are answered at once when ``answer(t)``."""
    events: list[tuple[float, Any]] = []
    for _ in range(10_000):
        due = session.get_timer()
        if due is None or due > until:
            break
        session.handle_timer(due)
        for ev in drain(session):
            events.append((due, ev))
            if isinstance(ev, SendHeartbeat) and answer(due):
                session.heartbeat_answered(due, due)
    return events


def _always(t: float) -> bool:
    return True


def _never(t: float) -> bool:
    return False


def fire(session: ServerSession, until: float, **kw: Any) -> list[Any]:
    """The events up to ``until``, the server's heartbeats left out."""
    return [ev for _, ev in timeline(session, until, **kw) if not isinstance(ev, SendHeartbeat)]


def beats(events: list[tuple[float, Any]]) -> list[float]:
    return [t for t, ev in events if isinstance(ev, SendHeartbeat)]


def states(events: list[tuple[float, Any]]) -> list[tuple[float, SessionState]]:
    return [(t, ev.new) for t, ev in events if isinstance(ev, StateChanged)]


def new(now: float = 0.0, mitigating: bool = False) -> ServerSession:
    return ServerSession(CLIENT, SessionConfig(ConfigPolicy()), "link-1", now,
                         reliable=False, mitigating=mitigating)


def test_a_new_session_is_established_with_the_set_in_force() -> None:
    events = drain(new())
    assert isinstance(events[0], StateChanged) and events[0].new is SessionState.ESTABLISHED
    assert isinstance(events[1], ParamsChanged) and events[1].kind is ConfigSetKind.IDLE
    events = drain(new(mitigating=True))
    assert events[1].kind is ConfigSetKind.MITIGATING


def test_sets_switch_with_mitigation_activity_only_when_it_changes() -> None:
    session = new()
    drain(session)
    session.set_mitigating(1.0, False)
    assert drain(session) == []
    session.set_mitigating(2.0, True)
    events = drain(session)
    assert [e.kind for e in events] == [ConfigSetKind.MITIGATING]
    assert session.monitor.interval == session.config.effective(True).heartbeat_interval


def test_the_server_sends_heartbeats_every_interval_while_answered() -> None:
    """RFC 9132 §4.7: the server probes the client too, every 'heartbeat-interval' (30 s, the
    idle default); answered, the session stays ESTABLISHED however long it is otherwise
    quiet."""
    session = new()
    drain(session)
    assert session.get_timer() == 30.0
    events = timeline(session, 3000.0, answer=lambda t: True)
    assert beats(events) == [30.0 * k for k in range(1, 101)]
    assert states(events) == [] and session.state is SessionState.ESTABLISHED
    assert session.heartbeats_sent == session.heartbeats_answered == 100


def test_a_quiet_client_is_probed_then_lost() -> None:
    """RFC 9132 §4.7: a client heard of no more is probed; it is lost once 'missing-hb-allowed'
    (15) heartbeats went unanswered and nothing came from it for 15 x 30 s: the server's
    heartbeats of t=30..450, each given its interval, then lost at t=480."""
    session = new()
    drain(session)
    events = timeline(session, 479.0)
    assert beats(events) == [30.0 * k for k in range(1, 16)]
    assert states(events) == [] and session.monitor.missed == 15
    events = timeline(session, 480.0)
    assert states(events) == [(480.0, SessionState.LOST)] and not beats(events)
    assert session.lost and session.get_timer() is None
    assert "no traffic" in session.lifecycle_reason


def test_one_answered_probe_restarts_the_count() -> None:
    session = new()
    drain(session)
    events = timeline(session, 2000.0, answer=lambda t: t == 300.0)
    # The answer of t=300.1 resets the count: 15 more unanswered (330..750), lost at 780.
    assert states(events) == [(780.0, SessionState.LOST)]


def test_a_silent_client_is_lost_after_the_whole_span() -> None:
    """Heard at t=100, then silent: its heartbeats are missing from t=480 on (threshold) but
    it was heard within the span: kept (DEGRADED); lost at the first heartbeat once the span
    since t=100 ran out (550, the heartbeat of t=570)."""
    session = new()
    drain(session)
    session.heard(100.0)
    events = timeline(session, 100.0 + SPAN - 1)
    assert states(events) == [(480.0, SessionState.DEGRADED)]
    events = timeline(session, 100.0 + SPAN + 30)
    assert states(events) == [(570.0, SessionState.LOST)]
    assert session.lost and session.get_timer() is None
    assert "no traffic" in session.lifecycle_reason


def test_a_client_still_heard_is_never_lost() -> None:
    """RFC 9132 §4.7: our heartbeats unanswered, but the client's traffic arrives (its inbound
    link is saturated): the session MUST NOT be considered disconnected. It is DEGRADED, the
    saturation reported once, the probing goes on."""
    session = new()
    drain(session)
    events: list[tuple[float, Any]] = []
    for t in range(0, 5 * SPAN, 60):  # traffic every minute, no heartbeats answered
        session.heard(float(t))
        events += timeline(session, float(t))
    assert states(events) == [(480.0, SessionState.DEGRADED)]
    assert session.inbound_saturated
    assert [ev.saturated for _, ev in events if isinstance(ev, InboundSaturation)] == [True]
    assert beats(events) == [30.0 * k for k in range(1, (5 * SPAN - 60) // 30 + 2)]
    # One answer: the server's heartbeats get through again.
    session.heartbeat_answered(5 * SPAN + 1.0)
    events = timeline(session, 5 * SPAN + 1.0)
    assert states(events) == [(5 * SPAN + 1.0, SessionState.ESTABLISHED)]
    assert [ev.saturated for _, ev in events if isinstance(ev, InboundSaturation)] == [False]
    assert not session.inbound_saturated


def test_peer_hb_status_false_is_answered_at_once_and_reported() -> None:
    """RFC 9132 §4.7: a client reporting 'peer-hb-status' false does not get our heartbeats:
    the server sends one right after the client's ("another strategy"; at most two an
    interval), reports the client's inbound link as saturated, and keeps the session."""
    session = new()
    drain(session)
    assert beats(timeline(session, 30.0)) == [30.0]
    session.peer_heartbeat(50.0, True)  # replied to at once: ours went 20 s ago
    assert beats(timeline(session, 50.0)) == [50.0] and not session.inbound_saturated
    session.peer_heartbeat(60.0, False)  # ours went 10 s ago: the next is due at 80
    assert session.get_timer() == 80.0
    assert session.inbound_saturated and session.client_receives_heartbeats is False
    events = timeline(session, 99.0)
    assert beats(events) == [80.0]
    saturation = [ev for _, ev in events if isinstance(ev, InboundSaturation)]
    assert [e.saturated for e in saturation] == [True]
    assert "peer-hb-status" in saturation[0].reason
    session.peer_heartbeat(100.0, False)  # ours went 20 s ago: the reply goes at once
    assert session.get_timer() == 100.0
    assert beats(timeline(session, 100.0)) == [100.0]
    assert session.state is SessionState.ESTABLISHED  # no loss, no new session
    session.peer_heartbeat(125.0, True)
    events = timeline(session, 125.0)
    assert [ev.saturated for _, ev in events if isinstance(ev, InboundSaturation)] == [False]
    assert not session.inbound_saturated and session.client_receives_heartbeats is True


def test_peer_hb_status_sent_says_whether_the_client_heartbeats_arrive() -> None:
    """RFC 9132 §4.7: 'peer-hb-status' is true when heartbeats of the peer arrived in the last
    2 x 'heartbeat-interval'; the server replies to each client heartbeat at once (§4.7: "MAY
    trigger their heartbeat requests immediately"), then keeps its own pace."""
    session = new()
    drain(session)
    events: list[tuple[float, Any]] = []
    for t in (25.0, 55.0, 85.0):
        session.peer_heartbeat(t, True)
        events += timeline(session, t, answer=lambda t: True)
    events += timeline(session, 200.0, answer=lambda t: True)
    sent = [(t, ev.peer_hb_status) for t, ev in events if isinstance(ev, SendHeartbeat)]
    assert sent == [(25.0, True), (55.0, True), (85.0, True), (115.0, True), (145.0, True),
                    (175.0, False)]  # the client's last heartbeat: t=85, 90 s before 175


def test_the_interval_follows_the_set_in_force() -> None:
    """RFC 9132 §4.5: 'mitigating-config' while the client mitigates, 'idle-config' otherwise,
    for the server's heartbeats too."""
    body = {"ietf-dots-signal-channel:signal-config": {
        "mitigating-config": {"heartbeat-interval": {"current-value": 15}},
        "idle-config": {"heartbeat-interval": {"current-value": 60}}}}
    config = SessionConfig(ConfigPolicy())
    config.put(1, body)
    session = ServerSession(CLIENT, config, "link-1", 0.0, reliable=False, mitigating=False)
    drain(session)
    assert beats(timeline(session, 130.0, answer=lambda t: True)) == [60.0, 120.0]
    session.set_mitigating(130.0, True)
    assert beats(timeline(session, 180.0, answer=lambda t: True)) == [135.0, 150.0, 165.0,
                                                                      180.0]


def test_moving_to_a_new_link_reapplies_the_parameters() -> None:
    session = new()
    drain(session)
    session.moved("link-2", 5.0)
    events = drain(session)
    assert session.peer == "link-2"
    assert [type(e) for e in events] == [ParamsChanged]


def test_over_tls_a_client_heard_less_often_than_the_interval_is_not_lost() -> None:
    """Over TLS (heartbeat-interval 15 here), a client whose heartbeats come every 17 s, each
    answered, used to be declared lost every 17 s, and its trigger-mitigation false requests
    activated on a live connection (RFC 9132 §4.7: not while its traffic arrives). The server
    now probes it too: over TCP one reply missing for an interval reaches the threshold
    (§4.7), yet a client still heard is never lost; it is lost only after
    'missing-hb-allowed' intervals of silence, over TLS as over DTLS."""
    body = {"ietf-dots-signal-channel:signal-config": {
        "idle-config": {"heartbeat-interval": {"current-value": 15}}}}
    for answers in (True, False):
        config = SessionConfig(ConfigPolicy(), reliable=True)
        config.put(1, body)
        session = ServerSession(CLIENT, config, "tls-link", 0.0, reliable=True,
                                mitigating=False)
        drain(session)
        answer = _always if answers else _never
        events: list[tuple[float, Any]] = []
        for t in range(17, 600, 17):
            session.heard(float(t))
            events += timeline(session, float(t), answer=answer)
        assert SessionState.LOST not in [new for _, new in states(events)]
        assert len(beats(events)) >= 39  # every 15 s
        if answers:  # our heartbeats answered: nothing to report
            assert states(events) == [] and session.state is SessionState.ESTABLISHED
        else:  # unanswered while the client is heard: kept, DEGRADED (RFC 9132 §4.7)
            assert session.state is SessionState.DEGRADED
        silent_from = 595.0
        allowance = 15 * session.effective().missing_hb_allowed
        events = timeline(session, silent_from + allowance - 1)
        assert SessionState.LOST not in [new for _, new in states(events)]
        events = timeline(session, silent_from + allowance + 15)  # checked at a heartbeat
        assert [new for _, new in states(events)][-1:] == [SessionState.LOST]
