"""Session configuration (RFC 9132 §4.5): server policy, GET/PUT/DELETE, client side."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest

from dotsd.coap.numbers import Code
from dotsd.model.codec import from_cbor, to_cbor
from dotsd.model.yang import validate_request, validate_response
from dotsd.signal.config import (
    CONFIG_MEMBER,
    Advertised,
    Attribute,
    ConfigBounds,
    ConfigError,
    ConfigNotFoundError,
    ConfigPolicy,
    ConfigSet,
    ConfigSetKind,
    SessionConfig,
    SidAllocator,
    UnacceptableConfigError,
    build_put_body,
    choose_values,
    config_path,
    parse_config_path,
    parse_config_response,
    parse_put_body,
    refresh_delay,
)

MIT = ConfigSetKind.MITIGATING
IDLE = ConfigSetKind.IDLE

# RFC 9132 Figure 23 (PUT body), copied from the RFC.
FIG23: dict[str, Any] = {
    CONFIG_MEMBER: {
        "mitigating-config": {
            "heartbeat-interval": {"current-value": 30},
            "missing-hb-allowed": {"current-value": 15},
            "probing-rate": {"current-value": 15},
            "max-retransmit": {"current-value": 3},
            "ack-timeout": {"current-value-decimal": "2.00"},
            "ack-random-factor": {"current-value-decimal": "1.50"},
        },
        "idle-config": {
            "heartbeat-interval": {"current-value": 0},
            "max-retransmit": {"current-value": 3},
            "ack-timeout": {"current-value-decimal": "2.00"},
            "ack-random-factor": {"current-value-decimal": "1.50"},
        },
    }
}

_FIG20_SET: dict[str, Any] = {
    "heartbeat-interval": {"max-value": 240, "min-value": 15, "current-value": 30},
    "missing-hb-allowed": {"max-value": 20, "min-value": 3, "current-value": 15},
    "probing-rate": {"max-value": 20, "min-value": 5, "current-value": 15},
    "max-retransmit": {"max-value": 15, "min-value": 2, "current-value": 3},
    "ack-timeout": {"max-value-decimal": "30.00", "min-value-decimal": "1.00",
                    "current-value-decimal": "2.00"},
    "ack-random-factor": {"max-value-decimal": "4.00", "min-value-decimal": "1.10",
                          "current-value-decimal": "1.50"},
}
# RFC 9132 Figure 20 (GET response body).
FIG20: dict[str, Any] = {CONFIG_MEMBER: {"mitigating-config": _FIG20_SET,
                                         "idle-config": _FIG20_SET}}


def fig20_policy() -> ConfigPolicy:
    bounds = ConfigBounds(default=ConfigSet(probing_rate=15))
    return ConfigPolicy(mitigating=bounds, idle=bounds)


def roundtrip(body: dict[str, Any]) -> dict[str, Any]:
    """Through the wire encoding (application/dots+cbor, RFC 9132 §6) and back."""
    return from_cbor(to_cbor(body))


# -------------------------------------------------------------------------------- discovery


def test_default_discovery_body_is_valid_and_has_rfc_defaults() -> None:
    body = SessionConfig().discovery_body()
    validate_response(body)
    for kind in ("mitigating-config", "idle-config"):
        s = body[CONFIG_MEMBER][kind]
        assert s["heartbeat-interval"] == {"max-value": 240, "min-value": 15,
                                           "current-value": 30}
        assert s["missing-hb-allowed"]["current-value"] == 15
        assert s["probing-rate"]["current-value"] == 5
        assert s["max-retransmit"]["current-value"] == 3
        assert s["ack-timeout"]["current-value-decimal"] == "2.00"
        assert s["ack-random-factor"]["current-value-decimal"] == "1.50"


def test_discovery_body_matches_figure_20() -> None:
    body = SessionConfig(fig20_policy()).discovery_body()
    assert body == FIG20
    assert roundtrip(body) == FIG20


def test_discovery_over_reliable_transport_omits_transmission_attributes() -> None:
    body = SessionConfig(reliable=True).discovery_body()
    validate_response(body)
    assert set(body[CONFIG_MEMBER]["idle-config"]) == {"heartbeat-interval", "probing-rate"}


def test_get_with_sid() -> None:
    cfg = SessionConfig()
    with pytest.raises(ConfigNotFoundError) as exc:
        cfg.get(7)
    assert exc.value.coap_code == Code.NOT_FOUND
    cfg.put(7, FIG23)
    body = cfg.get(7)
    validate_response(body)
    assert body[CONFIG_MEMBER]["idle-config"]["heartbeat-interval"]["current-value"] == 0


# -------------------------------------------------------------------------------- PUT


def test_put_figure_23_created_then_changed() -> None:
    validate_request(FIG23)
    cfg = SessionConfig(fig20_policy())
    out = cfg.put(123, roundtrip(FIG23))
    assert (out.code, out.sid) == (Code.CREATED, 123)
    assert cfg.put(123, FIG23).code == Code.CHANGED
    assert cfg.put(124, FIG23).code == Code.CREATED
    assert cfg.sid == 124
    idle = cfg.values(IDLE)
    assert idle.heartbeat_interval == 0  # disabled while idle (Figure 23)
    assert idle.missing_hb_allowed == 15  # not in the PUT: server default
    assert idle.probing_rate == 15  # Figure 20's server default
    assert cfg.values(MIT).probing_rate == 15


def test_put_omitted_attributes_take_server_defaults_not_earlier_values() -> None:
    cfg = SessionConfig()
    cfg.put(1, build_put_body(mitigating={Attribute.HEARTBEAT_INTERVAL: 60,
                                          Attribute.MAX_RETRANSMIT: 5}))
    assert cfg.values(MIT).max_retransmit == 5
    cfg.put(2, build_put_body(mitigating={Attribute.HEARTBEAT_INTERVAL: 90}))
    assert cfg.values(MIT).heartbeat_interval == 90
    assert cfg.values(MIT).max_retransmit == 3
    assert cfg.values(IDLE) == ConfigSet()


def test_put_lower_sid_refused() -> None:
    cfg = SessionConfig()
    cfg.put(10, FIG23)
    with pytest.raises(ConfigError) as exc:
        cfg.put(9, FIG23)
    assert exc.value.coap_code == Code.BAD_REQUEST
    assert cfg.sid == 10


def test_put_without_sid_is_bad_request() -> None:
    with pytest.raises(ConfigError) as exc:
        SessionConfig().put(None, FIG23)
    assert exc.value.coap_code == Code.BAD_REQUEST


@pytest.mark.parametrize(
    ("attr", "value"),
    [("heartbeat-interval", 14), ("heartbeat-interval", 241), ("missing-hb-allowed", 2),
     ("probing-rate", 21), ("max-retransmit", 1), ("ack-timeout", "0.99"),
     ("ack-random-factor", "4.01")],
)
def test_put_out_of_range_is_4_22_and_changes_nothing(attr: str, value: Any) -> None:
    cfg = SessionConfig()
    cfg.put(1, FIG23)
    before = (cfg.values(MIT), cfg.values(IDLE))
    leaf = "current-value-decimal" if isinstance(value, str) else "current-value"
    body = {CONFIG_MEMBER: {"idle-config": {attr: {leaf: value}}}}
    validate_request(body)
    with pytest.raises(UnacceptableConfigError) as exc:
        cfg.put(2, body)
    assert exc.value.coap_code == Code.UNPROCESSABLE_ENTITY
    assert (cfg.values(MIT), cfg.values(IDLE)) == before
    assert cfg.sid == 1


def test_heartbeat_disable_can_be_refused_by_policy() -> None:
    policy = ConfigPolicy(idle=ConfigBounds(allow_heartbeat_disable=False))
    body = build_put_body(idle={Attribute.HEARTBEAT_INTERVAL: 0})
    with pytest.raises(UnacceptableConfigError):
        SessionConfig(policy).put(1, body)
    assert SessionConfig().put(1, body).code == Code.CREATED


@pytest.mark.parametrize(
    "body",
    [
        {},
        {CONFIG_MEMBER: {}},
        {CONFIG_MEMBER: {"idle-config": {}}},
        {CONFIG_MEMBER: {"idle-config": {"heartbeat-interval": {}}}},
        {CONFIG_MEMBER: {"busy-config": {"heartbeat-interval": {"current-value": 30}}}},
        {CONFIG_MEMBER: {"idle-config": {"heartbeat-rate": {"current-value": 30}}}},
        {CONFIG_MEMBER: {"idle-config": {"heartbeat-interval": {"max-value": 30}}}},
        {CONFIG_MEMBER: {"idle-config": {"heartbeat-interval": {"current-value": "30"}}}},
        {CONFIG_MEMBER: {"idle-config": {"heartbeat-interval": {"current-value": 70000}}}},
        {CONFIG_MEMBER: {"idle-config": {"heartbeat-interval": {"current-value": True}}}},
        {CONFIG_MEMBER: {"idle-config": {"ack-timeout": {"current-value-decimal": "2.001"}}}},
        {CONFIG_MEMBER: {"idle-config": {"ack-timeout": {"current-value-decimal": "two"}}}},
        {CONFIG_MEMBER: {"idle-config": {"ack-timeout": {"current-value": 2}}}},
        {"ietf-dots-signal-channel:heartbeat": {"peer-hb-status": True}},
    ],
)
def test_malformed_put_is_bad_request(body: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as exc:
        SessionConfig().put(1, body)
    assert exc.value.coap_code == Code.BAD_REQUEST
    assert not isinstance(exc.value, UnacceptableConfigError)


def test_delete_resets_to_defaults_and_forgets_sid() -> None:
    cfg = SessionConfig()
    cfg.put(50, FIG23)
    assert cfg.delete(50) == Code.DELETED
    assert cfg.sid is None
    assert cfg.values(IDLE) == ConfigSet()
    cfg.put(50, FIG23)
    assert cfg.delete() == Code.DELETED  # bootstrap/reboot DELETE without 'sid' (§4.5.4)
    assert cfg.put(1, FIG23).code == Code.CREATED  # a rebooted client may start again


# -------------------------------------------------------------------------------- applying


def test_effective_switches_between_idle_and_mitigating() -> None:
    cfg = SessionConfig()
    cfg.put(1, build_put_body(
        mitigating={Attribute.HEARTBEAT_INTERVAL: 15, Attribute.ACK_TIMEOUT: Decimal("1.5"),
                    Attribute.MISSING_HB_ALLOWED: 5},
        idle={Attribute.HEARTBEAT_INTERVAL: 120, Attribute.MAX_RETRANSMIT: 4,
              Attribute.ACK_RANDOM_FACTOR: Decimal("2")},
    ))
    mit = cfg.effective(mitigating=True)
    assert mit.kind is MIT
    assert (mit.heartbeat_interval, mit.missing_hb_allowed) == (15, 5)
    assert mit.params.ack_timeout == 1.5
    assert mit.params.max_retransmit == 3
    idle = cfg.effective(mitigating=False)
    assert idle.kind is IDLE
    assert (idle.heartbeat_interval, idle.missing_hb_allowed) == (120, 15)
    assert idle.params.max_retransmit == 4
    assert idle.params.ack_random_factor == 2.0
    assert idle.params.ack_timeout == 2.0
    assert idle.params.probing_rate == 5.0


def test_policy_rejects_inconsistent_bounds() -> None:
    with pytest.raises(ValueError):
        ConfigBounds(default=ConfigSet(heartbeat_interval=10))
    with pytest.raises(ValueError):
        ConfigBounds(minimum=ConfigSet(heartbeat_interval=300))


# -------------------------------------------------------------------------------- paths


def test_paths() -> None:
    assert config_path() == (".well-known", "dots", "config")
    assert config_path(123) == (".well-known", "dots", "config", "sid=123")
    assert parse_config_path(config_path(123)) == 123
    assert parse_config_path(config_path()) is None
    assert parse_config_path(config_path(2**32 - 1)) == 2**32 - 1  # uint32 (RFC 9132 §5.3)
    for bad in (("cuid=abc",), ("sid=",), ("sid=-1",), ("sid=1", "x"), ("sid=1x",),
                ("sid=4294967296",), ("sid=" + "9" * 40,), ("sid=٣",)):
        with pytest.raises(ConfigError):
            parse_config_path((*config_path(), *bad))
    with pytest.raises(ConfigError):
        parse_config_path((".well-known", "dots", "hb"))


# -------------------------------------------------------------------------------- client


def test_parse_figure_20_response() -> None:
    server = parse_config_response(roundtrip(FIG20))
    hb = server.mitigating[Attribute.HEARTBEAT_INTERVAL]
    assert hb == Advertised(15, 240, 30)
    assert server.idle[Attribute.ACK_TIMEOUT] == Advertised(
        Decimal("1.00"), Decimal("30.00"), Decimal("2.00"))
    assert server.current(IDLE) == ConfigSet(probing_rate=15)


def test_parse_response_tolerates_missing_attributes() -> None:
    body = {CONFIG_MEMBER: {"idle-config": {"heartbeat-interval": {"current-value": 60}}}}
    server = parse_config_response(body)
    assert server.current(IDLE).heartbeat_interval == 60
    assert server.current(MIT) == ConfigSet()
    with pytest.raises(ConfigError):
        parse_config_response({CONFIG_MEMBER: {"idle-config": {"heartbeat-interval": {"x": 1}}}})


def test_choose_values_clamps_into_advertised_range() -> None:
    server = parse_config_response(FIG20)
    chosen = choose_values(server.mitigating, {
        Attribute.HEARTBEAT_INTERVAL: 5,
        Attribute.MISSING_HB_ALLOWED: 50,
        Attribute.ACK_TIMEOUT: Decimal("0.5"),
        Attribute.ACK_RANDOM_FACTOR: Decimal("2.25"),
    })
    assert chosen == {Attribute.HEARTBEAT_INTERVAL: 15, Attribute.MISSING_HB_ALLOWED: 20,
                      Attribute.ACK_TIMEOUT: Decimal("1.00"),
                      Attribute.ACK_RANDOM_FACTOR: Decimal("2.25")}
    assert choose_values(server.idle, {Attribute.HEARTBEAT_INTERVAL: 0}) == {
        Attribute.HEARTBEAT_INTERVAL: 0}


def test_client_put_body_figure_23_shape_and_accepted_by_server() -> None:
    mitigating = ConfigSet(probing_rate=15)
    idle = {Attribute.HEARTBEAT_INTERVAL: 0, Attribute.MAX_RETRANSMIT: 3,
            Attribute.ACK_TIMEOUT: Decimal(2), Attribute.ACK_RANDOM_FACTOR: Decimal("1.5")}
    body = build_put_body(mitigating, idle)
    assert body == FIG23
    validate_request(body)
    assert roundtrip(body) == FIG23
    assert parse_put_body(body)[IDLE][Attribute.HEARTBEAT_INTERVAL] == 0


def test_client_put_body_reliable_and_empty() -> None:
    body = build_put_body(ConfigSet(), reliable=True)
    validate_request(body)
    assert set(body[CONFIG_MEMBER]["mitigating-config"]) == {"heartbeat-interval", "probing-rate"}
    with pytest.raises(ValueError):
        build_put_body()


def test_server_body_not_mutated_by_client_parse() -> None:
    body = copy.deepcopy(FIG23)
    parse_put_body(body)
    assert body == FIG23


def test_sid_allocator_and_refresh() -> None:
    sids = SidAllocator(123)
    assert [sids.next(), sids.next()] == [123, 124]
    assert refresh_delay(None, attack_active=False) == pytest.approx(54.0)
    assert refresh_delay(3600, attack_active=False) == pytest.approx(3240.0)
    assert refresh_delay(3600, attack_active=True) is None  # RFC 9132 §4.5.3 MUST NOT
    assert refresh_delay(2**32 - 1, attack_active=False) is None


def test_operator_policy_change_drops_unacceptable_values() -> None:
    cfg = SessionConfig()
    cfg.put(1, build_put_body(idle={Attribute.HEARTBEAT_INTERVAL: 200,
                                    Attribute.MAX_RETRANSMIT: 4}))
    narrower = ConfigBounds(maximum=ConfigSet(heartbeat_interval=120, missing_hb_allowed=20,
                                              probing_rate=20, max_retransmit=15,
                                              ack_timeout=Decimal(30),
                                              ack_random_factor=Decimal(4)))
    assert cfg.set_policy(ConfigPolicy(idle=narrower)) is True
    assert cfg.values(IDLE).heartbeat_interval == 30
    assert cfg.values(IDLE).max_retransmit == 4
    idle = cfg.discovery_body()[CONFIG_MEMBER]["idle-config"]
    assert idle["heartbeat-interval"]["max-value"] == 120
    assert cfg.set_policy(ConfigPolicy(idle=narrower)) is False
