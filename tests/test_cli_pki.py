"""The `dotsd` command line: `dotsd pki ...`, global options, exit codes, logging."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dotsd.cli.logs import KeyValueFormatter
from dotsd.cli.main import build_parser, main
from dotsd.pki import PkiPaths, fingerprint, load_certificate

pytestmark = pytest.mark.usefixtures("restore_logging")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    data: dict[str, Any] = json.loads(out)
    return data


def assert_one_error_line(err: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("dotsd: error: ")
    assert "Traceback" not in err


def test_pki_init_human_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "pki", "init", str(tmp_path / "pki"))
    assert code == 0 and err == ""
    paths = PkiPaths.of(tmp_path / "pki")
    for path in paths.files():
        assert str(path) in out
    for cert in (paths.ca_cert, paths.server_cert, paths.client_cert):
        assert fingerprint(load_certificate(cert)) in out
    assert "CN=server,O=dotsd" in out
    assert "DNS:localhost, IP:127.0.0.1, IP:::1" in out
    assert "not after" in out


@pytest.mark.parametrize("where", ["before", "after"])
def test_pki_init_json(tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str) -> None:
    argv = ["pki", "init", str(tmp_path)]
    argv = ["--json", *argv] if where == "before" else [*argv, "--json"]
    data = run_json(capsys, *argv)
    paths = PkiPaths.of(tmp_path)
    assert data["directory"] == str(tmp_path)
    assert data["files"] == [str(p) for p in paths.files()]
    certs = {c["path"]: c for c in data["certificates"]}
    assert set(certs) == {str(paths.ca_cert), str(paths.server_cert), str(paths.client_cert)}
    server = certs[str(paths.server_cert)]
    assert server["subject"] == "CN=server,O=dotsd"
    assert server["sans"] == ["DNS:localhost", "IP:127.0.0.1", "IP:::1"]
    assert server["sha256"] == fingerprint(load_certificate(paths.server_cert))
    assert server["not_after"].endswith("Z")
    assert certs[str(paths.ca_cert)]["sans"] == []


def test_pki_init_refuses_then_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "pki", "init", str(tmp_path))[0] == 0
    before = (tmp_path / "ca.pem").read_bytes()
    code, out, err = run(capsys, "pki", "init", str(tmp_path))
    assert code == 1 and out == ""
    assert_one_error_line(err)
    assert "--force" in err and str(tmp_path / "ca.pem") in err
    assert (tmp_path / "ca.pem").read_bytes() == before
    code, _, err = run(capsys, "pki", "init", str(tmp_path), "--force")
    assert code == 0 and err == ""
    assert (tmp_path / "ca.pem").read_bytes() != before


def test_issue_client(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "pki", "init", str(tmp_path))
    data = run_json(capsys, "--json", "pki", "issue-client", "alice", "--dir", str(tmp_path))
    assert data["files"] == [str(tmp_path / "alice.pem"), str(tmp_path / "alice.key")]
    (cert,) = data["certificates"]
    assert cert["subject"] == "CN=alice,O=dotsd"
    assert cert["issuer"].startswith("CN=dotsd CA ")
    code, _, err = run(capsys, "pki", "issue-client", "alice", "--dir", str(tmp_path))
    assert code == 1 and "--force" in err
    assert_one_error_line(err)
    code, _, _ = run(capsys, "pki", "issue-client", "alice", "--dir", str(tmp_path), "--force")
    assert code == 0


@pytest.mark.parametrize("name", [".alice", "a/b", "ca", "x" * 65])
def test_issue_client_bad_name(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               name: str) -> None:
    run(capsys, "pki", "init", str(tmp_path))
    code, out, err = run(capsys, "pki", "issue-client", name, "--dir", str(tmp_path))
    assert code == 1 and out == ""
    assert_one_error_line(err)


def test_issue_client_without_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "pki", "issue-client", "alice", "--dir", str(tmp_path))
    assert code == 1 and out == ""
    assert_one_error_line(err)
    assert "ca.pem" in err


def test_issue_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "pki", "init", str(tmp_path))
    data = run_json(capsys, "pki", "issue-server", "edge", "--dir", str(tmp_path),
                    "--dns", "dots.example.net", "--ip", "192.0.2.7", "--json")
    assert data["certificates"][0]["sans"] == ["DNS:dots.example.net", "IP:192.0.2.7"]
    data = run_json(capsys, "pki", "issue-server", "edge2", "--dir", str(tmp_path), "--json")
    assert data["certificates"][0]["sans"] == ["DNS:localhost", "IP:127.0.0.1", "IP:::1"]
    code, _, err = run(capsys, "pki", "issue-server", "edge3", "--dir", str(tmp_path),
                       "--ip", "not-an-ip")
    assert code == 1
    assert_one_error_line(err)


def test_os_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run(capsys, "pki", "init", str(blocker / "sub"))
    assert code == 1
    assert_one_error_line(err)


@pytest.mark.parametrize("argv", [
    [], ["pki"], ["nonsense"], ["pki", "init"], ["pki", "issue-client", "alice"],
    ["pki", "init", "d", "--bogus"],
])
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert "usage:" in err and "Traceback" not in err


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "pki" in out
    code, out, _ = run(capsys, "pki", "--help")
    assert code == 0 and "issue-client" in out
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("dotsd ")


def test_every_subcommand_has_a_handler() -> None:
    parser = build_parser()
    for argv in (["pki", "init", "d"], ["pki", "issue-client", "n", "--dir", "d"],
                 ["pki", "issue-server", "n", "--dir", "d"]):
        args = parser.parse_args(argv)
        assert callable(args.func)
        assert args.json is False and args.verbose == 0


def test_verbose_logs_key_value_lines(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "-v", "pki", "init", str(tmp_path))
    assert code == 0
    lines = err.strip().splitlines()
    assert lines and all(line.startswith("ts=") for line in lines)
    assert any('level=info logger=dotsd.pki.ca msg="pki initialised"' in line
               and f"dir={tmp_path}" in line for line in lines)
    code, _, err = run(capsys, "pki", "issue-client", "bob", "--dir", str(tmp_path), "-vv")
    assert "level=debug" in err


def test_key_value_formatter() -> None:
    record = logging.LogRecord("dotsd.x", logging.WARNING, __file__, 1, "said %s", ("hi",),
                               None)
    record.peer = "[::1]:4646"
    record.note = 'a "quoted" value'
    record.empty = ""
    line = KeyValueFormatter().format(record)
    assert line.startswith("ts=")
    assert ' level=warning logger=dotsd.x msg="said hi" peer=[::1]:4646 ' in line
    assert 'note="a \\"quoted\\" value"' in line
    assert line.endswith('empty=""')


@pytest.mark.network
def test_console_entry_point(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "dotsd.cli.main", "pki", "init", str(tmp_path), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["files"]) == 6
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1 and done.stdout == ""
    assert_one_error_line(done.stderr)


@pytest.mark.network
def test_closed_stdout_ends_quietly(tmp_path: Path) -> None:
    """`dotsd … | head`: a reader that goes away is no error worth a message."""

    proc = subprocess.Popen([sys.executable, "-m", "dotsd.cli.main", "--json", "pki", "init",
                             str(tmp_path / "p")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # nobody reads the answer
    err = proc.stderr.read()
    assert proc.wait(timeout=30) in (0, 141)
    assert b"Traceback" not in err and b"Broken pipe" not in err


@pytest.mark.parametrize("argv", [["--help"], ["pki", "--help"], ["--version"]])
def test_closed_stdout_after_argparse_output(argv: list[str]) -> None:
    """`dotsd --help | head` with Python's stdout buffered (no PYTHONUNBUFFERED): what
    argparse printed is flushed by main(), quietly, not at interpreter exit (status 120)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.Popen([sys.executable, "-m", "dotsd.cli.main", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # nobody reads the answer
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=30) in (0, 141)
    assert b"Traceback" not in err and b"Broken pipe" not in err
