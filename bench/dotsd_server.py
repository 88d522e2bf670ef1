"""dotsd's side of the CoAP benchmark: a ``CoapNode`` whose ``Site`` answers GET /time.

    python -m bench.dotsd_server --transport udp|dtls --port P [--cert F --key F --ca F]

Serves one transport on 127.0.0.1:P (DTLS with mutual certificates: the client's certificate
must be signed by --ca), prints ``ready`` on stdout once bound and runs until SIGTERM or
SIGINT. /time answers like libcoap's example server: "Nov 23 21:42:35", Max-Age 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Protocol

from dotsd.coap.message import Message
from dotsd.coap.numbers import Code, OptionNumber
from dotsd.coap.site import IncomingRequest, Resource, Site
from dotsd.node import CoapNode


class _Closable(Protocol):
    def close(self) -> None: ...


class TimeResource(Resource):
    """GET: the local time as text, like libcoap's /time (Max-Age 1)."""

    def get(self, request: IncomingRequest) -> Message:
        msg = Message(code=Code.CONTENT, payload=time.strftime("%b %d %H:%M:%S").encode())
        msg.add(OptionNumber.MAX_AGE, 1)
        return msg


def make_node(path: str) -> CoapNode:
    site = Site()
    site.add(path, TimeResource())
    return CoapNode(site)


async def _serve_udp(node: CoapNode, host: str, port: int) -> _Closable:
    from dotsd.transport.udp import open_udp

    return await open_udp(node, (host, port))


async def _serve_dtls(node: CoapNode, host: str, port: int, cert: Path, key: Path,
                      ca: Path) -> _Closable:
    from dotsd.dtls.context import DtlsConfig, server_context
    from dotsd.transport.dtls import serve_dtls

    context = server_context(DtlsConfig(cert=cert, key=key, ca=ca))
    return await serve_dtls(node, host, port, context)


async def serve(args: argparse.Namespace) -> None:
    node = make_node(args.path)
    if args.transport == "udp":
        server = await _serve_udp(node, args.host, args.port)
    else:
        if not (args.cert and args.key and args.ca):
            raise SystemExit("dtls needs --cert, --key and --ca")
        server = await _serve_dtls(node, args.host, args.port, Path(args.cert),
                                   Path(args.key), Path(args.ca))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"ready {args.transport} {args.host} {args.port}", flush=True)
    await stop.wait()
    server.close()
    await node.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dotsd_server")
    parser.add_argument("--transport", choices=("udp", "dtls"), required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="time")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--ca")
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "::1"):
        parser.error("--host must be 127.0.0.1 or ::1")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        asyncio.run(serve(args))
    except ImportError as exc:
        print(f"error: dotsd transport unavailable: {exc}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
