"""Who used the CPUs during a measurement: the server, the generator, or someone else.

On a shared machine another process on the server's or the generator's core makes a cell
meaningless; :class:`CpuWatch` measures that so the report can say so.
"""

from __future__ import annotations

import os
import resource
import time
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def busy_per_cpu() -> dict[int, float]:
    """Busy seconds of each CPU since boot (everything but idle and iowait)."""
    busy: dict[int, float] = {}
    with open("/proc/stat") as f:
        for line in f:
            if not (line.startswith("cpu") and line[3:4].isdigit()):
                continue
            name, *values = line.split()
            ticks = [int(v) for v in values[:8]]  # user nice system idle iowait irq softirq steal
            busy[int(name[3:])] = (sum(ticks) - ticks[3] - ticks[4]) / CLK_TCK
    return busy


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class CpuWatch:
    """Samples CPU use over a block. The server runs throughout (read from /proc); the
    generator too when ``generator_pid`` is given, else it must be started and reaped
    inside the block (its time then comes from RUSAGE_CHILDREN)."""

    def __init__(self, server_pid: int, server_core: int | None,
                 generator_core: int | None, generator_pid: int | None = None) -> None:
        self.server_pid = server_pid
        self.server_core = server_core
        self.generator_core = generator_core
        self.generator_pid = generator_pid
        self.result: dict[str, Any] = {}

    def _generator_cpu(self) -> float:
        if self.generator_pid is not None:
            return cpu_seconds(self.generator_pid)
        return _children_cpu()

    def __enter__(self) -> CpuWatch:
        self._t0 = time.monotonic()
        self._busy0 = busy_per_cpu()
        self._server0 = cpu_seconds(self.server_pid)
        self._generator0 = self._generator_cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.monotonic() - self._t0
        if wall <= 0:
            return
        try:
            server = cpu_seconds(self.server_pid) - self._server0
            generator = self._generator_cpu() - self._generator0
        except OSError:
            return  # a process is gone; the caller reports that
        busy1 = busy_per_cpu()
        self.result = {"server_cpu_whole_run": round(server / wall, 3),
                       "generator_cpu_whole_run": round(generator / wall, 3)}
        if self.server_core is not None and self.generator_core is not None:
            for label, core, ours in (("server_core", self.server_core, server),
                                      ("generator_core", self.generator_core, generator)):
                used = busy1.get(core, 0.0) - self._busy0.get(core, 0.0)
                self.result[f"other_load_{label}"] = round(max(0.0, used - ours) / wall, 3)
