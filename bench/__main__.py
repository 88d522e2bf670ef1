"""``python -m bench coap [--quick] [--json] [--sessions N] ...``, ``python -m bench signal
[--quick] [--json]`` and ``python -m bench loss [--quick] [--trials N] ...`` (see
bench/README.md)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from bench.build import BuildError
from bench.coap import CELLS, SERVERS, Settings, run, show_saved


def _csv(allowed: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(t.strip() for t in text.split(",") if t.strip())
        if not items or any(t not in allowed for t in items):
            raise argparse.ArgumentTypeError(f"choose from {','.join(allowed)} (got {text!r})")
        return items

    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench",
                                     description="dotsd benchmarks against libcoap")
    sub = parser.add_subparsers(dest="bench", required=True)
    coap = sub.add_parser("coap", help="CoAP over UDP and DTLS: requests/s, handshakes/s, "
                                       "memory per idle session")
    coap.add_argument("--quick", action="store_true",
                      help="a short run (about 2 s per cell, 500 idle sessions)")
    coap.add_argument("--json", action="store_true", help="print the report as JSON")
    coap.add_argument("--sessions", type=int, metavar="N",
                      help="idle DTLS sessions to open (2000; 500 with --quick)")
    coap.add_argument("--duration", type=float, metavar="S",
                      help="measured seconds per cell (5; 1.5 with --quick)")
    coap.add_argument("--warmup", type=float, metavar="S",
                      help="warm-up seconds per cell (1; 0.5 with --quick)")
    coap.add_argument("--servers", type=_csv(SERVERS), default=SERVERS,
                      help=f"comma-separated subset of {','.join(SERVERS)}")
    coap.add_argument("--cells", type=_csv(CELLS), default=CELLS,
                      help=f"comma-separated subset of {','.join(CELLS)}")
    coap.add_argument("--rps-sessions", type=int, metavar="S",
                      help="request-carrying sessions in the rps cells (4)")
    coap.add_argument("--window", type=int, metavar="W",
                      help="outstanding requests per session (16)")
    coap.add_argument("--no-ceiling", action="store_true",
                      help="skip measuring the generator against its own C reflector")
    coap.add_argument("--retries", type=int, metavar="R",
                      help="reruns of a cell that other processes disturbed (2)")
    coap.add_argument("--show", type=Path, metavar="FILE",
                      help="measure nothing: print the table of a report saved with --json")
    signal = sub.add_parser("signal", help="DOTS signal server: cost of a request as the "
                                           "server fills with mitigations and sessions")
    signal.add_argument("--quick", action="store_true",
                        help="smaller tables (up to 10,000 mitigations, 1,000 sessions)")
    signal.add_argument("--requests", type=int, default=200, metavar="N",
                        help="timed requests per cell (200)")
    signal.add_argument("--json", action="store_true", help="print the rows as JSON")
    _add_loss(sub)
    args = parser.parse_args(argv)
    if args.bench == "loss":
        return _run_loss(parser, args)
    if args.bench == "signal":
        from bench import signal as signal_bench

        if not 1 <= args.requests <= 100_000:
            parser.error("--requests must be 1..100000")
        return signal_bench.report(args.quick, args.requests, args.json)
    if args.show is not None:
        try:
            return show_saved(args.show, args.json)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            parser.error(f"cannot read {args.show}: {exc}")

    settings = Settings.quick_settings() if args.quick else Settings()
    if args.sessions is not None:
        if not 1 <= args.sessions <= 200000:
            parser.error("--sessions must be 1..200000")
        settings.idle_sessions = args.sessions
    if args.duration is not None:
        if not 0 < args.duration <= 600:
            parser.error("--duration must be in (0, 600]")
        settings.duration = args.duration
    if args.warmup is not None:
        if not 0 <= args.warmup <= 60:
            parser.error("--warmup must be in [0, 60]")
        settings.warmup = args.warmup
    if args.rps_sessions is not None:
        if not 1 <= args.rps_sessions <= 256:
            parser.error("--rps-sessions must be 1..256")
        settings.sessions = args.rps_sessions
    if args.window is not None:
        if not 1 <= args.window <= 256:
            parser.error("--window must be 1..256")
        settings.window = args.window
    settings.servers = args.servers
    settings.cells = args.cells
    settings.ceiling = not args.no_ceiling
    if args.retries is not None:
        if not 0 <= args.retries <= 10:
            parser.error("--retries must be 0..10")
        settings.retries = args.retries
    try:
        return run(settings, as_json=args.json)
    except BuildError as exc:
        print(f"bench: cannot build the load generator: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130


def _add_loss(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from bench.loss import SERIES

    loss = sub.add_parser("loss", help="DOTS mitigation requests over a lossy 50 ms path "
                                       "(dotsd warm and cold, libcoap CON and NON); root")
    loss.add_argument("--trials", type=int, metavar="N", help="trials per point (30)")
    loss.add_argument("--quick", action="store_true", help="5 trials per point")
    loss.add_argument("--points", metavar="UP/DOWN,...",
                      help="loss points, %% up/down (default 0/0,10/10,25/25,50/50,75/75,5/95)")
    loss.add_argument("--series", type=_csv(SERIES), default=SERIES,
                      help=f"comma-separated subset of {','.join(SERIES)}")
    loss.add_argument("--seed", default="12", help="seed of the loss draws (12)")
    loss.add_argument("--budget", type=float, metavar="S",
                      help="seconds per trial from the client's start (5)")
    loss.add_argument("--transport", choices=("auto", "dtls", "tls"), default="auto",
                      help="dotsd client --transport (auto)")
    loss.add_argument("--cold-state", choices=("kept", "fresh"), default="kept",
                      help="cold series: one client state directory per lane (kept) or a "
                           "new one per trial (fresh: the client first asks the server for "
                           "its 'mid' values)")
    loss.add_argument("--out", type=Path, metavar="DIR",
                      help="where to write loss-*.md/.json/.png (bench/results)")
    loss.add_argument("--no-save", action="store_true", help="write no result files")
    loss.add_argument("--json", action="store_true", help="print the report as JSON")
    loss.add_argument("--show", type=Path, metavar="FILE",
                      help="measure nothing: print the table of a saved loss-*.json")


def _run_loss(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from bench import loss

    if args.show is not None:
        try:
            print(loss.show_saved(args.show))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            parser.error(f"cannot read {args.show}: {exc}")
        return 0
    settings = loss.Settings(series=args.series, seed=args.seed, transport=args.transport,
                             cold_state=args.cold_state, as_json=args.json,
                             quick=args.quick)
    if args.quick:
        settings.trials = 5
    if args.trials is not None:
        if not 1 <= args.trials <= 1000:
            parser.error("--trials must be 1..1000")
        settings.trials = args.trials
    if args.points is not None:
        try:
            settings.points = loss.parse_points(args.points)
        except ValueError as exc:
            parser.error(f"--points: {exc}")
    if args.budget is not None:
        if not 0.5 <= args.budget <= 60:
            parser.error("--budget must be 0.5..60")
        settings.budget = args.budget
    if args.no_save:
        settings.out_dir = None
    elif args.out is not None:
        settings.out_dir = args.out
    try:
        return loss.run(settings)
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
