"""`dotsd demo`: a DOTS server and client over real DTLS and TLS sockets on loopback, a
mitigation requested, observed through its status changes, and withdrawn."""

from __future__ import annotations

import json

import pytest

from dotsd.cli.main import main


@pytest.mark.network
@pytest.mark.parametrize("transport", ["dtls", "tls"])
def test_demo_runs_and_reports(transport: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--transport", transport, "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is True and out["transport"] == transport
    steps = out["steps"]
    up = [s for s in steps if "session up" in s["event"]]
    assert up and up[0]["transport"].startswith(f"{transport}://")
    # The client saw the status changes in their order (RFC 9132 §4.4.2 Table 3).
    statuses = [s["status"] for s in steps if s["who"] == "client" and "status" in s]
    assert statuses == ["attack-mitigation-in-progress", "attack-successfully-mitigated",
                        "dots-client-withdrawn-mitigation"]
    events = [s["event"] for s in steps]
    assert any("2.01 CREATED" in e for e in events)
    assert any("efficacy update" in e and "2.04" in e for e in events)
    assert any("withdrawn: 2.02" in e for e in events)
    assert any(s["who"] == "mitigator" for s in steps)


def test_demo_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--transport", "carrier-pigeon"]) == 2
    assert "invalid choice" in capsys.readouterr().err
