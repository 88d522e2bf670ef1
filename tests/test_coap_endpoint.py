"""The sans-IO endpoint in fake time: RFC 7252 message layer, RFC 7641, RFC 7959."""

from __future__ import annotations

import random

from support.coapsim import Net

from dotsd.coap import codec
from dotsd.coap.endpoint import CoapEndpoint, probing_rate_policy
from dotsd.coap.events import (
    Event,
    ObserverRemoved,
    RequestFailed,
    RequestReceived,
    ResponseReceived,
)
from dotsd.coap.exchange import EndpointConfig
from dotsd.coap.message import Message
from dotsd.coap.numbers import Code, MessageType, OptionNumber
from dotsd.coap.params import TransmissionParameters


def get(path: str, observe: int | None = None) -> Message:
    msg = Message(code=Code.GET).set_path(path)
    if observe is not None:
        msg.add(OptionNumber.OBSERVE, observe)
    return msg


def echo_server(net: Net, payload: bytes = b"hello", observe_key: str | None = None) -> None:
    def on_event(name: str, ev: Event) -> None:
        if name == "b" and isinstance(ev, RequestReceived):
            resp = Message(code=Code.CONTENT, payload=payload)
            net.eps["b"].respond(ev.exchange, resp, net.now, observe_key=observe_key)
    net.on_event = on_event


def responses(net: Net, name: str = "a") -> list[ResponseReceived]:
    return [e for e in net.events[name] if isinstance(e, ResponseReceived)]


def test_con_piggybacked_response_and_rtt() -> None:
    net = Net(delay=0.02)
    echo_server(net)
    req = net.eps["a"].send_request("b", get("/x"), net.now)
    net.run(1.0)
    [ev] = responses(net)
    assert ev.request is req and ev.response.payload == b"hello"
    assert ev.response.mtype == MessageType.ACK
    assert abs((net.eps["a"].rtt("b") or 0) - 0.04) < 1e-9
    assert net.eps["a"].pending_requests() == 0


def test_separate_response_after_empty_ack() -> None:
    net = Net()
    pending: list[RequestReceived] = []
    net.on_event = lambda n, ev: pending.append(ev) if isinstance(ev, RequestReceived) else None
    net.eps["a"].send_request("b", get("/slow"), 0.0)
    net.run(1.0)
    # No answer within separate_ack_delay: an empty ACK went out, no retransmission.
    b_sent = net.sent["b"]
    assert [(m.mtype, m.code) for m in b_sent] == [(MessageType.ACK, 0)]
    assert len(net.sent["a"]) == 1
    net.eps["b"].respond(pending[0].exchange, Message(code=Code.CONTENT, payload=b"late"), 1.0)
    net.run(2.0)
    [ev] = responses(net)
    assert ev.response.payload == b"late" and ev.response.mtype == MessageType.CON
    # The client acknowledged the separate CON response, so b retransmits nothing.
    net.run(30.0)
    assert [m.mtype for m in net.sent["a"]] == [MessageType.CON, MessageType.ACK]
    assert len(net.sent["b"]) == 2


def test_retransmission_backoff_and_success() -> None:
    net = Net(delay=0.001)
    echo_server(net)
    drops = {"n": 0}

    def drop(src: str, data: bytes) -> bool:
        if src == "a" and drops["n"] < 2:
            drops["n"] += 1
            return True
        return False
    net.drop = drop
    net.eps["a"].send_request("b", get("/x"), 0.0)
    times: list[float] = []
    orig = net.flush

    def flush() -> None:
        before = len(net.sent["a"])
        orig()
        times.extend([net.now] * (len(net.sent["a"]) - before))
    net.flush = flush  # type: ignore[method-assign]
    net.run(20.0)
    assert len(responses(net)) == 1
    # RFC 7252 §4.2: first timeout in [2, 3] s, then doubled.
    first, second = times[1] - times[0], times[2] - times[1]
    assert 2.0 <= first <= 3.0
    assert abs(second - 2 * first) < 1e-6
    # Karn: retransmitted exchanges give no RTT sample.
    assert net.eps["a"].rtt("b") is None


def test_retransmissions_exhausted() -> None:
    params = TransmissionParameters(ack_timeout=1.0, ack_random_factor=1.0, max_retransmit=2)
    net = Net(params=params)
    net.drop = lambda src, data: True
    net.eps["a"].send_request("b", get("/x"), 0.0, timeout=100.0)
    net.run(100.0)
    [fail] = [e for e in net.events["a"] if isinstance(e, RequestFailed)]
    assert "acknowledgement" in fail.reason
    assert len(net.sent["a"]) == 3  # original + max_retransmit


def test_per_peer_parameters_change_at_run_time() -> None:
    ep = CoapEndpoint(rng=random.Random(3))
    ep.set_params("fast", TransmissionParameters(ack_timeout=0.2, ack_random_factor=1.0,
                                                 max_retransmit=1))
    ep.send_request("fast", get("/x"), 0.0)
    ep.send_request("slow", get("/x"), 0.0)
    ep.messages_to_send()
    assert ep.get_timer() == 0.2
    ep.handle_timer(0.2)
    sent = ep.messages_to_send()
    assert [p for p, _ in sent] == ["fast"]
    # Default parameters of the other peer are untouched.
    assert ep.peer_state("slow").params.ack_timeout == 2.0  # type: ignore[union-attr]


def test_duplicate_con_gets_cached_response_once_processed() -> None:
    net = Net()
    echo_server(net)
    ep_b = net.eps["b"]
    req = Message(MessageType.CON, Code.GET, 77, b"t1").set_path("/x")
    data = codec.encode(req)
    ep_b.receive_datagram("a", data, 0.0)
    net.flush()
    ep_b.receive_datagram("a", data, 0.5)
    net.flush()
    reqs = [e for e in net.events["b"] if isinstance(e, RequestReceived)]
    assert len(reqs) == 1
    acks = [m for m in net.sent["b"] if m.mtype == MessageType.ACK]
    assert len(acks) == 2 and acks[0] == acks[1]


def test_duplicate_non_is_ignored() -> None:
    net = Net()
    echo_server(net)
    data = codec.encode(Message(MessageType.NON, Code.GET, 5, b"t").set_path("/x"))
    net.eps["b"].receive_datagram("a", data, 0.0)
    net.eps["b"].receive_datagram("a", data, 0.1)
    net.flush()
    assert len([e for e in net.events["b"] if isinstance(e, RequestReceived)]) == 1


def test_unknown_critical_option_is_4_02_elective_ignored() -> None:
    net = Net()
    echo_server(net)
    net.eps["a"].send_request("b", get("/x").add(65001, b"z"), 0.0)  # odd: critical
    net.eps["a"].send_request("b", get("/y").add(65002, b"z"), 0.0)  # even: elective
    net.run(10.0)
    codes = sorted(r.response.code for r in responses(net))
    assert codes == [Code.CONTENT, Code.BAD_OPTION]
    bad = next(r.response for r in responses(net) if r.response.code == Code.BAD_OPTION)
    assert b"65001" in bad.payload


def test_oversized_request_is_4_13() -> None:
    ep = CoapEndpoint(EndpointConfig(max_message_size=100))
    big = Message(MessageType.NON, Code.PUT, 1, b"t", payload=b"x" * 500).set_path("/x")
    ep.receive_datagram("a", codec.encode(big), 0.0)
    [(_, resp)] = ep.messages_to_send()
    assert resp.code == Code.REQUEST_ENTITY_TOO_LARGE and resp.size1 is not None


def test_malformed_con_gets_rst_and_garbage_allocates_nothing() -> None:
    ep = CoapEndpoint()
    ep.receive_datagram("x", b"\x40\x01\x12\x34\xf0", 0.0)
    assert [(m.mtype, m.mid) for _, m in ep.messages_to_send()] == [(MessageType.RST, 0x1234)]
    rng = random.Random(5)
    for _ in range(2000):
        ep.receive_datagram(("10.0.0.1", rng.randrange(65536)),
                            bytes(rng.randrange(256) for _ in range(rng.randrange(30))), 0.0)
    ep.messages_to_send()
    # Responses, ACKs and RSTs from strangers create no state; only requests could.
    states = ep.peer_count
    assert states < 2000 * 0.05


def test_coap_ping_gets_rst() -> None:
    ep = CoapEndpoint()
    ep.receive_datagram("p", codec.encode(Message(MessageType.CON, 0, 42)), 0.0)
    [(_, m)] = ep.messages_to_send()
    assert m.mtype == MessageType.RST and m.mid == 42
    assert ep.peer_count == 0


def test_non_repeat_interval_bounded_by_probing_rate() -> None:
    ep = CoapEndpoint(default_params=TransmissionParameters(probing_rate=2.0))
    msg = get("/a-long-path-segment")
    size = len(codec.encode(msg)) + 4  # + token
    ep.send_request("p", msg, 0.0, confirmable=False, timeout=100.0,
                    repeat=probing_rate_policy)
    ep.messages_to_send()
    deadline = ep.get_timer()
    assert deadline is not None and deadline >= size / 2.0 - 1e-9


def test_non_repeated_under_loss_until_answered() -> None:
    net = Net(delay=0.01, params=TransmissionParameters(probing_rate=1000.0))
    echo_server(net)
    rng = random.Random(11)
    net.drop = lambda src, data: rng.random() < 0.5
    answered = 0
    for i in range(20):
        start = net.now
        net.eps["a"].send_request("b", get(f"/m{i}"), start, confirmable=False, timeout=30.0,
                                  repeat=probing_rate_policy)
        net.run(start + 30.0)
        answered = len(responses(net))
    assert answered == 20
    a_sent = [m for m in net.sent["a"] if m.code == Code.GET]
    assert len(a_sent) > 20  # repeats happened
    assert len({m.mid for m in a_sent}) == len(a_sent)  # each repeat has a fresh MID


def test_observe_notifications_and_deregistration() -> None:
    net = Net()
    echo_server(net, b"v0", observe_key="res")
    req = net.eps["a"].send_request("b", get("/res", observe=0), 0.0)
    net.run(1.0)
    assert net.eps["b"].observer_count("res") == 1
    for i in range(1, 4):
        net.eps["b"].notify("res", lambda p, r, i=i: Message(code=Code.CONTENT,
                                                             payload=f"v{i}".encode()), net.now,
                            confirmable=i == 2)
        net.run(net.now + 1.0)
    got = [r.response.payload for r in responses(net)]
    assert got == [b"v0", b"v1", b"v2", b"v3"]
    assert [r.notification for r in responses(net)] == [False, True, True, True]
    seqs = [r.response.observe for r in responses(net)]
    assert seqs == sorted(seqs)
    net.eps["a"].cancel(req, net.now)
    net.run(net.now + 5.0)
    assert net.eps["b"].observer_count("res") == 0
    assert any(isinstance(e, ObserverRemoved) for e in net.events["b"])


def test_observe_reordered_notification_dropped() -> None:
    net = Net()
    echo_server(net, b"v0", observe_key="res")
    net.eps["a"].send_request("b", get("/res", observe=0), 0.0)
    net.run(1.0)
    token = responses(net)[0].request.token
    ep_a = net.eps["a"]
    for seq, body in ((10, b"new"), (9, b"old")):
        n = Message(MessageType.NON, Code.CONTENT, 1000 + seq, token, payload=body)
        n.add(OptionNumber.OBSERVE, seq)
        ep_a.receive_datagram("b", codec.encode(n), 2.0)
    net.flush()
    assert [r.response.payload for r in responses(net)] == [b"v0", b"new"]


def test_rst_to_notification_removes_observer() -> None:
    net = Net()
    echo_server(net, b"v0", observe_key="res")
    req = net.eps["a"].send_request("b", get("/res", observe=0), 0.0)
    net.run(1.0)
    net.eps["a"].cancel(req, net.now, deregister=False)  # forget it silently
    net.eps["b"].notify("res", lambda p, r: Message(code=Code.CONTENT, payload=b"x"), net.now)
    net.run(net.now + 1.0)
    assert net.eps["b"].observer_count("res") == 0
    assert any(m.mtype == MessageType.RST for m in net.sent["a"])


def test_unacknowledged_con_notification_removes_observer() -> None:
    net = Net()
    echo_server(net, b"v0", observe_key="res")
    net.eps["a"].send_request("b", get("/res", observe=0), 0.0)
    net.run(1.0)
    net.drop = lambda src, data: src == "b"
    net.eps["b"].notify("res", lambda p, r: Message(code=Code.CONTENT, payload=b"x"), net.now,
                        confirmable=True)
    net.run(net.now + 200.0)
    assert net.eps["b"].observer_count("res") == 0


def test_error_notification_ends_observation() -> None:
    net = Net()
    echo_server(net, b"v0", observe_key="res")
    net.eps["a"].send_request("b", get("/res", observe=0), 0.0)
    net.run(1.0)
    net.eps["b"].notify("res", lambda p, r: Message(code=Code.NOT_FOUND), net.now)
    net.run(net.now + 1.0)
    assert net.eps["b"].observer_count("res") == 0
    assert responses(net)[-1].response.code == Code.NOT_FOUND
    assert net.eps["a"].pending_requests() == 0


def test_reregistration_keeps_token_and_observer() -> None:
    net = Net()
    echo_server(net, b"v0", observe_key="res")
    req = net.eps["a"].send_request("b", get("/res", observe=0), 0.0)
    net.run(1.0)
    net.eps["a"].reregister(req, net.now)
    net.run(net.now + 1.0)
    assert net.eps["b"].observer_count("res") == 1
    assert len(responses(net)) == 2


def test_block2_large_response() -> None:
    body = bytes(range(256)) * 12  # 3072 bytes: 3 blocks of 1024
    net = Net()
    echo_server(net, body)
    net.eps["a"].send_request("b", get("/big"), 0.0)
    net.run(20.0)
    [ev] = responses(net)
    assert ev.response.payload == body
    assert len([m for m in net.sent["a"] if m.code == Code.GET]) == 3


def test_block2_parts_carry_one_etag_and_the_client_echoes_it() -> None:
    """RFC 9132 §4.4.2: a response sent block-wise carries an ETag in every block (RFC 7959
    §2.4: the same one), and the client sends it back when asking for the later blocks."""
    body = bytes(range(256)) * 12
    net = Net()
    echo_server(net, body)
    net.eps["a"].send_request("b", get("/big"), 0.0)
    net.run(20.0)
    assert responses(net)[0].response.payload == body
    blocks = [m for m in net.sent["b"] if m.code == Code.CONTENT]
    tags = {m.opt(OptionNumber.ETAG) for m in blocks}
    assert len(blocks) == 3 and len(tags) == 1 and None not in tags
    later = [m for m in net.sent["a"] if m.code == Code.GET][1:]
    assert [m.opt(OptionNumber.ETAG) for m in later] == [tags.pop()] * 2
    echo_server(net, body + b"!")  # another representation: another ETag
    net.eps["a"].send_request("b", get("/big"), net.now)
    net.run(net.now + 20.0)
    assert len({m.opt(OptionNumber.ETAG) for m in net.sent["b"]
                if m.code == Code.CONTENT}) == 2


def test_block2_with_smaller_size_asked() -> None:
    body = b"z" * 300
    net = Net()
    echo_server(net, body)
    msg = get("/big").add(OptionNumber.BLOCK2, bytes([0x02]))  # num 0, szx 2 (64 bytes)
    net.eps["a"].send_request("b", msg, 0.0)
    net.run(20.0)
    assert responses(net)[0].response.payload == body
    assert len([m for m in net.sent["b"] if m.code == Code.CONTENT]) == 5


def test_block1_large_request() -> None:
    body = b"q" * 2500
    net = Net()
    got: list[bytes] = []

    def on_event(name: str, ev: Event) -> None:
        if name == "b" and isinstance(ev, RequestReceived):
            got.append(ev.exchange.request.payload)
            net.eps["b"].respond(ev.exchange, Message(code=Code.CHANGED), net.now)
    net.on_event = on_event
    net.eps["a"].send_request("b", Message(code=Code.PUT, payload=body).set_path("/u"), 0.0)
    net.run(20.0)
    assert got == [body]
    [ev] = responses(net)
    assert ev.response.code == Code.CHANGED and ev.response.block1 is not None


def test_block1_out_of_order_is_4_08() -> None:
    ep = CoapEndpoint()
    part = Message(MessageType.CON, Code.PUT, 1, b"t", payload=b"x" * 64).set_path("/u")
    part.add(OptionNumber.BLOCK1, bytes([0x2A]))  # num 2, more, szx 2
    ep.receive_datagram("a", codec.encode(part), 0.0)
    [(_, resp)] = ep.messages_to_send()
    assert resp.code == Code.REQUEST_ENTITY_INCOMPLETE


def test_nstart_queues_con_requests() -> None:
    net = Net()
    echo_server(net)
    for i in range(3):
        net.eps["a"].send_request("b", get(f"/n{i}"), 0.0)
    net.flush()
    assert len(net.sent["a"]) == 1  # NSTART = 1
    net.run(5.0)
    assert len(responses(net)) == 3


def test_remove_peer_fails_requests() -> None:
    ep = CoapEndpoint()
    ep.send_request("p", get("/x"), 0.0)
    ep.remove_peer("p", "link down")
    ev = ep.next_event()
    assert isinstance(ev, RequestFailed) and ev.reason == "link down"


def test_observation_renewed_after_max_age_and_lost_when_server_gone() -> None:
    net = Net()
    echo_server(net, b"v0", observe_key="res")
    req = net.eps["a"].send_request("b", get("/res", observe=0), 0.0)
    net.run(1.0)
    # No notification for Max-Age (60 s) + margin: the client re-registers by itself.
    net.run(70.0)
    regs = [m for m in net.sent["a"] if m.code == Code.GET and m.observe == 0]
    assert len(regs) == 2 and regs[0].token == regs[1].token
    assert not req.done
    # The server disappears: the next renewal gets no answer and the observation fails.
    net.drop = lambda src, data: True
    net.run(300.0)
    assert req.done
    assert any(isinstance(e, RequestFailed) and e.request is req for e in net.events["a"])


def test_fuzz_mutated_datagrams_into_endpoint() -> None:
    """Random and mutated datagrams: nothing escapes, answers are well-formed, and peers that
    only sent garbage (undecodable datagrams) leave no state behind."""
    rng = random.Random(99)
    ep = CoapEndpoint(rng=random.Random(1))
    seeds = [
        codec.encode(get("/res", observe=0)),
        codec.encode(Message(MessageType.CON, Code.PUT, 3, b"tk", payload=b"x" * 70).set_path(
            "/a/b").add(OptionNumber.BLOCK1, bytes([0x0A])).add(OptionNumber.SIZE1, 5000)),
        codec.encode(Message(MessageType.NON, Code.CONTENT, 9, b"tok").add(
            OptionNumber.OBSERVE, 5).add(OptionNumber.BLOCK2, bytes([0x0E]))),
        codec.encode(Message(MessageType.ACK, 0, 7)),
    ]
    garbage_peers = 0
    for i in range(20000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(0, 4)):
            pos = rng.randrange(len(data))
            data[pos] = rng.randrange(256)
        peer = ("p", i % 50)
        try:
            codec.decode(bytes(data))
            decodable = True
        except codec.MessageFormatError:
            decodable = False
        if not decodable:
            peer = ("garbage", i)
            garbage_peers += 1
        ep.receive_datagram(peer, bytes(data), i * 0.001)
        while (ev := ep.next_event()) is not None:
            if isinstance(ev, RequestReceived) and rng.random() < 0.9:
                ep.respond(ev.exchange, Message(code=Code.CONTENT, payload=b"r" * rng.randrange(
                    3000)), i * 0.001, observe_key="k" if rng.random() < 0.5 else None)
        for _, out in ep.messages_to_send():
            codec.decode(codec.encode(out))  # everything we send is well-formed
        ep.handle_timer(i * 0.001)
    assert garbage_peers > 1000
    assert all(p[0] != "garbage" for p in ep._peers)


def drive(ep: CoapEndpoint, until: float) -> list[Message]:
    """Fire the endpoint's timers up to ``until``; what it sent meanwhile."""
    sent = [m for _, m in ep.messages_to_send()]
    for _ in range(1000):
        due = ep.get_timer()
        if due is None or due > until:
            break
        ep.handle_timer(due)
        sent += [m for _, m in ep.messages_to_send()]
    return sent


def test_a_request_given_up_frees_its_nstart_slot() -> None:
    """RFC 7252 §4.7: a CON request that timed out or was cancelled is not retransmitted any
    more and does not hold the peer's NSTART slot: the next request goes at once (it used to
    wait for the dead one's 30-45 s of retransmissions)."""
    ep = CoapEndpoint()  # NSTART 1; the peer never answers
    lost = ep.send_request("p", get("/lost"), 0.0, timeout=2.0)
    assert [m.uri_path for m in drive(ep, 2.0)] == [("lost",)]  # its deadline comes first
    assert isinstance(ep.next_event(), RequestFailed) and lost.done
    ep.send_request("p", get("/next"), 2.0)
    sent = drive(ep, 2.0)
    assert [m.uri_path for m in sent] == [("next",)]  # at once
    later = drive(ep, 60.0)
    assert ("lost",) not in [m.uri_path for m in later]  # the dead one is not retransmitted
    cancelled = ep.send_request("p", get("/cancelled"), 60.0)
    assert drive(ep, 60.0) == []  # queued behind /next, which is still retransmitted
    ep.cancel(cancelled, 60.0)
    assert cancelled.done


def test_a_request_ignored_gets_only_its_empty_ack() -> None:
    """A request the application ignores (RFC 9132 §4.4.3 "silently ignored"): a CON one gets
    an empty ACK so that it is not retransmitted, a duplicate the same ACK again (RFC 7252
    §4.5); a NON one gets nothing."""
    ep = CoapEndpoint()
    con = Message(mtype=MessageType.CON, code=Code.PUT, mid=7, token=b"t").set_path("/x")
    ep.receive_datagram("p", codec.encode(con), 0.0)
    ev = ep.next_event()
    assert isinstance(ev, RequestReceived)
    ep.ignore(ev.exchange, 0.0)
    [(_, ack)] = ep.messages_to_send()
    assert (ack.mtype, ack.code, ack.mid, ack.payload) == (MessageType.ACK, 0, 7, b"")
    ep.receive_datagram("p", codec.encode(con), 1.0)  # its retransmission
    assert ep.next_event() is None
    assert [(m.mtype, m.code, m.mid) for _, m in ep.messages_to_send()] == [
        (MessageType.ACK, 0, 7)]
    non = Message(mtype=MessageType.NON, code=Code.PUT, mid=8, token=b"u").set_path("/x")
    ep.receive_datagram("p", codec.encode(non), 2.0)
    ev = ep.next_event()
    assert isinstance(ev, RequestReceived)
    ep.ignore(ev.exchange, 2.0)
    assert ep.messages_to_send() == []
