"""The RFC example messages (spec pack ``examples/``) as test vectors.

Every figure with a JSON body is listed below, either as a test vector or with the reason it is
not one. Signal channel bodies (RFC 9132, 9066, 9133, 9244, 9362) are encoded to CBOR (keys
checked against the key table; RFC 9132 Figure 8 compared byte for byte), decoded back to the
same JSON, and validated against the YANG modules in the direction the figure is sent. Data
channel bodies (RFC 8783, RFC 9244 vendor mapping, RFC 9133 filters) are validated against YANG.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import cbor2
import pytest

from dotsd.model.cbor_keys import BY_NAME
from dotsd.model.codec import from_cbor, to_cbor
from dotsd.model.errors import ValidationError
from dotsd.model.yang import Direction, validate

REPO = Path(__file__).resolve().parent.parent
SPEC = Path(os.environ.get("DOTS_SPEC_DIR", REPO.parent / "shared" / "spec"))
# The RFC figures are vendored under tests/spec (DOTS_EXAMPLES_DIR overrides).
EXAMPLES = Path(os.environ.get("DOTS_EXAMPLES_DIR", Path(__file__).parent / "spec" / "examples"))

pytestmark = pytest.mark.skipif(not EXAMPLES.is_dir(), reason="spec pack examples not present")

C2S = Direction.CLIENT_TO_SERVER  # sent by a DOTS client (requests, efficacy updates)
S2C = Direction.SERVER_TO_CLIENT  # sent by a DOTS server (responses, notifications)

# Signal channel bodies: figure -> direction (RFC sections in the examples README).
SIGNAL: dict[str, Direction] = {
    "rfc9132-fig7.txt": C2S,  # §4.4.1.1 mitigation request
    "rfc9132-fig10.txt": S2C,  # §4.4.1.3 2.xx response
    "rfc9132-fig11.txt": S2C,  # §4.4.1.3 4.09 body (cuid-collision), message (2)
    "rfc9132-fig14.txt": S2C,  # §4.4.2 GET response
    "rfc9132-fig16.txt": C2S,  # §4.4.3 efficacy update
    "rfc9132-fig20.txt": S2C,  # §4.5.1 configuration response
    "rfc9132-fig23.txt": C2S,  # §4.5.2 configuration PUT
    "rfc9132-fig26.txt": S2C,  # §4.6 5.03 redirection body
    "rfc9132-fig27.txt": C2S,  # §4.7 heartbeat (from the client here)
    "rfc9066-fig9.txt": C2S,  # §5.2.2 Call Home redirect PUT (repaired, see below)
    "rfc9066-fig10.txt": C2S,  # §5.3.1 mitigation request with source-prefix
    "rfc9133-fig1.txt": S2C,  # §3.2.1 diagnostic payload of a failed ACL update
    "rfc9133-fig3.txt": C2S,
    "rfc9133-fig4.txt": S2C,
    "rfc9133-fig5.txt": C2S,
    "rfc9133-fig8.txt": C2S,
    "rfc9133-fig10.txt": C2S,
    "rfc9133-fig11.txt": C2S,
    "rfc9133-fig12.txt": C2S,
    "rfc9244-fig4.txt": C2S,  # §7.1.2 telemetry setup PUT
    "rfc9244-fig5.txt": C2S,
    "rfc9244-fig6.txt": C2S,
    "rfc9244-fig11.txt": C2S,  # §7.2.1 pipe capacity
    "rfc9244-fig13.txt": C2S,
    "rfc9244-fig15.txt": C2S,
    "rfc9244-fig17.txt": C2S,
    "rfc9244-fig19.txt": C2S,  # §7.3.1 baseline
    "rfc9244-fig20.txt": C2S,
    "rfc9244-fig36.txt": C2S,  # §8.2 pre-or-ongoing-mitigation telemetry
    "rfc9244-fig39.txt": C2S,
    "rfc9244-fig43.txt": S2C,  # §8.3 notification (YANG: see SIGNAL_NOT_YANG_VALID)
    "rfc9244-fig45.txt": C2S,  # §9.1 efficacy update with telemetry
    "rfc9244-fig47.txt": S2C,  # §9.2 status with telemetry
    "rfc9362-fig2.txt": C2S,  # RFC 9362 §3 configuration PUT
}

# Signal channel bodies that encode/decode fine but are not valid instances of the modules.
SIGNAL_NOT_YANG_VALID: dict[str, tuple[str, str]] = {
    "rfc9132-fig25.txt": (
        "schema with placeholders: 'string' is not an IP address",
        "alt-server-record",
    ),
    "rfc9244-fig43.txt": (
        "the figure puts 'target-protocol' beside 'target'; RFC 9244 §8.1.1 (and the"
        " ietf-dots-telemetry module) has it inside 'target'",
        "target-protocol",
    ),
}

# Figures whose body is not JSON (schemas with bare placeholders such as `number`).
NOT_JSON: dict[str, str] = {
    "rfc9132-fig5.txt": "body elided as '...'",
    "rfc9132-fig9.txt": "body elided as '...'",
    "rfc9132-fig21.txt": "body elided as '...'",
    "rfc9132-fig6.txt": "schema: bare placeholders (number, true|false)",
    "rfc9132-fig19.txt": "schema: bare placeholder number",
    "rfc9132-fig22.txt": "schema: bare placeholder number",
    "rfc8783-fig16.txt": "schema: bare placeholders and '...'",
}

DD = "ietf-dots-data-channel:dots-data"

# Data channel bodies: figure -> (parent resource of the body's member, direction).
DATA: dict[str, tuple[str, Direction]] = {
    "rfc8783-fig11.txt": (DD, C2S),  # §5.1 POST register (schema values are plain strings)
    "rfc8783-fig12.txt": (DD, C2S),
    "rfc8783-fig13.txt": (DD, C2S),
    "rfc8783-fig14.txt": (DD, C2S),  # PUT .../dots-client=...
    "rfc8783-fig17.txt": (f"{DD}/dots-client=dz6pHjaADkaFTbjr0JGBpw", C2S),  # §6.1 aliases
    "rfc8783-fig19.txt": (f"{DD}/dots-client=dz6pHjaADkaFTbjr0JGBpw", S2C),  # §6.2
    "rfc9244-fig30.txt": (f"{DD}/dots-client=dz6pHjaADkaFTbjr0JGBpw", C2S),  # vendor mapping
    "rfc9244-fig34.txt": (DD, S2C),
}

UNQUALIFIED = (
    "identityref values without their module ('ipv4-acl-type', 'drop', ...); RFC 7951 §6.8"
    " requires 'ietf-access-control-list:'"
)
# Data channel bodies that the official modules reject, with the reason.
DATA_INVALID: dict[str, tuple[str, Direction, str]] = {
    name: (f"{DD}/dots-client={cuid}" if cuid else DD, direction, UNQUALIFIED)
    for name, cuid, direction in [
        ("rfc8783-fig23.txt", None, S2C),  # §7.1 capabilities: forwarding-actions
        ("rfc8783-fig24.txt", "dz6pHjaADkaFTbjr0JGBpw", C2S),
        ("rfc8783-fig25.txt", "paL8p4Zqo4SLv64TLPXrxA", C2S),
        ("rfc8783-fig27.txt", "dz6pHjaADkaFTbjr0JGBpw", S2C),
        ("rfc8783-fig29.txt", "paL8p4Zqo4SLv64TLPXrxA", S2C),
        ("rfc8783-fig31.txt", "paL8p4Zqo4SLv64TLPXrxA", S2C),
        ("rfc8783-fig34.txt", "dz6pHjaADkaFTbjr0JGBpw", C2S),
        ("rfc8783-fig35.txt", "dz6pHjaADkaFTbjr0JGBpw", C2S),
        ("rfc8783-fig36.txt", "paL8p4Zqo4SLv64TLPXrxA", C2S),
        ("rfc8783-fig37.txt", "paL8p4Zqo4SLv64TLPXrxA", C2S),
        ("rfc8783-fig38.txt", "paL8p4Zqo4SLv64TLPXrxA", C2S),
        ("rfc9133-fig2.txt", "paL8p4Zqo4SLv64TLPXrxA", C2S),
        ("rfc9133-fig6.txt", "paL8p4Zqo4SLv64TLPXrxA", S2C),
        ("rfc9133-fig7.txt", "ioiuLoZqo4SLv64TLPXrxA", C2S),
        ("rfc9133-fig9.txt", "OopPisZqo4SLv64TLPXrxA", C2S),
    ]
}


# --------------------------------------------------------------------------------------------
# Reading the figures


def figure_text(name: str) -> str:
    return (EXAMPLES / name).read_text(encoding="utf-8")


def json_block(name: str) -> str:
    """The JSON body: from a line '{' to the next '}' line at the same indentation."""
    lines = figure_text(name).splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "{")
    indent = lines[start].index("{")
    for end in range(start + 1, len(lines)):
        if lines[end] == " " * indent + "}":
            return "\n".join(lines[start : end + 1])
    return "\n".join(lines[start:])  # unterminated (RFC 9066 Figure 9)


def json_body(name: str) -> dict[str, Any]:
    text = json_block(name)
    if name == "rfc9066-fig9.txt":
        # As published the body misses the closing brace of the top-level object.
        with pytest.raises(json.JSONDecodeError):
            json.loads(text)
        text += "\n}"
    body = json.loads(text)
    assert isinstance(body, dict)
    return body


def figure_hex_dump(name: str) -> bytes:
    """RFC 9132 Figure 8: hex with '# ...' diagnostic comments."""
    digits = "".join("".join(line.split("#")[0].split()) for line in figure_text(name).splitlines())
    return bytes.fromhex(digits)


def assert_keys_follow_table(body: Any, wire: Any, path: str = "") -> None:
    """Every JSON member name became its CBOR key (RFC 9132 §6), at every level."""
    if isinstance(body, dict):
        assert isinstance(wire, dict), path
        assert set(wire) == {BY_NAME[name].key for name in body}, path
        for name, value in body.items():
            assert_keys_follow_table(value, wire[BY_NAME[name].key], f"{path}/{name}")
    elif isinstance(body, list):
        assert isinstance(wire, list) and len(wire) == len(body), path
        for index, (b, w) in enumerate(zip(body, wire, strict=True)):
            assert_keys_follow_table(b, w, f"{path}/{index}")


# --------------------------------------------------------------------------------------------
# Tests


def test_every_figure_with_a_json_body_is_classified() -> None:
    classified = set(SIGNAL) | set(SIGNAL_NOT_YANG_VALID) | set(NOT_JSON) | set(DATA)
    classified |= set(DATA_INVALID)
    with_json = {
        path.name
        for path in EXAMPLES.glob("rfc*.txt")
        if any(line.strip() == "{" for line in path.read_text(encoding="utf-8").splitlines())
    }
    assert with_json == classified


@pytest.mark.parametrize("name", sorted(NOT_JSON))
def test_schema_figures_are_not_json(name: str) -> None:
    with pytest.raises(json.JSONDecodeError):
        json.loads(json_block(name))


@pytest.mark.parametrize("name", sorted(set(SIGNAL) | set(SIGNAL_NOT_YANG_VALID)))
def test_signal_body_cbor_round_trip(name: str) -> None:
    body = json_body(name)
    raw = to_cbor(body)
    assert_keys_follow_table(body, cbor2.loads(raw, semantic_decoders={4: lambda v, i: v}))
    assert from_cbor(raw) == body


@pytest.mark.parametrize("name", sorted(SIGNAL))
def test_signal_body_yang(name: str) -> None:
    body = json_body(name)
    direction = SIGNAL[name]
    if name in SIGNAL_NOT_YANG_VALID:
        _, fragment = SIGNAL_NOT_YANG_VALID[name]
        with pytest.raises(ValidationError, match=fragment):
            validate(body, direction=direction)
        return
    kind = validate(body, direction=direction)
    assert kind is not None and kind.member == next(iter(body))
    # and what went through CBOR validates the same
    validate(from_cbor(to_cbor(body)), direction=direction)


@pytest.mark.parametrize("name", sorted(SIGNAL_NOT_YANG_VALID))
def test_signal_bodies_invalid_by_yang(name: str) -> None:
    _, fragment = SIGNAL_NOT_YANG_VALID[name]
    with pytest.raises(ValidationError, match=fragment):
        validate(json_body(name))


def test_rfc9132_figure_8_is_the_cbor_of_figure_7() -> None:
    body = json_body("rfc9132-fig7.txt")
    dump = figure_hex_dump("rfc9132-fig8.txt")
    assert to_cbor(body) == dump  # byte for byte (map order as in the JSON)
    assert cbor2.loads(dump) == cbor2.loads(to_cbor(body))
    assert from_cbor(dump) == body


def test_rfc9066_figure_9_repaired() -> None:
    body = json_body("rfc9066-fig9.txt")
    assert body["ietf-dots-signal-channel:redirected-signal"]["ietf-dots-call-home:ttl"] == 600


@pytest.mark.parametrize("name", sorted(DATA))
def test_data_channel_body_yang(name: str) -> None:
    path, direction = DATA[name]
    assert validate(json_body(name), path=path, direction=direction) is None


@pytest.mark.parametrize("name", sorted(DATA_INVALID))
def test_data_channel_body_rejected(name: str) -> None:
    path, direction, _reason = DATA_INVALID[name]
    with pytest.raises(ValidationError):
        validate(json_body(name), path=path, direction=direction)


ACL_IDENTITIES = {"accept", "drop", "reject", "ipv4-acl-type", "ipv6-acl-type"}


def _qualify_identities(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: f"ietf-access-control-list:{v}"
            if k in ("type", "forwarding") and v in ACL_IDENTITIES
            else _qualify_identities(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_qualify_identities(v) for v in value]
    return value


def test_qualified_identities_fix_rfc8783_figure_36() -> None:
    # The rejection above is the identityref form, not the rest of the figure.
    path, direction, _ = DATA_INVALID["rfc8783-fig36.txt"]
    body = json_body("rfc8783-fig36.txt")
    with pytest.raises(ValidationError, match="not derived from"):
        validate(body, path=path, direction=direction)
    validate(_qualify_identities(body), path=path, direction=direction)


def test_request_line_paths_match_the_table() -> None:
    # The POST figures' request target is the parent resource used above.
    for name, (path, _) in DATA.items():
        text = re.sub(r"\\\n\s*", "", figure_text(name))
        match = re.search(r"^POST /restconf/data/(\S+)", text, re.MULTILINE)
        if match:
            assert match.group(1) == path, name
