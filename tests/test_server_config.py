"""The operator configuration of ``dotsd server`` (``dotsd.cli.settings``, ``--config``,
``--check``): the loader's checks, the example file, flags over the file, one-line errors."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_cli_pki import assert_one_error_line, run

from dotsd.agents.serve import serve
from dotsd.agents.settings import ListenerLimits
from dotsd.cli.settings import (
    ConfigFileError,
    ServerSettings,
    describe,
    from_mapping,
    load,
    policy_summary,
)
from dotsd.pki import PkiPaths
from dotsd.signal.config import Attribute, ConfigBounds, ConfigSetKind
from dotsd.signal.policy import LAB, RequestLimits
from dotsd.transport.admission import AdmissionLimits

pytestmark = pytest.mark.usefixtures("restore_logging")

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "server.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "server.toml"
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------
# The loader


def test_example_file_loads_with_every_section() -> None:
    s = load(EXAMPLE)
    assert (s.bind, s.port, s.transports) == ("::", 4646, ("dtls", "tls"))
    assert s.pki == Path("/etc/dotsd/pki") and s.state == Path("/var/lib/dotsd")
    assert not s.lab_mode and s.policy is not None
    assert s.policy.allowed_prefixes == (ipaddress.ip_network("10.0.0.0/8"),
                                         ipaddress.ip_network("2001:db8:6400::/40"))
    assert s.policy.allowed_domains == ("example.com",)
    assert s.policy.max_mitigations_per_client == 100
    mitigating = s.session_config.bounds(ConfigSetKind.MITIGATING)
    assert mitigating.maximum.heartbeat_interval == 120
    assert mitigating.default.missing_hb_allowed == 5
    assert mitigating.maximum.ack_timeout == Decimal("10.00")
    # Attributes the file leaves out keep the RFC 9132 ranges.
    assert mitigating.minimum.probing_rate == ConfigBounds().minimum.probing_rate
    assert s.session_config.idle.default.heartbeat_interval == 60
    assert s.session_config.max_age == 3600
    assert s.mitigator.name == "log" and s.mitigator.options["feedback_delay"] == 1.0
    assert s.endpoint.max_observers_per_peer == 64 and s.endpoint.max_body_size == 1 << 20
    assert [c.name for c in s.clients] == ["acme"]
    assert from_mapping(s.to_dict()) == s  # the file's shape round-trips


def test_psk_keys_are_read_but_never_shown(tmp_path: Path) -> None:
    key = "a1" * 32
    s = load(write(tmp_path, f'[[client]]\nname = "cpe"\npsk-identity = "cpe-17"\n'
                             f'psk-key = "{key}"\nallowed-prefixes = ["10.17.0.0/16"]\n'))
    assert s.psk_keys == ((b"cpe-17", bytes.fromhex(key)),)
    shown = json.dumps(s.to_dict()) + "\n".join(describe(s)) + repr(s)
    assert key not in shown and "DTLS PSK" in shown
    again = from_mapping(s.to_dict())
    assert again == s and again.psk_keys == ()  # the file keeps the key, not its summary


def test_limits_section(tmp_path: Path) -> None:
    s = load(write(tmp_path, "[limits]\nmax-observations = 500\nmax-uploads = 0\n"))
    assert s.endpoint.max_observers_per_peer == 500 and s.endpoint.max_uploads_per_peer == 0
    assert s.endpoint.max_body_size == ServerSettings().endpoint.max_body_size
    assert from_mapping(s.to_dict()) == s
    assert "500 observations, 0 block-wise uploads" in "\n".join(describe(s))


def test_limits_of_one_mitigation_request(tmp_path: Path) -> None:
    """[limits] also bounds one mitigation request (RFC 9132 §4.4.1.3: more is 4.00); the
    defaults are shown by --check and applied by the server's policy set."""
    defaults = ServerSettings()
    assert defaults.request_limits == RequestLimits()
    assert ("limits per mitigation request: 1024 target-prefix, 1024 target-port-range, "
            "256 target-protocol, 64 target-fqdn, 64 target-uri, 64 alias-name (more: 4.00)"
            in describe(defaults))
    s = load(write(tmp_path, "[limits]\nmax-target-prefixes = 10\nmax-alias-names = 1\n"
                             "max-observations = 5\n"))
    assert s.request_limits == RequestLimits(target_prefix=10, alias_name=1)
    assert s.endpoint.max_observers_per_peer == 5
    assert s.policy_set.limits == s.request_limits
    assert "10 target-prefix, 1024 target-port-range" in "\n".join(describe(s))
    assert s.to_dict()["limits"]["max-target-prefixes"] == 10
    assert from_mapping(s.to_dict()) == s
    example = load(EXAMPLE)
    assert example.request_limits == RequestLimits()  # the file shows the defaults


def test_limits_of_listeners(tmp_path: Path, pki: PkiPaths) -> None:
    """[limits] bounds what unauthenticated peers hold (dotsd.transport.admission), shown by
    --check and given to the listeners by serve()."""
    defaults = ServerSettings()
    assert defaults.listener_limits == ListenerLimits(1000, 16, 20_000, 100_000)
    assert ("limits per listener: 1000 pending handshakes, 16 per source address (IPv6: /64),"
            " 20000 TLS connections, 100000 DTLS sessions (full: the oldest pending one is "
            "dropped)" in describe(defaults))
    s = load(write(tmp_path, "[limits]\nmax-pending-handshakes = 50\n"
                             "max-pending-per-source = 3\nmax-tls-connections = 200\n"))
    assert s.listener_limits == ListenerLimits(50, 3, 200, 100_000)
    assert from_mapping(s.to_dict()) == s
    with pytest.raises(ConfigFileError, match=r"limits\.max-pending-per-source"):
        load(write(tmp_path, "[limits]\nmax-pending-per-source = 0\n"))

    async def serve_it() -> None:
        agent = await serve(s.replace(bind="127.0.0.1", port=0, pki=pki.directory,
                                      state=tmp_path / "state"))
        try:
            dtls, tls = agent.listeners
            assert dtls.admission.limits == AdmissionLimits(100_000, 50, 3)
            assert tls.admission.limits == AdmissionLimits(200, 50, 3)
        finally:
            await agent.close()

    asyncio.run(serve_it())


def test_redirect_section(tmp_path: Path) -> None:
    s = load(write(tmp_path, '[redirect]\nalt-server = "alt.example"\n'
                             'alt-server-record = ["2001:db8::2", "192.0.2.2"]\nttl = 0\n'))
    assert s.redirect is not None
    assert (s.redirect.alt_server, s.redirect.records, s.redirect.ttl) == (
        "alt.example", ("2001:db8::2", "192.0.2.2"), 0)
    assert from_mapping(s.to_dict()) == s
    assert load(write(tmp_path, "")).redirect is None


def test_no_policy_is_lab_mode_and_empty_file_is_the_defaults(tmp_path: Path) -> None:
    s = load(write(tmp_path, "[server]\nport = 0\n"))
    assert s.lab_mode and s.effective_policy is LAB
    assert load(write(tmp_path, "")) == ServerSettings()


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    s = load(write(tmp_path, '[server]\npki = "pki"\nstate = "/abs/state"\n'))
    assert s.pki == tmp_path / "pki" and s.state == Path("/abs/state")


def test_partial_transports_and_domain_normalisation(tmp_path: Path) -> None:
    s = load(write(tmp_path, '[server]\ntransports = ["tls"]\n[policy]\n'
                             'allowed-domains = ["Example.NET."]\n'))
    assert s.transports == ("tls",)
    assert s.policy is not None and s.policy.allowed_domains == ("example.net",)
    assert s.policy.allowed_prefixes == ()


CLIENTS = """
[policy]
allowed-prefixes = ["203.0.113.0/24"]
max-lifetime = 7200
max-mitigations-per-client = 10
max-requests-per-second = 20

[[client]]
name = "acme"
common-name = "acme-dots"
allowed-prefixes = ["198.51.100.0/24"]
max-lifetime = 600

[[client]]
name = "cpe-17"
psk-identity = "cpe-17"
allowed-domains = ["cpe17.example"]
"""


def test_client_sections_give_each_client_its_domain(tmp_path: Path) -> None:
    s = load(write(tmp_path, CLIENTS))
    assert [c.name for c in s.clients] == ["acme", "cpe-17"]
    acme, cpe = s.clients
    assert (acme.match.kind, acme.match.value) == ("common-name", "acme-dots")
    assert acme.policy.allowed_prefixes == (ipaddress.ip_network("198.51.100.0/24"),)
    # Limits not given come from [policy]; the domain never does.
    assert acme.policy.max_lifetime == 600 and acme.policy.max_mitigations_per_client == 10
    assert cpe.policy.max_lifetime == 7200 and cpe.policy.allowed_prefixes == ()
    assert cpe.policy.max_requests_per_second == 20.0  # inherited from [policy]
    assert s.policy_set.default is s.policy and not s.refuse_unlisted
    assert from_mapping(s.to_dict()) == s
    summary = "\n".join(describe(s))
    assert "2 listed client(s)" in summary and "client acme (common-name acme-dots)" in summary
    refuse = load(write(tmp_path, '[policy]\nunlisted-clients = "refuse"\n'
                        + CLIENTS[CLIENTS.index("[[client]]"):]))
    assert refuse.refuse_unlisted and refuse.policy_set.default is None
    assert "others are refused" in policy_summary(refuse)
    assert from_mapping(refuse.to_dict()) == refuse
    # Without [policy], unlisted clients stay in lab mode.
    lab = load(write(tmp_path, CLIENTS[CLIENTS.index("[[client]]"):]))
    assert lab.lab_mode and lab.policy_set.default is LAB and len(lab.clients) == 2


ERRORS = [
    # (file text, substrings the one-line message must contain)
    ("[polcy]\n", ["'polcy'", "did you mean 'policy'"]),
    ('[policy]\nallowed-prefixes = ["10.0.0.0/8"]\nmax_lifetime = 5\n',
     ["'policy.max_lifetime'", "did you mean 'max-lifetime'"]),
    ("[server]\nfoo = 1\n", ["'server.foo'", "known keys: bind, port"]),
    ('[server]\nport = "4646"\n', ["server.port", '"4646"', "an integer", "0 to 65535"]),
    ("[server]\nport = 65536\n", ["server.port", "65536", "0 to 65535"]),
    ('[server]\nbind = "localhost"\n', ["server.bind", '"localhost"', "an IP address"]),
    ('[server]\ntransports = ["dtls", "quic"]\n', ["server.transports[1]", '"quic"',
                                                   '"dtls" or "tls"']),
    ("[server]\ntransports = []\n", ["server.transports", "at least one"]),
    ("server = 3\n", ["server", "got 3", "a table"]),
    ('[policy]\nallowed-prefixes = ["10.0.0.1/8"]\n',
     ["policy.allowed-prefixes[0]", '"10.0.0.1/8"', "no host bits"]),
    ('[policy]\nallowed-prefixes = "10.0.0.0/8"\n',
     ["policy.allowed-prefixes", "a list of"]),
    ('[policy]\nallowed-domains = ["*.example.com"]\n',
     ["policy.allowed-domains[0]", '"*.example.com"', "a domain name"]),
    ("[policy]\nmax-lifetime = 3600\n", ["policy", "admits no target"]),
    ('[policy]\nallowed-prefixes = ["10.0.0.0/8"]\nmax-lifetime = 0\n',
     ["policy.max-lifetime", "got 0", "from 1"]),
    ('[policy]\nallowed-prefixes = ["10.0.0.0/8"]\nallow-indefinite = "yes"\n',
     ["policy.allow-indefinite", '"yes"', "true or false"]),
    ("[session-config.idle]\nheartbeat-interval = { min = 300, max = 240 }\n",
     ["session-config.idle", "heartbeat-interval: minimum 300 above maximum 240"]),
    ("[session-config.mitigating]\nack-timeout = { default = 2.005 }\n",
     ["session-config.mitigating.ack-timeout.default", "2.005", "at most 2 decimals"]),
    ("[session-config.mitigating]\nprobing-rate = { mid = 5 }\n",
     ["'session-config.mitigating.probing-rate.mid'", "did you mean 'min'"]),
    ("[session-config.busy]\n", ["'session-config.busy'", "known keys"]),
    ("[session-config.idle]\nmax-retransmit = { max = 16 }\n",
     ["session-config.idle", "max-retransmit above 15"]),
    ("[mitigator]\nname = 4\n", ["mitigator.name", "got 4", "a mitigator name"]),
    ("[redirect]\nttl = 60\n", ["redirect", "'alt-server'", "required"]),
    ('[redirect]\nalt-server = "alt.example"\nalt-server-record = ["alt.example"]\n',
     ["redirect.alt-server-record[0]", '"alt.example"', "an IP address"]),
    ('[redirect]\nalt-server = "alt.example"\nttl = -1\n', ["redirect.ttl", "got -1"]),
    ('[redirect]\nalt-sever = "alt.example"\n', ["did you mean 'alt-server'"]),
    ("[server]\nport = = 3\n", ["invalid TOML", "line 2"]),
    ('[[client]]\ncuid = "x"\nallowed-prefixes = ["10.0.0.0/8"]\n',
     ["client[0]", "'name'", "required"]),
    ('[[client]]\nname = "a"\nallowed-prefixes = ["10.0.0.0/8"]\n',
     ["client[0]", "exactly one of cuid, spki-sha256, common-name, psk-identity"]),
    ('[[client]]\nname = "a"\ncuid = "x"\ncommon-name = "a"\nallowed-prefixes = ["10.0.0.0/8"]\n',
     ["client[0]", "exactly one of"]),
    ('[[client]]\nname = "a"\ncuid = "x"\n', ["client[0]", "admits no target"]),
    ('[[client]]\nname = "a"\nspki-sha256 = "abc"\nallowed-prefixes = ["10.0.0.0/8"]\n',
     ["client[0].spki-sha256", '"abc"', "64 hexadecimal digits"]),
    ('[[client]]\nname = "a"\ncuid = "x"\nallowed-prefixes = ["10.0.0.0/8"]\n'
     '[[client]]\nname = "b"\ncuid = "x"\nallowed-prefixes = ["10.0.0.0/8"]\n',
     ["client[1].cuid", "another [[client]] already has cuid x"]),
    ('[[client]]\nname = "a"\ncuid = "x"\nallowed-prefixes = ["10.0.0.0/8"]\n'
     '[[client]]\nname = "a"\ncuid = "y"\nallowed-prefixes = ["10.0.0.0/8"]\n',
     ["client[1].name", "a name no other [[client]] has"]),
    ('[[client]]\nname = "a"\ncn = "x"\n', ["'client[0].cn'", "known keys"]),
    ('[client]\nname = "a"\n', ["client", "an array of tables"]),
    ('[[client]]\nname = "a"\ncuid = "x"\npsk-key = "00"\nallowed-prefixes = ["10.0.0.0/8"]\n',
     ["client[0].psk-key", "only with psk-identity"]),
    ('[[client]]\nname = "a"\npsk-identity = "x"\npsk-key = "abcd"\n'
     'allowed-prefixes = ["10.0.0.0/8"]\n', ["client[0].psk-key", "(hidden)", "16 bytes"]),
    ('[policy]\nallowed-prefixes = ["10.0.0.0/8"]\nmax-requests-per-second = 0\n',
     ["policy.max-requests-per-second", "got 0", "above 0"]),
    ('[policy]\nallowed-prefixes = ["10.0.0.0/8"]\nmax-requests-per-second = "fast"\n',
     ["policy.max-requests-per-second", '"fast"']),
    ("[limits]\nmax-observations = -1\n", ["limits.max-observations", "got -1", "from 0"]),
    ("[limits]\nmax-observers = 5\n", ["'limits.max-observers'",
                                        "did you mean 'max-observations'"]),
    ("[limits]\nmax-target-prefixes = 0\n", ["limits.max-target-prefixes", "got 0",
                                              "from 1"]),
    ("[limits]\nmax-target-uris = true\n", ["limits.max-target-uris", "got true"]),
    ("[limits]\nmax-target-fqdn = 5\n", ["'limits.max-target-fqdn'",
                                          "did you mean 'max-target-fqdns'"]),
    ("[limits]\nmax-upload-bytes = 1000\n", ["limits", "max-upload-bytes must be at least "
                                                     "max-body-size"]),
    ('[policy]\nunlisted-clients = "deny"\n', ["policy.unlisted-clients", '"deny"',
                                                '"allow" or "refuse"']),
    ('[policy]\nallowed-prefixes = ["10.0.0.0/8"\n', ["invalid TOML", "after line 2"]),
]


@pytest.mark.parametrize(("text", "expected"), ERRORS)
def test_errors_name_file_key_value_and_form(tmp_path: Path, text: str,
                                             expected: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigFileError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    for part in expected:
        assert part in message


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="cannot read: No such file"):
        load(tmp_path / "absent.toml")
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[server]\nbind = "\xe9"\n')
    with pytest.raises(ConfigFileError, match="not UTF-8"):
        load(path)


# Values of every TOML type (and a few that TOML cannot give), keys mostly from the real
# vocabulary so that random documents reach the inner checks.
KEYS = ["server", "policy", "session-config", "mitigator", "bind", "port", "transports",
        "pki", "state", "allowed-prefixes", "allowed-domains", "max-lifetime",
        "allow-indefinite", "max-mitigations-per-client", "retry-after", "max-age",
        "mitigating", "idle", "allow-heartbeat-disable", "min", "max", "default", "name",
        "options", "client", "unlisted-clients", "cuid", "common-name", "limits",
        "max-observations", "max-uploads", "max-body-size", "max-target-prefixes",
        "max-target-port-ranges", "max-alias-names", "max-pending-handshakes",
        "max-pending-per-source", "max-tls-connections", "max-dtls-sessions",
        *(a.value for a in Attribute)]
SCALARS = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats()
           | st.text(max_size=12) | st.sampled_from(["::1", "10.0.0.0/8", "dtls", "tls",
                                                    "example.com", "log", "x"])
           | st.decimals(allow_nan=True) | st.datetimes())
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner,
                                        max_size=5), max_leaves=25)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from([*KEYS[:4], "client", "limits"]) | st.text(max_size=6),
                      VALUES,
                      max_size=4))
def test_random_documents_give_settings_or_the_loaders_error(data: dict[str, Any]) -> None:
    try:
        loaded = from_mapping(data, source="random.toml")
    except ConfigFileError as exc:
        assert str(exc).startswith("random.toml: ")
        return
    assert from_mapping(loaded.to_dict()) == loaded


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 65535), st.integers(0, 65535), st.integers(0, 65535))
def test_random_heartbeat_bounds_are_kept_or_refused(lo: int, hi: int, dflt: int) -> None:
    data = {"session-config": {"idle": {"heartbeat-interval": {
        "min": lo, "max": hi, "default": dflt}}}}
    try:
        idle = from_mapping(data).session_config.idle
    except ConfigFileError as exc:
        assert "session-config.idle" in str(exc)
        assert lo > hi or not (lo <= dflt <= hi or dflt == 0)
        return
    assert (idle.minimum.heartbeat_interval, idle.maximum.heartbeat_interval,
            idle.default.heartbeat_interval) == (lo, hi, dflt)


# ---------------------------------------------------------------------------------------------
# dotsd server --config / --check


def check(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code, out, err = run(capsys, "server", "--check", "--json", *argv)
    assert code == 0, err
    data: dict[str, Any] = json.loads(out)
    return data


def test_check_example_with_flags_overriding_the_file(
        pki: PkiPaths, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = check(capsys, "--config", str(EXAMPLE), "--pki", str(pki.directory),
                 "--port", "0", "--bind", "::1", "--no-tls", "--state", str(tmp_path / "s"))
    assert data["valid"] is True and data["mode"] == "policy"
    server = data["settings"]["server"]
    assert server == {"bind": "::1", "port": 0, "transports": ["dtls"],
                      "pki": str(pki.directory), "state": str(tmp_path / "s")}
    # What the flags did not name comes from the file.
    assert data["settings"]["policy"]["allowed-prefixes"] == ["10.0.0.0/8",
                                                             "2001:db8:6400::/40"]
    assert data["settings"]["mitigator"]["options"]["feedback_delay"] == 1.0
    code, out, err = run(capsys, "server", "--check", "--config", str(EXAMPLE),
                         "--pki", str(pki.directory))
    assert code == 0, err
    assert out.startswith(f"configuration {EXAMPLE}: valid\n")
    assert "policy: mitigation for prefixes 10.0.0.0/8, 2001:db8:6400::/40" in out
    assert "heartbeat-interval 15..120 (default 30)" in out


def test_pki_and_state_may_come_from_the_file(
        pki: PkiPaths, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, f'[server]\npki = "{pki.directory}"\nstate = "st"\n'
                           '[mitigator]\nname = "log"\noptions = { feedback_delay = 0.25 }\n')
    data = check(capsys, "--config", str(path), "--mitigator", "log")
    assert data["mode"] == "lab"
    assert data["settings"]["server"]["state"] == str(tmp_path / "st")
    assert data["settings"]["mitigator"] == {"name": "log",
                                             "options": {"feedback_delay": 0.25}}
    assert not (tmp_path / "st").exists()  # --check writes nothing


@pytest.mark.parametrize(("file_text", "argv", "expected"), [
    (None, ["--state", "S"], "no PKI directory: give --pki DIR (or --config FILE)"),
    ('[server]\nstate = "s"\n', [], "no PKI directory: give --pki DIR (or [server] pki in"),
    (None, ["--pki", "P"], "no state directory: give --state DIR"),
    ("[polcy]\n", [], "unknown key 'polcy' (did you mean 'policy'?)"),
    ('[server]\nport = -1\n', [], 'server.port: got -1, expected an integer'),
    ("[server\n", [], "invalid TOML"),
    ('[server]\ntransports = ["tls"]\n', ["--no-tls"], "--no-tls leaves no transport"),
    ('[mitigator]\noptions = { bogus = 1 }\n', [], "log mitigator: unknown option(s) bogus"),
    (None, ["--mitigator", "nope"], "unknown mitigator 'nope'"),
])
def test_every_error_is_exit_1_and_one_line(
        pki: PkiPaths, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        file_text: str | None, argv: list[str], expected: str) -> None:
    args = ["server", "--check", *argv]
    if file_text is not None:
        args += ["--config", str(write(tmp_path, file_text))]
    if "--pki" not in argv and "no PKI" not in expected:
        args += ["--pki", str(pki.directory)]
    if "--state" not in argv and "no state" not in expected and "state =" not in (
            file_text or ""):
        args += ["--state", str(tmp_path / "state")]
    code, out, err = run(capsys, *args)
    assert code == 1, (out, err)
    assert_one_error_line(err)
    assert expected in err
    assert out == ""


@pytest.mark.network
def test_missing_config_file_in_a_real_process(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "dotsd", "server", "--config",
                             str(tmp_path / "none.toml")],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 1
    assert result.stderr == (f"dotsd: error: {tmp_path / 'none.toml'}: cannot read: "
                             "No such file or directory\n")
