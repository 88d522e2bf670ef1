"""The size of one mitigation request (RFC 9132 §4.4.1.1, §4.4.1.3; issue 13): the operator's
limits per list attribute, refused with 4.00 before any costly work, and the client-domain
check that stays cheap for large domains."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.steps import counting_steps

from dotsd.coap.message import Message
from dotsd.coap.numbers import Code, ContentFormat, OptionNumber
from dotsd.link import make_peer_info
from dotsd.model.codec import to_cbor
from dotsd.signal.errors import BadRequest, SignalError
from dotsd.signal.identity import cuid_from_psk_identity
from dotsd.signal.mitigation import MitigationTable
from dotsd.signal.policy import (
    DEFAULT_REQUEST_LIMITS,
    IPNetwork,
    Policy,
    PolicySet,
    RequestLimits,
)
from dotsd.signal.scope import MITIGATION_MEMBER, parse_request
from dotsd.signal.server_core import Request, ServerCore
from dotsd.signal.uri import mitigate_path

WALL = 1_700_000_000.0
PSK = b"cpe-1"
CUID = cuid_from_psk_identity(PSK)


def body(**entry: Any) -> dict[str, Any]:
    entry.setdefault("lifetime", 3600)
    entry.setdefault("target-prefix", ["2001:db8:6401::1/128"])
    return {MITIGATION_MEMBER: {"scope": [entry]}}


def entries(attribute: str, n: int) -> list[Any]:
    """``n`` distinct valid entries of ``attribute`` (within the lab domain)."""
    if attribute == "target-prefix":
        return [f"2001:db8:6401::{i:x}/128" for i in range(n)]
    if attribute == "target-port-range":
        return [{"lower-port": i} for i in range(n)]
    if attribute == "target-protocol":
        return list(range(n))
    if attribute == "target-fqdn":
        return [f"h{i}.example.com" for i in range(n)]
    if attribute == "target-uri":
        return [f"https://h{i}.example.com/" for i in range(n)]
    assert attribute == "alias-name"
    return [f"alias-{i}" for i in range(n)]


ATTRIBUTES = [name for name, _ in DEFAULT_REQUEST_LIMITS.items()]
SMALL = RequestLimits(**{field: 3 for field in ("target_prefix", "target_port_range",
                                               "target_protocol", "target_fqdn",
                                               "target_uri", "alias_name")})


@pytest.mark.parametrize("attribute", ATTRIBUTES)
def test_a_list_over_its_limit_is_4_00_naming_it(attribute: str) -> None:
    parse_request(body(**{attribute: entries(attribute, 3)}), SMALL)  # at the limit: fine
    with pytest.raises(BadRequest) as info:
        parse_request(body(**{attribute: entries(attribute, 4)}), SMALL)
    assert info.value.code == Code.BAD_REQUEST
    message = str(info.value)
    assert f"4 '{attribute}' entries" in message and "at most 3" in message
    assert "RFC 9132 §4.4.1.3" in message


def test_the_defaults_fit_real_use_with_room() -> None:
    limits = RequestLimits()
    assert limits == DEFAULT_REQUEST_LIMITS
    assert dict(limits.items()) == {"target-prefix": 1024, "target-port-range": 1024,
                                    "target-protocol": 256, "target-fqdn": 64,
                                    "target-uri": 64, "alias-name": 64}
    # Every protocol number (uint8) fits; one more than the limit does not.
    parse_request(body(**{"target-protocol": list(range(256))}))
    parse_request(body(**{"target-port-range": entries("target-port-range", 1024)}))
    with pytest.raises(BadRequest, match="1025 'target-port-range'"):
        parse_request(body(**{"target-port-range": entries("target-port-range", 1025)}))


@pytest.mark.parametrize("bad", [0, -1, True, 2.0])
def test_limits_are_positive_integers(bad: Any) -> None:
    with pytest.raises(ValueError, match="'target-uri'"):
        RequestLimits(target_uri=bad)


def test_a_huge_request_is_refused_before_any_costly_work() -> None:
    """20,000 port ranges (the issue: 6 s of server time): refused after a length, before
    YANG validation (~0.2 ms an entry) and any comparison."""
    huge = body(**{"target-port-range": entries("target-port-range", 20_000)})
    table = MitigationTable()
    with counting_steps(budget=2_000), pytest.raises(BadRequest, match="20000"):
        table.put(CUID, 1, None, huge, WALL)
    assert len(table) == 0
    many_scopes = {MITIGATION_MEMBER: {"scope": [body()[MITIGATION_MEMBER]["scope"][0]] * 5000}}
    with counting_steps(budget=2_000), pytest.raises(BadRequest, match="exactly one 'scope'"):
        table.put(CUID, 1, None, many_scopes, WALL)


@pytest.mark.parametrize("shape", [[], {}, "x", [1, "x"], [{"target-prefix": "x"}], None])
def test_odd_shapes_are_left_to_the_validation(shape: Any) -> None:
    for odd in ({MITIGATION_MEMBER: {"scope": shape}}, {MITIGATION_MEMBER: shape}):
        with pytest.raises(SignalError) as info:
            parse_request(odd, SMALL)
        assert info.value.code == Code.BAD_REQUEST  # RFC 9132 §4.4.1.3, no crash


# ---------------------------------------------------------------------------------------------
# Through the server core: the operator's limits (PolicySet), applied and reloaded


def put(mid: int, entry: dict[str, Any]) -> Request:
    msg = Message(code=Code.PUT).set_path("/".join(mitigate_path(CUID, mid)))
    msg.payload = to_cbor({MITIGATION_MEMBER: {"scope": [entry]}})
    msg.add(OptionNumber.CONTENT_FORMAT, ContentFormat.DOTS_CBOR)
    return Request(msg, make_peer_info(("::1", 1), "dtls", False, psk_identity=PSK), "link-1")


def test_the_server_answers_4_00_with_a_diagnostic_and_keeps_nothing() -> None:
    core = ServerCore(mono=0.0, policy=PolicySet(limits=RequestLimits(target_fqdn=2)))
    entry = {"target-fqdn": entries("target-fqdn", 3), "lifetime": 100}
    reply = core.handle("mitigate", put(1, entry), 1.0, WALL)
    assert reply.response.code == Code.BAD_REQUEST and reply.keep is None
    diagnostic = reply.response.payload.decode()
    assert "3 'target-fqdn' entries" in diagnostic and "at most 2" in diagnostic
    # A new operator policy (SIGHUP) brings its own limits.
    core.set_policy(PolicySet(limits=RequestLimits(target_fqdn=3)))
    assert core.handle("mitigate", put(1, entry), 2.0, WALL).response.code == Code.CREATED
    core.set_policy(Policy())  # a bare policy: the default limits
    assert core.table.request_limits == DEFAULT_REQUEST_LIMITS


# ---------------------------------------------------------------------------------------------
# The client domain (RFC 9132 §4.4.1.1, §10) checked by lookup, not by scanning it


_NETS = st.one_of(
    st.builds(lambda n, length: ipaddress.ip_network((n, length), strict=False),
              st.integers(0x0A000000, 0x0A0003FF), st.integers(0, 32)),
    st.builds(lambda n, length: ipaddress.ip_network((n, length), strict=False),
              st.integers(0x20010DB8 << 96, (0x20010DB8 << 96) + 0xFFFF),
              st.integers(0, 128)),
)


@given(st.lists(_NETS, max_size=8), st.lists(_NETS, min_size=1, max_size=8))
def test_prefix_allowed_as_defined(allowed: list[IPNetwork], prefixes: list[IPNetwork]) -> None:
    policy = Policy(allowed_prefixes=tuple(allowed))
    for prefix in prefixes:
        expected = any(prefix.version == a.version and prefix.subnet_of(a)  # type: ignore[arg-type]
                       for a in allowed)
        assert policy.prefix_allowed(prefix) == expected


def test_a_large_domain_is_checked_by_lookup() -> None:
    """1024 prefixes in a domain of 1000: compared pairwise, about a second of server time."""
    domain = tuple(ipaddress.ip_network(f"10.{i // 256}.{i % 256}.0/24") for i in range(1000))
    policy = Policy(allowed_prefixes=domain)
    request = [ipaddress.ip_network(f"10.2.{i % 256}.{(i // 256) * 64}/26")
               for i in range(1024)]
    # A few steps per prefix and allowed length (one length here); pairwise: a million.
    with counting_steps(budget=20 * len(request)):
        policy.check_prefixes(request)
    with pytest.raises(BadRequest, match=r"10\.9\.0\.0/26 is outside"):
        policy.check_prefixes([ipaddress.ip_network("10.9.0.0/26")])


_LABELS = st.sampled_from(["example", "com", "net", "a", "b", "EXAMPLE", ""])
_NAMES = st.lists(_LABELS, min_size=1, max_size=4).map(".".join)


@given(st.lists(_NAMES, max_size=5), st.lists(_NAMES | _NAMES.map(lambda n: n + "."),
                                              min_size=1, max_size=5))
def test_fqdn_in_domain_as_defined(domains: list[str], names: list[str]) -> None:
    policy = Policy(allowed_domains=tuple(domains))
    for name in names:
        key = name.lower().rstrip(".")
        expected = any(key == d or key.endswith("." + d) for d in domains)
        try:
            policy.check_fqdns([name])
        except BadRequest:
            assert not expected, (name, domains)
        else:
            assert expected, (name, domains)


def test_many_domains_are_checked_by_lookup() -> None:
    domains = tuple(f"customer{i}.example.net" for i in range(2000))
    policy = Policy(allowed_domains=domains)
    names = [f"www{i}.customer{i}.example.net" for i in range(64)]
    # A few steps per label of each name; comparing with every domain: 128,000.
    with counting_steps(budget=40 * len(names)):
        policy.check_fqdns(names)
        policy.check_uris([f"https://{n}/x" for n in names[:8]])
    with pytest.raises(BadRequest, match="outside"):
        policy.check_fqdns(["customer1.example.org"])
