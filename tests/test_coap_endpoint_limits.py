"""Per-peer limits of the endpoint, in fake time: observations (RFC 7641 §4.1), partial Block1
uploads (RFC 7959 §2.3, 5.03 with Max-Age per RFC 7252 §5.9.3.4) and kept Block2 bodies."""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Hashable

import pytest
from hypothesis import given, settings, target
from hypothesis import strategies as st

from dotsd.coap import codec
from dotsd.coap.endpoint import CoapEndpoint
from dotsd.coap.events import RequestReceived
from dotsd.coap.exchange import EndpointConfig, PeerState
from dotsd.coap.message import Block, Message
from dotsd.coap.numbers import Code, MessageType, OptionNumber

BIG = bytes(range(256)) * 12  # 3072 bytes: three 1024-byte blocks


class Server:
    """One endpoint fed datagrams from any peer; what reaches the application is answered at
    once: a GET with Observe=0 registers on its path, a GET on a path starting with /big gets
    ``BIG``, anything else a short body."""

    def __init__(self, **limits: int) -> None:
        self.ep = CoapEndpoint(EndpointConfig(**limits), rng=random.Random(1))
        self.mids = itertools.count(1)
        self.delivered: list[tuple[Hashable, Message]] = []

    def send(self, peer: Hashable, msg: Message, now: float) -> Message:
        """One CON request from ``peer``; returns the response it gets (piggybacked)."""
        msg.mtype = MessageType.CON
        msg.mid = next(self.mids) & 0xFFFF
        self.ep.receive_datagram(peer, codec.encode(msg), now)
        while (ev := self.ep.next_event()) is not None:
            if not isinstance(ev, RequestReceived):
                continue
            ex = ev.exchange
            self.delivered.append((peer, ex.request))
            if ex.request.code == Code.GET:
                body = BIG if ex.request.path_str.startswith("/big") else b"state"
                resp = Message(code=Code.CONTENT, payload=body)
            else:
                resp = Message(code=Code.CHANGED)
            self.ep.respond(ex, resp, now, observe_key=ex.request.path_str)
        [answer] = [codec.decode(codec.encode(m)) for p, m in self.ep.messages_to_send()
                    if p == peer]
        return answer

    def state(self, peer: Hashable) -> PeerState:
        state = self.ep.peer_state(peer)
        assert state is not None
        return state


def observe(path: str, token: bytes, value: int = 0) -> Message:
    return Message(code=Code.GET, token=token).set_path(path).add(OptionNumber.OBSERVE, value)


def put_block(path: str, num: int, more: bool, payload: bytes, size1: int | None = None,
              szx: int = 2) -> Message:
    """One Block1 part of a PUT (64-byte blocks by default); a fresh token each time, as
    RFC 7959 allows: the parts are matched by resource, not by token."""
    msg = Message(code=Code.PUT, token=bytes([num & 0xFF, len(path)]), payload=payload)
    msg.set_path(path).add(OptionNumber.BLOCK1, Block(num, more, szx).encode())
    if size1 is not None:
        msg.add(OptionNumber.SIZE1, size1)
    return msg


def notified_tokens(srv: Server, path: str, now: float) -> set[bytes]:
    srv.ep.notify(path, lambda peer, req: Message(code=Code.CONTENT, payload=b"new"), now)
    return {m.token for _, m in srv.ep.messages_to_send() if m.observe is not None}


# --------------------------------------------------------------------------- observations
def test_observation_beyond_limit_is_served_without_observe(
        caplog: pytest.LogCaptureFixture) -> None:
    srv = Server(max_observers_per_peer=3)
    for i in range(3):
        assert srv.send("p", observe("/obs", bytes([i])), 0.0).observe is not None
    with caplog.at_level(logging.INFO, logger="dotsd.coap"):
        resp = srv.send("p", observe("/obs", b"\x03"), 1.0)
    # RFC 7641 §4.1: answered normally, but not registered: no Observe option.
    assert resp.code == Code.CONTENT and resp.payload == b"state"
    assert resp.observe is None
    assert set(srv.state("p").observers) == {b"\x00", b"\x01", b"\x02"}
    assert srv.ep.observer_count("/obs") == 3
    assert notified_tokens(srv, "/obs", 2.0) == {b"\x00", b"\x01", b"\x02"}
    [record] = [r for r in caplog.records if "observation declined" in r.getMessage()]
    assert "'p'" in record.getMessage()


def test_observation_limit_is_per_peer() -> None:
    srv = Server(max_observers_per_peer=2)
    for i in range(3):
        srv.send("p", observe("/obs", bytes([i])), 0.0)
    assert len(srv.state("p").observers) == 2
    assert srv.send("q", observe("/obs", b"\x09"), 0.0).observe is not None
    assert srv.ep.observers("/obs").count("q") == 1


def test_reregistration_at_limit_and_new_registration_after_deregistration() -> None:
    srv = Server(max_observers_per_peer=2)
    first = srv.send("p", observe("/a", b"A"), 0.0).observe
    srv.send("p", observe("/b", b"B"), 0.0)
    # Same token again (RFC 7641 §3.3.1): replaces the old registration, even at the limit.
    again = srv.send("p", observe("/a", b"A"), 1.0).observe
    assert first is not None and again is not None and again > first
    assert len(srv.state("p").observers) == 2
    assert srv.send("p", observe("/c", b"C"), 1.0).observe is None  # at the limit
    # GET with Observe=1 deregisters (RFC 7641 §3.6): the freed place can be taken.
    assert srv.send("p", observe("/b", b"B", 1), 2.0).observe is None
    assert srv.send("p", observe("/c", b"C"), 3.0).observe is not None
    assert set(srv.state("p").observers) == {b"A", b"C"}
    assert notified_tokens(srv, "/c", 4.0) == {b"C"}


def test_no_observations_at_all_with_limit_zero() -> None:
    srv = Server(max_observers_per_peer=0)
    assert srv.send("p", observe("/obs", b"t"), 0.0).observe is None
    assert srv.ep.observer_count() == 0


# --------------------------------------------------------------------------- Block1
def test_upload_beyond_limit_is_5_03_with_max_age_and_others_complete() -> None:
    srv = Server(max_uploads_per_peer=2)
    assert srv.send("p", put_block("/u0", 0, True, b"a" * 64), 0.0).code == Code.CONTINUE
    assert srv.send("p", put_block("/u1", 0, True, b"b" * 64), 5.0).code == Code.CONTINUE
    busy = srv.send("p", put_block("/u2", 0, True, b"c" * 64), 20.0)
    assert busy.code == Code.SERVICE_UNAVAILABLE
    assert busy.max_age == 40  # when the oldest upload (/u0, started at 0 s) expires
    assert b"too many block-wise uploads" in busy.payload
    assert busy.block1 is None
    assert set(srv.state("p").uploads) == {b"u0", b"u1"}
    # Another peer is not affected.
    assert srv.send("q", put_block("/u2", 0, True, b"q" * 64), 20.0).code == Code.CONTINUE
    # Uploads under way go on and complete.
    done = srv.send("p", put_block("/u0", 1, False, b"A" * 10), 21.0)
    assert done.code == Code.CHANGED and done.block1 is not None
    assert srv.delivered[-1][0] == "p"
    assert srv.delivered[-1][1].payload == b"a" * 64 + b"A" * 10
    # Its slot is free again.
    assert srv.send("p", put_block("/u2", 0, True, b"c" * 64), 22.0).code == Code.CONTINUE
    assert srv.state("p").upload_bytes == 128


def test_expired_upload_no_longer_counts() -> None:
    srv = Server(max_uploads_per_peer=1)
    srv.send("p", put_block("/a", 0, True, b"a" * 64), 0.0)
    srv.send("p", put_block("/a", 1, True, b"a" * 64), 10.0)  # alive until 70 s now
    busy = srv.send("p", put_block("/b", 0, True, b"b" * 64), 30.0)
    assert busy.code == Code.SERVICE_UNAVAILABLE and busy.max_age == 40
    assert srv.send("p", put_block("/b", 0, True, b"b" * 64), 70.5).code == Code.CONTINUE
    assert set(srv.state("p").uploads) == {b"b"}
    assert srv.state("p").upload_bytes == 64
    late = srv.send("p", put_block("/a", 2, False, b"a"), 71.0)
    assert late.code == Code.REQUEST_ENTITY_INCOMPLETE


def test_abandoned_upload_is_freed_without_further_input() -> None:
    srv = Server()
    srv.send("p", put_block("/a", 0, True, b"a" * 64), 0.0)
    srv.send("p", put_block("/a", 1, True, b"a" * 64), 1.0)
    state = srv.state("p")
    assert state.uploads and state.upload_bytes == 128
    srv.ep.handle_timer(60.5)  # the sweep due at 60 s finds it still alive (until 61 s)
    assert state.uploads
    when = srv.ep.get_timer()
    assert when == 61.0
    srv.ep.handle_timer(when)
    assert not state.uploads and state.upload_bytes == 0 and state.sweep is None
    assert srv.ep.get_timer() is None


def test_upload_byte_limit_counts_size1_and_stops_an_overgrowing_upload() -> None:
    srv = Server(max_body_size=1200, max_upload_bytes_per_peer=1500)
    assert srv.send("p", put_block("/a", 0, True, b"a" * 64, size1=1000), 0.0).code == \
        Code.CONTINUE
    busy = srv.send("p", put_block("/b", 0, True, b"b" * 64, size1=600), 1.0)
    assert busy.code == Code.SERVICE_UNAVAILABLE and busy.max_age == 59
    assert b"bytes" in busy.payload
    assert srv.send("p", put_block("/c", 0, True, b"c" * 64, size1=400), 2.0).code == \
        Code.CONTINUE
    state = srv.state("p")
    assert state.upload_bytes == 1400
    # /a announced its size: it goes on to the end untouched by the others.
    for num in range(1, 15):
        assert srv.send("p", put_block("/a", num, True, b"a" * 64), 3.0).code == Code.CONTINUE
    done = srv.send("p", put_block("/a", 15, False, b"a" * 40), 3.0)
    assert done.code == Code.CHANGED and len(srv.delivered[-1][1].payload) == 1000
    assert state.upload_bytes == 400
    # /d announces nothing: it holds what it has sent, and is stopped when the peer's bytes
    # would pass 1500 (400 held by /c).
    codes = [srv.send("p", put_block("/d", num, True, b"d" * 64), 4.0).code
             for num in range(18)]
    assert codes[:17] == [Code.CONTINUE] * 17  # 17 * 64 = 1088 <= 1100
    assert codes[17] == Code.SERVICE_UNAVAILABLE
    assert set(state.uploads) == {b"c"} and state.upload_bytes == 400


def test_upload_restarted_replaces_its_partial_body() -> None:
    srv = Server(max_uploads_per_peer=1)
    srv.send("p", put_block("/a", 0, True, b"x" * 64), 0.0)
    srv.send("p", put_block("/a", 1, True, b"x" * 64), 0.0)
    assert srv.send("p", put_block("/a", 0, True, b"y" * 64), 1.0).code == Code.CONTINUE
    assert srv.send("p", put_block("/a", 1, False, b"z"), 1.0).code == Code.CHANGED
    assert srv.delivered[-1][1].payload == b"y" * 64 + b"z"
    assert srv.state("p").upload_bytes == 0


def test_upload_limits_must_leave_room_for_one_body() -> None:
    with pytest.raises(ValueError, match="max_upload_bytes_per_peer"):
        EndpointConfig(max_body_size=4 << 20)
    with pytest.raises(ValueError, match="max_uploads_per_peer"):
        EndpointConfig(max_uploads_per_peer=-1)
    assert EndpointConfig().max_upload_bytes_per_peer >= EndpointConfig().max_body_size


# --------------------------------------------------------------------------- Block2
def test_kept_block2_bodies_are_bounded_per_peer_oldest_dropped() -> None:
    srv = Server(max_block2_bodies_per_peer=3)
    for i in range(6):
        first = srv.send("p", Message(code=Code.GET).set_path(f"/big{i}"), float(i))
        assert first.block2 is not None and first.block2.more
    srv.send("q", Message(code=Code.GET).set_path("/big0"), 6.0)
    state = srv.state("p")
    assert list(state.block2) == [b"big3", b"big4", b"big5"]
    assert list(srv.state("q").block2) == [b"big0"]
    # A kept body: its next block is served by the endpoint alone.
    delivered = len(srv.delivered)
    nxt = Message(code=Code.GET).set_path("/big5").add(OptionNumber.BLOCK2,
                                                       Block(1, False, 6).encode())
    resp = srv.send("p", nxt, 7.0)
    assert resp.payload == BIG[1024:2048] and len(srv.delivered) == delivered
    # A dropped one: the request reaches the application again, the answer is still right.
    nxt = Message(code=Code.GET).set_path("/big0").add(OptionNumber.BLOCK2,
                                                       Block(1, False, 6).encode())
    resp = srv.send("p", nxt, 7.0)
    assert resp.payload == BIG[1024:2048] and len(srv.delivered) == delivered + 1
    # They expire, and are freed by the sweep.
    srv.ep.handle_timer(200.0)
    assert not state.block2 and not srv.state("q").block2


# --------------------------------------------------------------------------- peer removal
def test_remove_peer_frees_all_its_state() -> None:
    srv = Server()
    srv.send("p", observe("/obs", b"o"), 0.0)
    srv.send("p", put_block("/a", 0, True, b"a" * 64), 0.0)
    srv.send("p", Message(code=Code.GET).set_path("/big"), 0.0)
    srv.send("q", put_block("/a", 0, True, b"a" * 64), 0.0)
    state = srv.state("p")
    assert state.observers and state.uploads and state.block2 and state.sweep is not None
    sweep = state.sweep
    srv.ep.remove_peer("p")
    assert srv.ep.peer_state("p") is None
    assert sweep.cancelled
    assert srv.ep.observer_count() == 0
    assert srv.state("q").uploads  # the other peer keeps its own


def test_no_empty_ack_to_a_removed_peer() -> None:
    ep = CoapEndpoint()
    ep.receive_datagram("p", codec.encode(Message(MessageType.CON, Code.GET, 1, b"t")
                                          .set_path("/slow")), 0.0)
    assert isinstance(ep.next_event(), RequestReceived)  # not answered
    ep.remove_peer("p")
    ep.handle_timer(1.0)
    assert ep.messages_to_send() == []


# --------------------------------------------------------------------------- property
LIMITS = {"max_observers_per_peer": 3, "max_uploads_per_peer": 2, "max_body_size": 256,
          "max_upload_bytes_per_peer": 320, "max_block2_bodies_per_peer": 2}

operations = st.lists(st.tuples(
    # "start" a Block1 upload, "continue" one (the next block), send a "stray" block.
    st.sampled_from(["observe", "observe", "deregister", "start", "start", "continue",
                     "continue", "continue", "stray", "big"]),
    st.integers(min_value=0, max_value=4),  # resource, or token
    st.booleans(),  # more blocks to come (for "continue", 3 times in 4)
    st.one_of(st.none(), st.integers(min_value=64, max_value=256)),  # Size1 of a "start"
    st.integers(min_value=0, max_value=5),  # block number of a "stray"
    st.sampled_from([0.0] * 6 + [0.5, 5.0, 61.0]),  # time passing
), min_size=5, max_size=80)


@settings(max_examples=200, deadline=None)
@given(operations)
def test_one_peer_never_passes_the_limits(
        ops: list[tuple[str, int, bool, int | None, int, float]]) -> None:
    srv = Server(**LIMITS)
    now = 0.0
    next_block = dict.fromkeys(range(5), 0)
    peak = {"observers": 0, "uploads": 0, "bytes": 0}
    for kind, which, more, size1, stray, dt in ops:
        now += dt
        path = f"/u{which}"
        if kind == "observe":
            resp = srv.send("p", observe(f"/o{which % 3}", bytes([which])), now)
        elif kind == "deregister":
            resp = srv.send("p", observe(f"/o{which % 3}", bytes([which]), 1), now)
        elif kind == "start":
            resp = srv.send("p", put_block(path, 0, True, bytes(64), size1), now)
        elif kind in ("continue", "stray"):
            num = next_block[which] if kind == "continue" else stray
            more = more or num % 4 != 0
            resp = srv.send("p", put_block(path, num, more, bytes(64 if more else 10)), now)
        else:
            resp = srv.send("p", Message(code=Code.GET).set_path(f"/big{which}"), now)
        if kind in ("start", "continue", "stray"):
            answered = resp.block1
            next_block[which] = answered.num + 1 if resp.code == Code.CONTINUE and answered \
                else 0
            if resp.code == Code.SERVICE_UNAVAILABLE:
                assert resp.max_age is not None and resp.max_age >= 1 and resp.payload
        srv.ep.handle_timer(now)
        state = srv.state("p")
        assert len(state.observers) <= LIMITS["max_observers_per_peer"]
        assert srv.ep.observer_count() == len(state.observers)
        assert len(state.uploads) <= LIMITS["max_uploads_per_peer"]
        assert state.upload_bytes == sum(u.reserved for u in state.uploads.values())
        assert state.upload_bytes <= LIMITS["max_upload_bytes_per_peer"]
        assert all(len(u.body) <= u.reserved for u in state.uploads.values())
        assert len(state.block2) <= LIMITS["max_block2_bodies_per_peer"]
        if resp.observe is not None:  # a registration answered with Observe is one
            assert resp.token in state.observers
        for name, size in (("observers", len(state.observers)), ("uploads", len(state.uploads)),
                           ("bytes", state.upload_bytes)):
            peak[name] = max(peak[name], size)
    for name, size in peak.items():
        target(float(size), label=name)  # steer the search to the limits


def test_a_flood_of_refusals_is_not_a_flood_of_log_lines(
        caplog: pytest.LogCaptureFixture) -> None:
    """A peer sending thousands of refused registrations a second gets a bounded number of
    log lines, then one line counting the rest."""
    srv = Server(max_observers_per_peer=1)
    srv.send("p", observe("/obs", b"\x00"), 0.0)
    with caplog.at_level(logging.INFO, logger="dotsd.coap"):
        for i in range(1, 2001):
            resp = srv.send("p", observe("/obs", i.to_bytes(2, "big")), 0.5 + i * 1e-4)
            assert resp.observe is None
        srv.send("p", observe("/obs", b"\xff\xff\xff"), 2.0)  # the next second begins
    declined = [r for r in caplog.records if "observation declined" in r.getMessage()]
    counted = [r for r in caplog.records if "not logged count=" in r.getMessage()]
    assert len(declined) == 10 + 1
    assert len(counted) == 1 and counted[0].getMessage().endswith("count=1990")
