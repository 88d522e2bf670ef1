"""``python -m bench loss``: DOTS mitigation requests over a lossy 50 ms path (issue 12).

One lane (three network namespaces, :mod:`bench.lanes`) per series, run side by side; in
each, ``bench.relay`` adds 25 ms each way and seeded random loss between the client and a
``dotsd server``. Series:

- ``warm``: ``dotsd client run`` is up (its session established at 0 % loss); each trial
  runs ``dotsd client mitigate`` (through the running agent) once the loss is set.
- ``cold``: ``dotsd client --direct mitigate``: a session of its own, DTLS handshake included.
- ``libcoap-con`` / ``libcoap-non``: ``coap-client-openssl`` PUTs the same mitigation
  request (CON, or NON with ``-N``) over DTLS to the same kind of server: the reference.

Each trial has a budget (5 s) from the start of the client process; acknowledged means the
client printed a 2.01/2.04 within it. "Received by the server" comes from the server's log
(the log mitigator's ``action=apply`` line, with its time stamp). The relay counts the
datagrams the client side sent. Between trials the loss is 0 %: what a trial created is
withdrawn, and the warm agent's session is checked, so trials are independent.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import json
import math
import os
import platform
import re
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from bench.cpu import busy_per_cpu
from bench.lanes import LabError, Lane, preflight, remove_stale

SERIES: Final = ("warm", "cold", "libcoap-con", "libcoap-non")
POINTS: Final = ((0, 0), (10, 10), (25, 25), (50, 50), (75, 75), (5, 95))
# The "before" measurement (warm `dotsd client mitigate`, % acknowledged).
BEFORE_WARM: Final = {"0/0": 100, "10/10": 97, "25/25": 40, "50/50": 20, "75/75": 0,
                      "5/95": 0}
RTT: Final = 0.050
DELAY: Final = RTT / 2
PORT: Final = 4646
LIBCOAP_CLIENT: Final = "coap-client-openssl"
CONTENT_FORMAT_DOTS_CBOR: Final = 271  # RFC 9132 §10.4
REPO: Final = Path(__file__).resolve().parent.parent
DOTSD: Final = str(Path(sys.executable).with_name("dotsd"))
RESULTS: Final = REPO / "bench" / "results"
LOCK_FILE: Final = "/run/dotsd-bench-loss.lock"

# Targets of issue 12 (checked at the end of the report).
TARGET_WARM_ACK: Final = 0.99
TARGET_WARM_RECV_1S_5_95: Final = 0.99
TARGET_COLD: Final = {"25/25": 0.90, "50/50": 0.50}

_LIBCOAP_OK: Final = re.compile(r"\bt:(?:ACK|CON|NON) c:2\.0[14]\b")
_LIBCOAP_DELETED: Final = re.compile(r"\bt:(?:ACK|CON|NON) c:2\.02\b")
_APPLY: Final = re.compile(
    r"^ts=(\S+) .*logger=dotsd\.mitigate\.log msg=\"mitigation action=apply "
    r"cuid=(\S+) mid=(\d+) prefixes=([^\s\"]+)")
_AGENT_EVENTS: Final = {
    "lost": re.compile(r"session lost"),
    "reconnect-failed": re.compile(r"reconnect failed"),
    "connected": re.compile(r"connected to DOTS server"),
}


def point_label(point: tuple[int, int]) -> str:
    return f"{point[0]}/{point[1]}"


def parse_points(text: str) -> tuple[tuple[int, int], ...]:
    points = []
    for item in text.split(","):
        up, sep, down = item.strip().partition("/")
        if not sep:
            raise ValueError(f"a point is UP/DOWN (loss %), got {item!r}")
        u, d = int(up), int(down)
        if not (0 <= u <= 100 and 0 <= d <= 100):
            raise ValueError(f"loss out of 0..100 in {item!r}")
        points.append((u, d))
    if not points:
        raise ValueError("no points")
    return tuple(points)


@dataclass
class Settings:
    trials: int = 30
    budget: float = 5.0  # seconds per trial, from the client process's start
    points: tuple[tuple[int, int], ...] = POINTS
    series: tuple[str, ...] = SERIES
    seed: str = "12"
    transport: str = "auto"  # dotsd client --transport
    cold_state: str = "kept"  # "kept": one state dir per lane; "fresh": a new one per trial
    out_dir: Path | None = RESULTS  # None: write nothing
    as_json: bool = False
    quick: bool = False


@dataclass
class Trial:
    series: str
    point: str
    index: int
    seed: str
    prefix: str
    started: float = 0.0  # wall clock
    acked: bool = False  # a 2.01/2.04 within the budget
    ack_time: float | None = None  # seconds from the process start
    code: str | None = None
    exit: int | None = None
    killed: bool = False
    transport: str | None = None
    via_agent: bool | None = None  # warm: the answer came through `dotsd client run`
    received: bool = False  # the server applied it within the budget
    recv_time: float | None = None  # seconds from the process start to the server's log line
    received_late: bool = False  # applied only after the budget (the agent kept trying)
    mids: list[int] = field(default_factory=list)  # mids the server applied for the prefix
    up_datagrams: int = 0  # frames the client side sent (lossable: UDP/TCP) in the window
    up_dropped: int = 0
    down_datagrams: int = 0
    down_dropped: int = 0
    wire_time: float | None = None  # first client datagram -> ack or end of budget
    first_datagram: float | None = None  # seconds from the process start
    relay_late_p99_ms: float | None = None
    agent_events: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    output: str = ""  # the client's output (cut), for failed trials
    # (seconds from the start, "up"/"down", frame length, "drop"/"hold") up to the end
    trace: list[tuple[float, str, int, str]] = field(default_factory=list)

    @property
    def per_rtt(self) -> float | None:
        if not self.wire_time or self.up_datagrams == 0:
            return None
        return self.up_datagrams / (self.wire_time / RTT)


class StopRun(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Small helpers


def _wall_from_iso(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class LogTail:
    """A log file read incrementally; ``since(mark)`` is what was written after ``mark``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def since(self, mark: int, limit: int = 4 << 20) -> str:
        try:
            with self.path.open("rb") as f:
                f.seek(mark)
                return f.read(limit).decode("utf-8", "replace")
        except FileNotFoundError:
            return ""


class ServerLog(LogTail):
    """The dotsd server's log: the first ``action=apply`` of each prefix."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._offset = 0
        self._partial = ""
        self.applied: dict[str, tuple[float, set[int]]] = {}

    def refresh(self) -> None:
        text = self.since(self._offset)
        self._offset += len(text.encode("utf-8"))
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            m = _APPLY.match(line)
            if m is None:
                continue
            when = _wall_from_iso(m.group(1))
            for prefix in m.group(4).split(","):
                first, mids = self.applied.get(prefix, (when, set()))
                mids.add(int(m.group(3)))
                self.applied[prefix] = (min(first, when), mids)


class RelayControl:
    def __init__(self, path: Path, deadline: float) -> None:
        self.path = path
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise LabError(f"relay control socket {path} did not appear") from None
                time.sleep(0.05)
        self.sock.settimeout(5.0)
        self._buffer = b""

    def cmd(self, line: str) -> dict[str, Any]:
        self.sock.sendall(line.encode() + b"\n")
        for _ in range(1000):
            if b"\n" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\n", 1)
                answer: dict[str, Any] = json.loads(raw)
                if not answer.get("ok"):
                    raise LabError(f"relay: {line!r}: {answer.get('error')}")
                return answer
            chunk = self.sock.recv(65536)
            if not chunk:
                raise LabError("relay control socket closed")
            self._buffer += chunk
        raise LabError("relay: answer too long")

    def close(self) -> None:
        self.sock.close()


@dataclass
class Outcome:
    acked: bool
    ack_time: float | None
    code: str | None
    exit: int | None
    killed: bool
    output: str
    stats: dict[str, Any] | None
    end_wall: float
    data: dict[str, Any] | None = None


def run_client(cmd: Sequence[str], budget: float, success: Callable[[str], str | None],
               on_end: Callable[[], dict[str, Any] | None], *, cwd: Path,
               grace: float = 3.0) -> tuple[float, Outcome]:
    """Run ``cmd`` with a ``budget`` (seconds from its start). ``success(line)`` returns the
    CoAP code of a line announcing success, else None. ``on_end`` is called the moment the
    success line arrives or the budget runs out (the relay's counters are read then).
    Returns the wall-clock start and the outcome; never waits more than budget + grace."""
    start_wall = time.time()
    start = time.monotonic()
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, cwd=cwd)
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    chunks: list[bytes] = []
    pending = b""
    acked_at: float | None = None
    code: str | None = None
    data: dict[str, Any] | None = None
    stats: dict[str, Any] | None = None
    eof = False
    deadline = start + budget
    try:
        while not eof and acked_at is None:
            chunk = _read_until(sel, fd, deadline)
            if chunk is None:
                break
            if not chunk:
                eof = True
                break
            chunks.append(chunk)
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                text = line.decode("utf-8", "replace")
                found = success(text)
                if found is not None and acked_at is None:
                    acked_at = time.monotonic() - start
                    code = found
                    with contextlib.suppress(ValueError):
                        parsed = json.loads(text)
                        data = parsed if isinstance(parsed, dict) else None
        if eof and acked_at is None and pending:
            found = success(pending.decode("utf-8", "replace"))
            if found is not None:
                acked_at, code = time.monotonic() - start, found
        end_wall = time.time()
        stats = on_end()
        killed = False
        # Let the client finish (close its session) within the grace, then stop it.
        exit_deadline = time.monotonic() + (grace if acked_at is not None else 0.0)
        while not eof:
            chunk = _read_until(sel, fd, exit_deadline)
            if chunk is None:
                break
            if not chunk:
                eof = True
            else:
                chunks.append(chunk)
        if proc.poll() is None:
            proc.kill()
            killed = True
        try:
            exit_code: int | None = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            exit_code = None
        with contextlib.suppress(OSError):
            rest = proc.stdout.read()
            if rest:
                chunks.append(rest)
    finally:
        sel.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        proc.stdout.close()
    output = b"".join(chunks).decode("utf-8", "replace")
    if acked_at is not None and acked_at > budget:
        acked_at = None
    return start_wall, Outcome(acked_at is not None, acked_at, code, exit_code, killed,
                               output, stats, end_wall, data)


def _read_until(sel: selectors.BaseSelector, fd: int, until: float) -> bytes | None:
    """The process's next output before ``until`` (monotonic): bytes, b"" at its end, or
    None when ``until`` came first."""
    while (left := until - time.monotonic()) > 0:
        if sel.select(left):
            chunk = _read_some(fd)
            if chunk is not None:
                return chunk
    return None


def _read_some(fd: int) -> bytes | None:
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return None


def dotsd_success(line: str) -> str | None:
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        data = json.loads(line)
    except ValueError:
        return None
    code = data.get("code") if isinstance(data, dict) else None
    return code if code in ("2.01", "2.04") else None


def libcoap_success(line: str) -> str | None:
    m = _LIBCOAP_OK.search(line)
    return m.group(0).split("c:")[1] if m else None


def quiet_run(cmd: Sequence[str], timeout: float, cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                              cwd=cwd, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(list(cmd), -9, _text(exc.stdout), _text(exc.stderr))


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------
# PKI and the mitigation request body


@dataclass(frozen=True)
class Pki:
    directory: Path
    cuid: str

    @property
    def ca(self) -> str:
        return str(self.directory / "ca.pem")

    @property
    def client_cert(self) -> str:
        return str(self.directory / "client.pem")

    @property
    def client_key(self) -> str:
        return str(self.directory / "client.key")


def make_pki(directory: Path, server_addresses: Sequence[str]) -> Pki:
    """``dotsd pki init`` plus a server certificate naming the lanes' server addresses."""
    def dotsd(*args: str) -> str:
        proc = subprocess.run([DOTSD, *args], capture_output=True, text=True, timeout=60,
                              check=False)
        if proc.returncode != 0:
            raise LabError(f"dotsd {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    dotsd("pki", "init", str(directory))
    ips = [a for addr in server_addresses for a in ("--ip", addr)]
    dotsd("pki", "issue-server", "--dir", str(directory), "--force", *ips, "server")
    shown = json.loads(dotsd("--json", "pki", "show", str(directory / "client.pem")))
    return Pki(directory, shown["certificates"][0]["cuid"])


def mitigation_body(prefix: str, lifetime: int = 3600) -> bytes:
    from dotsd.model.codec import to_cbor

    return to_cbor({"ietf-dots-signal-channel:mitigation-scope": {
        "scope": [{"target-prefix": [prefix], "lifetime": lifetime}]}})


def server_config(path: Path, bind: str, pki: Pki, state: Path) -> None:
    path.write_text(
        "# written by python -m bench loss\n"
        "[server]\n"
        f'bind = "{bind}"\nport = {PORT}\npki = "{pki.directory}"\nstate = "{state}"\n'
        "[policy]\n"
        'allowed-prefixes = ["2001:db8::/32"]\n'
        "max-mitigations-per-client = 100000\n"
        "[mitigator]\n"
        'name = "log"\n'
        # No 'successfully mitigated' feedback during a trial: its notification and the
        # client's ACK would count as the trial's traffic (TOML has no null: a day).
        "options = { feedback_delay = 86400.0 }\n")


# ---------------------------------------------------------------------------------------------
# One lane: its namespaces, relay, server (and agent), and the trials of one series


class LaneRun:
    def __init__(self, lane: Lane, series: str, settings: Settings, pki: Pki, work: Path,
                 stop: threading.Event, say: Callable[[str], None]) -> None:
        self.lane = lane
        self.series = series
        self.settings = settings
        self.pki = pki
        self.work = work / f"lane{lane.index}-{series}"
        self.stop = stop
        self.say = say
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.files: list[IO[bytes]] = []
        self.relay: RelayControl | None = None
        self.server_log = ServerLog(self.work / "server.log")
        self.agent_log = LogTail(self.work / "agent.log")
        self.agent_restarts = 0
        self.server_restarts = 0
        self.counter = 0
        self.trials: list[Trial] = []
        self.error: str | None = None
        self.started = time.monotonic()

    # -- set-up and tear-down ------------------------------------------------------------------

    def _spawn(self, name: str, ns: str, cmd: Sequence[str], log: Path,
               prefix: Sequence[str] = ()) -> subprocess.Popen[bytes]:
        f = log.open("ab")
        self.files.append(f)
        proc = subprocess.Popen([*self.lane.exec_prefix(ns), *prefix, *cmd], stdout=f,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO)
        self.procs[name] = proc
        return proc

    def setup(self) -> None:
        self.work.mkdir(parents=True)
        self.lane.create()
        control = self.work / "relay.sock"
        # The relay emulates the network: a real-time priority keeps its timing when the
        # clients under test load the CPU (it sleeps in select() between frames and uses
        # little CPU; the kernel's RT throttling bounds it anyway). Without chrt: nice.
        priority = (("chrt", "-f", "20") if shutil.which("chrt") else ("nice", "-n", "-10"))
        self._spawn("relay", self.lane.relay_ns,
                    [sys.executable, "-m", "bench.relay", "--a", self.lane.relay_a,
                     "--b", self.lane.relay_b, "--control", str(control),
                     "--delay", str(DELAY), "--max-seconds", "14400"],
                    self.work / "relay.log", prefix=priority)
        self.relay = RelayControl(control, time.monotonic() + 15)
        self.relay.cmd("loss 0 0 setup")
        self.start_server()
        if self.series == "warm":
            self.start_agent()
        elif self.series == "cold":
            self._prime_cold()

    def start_server(self) -> None:
        config = self.work / "server.toml"
        server_config(config, self.lane.server_addr, self.pki, self.work / "server-state")
        mark = self.server_log.size()
        self._spawn("server", self.lane.server_ns, [DOTSD, "-v", "server", "--config",
                                                     str(config)], self.work / "server.log")
        self._wait_for(lambda: "DOTS server listening" in self.server_log.since(mark),
                       20.0, "the dotsd server did not start", "server")

    def client_base(self, state: Path) -> list[str]:
        return [DOTSD, "--json", "client", "--pki", str(self.pki.directory),
                "--server", self.lane.server_addr, "--state", str(state),
                "--timeout", f"{self.settings.budget:g}", "--transport",
                self.settings.transport]

    @property
    def warm_state(self) -> Path:
        return self.work / "agent-state"

    def start_agent(self) -> None:
        mark = self.agent_log.size()
        cmd = [DOTSD, "-v", *self.client_base(self.warm_state)[2:], "run"]
        self._spawn("agent", self.lane.client_ns, cmd, self.work / "agent.log")
        self._wait_for(lambda: "session up with" in self.agent_log.since(mark)
                       and (self.warm_state / "client.sock").exists(),
                       20.0, "`dotsd client run` did not come up", "agent")

    def _prime_cold(self) -> None:
        """One request at 0 % loss so the kept state directory knows its 'mid' values (the
        client asks the server for them only when it knows none)."""
        if self.settings.cold_state != "kept":
            return
        prefix = f"2001:db8:ffff:{self.lane.index:x}::1/128"
        cmd = [*self.lane.exec_prefix(self.lane.client_ns),
               *self.client_base(self.work / "cold-state"), "--direct", "mitigate",
               "--target-prefix", prefix]
        proc = quiet_run(cmd, 30.0, REPO)
        if proc.returncode != 0:
            raise LabError(f"cold: priming request failed ({proc.returncode}): "
                           f"{(proc.stdout + proc.stderr).strip()[-300:]}")
        time.sleep(0.2)
        self.server_log.refresh()
        self._withdraw_libcoap(self.server_log.applied.get(prefix, (0.0, set()))[1])

    def _wait_for(self, ready: Callable[[], bool], timeout: float, what: str,
                  proc_name: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            proc = self.procs.get(proc_name)
            if proc is not None and proc.poll() is not None:
                raise LabError(f"{what}: exited {proc.returncode}")
            if time.monotonic() > deadline:
                raise LabError(f"{what} within {timeout:g} s")
            time.sleep(0.05)

    def teardown(self) -> None:
        if self.relay is not None:
            with contextlib.suppress(OSError, LabError, ValueError):
                self.relay.cmd("quit")
            self.relay.close()
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=3)
        for f in self.files:
            f.close()
        with contextlib.suppress(LabError, OSError, subprocess.TimeoutExpired):
            self.lane.delete()

    # -- the trials ----------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self.setup()
            for point in self.settings.points:
                self.run_point(point)
        except StopRun:
            pass
        except Exception as exc:  # recorded: the other lanes go on
            self.error = f"{type(exc).__name__}: {exc}"
            self.say(f"[{self.series}] lane failed: {self.error}")

    def run_point(self, point: tuple[int, int]) -> None:
        label = point_label(point)
        done: list[Trial] = []
        for index in range(self.settings.trials):
            if self.stop.is_set():
                raise StopRun
            trial = self.one_trial(point, index)
            done.append(trial)
            self.trials.append(trial)
            if (index + 1) % 10 == 0 or index + 1 == self.settings.trials:
                self.say(progress_line(self.series, label, done, self.settings))

    def one_trial(self, point: tuple[int, int], index: int) -> Trial:
        label = point_label(point)
        self.counter += 1
        pidx = self.settings.points.index(point)
        # Canonical text: the server logs prefixes that way.
        prefix = str(ipaddress.ip_network(
            f"2001:db8:{self.lane.index:x}:{pidx:x}::{index + 1:x}/128"))
        # The same loss draws for every series at a given point and trial.
        seed = f"{self.settings.seed}/{label}/{index}"
        trial = Trial(self.series, label, index, seed, prefix)
        try:
            self._trial(trial, point)
        except (LabError, OSError, ValueError, subprocess.SubprocessError) as exc:
            trial.error = f"{type(exc).__name__}: {exc}"
            self._recover()
        return trial

    def _trial(self, trial: Trial, point: tuple[int, int]) -> None:
        assert self.relay is not None
        relay = self.relay
        self._check_alive()
        if self.series == "warm":
            cmd = [*self.client_base(self.warm_state), "mitigate", "--target-prefix",
                   trial.prefix]
            success = dotsd_success
        elif self.series == "cold":
            state = (self.work / "cold-state" if self.settings.cold_state == "kept"
                     else self.work / f"cold-state-{self.counter}")
            cmd = [*self.client_base(state), "--direct", "mitigate", "--target-prefix",
                   trial.prefix]
            success = dotsd_success
        else:
            body = self.work / "body.cbor"
            body.write_bytes(mitigation_body(trial.prefix))
            mid = 1_000_000 + self.counter
            cmd = [LIBCOAP_CLIENT, *(["-N"] if self.series == "libcoap-non" else []),
                   "-v", "6", "-m", "put", "-t", str(CONTENT_FORMAT_DOTS_CBOR),
                   "-f", str(body), *self._libcoap_auth(),
                   "-B", f"{max(1, math.ceil(self.settings.budget))}",
                   f"{self._uri()}/mid={mid}"]
            success = libcoap_success
        agent_mark = self.agent_log.size()
        relay.cmd(f"loss {point[0]} {point[1]} {trial.seed}")
        relay.cmd("reset")
        trial.started, out = run_client(
            [*self.lane.exec_prefix(self.lane.client_ns), *cmd], self.settings.budget,
            success, lambda: relay.cmd("stats"), cwd=REPO)
        trace = relay.cmd("trace").get("trace", [])
        relay.cmd("loss 0 0 between")
        self._record(trial, out)
        end = trial.started + (out.ack_time if out.ack_time is not None
                               else self.settings.budget)
        trial.trace = [(round(w - trial.started, 4), d, n, what) for w, d, n, what in trace
                       if w <= end + 0.001]
        if self.series == "warm" and not out.acked:
            # The agent keeps trying until its own timeout (the budget, from when it got
            # the command): wait for that before looking and cleaning up.
            time.sleep(max(0.0, trial.started + self.settings.budget + 1.0 - time.time()))
        time.sleep(0.1)  # the server's log line of a request acknowledged just now
        self.server_log.refresh()
        first, mids = self.server_log.applied.get(trial.prefix, (None, set()))
        trial.mids = sorted(mids)
        if first is not None:
            trial.recv_time = round(first - trial.started, 4)
            trial.received = trial.recv_time <= self.settings.budget
            trial.received_late = not trial.received
        if self.series == "warm":
            self._withdraw_warm(trial)
            self._settle_warm(trial)
            events = self.agent_log.since(agent_mark)
            trial.agent_events = {k: len(p.findall(events)) for k, p in _AGENT_EVENTS.items()
                                  if p.search(events)}
        else:
            failed = self._withdraw_libcoap(mids)
            if failed:
                trial.error = f"withdraw failed for mid(s) {failed}"

    def _record(self, trial: Trial, out: Outcome) -> None:
        trial.acked = out.acked
        trial.ack_time = None if out.ack_time is None else round(out.ack_time, 4)
        trial.code = out.code
        trial.exit = out.exit
        trial.killed = out.killed
        if out.data is not None:
            server = str(out.data.get("server", ""))
            trial.transport = server.rsplit(" over ", 1)[-1].split(":", 1)[0] or None
            trial.via_agent = out.data.get("via") == "dotsd client run"
        elif self.series.startswith("libcoap"):
            trial.transport = "dtls"
        if not out.acked:
            trial.output = out.output[-600:]
        stats = out.stats or {}
        up, down = stats.get("up", {}), stats.get("down", {})
        trial.up_datagrams = int(up.get("seen", 0))
        trial.up_dropped = int(up.get("dropped", 0))
        trial.down_datagrams = int(down.get("seen", 0))
        trial.down_dropped = int(down.get("dropped", 0))
        lates = [x for x in (up.get("late_p99_ms"), down.get("late_p99_ms")) if x is not None]
        trial.relay_late_p99_ms = max(lates) if lates else None
        first = up.get("first_wall")
        if first is not None:
            trial.first_datagram = round(first - trial.started, 4)
            end = (trial.started + out.ack_time) if out.ack_time is not None else out.end_wall
            trial.wire_time = round(max(end - first, 1e-3), 4)

    def _libcoap_auth(self) -> list[str]:
        return ["-c", self.pki.client_cert, "-j", self.pki.client_key, "-C", self.pki.ca]

    def _uri(self) -> str:
        return (f"coaps://{self.lane.server_addr}:{PORT}/.well-known/dots/mitigate/"
                f"cuid={self.pki.cuid}")

    def _withdraw_libcoap(self, mids: set[int] | list[int]) -> list[int]:
        """DELETE each mid with libcoap (at 0 % loss): quicker than a dotsd process."""
        failed = []
        for mid in sorted(mids):
            for _ in range(3):
                proc = quiet_run([*self.lane.exec_prefix(self.lane.client_ns), LIBCOAP_CLIENT,
                                  "-v", "6", "-m", "delete", *self._libcoap_auth(), "-B", "3",
                                  f"{self._uri()}/mid={mid}"], 10.0, REPO)
                if _LIBCOAP_DELETED.search(proc.stdout + proc.stderr):
                    break
            else:
                failed.append(mid)
        return failed

    def _agent_command(self, *args: str, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
        return quiet_run([*self.lane.exec_prefix(self.lane.client_ns),
                          *self.client_base(self.warm_state), *args], timeout, REPO)

    def _withdraw_warm(self, trial: Trial) -> None:
        for mid in trial.mids:
            proc = self._agent_command("withdraw", "--mid", str(mid))
            if proc.returncode != 0:
                note = f"withdraw mid {mid}: exit {proc.returncode}: {proc.stderr.strip()[-200:]}"
                trial.error = f"{trial.error}; {note}" if trial.error else note

    def _settle_warm(self, trial: Trial) -> None:
        """At 0 % loss the agent answers a status request through its session; when it does
        not, wait (bounded) and restart it as a last resort."""
        for attempt in range(5):
            proc = self._agent_command("status")
            if proc.returncode == 0 and '"via": "dotsd client run"' in proc.stdout:
                return
            if attempt == 0:
                note = (f"status after the trial: exit {proc.returncode} "
                        f"{(proc.stderr or proc.stdout).strip()[-200:]}")
                trial.error = f"{trial.error}; {note}" if trial.error else note
            if self.procs["agent"].poll() is not None:
                break
            time.sleep(2.0)
        self._restart("agent")

    def _check_alive(self) -> None:
        for name in ("relay", "server", "agent"):
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                if name == "relay":
                    raise LabError(f"the relay exited {proc.returncode}")
                self.say(f"[{self.series}] {name} exited {proc.returncode}: restarting it")
                self._restart(name)

    def _restart(self, name: str) -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if name == "agent":
            self.agent_restarts += 1
            self.start_agent()
        elif name == "server":
            self.server_restarts += 1
            self.start_server()

    def _recover(self) -> None:
        if self.relay is not None:
            with contextlib.suppress(LabError, OSError, ValueError):
                self.relay.cmd("loss 0 0 recover")
        with contextlib.suppress(LabError, OSError, subprocess.SubprocessError):
            self._check_alive()


# ---------------------------------------------------------------------------------------------
# Statistics and the report


def _quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile; failures count as +inf."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def summarize(trials: list[Trial], budget: float) -> dict[str, Any]:
    n = len(trials)
    if n == 0:
        return {"n": 0}
    times = [t.ack_time if t.acked and t.ack_time is not None else math.inf for t in trials]
    recv = [t.recv_time if t.received and t.recv_time is not None else math.inf
            for t in trials]
    wire = sum(t.wire_time or 0.0 for t in trials if t.up_datagrams)
    sent = sum(t.up_datagrams for t in trials)
    per_rtt = [p for p in (t.per_rtt for t in trials) if p is not None]
    lates = [t.relay_late_p99_ms for t in trials if t.relay_late_p99_ms is not None]
    transports: dict[str, int] = {}
    for t in trials:
        if t.transport:
            transports[t.transport] = transports.get(t.transport, 0) + 1
    events: dict[str, int] = {}
    for t in trials:
        for k, v in t.agent_events.items():
            events[k] = events.get(k, 0) + v
    return {
        "n": n,
        "acked": sum(t.acked for t in trials),
        "received": sum(t.received for t in trials),
        "received_1s": sum(1 for r in recv if r <= 1.0),
        "received_late": sum(t.received_late for t in trials),
        "median": _quantile(times, 0.5),
        "p95": _quantile(times, 0.95),
        "recv_median": _quantile(recv, 0.5),
        "datagrams": sent,
        "per_rtt": (sent / (wire / RTT)) if wire > 0 else None,
        "per_rtt_max": max(per_rtt) if per_rtt else None,
        "relay_late_p99_ms": max(lates) if lates else None,
        "errors": sum(1 for t in trials if t.error),
        "not_via_agent": sum(1 for t in trials if t.via_agent is False),
        "transports": transports,
        "agent_events": events,
    }


def _pct(count: int, n: int) -> str:
    return f"{100.0 * count / n:.0f} %" if n else "-"


def _secs(value: float | None, budget: float) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return f"> {budget:g} s"
    return f"{value:.2f} s"


def progress_line(series: str, label: str, done: list[Trial], settings: Settings) -> str:
    s = summarize(done, settings.budget)
    load = os.getloadavg()[0]
    return (f"[{series:11}] {label:>6}  {s['n']:3}/{settings.trials} trials  "
            f"ack {s['acked']:3}  recv {s['received']:3}  "
            f"median {_secs(s['median'], settings.budget)}  "
            f"p95 {_secs(s['p95'], settings.budget)}  load {load:.2f}")


ROWS: Final = (
    ("acknowledged ≤ budget", lambda s, b: _pct(s["acked"], s["n"])),
    ("received by server ≤ budget", lambda s, b: _pct(s["received"], s["n"])),
    ("received by server ≤ 1 s", lambda s, b: _pct(s["received_1s"], s["n"])),
    ("median time to ack", lambda s, b: _secs(s["median"], b)),
    ("p95 time to ack", lambda s, b: _secs(s["p95"], b)),
    ("median time to server", lambda s, b: _secs(s["recv_median"], b)),
    ("datagrams/request/RTT (pooled)",
     lambda s, b: "-" if s["per_rtt"] is None else f"{s['per_rtt']:.2f}"),
    ("datagrams/request/RTT (max trial)",
     lambda s, b: "-" if s["per_rtt_max"] is None else f"{s['per_rtt_max']:.2f}"),
    ("relay lateness (worst trial's p99)", lambda s, b: "-" if s["relay_late_p99_ms"] is None
     else f"{s['relay_late_p99_ms']:.1f} ms"),
    ("trials with an error", lambda s, b: str(s["errors"])),
)


def series_table(series: str, summaries: dict[str, dict[str, Any]], labels: list[str],
                 budget: float) -> str:
    n = max((summaries[lb].get("n", 0) for lb in labels if lb in summaries), default=0)
    head = f"| {series} ({n} trials per point) | " + " | ".join(labels) + " |"
    rule = "|---|" + "---:|" * len(labels)
    lines = [head, rule]
    for name, cell in ROWS:
        values = [cell(summaries[lb], budget) if summaries.get(lb, {}).get("n") else "-"
                  for lb in labels]
        lines.append(f"| {name} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def check_targets(summaries: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    out = []

    def share(series: str, label: str, key: str) -> float | None:
        s = summaries.get(series, {}).get(label)
        return None if not s or not s.get("n") else s[key] / s["n"]

    def mark(ok: bool | None) -> str:
        return "n/a" if ok is None else "pass" if ok else "MISS"

    for label in BEFORE_WARM:
        v = share("warm", label, "acked")
        out.append(f"- warm ≥ 99 % acknowledged at {label}: "
                   f"{mark(None if v is None else v >= TARGET_WARM_ACK)}"
                   + ("" if v is None else f" ({100 * v:.0f} %)"))
    v = share("warm", "5/95", "received_1s")
    out.append(f"- warm ≥ 99 % received by the server within 1 s at 5/95: "
               f"{mark(None if v is None else v >= TARGET_WARM_RECV_1S_5_95)}"
               + ("" if v is None else f" ({100 * v:.0f} %)"))
    for label, target in TARGET_COLD.items():
        v = share("cold", label, "acked")
        out.append(f"- cold ≥ {100 * target:.0f} % acknowledged at {label}: "
                   f"{mark(None if v is None else v >= target)}"
                   + ("" if v is None else f" ({100 * v:.0f} %)"))
    for series in ("warm", "cold"):
        worse = []
        compared = False
        for label in summaries.get(series, {}):
            ours = share(series, label, "acked")
            refs = [r for r in (share("libcoap-con", label, "acked"),
                                share("libcoap-non", label, "acked")) if r is not None]
            if ours is None or not refs:
                continue
            compared = True
            if ours < max(refs):
                worse.append(f"{label} ({100 * ours:.0f} % < {100 * max(refs):.0f} %)")
        out.append(f"- {series} never below libcoap (best of CON/NON): "
                   f"{mark(None if not compared else not worse)}"
                   + (f": {', '.join(worse)}" if worse else ""))
    return out


# ---------------------------------------------------------------------------------------------
# The machine


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    libcoap = "not installed"
    if shutil.which(LIBCOAP_CLIENT):
        help_text = quiet_run([LIBCOAP_CLIENT, "-h"], 10, REPO)
        m = re.search(r"v(\d+\.\d+\.\d+)", help_text.stdout + help_text.stderr)
        libcoap = m.group(1) if m else "unknown"
    # The last commit that changed dotsd itself (bench commits on top do not change it).
    commit = quiet_run(["git", "-C", str(REPO), "log", "-1", "--format=%h", "--", "src"], 10,
                       REPO)
    dirty = quiet_run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src"], 10, REPO)
    from dotsd import __version__ as dotsd_version
    from dotsd import _speedups as speedups

    return {
        "cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
        "python": platform.python_version(), "openssl": ssl.OPENSSL_VERSION,
        "libcoap": libcoap, "dotsd": dotsd_version,
        "commit": commit.stdout.strip() + (" (src modified)" if dirty.stdout.strip() else ""),
        "speedups": speedups.status(),
    }


class CpuMeter:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.busy0 = busy_per_cpu()

    def share(self) -> float:
        busy = busy_per_cpu()
        elapsed = time.monotonic() - self.t0
        used = sum(busy[c] - self.busy0.get(c, 0.0) for c in busy)
        return used / (elapsed * max(1, len(busy))) if elapsed > 0 else 0.0


# ---------------------------------------------------------------------------------------------
# The run


def run(settings: Settings) -> int:
    why = preflight()
    if why is not None:
        print(f"bench loss: {why}", file=sys.stderr)
        return 2
    if any(s.startswith("libcoap") for s in settings.series) and not shutil.which(
            LIBCOAP_CLIENT):
        print(f"bench loss: {LIBCOAP_CLIENT} not found (apt-get install libcoap3-bin); "
              "dropping the libcoap series", file=sys.stderr)
        settings.series = tuple(s for s in settings.series if not s.startswith("libcoap"))
    if not settings.series:
        return 2
    say_lock = threading.Lock()
    t_start = time.monotonic()

    def say(text: str) -> None:
        with say_lock:
            print(f"{time.monotonic() - t_start:7.1f}s {text}", file=sys.stderr, flush=True)

    # One run at a time: a second one would take the first one's lanes for stale ones.
    lock = open(LOCK_FILE, "a")  # noqa: SIM115 (held until the process exits)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print(f"bench loss: another run holds {LOCK_FILE}", file=sys.stderr)
        lock.close()
        return 2
    stale = remove_stale()
    if stale:
        say(f"removed namespaces of an earlier run: {', '.join(stale)}")
    info = machine()
    load_before = os.getloadavg()
    meter = CpuMeter()
    started = dt.datetime.now()
    stop = threading.Event()
    lanes: list[LaneRun] = []
    threads: list[threading.Thread] = []
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    interrupted = False
    work = Path(tempfile.mkdtemp(prefix="dotsd-bench-loss-"))
    try:
        lane_objs = [Lane(i) for i in range(len(settings.series))]
        pki = make_pki(work / "pki", [lane.server_addr for lane in lane_objs])
        for lane, series in zip(lane_objs, settings.series, strict=True):
            lanes.append(LaneRun(lane, series, settings, pki, work, stop, say))
        say(f"{len(lanes)} lanes ({', '.join(settings.series)}), "
            f"{len(settings.points)} points x {settings.trials} trials, "
            f"budget {settings.budget:g} s; work dir {work}")
        for lr in lanes:
            th = threading.Thread(target=lr.run, name=f"lane-{lr.series}", daemon=True)
            threads.append(th)
            th.start()
        while any(th.is_alive() for th in threads):
            for th in threads:
                th.join(timeout=0.5)
    except KeyboardInterrupt:
        interrupted = True
        say("interrupted: stopping the lanes")
        stop.set()
        for th in threads:
            th.join(timeout=15)
    finally:
        stop.set()
        for lr in lanes:
            lr.teardown()
        remove_stale()
        signal.signal(signal.SIGTERM, old_term)
    wall = time.monotonic() - t_start
    report = build_report(settings, lanes, info, load_before, meter.share(), started, wall)
    keep = any(lr.error for lr in lanes) or interrupted
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        say(f"logs kept in {work}")
        report["work_dir"] = str(work)
    text = render(report)
    if settings.out_dir is not None and not interrupted:
        paths = save(report, text, settings.out_dir, started)
        say("wrote " + ", ".join(str(p) for p in paths))
    if settings.as_json:
        sys.stdout.write(json.dumps(report, indent=1, default=_json_default) + "\n")
    else:
        sys.stdout.write(text + "\n")
    sys.stdout.flush()
    say(f"total wall time {wall / 60:.1f} min")
    if interrupted:
        return 130
    return 1 if any(lr.error for lr in lanes) else 0


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _json_default(value: object) -> object:
    if isinstance(value, float) and math.isinf(value):
        return None
    return str(value)


def _clean(obj: Any) -> Any:
    if isinstance(obj, float):
        return None if math.isinf(obj) or math.isnan(obj) else obj
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def build_report(settings: Settings, lanes: list[LaneRun], info: dict[str, Any],
                 load_before: tuple[float, float, float], cpu_share: float,
                 started: dt.datetime, wall: float) -> dict[str, Any]:
    labels = [point_label(p) for p in settings.points]
    summaries: dict[str, dict[str, dict[str, Any]]] = {}
    for lr in lanes:
        summaries[lr.series] = {
            lb: summarize([t for t in lr.trials if t.point == lb], settings.budget)
            for lb in labels}
    return {
        "started": started.isoformat(timespec="seconds"),
        "wall_seconds": round(wall, 1),
        "settings": {"trials": settings.trials, "budget": settings.budget,
                     "points": labels, "series": list(settings.series),
                     "seed": settings.seed, "rtt": RTT, "transport": settings.transport,
                     "cold_state": settings.cold_state},
        "machine": {**info, "load_before": [round(x, 2) for x in load_before],
                    "load_after": [round(x, 2) for x in os.getloadavg()],
                    "cpu_busy_share": round(cpu_share, 3)},
        "summaries": _clean(summaries),
        "lanes": {lr.series: {"error": lr.error, "agent_restarts": lr.agent_restarts,
                              "server_restarts": lr.server_restarts} for lr in lanes},
        "targets": check_targets(summaries),
        "trials": [_clean(asdict(t)) for lr in lanes for t in lr.trials],
    }


def render(report: dict[str, Any]) -> str:
    s = report["settings"]
    m = report["machine"]
    labels = s["points"]
    budget = s["budget"]
    out = [f"## Loss benchmark, {report['started']}", ""]
    out.append(f"50 ms RTT (25 ms each way, Python relay in a middle namespace), seeded random "
               f"loss per direction (points: up/down %, up = client→server), {s['trials']} "
               f"trials per point, {budget:g} s budget per trial from the client process's "
               f"start; seed {s['seed']}; dotsd --transport {s['transport']}; cold state "
               f"directory {s['cold_state']}.")
    out.append("")
    out.append(f"Machine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}, Python "
               f"{m['python']}, {m['openssl']}, libcoap {m['libcoap']}, dotsd {m['dotsd']} "
               f"at {m['commit']} (C accelerators: "
               + ", ".join(f"{k.lstrip('_')} {v}" for k, v in m["speedups"].items())
               + f"). Load average {m['load_before'][0]:.2f} before, {m['load_after'][0]:.2f} "
               f"after; CPUs {100 * m['cpu_busy_share']:.0f} % busy during the run; wall "
               f"time {report['wall_seconds'] / 60:.1f} min.")
    out.append("")
    out.append(compact_table(report))
    out.append("")
    for series, summaries in report["summaries"].items():
        sums = {lb: _unclean(v) for lb, v in summaries.items()}
        out.append(series_table(series, sums, labels, budget))
        notes = _notes(series, sums, report["lanes"].get(series, {}))
        if notes:
            out.append("")
            out.extend(f"- {n}" for n in notes)
        out.append("")
    out.append("Targets (issue 12):")
    out.extend(report["targets"])
    return "\n".join(out)


def compact_table(report: dict[str, Any]) -> str:
    """% acknowledged within the budget: one row per series (and the issue's 'before')."""
    labels = report["settings"]["points"]
    budget = report["settings"]["budget"]
    lines = [f"| % acknowledged within {budget:g} s | " + " | ".join(labels) + " |",
             "|---|" + "---:|" * len(labels)]
    for series, sums in report["summaries"].items():
        cells = [_pct(sums[lb]["acked"], sums[lb]["n"]) if sums.get(lb, {}).get("n") else "-"
                 for lb in labels]
        lines.append(f"| {series} | " + " | ".join(cells) + " |")
    before = [f"{BEFORE_WARM[lb]} %" if lb in BEFORE_WARM else "-" for lb in labels]
    lines.append("| warm, issue's 'before' | " + " | ".join(before) + " |")
    return "\n".join(lines)


def _unclean(summary: dict[str, Any]) -> dict[str, Any]:
    """None back to +inf for the time quantiles (JSON has no infinity)."""
    out = dict(summary)
    for key in ("median", "p95", "recv_median"):
        if key in out and out[key] is None:
            out[key] = math.inf
    return out


def _notes(series: str, sums: dict[str, dict[str, Any]], lane: dict[str, Any]) -> list[str]:
    notes = []
    if lane.get("error"):
        notes.append(f"lane failed: {lane['error']}")
    transports: dict[str, int] = {}
    events: dict[str, int] = {}
    late = not_via = 0
    for s in sums.values():
        for k, v in s.get("transports", {}).items():
            transports[k] = transports.get(k, 0) + v
        for k, v in s.get("agent_events", {}).items():
            events[k] = events.get(k, 0) + v
        late += s.get("received_late", 0)
        not_via += s.get("not_via_agent", 0)
    if transports and series in ("warm", "cold"):
        notes.append("acknowledged over: " + ", ".join(f"{k} {v}" for k, v in
                                                       sorted(transports.items())))
    if late:
        notes.append(f"{late} request(s) reached the server only after the budget")
    if events:
        notes.append("agent log: " + ", ".join(f"{k} x{v}" for k, v in sorted(events.items())))
    if not_via and series == "warm":
        notes.append(f"{not_via} answer(s) did not come through `dotsd client run`")
    if lane.get("agent_restarts"):
        notes.append(f"agent restarted {lane['agent_restarts']} time(s)")
    if lane.get("server_restarts"):
        notes.append(f"server restarted {lane['server_restarts']} time(s)")
    return notes


def save(report: dict[str, Any], text: str, out_dir: Path, started: dt.datetime) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"loss-{started:%Y%m%d-%H%M}"
    md = stem.with_suffix(".md")
    js = stem.with_suffix(".json")
    png = stem.with_suffix(".png")
    body = text
    written = [md, js]
    if plot(report, png):
        body += f"\n\n![% acknowledged per loss point]({png.name})\n"
        written.append(png)
    else:
        body += "\n\n(no plot: matplotlib is not installed; `pip install -e '.[bench]'`)\n"
    md.write_text(body + "\n")
    # One trial per line: the traces make the file large, and diffs stay readable.
    head = {k: v for k, v in report.items() if k != "trials"}
    lines = [json.dumps(t, default=_json_default, separators=(",", ":"))
             for t in report["trials"]]
    text_json = json.dumps(head, indent=1, default=_json_default)[:-2]
    text_json += ',\n "trials": [\n' + ",\n".join(lines) + "\n ]\n}\n"
    js.write_text(text_json)
    return written


def plot(report: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    labels = report["settings"]["points"]
    xs = list(range(len(labels)))
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    styles = {"warm": "o-", "cold": "s-", "libcoap-con": "^-", "libcoap-non": "v-"}
    for series, sums in report["summaries"].items():
        ys = [100.0 * sums[lb]["acked"] / sums[lb]["n"] if sums.get(lb, {}).get("n")
              else float("nan") for lb in labels]
        ax.plot(xs, ys, styles.get(series, "o-"), label=series)
    before = [BEFORE_WARM.get(lb, float("nan")) for lb in labels]
    ax.plot(xs, before, "o--", color="grey", alpha=0.7, label="warm, issue's 'before'")
    ax.set_xticks(xs, labels)
    ax.set_xlabel("loss % up/down (up = client → server), 50 ms RTT")
    ax.set_ylabel(f"% acknowledged within {report['settings']['budget']:g} s")
    ax.set_ylim(-3, 103)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="center left", fontsize=8)
    ax.set_title(f"DOTS mitigation request under loss ({report['settings']['trials']} "
                 f"trials per point, {report['started'][:16]})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def show_saved(path: Path) -> str:
    report = json.loads(path.read_text())
    return render(report)
