"""The server's view of one client session (dotsd.signal.server_session) on fake time: the
configuration set in force, the heartbeat rules of the server role, the lifecycle."""

from __future__ import annotations

from typing import Any

from dotsd.signal.config import ConfigPolicy, ConfigSetKind, SessionConfig
from dotsd.signal.identity import ClientIdentity
from dotsd.signal.server_session import ParamsChanged, ServerSession
from dotsd.signal.session import SessionState, StateChanged

CLIENT = ClientIdentity(identity="spki-sha256:00", cuid="cuid-1")
SPAN = 30 * 15  # the idle defaults: heartbeat-interval x missing-hb-allowed (RFC 9132 §4.5)


def drain(session: ServerSession) -> list[Any]:
    events = []
    while (ev := session.next_event()) is not None:
        events.append(ev)
    return events


def fire(session: ServerSession, until: float) -> list[Any]:
    events: list[Any] = []
    for _ in range(1000):
        due = session.get_timer()
        if due is None or due > until:
            break
        session.handle_timer(due)
        events += drain(session)
    return events


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


def test_a_silent_client_is_lost_after_the_whole_span() -> None:
    session = new()
    drain(session)
    session.heard(100.0)
    assert fire(session, 100.0 + SPAN - 1) == []
    events = fire(session, 100.0 + SPAN)
    assert [e.new for e in events] == [SessionState.LOST]
    assert session.lost and session.get_timer() is None
    assert "no traffic" in session.lifecycle_reason


def test_a_client_still_heard_is_never_lost() -> None:
    session = new()
    drain(session)
    for t in range(0, 5 * SPAN, 60):  # traffic every minute, no heartbeats answered
        session.heard(float(t))
        fire(session, float(t))
    assert session.state is SessionState.ESTABLISHED


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
    activated on a live connection (RFC 9132 §4.7: not while its traffic arrives). The server,
    which sends no heartbeats of its own, now waits 'missing-hb-allowed' intervals of
    silence, over TLS as over DTLS."""
    body = {"ietf-dots-signal-channel:signal-config": {
        "idle-config": {"heartbeat-interval": {"current-value": 15}}}}
    config = SessionConfig(ConfigPolicy(), reliable=True)
    config.put(1, body)
    session = ServerSession(CLIENT, config, "tls-link", 0.0, reliable=True, mitigating=False)
    drain(session)
    for t in range(17, 600, 17):
        session.heard(float(t))
        assert fire(session, float(t)) == []
    assert session.state is SessionState.ESTABLISHED
    silent_from = 595.0
    allowance = 15 * session.effective().missing_hb_allowed
    assert fire(session, silent_from + allowance - 1) == []
    assert [e.new for e in fire(session, silent_from + allowance)] == [SessionState.LOST]
