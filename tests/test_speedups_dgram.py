"""dotsd._speedups._dgram (recvmmsg/sendmmsg) against the socket module, on loopback."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dotsd._speedups import load

_dgram: Any = load("_dgram")

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(_dgram is None, reason="dotsd._speedups._dgram is not built here, or "
                       "DOTSD_PURE_PYTHON=1 (tests/test_speedups_loader.py says which)"),
]


FAMILIES = [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]


@pytest.fixture(params=FAMILIES, ids=["ipv4", "ipv6"])
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[int, socket.socket, socket.socket]]:
    family, host = request.param
    rx = socket.socket(family, socket.SOCK_DGRAM)
    tx = socket.socket(family, socket.SOCK_DGRAM)
    try:
        rx.bind((host, 0))
        tx.bind((host, 0))
    except OSError as exc:
        pytest.skip(f"no {host} here: {exc}")
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
    rx.setblocking(False)
    tx.setblocking(False)
    yield family, rx, tx
    rx.close()
    tx.close()


def _drain(rx: socket.socket, count: int, timeout: float = 2.0) -> list[tuple[bytes, Any]]:
    got: list[tuple[bytes, Any]] = []
    end = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < end:
        batch = _dgram.recv_batch(rx.fileno(), 64)
        got.extend(batch)
        if not batch:
            time.sleep(0.001)
    return got


@pytest.mark.network
def test_recv_batch_gives_what_recvfrom_gives(pair: Any) -> None:
    _, rx, tx = pair
    for size in (0, 1, 1500, 9000):
        tx.sendto(bytes(range(256)) * (size // 256) + b"z" * (size % 256), rx.getsockname())
    time.sleep(0.01)
    first = rx.recvfrom(65536)
    rest = _drain(rx, 3)
    assert first[1] == tx.getsockname()
    assert [a for _, a in rest] == [first[1]] * 3  # the same tuple form, field for field
    assert [len(d) for d in [first[0]] + [d for d, _ in rest]] == [0, 1, 1500, 9000]
    assert _dgram.recv_batch(rx.fileno(), 64) == []  # nothing waiting: empty, no error


@pytest.mark.network
def test_the_largest_datagram_is_not_truncated() -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    tx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    big = os.urandom(65507)  # the largest IPv4 UDP payload
    tx.sendto(big, rx.getsockname())
    assert _drain(rx, 1) == [(big, tx.getsockname())]
    rx.close()
    tx.close()


def test_count_bounds_and_a_bad_descriptor() -> None:
    with pytest.raises(ValueError):
        _dgram.recv_batch(0, 0)
    with pytest.raises(ValueError):
        _dgram.recv_batch(0, _dgram.MAX_BATCH + 1)
    with pytest.raises(OSError):
        _dgram.recv_batch(-1, 1)
    with pytest.raises(ValueError):
        _dgram.send_batch(-1, socket.AF_UNIX, [], 0)
    with pytest.raises(TypeError):
        _dgram.send_batch(-1, socket.AF_INET, (), 0)
    # A failed send is left to the caller (socket.sendto then raises or queues).
    assert _dgram.send_batch(-1, socket.AF_INET, [(b"x", ("127.0.0.1", 9))], 0) == 0


@pytest.mark.network
def test_more_than_one_call_of_sends_in_order(pair: Any) -> None:
    family, rx, tx = pair
    addr = rx.getsockname()
    items = [(b"%d" % i, addr) for i in range(200)]  # four sendmmsg calls
    assert _dgram.send_batch(tx.fileno(), family, items, 0) == 200
    got = _drain(rx, 200)
    assert [d for d, _ in got] == [d for d, _ in items]
    assert _dgram.send_batch(tx.fileno(), family, items, 200) == 200  # nothing left


@pytest.mark.network
def test_connected_socket_sends_with_no_address(pair: Any) -> None:
    family, rx, tx = pair
    tx.connect(rx.getsockname())
    assert _dgram.send_batch(tx.fileno(), family, [(b"a", None), (b"b", None)], 0) == 2
    assert [d for d, _ in _drain(rx, 2)] == [b"a", b"b"]


# Addresses of every shape a caller might pass: the module either sends them exactly as
# socket.sendto would, or stops there so that socket.sendto handles them.
_hosts = st.sampled_from(["127.0.0.1", "::1", "localhost", "", "1.2.3", "::1%lo",
                          "127.0.0.1\x00x", "x" * 80, "::ffff:127.0.0.1"])
_ports = st.one_of(st.integers(-2, 70000), st.just(None), st.text(max_size=2))
_addresses = st.one_of(
    st.none(), st.tuples(_hosts, _ports),
    st.tuples(_hosts, _ports, st.integers(-1, 1 << 21)),
    st.tuples(_hosts, _ports, st.integers(-1, 2), st.integers(-1, (1 << 32) + 1)),
    st.tuples(_hosts), st.integers(), st.text(max_size=3))


@pytest.mark.network
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_addresses, st.binary(max_size=64))
def test_an_address_is_sent_as_sendto_would_or_left_to_it(pair: Any, addr: Any,
                                                          data: bytes) -> None:
    family, rx, tx = pair
    port = rx.getsockname()[1]
    if isinstance(addr, tuple) and len(addr) >= 2 and addr[1] == 0:
        addr = (addr[0], port, *addr[2:])  # some of them towards our receiver
    done = _dgram.send_batch(tx.fileno(), family, [(data, addr)], 0)
    assert done in (0, 1)
    if done == 1 and addr is not None:
        tx.sendto(data, addr)  # what the module sent, socket.sendto accepts as well
        if addr[1] == port and addr[0] in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
            assert [d for d, _ in _drain(rx, 2)] == [data, data]  # and both arrived
    while _dgram.recv_batch(rx.fileno(), 64):  # leave nothing for the next example
        pass
