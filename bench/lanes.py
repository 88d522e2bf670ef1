"""Network namespaces for ``python -m bench loss``: one "lane" per series.

A lane is three namespaces, client, relay and server, joined by two veth pairs
(client <-> relay, relay <-> server). The relay namespace has no addresses: ``bench.relay``
copies frames between its two veth ends, so the client (10.200.L.1) and the server
(10.200.L.2) share one /24 as if on one link. IPv6 is turned off in the lanes (no router
solicitations or duplicate address detection in the counts), the neighbours are static (no
ARP), and checksum offload, TSO, GSO and GRO are off on every veth end (``ethtool -K``): the
relay must see finished checksums and frames no larger than the MTU.

Every lane name starts with ``dotsd-loss-``: ``remove_stale`` deletes what a crashed run left
behind (and ends the processes still inside those namespaces, which only this benchmark
starts there).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Final

PREFIX: Final = "dotsd-loss-"
SUBNET_BASE: Final = 100  # lane L uses 10.200.(100+L).0/24
OFFLOADS: Final = ("rx", "tx", "sg", "tso", "gso", "gro")


class LabError(RuntimeError):
    pass


# The system tools (ip, ethtool) live in the sbin directories, which a bare environment's PATH
# (CI's, `env -i`) lacks: they are searched there too.
_PATH = os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/sbin", "/sbin"])


def _which(tool: str) -> str | None:
    return shutil.which(tool, path=_PATH)


def _run(*args: str, check: bool = True, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PATH": _PATH})
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(args)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


def preflight() -> str | None:
    """Why lanes cannot be built here (None: they can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, raw sockets)"
    if _which("ip") is None:
        return "needs iproute2's `ip`"
    probe = f"{PREFIX}probe-{os.getpid()}"
    try:
        _run("ip", "netns", "add", probe)
    except (LabError, OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot create a network namespace: {exc}"
    _run("ip", "netns", "del", probe, check=False)
    if _which("ethtool") is None:
        return "needs ethtool (apt-get install -y ethtool) to turn veth offloads off"
    return None


def existing() -> list[str]:
    out = _run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines()
            if line.strip() and line.split()[0].startswith(PREFIX)]


def remove_stale() -> list[str]:
    """Delete every ``dotsd-loss-*`` namespace, ending the processes left inside first."""
    names = existing()
    for ns in names:
        pids = _run("ip", "netns", "pids", ns, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError, PermissionError):
                os.kill(int(pid), signal.SIGKILL)
    for ns in names:
        _run("ip", "netns", "del", ns, check=False)
    return names


@dataclass(frozen=True)
class Lane:
    index: int

    @property
    def client_ns(self) -> str:
        return f"{PREFIX}{self.index}-c"

    @property
    def relay_ns(self) -> str:
        return f"{PREFIX}{self.index}-r"

    @property
    def server_ns(self) -> str:
        return f"{PREFIX}{self.index}-s"

    @property
    def namespaces(self) -> tuple[str, str, str]:
        return (self.client_ns, self.relay_ns, self.server_ns)

    # interface names (at most 15 characters; each lives in its own namespace)
    @property
    def client_if(self) -> str:
        return f"dl{self.index}c"

    @property
    def relay_a(self) -> str:  # relay end facing the client
        return f"dl{self.index}ra"

    @property
    def relay_b(self) -> str:  # relay end facing the server
        return f"dl{self.index}rb"

    @property
    def server_if(self) -> str:
        return f"dl{self.index}s"

    @property
    def client_addr(self) -> str:
        return f"10.200.{SUBNET_BASE + self.index}.1"

    @property
    def server_addr(self) -> str:
        return f"10.200.{SUBNET_BASE + self.index}.2"

    def exec_prefix(self, ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]

    def create(self) -> None:
        if not 0 <= self.index < 100:
            raise LabError("lane index out of 0..99")
        for ns in self.namespaces:
            _run("ip", "netns", "add", ns)
        c, r, s = self.namespaces
        _run("ip", "link", "add", self.client_if, "netns", c, "type", "veth",
             "peer", "name", self.relay_a, "netns", r)
        _run("ip", "link", "add", self.relay_b, "netns", r, "type", "veth",
             "peer", "name", self.server_if, "netns", s)
        for ns in self.namespaces:
            for key in ("all", "default"):
                _run("ip", "netns", "exec", ns, "sysctl", "-q", "-w",
                     f"net.ipv6.conf.{key}.disable_ipv6=1", check=False)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        for ns, ifname in ((c, self.client_if), (r, self.relay_a), (r, self.relay_b),
                           (s, self.server_if)):
            for feature in OFFLOADS:
                # One at a time: a feature a veth cannot change must not stop the others.
                _run("ip", "netns", "exec", ns, "ethtool", "-K", ifname, feature, "off",
                     check=False)
            self._check_offloads(ns, ifname)
        _run("ip", "-n", c, "addr", "add", f"{self.client_addr}/24", "dev", self.client_if)
        _run("ip", "-n", s, "addr", "add", f"{self.server_addr}/24", "dev", self.server_if)
        for ns, ifname in ((c, self.client_if), (r, self.relay_a), (r, self.relay_b),
                           (s, self.server_if)):
            _run("ip", "-n", ns, "link", "set", ifname, "up")
        for ifname in (self.relay_a, self.relay_b):
            _run("ip", "-n", r, "link", "set", ifname, "promisc", "on")
        mac_c = self._mac(c, self.client_if)
        mac_s = self._mac(s, self.server_if)
        _run("ip", "-n", c, "neigh", "replace", self.server_addr, "lladdr", mac_s, "dev",
             self.client_if, "nud", "permanent")
        _run("ip", "-n", s, "neigh", "replace", self.client_addr, "lladdr", mac_c, "dev",
             self.server_if, "nud", "permanent")

    def _check_offloads(self, ns: str, ifname: str) -> None:
        out = _run("ip", "netns", "exec", ns, "ethtool", "-k", ifname).stdout
        on = [line.split(":")[0].strip() for line in out.splitlines()
              if line.strip().startswith(("tx-checksumming", "tcp-segmentation-offload",
                                          "generic-segmentation-offload",
                                          "generic-receive-offload"))
              and ": on" in line]
        if on:
            raise LabError(f"{ns} {ifname}: cannot turn off {', '.join(on)}")

    def _mac(self, ns: str, ifname: str) -> str:
        out = _run("ip", "-n", ns, "-br", "link", "show", ifname).stdout.split()
        for word in out:
            if word.count(":") == 5:
                return word
        raise LabError(f"{ns} {ifname}: no MAC address in {out}")

    def delete(self) -> None:
        for ns in self.namespaces:
            pids = _run("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError, PermissionError):
                    os.kill(int(pid), signal.SIGKILL)
        if any(_run("ip", "netns", "pids", ns, check=False).stdout.strip()
               for ns in self.namespaces):
            time.sleep(0.2)
        for ns in self.namespaces:
            _run("ip", "netns", "del", ns, check=False)
