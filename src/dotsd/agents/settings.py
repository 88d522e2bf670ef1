"""What a DOTS agent runs with: the documented settings dataclasses of :func:`dotsd.agents.serve`.

:class:`ServerSettings` is everything a DOTS server agent needs (where it listens, its PKI and
state, the operator's policy and session-configuration bounds, the mitigator, the redirection,
the per-peer CoAP limits, the size of one mitigation request). The ``dotsd server`` command
builds it from its TOML file and flags (:mod:`dotsd.cli.settings`); a program or a test builds
it directly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from dotsd.coap.exchange import EndpointConfig
from dotsd.defaults import DEFAULT_BIND, DEFAULT_PORT
from dotsd.mitigate import registry
from dotsd.signal.config import Attribute, ConfigBounds, ConfigPolicy, ConfigSetKind
from dotsd.signal.policy import (
    DEFAULT_REQUEST_LIMITS,
    LAB,
    ClientPolicy,
    Policy,
    PolicySet,
    RequestLimits,
)
from dotsd.signal.redirect import Redirection

__all__ = [
    "DEFAULT_BIND",
    "DEFAULT_PORT",
    "LIMIT_FIELDS",
    "LISTENER_LIMIT_FIELDS",
    "REQUEST_LIMIT_FIELDS",
    "TRANSPORTS",
    "ListenerLimits",
    "MitigatorSettings",
    "ServerSettings",
]

TRANSPORTS: Final = ("dtls", "tls")  # RFC 9132 §4.3: DTLS over UDP, TLS over TCP
# [limits] key -> EndpointConfig field (dotsd.coap.exchange, where each rule is cited)
LIMIT_FIELDS: Final = {"max-observations": "max_observers_per_peer",
                        "max-uploads": "max_uploads_per_peer",
                        "max-upload-bytes": "max_upload_bytes_per_peer",
                        "max-body-size": "max_body_size",
                        "max-block2-bodies": "max_block2_bodies_per_peer"}
# [limits] key -> ListenerLimits field: what peers not yet authenticated may hold
# (dotsd.transport.admission)
LISTENER_LIMIT_FIELDS: Final = {"max-pending-handshakes": "pending",
                                "max-pending-per-source": "pending_per_source",
                                "max-tls-connections": "tls_connections",
                                "max-dtls-sessions": "dtls_sessions"}
# [limits] key -> RequestLimits field (dotsd.signal.policy): the size of one mitigation request
REQUEST_LIMIT_FIELDS: Final = {"max-target-prefixes": "target_prefix",
                                "max-target-port-ranges": "target_port_range",
                                "max-target-protocols": "target_protocol",
                                "max-target-fqdns": "target_fqdn",
                                "max-target-uris": "target_uri",
                                "max-alias-names": "alias_name"}


@dataclass(frozen=True, slots=True)
class ListenerLimits:
    """Per listener: handshakes pending in total and per source address (IPv6: per /64),
    TLS connections and DTLS sessions in all; a full pending pool evicts its oldest entry,
    never an authenticated one (dotsd.transport.admission)."""

    pending: int = 1_000
    pending_per_source: int = 16
    tls_connections: int = 20_000
    dtls_sessions: int = 100_000

    def __post_init__(self) -> None:
        if min(self.pending, self.pending_per_source, self.tls_connections,
               self.dtls_sessions) < 1:
            raise ValueError("listener limits must be positive")


@dataclass(frozen=True, slots=True)
class MitigatorSettings:
    """Which mitigator plugin (:mod:`dotsd.mitigate.registry`) and its own options."""

    name: str = registry.DEFAULT
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Everything a DOTS server agent (``dotsd server``) runs with. ``policy`` None is lab mode
    (:data:`~dotsd.signal.policy.LAB`); ``pki`` / ``state`` None: not configured (the command
    line must give them)."""

    bind: str = DEFAULT_BIND
    port: int = DEFAULT_PORT
    transports: tuple[str, ...] = TRANSPORTS
    pki: Path | None = None
    state: Path | None = None
    policy: Policy | None = None
    clients: tuple[ClientPolicy, ...] = ()
    refuse_unlisted: bool = False
    session_config: ConfigPolicy = field(default_factory=ConfigPolicy)
    mitigator: MitigatorSettings = field(default_factory=MitigatorSettings)
    redirect: Redirection | None = None
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    request_limits: RequestLimits = DEFAULT_REQUEST_LIMITS
    listener_limits: ListenerLimits = field(default_factory=ListenerLimits)
    # (PSK identity, key) of [[client]] entries with a psk-key: DTLS accepts them. Secret:
    # never written out by to_dict / describe.
    psk_keys: tuple[tuple[bytes, bytes], ...] = field(default=(), compare=False, repr=False)
    source: str | None = field(default=None, compare=False)
    # Who dials is independent of the DOTS role (RFC 9066 §5.1, Call Home): ``listen`` False
    # opens no listener; ``call_home`` lists (host, port) of Call Home DOTS clients this
    # server dials, as the (D)TLS client, and serves over the links it made.
    listen: bool = True
    call_home: tuple[tuple[str, int], ...] = ()

    @property
    def lab_mode(self) -> bool:
        return self.policy is None

    @property
    def effective_policy(self) -> Policy:
        return LAB if self.policy is None else self.policy

    @property
    def policy_set(self) -> PolicySet:
        """What the server applies: each listed client's own policy, and the default (none
        with ``unlisted-clients = "refuse"``) for the others."""
        return PolicySet(None if self.refuse_unlisted else self.effective_policy, self.clients,
                         self.request_limits)

    def replace(self, **changes: Any) -> ServerSettings:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The settings in the file's shape (TOML / JSON types): loading it gives back equal
        settings."""
        server: dict[str, Any] = {"bind": self.bind, "port": self.port,
                                  "transports": list(self.transports)}
        if self.pki is not None:
            server["pki"] = str(self.pki)
        if self.state is not None:
            server["state"] = str(self.state)
        result: dict[str, Any] = {"server": server}
        if self.policy is not None:
            result["policy"] = _policy_dict(self.policy)
            if self.refuse_unlisted:
                result["policy"]["unlisted-clients"] = "refuse"
        if self.clients:
            result["client"] = [{"name": c.name, c.match.kind: c.match.value,
                                 **_policy_dict(c.policy)} for c in self.clients]
        result["session-config"] = _session_dict(self.session_config)
        result["mitigator"] = {"name": self.mitigator.name,
                               "options": _plain(self.mitigator.options)}
        result["limits"] = {key: getattr(self.endpoint, name)
                            for key, name in LIMIT_FIELDS.items()}
        result["limits"].update((key, getattr(self.request_limits, name))
                                for key, name in REQUEST_LIMIT_FIELDS.items())
        result["limits"].update((key, getattr(self.listener_limits, name))
                                for key, name in LISTENER_LIMIT_FIELDS.items())
        if self.redirect is not None:
            result["redirect"] = {"alt-server": self.redirect.alt_server,
                                  "alt-server-record": list(self.redirect.records),
                                  "ttl": self.redirect.ttl}
        return result


def _number(value: int | Decimal) -> int | float:
    return float(value) if isinstance(value, Decimal) else value


def _policy_dict(policy: Policy) -> dict[str, Any]:
    result: dict[str, Any] = {
        "allowed-prefixes": [str(p) for p in policy.allowed_prefixes],
        "allowed-domains": list(policy.allowed_domains),
        "max-lifetime": policy.max_lifetime,
        "allow-indefinite": policy.allow_indefinite,
        "retry-after": policy.retry_after,
    }
    if policy.max_mitigations_per_client is not None:
        result["max-mitigations-per-client"] = policy.max_mitigations_per_client
    if policy.max_requests_per_second is not None:
        result["max-requests-per-second"] = policy.max_requests_per_second
    return result


def _bounds_dict(bounds: ConfigBounds) -> dict[str, Any]:
    result: dict[str, Any] = {
        attr.value: {"min": _number(bounds.minimum.get(attr)),
                     "max": _number(bounds.maximum.get(attr)),
                     "default": _number(bounds.default.get(attr))}
        for attr in Attribute
    }
    result["allow-heartbeat-disable"] = bounds.allow_heartbeat_disable
    return result


def _session_dict(policy: ConfigPolicy) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if policy.max_age is not None:
        result["max-age"] = policy.max_age
    for kind in ConfigSetKind:
        result[kind.value.removesuffix("-config")] = _bounds_dict(policy.bounds(kind))
    return result


def _plain(value: object) -> Any:
    """Plugin options as plain dicts / lists (MappingProxyType is not serialisable)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


