"""The servers under test, each a subprocess pinned to one CPU: libcoap's and dotsd's."""

from __future__ import annotations

import os
import random
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.cpu import cpu_seconds

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LIBCOAP_SERVER = "coap-server-openssl"
PATH = "time"  # both servers answer GET /time with a short text payload
# Ports below the ephemeral range (32768+): the generator's many client sockets never take them.
PORT_RANGE = (20000, 32000)


class ServerError(RuntimeError):
    """A server did not start or stopped answering."""


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_pki(directory: Path) -> Pki:
    """A fresh CA, server and client certificate (ECDSA P-256) from ``dotsd.pki``."""
    from dotsd.pki import init_pki

    paths = init_pki(directory, force=True)
    return Pki(paths.ca_cert, paths.server_cert, paths.server_key, paths.client_cert,
               paths.client_key)


def cpu_plan() -> tuple[int | None, int | None]:
    """(server CPU, generator CPU): two distinct CPUs of this process's set, else no pinning."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None, None
    if len(cpus) < 2:
        return None, None
    return cpus[0], cpus[1]


def pin(cpu: int | None) -> Callable[[], None] | None:
    """A preexec_fn that pins the child to ``cpu`` (the driver has no threads)."""
    if cpu is None:
        return None

    def _pin() -> None:
        os.sched_setaffinity(0, {cpu})

    return _pin


def _port_free(port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive ports free for UDP and TCP on 127.0.0.1."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(PORT_RANGE[0], PORT_RANGE[1] - count)
        if all(_port_free(base + i) for i in range(count)):
            return base
    raise ServerError("no free port found")


def libcoap_version() -> str | None:
    """'4.3.1' or similar, or None when coap-server-openssl is not installed."""
    exe = shutil.which(LIBCOAP_SERVER)
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "-h"], capture_output=True, text=True, timeout=10,
                             check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    match = re.search(r"v(\d+\.\d+\.\d+)", out.stdout + out.stderr)
    return match.group(1) if match else "unknown"


def coap_probe(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    """One plain CoAP GET /PATH; True when any CoAP answer with our MID comes back."""
    mid = random.randrange(65536)
    req = bytes([0x40, 0x01, mid >> 8, mid & 0xFF, 0xB0 | len(PATH)]) + PATH.encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(req, (host, port))
            data = s.recv(2048)
        except OSError:
            return False
    return len(data) >= 4 and data[2:4] == req[2:4]


class ServerProcess:
    """A running server: its ports, memory and CPU use; ``stop()`` ends it."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], udp_port: int | None,
                 dtls_port: int | None, log_path: Path) -> None:
        self.name = name
        self.proc = proc
        self.udp_port = udp_port
        self.dtls_port = dtls_port
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_kib(self) -> int:
        """Resident set size (VmRSS) in KiB."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise ServerError(f"{self.name}: no VmRSS")

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _spawn(cmd: Sequence[str], log_path: Path, cpu: int | None, *, stdout_pipe: bool = False,
           cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            list(cmd), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else log, stderr=log,
            preexec_fn=pin(cpu), cwd=cwd, env=env)  # the driver runs no threads


def start_libcoap(pki: Pki | None, workdir: Path, cpu: int | None,
                  startup_timeout: float = 10.0) -> ServerProcess:
    """``coap-server-openssl``: plain CoAP on P and, with ``pki``, DTLS on P+1 with mutual
    certificates (-C makes it verify the client's certificate against the CA)."""
    exe = shutil.which(LIBCOAP_SERVER)
    if exe is None:
        raise ServerError(f"{LIBCOAP_SERVER} not installed (apt-get install libcoap3-bin)")
    port = free_ports(2)
    log_path = workdir / f"libcoap-{port}.log"
    cmd = [exe, "-A", "127.0.0.1", "-p", str(port)]
    if pki is not None:
        cmd += ["-c", str(pki.server_cert), "-j", str(pki.server_key), "-C", str(pki.ca)]
    proc = _spawn(cmd, log_path, cpu)
    server = ServerProcess("libcoap", proc, port, port + 1 if pki else None, log_path)
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise ServerError(f"libcoap exited ({proc.returncode}): {server.log_tail()}")
        if coap_probe(port):
            return server
        time.sleep(0.05)
    server.stop()
    raise ServerError(f"libcoap did not answer on port {port}: {server.log_tail()}")


def start_dotsd(pki: Pki, workdir: Path, cpu: int | None, transport: str,
                startup_timeout: float = 20.0) -> ServerProcess:
    """bench/dotsd_server.py serving GET /PATH over ``transport`` ("udp" or "dtls")."""
    port = free_ports(1)
    log_path = workdir / f"dotsd-{transport}-{port}.log"
    cmd = [sys.executable, "-m", "bench.dotsd_server", "--transport", transport,
           "--port", str(port), "--path", PATH, "--cert", str(pki.server_cert),
           "--key", str(pki.server_key), "--ca", str(pki.ca)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    proc = _spawn(cmd, log_path, cpu, stdout_pipe=True, cwd=REPO, env=env)
    server = ServerProcess(f"dotsd-{transport}", proc,
                           port if transport == "udp" else None,
                           port if transport == "dtls" else None, log_path)
    assert proc.stdout is not None
    line = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + startup_timeout
        while b"\n" not in line and len(line) < 4096:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                break
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            line += chunk
    if line.startswith(b"ready"):
        return server
    server.stop()
    raise ServerError(f"dotsd ({transport}) did not start: {line.decode(errors='replace')!r} "
                      f"{server.log_tail()}")
