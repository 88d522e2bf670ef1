"""``python -m bench coap``: dotsd's CoAP engine against libcoap, measured in the same run.

Each cell starts a fresh server process pinned to one CPU and runs the C load generator
(bench/loadgen.c) pinned to the other. Cells, per server:

- ``udp``: requests/s, plain CoAP over UDP (S sessions, W outstanding CON GETs each)
- ``dtls``: the same over DTLS 1.2 with mutual certificates
- ``handshakes``: full mutual-certificate DTLS handshakes/s (C concurrent, no resumption)
- ``idle``: request rate on a few sessions with no other session, then N sessions are opened
  and left idle (the server's RSS is read before and after), then the rate again
"""

from __future__ import annotations

import json
import math
import os
import resource
import selectors
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from bench.build import build_loadgen
from bench.cpu import CpuWatch
from bench.servers import (
    PATH,
    Pki,
    ServerError,
    ServerProcess,
    cpu_plan,
    free_ports,
    libcoap_version,
    make_pki,
    pin,
    start_dotsd,
    start_libcoap,
)
from dotsd import _speedups as speedups

SERVERS = ("dotsd", "libcoap")
CELLS = ("udp", "dtls", "handshakes", "idle")
# The DOTS profile's mandatory suite (RFC 9132 §7.1 via RFC 7525): both servers get the same.
CIPHERS = "ECDHE-ECDSA-AES128-GCM-SHA256"

# Targets for dotsd (bench/README.md).
TARGET_DTLS_RPS_RATIO = 0.5
TARGET_HANDSHAKE_RATIO = 1.0
TARGET_IDLE_KIB = 40.0
TARGET_FLAT = 0.9  # rate with N idle sessions / rate with none
TARGET_IDLE_SESSIONS = 20000
# Another process using more than this share of the server's or the generator's core
# during a cell makes the cell suspect (the machine is shared).
CONTENTION = 0.10

Result = dict[str, Any]


@dataclass
class Settings:
    duration: float = 5.0  # measured seconds per cell
    warmup: float = 1.0
    sessions: int = 4  # request-carrying sessions in the rps cells
    window: int = 16  # outstanding requests per session
    handshake_concurrency: int = 16
    idle_sessions: int = 2000
    idle_active: int = 2  # sessions carrying requests in the idle cell
    idle_concurrency: int = 32  # concurrent handshakes while opening idle sessions
    request_timeout: float = 2.0
    servers: tuple[str, ...] = SERVERS
    cells: tuple[str, ...] = CELLS
    ceiling: bool = True  # also measure the generator against its own C reflector
    retries: int = 2  # reruns of a cell that other processes disturbed (least disturbed kept)
    quick: bool = False

    @classmethod
    def quick_settings(cls) -> Settings:
        return cls(duration=1.5, warmup=0.5, idle_sessions=500, quick=True)


def progress(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- load generator runs


class CellError(RuntimeError):
    pass


def _gen_args(settings: Settings, pki: Pki | None, port: int) -> list[str]:
    args = ["--host", "127.0.0.1", "--port", str(port), "--path", PATH,
            "--warmup", str(settings.warmup), "--duration", str(settings.duration),
            "--timeout", str(settings.request_timeout)]
    if pki is not None:
        args += ["--dtls", "--cert", str(pki.client_cert), "--key", str(pki.client_key),
                 "--ca", str(pki.ca), "--ciphers", CIPHERS]
    return args


class LineReader:
    """Lines of a child's stdout, each awaited with a deadline."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self._fd = proc.stdout.fileno()
        self._buf = b""
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._fd, selectors.EVENT_READ)

    def line(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sel.select(left):
                return None
            chunk = os.read(self._fd, 65536)
            if not chunk:
                return None
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode(errors="replace")

    def json(self, timeout: float, what: str) -> Result:
        for _ in range(100):  # skip anything that is not JSON (bounded)
            line = self.line(timeout)
            if line is None:
                raise CellError(f"no {what} result from the generator")
            if line.startswith("{"):
                result: Result = json.loads(line)
                if "error" in result:
                    raise CellError(f"generator: {result['error']}")
                return result
        raise CellError(f"no {what} result from the generator")

    def close(self) -> None:
        self._sel.close()


def _spawn_gen(binary: Path, mode: str, args: Sequence[str], cpu: int | None,
               interactive: bool = False) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(binary), mode, *args],
        stdin=subprocess.PIPE if interactive else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=None,  # generator progress goes to our stderr
        preexec_fn=pin(cpu))  # the driver runs no threads


def _finish(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


def run_simple(binary: Path, mode: str, args: Sequence[str], cpu: int | None,
               timeout: float) -> Result:
    """One non-interactive generator run: its JSON result."""
    proc = _spawn_gen(binary, mode, args, cpu)
    reader = LineReader(proc)
    try:
        return reader.json(timeout, mode)
    finally:
        reader.close()
        _finish(proc)


def run_idle(binary: Path, args: Sequence[str], cpu: int | None, server: ServerProcess,
             settings: Settings, server_core: int | None) -> Result:
    """Baseline rate, RSS, N idle sessions, RSS, rate again (one generator process).
    CPU use (and other processes' load) is sampled per phase."""
    rps_time = settings.warmup + settings.duration + 2 * settings.request_timeout + 30
    open_time = 120 + settings.idle_sessions / 20  # ≥ 20 handshakes/s or it is hopeless
    proc = _spawn_gen(binary, "idle", [*args, "--hold", str(open_time + rps_time)], cpu,
                      interactive=True)
    assert proc.stdin is not None
    reader = LineReader(proc)
    out: Result = {}

    def phase(name: str, timeout: float) -> None:
        with CpuWatch(server.pid, server_core, cpu, proc.pid) as watch:
            out[name] = reader.json(timeout, name)
        out[name].update(watch.result)

    def go() -> None:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()

    try:
        phase("baseline", rps_time)
        time.sleep(0.5)
        out["rss_before_kib"] = server.rss_kib()
        progress(f"  opening {settings.idle_sessions} idle DTLS sessions …")
        go()
        phase("established", open_time)
        time.sleep(1.0)  # let the server settle before reading its memory
        if not server.alive():
            raise CellError(f"{server.name} died: {server.log_tail()}")
        out["rss_after_kib"] = server.rss_kib()
        progress("  request rate with the idle sessions open …")
        go()
        phase("loaded", rps_time)
    finally:
        reader.close()
        _finish(proc, timeout=30)
    n = out["established"]["idle_sessions"]
    if n > 0:
        out["kib_per_session"] = round((out["rss_after_kib"] - out["rss_before_kib"]) / n, 2)
    base = out["baseline"]["rps"]
    if base > 0:
        out["flatness"] = round(out["loaded"]["rps"] / base, 3)
    return out


def measure_ceiling(binary: Path, settings: Settings, server_cpu: int | None,
                    gen_cpu: int | None) -> Result:
    """The generator against ``loadgen reflect`` (plain CoAP answered in C with
    recvmmsg/sendmmsg) on the server's core: how fast the generator itself can go."""
    port = free_ports(1)
    limit = settings.warmup + settings.duration + 2 * settings.request_timeout + 30
    reflector = subprocess.Popen(
        [str(binary), "reflect", "--host", "127.0.0.1", "--port", str(port),
         "--duration", str(limit)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=None,
        preexec_fn=pin(server_cpu))  # the driver runs no threads
    reader = LineReader(reflector)
    try:
        reader.json(10, "reflector ready")
        args = _gen_args(settings, None, port)
        args += ["--sessions", str(settings.sessions), "--window", str(settings.window)]
        with CpuWatch(reflector.pid, server_cpu, gen_cpu) as watch:
            result = run_simple(binary, "rps", args, gen_cpu, limit)
        result.update(watch.result)
        return result
    finally:
        reader.close()
        reflector.terminate()
        _finish(reflector, timeout=5)


# ---------------------------------------------------------------------- cells

CELL_TITLES = {
    "udp": "requests/s, plain UDP",
    "dtls": "requests/s, DTLS",
    "handshakes": "handshakes/s, DTLS mutual certificates",
    "idle": "idle DTLS sessions: memory and request rate",
}


def _start(server_name: str, cell: str, pki: Pki, workdir: Path,
           cpu: int | None) -> ServerProcess:
    if server_name == "libcoap":
        return start_libcoap(pki, workdir, cpu)
    return start_dotsd(pki, workdir, cpu, "udp" if cell == "udp" else "dtls")


def run_cell(server_name: str, cell: str, binary: Path, pki: Pki, workdir: Path,
             settings: Settings, server_cpu: int | None, gen_cpu: int | None) -> Result:
    server = _start(server_name, cell, pki, workdir, server_cpu)
    try:
        dtls = cell != "udp"
        port = server.dtls_port if dtls else server.udp_port
        assert port is not None
        args = _gen_args(settings, pki if dtls else None, port)
        limit = settings.warmup + settings.duration + 2 * settings.request_timeout + 30
        if cell == "idle":
            args += ["--sessions", str(settings.idle_active), "--window",
                     str(settings.window), "--idle", str(settings.idle_sessions),
                     "--concurrency", str(settings.idle_concurrency)]
            result = run_idle(binary, args, gen_cpu, server, settings, server_cpu)
        else:
            if cell == "handshakes":
                mode = "handshakes"
                args += ["--concurrency", str(settings.handshake_concurrency)]
            else:
                mode = "rps"
                args += ["--sessions", str(settings.sessions), "--window", str(settings.window)]
            with CpuWatch(server.pid, server_cpu, gen_cpu) as watch:
                result = run_simple(binary, mode, args, gen_cpu, limit)
            result.update(watch.result)
        if not server.alive():
            raise CellError(f"{server.name} exited during the cell: {server.log_tail()}")
        return result
    finally:
        server.stop()


def _summary(cell: str, r: Result) -> str:
    if cell in ("udp", "dtls"):
        return (f"{r['rps']:,.0f} req/s, errors {r['errors']}, p50 {r['p50_us']:.0f} µs, "
                f"p99 {r['p99_us']:.0f} µs, generator CPU {r['gen_cpu']:.0%}")
    if cell == "handshakes":
        return (f"{r['hps']:,.0f} handshakes/s, failed {r['failed']}, "
                f"generator CPU {r['gen_cpu']:.0%}")
    return (f"{r.get('kib_per_session', float('nan')):.1f} KiB/session over "
            f"{r['established']['idle_sessions']} sessions "
            f"({r['established']['failed']} failed); {r['baseline']['rps']:,.0f} → "
            f"{r['loaded']['rps']:,.0f} req/s")


# ---------------------------------------------------------------------- report


@dataclass
class Row:
    metric: str
    dotsd: float | None
    libcoap: float | None
    fmt: str = "{:,.0f}"

    @property
    def ratio(self) -> float | None:
        if self.dotsd is None or self.libcoap is None or self.libcoap == 0:
            return None
        return self.dotsd / self.libcoap


@dataclass
class Target:
    name: str
    value: float | None
    goal: str
    ok: bool | None
    note: str = ""


def _get(results: dict[str, dict[str, Result]], server: str, cell: str,
         *keys: str) -> float | None:
    node: Any = results.get(server, {}).get(cell)
    if node is None or "error" in node:
        return None
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return float(node) if isinstance(node, int | float) else None


def build_rows(results: dict[str, dict[str, Result]], settings: Settings) -> list[Row]:
    def both(cell: str, *keys: str) -> tuple[float | None, float | None]:
        return _get(results, "dotsd", cell, *keys), _get(results, "libcoap", cell, *keys)

    n = settings.idle_sessions
    return [
        Row("requests/s, plain UDP", *both("udp", "rps")),
        Row("requests/s, DTLS", *both("dtls", "rps")),
        Row("  DTLS latency p50 (µs)", *both("dtls", "p50_us")),
        Row("  DTLS latency p99 (µs)", *both("dtls", "p99_us")),
        Row("handshakes/s, DTLS mutual certs", *both("handshakes", "hps")),
        Row(f"KiB per idle DTLS session (N={n:,})", *both("idle", "kib_per_session"),
            fmt="{:,.1f}"),
        Row(f"requests/s, DTLS, {settings.idle_active} sessions, 0 idle",
            *both("idle", "baseline", "rps")),
        Row(f"requests/s, DTLS, {settings.idle_active} sessions, {n:,} idle",
            *both("idle", "loaded", "rps")),
        Row("  rate with idle / without", *both("idle", "flatness"), fmt="{:.2f}"),
    ]


def build_targets(results: dict[str, dict[str, Result]], settings: Settings) -> list[Target]:
    def ratio(cell: str, key: str) -> float | None:
        d, lc = _get(results, "dotsd", cell, key), _get(results, "libcoap", cell, key)
        return None if d is None or not lc else d / lc

    def check(value: float | None, good: Callable[[float], bool]) -> bool | None:
        return None if value is None else good(value)

    dtls = ratio("dtls", "rps")
    hs = ratio("handshakes", "hps")
    kib = _get(results, "dotsd", "idle", "kib_per_session")
    flat = _get(results, "dotsd", "idle", "flatness")
    n = settings.idle_sessions
    flat_note = "" if n >= TARGET_IDLE_SESSIONS else (
        f"measured at N={n:,}; the target is {TARGET_IDLE_SESSIONS:,} "
        f"(--sessions {TARGET_IDLE_SESSIONS})")
    return [
        Target("DTLS requests/s, dotsd/libcoap", dtls, f"≥ {TARGET_DTLS_RPS_RATIO:.1f}x",
               check(dtls, lambda v: v >= TARGET_DTLS_RPS_RATIO)),
        Target("handshakes/s, dotsd/libcoap", hs, f"≥ {TARGET_HANDSHAKE_RATIO:.1f}x",
               check(hs, lambda v: v >= TARGET_HANDSHAKE_RATIO)),
        Target("dotsd KiB per idle DTLS session", kib, f"≤ {TARGET_IDLE_KIB:.0f} KiB",
               check(kib, lambda v: v <= TARGET_IDLE_KIB)),
        Target(f"dotsd request rate with {n:,} idle sessions / with none", flat,
               f"≥ {TARGET_FLAT:.2f} (flat)", check(flat, lambda v: v >= TARGET_FLAT),
               flat_note),
    ]


def _fmt(value: float | None, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return fmt.format(value)


def render_table(report: Result, rows: list[Row], targets: list[Target]) -> str:
    lines: list[str] = []
    head = report["setup"]
    lines.append(f"CoAP benchmark: dotsd vs libcoap {head['libcoap_version'] or '(absent)'}, "
                 f"GET /{PATH} on loopback; server on CPU {head['server_cpu']}, "
                 f"generator on CPU {head['generator_cpu']}; "
                 f"{head['duration']:g} s per cell after {head['warmup']:g} s warm-up"
                 + (" (--quick)" if head["quick"] else ""))
    lines.append(f"rps cells: {head['sessions']} sessions x {head['window']} outstanding CON "
                 f"GETs; DTLS 1.2, {CIPHERS}, mutual certificates")
    if "speedups" in head:  # reports saved before the accelerators existed lack it
        states = ", ".join(f"{k.lstrip('_')} {v}" for k, v in head["speedups"].items())
        lines.append(f"dotsd's C accelerators: {states} (DOTSD_PURE_PYTHON=1: pure Python)")
    lines.append("")
    w = max(len(r.metric) for r in rows) + 2
    lines.append(f"{'metric':<{w}}{'dotsd':>12}{'libcoap':>12}{'dotsd/libcoap':>16}")
    lines.append("-" * (w + 40))
    for r in rows:
        lines.append(f"{r.metric:<{w}}{_fmt(r.dotsd, r.fmt):>12}{_fmt(r.libcoap, r.fmt):>12}"
                     f"{_fmt(r.ratio, '{:.2f}'):>16}")
    lines.append("")
    lines.append("targets (dotsd)")
    tw = max(len(t.name) for t in targets) + 2
    for t in targets:
        mark = "n/a" if t.ok is None else ("pass" if t.ok else "MISS")
        value = _fmt(t.value, "{:.2f}")
        note = f"  ({t.note})" if t.note else ""
        lines.append(f"  {t.name:<{tw}}{value:>8}  {t.goal:<14}{mark}{note}")
    gen = report.get("generator", [])
    ceiling = report.get("ceiling")
    if gen or ceiling:
        lines.append("")
        lines.append("generator: CPU use of its core during the measured interval")
        if ceiling:
            lines.append(f"  ceiling, plain UDP against its own C reflector: "
                         f"{ceiling['rps']:,.0f} req/s at {ceiling['gen_cpu']:.0%} CPU, "
                         f"errors {ceiling['errors']}{_other_load(ceiling)}")
        for g in gen:
            lines.append(f"  {g}")
    busy = report.get("contended", [])
    if busy:
        lines.append("")
        lines.append("WARNING: other processes used the benchmark's CPUs during: "
                     + ", ".join(busy) + ". Those numbers are low; rerun on a quiet machine.")
    errors = report.get("errors", [])
    if errors:
        lines.append("")
        lines.append("errors")
        for e in errors:
            lines.append(f"  {e}")
    return "\n".join(lines)


def _other_load(r: Result) -> str:
    a, b = r.get("other_load_server_core"), r.get("other_load_generator_core")
    if a is None or b is None:
        return ""
    return f"; other load: server core {a:.0%}, generator core {b:.0%}"


def _generator_notes(results: dict[str, dict[str, Result]]) -> list[str]:
    notes: list[str] = []
    for server in SERVERS:
        for cell in ("udp", "dtls", "handshakes"):
            r = results.get(server, {}).get(cell)
            if not r or "error" in r:
                continue
            rate = r.get("rps", r.get("hps", 0.0))
            cpu = r.get("gen_cpu", 0.0)
            scpu = r.get("server_cpu_whole_run")
            server_part = f", server {scpu:.0%}" if scpu is not None else ""
            bound = "  <- generator-bound?" if cpu >= 0.9 else ""
            notes.append(f"{server:8} {cell:12} {rate:>9,.0f}/s, generator {cpu:4.0%}"
                         f"{server_part}{_other_load(r)}{bound}")
        r = results.get(server, {}).get("idle")
        if r and "error" not in r:
            for phase in ("baseline", "loaded"):
                p = r[phase]
                scpu = p.get("server_cpu_whole_run")
                server_part = f", server {scpu:.0%}" if scpu is not None else ""
                notes.append(f"{server:8} idle/{phase:7} {p['rps']:>9,.0f}/s, generator "
                             f"{p['gen_cpu']:4.0%}{server_part}{_other_load(p)}, "
                             f"errors {p['errors']}")
    return notes


def interference(r: Result) -> tuple[float, str]:
    """How much other processes disturbed one measurement: the worst share of a core they
    took where it mattered (0.0 when it did not), and where."""
    phases = [r[ph] for ph in ("baseline", "loaded") if ph in r] or [r]
    worst, where = 0.0, ""
    for p in phases:
        on_server = p.get("other_load_server_core", 0.0)
        on_gen = p.get("other_load_generator_core", 0.0)
        if on_server > worst:
            worst, where = on_server, f"server core {on_server:.0%}"
        # The generator's core matters only when the intruder left the generator short.
        if on_gen > worst and on_gen + p.get("generator_cpu_whole_run", 0.0) > 0.9:
            worst, where = on_gen, f"generator core {on_gen:.0%}"
    return worst, where


def contended(results: dict[str, dict[str, Result]],
              ceiling: Result | None) -> list[str]:
    """Cells during which other processes took a noticeable share of our two cores."""
    cells = [(f"{server} {cell}", r) for server, by_cell in results.items()
             for cell, r in by_cell.items() if "error" not in r]
    if ceiling is not None:
        cells.append(("generator ceiling", ceiling))
    out = []
    for name, r in cells:
        worst, where = interference(r)
        if worst > CONTENTION:
            out.append(f"{name} ({where})")
    return out


# ---------------------------------------------------------------------- entry


def raise_fd_limit(need: int) -> None:
    """Enough descriptors for every idle session's socket (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(hard, need)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run(settings: Settings, as_json: bool = False) -> int:
    binary = build_loadgen()
    progress(f"load generator: {binary}")
    raise_fd_limit(settings.idle_sessions + 4096)
    server_cpu, gen_cpu = cpu_plan()
    if server_cpu is None:
        progress("fewer than 2 CPUs available: no pinning, results are not comparable")
    version = libcoap_version()
    results: dict[str, dict[str, Result]] = {s: {} for s in settings.servers}
    errors: list[str] = []
    ceiling: Result | None = None
    if settings.ceiling:
        progress("generator ceiling: plain UDP against its own C reflector …")
        try:
            ceiling = measure_ceiling(binary, settings, server_cpu, gen_cpu)
            progress(f"  {_summary('udp', ceiling)}")
        except (ServerError, CellError, OSError, ValueError) as exc:
            errors.append(f"generator ceiling: {exc}")
            progress(f"  failed: {exc}")
    with tempfile.TemporaryDirectory(prefix="dotsd-bench-") as tmp:
        workdir = Path(tmp)
        pki = make_pki(workdir / "pki")
        for name in settings.servers:
            if name == "libcoap" and version is None:
                msg = "libcoap: coap-server-openssl not installed (apt-get install libcoap3-bin)"
                errors.append(msg)
                progress(msg)
                continue
            for cell in settings.cells:
                best: Result | None = None
                for attempt in range(1 + settings.retries):
                    again = f" (again: other processes took {interference(best)[1]})" if (
                        best is not None) else ""
                    progress(f"{name}: {CELL_TITLES[cell]}{again} …")
                    t0 = time.monotonic()
                    try:
                        result = run_cell(name, cell, binary, pki, workdir, settings,
                                          server_cpu, gen_cpu)
                    except (ServerError, CellError, OSError, ValueError) as exc:
                        msg = f"{name} {cell}: {exc}"
                        errors.append(msg.strip())
                        progress(f"  failed: {msg}")
                        result = {"error": str(exc)}
                        best = best or result
                        break
                    progress(f"  {_summary(cell, result)} ({time.monotonic() - t0:.1f} s)")
                    if best is None or "error" in best or (
                            interference(result)[0] < interference(best)[0]):
                        best = result
                    best["attempts"] = attempt + 1
                    if interference(best)[0] <= CONTENTION:
                        break
                assert best is not None
                results[name][cell] = best
    report: Result = {
        "setup": {
            "libcoap_version": version, "server_cpu": server_cpu, "generator_cpu": gen_cpu,
            "path": f"/{PATH}", "ciphers": CIPHERS, **asdict(settings),
            # The server process inherits this environment and this build.
            "speedups": speedups.status(),
        },
        "ceiling": ceiling,
        "errors": errors,
        "results": results,
    }
    print(render(report, as_json))
    return 0


def render(report: Result, as_json: bool) -> str:
    """The table (or JSON) of a report made by ``run`` (also one saved with --json)."""
    known = {f.name for f in fields(Settings)}
    setup = report["setup"]
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                              for k, v in setup.items() if k in known}
    settings = Settings(**values)
    results: dict[str, dict[str, Result]] = report["results"]
    rows = build_rows(results, settings)
    targets = build_targets(results, settings)
    report = {
        **report,
        "generator": _generator_notes(results),
        "contended": contended(results, report.get("ceiling")),
    }
    if not as_json:
        return render_table(report, rows, targets)
    report["metrics"] = [
        {"metric": r.metric, "dotsd": r.dotsd, "libcoap": r.libcoap, "ratio": r.ratio}
        for r in rows]
    report["targets"] = [asdict(t) for t in targets]
    return json.dumps(report, indent=2)


def show_saved(path: Path, as_json: bool) -> int:
    """Print the table of a report saved with ``--json``."""
    print(render(json.loads(path.read_text()), as_json))
    return 0
