"""`dotsd demo`: server and client talk over real DTLS and TLS sockets on loopback."""

from __future__ import annotations

import json

import pytest

from dotsd.cli.main import main


@pytest.mark.parametrize("transport", ["dtls", "tls"])
def test_demo_runs_and_reports(transport: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--transport", transport, "--notifications", "3", "--interval", "0.05",
                 "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is True and out["transport"] == transport
    events = [s["event"] for s in out["steps"]]
    assert sum(e.startswith("notification: value") for e in events) == 3
    assert any("GET /hello" in e and "2.05" in e for e in events)
    assert any("session up with CN=client" in e for e in events)
    assert any("no observer left" in e for e in events)


def test_demo_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--notifications", "0"]) == 1
    assert "at least 1" in capsys.readouterr().err
