"""What a client learnt of the path to its server, kept across runs (dotsd.agents.paths):
a round trip, restored only while fresh, and never an error for a damaged file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dotsd.agents.dial import CACHE_TIME, Candidate, ServerDialer
from dotsd.agents.paths import RTT_TTL, SESSION_TTL, PathMemory
from dotsd.dtls import DtlsConfig, DtlsConnection, DtlsContext, client_context, server_context
from dotsd.pki import PkiPaths
from dotsd.signal.pacing import RttEstimator

SERVER = "dots.example:4646"


class _Node:
    def link_up(self, link: Any) -> None: ...
    def data_received(self, link: Any, data: bytes) -> None: ...
    def link_down(self, link: Any, reason: str | None) -> None: ...


def dialer(dtls: DtlsContext | None = None) -> ServerDialer:
    return ServerDialer(_Node(), "dots.example", 4646, dtls=dtls,
                        tls=None if dtls is not None else object())  # type: ignore[arg-type]


def test_round_trip_and_freshness(tmp_path: Path) -> None:
    memory = PathMemory(tmp_path / "paths.json")
    estimator, first = RttEstimator(), dialer()
    estimator.sample(0.05)
    winner = Candidate("dtls", "2001:db8::1", 4646)
    first.cache.remember("dots.example:4646", winner, 100.0)  # loop time 100 = wall 5000
    memory.save(SERVER, estimator, first, wall=5010.0, mono=110.0)
    assert (tmp_path / "paths.json").stat().st_mode & 0o777 == 0o600

    # A later run, on another loop clock: both come back, the winner with its age kept.
    fresh, second = RttEstimator(), dialer()
    memory.restore(SERVER, fresh, second, wall=5070.0, mono=7.0)
    assert fresh.srtt == 0.05
    assert second.cache.lookup("dots.example:4646", 7.0) == winner
    assert second.cache.lookup("dots.example:4646", 7.0 + CACHE_TIME - 70.0) is None

    # Too old: nothing is restored.
    stale, third = RttEstimator(), dialer()
    memory.restore(SERVER, stale, third, wall=5010.0 + RTT_TTL, mono=0.0)
    assert not stale.has_estimate and third.cache.lookup("dots.example:4646", 0.0) is None
    # Another server: nothing either; a measured estimate is never overwritten.
    other = RttEstimator()
    memory.restore("other:4646", other, dialer(), wall=5020.0, mono=0.0)
    assert not other.has_estimate
    measured = RttEstimator()
    measured.sample(0.2)
    memory.restore(SERVER, measured, dialer(), wall=5020.0, mono=0.0)
    assert measured.srtt == 0.2


def test_save_without_anything_learnt_keeps_the_rest(tmp_path: Path) -> None:
    memory = PathMemory(tmp_path / "paths.json")
    estimator = RttEstimator()
    estimator.sample(0.03)
    memory.save(SERVER, estimator, dialer(), wall=1.0, mono=1.0)
    memory.save(SERVER, RttEstimator(), dialer(), wall=2.0, mono=2.0)
    entry = json.loads((tmp_path / "paths.json").read_text())["servers"][SERVER]
    assert entry == {"srtt": 0.03, "srtt_at": 1.0}


def handshake(client: DtlsConnection, sctx: DtlsContext) -> DtlsConnection:
    """``client`` after a lossless handshake with a server of ``sctx``."""
    server = DtlsConnection(sctx, 0.0)
    for _ in range(10):
        for d in client.datagrams_to_send():
            server.receive_datagram(d, 0.0)
        for d in server.datagrams_to_send():
            client.receive_datagram(d, 0.0)
    return client


def test_dtls_session_is_kept_for_the_next_run(pki: PkiPaths, tmp_path: Path) -> None:
    """A session of this run resumes in the next one (RFC 9132 §7.1); it keeps its first date,
    and is dropped once older than SESSION_TTL."""
    sctx = server_context(DtlsConfig.from_pki(pki))
    cctx = client_context(DtlsConfig.from_pki(pki, client=True))
    client = handshake(DtlsConnection(cctx, 0.0, server_hostname="localhost"), sctx)
    assert client.session is not None
    where = Candidate("dtls", "2001:db8::1", 4646)
    memory = PathMemory(tmp_path / "paths.json")
    first = dialer(cctx)
    first._sessions[where] = client.session
    memory.save(SERVER, RttEstimator(), first, wall=1000.0, mono=0.0)

    nextctx = client_context(DtlsConfig.from_pki(pki, client=True))
    rekeyed = dialer(nextctx)
    rekeyed._credentials = "0" * 64  # the operator replaced the client's key
    memory.restore(SERVER, RttEstimator(), rekeyed, wall=1001.0, mono=0.0)
    assert rekeyed.sessions == {}
    second = dialer(nextctx)
    memory.restore(SERVER, RttEstimator(), second, wall=1000.0 + SESSION_TTL - 1, mono=0.0)
    session = second.sessions[where]
    again = handshake(DtlsConnection(nextctx, 0.0, server_hostname="localhost",
                                     session=session), sctx)
    assert again.handshake_complete and again.resumed
    memory.save(SERVER, RttEstimator(), second, wall=2000.0, mono=0.0)  # the same session
    (item,) = json.loads((tmp_path / "paths.json").read_text())["servers"][SERVER]["sessions"]
    assert item["at"] == 1000.0  # not made younger by being resumed
    third = dialer(nextctx)
    memory.restore(SERVER, RttEstimator(), third, wall=1000.0 + SESSION_TTL, mono=0.0)
    assert third.sessions == {}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.one_of(
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
    json_values.map(json.dumps),
    st.fixed_dictionaries({"servers": st.dictionaries(
        st.just(SERVER), st.dictionaries(
            st.sampled_from(["srtt", "srtt_at", "winner", "winner_at", "sessions"]),
            json_values | st.lists(st.dictionaries(
                st.sampled_from(["transport", "address", "port", "at", "der"]),
                json_values | st.just("dtls") | st.just(4646) | st.just("MAA=")), max_size=3))
    )}).map(json.dumps)))
def test_damaged_files_are_ignored(tmp_path: Path, content: str) -> None:
    path = tmp_path / "paths.json"
    path.write_text(content, encoding="utf-8")
    memory = PathMemory(path)
    estimator, dial = RttEstimator(), dialer()
    memory.restore(SERVER, estimator, dial, wall=10.0, mono=10.0)  # never raises
    if estimator.srtt is not None:
        assert 0 < estimator.srtt <= 60
    estimator.sample(0.04)
    memory.save(SERVER, estimator, dial, wall=11.0, mono=11.0)  # never raises
    again = RttEstimator()
    memory.restore(SERVER, again, dialer(), wall=12.0, mono=12.0)
    assert again.srtt == pytest.approx(estimator.srtt, abs=1e-6)  # a damaged file was replaced
