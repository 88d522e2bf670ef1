"""bench/relay.py in a real lane (bench/lanes.py): UDP through the relay takes the 50 ms round
trip, and 100 % loss up stops it. Root, network namespaces and ethtool only; a few seconds."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(REPO))

from bench.lanes import Lane, preflight  # noqa: E402

pytestmark = [pytest.mark.network, pytest.mark.timeout(60)]

LANE = 50  # 10.200.150.0/24, away from the benchmark's lanes 0..3

ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 9999))
s.settimeout(15)
for _ in range(100):
    try:
        data, peer = s.recvfrom(2048)
    except socket.timeout:
        break
    s.sendto(data, peer)
"""

PING = """
import json, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.4)
rtts, lost = [], 0
for i in range(int(sys.argv[2])):
    t = time.monotonic()
    s.sendto(b"x" * 100, (sys.argv[1], 9999))
    try:
        s.recv(2048)
        rtts.append(time.monotonic() - t)
    except socket.timeout:
        lost += 1
print(json.dumps({"rtts": rtts, "lost": lost}))
"""


def _cmd(sock: socket.socket, line: str) -> dict[str, object]:
    sock.sendall(line.encode() + b"\n")
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        assert chunk
        data += chunk
    answer: dict[str, object] = json.loads(data)
    assert answer["ok"], answer
    return answer


def test_udp_through_the_relay(tmp_path: Path) -> None:
    why = preflight()
    if why is not None:
        pytest.skip(why)
    lane = Lane(LANE)
    lane.delete()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        lane.create()
        control = tmp_path / "relay.sock"
        procs.append(subprocess.Popen(
            ["ip", "netns", "exec", lane.relay_ns, sys.executable, "-m", "bench.relay",
             "--a", lane.relay_a, "--b", lane.relay_b, "--control", str(control),
             "--max-seconds", "60"], cwd=REPO, stdout=subprocess.DEVNULL))
        procs.append(subprocess.Popen(
            ["ip", "netns", "exec", lane.server_ns, sys.executable, "-c", ECHO,
             lane.server_addr]))
        deadline = time.monotonic() + 10
        ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        while True:
            try:
                ctl.connect(str(control))
                break
            except OSError:
                assert time.monotonic() < deadline, "relay did not start"
                time.sleep(0.05)
        ctl.settimeout(5)
        time.sleep(0.2)  # the echo server binds

        def ping(count: int) -> dict[str, list[float] | int]:
            out = subprocess.run(["ip", "netns", "exec", lane.client_ns, sys.executable, "-c",
                                  PING, lane.server_addr, str(count)], capture_output=True,
                                 text=True, timeout=30, check=True)
            result: dict[str, list[float] | int] = json.loads(out.stdout)
            return result

        _cmd(ctl, "reset")
        clean = ping(10)
        assert clean["lost"] == 0
        rtts = clean["rtts"]
        assert isinstance(rtts, list)
        assert all(0.049 <= r < 0.2 for r in rtts), rtts
        stats = _cmd(ctl, "stats")
        up = stats["up"]
        assert isinstance(up, dict) and up["seen"] == 10 and up["dropped"] == 0

        _cmd(ctl, "loss 100 0 1")
        _cmd(ctl, "reset")
        lossy = ping(3)
        assert lossy["lost"] == 3
        stats = _cmd(ctl, "stats")
        up = stats["up"]
        assert isinstance(up, dict) and up["dropped"] == 3
        _cmd(ctl, "quit")
        ctl.close()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=5)
        lane.delete()
