"""Pacing of NON mitigation requests (RFC 9132 §4.4) and the RTT estimator, in fake time."""

from __future__ import annotations

import itertools

import pytest

from dotsd.coap.endpoint import CoapEndpoint
from dotsd.coap.exchange import RepeatPolicy
from dotsd.coap.message import Message
from dotsd.coap.numbers import Code
from dotsd.coap.params import TransmissionParameters
from dotsd.signal.heartbeat import HeartbeatMonitor
from dotsd.signal.pacing import (
    NO_ESTIMATE_INTERVAL,
    MitigationRepeatPolicy,
    RttEstimator,
)

# ------------------------------------------------------------------------------- estimator


def test_rfc6298_first_and_next_samples() -> None:
    est = RttEstimator(min_rto=0.0)
    assert not est.has_estimate and est.rto is None
    est.sample(0.2)
    assert est.srtt == pytest.approx(0.2)
    assert est.rttvar == pytest.approx(0.1)
    assert est.rto == pytest.approx(0.2 + 4 * 0.1)
    est.sample(0.4)
    assert est.rttvar == pytest.approx(0.75 * 0.1 + 0.25 * 0.2)
    assert est.srtt == pytest.approx(0.875 * 0.2 + 0.125 * 0.4)
    assert est.samples == 2


def test_rto_bounds_and_negative_samples() -> None:
    est = RttEstimator()
    est.sample(-1.0)
    assert not est.has_estimate
    est.sample(0.01)
    assert est.rto == 1.0  # RFC 6298 §2.4 minimum
    big = RttEstimator(max_rto=60.0)
    big.sample(50.0)
    assert big.rto == 60.0  # RFC 6298 §2.5 maximum
    with pytest.raises(ValueError):
        RttEstimator(min_rto=2.0, max_rto=1.0)


def test_restart_forgets_the_past() -> None:
    est = RttEstimator()
    for rtt in (0.6, 0.5, 0.7):
        est.sample(rtt)
    est.restart(0.05)
    assert est.srtt == 0.05 and est.rttvar == 0.025 and est.samples == 1


def test_karn_rule_on_exchanges() -> None:
    est = RttEstimator()
    est.on_exchange(10.0, 13.0, repeated=True)
    assert not est.has_estimate
    est.on_exchange(10.0, 10.3, repeated=False)
    assert est.srtt == pytest.approx(0.3)


def test_estimator_fed_from_heartbeats() -> None:
    est = RttEstimator(min_rto=0.0)
    mon = HeartbeatMonitor(30, 15, 0.0)
    for k in range(1, 9):
        t = 30.0 * k
        mon.handle_timer(t)
        mon.on_heartbeat_sent(t)
        sample = mon.on_heartbeat_response(t + 0.08)
        assert sample is not None
        est.sample(sample)
    assert est.srtt == pytest.approx(0.08)
    assert est.rto is not None and est.rto < 0.15


# ------------------------------------------------------------------------------- policy


def test_no_estimate_three_seconds() -> None:
    policy = MitigationRepeatPolicy()
    assert policy.delay(0) == NO_ESTIMATE_INTERVAL == 3.0
    assert policy.delay(10) == 3.0  # regular intervals, until answered
    assert MitigationRepeatPolicy(no_estimate_interval=5.0).delay(0) == 5.0
    with pytest.raises(ValueError):
        MitigationRepeatPolicy(no_estimate_interval=2.9)  # RFC 9132 §4.4 MUST NOT


def test_with_estimate_one_per_rtt_at_most() -> None:
    est = RttEstimator(min_rto=0.0)
    est.sample(0.5)
    policy = MitigationRepeatPolicy(est)
    assert policy.delay(1) == pytest.approx(0.5)  # one per (smoothed) RTT
    # The first repetition waits for the answer's variation too: SRTT + 4 RTTVAR, ≤ 2 SRTT.
    assert policy.delay(0) == pytest.approx(1.0)
    # The endpoint's own (larger) RTT is never undercut.
    assert policy.delay(1, rtt=3.5) == pytest.approx(3.5)
    est.sample(1.5)
    delay = policy.delay(5)
    assert delay is not None and est.srtt is not None and delay == pytest.approx(est.srtt)


def test_first_repetition_leaves_room_for_the_answer() -> None:
    """A clean 50 ms path where the server takes a few ms: the first copy is not repeated
    at SRTT sharp (the answer would cross it), but at SRTT + 4 RTTVAR; then one per SRTT."""
    est = RttEstimator(min_rto=0.0)
    for rtt in (0.052, 0.050, 0.055, 0.051, 0.053, 0.050, 0.054, 0.052):
        est.sample(rtt)
    assert est.srtt is not None
    policy = MitigationRepeatPolicy(est)
    first, later = policy.delay(0), policy.delay(1)
    assert later == pytest.approx(est.srtt)
    assert first == pytest.approx(est.srtt + 4 * est.rttvar)
    assert later is not None and first is not None and later + 0.005 < first < 2 * later


def test_repeats_follow_the_rtt_not_the_one_second_rto() -> None:
    """RFC 9132 §4.4 allows one NON request per RTT on average: at a 50 ms RTT that is 20 a
    second, and at 75 % loss each way every try counts (a round trip then succeeds 6 % of the
    time: 5 tries give 27 %, 80 give 99 %). The RTO (never under 1 s, RFC 6298 §2.4) used to
    pace the repetitions, one a second."""
    est = RttEstimator()  # the RFC 6298 minimum RTO of 1 s
    for _ in range(10):
        est.sample(0.05)
    assert est.rto == 1.0
    policy = MitigationRepeatPolicy(est, min_interval=0.02)
    assert policy.delay(1) == pytest.approx(0.05)
    assert sum(1 for _ in range(1, 100) if policy.delay(_) == pytest.approx(0.05)) == 99
    first = policy.delay(0)
    assert first is not None and 0.05 <= first < 0.06  # constant samples: no variation


def test_endpoint_rtt_used_without_own_estimate() -> None:
    policy = MitigationRepeatPolicy(RttEstimator(), min_interval=0.2)
    assert policy.delay(0, rtt=0.05) == 0.2
    assert policy.delay(0, rtt=0.7) == 0.7
    assert policy.delay(0, rtt=None) == 3.0


def test_backoff_and_cap_and_max_repeats() -> None:
    policy = MitigationRepeatPolicy(backoff=2.0, max_interval=20.0, max_repeats=5)
    assert [policy.delay(a) for a in range(6)] == [3.0, 6.0, 12.0, 20.0, 20.0, None]
    with pytest.raises(ValueError):
        MitigationRepeatPolicy(max_interval=1.0)
    with pytest.raises(ValueError):
        MitigationRepeatPolicy(backoff=0.5)


def test_probing_rate_is_ignored() -> None:
    """RFC 9132 §4.4: mitigation requests MUST NOT be delayed by probing-rate checks."""
    ep = CoapEndpoint(default_params=TransmissionParameters(probing_rate=1.0))
    policy: RepeatPolicy = MitigationRepeatPolicy()
    msg = Message(code=Code.PUT, payload=b"x" * 400).set_path(
        "/.well-known/dots/mitigate/cuid=abc/mid=1")
    ep.send_request("srv", msg, 0.0, confirmable=False, timeout=100.0, repeat=policy)
    ep.messages_to_send()
    assert ep.get_timer() == 3.0  # not 400+ s as probing-rate 1 B/s would ask


def test_repeats_with_endpoint_in_fake_time() -> None:
    """Unanswered NON request: repeated every 3 s without an estimate; with an estimate from
    heartbeats, once per RTT."""
    for est, expected in ((None, 3.0), (RttEstimator(), 0.1)):
        if est is not None:
            est.sample(0.1)  # one per RTT, not per RTO (RFC 6298's 1 s minimum)
        ep = CoapEndpoint()
        msg = Message(code=Code.PUT, payload=b"{}").set_path("/.well-known/dots/mitigate")
        ep.send_request("srv", msg, 0.0, confirmable=False, timeout=30.0,
                        repeat=MitigationRepeatPolicy(est))
        times: list[float] = []
        now = 0.0
        while True:
            times.extend(now for _ in ep.messages_to_send())
            timer = ep.get_timer()
            if timer is None or timer > 29.9:
                break
            now = timer
            ep.handle_timer(now)
            while ep.next_event() is not None:
                pass
        gaps = [round(b - a, 6) for a, b in itertools.pairwise(times)]
        # The first repetition waits SRTT + 4 RTTVAR (here 2 SRTT: one sample only).
        assert set(gaps[1:]) == {expected} and gaps[0] == (3.0 if est is None else 0.2)
        assert len(times) == int((29.9 - gaps[0]) // expected) + 2


def test_client_never_repeats_faster_than_its_floor() -> None:
    """A fresh session knows only the RTT of a cheap exchange: the client's default policy
    does not repeat a mitigation request faster than the server can answer it."""
    from dotsd.agents.client import MIN_REPEAT_INTERVAL, SignalClient

    client = SignalClient("cuid-x")
    assert client.repeat.delay(0, rtt=0.0008) == MIN_REPEAT_INTERVAL
    assert client.repeat.delay(3, rtt=0.6) == pytest.approx(0.6)  # one per RTT beyond it
    assert client.repeat.delay(0, rtt=None) == 3.0  # no estimate: RFC 9132 §4.4
