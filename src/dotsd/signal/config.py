"""DOTS signal channel session configuration (RFC 9132 §4.5), sans-IO.

Server side: a :class:`ConfigPolicy` (operator-settable minimum / maximum / default per
attribute, for ``mitigating-config`` and ``idle-config``) and one :class:`SessionConfig` per
DOTS signal channel session, which answers GET (discovery, §4.5.1), PUT with ``sid`` (§4.5.2)
and DELETE (§4.5.4) and tells which values apply now (idle vs mitigating, §4.5) as
:class:`~dotsd.coap.params.TransmissionParameters` plus the heartbeat values.

Client side: :func:`parse_config_response` reads a GET response (Figure 20 shape),
:func:`choose_values` fits wished values into what the server advertised, and
:func:`build_put_body` writes the PUT body (Figure 22/23 shape); :class:`SidAllocator` gives
monotonically increasing 'sid' values and :func:`refresh_delay` the refresh time (§4.5.3).

Bodies are JSON-shaped (RFC 7951, as :func:`dotsd.model.codec.from_cbor` gives them): uint16
values as numbers, decimal64 values (``ack-timeout``, ``ack-random-factor``, 2 fraction digits)
as strings such as ``"2.00"``. Errors are :class:`ConfigError` subclasses carrying the CoAP
response code (§4.5.2: 4.00 for a malformed request, 4.22 for unacceptable values).

Only the attributes of RFC 9132's own module are handled; the RFC 9362 robust-transmission
attributes (``max-payloads``, ``non-max-retransmit``, ...) augment the same containers and are
rejected as unknown here (4.00) until they are supported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import Enum
from typing import Any, Final

from dotsd.coap.numbers import Code
from dotsd.coap.params import TransmissionParameters, dots_defaults
from dotsd.errors import PeerError
from dotsd.model.errors import ModelError
from dotsd.signal.attributes import Attribute

__all__ = [
    "CONFIG_MEMBER",
    "CONFIG_PATH",
    "Advertised",
    "Attribute",
    "ConfigBounds",
    "ConfigError",
    "ConfigNotFoundError",
    "ConfigPolicy",
    "ConfigPutOutcome",
    "ConfigSet",
    "ConfigSetKind",
    "EffectiveConfig",
    "ServerConfig",
    "SessionConfig",
    "SidAllocator",
    "UnacceptableConfigError",
    "Value",
    "build_put_body",
    "choose_values",
    "config_path",
    "parse_config_path",
    "parse_config_response",
    "parse_put_body",
    "refresh_delay",
]

CONFIG_MEMBER: Final = "ietf-dots-signal-channel:signal-config"  # RFC 9132 §4.5.1, Table 5 key 30
CONFIG_PATH: Final = (".well-known", "dots", "config")  # RFC 9132 §4.2 Table 1
MAX_SID: Final = 2**32 - 1  # 'sid' is a uint32 (RFC 9132 §5.3)
UINT16_MAX: Final = 0xFFFF
DECIMAL_PLACES: Final = Decimal("0.01")  # decimal64 fraction-digits 2 (RFC 9132 §5.3)

Value = int | Decimal
"""An attribute value: int for the uint16 attributes, Decimal for the decimal64 ones."""


class ConfigError(PeerError, ModelError):
    """A session configuration request the server refuses; 4.00 unless a subclass says
    otherwise (RFC 9132 §4.5.2: "missing a mandatory attribute, does not include a 'sid'
    Uri-Path, or contains one or more invalid or unknown parameters")."""


class UnacceptableConfigError(ConfigError):
    """Values outside the server's acceptable range: 4.22 (RFC 9132 §4.5.2)."""

    coap_code = Code.UNPROCESSABLE_ENTITY


class ConfigNotFoundError(ConfigError):
    """GET with a 'sid' the server does not hold (RFC 7252 §5.9.2.5, 4.04)."""

    coap_code = Code.NOT_FOUND


class ConfigSetKind(Enum):
    """RFC 9132 §4.5: one set applies while a mitigation is active, the other when idle."""

    MITIGATING = "mitigating-config"
    IDLE = "idle-config"


@dataclass(frozen=True, slots=True)
class ConfigSet:
    """One value per attribute. The defaults are RFC 9132 §4.5.2's RECOMMENDED values (and the
    YANG defaults of §5.3): heartbeat 30 s, 15 missing heartbeats, probing-rate 5 B/s,
    max-retransmit 3, ack-timeout 2 s, ack-random-factor 1.5."""

    heartbeat_interval: int = 30
    missing_hb_allowed: int = 15
    probing_rate: int = 5
    max_retransmit: int = 3
    ack_timeout: Decimal = Decimal("2.00")
    ack_random_factor: Decimal = Decimal("1.50")

    def get(self, attr: Attribute) -> Value:
        value: Value = getattr(self, attr.field_name)
        return value

    def replace(self, values: Mapping[Attribute, Value]) -> ConfigSet:
        changes: dict[str, Any] = {}
        for attr, value in values.items():
            changes[attr.field_name] = _typed(attr, value)
        return dataclasses.replace(self, **changes)

    def as_mapping(self) -> dict[Attribute, Value]:
        return {attr: self.get(attr) for attr in Attribute}

    def transmission_parameters(
        self, base: TransmissionParameters | None = None
    ) -> TransmissionParameters:
        """The CoAP values (RFC 7252 §4.8) of this set; the rest (NSTART, ...) from ``base``
        (default :func:`dots_defaults`). RFC 9132 §4.5.2: "The DOTS agents MUST use the
        negotiated values for message transmission parameters and default values for
        non-negotiated message transmission parameters"."""
        params = (base or dots_defaults()).copy()
        params.ack_timeout = float(self.ack_timeout)
        params.ack_random_factor = float(self.ack_random_factor)
        params.max_retransmit = self.max_retransmit
        params.probing_rate = float(self.probing_rate)
        params.validate()
        return params


def _typed(attr: Attribute, value: Value) -> Value:
    if attr.is_decimal:
        return Decimal(value).quantize(DECIMAL_PLACES)
    if isinstance(value, Decimal):
        if value != value.to_integral_value():
            raise ValueError(f"{attr.value} takes an integer, not {value}")
        return int(value)
    return int(value)


@dataclass(frozen=True, slots=True)
class ConfigBounds:
    """The server's acceptable range and default (its ``current-value`` before a client
    configures anything) for one configuration set.

    The default ranges are the example values of RFC 9132 Figure 20, whose heartbeat range is
    the RECOMMENDED 15-240 s of §4.5.2 (RFC 8085: no heartbeat more often than every 15 s).
    ``heartbeat-interval`` 0 disables heartbeats (§4.5.1); it is accepted outside the range
    when ``allow_heartbeat_disable`` (Figure 23 disables them in ``idle-config``).
    """

    minimum: ConfigSet = ConfigSet(heartbeat_interval=15, missing_hb_allowed=3, probing_rate=5,
                                   max_retransmit=2, ack_timeout=Decimal("1.00"),
                                   ack_random_factor=Decimal("1.10"))
    maximum: ConfigSet = ConfigSet(heartbeat_interval=240, missing_hb_allowed=20,
                                   probing_rate=20, max_retransmit=15,
                                   ack_timeout=Decimal("30.00"),
                                   ack_random_factor=Decimal("4.00"))
    default: ConfigSet = ConfigSet()
    allow_heartbeat_disable: bool = True

    def __post_init__(self) -> None:
        for attr in Attribute:
            lo, hi, dflt = self.minimum.get(attr), self.maximum.get(attr), self.default.get(attr)
            if lo > hi:
                raise ValueError(f"{attr.value}: minimum {lo} above maximum {hi}")
            if not self.acceptable(attr, dflt):
                raise ValueError(f"{attr.value}: default {dflt} outside {lo}..{hi}")
            if not attr.is_decimal and hi > UINT16_MAX:
                raise ValueError(f"{attr.value}: maximum {hi} exceeds uint16")
        # What TransmissionParameters (RFC 7252 §4.8) accepts: ACK_RANDOM_FACTOR >= 1,
        # ACK_TIMEOUT > 0, MAX_RETRANSMIT <= 15, PROBING_RATE > 0.
        if self.minimum.ack_random_factor < 1 or self.minimum.ack_timeout <= 0:
            raise ValueError("ack-random-factor must be >= 1 and ack-timeout > 0")
        if self.maximum.max_retransmit > 15:
            raise ValueError("max-retransmit above 15 is not supported by the CoAP layer")
        if self.minimum.probing_rate <= 0:
            raise ValueError("probing-rate must be positive")

    def acceptable(self, attr: Attribute, value: Value) -> bool:
        if attr is Attribute.HEARTBEAT_INTERVAL and value == 0 and self.allow_heartbeat_disable:
            return True
        return self.minimum.get(attr) <= value <= self.maximum.get(attr)


DEFAULT_CONFIG_MAX_AGE: Final = 3600  # s: clients refresh hourly, not every minute (§4.5.3)


@dataclass(frozen=True, slots=True)
class ConfigPolicy:
    """The server's operator-settable configuration policy, one :class:`ConfigBounds` per set
    (RFC 9132 §4.5: "The same or distinct configuration sets may be used")."""

    mitigating: ConfigBounds = field(default_factory=ConfigBounds)
    idle: ConfigBounds = field(default_factory=ConfigBounds)
    max_age: int | None = None
    """Max-Age (s) to send with configuration responses (RFC 9132 §4.5.3: SHOULD be returned;
    "RECOMMENDED ... in GET responses", else clients refresh every 60 s); None: the default,
    :data:`DEFAULT_CONFIG_MAX_AGE`. 0 is NOT RECOMMENDED; 2**32-1 means an infinite
    lifetime."""

    @property
    def response_max_age(self) -> int:
        """The Max-Age configuration responses carry."""
        return DEFAULT_CONFIG_MAX_AGE if self.max_age is None else self.max_age

    def bounds(self, kind: ConfigSetKind) -> ConfigBounds:
        return self.mitigating if kind is ConfigSetKind.MITIGATING else self.idle


@dataclass(frozen=True, slots=True)
class EffectiveConfig:
    """What applies to the session now: the CoAP endpoint's parameters for the peer and the
    heartbeat monitor's values (``heartbeat_interval`` 0: heartbeats off, RFC 9132 §4.5.1)."""

    kind: ConfigSetKind
    values: ConfigSet
    params: TransmissionParameters

    @property
    def heartbeat_interval(self) -> int:
        return self.values.heartbeat_interval

    @property
    def missing_hb_allowed(self) -> int:
        return self.values.missing_hb_allowed


@dataclass(frozen=True, slots=True)
class ConfigPutOutcome:
    code: Code  # 2.01 Created (new sid) or 2.04 Changed (same sid), RFC 9132 §4.5.2
    sid: int


# --------------------------------------------------------------------------------------------
# Uri-Path


def config_path(sid: int | None = None) -> tuple[str, ...]:
    """Uri-Path of a configuration request, with ``sid=N`` when given (RFC 9132 §4.5.2)."""
    return (*CONFIG_PATH, f"sid={sid}") if sid is not None else CONFIG_PATH


def parse_config_path(path: Sequence[str]) -> int | None:
    """The ``sid`` of a ``/.well-known/dots/config[/sid=N]`` Uri-Path, or None.

    RFC 9132 §4.5.2: 'cuid' MUST NOT be used for session configuration; a non-integer or empty
    'sid' is invalid (§4.4.2: Uri-Path parameters with empty values MUST NOT be present).
    """
    if tuple(path[:3]) != CONFIG_PATH:
        raise ConfigError(f"not a session configuration path: /{'/'.join(path)}")
    rest = list(path[3:])
    if not rest:
        return None
    if len(rest) > 1:
        raise ConfigError(f"unexpected Uri-Path parameters {rest[1:]}")
    name, _, value = rest[0].partition("=")
    if name != "sid":
        raise ConfigError(f"Uri-Path parameter {name!r} not allowed on /config "
                          "(RFC 9132 §4.5.2: only 'sid'; 'cuid' MUST NOT be used)")
    # RFC 9132 §5.3: 'sid' is a uint32.
    if not value.isascii() or not value.isdigit() or len(value) > 10 or int(value) > MAX_SID:
        raise ConfigError(f"'sid' must be an unsigned 32-bit integer, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------
# Bodies


def _format(attr: Attribute, value: Value) -> int | str:
    """JSON-shaped value: uint16 as a number, decimal64 as a string with 2 fraction digits
    (RFC 7951 §6.1, as in RFC 9132 Figure 20)."""
    if attr.is_decimal:
        return str(Decimal(value).quantize(DECIMAL_PLACES))
    return int(value)


def _parse_value(attr: Attribute, raw: object, where: str) -> Value:
    """A JSON-shaped (or CBOR-decoded) value of ``attr``; invalid types/ranges are 4.00."""
    if attr.is_decimal:
        if isinstance(raw, bool) or not isinstance(raw, str | int | Decimal):
            raise ConfigError(f"expected a decimal64, got {raw!r}", path=where)
        try:
            dec = Decimal(raw)
        except InvalidOperation:
            raise ConfigError(f"not a decimal number: {raw!r}", path=where) from None
        if not dec.is_finite() or dec != dec.quantize(DECIMAL_PLACES):
            raise ConfigError(f"decimal64 with at most 2 fraction digits expected, got {raw!r}",
                              path=where)
        return dec.quantize(DECIMAL_PLACES)
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= UINT16_MAX:
        raise ConfigError(f"expected a uint16, got {raw!r}", path=where)
    return raw


def _member_content(body: Mapping[str, Any]) -> Mapping[str, Any]:
    if not isinstance(body, Mapping) or set(body) != {CONFIG_MEMBER}:
        raise ConfigError(f"the body must have the single member {CONFIG_MEMBER!r}", path="/")
    content = body[CONFIG_MEMBER]
    if not isinstance(content, Mapping):
        raise ConfigError("expected an object", path=f"/{CONFIG_MEMBER}")
    unknown = set(content) - {k.value for k in ConfigSetKind}
    if unknown:
        raise ConfigError(f"unknown member(s) {sorted(unknown)}", path=f"/{CONFIG_MEMBER}")
    return content


def _attr_containers(content: Mapping[str, Any], kind: ConfigSetKind
                     ) -> Mapping[str, Any] | None:
    where = f"/{CONFIG_MEMBER}/{kind.value}"
    container = content.get(kind.value)
    if container is None:
        return None
    if not isinstance(container, Mapping):
        raise ConfigError("expected an object", path=where)
    known = {a.value for a in Attribute}
    unknown = set(container) - known
    if unknown:
        raise ConfigError(f"unknown attribute(s) {sorted(unknown)}", path=where)
    for name, leaves in container.items():
        if not isinstance(leaves, Mapping):
            raise ConfigError("expected an object", path=f"{where}/{name}")
    return container


def parse_put_body(body: Mapping[str, Any]) -> dict[ConfigSetKind, dict[Attribute, Value]]:
    """The values a DOTS client's PUT conveys, per set (RFC 9132 §4.5.2, Figure 22).

    Only ``current-value`` / ``current-value-decimal`` may appear (the min/max leaves are
    server-to-client-only, §5.3); at least one attribute MUST be present. Raises
    :class:`ConfigError` (4.00). Ranges are not checked here (see :meth:`SessionConfig.put`).
    """
    content = _member_content(body)
    result: dict[ConfigSetKind, dict[Attribute, Value]] = {}
    for kind in ConfigSetKind:
        container = _attr_containers(content, kind)
        if container is None:
            continue
        values: dict[Attribute, Value] = {}
        for attr in Attribute:
            leaves = container.get(attr.value)
            if leaves is None:
                continue
            where = f"/{CONFIG_MEMBER}/{kind.value}/{attr.value}"
            leaf = attr.leaf("current")
            extra = set(leaves) - {leaf}
            if extra:
                raise ConfigError(f"only {leaf!r} may be sent by a DOTS client, got "
                                  f"{sorted(extra)}", path=where)
            if leaf not in leaves:
                # An empty attribute container carries no value (RFC 9132 §4.5.2).
                continue
            values[attr] = _parse_value(attr, leaves[leaf], f"{where}/{leaf}")
        result[kind] = values
    if not any(result.values()):
        # RFC 9132 §4.5.2: "At least one of the attributes ... MUST be present".
        raise ConfigError("at least one configuration attribute must be present",
                          path=f"/{CONFIG_MEMBER}")
    return result


def build_put_body(
    mitigating: Mapping[Attribute, Value] | ConfigSet | None = None,
    idle: Mapping[Attribute, Value] | ConfigSet | None = None,
    *,
    reliable: bool = False,
) -> dict[str, Any]:
    """A DOTS client's PUT body (RFC 9132 Figure 22/23): only ``current-value(-decimal)``
    leaves; either set may be omitted, and each set holds only the attributes given.

    With ``reliable`` (TCP/TLS) the transmission-related attributes are left out: they are
    negotiated only for DOTS over unreliable transports (RFC 9132 §4.5).
    """
    content: dict[str, Any] = {}
    for kind, values in ((ConfigSetKind.MITIGATING, mitigating), (ConfigSetKind.IDLE, idle)):
        if values is None:
            continue
        mapping = values.as_mapping() if isinstance(values, ConfigSet) else values
        container = {
            attr.value: {attr.leaf("current"): _format(attr, mapping[attr])}
            for attr in Attribute
            if attr in mapping and not (reliable and attr.transmission_related)
        }
        if container:
            content[kind.value] = container
    if not content:
        raise ValueError("RFC 9132 §4.5.2: at least one attribute must be present in a PUT")
    return {CONFIG_MEMBER: content}


@dataclass(frozen=True, slots=True)
class Advertised:
    """What a server's GET response says of one attribute (any leaf may be absent)."""

    minimum: Value | None = None
    maximum: Value | None = None
    current: Value | None = None


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """A parsed GET /config response (RFC 9132 §4.5.1, Figure 19/20)."""

    mitigating: Mapping[Attribute, Advertised]
    idle: Mapping[Attribute, Advertised]

    def advertised(self, kind: ConfigSetKind) -> Mapping[Attribute, Advertised]:
        return self.mitigating if kind is ConfigSetKind.MITIGATING else self.idle

    def current(self, kind: ConfigSetKind) -> ConfigSet:
        """The server's current values; attributes it did not state take the RFC 9132
        defaults (§4.5.2: "default values for non-negotiated message transmission
        parameters")."""
        values = {a: adv.current for a, adv in self.advertised(kind).items()
                  if adv.current is not None}
        return ConfigSet().replace(values)


def parse_config_response(body: Mapping[str, Any]) -> ServerConfig:
    """Parse a DOTS server's GET /config response (RFC 9132 Figure 19/20). Raises
    :class:`ConfigError` on a malformed body."""
    content = _member_content(body)
    sets: dict[ConfigSetKind, dict[Attribute, Advertised]] = {}
    for kind in ConfigSetKind:
        container = _attr_containers(content, kind) or {}
        parsed: dict[Attribute, Advertised] = {}
        for attr in Attribute:
            leaves = container.get(attr.value)
            if leaves is None:
                continue
            where = f"/{CONFIG_MEMBER}/{kind.value}/{attr.value}"
            names = {w: attr.leaf(w) for w in ("min", "max", "current")}
            extra = set(leaves) - set(names.values())
            if extra:
                raise ConfigError(f"unknown leaves {sorted(extra)}", path=where)
            got = {w: (_parse_value(attr, leaves[n], f"{where}/{n}") if n in leaves else None)
                   for w, n in names.items()}
            parsed[attr] = Advertised(got["min"], got["max"], got["current"])
        sets[kind] = parsed
    return ServerConfig(sets[ConfigSetKind.MITIGATING], sets[ConfigSetKind.IDLE])


def choose_values(
    advertised: Mapping[Attribute, Advertised], wanted: Mapping[Attribute, Value]
) -> dict[Attribute, Value]:
    """Fit the values a client wants into the range the server advertised (clamping), so that
    the PUT is not refused with 4.22 (RFC 9132 §4.5.2). Attributes without advertised bounds
    are kept as wanted; ``heartbeat-interval`` 0 (disable, §4.5.1) is kept as is."""
    chosen: dict[Attribute, Value] = {}
    for attr, value in wanted.items():
        value = _typed(attr, value)
        adv = advertised.get(attr)
        if adv is not None and not (attr is Attribute.HEARTBEAT_INTERVAL and value == 0):
            if adv.minimum is not None and value < adv.minimum:
                value = _typed(attr, adv.minimum)
            if adv.maximum is not None and value > adv.maximum:
                value = _typed(attr, adv.maximum)
        chosen[attr] = value
    return chosen


class SidAllocator:
    """A DOTS client's 'sid' values: "This identifier MUST be generated by DOTS clients.
    'sid' values MUST increase monotonically" (RFC 9132 §4.5.2)."""

    def __init__(self, first: int = 1) -> None:
        if first < 0:
            raise ValueError("'sid' values are non-negative")
        self._next = first

    def next(self) -> int:
        sid = self._next
        self._next += 1
        return sid


INFINITE_MAX_AGE: Final = 2**32 - 1  # RFC 9132 §4.5.3: an infinite lifetime
DEFAULT_REFRESH: Final = 60.0  # RFC 9132 §4.5.3 / RFC 7252 §5.10.5: no Max-Age, 60 s


def refresh_delay(max_age: int | None, *, attack_active: bool,
                  margin: float = 0.9) -> float | None:
    """When a DOTS client refreshes its configuration with a GET carrying its 'sid'
    (RFC 9132 §4.5.3): before a non-zero Max-Age expires (here after ``margin`` x Max-Age),
    every 60 s without Max-Age, never for an infinite one (2^32-1). None also while an attack
    is active: "refresh requests MUST NOT be sent by DOTS clients". Max-Age 0 (NOT
    RECOMMENDED) gives None: the configuration is not to be cached, so nothing to refresh."""
    if attack_active or max_age == INFINITE_MAX_AGE or max_age == 0:
        return None
    if max_age is None:
        return DEFAULT_REFRESH * margin
    return max_age * margin


# --------------------------------------------------------------------------------------------
# Server-side session state


class SessionConfig:
    """The configuration of one DOTS signal channel session on the server (RFC 9132 §4.5).

    Holds the client's installed 'sid' and values over the policy's defaults. Methods return
    what to answer or raise :class:`ConfigError` with the CoAP code to answer with.
    """

    def __init__(self, policy: ConfigPolicy | None = None, *, reliable: bool = False) -> None:
        self.policy = policy or ConfigPolicy()
        self.reliable = reliable
        self.sid: int | None = None
        self._installed: dict[ConfigSetKind, dict[Attribute, Value]] = {}

    def values(self, kind: ConfigSetKind) -> ConfigSet:
        """Current values of a set: the client's installed values, the server's defaults for
        the rest (RFC 9132 §4.5.2: the values "included in the PUT request with a higher
        numeric 'sid' value will be used instead of the DOTS server's defaults")."""
        return self.policy.bounds(kind).default.replace(self._installed.get(kind, {}))

    def effective(self, mitigating: bool, base: TransmissionParameters | None = None
                  ) -> EffectiveConfig:
        """The set to follow now: 'mitigating-config' while the client has an active
        mitigation, 'idle-config' otherwise; agents MUST switch automatically when the
        mitigation activity changes (RFC 9132 §4.5)."""
        kind = ConfigSetKind.MITIGATING if mitigating else ConfigSetKind.IDLE
        values = self.values(kind)
        return EffectiveConfig(kind, values, values.transmission_parameters(base))

    def set_policy(self, policy: ConfigPolicy) -> bool:
        """The operator changed the policy: installed values no longer acceptable fall back to
        the new defaults. Returns True when the values in force changed, so that observers of
        the configuration can be notified (RFC 9132 §4.5.3: "If an Observe Option set to 0 is
        included in the configuration request, the DOTS server sends notifications of any
        configuration change")."""
        before = {kind: self.values(kind) for kind in ConfigSetKind}
        self.policy = policy
        self._installed = {
            kind: {a: v for a, v in attrs.items() if policy.bounds(kind).acceptable(a, v)}
            for kind, attrs in self._installed.items()
        }
        return any(self.values(kind) != before[kind] for kind in ConfigSetKind)

    def discovery_body(self) -> dict[str, Any]:
        """GET response body (RFC 9132 §4.5.1, Figure 19/20): min, max and current value of
        every attribute for both sets. Over a reliable transport the transmission-related
        attributes are omitted (§4.5: negotiated only over unreliable transports)."""
        content: dict[str, Any] = {}
        for kind in ConfigSetKind:
            bounds = self.policy.bounds(kind)
            current = self.values(kind)
            content[kind.value] = {
                attr.value: {
                    attr.leaf("max"): _format(attr, bounds.maximum.get(attr)),
                    attr.leaf("min"): _format(attr, bounds.minimum.get(attr)),
                    attr.leaf("current"): _format(attr, current.get(attr)),
                }
                for attr in Attribute
                if not (self.reliable and attr.transmission_related)
            }
        return {CONFIG_MEMBER: content}

    def get(self, sid: int | None = None) -> dict[str, Any]:
        """Answer a GET (2.05). With a 'sid' the client retrieves its negotiated configuration
        (RFC 9132 §4.5.2); a 'sid' not installed is 4.04 (:class:`ConfigNotFoundError`)."""
        if sid is not None and sid != self.sid:
            raise ConfigNotFoundError(f"no session configuration with sid={sid}")
        return self.discovery_body()

    def put(self, sid: int | None, body: Mapping[str, Any]) -> ConfigPutOutcome:
        """Apply a PUT (RFC 9132 §4.5.2).

        * no 'sid', malformed body, no attribute, unknown parameter → 4.00;
        * a 'sid' lower than the installed one → 4.00: 'sid' values MUST increase
          monotonically and the lower 'sid' is deleted once a higher one is installed;
        * a value outside the server's range → 4.22 (nothing is changed);
        * a new 'sid' → 2.01 (Created), the installed 'sid' → 2.04 (Changed).

        The request replaces the whole configuration: attributes it leaves out take the
        server's defaults, not earlier values.
        """
        if sid is None:
            raise ConfigError("a session configuration PUT must carry a 'sid' Uri-Path")
        if self.sid is not None and sid < self.sid:
            raise ConfigError(f"'sid' {sid} is lower than the installed {self.sid} "
                              "(RFC 9132 §4.5.2: 'sid' values MUST increase monotonically)")
        values = parse_put_body(body)
        refused = [
            f"{kind.value}/{attr.value}={_format(attr, value)}"
            for kind, attrs in values.items()
            for attr, value in attrs.items()
            if not self.policy.bounds(kind).acceptable(attr, value)
        ]
        if refused:
            raise UnacceptableConfigError(f"values not acceptable: {', '.join(refused)}")
        code = Code.CHANGED if sid == self.sid else Code.CREATED
        self.sid = sid
        self._installed = values
        return ConfigPutOutcome(code, sid)

    def delete(self, sid: int | None = None) -> Code:
        """DELETE (RFC 9132 §4.5.4): reset to the default values, 2.02 (Deleted). Also
        without any 'sid' (a client's bootstrap/reboot), which forgets the 'sid' too so a
        rebooted client may start its 'sid' sequence again."""
        del sid  # any 'sid' (or none) resets: RFC 9132 §4.5.4 gives no other outcome
        self.sid = None
        self._installed = {}
        return Code.DELETED
