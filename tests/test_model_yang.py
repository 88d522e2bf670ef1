"""YANG validation of DOTS bodies (RFC 9132 §5, RFC 8791 structures, RFC 8783 data channel)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.steps import counting_steps

from dotsd.coap.numbers import Code
from dotsd.model import yang
from dotsd.model.errors import ValidationError
from dotsd.model.yang import Direction, validate, validate_request, validate_response

MS = "ietf-dots-signal-channel:mitigation-scope"
SC = "ietf-dots-signal-channel:signal-config"
RS = "ietf-dots-signal-channel:redirected-signal"
HB = "ietf-dots-signal-channel:heartbeat"
TS = "ietf-dots-telemetry:telemetry-setup"
DD = "ietf-dots-data-channel:dots-data"


def scope(**entry: Any) -> dict[str, Any]:
    return {MS: {"scope": [entry]}}


REQUEST = scope(**{"target-prefix": ["2001:db8:6401::1/128"], "lifetime": 3600})


def test_message_kinds_come_from_the_structures() -> None:
    assert set(yang.message_kinds()) == {
        MS,
        SC,
        RS,
        HB,
        TS,
        "ietf-dots-telemetry:telemetry",
    }
    kind = yang.message_kinds()[MS]
    assert (kind.module, kind.structure, kind.case) == (
        "ietf-dots-signal-channel",
        "dots-signal",
        "mitigation-scope",
    )


def test_valid_request() -> None:
    kind = validate_request(REQUEST)
    assert kind is not None and kind.case == "mitigation-scope"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        # RFC 9132 §4.4.1: 'status' etc. are server-to-client-only
        (scope(lifetime=3600, status="attack-stopped"), "/scope/0/status"),
        (scope(lifetime=3600, mid=5), "/scope/0/mid"),
        (scope(**{"conflict-information": {"conflict-cause": "cuid-collision"}}), "conflict"),
        ({RS: {"alt-server": "a.example"}}, "alt-server"),
        # telemetry: 'tsid' is returned by the server only (RFC 9244 §7.1)
        ({TS: {"telemetry": [{"tsid": 1}]}}, "tsid"),
    ],
)
def test_server_only_nodes_rejected_in_client_messages(body: dict[str, Any], fragment: str) -> None:
    validate_response(body)  # fine from a server
    with pytest.raises(ValidationError) as info:
        validate_request(body)
    assert fragment in info.value.diagnostic
    assert "server-to-client-only" in info.value.diagnostic
    assert info.value.coap_code is Code.BAD_REQUEST


def test_client_only_nodes_rejected_in_server_messages() -> None:
    body = scope(**{"target-prefix": ["2001:db8::/32"], "attack-status": "under-attack"})
    validate_request(body)
    with pytest.raises(ValidationError, match="client-to-server-only"):
        validate_response(body)


def test_call_home_redirect_from_client() -> None:
    # RFC 9066 §5.2.2: the Call Home DOTS client sends redirected-signal with alt-ch-client
    body = {
        RS: {
            "ietf-dots-call-home:alt-ch-client": "alt.example",
            "ietf-dots-call-home:alt-ch-client-record": ["2001:db8::1"],
            "ietf-dots-call-home:ttl": 600,
        }
    }
    validate_request(body)
    with pytest.raises(ValidationError, match="alt-ch-client"):
        validate_request({RS: {"ietf-dots-call-home:ttl": 600}})  # alt-ch-client is mandatory


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (scope(lifetime=-2), "lifetime"),  # union uint32 | -1
        (scope(lifetime="3600"), "lifetime"),
        (scope(**{"target-prefix": ["2001:db8::1"]}), "target-prefix"),  # not a prefix
        (scope(**{"target-prefix": "2001:db8::/32"}), "target-prefix"),
        (scope(**{"target-port-range": [{"upper-port": 80}]}), "target-port-range"),  # key
        (scope(**{"target-protocol": [300]}), "target-protocol"),
        (scope(bogus=1), "bogus"),
        (scope(cuid="abc"), "cuid"),  # RFC 9132 Appendix A: no cuid in bodies
        (scope(**{"trigger-mitigation": "true"}), "trigger-mitigation"),
        ({MS: {"scope": [{"status": "attack-done"}]}}, "status"),
        ({SC: {"idle-config": {"ack-timeout": {"current-value-decimal": "2.001"}}}}, "ack-timeout"),
        ({SC: {"idle-config": {"ack-timeout": {"current-value-decimal": "1e2"}}}}, "ack-timeout"),
        ({SC: {"idle-config": {"ack-timeout": {"current-value-decimal": 2}}}}, "ack-timeout"),
        ({HB: {}}, "peer-hb-status"),  # mandatory
        ({HB: {"peer-hb-status": True, "scope": []}}, "scope"),  # other case
        ({MS: {"peer-hb-status": True}}, "not part of the 'mitigation-scope'"),  # other case
        ({MS: REQUEST[MS], HB: {"peer-hb-status": True}}, "exactly one member"),
        ({}, "exactly one member"),
        ({MS: []}, "object"),
        # RFC 9132 §5.3: conflict-scope's alias-name only when conflict-cause is
        # overlapping-targets ('when')
        (
            scope(
                **{
                    "conflict-information": {
                        "conflict-cause": "cuid-collision",
                        "conflict-scope": {"alias-name": ["x"]},
                    }
                }
            ),
            "alias-name",
        ),
    ],
)
def test_invalid_bodies(body: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        validate(body)
    assert fragment in info.value.diagnostic


def test_error_path_names_the_message_not_the_structure() -> None:
    with pytest.raises(ValidationError) as info:
        validate(scope(lifetime=-5))
    assert info.value.path is not None
    assert info.value.path.startswith(f"/{MS}/scope")


def test_registered_conflict_causes_beyond_the_stored_iana_module() -> None:
    # RFC 9066 §7.2 (4) and RFC 9244 §13.2 (5), added to the module per RFC 9132 §10.6
    for cause in ("request-rejected-legitimate-traffic", "overlapping-pipes"):
        validate_response(scope(**{"conflict-information": {"conflict-cause": cause}}))


def test_acl_name_is_not_checked_against_the_data_channel() -> None:
    # RFC 9133: acl-name refers to a data channel ACL; the store checks that, not YANG
    body = scope(
        **{
            "target-prefix": ["2001:db8::/32"],
            "ietf-dots-signal-control:acl-list": [
                {"acl-name": "my-list", "activation-type": "immediate"}
            ],
        }
    )
    validate_request(body)
    bad = scope(**{"ietf-dots-signal-control:acl-list": [{"acl-name": "x", "activation-type": 9}]})
    with pytest.raises(ValidationError, match="activation-type"):
        validate_request(bad)


def test_telemetry_must_constraint() -> None:
    # RFC 9244 §11.1: max telemetry-notify-interval >= min
    def config(high: int, low: int) -> dict[str, Any]:
        return {
            TS: {
                "max-config-values": {"telemetry-notify-interval": high},
                "min-config-values": {"telemetry-notify-interval": low},
            }
        }

    validate_response(config(60, 5))
    with pytest.raises(ValidationError, match="telemetry-notify-interval"):
        validate_response(config(5, 60))


def test_robust_transmission_augmentation() -> None:
    payloads = {"ietf-dots-robust-trans:max-payloads": {"current-value": 5}}
    validate_request({SC: {"mitigating-config": payloads}})
    timeout = {"ietf-dots-robust-trans:non-timeout": {"max-value-decimal": "9.00"}}
    server = {SC: {"idle-config": timeout}}
    validate_response(server)
    with pytest.raises(ValidationError, match="max-value-decimal"):
        validate_request(server)


# --------------------------------------------------------------------------------------------
# Data channel (RFC 8783): bodies are validated in place under a RESTCONF resource path


CLIENT = {"ietf-dots-data-channel:dots-client": [{"cuid": "dz6pHjaADkaFTbjr0JGBpw"}]}
ALIASES = {
    "ietf-dots-data-channel:aliases": {
        "alias": [{"name": "https1", "target-prefix": ["2001:db8:6401::1/128"]}]
    }
}


def test_data_channel_post() -> None:
    assert validate_request(CLIENT, path=DD) is None
    assert validate_request(CLIENT, path=f"/restconf/data/{DD}") is None
    validate_request(ALIASES, path=f"{DD}/dots-client=dz6pHjaADkaFTbjr0JGBpw")
    validate_request(ALIASES, path=f"{DD}/dots-client=dz6p%48jaADkaFTbjr0JGBpw")  # RFC 3986


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("dots-data", "module-qualified"),
        (f"{DD}/nothing", "nothing"),
        (f"{DD}/dots-client", "keys"),  # a list needs its key
        (f"{DD}=x", "keys"),
        (f"{DD}/dots-client=a,b", "key"),
    ],
)
def test_data_channel_bad_paths(path: str, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        validate_request(ALIASES, path=path)


def test_data_channel_config_false_only_from_the_server() -> None:
    # RFC 8783 §7.1: capabilities are state data, read-only for the client
    caps = {"ietf-dots-data-channel:capabilities": {"rate-limit": True}}
    validate_response(caps, path=DD)
    with pytest.raises(ValidationError, match="capabilities"):
        validate_request(caps, path=DD)


def test_whole_datastore_without_path() -> None:
    validate_response({DD: {"dots-client": [{"cuid": "x", "cdid": "y"}]}})
    with pytest.raises(ValidationError):
        validate_response({DD: {"dots-client": [{"cdid": "y"}]}})  # key missing


# --------------------------------------------------------------------------------------------
# Robustness and speed


@pytest.mark.parametrize(
    "body",
    [
        {MS: {"scope": [{"lifetime": b"\x00"}]}},  # bytes are not JSON
        {MS: {"scope": [{"alias-name": {"a", "b"}}]}},
        {MS: {1: 2}},
        {MS: {"scope": [{"lifetime": float("nan")}]}},
        {MS: {"scope": [{"lifetime": 10**40}]}},
        {DD: {"dots-client": [{"cuid": None}]}},
    ],
)
def test_odd_values_give_validation_errors(body: Any) -> None:
    with pytest.raises(ValidationError):
        validate(body)


def test_deep_nesting_is_refused() -> None:
    deep: Any = "x"
    for _ in range(200):
        deep = {"a": deep}
    with pytest.raises(ValidationError, match="deeper"):
        validate({DD: deep})


json_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(["scope", "lifetime", "target-prefix", "status", "mid", "x", "acl-list",
                             "peer-hb-status", "telemetry", "alt-server", "dots-client"]),
            inner,
            max_size=3,
        ),
    ),
    max_leaves=12,
)  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([MS, SC, RS, HB, TS, DD, "foo:bar"]), json_values, st.booleans())
def test_random_instances_only_raise_validation_error(
    top: str, content: Any, request: bool
) -> None:
    direction = Direction.CLIENT_TO_SERVER if request else Direction.SERVER_TO_CLIENT
    try:
        validate({top: content}, direction=direction)
    except ValidationError as exc:
        assert exc.diagnostic


def test_validation_time() -> None:
    """Validating a mitigation request is cheap: a bounded number of steps (support.steps,
    the same on any machine), nowhere near loading the YANG data model again."""
    validate_request(REQUEST)  # the shared validator is built on first use
    # About 1,650 steps; building the validator (yang.YangValidator()) takes 670,000.
    with counting_steps(budget=20_000):
        validate_request(REQUEST)
