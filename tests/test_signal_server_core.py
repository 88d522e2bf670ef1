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
    KeepChanges,
    KeepConfig,
    Notify,
    Persist,
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
    assert core.get_timer() == 100.0  # the lifetime, on the monotonic clock
    gone = core.handle_timer(100.0, WALL + 100)
    assert [c.mitigation.mid for c in gone] == [1]
    assert [type(e) for e in drain(core)] == [Persist]
    # 30 s x 15 of silence (the defaults): the session is lost, mid 2 is triggered.
    lost = core.handle_timer(450.0, WALL + 450)
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
