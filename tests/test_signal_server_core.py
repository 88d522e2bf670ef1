"""The DOTS server's rules without any I/O (dotsd.signal.server_core): requests in, responses,
state to keep and events out, on fake time and with no node, socket or store."""

from __future__ import annotations

from typing import Any

from dotsd.coap.message import Message
from dotsd.coap.numbers import Code, ContentFormat, OptionNumber
from dotsd.link import make_peer_info
from dotsd.model.codec import from_cbor, to_cbor
from dotsd.signal.config import ConfigSetKind, config_path
from dotsd.signal.heartbeat import HEARTBEAT_PATH, build_heartbeat_body
from dotsd.signal.identity import cuid_from_psk_identity
from dotsd.signal.mitigation import MITIGATION_MEMBER
from dotsd.signal.policy import Policy
from dotsd.signal.redirect import Redirection
from dotsd.signal.server_core import (
    Changed,
    Heartbeat,
    KeepChanges,
    KeepConfig,
    Notify,
    Request,
    ServerCore,
    SetParams,
)
from dotsd.signal.uri import mitigate_path

WALL = 1_700_000_000.0
PSK = b"cpe-1"
CUID = cuid_from_psk_identity(PSK)
SCOPE = {"target-prefix": ["2001:db8:6401::1/128"], "lifetime": 100}


def request(code: Code, path: tuple[str, ...], body: dict[str, Any] | None = None) -> Message:
    msg = Message(code=code).set_path("/".join(path))
    if body is not None:
        msg.payload = to_cbor(body)
        msg.add(OptionNumber.CONTENT_FORMAT, ContentFormat.DOTS_CBOR)
    return msg


def from_peer(msg: Message, psk: bytes | None = PSK, link: str = "link-1") -> Request:
    return Request(msg, make_peer_info(("::1", 1), "dtls", False, psk_identity=psk), link)


def put(mid: int, scope: dict[str, Any] = SCOPE) -> Message:
    return request(Code.PUT, mitigate_path(CUID, mid), {MITIGATION_MEMBER: {"scope": [scope]}})


def drain(core: ServerCore) -> list[Any]:
    return list(iter(core.next_event, None))


def run_timers(core: ServerCore, until: float, *, answer: bool = False,
               link: str = "link-1") -> tuple[list[float], list[Any]]:
    """Fire the core's timer at each deadline up to ``until``: the times of the heartbeats it
    sent (answered at once with ``answer``) and the changes it made."""
    probes: list[float] = []
    changes: list[Any] = []
    while (due := core.get_timer()) is not None and due <= until:
        changes += core.handle_timer(due, WALL + due)
        for event in drain(core):
            if isinstance(event, Heartbeat):
                probes.append(due)
                if answer:
                    core.heartbeat_answered(event.identity, link, due, due)
    return probes, changes


def heartbeats(core: ServerCore, now: float) -> list[Heartbeat]:
    core.handle_timer(now, WALL + now)
    return [e for e in drain(core) if isinstance(e, Heartbeat)]


def test_a_request_is_answered_once_kept_then_published() -> None:
    core = ServerCore(mono=0.0)
    reply = core.handle("mitigate", from_peer(put(1)), 1.0, WALL)
    assert reply.response.code == Code.CREATED
    assert isinstance(reply.keep, KeepChanges) and reply.keep.bind == (CUID, "psk:" + PSK.hex())
    events = drain(core)  # the new session's parameters only: nothing published before kept
    assert [type(e) for e in events] == [SetParams]
    core.kept(reply.keep, 1.0, WALL)
    events = drain(core)
    notify = [e for e in events if isinstance(e, Notify)]
    assert notify and notify[0].keys == (("mitigate", CUID, 1), ("mitigate", CUID))
    assert [e.change.mitigation.mid for e in events if isinstance(e, Changed)] == [1]
    # RFC 9132 §4.5: the client now mitigates: its link gets 'mitigating-config'.
    params = [e for e in events if isinstance(e, SetParams)]
    assert params and core.sessions["psk:" + PSK.hex()].effective().kind is \
        ConfigSetKind.MITIGATING


def test_a_cuid_bound_to_another_client_is_a_collision_without_any_store() -> None:
    core = ServerCore(mono=0.0, strict_cuid=False)
    first = core.handle("mitigate", from_peer(put(1)), 1.0, WALL)
    assert first.response.code == Code.CREATED
    other = core.handle("mitigate", from_peer(put(2), psk=b"intruder"), 2.0, WALL)
    assert other.response.code == Code.CONFLICT and other.keep is None  # §4.4.1.3 cause 3
    body = from_cbor(other.response.payload)
    assert body[MITIGATION_MEMBER]["scope"][0]["conflict-information"] == {
        "conflict-cause": "cuid-collision"}
    get = core.handle("mitigate", from_peer(request(Code.GET, mitigate_path(CUID)),
                                            psk=b"intruder"), 3.0, WALL)
    assert get.response.code == Code.UNAUTHORIZED  # §4.1: only its own resources


def test_bad_requests_get_their_codes_and_keep_nothing() -> None:
    core = ServerCore(mono=0.0, policy=Policy(max_requests_per_second=1.0))
    anonymous = core.handle("mitigate", from_peer(put(1), psk=None), 0.0, WALL)
    assert anonymous.response.code == Code.UNAUTHORIZED
    text = put(1)
    text.remove(OptionNumber.CONTENT_FORMAT)
    assert core.handle("mitigate", from_peer(text), 0.0, WALL).response.code == \
        Code.UNSUPPORTED_CONTENT_FORMAT
    post = request(Code.POST, mitigate_path(CUID, 1))
    assert core.handle("mitigate", from_peer(post), 0.0, WALL).response.code == \
        Code.METHOD_NOT_ALLOWED
    # Over its rate (bursts of 2 at 1 a second; the 4.15 above counted): 5.03 with the
    # seconds to wait.
    get = from_peer(request(Code.GET, mitigate_path(CUID)))
    assert core.handle("mitigate", get, 0.0, WALL).response.code == Code.NOT_FOUND
    busy = core.handle("mitigate", get, 0.0, WALL)
    assert busy.response.code == Code.SERVICE_UNAVAILABLE and busy.keep is None
    assert busy.response.max_age is not None
    assert core.handle("mitigate", get, 2.0, WALL).response.code == Code.NOT_FOUND


def test_configuration_and_heartbeats() -> None:
    core = ServerCore(mono=0.0)
    body = {"ietf-dots-signal-channel:signal-config": {
        "idle-config": {"heartbeat-interval": {"current-value": 60}}}}
    reply = core.handle("config", from_peer(request(Code.PUT, config_path(1), body)), 0.0, WALL)
    assert reply.response.code == Code.CREATED and isinstance(reply.keep, KeepConfig)
    core.kept(reply.keep, 0.0, WALL)
    session = core.sessions["psk:" + PSK.hex()]
    assert session.monitor.interval == 60
    hb = request(Code.PUT, HEARTBEAT_PATH, build_heartbeat_body(True))
    assert core.handle("hb", from_peer(hb), 1.0, WALL).response.code == Code.CHANGED
    assert core.configs[CUID][0] == 1  # a new session of this client starts from it


def test_timers_expire_lifetimes_and_lose_silent_sessions() -> None:
    pre = {**SCOPE, "lifetime": 86400, "trigger-mitigation": False}
    core = ServerCore(mono=0.0)
    reply = core.handle("mitigate", from_peer(put(1, SCOPE)), 0.0, WALL)
    assert reply.keep is not None
    core.kept(reply.keep, 0.0, WALL)
    preconfigured = core.handle("mitigate", from_peer(put(2, pre)), 0.0, WALL)
    assert preconfigured.keep is not None
    core.kept(preconfigured.keep, 0.0, WALL)
    drain(core)
    assert core.get_timer() == 30.0  # the server's first heartbeat (RFC 9132 §4.7)
    probes, gone = run_timers(core, 100.0)
    assert probes == [30.0, 60.0, 90.0]
    assert [c.mitigation.mid for c in gone] == [1]  # the lifetime, on the monotonic clock
    # The silent client is probed every 30 s; 15 heartbeats unanswered and 15 x 30 s of
    # silence (the defaults): the session is lost at t=480, mid 2 is triggered.
    probes, lost = run_timers(core, 479.0)
    assert probes == [30.0 * k for k in range(4, 16)] and not lost
    probes, lost = run_timers(core, 480.0)
    assert not probes
    assert [(c.mitigation.mid, c.mitigation.status.label) for c in lost] == [
        (2, "attack-mitigation-in-progress")]
    assert not core.sessions


def test_redirection_answers_every_request() -> None:
    core = ServerCore(mono=0.0)
    response = core.redirect(Redirection("alt.example", ("2001:db8::2",), 600))
    assert response is not None and response.code == Code.SERVICE_UNAVAILABLE
    reply = core.handle("mitigate", from_peer(put(1)), 0.0, WALL)
    assert reply.response.code == Code.SERVICE_UNAVAILABLE and reply.keep is None
    assert reply.response.max_age == 600
    assert core.redirect(None) is None
    assert core.handle("mitigate", from_peer(put(1)), 0.0, WALL).response.code == Code.CREATED


def test_the_server_sends_heartbeats_to_its_clients() -> None:
    """RFC 9132 §4.7: the server's own heartbeats, Figure 27 (a PUT of /.well-known/dots/hb
    with the mandatory 'peer-hb-status', no Uri-Path parameter), every 'heartbeat-interval'
    of the client's set in force, on the client's link; answered, the session lives on."""
    core = ServerCore(mono=0.0)
    core.handle("config", from_peer(request(Code.GET, config_path())), 0.0, WALL)
    drain(core)
    assert core.get_timer() == 30.0
    (hb,) = heartbeats(core, 30.0)
    assert hb.peer == "link-1" and hb.identity == "psk:" + PSK.hex() and hb.timeout == 30.0
    msg = hb.message
    assert msg.code == Code.PUT and msg.uri_path == HEARTBEAT_PATH
    assert msg.content_format == ContentFormat.DOTS_CBOR
    assert from_cbor(msg.payload) == build_heartbeat_body(True)  # within 2 intervals of start
    core.heartbeat_answered(hb.identity, "link-1", 30.1, 30.0)
    probes, lost = run_timers(core, 3000.0, answer=True)
    assert probes == [30.0 * k for k in range(2, 101)] and not lost
    assert core.sessions["psk:" + PSK.hex()].state.value == "established"
    # An answer on a link the session has left counts for nothing.
    core.heartbeat_answered(hb.identity, "old-link", 3001.0)


def test_a_client_reporting_peer_hb_status_false_is_under_attack_not_lost() -> None:
    """RFC 9132 §4.7: 'peer-hb-status' false from the client: the server's heartbeat goes at
    once after the client's ("send a server-initiated heartbeat immediately after receiving a
    client-initiated heartbeat message"), the session is kept, and the 'trigger-mitigation'
    false request is not triggered: that takes a session loss (§4.4.1)."""
    pre = {**SCOPE, "lifetime": 86400, "trigger-mitigation": False}
    core = ServerCore(mono=0.0)
    reply = core.handle("mitigate", from_peer(put(2, pre)), 0.0, WALL)
    assert reply.keep is not None
    core.kept(reply.keep, 0.0, WALL)
    drain(core)
    session = core.sessions["psk:" + PSK.hex()]
    hb = request(Code.PUT, HEARTBEAT_PATH, build_heartbeat_body(False))
    for k in range(1, 40):  # the client's heartbeats arrive, ours never reach it
        t = 30.0 * k - 5
        assert core.handle("hb", from_peer(hb), t, WALL + t).response.code == Code.CHANGED
        assert core.get_timer() == t  # the reply heartbeat is due at once
        replies = heartbeats(core, t)
        assert len(replies) == 1 and from_cbor(replies[0].message.payload) == \
            build_heartbeat_body(True)  # we do receive the client's
    assert session.inbound_saturated and session.state.value == "degraded"
    assert core.sessions and core.table.lookup(CUID, 2).status.label == \
        "attack-mitigation-signal-loss"  # still waiting for a loss (status 8)
    # The client reports true again and answers: the episode ends.
    hb = request(Code.PUT, HEARTBEAT_PATH, build_heartbeat_body(True))
    core.handle("hb", from_peer(hb), 1200.0, WALL + 1200)
    (probe,) = heartbeats(core, 1200.0)
    core.heartbeat_answered(probe.identity, "link-1", 1200.1, 1200.0)
    core.handle_timer(1200.1, WALL + 1200.1)
    drain(core)
    assert not session.inbound_saturated and session.state.value == "established"


def test_a_client_heard_once_is_probed_then_lost() -> None:
    """A client whose one heartbeat opened its session, then silence: the server replies at
    once (RFC 9132 §4.7), probes every 30 s, and after 15 unanswered heartbeats (t=0..420)
    and 15 x 30 s without traffic the session is lost, at t=450. (The reply moved the
    session's timer from 30 to 0 and back: it stood twice in the heap, and the session was
    looked up again after it was lost.)"""
    core = ServerCore(mono=0.0)
    hb = request(Code.PUT, HEARTBEAT_PATH, build_heartbeat_body(True))
    assert core.handle("hb", from_peer(hb), 0.0, WALL).response.code == Code.CHANGED
    probes, _ = run_timers(core, 449.0)
    assert probes == [30.0 * k for k in range(15)] and core.sessions
    probes, _ = run_timers(core, 450.0)
    assert not probes and not core.sessions
