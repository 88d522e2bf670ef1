"""The indexes of the mitigation table (dotsd.signal.targets.TargetIndex, the per-client map,
the deadline heap): after any sequence of requests, withdrawals, mitigator reports and expiry,
they say what a scan of every record says; and a full table does not slow a new request."""

from __future__ import annotations

import ipaddress
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dotsd.signal.errors import SignalError
from dotsd.signal.lifecycle import MitigationEvent
from dotsd.signal.mitigation import Change, ConflictPolicy, MitigationTable, _other_client_conflict
from dotsd.signal.policy import Policy
from dotsd.signal.scope import MITIGATION_MEMBER, Scope, common_targets
from dotsd.signal.targets import TargetIndex

T0 = 1_700_000_000.0
POLICY = Policy(allowed_prefixes=(ipaddress.ip_network("10.0.0.0/8"),
                                  ipaddress.ip_network("2001:db8::/32")),
                allowed_domains=("example.com",), allow_indefinite=True)

# A small universe, so that overlaps (nested and equal prefixes, shared names) are frequent.
PREFIXES = ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3/32", "10.2.0.0/16",
            "10.1.128.0/17", "2001:db8::/32", "2001:db8:1::/48", "2001:db8:1::5/128"]
NAMES = ["a.example.com", "B.example.com.", "b.example.com"]
URIS = ["https://a.example.com/x", "https://a.example.com/y"]

scopes = st.fixed_dictionaries({
    "target-prefix": st.lists(st.sampled_from(PREFIXES), max_size=3, unique=True),
    "target-fqdn": st.lists(st.sampled_from(NAMES), max_size=2, unique=True),
    "target-uri": st.lists(st.sampled_from(URIS), max_size=1),
    "lifetime": st.sampled_from([-1, 5, 30, 3600]),
    "trigger-mitigation": st.booleans(),
}).filter(lambda d: bool(d["target-prefix"] or d["target-fqdn"] or d["target-uri"]))

operations = st.lists(st.one_of(
    st.tuples(st.just("put"), st.sampled_from("abc"), st.integers(1, 6), scopes),
    st.tuples(st.just("delete"), st.sampled_from("abc"), st.integers(1, 6)),
    st.tuples(st.just("report"), st.sampled_from("abc"), st.integers(1, 6),
              st.sampled_from([MitigationEvent.MITIGATING, MitigationEvent.ATTACK_STOPPED])),
    st.tuples(st.just("time"), st.sampled_from([1.0, 10.0, 200.0])),
    st.tuples(st.just("lost"), st.sampled_from("abc")),
), max_size=40)


def expire(table: MitigationTable, now: float) -> list[Change]:
    """handle_timer, then every change next_event gives."""
    table.handle_timer(now)
    return list(iter(table.next_event, None))


def request(entry: dict[str, Any]) -> dict[str, Any]:
    return {MITIGATION_MEMBER: {"scope": [{k: v for k, v in entry.items() if v != []}]}}


def assert_indexes_agree(table: MitigationTable, probe: Scope) -> None:
    records = list(table)
    # Candidates are a superset of the overlapping records (the exact check runs on them).
    found = table._targets.candidates(probe)
    for m in records:
        if common_targets(probe, m.scope, match_ports_protocols=False) is not None:
            assert m.key in found, (m.key, probe)
    assert found <= {m.key for m in records}
    # The index holds exactly what one built afresh would.
    fresh = TargetIndex()
    for m in records:
        fresh.add(m.key, m.scope)
    assert fresh._exact == table._targets._exact
    assert fresh._starts == table._targets._starts
    assert fresh._names == table._targets._names
    assert {v: +c for v, c in fresh._lengths.items()} == {
        v: +c for v, c in table._targets._lengths.items()}
    # The per-client map, the deadline heap and the conflicted set.
    for cuid in "abc":
        assert table.of_client(cuid) == [m for m in records if m.cuid == cuid]
    deadlines = [d for m in records if (d := m.deadline()) is not None]
    assert table.get_timer() == (min(deadlines) if deadlines else None)
    assert table._conflicted == {m.key for m in records if _other_client_conflict(m)}
    assert len(table._deadlines) <= 2 * len(records) + 64 + 1


@settings(max_examples=150, deadline=None)
@given(operations, scopes, st.sampled_from(list(ConflictPolicy)))
def test_indexes_match_a_scan(ops: list[tuple[Any, ...]], probe: dict[str, Any],
                              conflicts: ConflictPolicy) -> None:
    table = MitigationTable(POLICY, conflict_policy=conflicts)
    probe_scope = Scope.from_json({k: v for k, v in probe.items()
                                   if k.startswith("target") and v})
    now = T0
    for op in ops:
        try:
            if op[0] == "put":
                table.put(op[1], op[2], None, request(op[3]), now)
            elif op[0] == "delete":
                table.delete(op[1], op[2], now)
            elif op[0] == "report":
                table.mitigator_report(op[1], op[2], op[3], now)
            elif op[0] == "time":
                now += op[1]
                expire(table, now)
            else:
                table.on_session_lost(op[1], now)
        except SignalError:
            pass  # refused requests (conflicts, bad overlaps) change nothing
        assert_indexes_agree(table, probe_scope)
    # Everything with a deadline ends once time passes it (the heap lost nothing).
    expire(table, now + 10 * 86400)
    assert all(m.deadline() is None for m in table)


def test_refresh_loop_keeps_the_heap_bounded() -> None:
    """A client refreshing one mitigation with ever different lifetimes leaves stale heap
    entries; they are compacted, not accumulated."""
    table = MitigationTable(POLICY)
    body = request({"target-prefix": ["10.1.2.3/32"], "lifetime": 3600})
    table.put("a", 1, None, body, T0)
    for i in range(5000):
        table.put("a", 1, None, request({"target-prefix": ["10.1.2.3/32"],
                                         "lifetime": 100 + i}), T0 + i * 0.001)
    assert len(table._deadlines) <= 2 * len(table) + 64
    assert table.get_timer() == table.lookup("a", 1).deadline()  # type: ignore[union-attr]


def test_candidates_of_nested_prefixes() -> None:
    index = TargetIndex()
    def scope(*prefixes: str, fqdn: tuple[str, ...] = ()) -> Scope:
        return Scope(target_prefix=prefixes, target_fqdn=fqdn)
    index.add(1, scope("10.0.0.0/8"))
    index.add(2, scope("10.1.2.0/24", "2001:db8::/32"))
    index.add(3, scope("10.1.2.3/32"))
    index.add(4, scope(fqdn=("WWW.example.com.",)))
    index.add(5, scope("0.0.0.0/0"))
    assert index.candidates(scope("10.1.2.0/25")) == {1, 2, 3, 5}
    assert index.candidates(scope("10.1.3.0/24")) == {1, 5}
    assert index.candidates(scope("11.0.0.0/8")) == {5}
    assert index.candidates(scope("2001:db8:5::/48")) == {2}
    assert index.candidates(scope(fqdn=("www.example.com",))) == {4}
    index.remove(2, scope("10.1.2.0/24", "2001:db8::/32"))
    assert index.candidates(scope("10.1.2.0/25")) == {1, 3, 5}
    assert index.candidates(scope("::/0")) == set()
