"""The pure parts of bench/relay.py (the loss benchmark's relay) and of bench/loss.py's
bookkeeping: frame classification, the delay line, seeded loss, the control commands, the
summary statistics. No sockets, no namespaces."""

from __future__ import annotations

import math
import struct
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(REPO))

from bench.loss import (  # noqa: E402
    Trial,
    dotsd_success,
    libcoap_success,
    parse_points,
    summarize,
)
from bench.relay import DelayLine, Direction, LossGate, handle_command, lossable  # noqa: E402

MAC = b"\x02\x00\x00\x00\x00\x01" + b"\x02\x00\x00\x00\x00\x02"


def ipv4(proto: int) -> bytes:
    header = bytes([0x45, 0]) + struct.pack("!H", 48) + bytes(5) + bytes([proto]) + bytes(10)
    return MAC + b"\x08\x00" + header + bytes(28)


def ipv6(next_header: int) -> bytes:
    header = b"\x60" + bytes(5) + bytes([next_header, 64]) + bytes(32)
    return MAC + b"\x86\xdd" + header + bytes(16)


def test_udp_and_tcp_over_ipv4_and_ipv6_are_lossable() -> None:
    assert lossable(ipv4(17))
    assert lossable(ipv4(6))
    assert lossable(ipv6(17))
    assert lossable(ipv6(6))


def test_arp_icmp_neighbour_discovery_and_runts_are_never_lossable() -> None:
    arp = MAC + b"\x08\x06" + bytes(28)
    assert not lossable(arp)
    assert not lossable(ipv4(1))  # ICMP
    assert not lossable(ipv6(58))  # ICMPv6: neighbour discovery
    assert not lossable(MAC + b"\x08\x00" + bytes(10))  # truncated IPv4 header
    assert not lossable(b"\x00" * 10)
    bad_version = bytearray(ipv4(17))
    bad_version[14] = 0x65
    assert not lossable(bytes(bad_version))


def test_vlan_tagged_udp_is_lossable() -> None:
    frame = ipv4(17)
    tagged = frame[:12] + b"\x81\x00\x00\x07" + frame[12:]
    assert lossable(tagged)


def test_delay_line_releases_in_order_after_the_delay() -> None:
    line = DelayLine(0.025)
    line.push(b"a", 1.000)
    line.push(b"b", 1.010)
    assert line.next_due() == pytest.approx(1.025)
    assert line.pop_due(1.024) == []
    assert [f for _, f in line.pop_due(1.030)] == [b"a"]
    assert [f for _, f in line.pop_due(2.0)] == [b"b"]
    assert line.next_due() is None


def test_delay_line_is_bounded() -> None:
    line = DelayLine(1.0, limit=2)
    assert line.push(b"1", 0.0) and line.push(b"2", 0.0)
    assert not line.push(b"3", 0.0)
    assert len(line) == 2


def test_seeded_loss_is_reproducible_and_near_its_rate() -> None:
    gate1, gate2 = LossGate(30, "seed/up"), LossGate(30, "seed/up")
    seq1 = [gate1.drop() for _ in range(5000)]
    seq2 = [gate2.drop() for _ in range(5000)]
    assert seq1 == seq2
    assert 0.27 < sum(seq1) / len(seq1) < 0.33
    other = LossGate(30, "seed/down")
    assert [other.drop() for _ in range(5000)] != seq1


def test_zero_and_full_loss() -> None:
    assert not any(LossGate(0, 1).drop() for _ in range(1000))
    assert all(LossGate(100, 1).drop() for _ in range(1000))
    with pytest.raises(ValueError):
        LossGate(101, 1)


def test_direction_counts_drops_only_for_lossable_frames() -> None:
    d = Direction("up", 0.025)
    d.set_loss(100, "x")
    assert d.offer(ipv4(17), 0.0, 100.0) == "drop"
    assert d.offer(MAC + b"\x08\x06" + bytes(28), 0.0, 100.1) == "other"
    c = d.counters
    assert (c.seen, c.dropped, c.other, c.first_wall) == (1, 1, 1, 100.0)
    assert len(d.line) == 1  # the ARP frame is held, not dropped


def test_control_commands() -> None:
    up, down, trace = Direction("up", 0.025), Direction("down", 0.025), [(1.0, "up", 60, "hold")]
    answer, stop = handle_command("loss 10 95 7", up, down, trace)
    assert answer["ok"] and not stop
    assert (up.gate.percent, down.gate.percent) == (10.0, 95.0)
    up.offer(ipv4(17), 0.0, 5.0)
    stats, _ = handle_command("stats", up, down, trace)
    assert stats["up"]["seen"] == 1
    handle_command("reset", up, down, trace)
    assert up.counters.seen == 0 and trace == []
    assert not handle_command("loss 10", up, down, trace)[0]["ok"]
    assert not handle_command("loss 200 0 1", up, down, trace)[0]["ok"]
    assert not handle_command("bogus", up, down, trace)[0]["ok"]
    assert handle_command("quit", up, down, trace)[1]


def test_same_seed_gives_both_directions_their_own_reproducible_draws() -> None:
    def draws(seed: str) -> tuple[list[bool], list[bool]]:
        up, down = Direction("up", 0), Direction("down", 0)
        handle_command(f"loss 50 50 {seed}", up, down, [])
        return ([up.gate.drop() for _ in range(200)], [down.gate.drop() for _ in range(200)])

    assert draws("12/50/50/3") == draws("12/50/50/3")
    u, d = draws("12/50/50/3")
    assert u != d


def test_success_lines() -> None:
    assert dotsd_success('{"mid": 3, "code": "2.01", "result": "created"}') == "2.01"
    assert dotsd_success('{"code": "4.00"}') is None
    assert dotsd_success("not json") is None
    assert libcoap_success("v:1 t:ACK c:2.01 i:5737 {01} [ ]") == "2.01"
    assert libcoap_success("v:1 t:NON c:2.04 i:b8fe {01}") == "2.04"
    assert libcoap_success("v:1 t:CON c:PUT i:5737 {01}") is None
    assert libcoap_success("v:1 t:ACK c:4.03 i:1") is None


def test_points() -> None:
    assert parse_points("0/0,5/95") == ((0, 0), (5, 95))
    with pytest.raises(ValueError):
        parse_points("50")
    with pytest.raises(ValueError):
        parse_points("50/101")


def test_summary_counts_failures_as_slower_than_the_budget() -> None:
    trials = [Trial("warm", "50/50", i, "s", "p") for i in range(4)]
    for t, ack in zip(trials, (0.2, 0.4, None, None), strict=True):
        t.acked = ack is not None
        t.ack_time = ack
        t.up_datagrams = 10
        t.wire_time = 0.5
    trials[0].received, trials[0].recv_time = True, 0.15
    s = summarize(trials, 5.0)
    assert s["acked"] == 2 and s["received"] == 1 and s["received_1s"] == 1
    assert s["median"] == 0.4
    assert math.isinf(s["p95"])
    assert s["per_rtt"] == pytest.approx(40 / (2.0 / 0.05))
