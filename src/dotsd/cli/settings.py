"""The operator's configuration of ``dotsd server``: a TOML file read into :class:`ServerSettings`.

::

    [server]                 # where and how to listen (the command-line flags of the same name)
    bind = "::"
    port = 4646              # RFC 9132 §4.3: "dots-signal", UDP and TCP
    transports = ["dtls", "tls"]
    pki = "/etc/dotsd/pki"   # relative paths are relative to the file's directory
    state = "/var/lib/dotsd"

    [policy]                 # without it: lab mode (documentation prefixes only)
    allowed-prefixes = ["10.0.0.0/8", "2001:db8::/32"]
    allowed-domains = ["example.com"]
    max-lifetime = 86400
    allow-indefinite = false
    max-mitigations-per-client = 100
    retry-after = 60

    [[client]]               # a client's own domain (RFC 9132 §10); repeat per client
    name = "acme"
    common-name = "acme-dots"          # or cuid, spki-sha256, psk-identity
    allowed-prefixes = ["198.51.100.0/24"]
    max-mitigations-per-client = 20    # other limits as [policy]; unset ones inherited

    [session-config]         # RFC 9132 §4.5: what clients may negotiate
    max-age = 3600
    [session-config.idle.heartbeat-interval]
    min = 15
    max = 240
    default = 30

    [mitigator]
    name = "log"
    options = { feedback_delay = 0.5 }   # the plugin's own keys, passed as they are

    [limits]                 # per peer (RFC 7641 §4.1, RFC 7959 §2.3 and §7.1)
    max-observations = 64
    max-uploads = 4
    max-upload-bytes = 2097152
    max-body-size = 1048576
    max-block2-bodies = 16
    max-target-prefixes = 1024         # per mitigation request (RFC 9132 §4.4.1.3: 4.00)
    max-target-port-ranges = 1024
    max-target-protocols = 256
    max-target-fqdns = 64
    max-target-uris = 64
    max-alias-names = 64

Every key is checked: an unknown key, a value of the wrong type or outside its range, and a
file that is not TOML are each a :class:`ConfigFileError` whose message names the file, the
key, the value and what is expected (the TOML parser's message gives the line). Nothing else
escapes :func:`load` / :func:`from_mapping`.

Key names are kebab-case as in the YANG modules of RFC 9132 (``heartbeat-interval``,
``max-retransmit``, ...). The mitigator's ``options`` belong to the plugin, which validates
them itself when it is created.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from dotsd.agents.settings import (
    DEFAULT_BIND,
    DEFAULT_PORT,
    LIMIT_FIELDS,
    LISTENER_LIMIT_FIELDS,
    REQUEST_LIMIT_FIELDS,
    TRANSPORTS,
    ListenerLimits,
    MitigatorSettings,
    ServerSettings,
)
from dotsd.coap.exchange import EndpointConfig
from dotsd.errors import LocalError
from dotsd.mitigate import registry
from dotsd.signal.config import Attribute, ConfigBounds, ConfigPolicy, ConfigSetKind
from dotsd.signal.policy import (
    LAB,
    MATCH_KINDS,
    ClientMatch,
    ClientPolicy,
    IPNetwork,
    Policy,
    RequestLimits,
)
from dotsd.signal.redirect import Redirection

__all__ = [
    "DEFAULT_BIND",
    "DEFAULT_PORT",
    "TRANSPORTS",
    "ConfigFileError",
    "MitigatorSettings",
    "ServerSettings",
    "client_summaries",
    "describe",
    "from_mapping",
    "load",
    "policy_summary",
    "redirect_summary",
]

UINT32_MAX: Final = 2**32 - 1
INT32_MAX: Final = 2**31 - 1
UINT16_MAX: Final = 0xFFFF
DECIMAL_MAX: Final = Decimal(UINT16_MAX)

_SECTIONS: Final = ("server", "policy", "client", "session-config", "mitigator", "redirect",
                    "limits")
_REDIRECT_KEYS: Final = ("alt-server", "alt-server-record", "ttl")
_SERVER_KEYS: Final = ("bind", "port", "transports", "pki", "state")
_DOMAIN_KEYS: Final = ("allowed-prefixes", "allowed-domains")
_LIMIT_KEYS: Final = ("max-lifetime", "allow-indefinite", "max-mitigations-per-client",
                      "retry-after", "max-requests-per-second")
MAX_RATE: Final = 1_000_000.0
_POLICY_KEYS: Final = (*_DOMAIN_KEYS, *_LIMIT_KEYS, "unlisted-clients")
_CLIENT_KEYS: Final = ("name", *MATCH_KINDS, "psk-key", *_DOMAIN_KEYS, *_LIMIT_KEYS)
PSK_MIN_BYTES: Final = 16  # 128 bits; RFC 9132 §8 leaves PSK strength to RFC 7925 §4.2
_UNLISTED: Final = ("allow", "refuse")
_SESSION_KEYS: Final = ("max-age", *(k.value.removesuffix("-config") for k in ConfigSetKind))
_SET_KEYS: Final = (*(a.value for a in Attribute), "allow-heartbeat-disable")
_BOUND_KEYS: Final = ("min", "max", "default")
_MITIGATOR_KEYS: Final = ("name", "options")
_LABEL: Final = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


class ConfigFileError(LocalError, ValueError):
    """The configuration is not valid: ``source`` (the file), ``key`` (dotted path, or None
    for the whole file) and ``problem`` make one line."""

    def __init__(self, source: str, key: str | None, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        super().__init__(f"{source}: {key}: {problem}" if key else f"{source}: {problem}")


# ---------------------------------------------------------------------------------------------
# Loading


def load(path: str | Path) -> ServerSettings:
    """Read and validate a TOML configuration file. Relative paths in it (``pki``, ``state``)
    are taken relative to the file's directory."""
    path = Path(path)
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigFileError(source, None, f"cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigFileError(source, None, f"not UTF-8 text (byte {exc.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib ends its message with "(at line L, column C)" or "(at end of document)".
        where = f"(at end of document, after line {len(text.splitlines())})"
        message = str(exc).replace("(at end of document)", where)
        raise ConfigFileError(source, None, f"invalid TOML: {message}") from None
    return from_mapping(data, source=source, base=path.parent)


def from_mapping(data: Mapping[str, Any], *, source: str = "<config>",
                 base: Path | None = None) -> ServerSettings:
    """Validate parsed TOML (or any mapping of that shape); ``base``: the directory relative
    paths are relative to (None: kept as given)."""
    reader = _Reader(source, base)
    top = reader.table(data, "")
    reader.known(top, "", _SECTIONS)
    settings = ServerSettings(source=source)
    if "server" in top:
        settings = reader.server(reader.table(top["server"], "server"), settings)
    if "policy" in top:
        table = reader.table(top["policy"], "policy")
        settings = settings.replace(policy=reader.policy(table),
                                    refuse_unlisted=reader.unlisted(table))
    if "client" in top:
        settings = settings.replace(clients=reader.clients(top["client"],
                                                           settings.effective_policy),
                                    psk_keys=tuple(reader.psk_keys))
    # Sections read by one method each, into one field of the settings.
    simple: dict[str, tuple[str, Callable[[Mapping[str, Any]], object]]] = {
        "session-config": ("session_config", reader.session_config),
        "mitigator": ("mitigator", reader.mitigator),
        "redirect": ("redirect", reader.redirect),
    }
    for section, (name, read) in simple.items():
        if section in top:
            settings = settings.replace(**{name: read(reader.table(top[section], section))})
    if "limits" in top:
        table = reader.table(top["limits"], "limits")
        reader.known(table, "limits",
                     (*LIMIT_FIELDS, *REQUEST_LIMIT_FIELDS, *LISTENER_LIMIT_FIELDS))
        settings = settings.replace(endpoint=reader.limits_section(table),
                                    request_limits=reader.request_limits(table),
                                    listener_limits=reader.listener_limits(table))
    return settings


def _show(value: object) -> str:
    """A value as the operator wrote it (TOML-like), shortened."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value)
    elif isinstance(value, Mapping):
        text = "a table"
    elif isinstance(value, list | tuple):
        text = "[" + ", ".join(_show(v) for v in value[:4]) + (", ...]" if len(value) > 4
                                                                 else "]")
    else:
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


class _Reader:
    """Checks one document, raising :class:`ConfigFileError` for ``source``."""

    def __init__(self, source: str, base: Path | None) -> None:
        self.source = source
        self.base = base
        self.psk_keys: list[tuple[bytes, bytes]] = []  # from [[client]] psk-key

    def fail(self, key: str | None, problem: str) -> ConfigFileError:
        return ConfigFileError(self.source, key or None, problem)

    def bad(self, key: str, value: object, form: str) -> ConfigFileError:
        return self.fail(key, f"got {_show(value)}, expected {form}")

    # -- generic checks ------------------------------------------------------------------------

    def table(self, value: object, where: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            if not where:
                raise self.fail(None, "expected a TOML document (a table of sections)")
            raise self.bad(where, value, "a table")
        return value

    def known(self, table: Mapping[str, Any], where: str, keys: Sequence[str]) -> None:
        for key in table:
            if key not in keys:
                close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
                hint = (f" (did you mean {close[0]!r}?)" if close
                        else f"; known keys: {', '.join(keys)}")
                raise self.fail(None, f"unknown key {_join(where, key)!r}{hint}")

    def integer(self, value: object, key: str, lo: int, hi: int, unit: str = "") -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self.bad(key, value, f"an integer{unit} from {lo} to {hi}")
        return value

    def boolean(self, value: object, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.bad(key, value, "true or false")
        return value

    def string(self, value: object, key: str, form: str = "a non-empty string") -> str:
        if not isinstance(value, str) or not value or "\0" in value:
            raise self.bad(key, value, form)
        return value

    def strings(self, value: object, key: str, form: str) -> list[str]:
        if not isinstance(value, list):
            raise self.bad(key, value, f"a list of {form}")
        return [self.string(item, f"{key}[{i}]", form) for i, item in enumerate(value)]

    def path(self, value: object, key: str) -> Path:
        path = Path(self.string(value, key, "a directory path"))
        return path if self.base is None or path.is_absolute() else self.base / path

    # -- [server] ------------------------------------------------------------------------------

    def server(self, table: Mapping[str, Any], settings: ServerSettings) -> ServerSettings:
        self.known(table, "server", _SERVER_KEYS)
        changes: dict[str, Any] = {}
        if "bind" in table:
            form = 'an IP address such as "::" or "192.0.2.1"'
            bind = self.string(table["bind"], "server.bind", form)
            try:
                ipaddress.ip_address(bind)
            except ValueError:
                raise self.bad("server.bind", bind, form) from None
            changes["bind"] = bind
        if "port" in table:
            changes["port"] = self.integer(table["port"], "server.port", 0, 65535,
                                           " (0 picks a free port)")
        if "transports" in table:
            form = " or ".join(f'"{t}"' for t in TRANSPORTS)
            names = self.strings(table["transports"], "server.transports", form)
            for i, name in enumerate(names):
                if name not in TRANSPORTS or name in names[:i]:
                    raise self.bad(f"server.transports[{i}]", name,
                                   f"one of {form}, each at most once")
            if not names:
                raise self.bad("server.transports", names, f"at least one of {form}")
            changes["transports"] = tuple(t for t in TRANSPORTS if t in names)
        for key in ("pki", "state"):
            if key in table:
                changes[key] = self.path(table[key], f"server.{key}")
        return settings.replace(**changes)

    # -- [policy] ------------------------------------------------------------------------------

    def policy(self, table: Mapping[str, Any]) -> Policy:
        """RFC 9132 §4.4.1.1, §10: the client domain of every client not listed under
        [[client]]."""
        self.known(table, "policy", _POLICY_KEYS)
        prefixes, domains = self.domain(table, "policy")
        if not prefixes and not domains and not self.unlisted(table):
            raise self.fail("policy", "admits no target: give allowed-prefixes and/or "
                                      "allowed-domains (or leave [policy] out for lab mode)")
        return Policy(allowed_prefixes=prefixes, allowed_domains=domains, name="operator",
                      **self.limits(table, "policy", LAB))

    def unlisted(self, table: Mapping[str, Any]) -> bool:
        """``unlisted-clients``: True when clients not under [[client]] are refused."""
        if "unlisted-clients" not in table:
            return False
        form = " or ".join(f'"{v}"' for v in _UNLISTED)
        value = table["unlisted-clients"]
        if value not in _UNLISTED:
            raise self.bad("policy.unlisted-clients", value, form)
        return bool(value == "refuse")

    def domain(self, table: Mapping[str, Any], where: str
               ) -> tuple[tuple[IPNetwork, ...], tuple[str, ...]]:
        """'allowed-prefixes' and 'allowed-domains' of a policy table."""
        prefixes: list[IPNetwork] = []
        if "allowed-prefixes" in table:
            form = 'an IP prefix such as "10.0.0.0/8" (no host bits set)'
            key = f"{where}.allowed-prefixes"
            for i, text in enumerate(self.strings(table["allowed-prefixes"], key, form)):
                try:
                    prefixes.append(ipaddress.ip_network(text, strict=True))
                except ValueError:
                    raise self.bad(f"{key}[{i}]", text, form) from None
        domains: list[str] = []
        if "allowed-domains" in table:
            form = 'a domain name such as "example.com" (its subdomains are included)'
            key = f"{where}.allowed-domains"
            for i, text in enumerate(self.strings(table["allowed-domains"], key, form)):
                name = text.lower().removesuffix(".")
                if len(name) > 253 or not all(_LABEL.fullmatch(x) for x in name.split(".")):
                    raise self.bad(f"{key}[{i}]", text, form)
                domains.append(name)
        return tuple(prefixes), tuple(domains)

    def limits(self, table: Mapping[str, Any], where: str, base: Policy) -> dict[str, Any]:
        """Lifetimes and rate limits, those not given taken from ``base``."""
        changes: dict[str, Any] = {"max_lifetime": base.max_lifetime,
                                   "allow_indefinite": base.allow_indefinite,
                                   "max_mitigations_per_client":
                                       base.max_mitigations_per_client,
                                   "retry_after": base.retry_after,
                                   "max_requests_per_second": base.max_requests_per_second}
        if "max-lifetime" in table:  # 'lifetime' is int32 seconds (RFC 9132 §5.3)
            changes["max_lifetime"] = self.integer(table["max-lifetime"],
                                                   f"{where}.max-lifetime", 1, INT32_MAX,
                                                   " (seconds)")
        if "allow-indefinite" in table:
            changes["allow_indefinite"] = self.boolean(table["allow-indefinite"],
                                                       f"{where}.allow-indefinite")
        if "max-mitigations-per-client" in table:
            changes["max_mitigations_per_client"] = self.integer(
                table["max-mitigations-per-client"], f"{where}.max-mitigations-per-client",
                1, INT32_MAX)
        if "max-requests-per-second" in table:  # RFC 9132 §4.4.1.3 "rate-limit a client"
            key = f"{where}.max-requests-per-second"
            rate = table["max-requests-per-second"]
            form = f"a number of requests a second above 0, at most {MAX_RATE:g}"
            if (isinstance(rate, bool) or not isinstance(rate, int | float)
                    or not 0 < rate <= MAX_RATE):  # also refuses nan
                raise self.bad(key, rate, form)
            changes["max_requests_per_second"] = float(rate)
        if "retry-after" in table:  # sent as Max-Age, a uint32 (RFC 7252 §5.10.5)
            changes["retry_after"] = self.integer(table["retry-after"], f"{where}.retry-after",
                                                  0, UINT32_MAX, " (seconds)")
        return changes

    # -- [[client]] ----------------------------------------------------------------------------

    def psk_key(self, value: object, key: str) -> bytes:
        form = f"at least {PSK_MIN_BYTES} bytes in hexadecimal (e.g. from `openssl rand -hex 32`)"
        if not isinstance(value, str):
            raise self.bad(key, "(hidden)", form)
        try:
            secret = bytes.fromhex(value)
        except ValueError:
            raise self.bad(key, "(hidden)", form) from None
        if len(secret) < PSK_MIN_BYTES:
            raise self.bad(key, "(hidden)", form)
        return secret

    def clients(self, value: object, base: Policy) -> tuple[ClientPolicy, ...]:
        """One domain per client (RFC 9132 §10), limits not given inherited from ``base``."""
        if not isinstance(value, list):
            raise self.bad("client", value, "an array of tables ([[client]] sections)")
        entries: list[ClientPolicy] = []
        names: set[str] = set()
        matches: set[str] = set()
        for i, item in enumerate(value):
            where = f"client[{i}]"
            table = self.table(item, where)
            self.known(table, where, _CLIENT_KEYS)
            if "name" not in table:
                raise self.fail(where, "'name' (how logs call this client) is required")
            name = self.string(table["name"], f"{where}.name")
            if name in names:
                raise self.bad(f"{where}.name", name, "a name no other [[client]] has")
            kinds = [k for k in MATCH_KINDS if k in table]
            if len(kinds) != 1:
                raise self.fail(where, "give exactly one of " + ", ".join(MATCH_KINDS)
                                + " (how the client is recognised)")
            kind = kinds[0]
            text = self.string(table[kind], f"{where}.{kind}")
            try:
                match = ClientMatch(kind, text)
            except ValueError as exc:
                raise self.bad(f"{where}.{kind}", text, str(exc)) from None
            if match.key in matches:
                raise self.fail(f"{where}.{kind}", f"another [[client]] already has {match}")
            if "psk-key" in table:
                if kind != "psk-identity":
                    raise self.fail(f"{where}.psk-key", "only with psk-identity (the key of "
                                                        "that identity)")
                self.psk_keys.append((text.encode("utf-8"),
                                      self.psk_key(table["psk-key"], f"{where}.psk-key")))
            prefixes, domains = self.domain(table, where)
            if not prefixes and not domains:
                raise self.fail(where, "admits no target: give allowed-prefixes and/or "
                                       "allowed-domains (the client's own domain)")
            policy = Policy(allowed_prefixes=prefixes, allowed_domains=domains, name=name,
                            **self.limits(table, where, base))
            names.add(name)
            matches.add(match.key)
            entries.append(ClientPolicy(name, match, policy))
        return tuple(entries)

    # -- [session-config] ----------------------------------------------------------------------

    def session_config(self, table: Mapping[str, Any]) -> ConfigPolicy:
        """RFC 9132 §4.5: the server's acceptable ranges and defaults, per set."""
        self.known(table, "session-config", _SESSION_KEYS)
        max_age = None
        if "max-age" in table:  # RFC 9132 §4.5.3, Max-Age is a uint32
            max_age = self.integer(table["max-age"], "session-config.max-age", 0, UINT32_MAX,
                                   " (seconds)")
        sets: dict[str, ConfigBounds] = {}
        for kind in ConfigSetKind:
            name = kind.value.removesuffix("-config")
            where = f"session-config.{name}"
            if name in table:
                sets[name.replace("-", "_")] = self.bounds(self.table(table[name], where), where)
        return ConfigPolicy(max_age=max_age, **sets)

    def bounds(self, table: Mapping[str, Any], where: str) -> ConfigBounds:
        self.known(table, where, _SET_KEYS)
        base = ConfigBounds()
        found: dict[str, dict[Attribute, int | Decimal]] = {k: {} for k in _BOUND_KEYS}
        for attr in Attribute:
            if attr.value not in table:
                continue
            key = _join(where, attr.value)
            limits = self.table(table[attr.value], key)
            self.known(limits, key, _BOUND_KEYS)
            for which, value in limits.items():
                found[which][attr] = self.value(attr, value, f"{key}.{which}")
        heartbeat_off = base.allow_heartbeat_disable
        if "allow-heartbeat-disable" in table:
            heartbeat_off = self.boolean(table["allow-heartbeat-disable"],
                                         f"{where}.allow-heartbeat-disable")
        try:
            return ConfigBounds(minimum=base.minimum.replace(found["min"]),
                                maximum=base.maximum.replace(found["max"]),
                                default=base.default.replace(found["default"]),
                                allow_heartbeat_disable=heartbeat_off)
        except ValueError as exc:  # min > max, default outside, CoAP limits (config.py)
            raise self.fail(where, str(exc)) from None

    def value(self, attr: Attribute, value: object, key: str) -> int | Decimal:
        if not attr.is_decimal:  # uint16 (RFC 9132 §5.3)
            return self.integer(value, key, 0, UINT16_MAX)
        # decimal64 with 2 fraction digits (RFC 9132 §5.3)
        form = f"a number from 0 to {UINT16_MAX} with at most 2 decimals"
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.bad(key, value, form)
        if isinstance(value, float) and not math.isfinite(value):
            raise self.bad(key, value, form)
        try:
            number = Decimal(str(value))
            exact = number == number.quantize(Decimal("0.01"))
        except InvalidOperation:
            raise self.bad(key, value, form) from None
        if not exact or not 0 <= number <= DECIMAL_MAX:
            raise self.bad(key, value, form)
        return number

    # -- [redirect] ----------------------------------------------------------------------------

    def redirect(self, table: Mapping[str, Any]) -> Redirection:
        """RFC 9132 §4.6: every client is sent to an alternate server (5.03)."""
        self.known(table, "redirect", _REDIRECT_KEYS)
        if "alt-server" not in table:
            raise self.fail("redirect", "'alt-server' (the alternate server's FQDN) is "
                                        "required")
        server = self.string(table["alt-server"], "redirect.alt-server",
                             "the alternate DOTS server's domain name")
        records: list[str] = []
        if "alt-server-record" in table:
            form = "IP addresses of the alternate server"
            key = "redirect.alt-server-record"
            for i, text in enumerate(self.strings(table["alt-server-record"], key, form)):
                try:
                    records.append(str(ipaddress.ip_address(text)))
                except ValueError:
                    raise self.bad(f"{key}[{i}]", text, "an IP address") from None
        ttl = 3600
        if "ttl" in table:
            ttl = self.integer(table["ttl"], "redirect.ttl", 0, UINT32_MAX,
                               " (seconds; 4294967295: until redirected again)")
        try:
            return Redirection(server, tuple(records), ttl)
        except ValueError as exc:
            raise self.bad("redirect.alt-server", server, str(exc)) from None

    # -- [limits] ------------------------------------------------------------------------------

    def limits_section(self, table: Mapping[str, Any]) -> EndpointConfig:
        """What one peer may hold in the CoAP layer (see :class:`EndpointConfig`); the
        caller has checked the keys."""
        values = {name: self.integer(table[key], f"limits.{key}", 0, INT32_MAX)
                  for key, name in LIMIT_FIELDS.items() if key in table}
        try:
            return EndpointConfig(**values)
        except ValueError as exc:  # upload bytes below the body size
            message = str(exc)
            for key, name in LIMIT_FIELDS.items():
                message = message.replace(name, key)
            raise self.fail("limits", message) from None

    def request_limits(self, table: Mapping[str, Any]) -> RequestLimits:
        """The size of one mitigation request (see :class:`RequestLimits`): entries per list,
        at least 1 (a request names at least one target, RFC 9132 §4.4.1.1)."""
        values = {name: self.integer(table[key], f"limits.{key}", 1, INT32_MAX)
                  for key, name in REQUEST_LIMIT_FIELDS.items() if key in table}
        return RequestLimits(**values)

    def listener_limits(self, table: Mapping[str, Any]) -> ListenerLimits:
        """What unauthenticated peers may hold (see :class:`ListenerLimits`), at least 1."""
        values = {name: self.integer(table[key], f"limits.{key}", 1, INT32_MAX)
                  for key, name in LISTENER_LIMIT_FIELDS.items() if key in table}
        return ListenerLimits(**values)

    # -- [mitigator] ---------------------------------------------------------------------------

    def mitigator(self, table: Mapping[str, Any]) -> MitigatorSettings:
        self.known(table, "mitigator", _MITIGATOR_KEYS)
        name = registry.DEFAULT
        if "name" in table:
            name = self.string(table["name"], "mitigator.name",
                               f"a mitigator name such as \"{registry.DEFAULT}\"")
        options: Mapping[str, Any] = MappingProxyType({})
        if "options" in table:
            options = MappingProxyType(dict(self.table(table["options"], "mitigator.options")))
        return MitigatorSettings(name, options)


# ---------------------------------------------------------------------------------------------
# Writing and describing


def _listing(items: Iterable[object]) -> str:
    text = ", ".join(str(i) for i in items)
    return text or "(none)"


def _domain_text(policy: Policy) -> str:
    limits = [f"max lifetime {policy.max_lifetime} s",
              "indefinite allowed" if policy.allow_indefinite else "indefinite refused"]
    if policy.max_mitigations_per_client is not None:
        limits.append(f"at most {policy.max_mitigations_per_client} mitigations per client "
                      f"(retry after {policy.retry_after} s)")
    if policy.max_requests_per_second is not None:
        limits.append(f"at most {policy.max_requests_per_second:g} requests a second per "
                      "client")
    return (f"mitigation for prefixes {_listing(policy.allowed_prefixes)}; "
            f"domains {_listing(policy.allowed_domains)}; {', '.join(limits)}")


def policy_summary(settings: ServerSettings) -> str:
    """One line saying which targets the server accepts mitigation requests for."""
    policy = settings.effective_policy
    listed = (f"; {len(settings.clients)} listed client(s) with their own domain"
              if settings.clients else "")
    if settings.refuse_unlisted:
        return (f"policy: only the {len(settings.clients)} listed client(s) are served, "
                "others are refused (4.01)")
    if settings.lab_mode:
        return (f"lab mode: mitigation only for the documentation prefixes "
                f"{_listing(policy.allowed_prefixes)}{listed}")
    return f"policy: {_domain_text(policy)}{listed}"


def client_summaries(settings: ServerSettings, limit: int = 20) -> list[str]:
    """One line per listed client (the first ``limit``)."""
    with_key = {identity.decode("utf-8") for identity, _ in settings.psk_keys}
    lines = [f"client {c.name} ({c.match}"
             + (", DTLS PSK" if c.match.kind == "psk-identity" and c.match.value in with_key
                else "")
             + f"): {_domain_text(c.policy)}"
             for c in settings.clients[:limit]]
    if len(settings.clients) > limit:
        lines.append(f"... and {len(settings.clients) - limit} more client(s)")
    return lines


def _range(bounds: ConfigBounds, attr: Attribute) -> str:
    return (f"{attr.value} {bounds.minimum.get(attr)}..{bounds.maximum.get(attr)} "
            f"(default {bounds.default.get(attr)})")


def describe(settings: ServerSettings) -> list[str]:
    """The effective settings, for people (``dotsd server --check``)."""
    mitigator = settings.mitigator
    options = ", ".join(f"{k} = {_show(v)}" for k, v in mitigator.options.items())
    lines = [
        f"listen [{settings.bind}]:{settings.port} ({'+'.join(settings.transports)})",
        f"pki {settings.pki if settings.pki is not None else '(not set)'}",
        f"state {settings.state if settings.state is not None else '(not set)'}",
        f"mitigator {mitigator.name}" + (f" {{{options}}}" if options else ""),
        policy_summary(settings),
        *client_summaries(settings),
    ]
    session = settings.session_config
    for kind in ConfigSetKind:
        bounds = session.bounds(kind)
        lines.append(f"session-config {kind.value.removesuffix('-config')}: "
                     + ", ".join(_range(bounds, attr) for attr in Attribute)
                     + ("" if bounds.allow_heartbeat_disable else "; heartbeats always on"))
    lines.append(f"session-config max-age {session.response_max_age} s"
                 + (" (default)" if session.max_age is None else ""))
    endpoint = settings.endpoint
    lines.append(f"limits per peer: {endpoint.max_observers_per_peer} observations, "
                 f"{endpoint.max_uploads_per_peer} block-wise uploads holding at most "
                 f"{endpoint.max_upload_bytes_per_peer} bytes (bodies up to "
                 f"{endpoint.max_body_size}), {endpoint.max_block2_bodies_per_peer} "
                 "kept response bodies")
    listener = settings.listener_limits
    lines.append(f"limits per listener: {listener.pending} pending handshakes, "
                 f"{listener.pending_per_source} per source address (IPv6: /64), "
                 f"{listener.tls_connections} TLS connections, {listener.dtls_sessions} DTLS "
                 "sessions (full: the oldest pending one is dropped)")
    request = settings.request_limits
    lines.append("limits per mitigation request: " + ", ".join(
        f"{limit} {attribute}" for attribute, limit in request.items()) + " (more: 4.00)")
    if settings.redirect is not None:
        lines.append(redirect_summary(settings.redirect))
    return lines


def redirect_summary(redirect: Redirection) -> str:
    where = ", ".join(redirect.records) or "resolved by the client"
    return (f"redirect: every client is sent to {redirect.alt_server} ({where}), TTL "
            f"{redirect.ttl} s (RFC 9132 §4.6)")

