"""``dotsd client`` against a real ``dotsd server`` process: every command, its output and exit
code, 'mid' values kept across runs, `run` serving the other commands on its control socket,
`status --watch`, and the failures (usage 2, unreachable 3, refused 4, local 1)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.pki import issued_client
from test_cli_server import DOTSD, running
from test_signal_redirect import serve

from dotsd.agents.mids import MidFile
from dotsd.cli import CommandError
from dotsd.cli.client import _split_server
from dotsd.cli.main import main
from dotsd.pki import PkiPaths, load_certificate, summarize
from dotsd.signal.mids import ROLLOVER_MID, MidStateError, next_mid


def _cli_sync(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


class Cli:
    """``dotsd client --pki ... --server [::1]:PORT --state ...`` run in a thread."""

    def __init__(self, pki: PkiPaths, port: int, state: Path) -> None:
        self.base = ["client", "--pki", str(pki.directory), "--server", f"[::1]:{port}",
                     "--state", str(state), "--timeout", "5"]

    async def __call__(self, *argv: str) -> tuple[int, str, str]:
        return await asyncio.to_thread(_cli_sync, [*self.base, *argv])

    async def json(self, *argv: str) -> Any:
        code, out, err = await self(*argv, "--json")
        assert code == 0, err
        return json.loads(out)


# ---------------------------------------------------------------------------------------------
# Sans-IO pieces


def test_next_mid_rules() -> None:
    assert next_mid(None, [], attack=False) == 1
    assert next_mid(7, [3, 9], attack=False) == 10
    # RFC 9132 §4.4.1.1: reset to 0 at 3/4 of 2^32-1 when no attack and nothing active.
    assert next_mid(ROLLOVER_MID, [], attack=False) == 0
    assert next_mid(ROLLOVER_MID, [], attack=True) == ROLLOVER_MID + 1
    assert next_mid(ROLLOVER_MID, [ROLLOVER_MID], attack=False) == ROLLOVER_MID + 1
    with pytest.raises(MidStateError):
        next_mid(2**32 - 1, [2**32 - 1], attack=True)


def test_mid_file(tmp_path: Path) -> None:
    mids = MidFile(tmp_path / "state" / "mids.json")
    assert mids.allocate("s:1", "c", []) == 1
    assert mids.allocate("s:1", "c", [5]) == 6
    assert mids.allocate("s:2", "c", []) == 1  # per server
    mids.seen("s:1", "c", 100)
    assert MidFile(mids.path).allocate("s:1", "c", []) == 101  # kept on disk
    mids.path.write_text("{not json")
    with pytest.raises(MidStateError, match=r"mids\.json"):
        mids.allocate("s:1", "c", [])
    assert mids.path.read_text() == "{not json"  # left as it was


@given(st.text(max_size=40))
def test_split_server_never_crashes(text: str) -> None:
    try:
        host, port = _split_server(text)
    except CommandError as exc:
        assert exc.exit_code == 2
    else:
        assert host and 0 < port <= 65535


def test_split_server_forms() -> None:
    assert _split_server("dots.example") == ("dots.example", 4646)
    assert _split_server("192.0.2.1:5000") == ("192.0.2.1", 5000)
    assert _split_server("[2001:db8::1]:5000") == ("2001:db8::1", 5000)
    assert _split_server("2001:db8::1") == ("2001:db8::1", 4646)


# ---------------------------------------------------------------------------------------------
# Against a real server


@pytest.mark.network
async def test_commands(pki: PkiPaths, tmp_path: Path) -> None:
    async with running(pki, tmp_path / "server") as server:
        cli = Cli(pki, server.port, tmp_path / "client")
        code, out, err = await cli("mitigate", "--target-prefix", "2001:db8:6401::1/128",
                                   "--target-port", "443", "--protocol", "tcp")
        assert code == 0, err
        assert "mitigation 1 created" in out and "3600 s granted" in out
        second = await cli.json("mitigate", "--target-prefix", "192.0.2.0/24",
                                "--lifetime", "600")
        assert second["mid"] == 2 and second["code"] == "2.01" and second["lifetime"] == 600
        listing = await cli.json("status")
        by_mid = {m["mid"]: m for m in listing["mitigations"]}
        assert set(by_mid) == {1, 2}
        assert by_mid[1]["target-port-range"] == [{"lower-port": 443}]
        assert by_mid[1]["target-protocol"] == [6]
        code, out, _ = await cli("status", "--mid", "2")
        assert code == 0 and out.startswith("mid 2  ") and "192.0.2.0/24" in out
        eff = await cli.json("efficacy", "--mid", "1", "--level", "under-attack")
        assert eff["code"] == "2.04"
        config = await cli.json("session-config", "set", "--heartbeat-interval", "60")
        assert config["sid"] == 1
        assert config["config"]["mitigating-config"]["heartbeat-interval"]["current"] == "60"
        code, _, err = await cli("session-config", "set", "--heartbeat-interval", "9999")
        assert code == 4 and "4.22" in err  # RFC 9132 §4.5.2: out of the server's range
        code, _, err = await cli("session-config", "set", "--heartbeat-interval", "99999")
        assert code == 2 and "uint16" in err  # not even a valid YANG value
        gone = await cli.json("withdraw", "--mid", "2")
        assert gone["code"] == "2.02"
        after = await cli.json("status", "--mid", "2")
        assert after["mitigations"][0]["status"] == "dots-client-withdrawn-mitigation"
        # 'mid' values keep increasing across runs: the next one is 3.
        third = await cli.json("mitigate", "--target-prefix", "198.51.100.7")
        assert third["mid"] == 3
        # Each run left its RTT and Happy Eyeballs winner for the next (dotsd.agents.paths).
        paths = json.loads((tmp_path / "client" / "paths.json").read_text())
        (entry,) = paths["servers"].values()
        assert 0 < entry["srtt"] < 1 and entry["winner"]["transport"] == "dtls"
        assert (tmp_path / "client" / "paths.json").stat().st_mode & 0o077 == 0


@pytest.mark.network
async def test_failures_and_exit_codes(pki: PkiPaths, tmp_path: Path) -> None:
    async with running(pki, tmp_path / "server") as server:
        cli = Cli(pki, server.port, tmp_path / "client")
        code, _, err = await cli("mitigate", "--target-prefix", "10.1.2.3/32")
        assert code == 4 and "4.00" in err and "outside the DOTS client domain" in err
        code, _, err = await cli("mitigate", "--target-prefix", "not-a-prefix")
        assert code == 2 and "--target-prefix" in err
        code, _, err = await cli("mitigate", "--lifetime", "60")
        assert code == 2 and "needs a target" in err
        code, _, err = await cli("mitigate", "--target-prefix", "2001:db8::1",
                                 "--protocol", "carrier-pigeon")
        assert code == 2 and "--protocol" in err
        code, _, err = await cli("efficacy", "--mid", "77", "--level", "under-attack")
        assert code == 4 and "4.04" in err
        code, _, err = await cli("session-config", "get", "--heartbeat-interval", "5")
        assert code == 2
        (tmp_path / "client").mkdir(exist_ok=True)
        (tmp_path / "client" / "mids.json").write_text("[]")
        code, _, err = await cli("mitigate", "--target-prefix", "2001:db8::1")
        assert code == 1 and "mids.json" in err
    # The server is gone: unreachable, exit 3, within the timeouts.
    cli = Cli(pki, server.port, tmp_path / "client2")
    cli.base[-1] = "1"
    code, _, err = await asyncio.wait_for(cli("status"), 20)
    assert code == 3 and "cannot reach DOTS server" in err
    code, _, err = await cli_missing_pki(tmp_path)
    assert code == 1 and "missing" in err


async def cli_missing_pki(tmp_path: Path) -> tuple[int, str, str]:
    return await asyncio.to_thread(_cli_sync, [
        "client", "--pki", str(tmp_path / "nopki"), "--server", "::1", "status"])


@contextlib.asynccontextmanager
async def run_client(pki: PkiPaths, port: int, state: Path) -> AsyncIterator[
        asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        *DOTSD, "client", "--pki", str(pki.directory), "--server", f"[::1]:{port}",
        "--state", str(state), "--json", "run", "--watch",
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def _events(proc: asyncio.subprocess.Process, until: str) -> list[dict[str, Any]]:
    assert proc.stdout is not None
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(20):
        while True:
            line = await proc.stdout.readline()
            assert line, f"the client exited; seen {seen}"
            seen.append(json.loads(line))
            if until in line.decode():
                return seen


async def _modules_loaded(argv: list[str], *, via_run: bool = True) -> set[str]:
    """The modules a `dotsd` process imports to run ``argv`` (python -X importtime)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-X", "importtime", "-m", "dotsd.cli.main", *argv,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert ("via" in json.loads(out)) == via_run
    return {line.rsplit("|", 1)[-1].strip() for line in err.decode().splitlines()
            if line.startswith("import time:")}


@pytest.mark.network
async def test_run_serves_commands_on_its_session(pki: PkiPaths, tmp_path: Path) -> None:
    state = tmp_path / "client"
    async with running(pki, tmp_path / "server") as server, \
            run_client(pki, server.port, state) as proc:
        up = await _events(proc, "session up")
        assert up[-1]["transport"].startswith("dtls://")
        assert (state / "client.sock").exists()
        cli = Cli(pki, server.port, state)
        made = await cli.json("mitigate", "--target-prefix", "2001:db8::5")
        assert made["via"] == "dotsd client run"  # the warm session, no new handshake
        # Through the running client a command loads only the command line: no event loop,
        # no TLS, no CBOR, no YANG (it used to load all of dotsd, ~0.4 s of CPU, before
        # sending anything; a detector calls it during an attack).
        loaded = await _modules_loaded([*cli.base, "status", "--json"])
        heavy = {m for m in loaded if m.split(".")[0] in (
            "asyncio", "ssl", "cryptography", "OpenSSL", "cbor2", "yangson", "logging",
            "tempfile") or m.startswith((
                "dotsd.agents", "dotsd.transport", "dotsd.node", "dotsd.cli.server",
                "dotsd.cli.pki", "dotsd.cli.demo", "dotsd.signal.config"))}
        assert not heavy, sorted(heavy)
        # The run client observes its mitigations and prints the status changes.
        notes = await _events(proc, "attack-successfully-mitigated")
        assert any(m.get("mid") == made["mid"] for n in notes
                   for m in n.get("mitigations", []))
        listing = await cli.json("status")
        assert listing["via"] == "dotsd client run"
        direct = await cli.json("--direct", "status")
        assert "via" not in direct
        # A command on its own session does not load the YANG validator (~0.17 s of CPU):
        # only the server validates requests.
        loaded = await _modules_loaded([*cli.base, "--direct", "status", "--json"],
                                       via_run=False)
        assert not {m for m in loaded if m.split(".")[0] in ("yangson", "elementpath")}

        def steady(listed: dict[str, Any]) -> list[dict[str, Any]]:  # lifetime counts down
            return [{k: v for k, v in m.items() if k != "lifetime"}
                    for m in listed["mitigations"]]

        assert steady(direct) == steady(listing)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        assert not (state / "client.sock").exists()


@pytest.mark.network
async def test_status_watch(pki: PkiPaths, tmp_path: Path) -> None:
    async with running(pki, tmp_path / "server") as server:
        cli = Cli(pki, server.port, tmp_path / "client")
        made = await cli.json("mitigate", "--target-prefix", "2001:db8::6")
        watch = await asyncio.create_subprocess_exec(
            *DOTSD, *cli.base, "status", "--mid", str(made["mid"]), "--watch", "--count", "3",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert watch.stdout is not None
            first = await asyncio.wait_for(watch.stdout.readline(), 20)
            assert b"attack-mitigation-in-progress" in first
            second = await asyncio.wait_for(watch.stdout.readline(), 20)
            assert b"attack-successfully-mitigated" in second  # the log mitigator, after 1 s
            code, _, err = await cli("withdraw", "--mid", str(made["mid"]))
            assert code == 0, err
            third = await asyncio.wait_for(watch.stdout.readline(), 20)
            assert b"dots-client-withdrawn-mitigation" in third
            assert await asyncio.wait_for(watch.wait(), 10) == 0
        finally:
            if watch.returncode is None:
                watch.kill()
                await watch.wait()


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["client", "--pki", "x", "--server", "h", "withdraw"]) == 2
    assert main(["client", "--pki", "x", "--server", "h", "mitigate", "--mid", "-1"]) == 2
    assert main(["client", "--pki", "x", "--server", "h", "--timeout", "0", "status"]) == 2
    assert main(["client", "--pki", "x", "--server", "h:99999", "status"]) == 2
    capsys.readouterr()



async def _event(server: Any, key: str) -> dict[str, Any]:
    assert server.proc.stdout is not None
    async with asyncio.timeout(20):
        while True:
            line = await server.proc.stdout.readline()
            assert line, "the server exited"
            event: dict[str, Any] = json.loads(line)
            if key in event:
                return event


@pytest.mark.network
async def test_operator_redirects_by_reloading(pki: PkiPaths, tmp_path: Path) -> None:
    """SIGHUP applies a [redirect] section: clients are sent to the alternate server (RFC 9132
    §4.6) and `dotsd client` follows; a bad file changes nothing; removing it ends it."""
    config = tmp_path / "server.toml"
    config.write_text("[server]\n")
    async with running(pki, tmp_path / "a", "--config", str(config)) as a, \
            serve(pki, "127.0.0.1", a.port, tmp_path / "b") as b:
        cli = Cli(pki, a.port, tmp_path / "client")
        config.write_text('[redirect]\nalt-server = "localhost"\n'
                          'alt-server-record = ["127.0.0.1"]\nttl = 600\n')
        a.proc.send_signal(signal.SIGHUP)
        assert (await _event(a, "reload"))["redirect"] == "localhost"
        made = await cli.json("mitigate", "--target-prefix", "2001:db8::7")
        assert made["server"] == f"localhost over dtls://127.0.0.1:{a.port}"
        assert [m.mid for m in b.server.table] == [made["mid"]]
        config.write_text("[redirect]\nttl = -5\n")
        a.proc.send_signal(signal.SIGHUP)
        failed = await _event(a, "reload")
        assert failed["reload"] == "failed" and "alt-server" in failed["event"]
        code, _, err = await cli("status")  # still redirected: B has the mitigation
        assert code == 0, err
        config.write_text("[server]\n")
        a.proc.send_signal(signal.SIGHUP)
        assert (await _event(a, "reload"))["redirect"] is None
        here = await cli.json("--direct", "mitigate", "--target-prefix", "2001:db8::8")
        assert here["server"] == f"::1 over dtls://[::1]:{a.port}"


@pytest.mark.network
async def test_run_survives_a_server_restart(pki: PkiPaths, tmp_path: Path) -> None:
    """`dotsd client run` over TLS: the server is killed (-9) and restarted on its state; the
    client sees the session end, redials (RFC 9132 §4.7) and serves commands again."""
    state = tmp_path / "client"
    async with running(pki, tmp_path / "server") as server:
        port = server.port
        proc = await asyncio.create_subprocess_exec(
            *DOTSD, "client", "--pki", str(pki.directory), "--server", f"[::1]:{port}",
            "--state", str(state), "--transport", "tls", "--json", "run",
            "--redial-interval", "0.5",  # RFC 9132 §4.7 asks for 60 s; a test bed may not
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            await _events(proc, "session up")
            cli = Cli(pki, port, state)
            made = await cli.json("mitigate", "--target-prefix", "2001:db8::9")
            assert made["via"] == "dotsd client run"
            server.proc.send_signal(signal.SIGKILL)
            await asyncio.wait_for(server.proc.wait(), 10)
            async with running(pki, tmp_path / "server", "--port", str(port)):
                again = await _events(proc, "re-established")
                assert again[-1]["reconnects"] >= 1
                listing = await cli.json("status")
                assert listing["via"] == "dotsd client run"
                assert [m["mid"] for m in listing["mitigations"]] == [made["mid"]]
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


@pytest.mark.network
async def test_each_client_in_its_own_domain(pki: PkiPaths, tmp_path: Path) -> None:
    """[[client]] sections: a listed client gets its own prefixes, an unlisted one is refused
    (4.01, exit 4) with unlisted-clients = "refuse"; SIGHUP admits it again."""
    acme = issued_client(pki, "acme").cert
    cuid = summarize(load_certificate(acme)).cuid
    config = tmp_path / "server.toml"
    listed = (f'[[client]]\nname = "acme"\ncuid = "{cuid}"\n'
              'allowed-prefixes = ["10.20.0.0/16"]\nmax-lifetime = 600\n')
    config.write_text('[policy]\nunlisted-clients = "refuse"\n' + listed)
    async with running(pki, tmp_path / "server", "--config", str(config)) as server:
        started = next(e for e in server.events if "clients" in e)
        assert started["clients"] == ["acme"] and started["unlisted"] == "refuse"
        cli = Cli(pki, server.port, tmp_path / "acme")
        cli.base += ["--cert", "acme"]
        made = await cli.json("mitigate", "--target-prefix", "10.20.0.7/32",
                              "--lifetime", "3600")
        assert made["lifetime"] == 600
        code, _, err = await cli("mitigate", "--target-prefix", "2001:db8::7")
        assert code == 4 and "outside the DOTS client domain" in err
        other = Cli(pki, server.port, tmp_path / "other")
        code, _, err = await other("mitigate", "--target-prefix", "2001:db8::7")
        assert code == 4 and "4.01" in err and "not authorized" in err
        # Unlisted clients: lab mode again; the CoAP limits change only with a restart.
        config.write_text(listed + "[limits]\nmax-observations = 10\n")
        server.proc.send_signal(signal.SIGHUP)
        reloaded = await _event(server, "reload")
        assert reloaded["reload"] == "ok" and reloaded["restart"] == ["limits"]
        assert (await other.json("mitigate", "--target-prefix", "2001:db8::7"))["mid"] >= 1
        code, _, err = await other("mitigate", "--target-prefix", "10.20.0.8/32")
        assert code == 4 and "outside the DOTS client domain" in err


@pytest.mark.network
async def test_psk_client_commands(pki: PkiPaths, tmp_path: Path) -> None:
    """`dotsd client --psk-identity ID --psk-key-file FILE`: a CPE without a certificate asks
    and withdraws mitigation over DTLS; the usage errors are exit 2, a wrong key exit 3."""
    key = "c0ffee" * 8
    config = tmp_path / "server.toml"
    config.write_text('[[client]]\nname = "cpe"\npsk-identity = "cpe-17"\n'
                      f'psk-key = "{key}"\nallowed-prefixes = ["10.17.0.0/16"]\n')
    key_file = tmp_path / "cpe.key"
    key_file.write_text(key + "\n")
    async with running(pki, tmp_path / "server", "--config", str(config)) as server:
        base = ["client", "--server", f"[::1]:{server.port}", "--state",
                str(tmp_path / "cpe"), "--timeout", "3"]

        async def cli(*argv: str) -> tuple[int, str, str]:
            return await asyncio.to_thread(_cli_sync, [*base, *argv])

        psk = ["--psk-identity", "cpe-17", "--psk-key-file", str(key_file)]
        code, out, err = await cli(*psk, "mitigate", "--target-prefix", "10.17.0.9",
                                   "--json")
        assert code == 0, err
        made = json.loads(out)
        assert made["server"].endswith(f"over dtls://[::1]:{server.port}")
        code, out, err = await cli(*psk, "withdraw", "--mid", str(made["mid"]))
        assert code == 0, err
        code, _, err = await cli(*psk, "--transport", "tls", "status")
        assert code == 2 and "DTLS only" in err
        code, _, err = await cli("--psk-identity", "cpe-17", "status")
        assert code == 2 and "--psk-key-file" in err
        code, _, err = await cli("status")
        assert code == 2 and "--pki" in err
        key_file.write_text("ab" * 32)
        code, _, err = await cli(*psk, "status")
        assert code == 3, err


@pytest.mark.network
async def test_mitigate_asks_no_mids_it_knows_and_reports_a_lost_201_as_created(
        pki: PkiPaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`dotsd client mitigate` without --mid: the 'mid' file knows the last one, so the PUT
    goes first, with no GET of the client's mitigations before it (a round trip that can be
    lost during an attack); and a new 'mid' answered 2.04 (its 2.01 was lost, a repetition
    found the request created) is reported as created."""
    from dotsd.agents.connect import ClientSettings, new_client
    from dotsd.cli.client import MID_FILE
    from dotsd.cli.client_ops import Session, op_mitigate

    async with serve(pki, "127.0.0.1", 0, tmp_path / "server") as agent:
        seen: list[tuple[str, int]] = []
        answer = agent.server.serve

        def counting(resource: str, req: Any) -> Any:
            seen.append((resource, int(req.message.code)))
            return answer(resource, req)

        monkeypatch.setattr(agent.server, "serve", counting)
        client = new_client(ClientSettings("127.0.0.1", agent.port, pki=pki.directory,
                                           transports=("dtls",), heartbeat=(0.0, 3)))
        await client.start()
        try:
            mids = MidFile(tmp_path / "client" / MID_FILE)
            session = Session(client, client.dialer, mids, f"127.0.0.1:{agent.port}")  # type: ignore[arg-type]
            scope = {"target-prefix": ["2001:db8:6401::9/128"], "lifetime": 600}
            first = await op_mitigate(session, {"scope": scope})  # a new state directory:
            assert seen == [("mitigate", 1), ("mitigate", 3)]  # GET, then PUT
            seen.clear()
            second = await op_mitigate(session, {"scope": scope})
            assert seen == [("mitigate", 3)]  # the PUT alone
            assert (first.data["mid"], second.data["mid"]) == (1, 2)

            put = client.mitigate

            async def lost_201(scope: Any, mid: int | None = None) -> Any:
                await put(scope, mid=mid)  # created; pretend its 2.01 never came back
                return await put(scope, mid=mid)  # the repetition: 2.04

            monkeypatch.setattr(client, "mitigate", lost_201)
            third = await op_mitigate(session, {"scope": scope})
            assert third.data["code"] == "2.04" and third.data["result"] == "created"
            again = await op_mitigate(session, {"scope": scope, "mid": 3})
            assert again.data["result"] == "updated"  # an existing 'mid' given: an update
        finally:
            await client.close()
