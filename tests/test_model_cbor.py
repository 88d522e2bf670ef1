"""CBOR key table and JSON <-> CBOR codec (RFC 9132 §6)."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dotsd.coap.numbers import Code
from dotsd.model import cbor_keys
from dotsd.model.cbor_keys import BY_KEY, BY_NAME, Comprehension, Kind, Scalar
from dotsd.model.codec import (
    IgnoredKey,
    PayloadTooLargeError,
    decode,
    from_cbor,
    to_cbor,
)
from dotsd.model.errors import (
    EncodeError,
    MalformedError,
    ModelError,
    TypeMismatchError,
    UnknownKeyError,
)

REPO = Path(__file__).resolve().parent.parent
SPEC = Path(os.environ.get("DOTS_SPEC_DIR", REPO.parent / "shared" / "spec"))

MS = "ietf-dots-signal-channel:mitigation-scope"
SC = "ietf-dots-signal-channel:signal-config"
K = {name: p.key for name, p in BY_NAME.items()}  # key numbers only via the table


def scope_body(**scope: Any) -> dict[str, Any]:
    return {MS: {"scope": [scope]}}


def cbor_scope(entries: dict[int, Any]) -> bytes:
    return cbor2.dumps({K[MS]: {K["scope"]: [entries]}})


def config_with_decimal(value: Any) -> bytes:
    """signal-config / idle-config / ack-timeout / current-value-decimal = value."""
    timeout = {K["ack-timeout"]: {K["current-value-decimal"]: value}}
    return cbor2.dumps({K[SC]: {K["idle-config"]: timeout}})


# --------------------------------------------------------------------------------------------
# Key table


def test_table_has_every_row_once() -> None:
    assert len(BY_NAME) == len(BY_KEY) == 150
    for name, param in BY_NAME.items():
        assert BY_KEY[param.key] is param
        assert param.name == name


@pytest.mark.parametrize(
    ("name", "key"),
    [
        # RFC 9132 §6 Table 5
        ("ietf-dots-signal-channel:mitigation-scope", 1),
        ("scope", 2),
        ("target-prefix", 6),
        ("lifetime", 14),
        ("status", 16),
        ("acl-list", 22),
        ("ietf-dots-signal-channel:signal-config", 30),
        ("max-value", 34),  # Table 5; RFC 8782's IANA table swapped 34/35
        ("min-value", 35),
        ("max-value-decimal", 41),
        ("min-value-decimal", 42),
        ("ietf-dots-signal-channel:heartbeat", 49),
        ("peer-hb-status", 51),
        # RFC 9133 §3.2.1 Table 1
        ("activation-type", 52),
        ("ietf-dots-signal-control:acl-list", 53),
        # RFC 9244 §12 Table 3
        ("tsid", 128),
        ("source-prefix", 185),
        ("ietf-dots-telemetry:total-traffic", 204),
        ("total-traffic", 145),
        ("description-lang", 210),
        # RFC 9066 §6.2 Table 1
        ("ietf-dots-call-home:source-prefix", 32768),
        ("ietf-dots-call-home:ttl", 32775),
        # RFC 9362 §4 Table 2
        ("ietf-dots-robust-trans:non-partial-timeout", 32781),
    ],
)
def test_known_keys(name: str, key: int) -> None:
    assert BY_NAME[name].key == key
    assert cbor_keys.by_key(key) is BY_NAME[name]


def test_same_local_name_different_parameters() -> None:
    # RFC 9132 §6 / RFC 7951 §4: the qualified name is a different parameter with its own key
    # and possibly another shape (leaf-list vs single leaf).
    assert BY_NAME["ietf-dots-call-home:source-prefix"].kind is Kind.LEAF_LIST
    assert BY_NAME["source-prefix"].kind is Kind.LEAF
    assert BY_NAME["acl-list"].key != BY_NAME["ietf-dots-signal-control:acl-list"].key
    assert BY_NAME["ietf-dots-telemetry:total-traffic"].module == "ietf-dots-telemetry"
    assert BY_NAME["ietf-dots-telemetry:total-traffic"].local_name == "total-traffic"


def test_comprehension_matches_registry_ranges() -> None:
    # RFC 9132 §10.6.1.1 Table 8
    for param in BY_NAME.values():
        assert cbor_keys.comprehension_of_key(param.key) is param.comprehension, param.name
    assert cbor_keys.comprehension_of_key(0) is None
    assert cbor_keys.comprehension_of_key(65536) is None
    assert cbor_keys.comprehension_of_key(127) is Comprehension.REQUIRED
    assert cbor_keys.comprehension_of_key(128) is Comprehension.OPTIONAL
    assert cbor_keys.comprehension_of_key(256) is Comprehension.REQUIRED
    assert cbor_keys.comprehension_of_key(49152) is Comprehension.OPTIONAL


def test_value_types() -> None:
    assert BY_NAME["lifetime"].scalar is Scalar.INT and BY_NAME["lifetime"].low == -1
    assert BY_NAME["mitigation-start"].scalar is Scalar.UINT64
    assert BY_NAME["status"].labels is not None and BY_NAME["status"].labels[2] == (
        "attack-successfully-mitigated"
    )
    # conflict-cause 4 (RFC 9066 §7.2) and 5 (RFC 9244 §13.2) are registered
    assert BY_NAME["conflict-cause"].values == {
        "overlapping-targets": 1,
        "conflict-with-acceptlist": 2,
        "cuid-collision": 3,
        "request-rejected-legitimate-traffic": 4,
        "overlapping-pipes": 5,
    }
    assert BY_NAME["ack-timeout"].kind is Kind.CONTAINER
    assert BY_NAME["current-value-decimal"].fraction_digits == 2
    # RFC 9132 Table 5 says JSON "String" for retry-timer (uint32); RFC 7951 says number
    assert BY_NAME["retry-timer"].table_json_type == "String"
    assert BY_NAME["retry-timer"].json_type == "Number"


@pytest.mark.skipif(not (SPEC / "cbor-keys.tsv").is_file(), reason="spec pack not present")
def test_generated_table_matches_spec_pack() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts/gen_cbor_keys.py"), "--check", "--spec", str(SPEC)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------------------------
# Encoding and decoding


def test_types_on_the_wire() -> None:
    body = scope_body(
        **{
            "target-prefix": ["2001:db8::/32"],
            "target-protocol": [6, 17],
            "lifetime": -1,
            "trigger-mitigation": False,
            "mitigation-start": "1507818434",
            "status": "attack-stopped",
            "bytes-dropped": "18446744073709551615",
        }
    )
    wire = cbor2.loads(to_cbor(body))
    entry = wire[K[MS]][K["scope"]][0]
    assert entry == {
        K["target-prefix"]: ["2001:db8::/32"],
        K["target-protocol"]: [6, 17],
        K["lifetime"]: -1,  # major type 1
        K["trigger-mitigation"]: False,
        K["mitigation-start"]: 1507818434,  # uint64: unsigned, not a string
        K["status"]: 3,  # enumeration: its value
        K["bytes-dropped"]: 2**64 - 1,
    }
    assert from_cbor(to_cbor(body)) == body


def test_decimal64_is_tag_4_with_exponent_minus_2() -> None:
    body = {SC: {"mitigating-config": {"ack-timeout": {"current-value-decimal": "2.00"}}}}
    raw = to_cbor(body)
    tag = cbor2.loads(raw, semantic_decoders={4: lambda v, i: ("tag4", v)})
    assert tag[K[SC]][K["mitigating-config"]][K["ack-timeout"]][K["current-value-decimal"]] == (
        "tag4",
        [-2, 200],
    )
    assert from_cbor(raw) == body


@pytest.mark.parametrize(
    ("given", "mantissa"),
    [("1.5", 150), ("1.50", 150), (Decimal("30"), 3000), (2, 200), (1.1, 110), ("-0.01", -1)],
)
def test_decimal64_inputs(given: Any, mantissa: int) -> None:
    body = {SC: {"idle-config": {"ack-random-factor": {"current-value-decimal": given}}}}
    wire = cbor2.loads(to_cbor(body), semantic_decoders={4: lambda v, i: v})
    value = wire[K[SC]][K["idle-config"]][K["ack-random-factor"]][K["current-value-decimal"]]
    assert value == [-2, mantissa]


def test_decimal_fraction_with_other_exponent_is_accepted() -> None:
    # RFC 8949 §3.4.4: [-1, 15] is 1.5; shown with the YANG type's two digits
    raw = config_with_decimal(cbor2.CBORTag(4, [-1, 15]))
    assert from_cbor(raw)[SC]["idle-config"]["ack-timeout"]["current-value-decimal"] == "1.50"


def test_enum_accepts_registered_int_when_encoding() -> None:
    by_label = to_cbor(scope_body(status="attack-successfully-mitigated"))
    assert to_cbor(scope_body(status=2)) == by_label


def test_dots_cbor_tag_271_is_accepted() -> None:
    # RFC 9132 §10.5: the tag is optional
    inner = {K[MS]: {K["scope"]: [{K["lifetime"]: 3600}]}}
    assert from_cbor(cbor2.dumps(cbor2.CBORTag(271, inner))) == scope_body(lifetime=3600)


def test_unknown_comprehension_optional_keys_are_ignored() -> None:
    raw = cbor_scope({K["lifetime"]: 60, 255: 1, 16384: "x", 40000: [1], 49152: {1: 2}, 65535: 0})
    decoded = decode(raw)
    assert decoded.value == scope_body(lifetime=60)
    path = f"/{MS}/scope/0"
    assert decoded.ignored == (
        IgnoredKey(path, 255),
        IgnoredKey(path, 16384),
        IgnoredKey(path, 40000),
        IgnoredKey(path, 49152),
        IgnoredKey(path, 65535),
    )


def test_unknown_comprehension_required_keys_fail_with_all_keys_listed() -> None:
    raw = cbor2.dumps({K[MS]: {K["scope"]: [{K["lifetime"]: 60, 100: 1}]}, 300: 2})
    assert cbor_keys.by_key(100) is None and cbor_keys.by_key(300) is None
    with pytest.raises(UnknownKeyError) as info:
        from_cbor(raw)
    assert info.value.coap_code is Code.BAD_REQUEST
    assert sorted(info.value.keys) == [100, 300]
    assert "100" in info.value.diagnostic and "300" in info.value.diagnostic


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("lifetime", "3600", "lifetime"),  # string for an integer
        ("lifetime", -2, "lifetime"),  # union uint32 | -1
        ("lifetime", 2**32, "lifetime"),
        ("lifetime", 1.5, "float"),
        ("target-prefix", "2001:db8::/32", "array"),  # leaf-list must be an array
        ("target-prefix", [1], "target-prefix"),
        ("target-protocol", [256], "target-protocol"),  # uint8
        ("status", 9, "registered"),  # status 9 is unassigned
        ("status", "attack-stopped", "status"),  # labels are for JSON only
        ("trigger-mitigation", 1, "trigger-mitigation"),  # boolean, not 1
        ("mitigation-start", -1, "mitigation-start"),
        ("mitigation-start", cbor2.CBORTag(2, b"\x01"), "tag 2"),  # bignum, not unsigned
        ("target-port-range", [{}, 5], "map"),  # list entries are maps
        ("conflict-information", [], "map"),
    ],
)
def test_type_mismatches_fail(name: str, value: Any, fragment: str) -> None:
    with pytest.raises(TypeMismatchError) as info:
        from_cbor(cbor_scope({K[name]: value}))
    assert fragment in info.value.diagnostic
    assert info.value.coap_code is Code.BAD_REQUEST


@pytest.mark.parametrize(
    ("key", "fragment"),
    [("lifetime", "integer CBOR key"), (0, "outside"), (70000, "outside"), (-5, "outside")],
)
def test_bad_map_keys_fail(key: Any, fragment: str) -> None:
    # text keys are not used on the wire; keys are integers in 1-65535 (RFC 9132 §10.6.1.1)
    with pytest.raises(TypeMismatchError) as info:
        from_cbor(cbor_scope({key: 1}))
    assert fragment in info.value.diagnostic


@pytest.mark.parametrize(
    "value",
    [
        cbor2.CBORTag(4, [-3, 1]),  # 0.001: more digits than fraction-digits 2
        cbor2.CBORTag(4, [-2]),
        cbor2.CBORTag(4, [-2, 1.5]),
        cbor2.CBORTag(4, [-1000, 1]),
        cbor2.CBORTag(4, [0, 2**63]),  # beyond decimal64
        cbor2.CBORTag(5, [-1, 3]),  # bigfloat, not decimal fraction
        "2.00",
        200,
    ],
)
def test_bad_decimal64_fails(value: Any) -> None:
    raw = config_with_decimal(value)
    with pytest.raises(TypeMismatchError):
        from_cbor(raw)


def _head(key: str) -> bytes:
    return cbor2.dumps(K[key])


ONE_MS = b"\xa1" + _head(MS)  # map(1) with the mitigation-scope key


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"", MalformedError),
        (ONE_MS, MalformedError),  # truncated
        (ONE_MS + b"\xa0\x00", MalformedError),  # trailing byte
        (b"\xa2" + _head(MS) + b"\xa0" + _head(MS) + b"\xa0", MalformedError),  # duplicate key
        (ONE_MS + b"\xa1" + _head("cuid") + b"\x62\xff\xfe", MalformedError),  # bad UTF-8
        (b"\x81" * 100 + b"\xa0", MalformedError),  # too deep
        (b"\x9a\xff\xff\xff\xff", MalformedError),  # huge length, no data
        (b"\x80", TypeMismatchError),  # a body is a map
        (b"\xf6", TypeMismatchError),
        (b"\xd8\x1c\x81\xd8\x1d\x00", TypeMismatchError),  # shared reference cycle
    ],
)
def test_malformed_payloads(raw: bytes, error: type[ModelError]) -> None:
    with pytest.raises(error):
        from_cbor(raw)


def test_size_limit_is_413() -> None:
    with pytest.raises(PayloadTooLargeError) as info:
        from_cbor(b"\xa0" + b"\x00" * 100, max_size=50)
    assert info.value.coap_code is Code.REQUEST_ENTITY_TOO_LARGE


def test_indefinite_length_items_are_accepted() -> None:
    raw = (
        b"\xbf" + _head(MS) + b"\xbf" + _head("scope") + b"\x9f\xbf" + _head("lifetime")
        + cbor2.dumps(3600) + b"\xff\xff\xff\xff"
    )  # fmt: skip
    assert from_cbor(raw) == scope_body(lifetime=3600)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"mitigation-scope": {}}, "no CBOR key"),  # top-level names are qualified
        ({MS: {"scope": [{"lifetime": "3600"}]}}, "lifetime"),
        ({MS: {"scope": [{"status": "bogus"}]}}, "status"),
        ({MS: {"scope": [{"target-prefix": "2001:db8::/32"}]}}, "array"),
        ({MS: {"scope": [{"trigger-mitigation": 1}]}}, "trigger-mitigation"),
        ({MS: {"scope": [{"mitigation-start": "12a"}]}}, "mitigation-start"),
        ({MS: {"scope": [{"lifetime": True}]}}, "lifetime"),
        ({MS: {"scope": {}}}, "array"),
        ({MS: []}, "object"),
        ({SC: {"idle-config": {"ack-timeout": {"current-value-decimal": "2.001"}}}}, "decimal64"),
        ({SC: {"idle-config": {"ack-timeout": {"current-value-decimal": "NaN"}}}}, "decimal64"),
        ({SC: {"idle-config": {"ack-timeout": {"current-value-decimal": "1e2"}}}}, "decimal64"),
    ],
)
def test_encode_errors(body: dict[str, Any], fragment: str) -> None:
    with pytest.raises(EncodeError) as info:
        to_cbor(body)
    assert fragment in info.value.diagnostic
    assert info.value.coap_code is Code.INTERNAL_SERVER_ERROR


# --------------------------------------------------------------------------------------------
# Property tests: any input bytes give a dict or a ModelError, never another exception


FIG7 = scope_body(
    **{
        "target-prefix": ["2001:db8:6401::1/128", "2001:db8:6401::2/128"],
        "target-port-range": [{"lower-port": 80}, {"lower-port": 443, "upper-port": 444}],
        "target-protocol": [6],
        "lifetime": 3600,
        "ietf-dots-call-home:source-icmp-type-range": [{"lower-type": 3, "upper-type": 4}],
        "ietf-dots-telemetry:total-attack-traffic": [{"unit": "megabit-ps", "peak-g": "900"}],
    }
)
FIG7_WIRE = cbor2.loads(to_cbor(FIG7))


def _decode_or_model_error(raw: bytes) -> None:
    try:
        value = from_cbor(raw)
    except ModelError as exc:
        assert exc.coap_code in (Code.BAD_REQUEST, Code.REQUEST_ENTITY_TOO_LARGE)
        assert exc.diagnostic
        return
    # whatever decodes re-encodes and decodes to the same JSON-shaped value
    assert isinstance(value, dict)
    assert from_cbor(to_cbor(value)) == value


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes(raw: bytes) -> None:
    _decode_or_model_error(raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=8), st.integers(min_value=0), st.integers(0, 3))
def test_spliced_bytes(chunk: bytes, where: int, mode: int) -> None:
    raw = to_cbor(FIG7)
    pos = where % len(raw)
    if mode == 0:
        mutated = raw[:pos] + chunk + raw[pos:]
    elif mode == 1:
        mutated = raw[:pos] + chunk + raw[pos + len(chunk) :]
    elif mode == 2:
        mutated = raw[:pos] + raw[pos + len(chunk) :]
    else:
        mutated = raw[:pos] + bytes([raw[pos] ^ chunk[0]]) + raw[pos + 1 :]
    _decode_or_model_error(mutated)


cbor_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=10),
    st.binary(max_size=10),
    st.builds(cbor2.CBORTag, st.sampled_from([0, 1, 2, 3, 4, 5, 6, 28, 29, 32, 271, 258]),
              st.one_of(st.integers(-5, 5), st.text(max_size=3), st.lists(st.integers(-5, 5),
                                                                          max_size=3))),
)  # fmt: skip
known_keys = st.sampled_from(sorted(BY_KEY))
any_keys = st.one_of(known_keys, st.integers(min_value=-10, max_value=70000))
cbor_values = st.recursive(
    cbor_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(any_keys, inner, max_size=4)
    ),
    max_leaves=20,
)


def _mutate(tree: Any, path: list[int], replacement: Any, action: int) -> Any:
    """Replace, drop or add at the node chosen by ``path`` (indices modulo the sizes)."""
    if not path or not isinstance(tree, dict | list) or not tree:
        return replacement if action != 2 else tree
    items = list(tree.items()) if isinstance(tree, dict) else list(enumerate(tree))
    index = path[0] % len(items)
    key, child = items[index]
    if len(path) == 1 and action == 1:
        del items[index]
    elif len(path) == 1 and action == 2 and isinstance(tree, dict):
        items.append((replacement if isinstance(replacement, int) else 999, child))
    else:
        items[index] = (key, _mutate(child, path[1:], replacement, action))
    return dict(items) if isinstance(tree, dict) else [v for _, v in items]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, 20), min_size=1, max_size=7), cbor_values, st.integers(0, 2))
def test_random_structure_mutations(path: list[int], replacement: Any, action: int) -> None:
    mutated = _mutate(FIG7_WIRE, path, replacement, action)
    try:
        raw = cbor2.dumps(mutated)
    except (cbor2.CBOREncodeError, ValueError, TypeError):
        return
    _decode_or_model_error(raw)


def _json_value(name: str) -> st.SearchStrategy[Any]:
    param = BY_NAME[name]
    if param.kind is Kind.CONTAINER:
        return _json_objects(max_size=3)
    if param.kind is Kind.LIST:
        return st.lists(_json_objects(max_size=2), max_size=2)
    if param.kind is Kind.LEAF_LIST:
        return st.lists(_json_scalar(param), max_size=3)
    return _json_scalar(param)


def _json_scalar(param: cbor_keys.Param) -> st.SearchStrategy[Any]:
    scalar = param.scalar
    if scalar is Scalar.STRING:
        return st.text(max_size=8)
    if scalar is Scalar.BOOLEAN:
        return st.booleans()
    if scalar is Scalar.ENUM:
        assert param.values is not None
        return st.sampled_from(sorted(param.values))
    if scalar is Scalar.DECIMAL64:
        return st.integers(-(2**63), 2**63 - 1).map(lambda m: f"{Decimal(m).scaleb(-2):f}")
    assert param.low is not None and param.high is not None
    ints = st.integers(param.low, param.high)
    return ints.map(str) if scalar is Scalar.UINT64 else ints


def _json_objects(max_size: int) -> st.SearchStrategy[dict[str, Any]]:
    names = st.sampled_from(sorted(BY_NAME))
    return st.deferred(
        lambda: st.dictionaries(names, st.just(None), max_size=max_size).flatmap(
            lambda d: st.fixed_dictionaries({n: _json_value(n) for n in d})
        )
    )


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_json_objects(max_size=4))
def test_round_trip_of_generated_bodies(body: dict[str, Any]) -> None:
    raw = to_cbor(body)
    assert from_cbor(raw) == body
    assert to_cbor(from_cbor(raw)) == raw
