"""RFC 9132 §4.4 mitigation rules (dotsd.signal.mitigation), with the RFC's figures.

Every body the server side produces goes through :func:`ok`: YANG validation in the
server-to-client direction and a CBOR round trip.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.steps import counting_steps

from dotsd.coap.numbers import Code
from dotsd.model import yang
from dotsd.model.codec import from_cbor, to_cbor
from dotsd.signal.errors import BadRequest, Conflict, NotFound, SignalError
from dotsd.signal.lifecycle import (
    ACTIVE,
    TRANSITIONS,
    AttackStatus,
    ConflictCause,
    ConflictStatus,
    InvalidTransition,
    MitigationEvent,
    Status,
    transition,
)
from dotsd.signal.mitigation import (
    Change,
    ConflictPolicy,
    Ignored,
    MitigationPutOutcome,
    MitigationTable,
    Reason,
)
from dotsd.signal.policy import LAB, Policy, RequestLimits
from dotsd.signal.records import ConflictInfo, Counters, Mitigation
from dotsd.signal.scope import MITIGATION_MEMBER, PortRange, Scope, common_targets, parse_request
from dotsd.signal.uri import Content

REPO = Path(__file__).resolve().parent.parent
# The RFC figures are vendored under tests/spec (DOTS_EXAMPLES_DIR overrides).
EXAMPLES = Path(os.environ.get("DOTS_EXAMPLES_DIR", Path(__file__).parent / "spec" / "examples"))
needs_examples = pytest.mark.skipif(not EXAMPLES.is_dir(), reason="spec pack not present")

CUID = "dz6pHjaADkaFTbjr0JGBpw"
OTHER = "f30d281ce6b64fc5a0b91e"
CDID = "7eeaf349529eb55ed50113"
T0 = 1507818000.0


def expire(table: MitigationTable, now: float) -> list[Change]:
    """handle_timer, then every change next_event gives."""
    table.handle_timer(now)
    return list(iter(table.next_event, None))


def figure_json(name: str, part: str | None = None) -> dict[str, Any]:
    """The JSON body of an example figure (``part``: after that marker, e.g. "(2)")."""
    text = (EXAMPLES / name).read_text()
    if part is not None:
        text = text.split(part, 1)[1]
    start = text.index("{")
    decoder = json.JSONDecoder()
    value, _ = decoder.raw_decode(text[start:])
    assert isinstance(value, dict)
    return value


def ok(body: dict[str, Any]) -> dict[str, Any]:
    """A body we send: valid YANG (server to client) and CBOR-encodable."""
    yang.validate_response(body)
    assert from_cbor(to_cbor(body)) == body
    return body


def scope_body(**entry: Any) -> dict[str, Any]:
    entry.setdefault("lifetime", 3600)
    return {MITIGATION_MEMBER: {"scope": [{k.replace("_", "-"): v for k, v in entry.items()}]}}


def put(
    table: MitigationTable, mid: int, cuid: str = CUID, now: float = T0, **entry: Any
) -> MitigationPutOutcome:
    entry.setdefault("target_prefix", ["2001:db8:6401::1/128"])
    outcome = table.put(cuid, mid, None, scope_body(**entry), now)
    assert isinstance(outcome, MitigationPutOutcome)
    ok(outcome.body)
    return outcome


def the_entry(body: dict[str, Any]) -> dict[str, Any]:
    (entry,) = body[MITIGATION_MEMBER]["scope"]
    assert isinstance(entry, dict)
    return entry


# ---------------------------------------------------------------------------------------------
# RFC figures


@needs_examples
def test_fig7_put_answers_fig10() -> None:
    table = MitigationTable()
    body = figure_json("rfc9132-fig7.txt")
    outcome = table.put(CUID, 123, CDID, from_cbor(to_cbor(body)), T0)
    assert isinstance(outcome, MitigationPutOutcome)
    assert outcome.code == Code.CREATED
    assert ok(outcome.body) == figure_json("rfc9132-fig10.txt")  # §4.4.1.3 Figure 10
    (change,) = outcome.changes
    assert change.reason is Reason.CREATED and change.before is None
    m = table.lookup(CUID, 123)
    assert m is not None and m.cdid == CDID and m.status is Status.ATTACK_MITIGATION_IN_PROGRESS
    assert m.mitigation_start == T0 and m.is_active


@needs_examples
def test_fig16_efficacy_update() -> None:
    table = MitigationTable()
    table.put(CUID, 123, None, figure_json("rfc9132-fig7.txt"), T0)
    # Figure 16: no 'lifetime', 'attack-status', If-Match → refresh (2.04, §4.4.3).
    outcome = table.put(CUID, 123, None, figure_json("rfc9132-fig16.txt"), T0 + 1000, if_match=True)
    assert isinstance(outcome, MitigationPutOutcome)
    assert outcome.code == Code.CHANGED
    assert ok(outcome.body) == figure_json("rfc9132-fig10.txt")
    assert outcome.changes[0].reason is Reason.EFFICACY_UPDATE
    m = outcome.mitigation
    assert m.attack_status is AttackStatus.UNDER_ATTACK
    assert m.expires_at == T0 + 1000 + 3600  # treated as a refresh
    assert m.remaining_lifetime(T0 + 1000) == 3600


@needs_examples
def test_fig16_if_match_without_mitigation_is_ignored() -> None:
    table = MitigationTable()
    result = table.put(CUID, 123, None, figure_json("rfc9132-fig16.txt"), T0, if_match=True)
    assert isinstance(result, Ignored)
    assert len(table) == 0
    # The RFC's example: the DELETE overtook the efficacy update.
    table.put(CUID, 123, None, figure_json("rfc9132-fig7.txt"), T0)
    table.delete(CUID, 123, T0 + 1)
    result = table.put(CUID, 123, None, figure_json("rfc9132-fig16.txt"), T0 + 2, if_match=True)
    assert isinstance(result, Ignored)


@needs_examples
def test_fig11_cuid_collision() -> None:
    table = MitigationTable()
    table.put(CUID, 1, None, figure_json("rfc9132-fig7.txt"), T0, identity="client-a")
    with pytest.raises(Conflict) as info:
        table.put(CUID, 12, None, figure_json("rfc9132-fig7.txt"), T0, identity="client-b")
    assert info.value.code == Code.CONFLICT
    assert info.value.body is not None
    assert ok(info.value.body) == figure_json("rfc9132-fig11.txt", part="(2)")
    # (3): with a new 'cuid' the request goes through (the overlap with another client's
    # request is maintained with conflict information, default policy).
    outcome = table.put(OTHER, 12, None, figure_json("rfc9132-fig7.txt"), T0, identity="client-b")
    assert isinstance(outcome, MitigationPutOutcome) and outcome.code == Code.CREATED


@needs_examples
def test_fig14_get_all() -> None:
    """Two mitigations with the same prefixes but distinct protocols coexist (Figure 14)."""
    table = MitigationTable()
    fig14 = figure_json("rfc9132-fig14.txt")
    for entry in fig14[MITIGATION_MEMBER]["scope"]:
        request = {k: entry[k] for k in ("target-prefix", "target-protocol") if k in entry} | {
            "lifetime": 3600
        }
        start = float(entry["mitigation-start"])
        outcome = table.put(CUID, entry["mid"], None, {MITIGATION_MEMBER: {"scope": [request]}},
                            start)
        assert isinstance(outcome, MitigationPutOutcome) and outcome.code == Code.CREATED
    table.mitigator_report(
        CUID,
        12332,
        MitigationEvent.MITIGATING,
        T0,
        counters=Counters(134334555, 43344, 333334444, 432432),
    )
    table.mitigator_report(CUID, 12333, MitigationEvent.ATTACK_STOPPED, T0, counters=Counters())
    now = 1507818434.0 + 3600 - 1756
    body = ok(table.get(CUID, None, now).body)
    got = body[MITIGATION_MEMBER]["scope"]
    assert [e["mid"] for e in got] == [12332, 12333]
    assert got[0] == fig14[MITIGATION_MEMBER]["scope"][0]
    want = dict(fig14[MITIGATION_MEMBER]["scope"][1], lifetime=got[1]["lifetime"])
    assert got[1] == want
    # the same member order as Figure 14
    assert list(got[0]) == list(fig14[MITIGATION_MEMBER]["scope"][0])


# ---------------------------------------------------------------------------------------------
# Request validation (§4.4.1.1, §4.4.1.3)


@pytest.mark.parametrize(
    "body",
    [
        scope_body(target_prefix=["2001:db8::1/128"], lifetime=0),  # lifetime 0 → 4.00
        {MITIGATION_MEMBER: {"scope": []}},
        {MITIGATION_MEMBER: {}},
        {MITIGATION_MEMBER: {"scope": [{"target-prefix": ["2001:db8::1/128"],
                                        "lifetime": 60}] * 2}},
        scope_body(target_protocol=[6]),  # no target at all
        scope_body(target_prefix=["2001:db8::1/128"], status="attack-stopped"),
        scope_body(target_prefix=["2001:db8::1/128"], mid=123),  # 'mid' is in the URI
        scope_body(target_prefix=["2001:db8::1/128"], cuid=CUID),
        scope_body(target_prefix=["2001:db8::1/128"], alias_name=[""]),  # empty value
        scope_body(target_prefix=["2001:db8::1/128"], alias_name=[]),
        scope_body(
            target_prefix=["2001:db8::1/128"],
            target_port_range=[{"lower-port": 443, "upper-port": 80}],
        ),
        scope_body(target_prefix=["127.0.0.1/32"]),  # loopback: invalid
        scope_body(target_prefix=["ff02::1/128"]),  # multicast
        scope_body(target_prefix=["255.255.255.255/32"]),  # broadcast
        scope_body(target_prefix=["not-a-prefix"]),
        scope_body(target_prefix=["2001:db8::1/128"], lifetime=-2),
        {"ietf-dots-signal-channel:signal-config": {}},
        {},
    ],
)
def test_bad_requests(body: dict[str, Any]) -> None:
    with pytest.raises(SignalError) as info:
        MitigationTable().put(CUID, 1, None, body, T0)
    assert info.value.code == Code.BAD_REQUEST


def test_lifetime_is_mandatory_in_a_new_request() -> None:
    body = {MITIGATION_MEMBER: {"scope": [{"target-prefix": ["2001:db8::1/128"]}]}}
    parse_request(body)  # a valid body (a refresh may omit it) ...
    with pytest.raises(BadRequest, match="lifetime"):
        MitigationTable().put(CUID, 1, None, body, T0)  # ... but not a new request


@pytest.mark.parametrize(
    ("requested", "policy", "granted"),
    [
        (3600, LAB, 3600),
        (10**6, LAB, LAB.max_lifetime),  # shortened, granted value returned (§4.4.1.1)
        (-1, LAB, LAB.max_lifetime),  # indefinite refused by policy
        (-1, Policy(allow_indefinite=True), -1),
        (100, Policy(max_lifetime=50), 50),
    ],
)
def test_granted_lifetime(requested: int, policy: Policy, granted: int) -> None:
    table = MitigationTable(policy)
    outcome = put(table, 1, lifetime=requested)
    assert the_entry(outcome.body)["lifetime"] == granted
    m = outcome.mitigation
    assert m.lifetime == granted
    assert m.expires_at == (None if granted == -1 else T0 + granted)
    assert m.remaining_lifetime(T0 + 10) == (-1 if granted == -1 else granted - 10)


@pytest.mark.parametrize(
    "entry",
    [
        {"target_prefix": ["10.0.0.0/8"]},  # outside the lab documentation prefixes
        {"target_prefix": ["2001:db9::/32"]},
        {"target_prefix": ["2001:db8::/31"]},  # wider than 2001:db8::/32
        {"target_prefix": None, "target_fqdn": ["www.ietf.org"]},
        {"target_prefix": None, "target_uri": ["https://www.ietf.org/"]},
        {"target_prefix": None, "target_uri": ["https://10.1.1.1/"]},
    ],
)
def test_targets_outside_client_domain(entry: dict[str, Any]) -> None:
    # RFC 9132 §4.4.1.1 / §10: 4.00 (see dotsd.signal.policy for the reading).
    entry = {k: v for k, v in entry.items() if v is not None}
    body = scope_body(**entry)
    with pytest.raises(BadRequest, match="outside"):
        MitigationTable().put(CUID, 1, None, body, T0)


@pytest.mark.parametrize(
    "entry",
    [
        {"target_prefix": ["192.0.2.0/24", "198.51.100.7/32", "203.0.113.0/25"]},
        {"target_fqdn": ["www.example.com"]},
        {"target_uri": ["https://www.example.net:8443/x"]},
        {"target_uri": ["http://[2001:db8::1]/"]},
        {"alias_name": ["https1"]},
    ],
)
def test_lab_targets_accepted(entry: dict[str, Any]) -> None:
    table = MitigationTable()
    assert table.put(CUID, 1, None, scope_body(**entry), T0) is not None


def test_alias_check() -> None:
    # RFC 9132 §4.4.1.3: aliases not created by the client → 4.00.
    table = MitigationTable(alias_check=lambda cuid, cdid, name: name == "mine")
    assert isinstance(table.put(CUID, 1, None, scope_body(alias_name=["mine"]), T0),
                      MitigationPutOutcome)
    with pytest.raises(BadRequest, match="alias"):
        table.put(CUID, 2, None, scope_body(alias_name=["theirs"]), T0)


# ---------------------------------------------------------------------------------------------
# Refresh (§4.4.1.3 last paragraph)


def test_refresh_same_mid() -> None:
    table = MitigationTable()
    put(table, 5, lifetime=600)
    outcome = put(table, 5, now=T0 + 500, lifetime=1200)
    assert outcome.code == Code.CHANGED
    assert the_entry(outcome.body) == {"mid": 5, "lifetime": 1200}
    assert outcome.changes[0].reason is Reason.REFRESHED
    assert outcome.mitigation.expires_at == T0 + 500 + 1200
    assert outcome.mitigation.created_at == T0  # still the same request
    assert outcome.mitigation.mitigation_start == T0


def test_refresh_must_repeat_the_request() -> None:
    table = MitigationTable()
    put(table, 5, target_protocol=[6])
    for changed in (
        {"target_protocol": [17]},
        {"target_protocol": [6], "target_prefix": ["2001:db8:6401::2/128"]},
        {"target_protocol": [6], "trigger_mitigation": False},
    ):
        with pytest.raises(BadRequest):
            put(table, 5, **changed)
    # The same request with its leaf-lists in another order is the same request.
    put(table, 6, target_prefix=["2001:db8::a/128", "2001:db8::b/128"], target_protocol=[6, 17])
    again = put(
        table, 6, target_prefix=["2001:db8::b/128", "2001:db8::a/128"], target_protocol=[17, 6]
    )
    assert again.code == Code.CHANGED


# ---------------------------------------------------------------------------------------------
# 'mid' ordering and overlap, same client (§4.4.1.3)


def test_higher_mid_overrides_lower() -> None:
    table = MitigationTable()
    put(table, 10, target_prefix=["2001:db8:6401::/64"])
    put(table, 11, target_prefix=["2001:db8:7000::/64"])  # no overlap
    outcome = put(table, 20, target_prefix=["2001:db8:6401::1/128"])
    assert outcome.code == Code.CREATED
    removed = [c for c in outcome.changes if c.removed]
    assert [c.key for c in removed] == [(CUID, 10)]
    assert removed[0].reason is Reason.OVERRIDDEN
    assert removed[0].mitigation.status is Status.ATTACK_MITIGATION_TERMINATED
    assert table.lookup(CUID, 10) is None  # "no longer available"
    assert table.lookup(CUID, 11) is not None
    with pytest.raises(NotFound):
        table.get(CUID, 10, T0)


def test_lower_mid_overlapping_higher_is_rejected() -> None:
    table = MitigationTable()
    put(table, 20, target_prefix=["2001:db8:6401::/64"], target_port_range=[{"lower-port": 80}])
    with pytest.raises(Conflict) as info:
        put(table, 10, target_prefix=["2001:db8:6401::1/128"])
    assert info.value.body is not None
    entry = the_entry(ok(info.value.body))
    assert entry == {
        "conflict-information": {
            "conflict-cause": "overlapping-targets",
            "conflict-scope": {
                "target-prefix": ["2001:db8:6401::1/128"],
                "target-port-range": [{"lower-port": 80}],
                "mid": 20,
            },
        }
    }
    assert table.lookup(CUID, 10) is None and table.lookup(CUID, 20) is not None
    put(table, 10, target_prefix=["2001:db8:9999::/48"])  # no overlap: fine


def test_overlap_needs_common_ports_and_protocols() -> None:
    table = MitigationTable()
    put(table, 20, target_port_range=[{"lower-port": 80, "upper-port": 90}], target_protocol=[6])
    put(table, 10, target_port_range=[{"lower-port": 91}], target_protocol=[6])
    put(table, 11, target_port_range=[{"lower-port": 80}], target_protocol=[17])
    assert len(table) == 3
    strict = MitigationTable(match_ports_protocols=False)  # the plain §4.4.1.3 wording
    put(strict, 20, target_protocol=[6])
    with pytest.raises(Conflict):
        put(strict, 10, target_protocol=[17])


def test_mid_rollover() -> None:
    # RFC 9132 §4.4.1.1: after 3/4 of 2^32 - 1 the client restarts at 0.
    table = MitigationTable()
    put(table, 3221225471)
    outcome = put(table, 0)
    assert [c.key for c in outcome.changes if c.removed] == [(CUID, 3221225471)]


def test_common_targets() -> None:
    a = Scope(target_prefix=("192.0.2.0/24",), target_fqdn=("WWW.example.com.",))
    b = Scope(target_prefix=("192.0.2.128/25", "2001:db8::/32"), target_fqdn=("www.example.com",))
    common = common_targets(a, b)
    assert common is not None
    assert common.target_prefix == ("192.0.2.128/25",)
    assert common.target_fqdn == ("WWW.example.com.",)
    assert common_targets(a, Scope(target_prefix=("198.51.100.0/24",))) is None
    p = Scope(target_prefix=("2001:db8::/32",), target_port_range=())
    q = Scope(
        target_prefix=("2001:db8::1/128",),
        target_port_range=(),
        target_protocol=(6,),
    )
    c = common_targets(p, q)
    assert c is not None and c.target_protocol == (6,) and c.target_port_range == ()


# ---------------------------------------------------------------------------------------------
# Other clients (§4.4.1.3)


def test_conflict_accepted_with_information() -> None:
    table = MitigationTable(conflict_policy=ConflictPolicy.ACCEPT)
    put(table, 1, cuid=OTHER)
    outcome = put(table, 1, now=T0 + 10)
    assert outcome.code == Code.CREATED
    info = the_entry(outcome.body)["conflict-information"]
    assert info["conflict-status"] == "request-active"
    assert info["conflict-cause"] == "overlapping-targets"
    assert info["conflict-scope"] == {"target-prefix": ["2001:db8:6401::1/128"]}
    notified = [c for c in outcome.changes if c.reason is Reason.CONFLICT]
    assert [c.key for c in notified] == [(OTHER, 1)]
    ok(table.status_body(notified[0].mitigation, T0 + 10))
    ok(table.get(CUID, 1, T0 + 10).body)


def test_conflict_rejected_with_retry_timer() -> None:
    table = MitigationTable(conflict_policy=ConflictPolicy.REJECT)
    put(table, 1, cuid=OTHER, lifetime=1000)
    with pytest.raises(Conflict) as info:
        put(table, 1, now=T0 + 400)
    assert info.value.body is not None
    conflict = the_entry(ok(info.value.body))["conflict-information"]
    assert conflict["conflict-status"] == "request-inactive-other-active"
    assert conflict["retry-timer"] == 600  # remaining lifetime of the active request
    assert table.lookup(CUID, 1) is None
    put(table, 2, target_prefix=["192.0.2.1/32"])  # not overlapping: accepted


def test_preconfigured_do_not_conflict_across_clients() -> None:
    table = MitigationTable(conflict_policy=ConflictPolicy.REJECT)
    put(table, 1, cuid=OTHER, trigger_mitigation=False)
    assert put(table, 1).code == Code.CREATED


# ---------------------------------------------------------------------------------------------
# Preconfigured requests and signal loss (§4.4.1.1 trigger-mitigation, §4.4.1.3, Table 3)


def test_preconfigured_lifecycle() -> None:
    table = MitigationTable()
    pre = put(table, 1, target_prefix=["2001:db8:6401::/48"], trigger_mitigation=False)
    assert pre.mitigation.status is Status.ATTACK_MITIGATION_SIGNAL_LOSS
    assert not pre.mitigation.is_active
    entry = the_entry(ok(table.get(CUID, 1, T0).body))
    assert "mitigation-start" not in entry  # §4.4.2: not returned for status 8
    assert entry["trigger-mitigation"] is False
    imm = put(table, 2)  # overlapping immediate request while 1 is inactive: nothing to do
    assert [c.key for c in imm.changes] == [(CUID, 2)]
    unrelated = put(table, 3, target_prefix=["192.0.2.0/24"])

    changes = table.on_session_lost(CUID, T0 + 100)
    by_key = {c.key: c for c in changes}
    assert by_key[(CUID, 1)].reason is Reason.TRIGGERED
    triggered = by_key[(CUID, 1)].mitigation
    assert triggered.status is Status.ATTACK_MITIGATION_IN_PROGRESS
    assert triggered.mitigation_start == T0 + 100
    # Overlapping active immediate request withdrawn by the server, no ABT period.
    assert by_key[(CUID, 2)].mitigation.status is Status.ATTACK_MITIGATION_WITHDRAWN
    assert by_key[(CUID, 2)].mitigation.terminating_until is None
    assert (CUID, 3) not in by_key
    assert table.lookup(*unrelated.mitigation.key) == unrelated.mitigation
    ok(table.get(CUID, None, T0 + 100).body)

    # Back online, a new immediate request overlapping the active preconfigured one: the
    # latter is withdrawn (7) and, after four notifications, back to 8.
    outcome = put(table, 4, now=T0 + 200)
    (pre_change,) = [c for c in outcome.changes if c.key == (CUID, 1)]
    assert pre_change.reason is Reason.PREEMPTED
    assert pre_change.mitigation.status is Status.ATTACK_MITIGATION_WITHDRAWN
    for _ in range(3):
        assert table.on_notified(CUID, 1, T0 + 201) == []
    (rearm,) = table.on_notified(CUID, 1, T0 + 202)
    assert rearm.reason is Reason.REARMED
    assert rearm.mitigation.status is Status.ATTACK_MITIGATION_SIGNAL_LOSS
    assert rearm.mitigation.mitigation_start is None
    ok(table.status_body(rearm.mitigation, T0 + 202))


def test_preconfigured_attack_stopped_goes_back_to_8() -> None:
    table = MitigationTable()
    put(table, 1, trigger_mitigation=False)
    table.on_session_lost(CUID, T0)
    table.mitigator_report(CUID, 1, MitigationEvent.ATTACK_STOPPED, T0 + 1)
    changes = [table.on_notified(CUID, 1, T0 + 2 + i) for i in range(4)]
    assert changes[:3] == [[], [], []]
    assert changes[3][0].mitigation.status is Status.ATTACK_MITIGATION_SIGNAL_LOSS
    # An immediate request in status 3 keeps it "till the mitigation is withdrawn".
    put(table, 2, target_prefix=["192.0.2.1/32"])
    table.mitigator_report(CUID, 2, MitigationEvent.ATTACK_STOPPED, T0)
    for i in range(10):
        assert table.on_notified(CUID, 2, T0 + i) == []
    assert table.lookup(CUID, 2).status is Status.ATTACK_STOPPED  # type: ignore[union-attr]


def test_session_recovery_is_not_a_trigger_to_stop() -> None:
    table = MitigationTable()
    put(table, 1, trigger_mitigation=False)
    table.on_session_lost(CUID, T0)
    assert table.on_session_lost(CUID, T0 + 5) == []  # nothing more to trigger
    assert table.lookup(CUID, 1).is_active  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------------
# DELETE and active-but-terminating (§4.4.4), expiry (§4.4.1.1)


def test_delete_active_but_terminating() -> None:
    table = MitigationTable()
    put(table, 7)
    out = table.delete(CUID, 7, T0 + 10)
    assert out.code == Code.DELETED
    (change,) = out.changes
    assert change.reason is Reason.WITHDRAWN_BY_CLIENT and not change.removed
    m = change.mitigation
    assert m.status is Status.DOTS_CLIENT_WITHDRAWN_MITIGATION and m.is_active
    assert m.terminating_until == T0 + 10 + 120  # default 120 s
    entry = the_entry(ok(table.get(CUID, 7, T0 + 20).body))
    assert entry["status"] == "dots-client-withdrawn-mitigation"
    assert entry["lifetime"] == 110
    assert table.delete(CUID, 7, T0 + 30).changes == ()  # repeated DELETE: still 2.02
    assert table.get_timer() == T0 + 130
    assert expire(table, T0 + 129) == []
    (gone,) = expire(table, T0 + 130)
    assert gone.removed and gone.reason is Reason.TERMINATED
    assert gone.mitigation.status is Status.ATTACK_MITIGATION_TERMINATED
    assert len(table) == 0 and table.get_timer() is None


def test_delete_unknown_is_still_deleted() -> None:
    out = MitigationTable().delete(CUID, 99, T0)
    assert out.code == Code.DELETED and out.changes == ()


def test_delete_inactive_is_immediate() -> None:
    table = MitigationTable()
    put(table, 1, trigger_mitigation=False)
    (change,) = table.delete(CUID, 1, T0).changes
    assert change.removed and change.mitigation.status is Status.ATTACK_MITIGATION_TERMINATED


def test_requested_again_doubles_active_but_terminating() -> None:
    table = MitigationTable()
    put(table, 1)
    table.delete(CUID, 1, T0 + 1)
    again = put(table, 1, now=T0 + 2)  # same 'mid' within the period: a new request
    assert again.code == Code.CREATED
    assert again.changes[-1].before is Status.DOTS_CLIENT_WITHDRAWN_MITIGATION
    assert again.mitigation.abt_period == 240
    table.delete(CUID, 1, T0 + 3)
    put(table, 2, now=T0 + 4)  # new 'mid', overlapping: same rule
    assert table.lookup(CUID, 2).abt_period == 300  # type: ignore[union-attr]  # capped


def test_lifetime_expiry() -> None:
    table = MitigationTable()
    put(table, 1, lifetime=60)
    put(table, 2, lifetime=120, target_prefix=["192.0.2.1/32"])
    assert table.get_timer() == T0 + 60
    assert not table.lookup(CUID, 1).expired(T0 + 59)  # type: ignore[union-attr]
    (change,) = expire(table, T0 + 60)
    assert change.key == (CUID, 1) and change.reason is Reason.EXPIRED and change.removed
    assert [m.mid for m in table] == [2]


def test_get_not_found() -> None:
    table = MitigationTable()
    with pytest.raises(NotFound):
        table.get(CUID, None, T0)  # no mitigation at all (§4.4.2)
    put(table, 1)
    with pytest.raises(NotFound):
        table.get(CUID, 2, T0)
    body = scope_body(target_prefix=["192.0.2.1/32"])
    table.put(OTHER, 5, None, body, T0, identity="owner")
    assert table.get(OTHER, 5, T0, identity="owner").mitigations[0].mid == 5
    # RFC 9132 §4.1: "A DOTS client is entitled to access only the resources it creates."
    with pytest.raises(NotFound):
        table.get(OTHER, 5, T0, identity="someone-else")
    with pytest.raises(NotFound):
        table.get(OTHER, None, T0, identity="someone-else")
    assert table.delete(OTHER, 5, T0, identity="someone-else").changes == ()
    assert table.lookup(OTHER, 5) is not None


def test_get_content_filter() -> None:
    table = MitigationTable()
    put(table, 1, target_protocol=[6])
    config = the_entry(ok(table.get(CUID, 1, T0, content=Content.CONFIG).body))
    assert set(config) == {"mid", "target-prefix", "target-protocol", "lifetime"}
    state = the_entry(ok(table.get(CUID, 1, T0, content=Content.NON_CONFIG).body))
    assert set(state) == {"mid", "mitigation-start", "status"}


# ---------------------------------------------------------------------------------------------
# Mitigator feedback and conflict reports


def test_mitigator_reports() -> None:
    table = MitigationTable()
    put(table, 1)
    (c,) = table.mitigator_report(CUID, 1, MitigationEvent.MITIGATING, T0)
    assert c.before is Status.ATTACK_MITIGATION_IN_PROGRESS
    assert c.mitigation.status is Status.ATTACK_SUCCESSFULLY_MITIGATED
    (c,) = table.mitigator_report(CUID, 1, MitigationEvent.EXCEEDED, T0)
    assert c.mitigation.status is Status.ATTACK_EXCEEDED_CAPABILITY
    # stale: MITIGATING again is fine (4 → 2); ATTACK_RESUMED from 2 is not a transition
    table.mitigator_report(CUID, 1, MitigationEvent.MITIGATING, T0)
    assert table.mitigator_report(CUID, 1, MitigationEvent.ATTACK_RESUMED, T0) == []
    (c,) = table.mitigator_report(CUID, 1, MitigationEvent.ATTACK_RESUMED, T0,
                                  counters=Counters(1, 2, 3, 4))
    assert c.mitigation.counters == Counters(1, 2, 3, 4)
    assert table.mitigator_report(CUID, 99, MitigationEvent.MITIGATING, T0) == []
    with pytest.raises(ValueError):
        table.mitigator_report(CUID, 1, MitigationEvent.SIGNAL_LOSS, T0)


def test_report_conflict_with_acceptlist() -> None:
    table = MitigationTable()
    put(table, 1)
    info = ConflictInfo(
        ConflictCause.CONFLICT_WITH_ACCEPTLIST,
        status=ConflictStatus.REQUEST_INACTIVE_OTHER_ACTIVE,
        acl_names=("accept-all-from-partner",),
    )
    (c,) = table.report_conflict(CUID, 1, info, T0)
    assert c.mitigation.status is Status.ATTACK_MITIGATION_WITHDRAWN
    entry = the_entry(ok(table.status_body(c.mitigation, T0)))
    assert entry["conflict-information"] == {
        "conflict-status": "request-inactive-other-active",
        "conflict-cause": "conflict-with-acceptlist",
        "conflict-scope": {"acl-list": [{"acl-name": "accept-all-from-partner"}]},
    }


@pytest.mark.parametrize(
    "cause", [ConflictCause.REQUEST_REJECTED_LEGITIMATE_TRAFFIC, ConflictCause.OVERLAPPING_PIPES]
)
def test_later_conflict_causes(cause: ConflictCause) -> None:
    table = MitigationTable()
    put(table, 1)
    (c,) = table.report_conflict(CUID, 1, ConflictInfo(cause), T0)
    assert c.mitigation.status is Status.ATTACK_MITIGATION_IN_PROGRESS
    ok(table.status_body(c.mitigation, T0))


# ---------------------------------------------------------------------------------------------
# Lifecycle table and persistence


def test_transition_table_shape() -> None:
    assert set(TRANSITIONS) == set(Status)
    assert TRANSITIONS[Status.ATTACK_MITIGATION_TERMINATED] == {}
    for status, moves in TRANSITIONS.items():
        if status is not Status.ATTACK_MITIGATION_TERMINATED:
            assert moves[MitigationEvent.LIFETIME_EXPIRED] is Status.ATTACK_MITIGATION_TERMINATED
    # Signal loss triggers only preconfigured requests; rearm only from 3 and 7 (Table 3).
    assert [s for s in Status if MitigationEvent.SIGNAL_LOSS in TRANSITIONS[s]] == [
        Status.ATTACK_MITIGATION_SIGNAL_LOSS
    ]
    assert {s for s in Status if MitigationEvent.REARM in TRANSITIONS[s]} == {
        Status.ATTACK_STOPPED,
        Status.ATTACK_MITIGATION_WITHDRAWN,
    }
    # A client withdrawal of an active mitigation is always active-but-terminating (§4.4.4).
    for s in ACTIVE:
        assert (transition(s, MitigationEvent.CLIENT_WITHDRAW)
                is Status.DOTS_CLIENT_WITHDRAWN_MITIGATION)
    with pytest.raises(InvalidTransition):
        transition(Status.DOTS_CLIENT_WITHDRAWN_MITIGATION, MitigationEvent.MITIGATING)
    with pytest.raises(InvalidTransition):
        transition(Status.ATTACK_MITIGATION_TERMINATED, MitigationEvent.CLIENT_WITHDRAW)


def test_labels_match_registry() -> None:
    assert [s.label for s in Status] == [
        "attack-mitigation-in-progress",
        "attack-successfully-mitigated",
        "attack-stopped",
        "attack-exceeded-capability",
        "dots-client-withdrawn-mitigation",
        "attack-mitigation-terminated",
        "attack-mitigation-withdrawn",
        "attack-mitigation-signal-loss",
    ]
    assert [int(s) for s in Status] == list(range(1, 9))
    assert ConflictCause.from_label("cuid-collision") is ConflictCause.CUID_COLLISION


def test_serialization_roundtrip() -> None:
    table = MitigationTable(conflict_policy=ConflictPolicy.ACCEPT)
    put(table, 1, cuid=OTHER, target_port_range=[{"lower-port": 1024, "upper-port": 2048}])
    put(table, 2, trigger_mitigation=False, target_prefix=["192.0.2.0/24"])
    put(table, 3)
    table.mitigator_report(CUID, 3, MitigationEvent.MITIGATING, T0, counters=Counters(5, 6, 7, 8))
    table.put(
        CUID,
        3,
        None,
        scope_body(target_prefix=["2001:db8:6401::1/128"], attack_status="under-attack"),
        T0 + 5,
    )
    table.delete(OTHER, 1, T0 + 6)
    data = table.to_dict()
    assert json.loads(json.dumps(data)) == data  # plain data for the store
    again = MitigationTable.from_dict(copy.deepcopy(data))
    assert list(again) == list(table)
    for m in table:
        assert Mitigation.from_dict(m.to_dict()) == m
    assert ok(again.get(CUID, None, T0 + 7).body) == table.get(CUID, None, T0 + 7).body


def test_conflict_resolved_when_the_other_request_ends() -> None:
    table = MitigationTable(conflict_policy=ConflictPolicy.ACCEPT)
    put(table, 1, cuid=OTHER, lifetime=100)
    put(table, 1, lifetime=1000)
    assert table.lookup(CUID, 1).conflict is not None  # type: ignore[union-attr]
    changes = expire(table, T0 + 100)
    reasons = {c.key: c.reason for c in changes}
    assert reasons == {(OTHER, 1): Reason.EXPIRED, (CUID, 1): Reason.CONFLICT_RESOLVED}
    m = table.lookup(CUID, 1)
    assert m is not None and m.conflict is None
    assert "conflict-information" not in the_entry(ok(table.get(CUID, 1, T0 + 100).body))


def test_capacity_per_client() -> None:
    # RFC 9132 §4.4.1.3: the server MAY reject requests to rate-limit a client → 5.03.
    table = MitigationTable(Policy(max_mitigations_per_client=2, retry_after=30))
    put(table, 1, target_prefix=["192.0.2.1/32"])
    put(table, 2, target_prefix=["192.0.2.2/32"])
    with pytest.raises(SignalError) as info:
        put(table, 3, target_prefix=["192.0.2.3/32"])
    assert info.value.code == Code.SERVICE_UNAVAILABLE and info.value.max_age == 30
    assert put(table, 2, target_prefix=["192.0.2.2/32"]).code == Code.CHANGED  # refresh ok
    put(table, 1, cuid=OTHER, target_prefix=["192.0.2.9/32"])  # another client: ok


_PREFIXES = st.sampled_from(
    [
        "192.0.2.0/24",
        "192.0.2.0/25",
        "192.0.2.128/25",
        "192.0.2.7/32",
        "2001:db8::/32",
        "2001:db8:1::/48",
        "198.51.100.0/24",
    ]
)
_SCOPES = st.builds(
    Scope,
    target_prefix=st.lists(_PREFIXES, min_size=1, max_size=3, unique=True).map(tuple),
    target_port_range=st.lists(
        st.tuples(st.integers(0, 100), st.integers(0, 20)).map(
            lambda t: PortRange(t[0], t[0] + t[1] if t[1] else None)
        ),
        max_size=2,
    ).map(tuple),
    target_protocol=st.lists(st.sampled_from([1, 6, 17]), max_size=2, unique=True).map(tuple),
)


@given(_SCOPES, _SCOPES)
def test_overlap_is_symmetric(a: Scope, b: Scope) -> None:
    ab, ba = common_targets(a, b), common_targets(b, a)
    assert (ab is None) == (ba is None)
    if ab is not None and ba is not None:
        assert set(ab.target_prefix) == set(ba.target_prefix)
        assert set(ab.target_protocol) == set(ba.target_protocol)
        assert ab.target_port_range == ba.target_port_range
        # The common part overlaps both sides.
        assert common_targets(ab, a) is not None and common_targets(ab, b) is not None
    assert common_targets(a, a) is not None


# The overlap by definition (RFC 9132 §4.4.1.3 "a common IP address, IP prefix"): every
# pair compared; the more specific prefix of each overlapping pair, in pair order, once.
def _pairwise_common(a: Scope, b: Scope) -> list[str]:
    common: list[str] = []
    for x in a.networks:
        for y in b.networks:
            if x.version == y.version and (x.subnet_of(y) or y.subnet_of(x)):  # type: ignore[arg-type]
                smaller = str(x if x.prefixlen >= y.prefixlen else y)
                if smaller not in common:
                    common.append(smaller)
    return common


_NESTED = st.one_of(
    st.builds(lambda n, length: f"{ipaddress.ip_network((n, length), strict=False)}",
              st.integers(0xC0000200, 0xC00002FF), st.integers(20, 32)),
    st.builds(lambda n, length: f"{ipaddress.ip_network((n, length), strict=False)}",
              st.integers(0x20010DB8 << 96, (0x20010DB8 << 96) + 0xFFFF), st.integers(100, 128)),
    st.sampled_from(["0.0.0.0/0", "::/0", "192.0.0.0/8", "2001:db8::/32"]),
)


@given(st.lists(_NESTED, max_size=12, unique=True), st.lists(_NESTED, max_size=12, unique=True))
def test_common_prefixes_as_defined(a: list[str], b: list[str]) -> None:
    sa, sb = Scope(target_prefix=tuple(a)), Scope(target_prefix=tuple(b))
    expected = _pairwise_common(sa, sb)
    common = common_targets(sa, sb)
    assert (common.target_prefix if common is not None else ()) == tuple(expected)


def test_overlap_of_large_scopes_is_fast() -> None:
    """Thousands of prefixes on both sides (a client listing the hosts under attack): the
    overlap is found without comparing every pair, so one request cannot stall the server."""
    a = Scope(target_prefix=(*(f"2001:db8:1::{i:x}/128" for i in range(6000)),
                             "2001:db8:2::/48"))
    b = Scope(target_prefix=tuple(f"2001:db8:1::{i:x}/128" for i in range(3000, 9000))
              + tuple(f"2001:db8:2:{i:x}::/64" for i in range(100)))
    prefixes = len(a.target_prefix) + len(b.target_prefix)
    # Linear work: about 30 steps per prefix (50 when none was parsed before, the parsing
    # included); comparing every pair (36 million of them) would take 6,000 and more.
    with counting_steps(budget=100 * prefixes):
        common = common_targets(a, b)
    assert common is not None and len(common.target_prefix) == 3000 + 100
    assert common.target_prefix[0] == "2001:db8:1::bb8/128"


def test_new_requests_stay_cheap_next_to_a_large_scope() -> None:
    """Every new request is compared with the stored ones (RFC 9132 §4.4.1.3); a stored
    request with thousands of prefixes must not make each of those comparisons slow."""

    def ten_requests_next_to(stored: list[str], net: int) -> int:
        """The steps ten new requests take in a table already holding ``stored``."""
        table = MitigationTable(request_limits=RequestLimits(target_prefix=10_000))
        table.put(CUID, 1, None, scope_body(target_prefix=stored), T0)
        # About 2,000 steps a request; going through the stored prefixes again for each
        # (parsing or comparing them) would take 150,000 and more.
        with counting_steps(budget=10 * 20_000) as steps:
            for mid in range(2, 12):
                table.put(CUID, mid, None,
                          scope_body(target_prefix=[f"2001:db8:{net}:{mid:x}::/64"]), T0)
        assert len(table) == 11
        return steps.count

    small = ten_requests_next_to(["2001:db8:1::1/128"], 3)
    large = ten_requests_next_to([f"2001:db8:1::{i:x}/128" for i in range(9000)], 2)
    assert large <= 2 * small, (large, small)  # as cheap as next to a one-prefix request


# The common ports by definition: every pair of ranges intersected, the pieces merged (absent
# on one side = every port); None when neither side names ports.
def _pairwise_ports(a: Scope, b: Scope) -> tuple[tuple[int, int], ...] | None:
    if not a.target_port_range and not b.target_port_range:
        return None
    every = [PortRange(0, 65535)]
    pieces = sorted((max(x.lower, y.lower), min(x.high, y.high))
                    for x in a.target_port_range or every
                    for y in b.target_port_range or every
                    if max(x.lower, y.lower) <= min(x.high, y.high))
    merged: list[tuple[int, int]] = []
    for low, high in pieces:
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return tuple(merged)


_RANGES = st.lists(
    st.one_of(st.tuples(st.integers(0, 60), st.integers(0, 12)),
              st.tuples(st.sampled_from([0, 65535, 65530]), st.integers(0, 65535))).map(
        lambda t: PortRange(t[0], min(t[0] + t[1], 65535) if t[1] else None)),
    max_size=10,
).map(tuple)


@given(_RANGES, _RANGES)
def test_common_ports_as_defined(a: tuple[PortRange, ...], b: tuple[PortRange, ...]) -> None:
    sa = Scope(target_prefix=("2001:db8::/32",), target_port_range=a)
    sb = Scope(target_prefix=("2001:db8::/32",), target_port_range=b)
    expected = _pairwise_ports(sa, sb)
    common = common_targets(sa, sb)
    if expected == ():
        assert common is None  # disjoint ports: no overlap (scope.py module docstring)
        return
    assert common is not None
    got = tuple((r.lower, r.high) for r in common.target_port_range)
    assert got == (expected or ())


def test_overlap_of_many_port_ranges_is_near_linear() -> None:
    """Thousands of port ranges, protocols, URIs and aliases on both sides: intersected by
    sorting and sweeping, not pair by pair (2,500 ranges took 3 s a request, issue 13)."""
    n = 5000
    a = Scope(target_prefix=("2001:db8::/32",),
              target_port_range=tuple(PortRange(2 * i) for i in range(n)),
              target_uri=tuple(f"https://h{i}.example.com/" for i in range(n)),
              alias_name=tuple(f"a{i}" for i in range(n)))
    b = Scope(target_prefix=("2001:db8::/32",),
              target_port_range=tuple(PortRange(2 * i, 2 * i + 1) for i in range(n // 2, n)),
              target_uri=a.target_uri[::-1], alias_name=a.alias_name[::-1])
    # About 20 steps an entry; pair by pair, 25 million for the ranges alone.
    with counting_steps(budget=40 * 4 * n):
        common = common_targets(a, b)
    assert common is not None and len(common.target_port_range) == n // 2
    assert common.target_port_range[0] == PortRange(n)
    assert common.target_uri == a.target_uri and common.alias_name == a.alias_name
