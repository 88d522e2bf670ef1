"""Helpers for the interop tests: real CoAP peers (libcoap, aiocoap) against dotsd.

- where the libcoap 4.3 binaries are, and skip markers when they are missing;
- free ports on loopback, URIs;
- running a subprocess with a hard timeout, and reading libcoap's ``-v 6`` message dumps;
- a libcoap server started and stopped around a test, waited for until it answers;
- a dotsd server (a CoapNode with a small resource set) on any of the transports, and a
  dotsd client dialling any of them.

Every wait here is bounded. Servers bind 127.0.0.1 or ::1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import re
import shutil
import socket
import struct
import subprocess
from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dotsd.coap.message import Message
from dotsd.coap.numbers import Code
from dotsd.coap.site import IncomingRequest, Resource, Site
from dotsd.link import Link
from dotsd.node import CoapNode
from dotsd.pki import PkiPaths
from dotsd.tls import client_context, server_context
from dotsd.transport.tcp import connect_tcp, serve_tcp

# --- the peers -----------------------------------------------------------------------------

LIBCOAP_CLIENT = shutil.which("coap-client-openssl")
LIBCOAP_SERVER = shutil.which("coap-server-openssl")
_LIBCOAP_MISSING = ("libcoap 4.3 binaries are not installed ({} not on PATH): `make peers` "
                    "installs Debian's libcoap3-bin, but only as root")
needs_libcoap_client = pytest.mark.skipif(
    LIBCOAP_CLIENT is None, reason=_LIBCOAP_MISSING.format("coap-client-openssl"))
needs_libcoap_server = pytest.mark.skipif(
    LIBCOAP_SERVER is None, reason=_LIBCOAP_MISSING.format("coap-server-openssl"))

HAVE_UDP = importlib.util.find_spec("dotsd.transport.udp") is not None
HAVE_DTLS = importlib.util.find_spec("dotsd.transport.dtls") is not None

# Transports, named by URI scheme; DTLS comes in two flavours of credentials.
COAP, COAPS, COAPS_PSK, COAP_TCP, COAPS_TCP = (
    "coap", "coaps", "coaps-psk", "coap+tcp", "coaps+tcp")
SCHEMES = (COAP, COAPS, COAPS_PSK, COAP_TCP, COAPS_TCP)


def uri_scheme(scheme: str) -> str:
    return "coaps" if scheme == COAPS_PSK else scheme


def needs_transport(scheme: str) -> None:
    """Skip (with the reason) when dotsd has no transport for ``scheme`` yet."""
    if scheme == COAP and not HAVE_UDP:
        pytest.skip("dotsd.transport.udp is not there yet")
    if scheme in (COAPS, COAPS_PSK) and not HAVE_DTLS:
        pytest.skip("dotsd.transport.dtls is not there yet")


def scheme_params(*marks_by_scheme: tuple[str, Any]) -> list[Any]:
    """pytest params for every scheme; ``(scheme, mark)`` pairs add marks to some."""
    extra: dict[str, list[Any]] = {}
    for scheme, mark in marks_by_scheme:
        extra.setdefault(scheme, []).append(mark)
    return [pytest.param(s, id=s, marks=extra.get(s, [])) for s in SCHEMES]


# --- addresses -----------------------------------------------------------------------------



def free_port(host: str = "127.0.0.1", count: int = 1) -> int:
    """A port P with P..P+count-1 free for both TCP and UDP on ``host``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(100):
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((host, 0))
            port = int(probe.getsockname()[1])
        if port + count > 65535:
            continue
        try:
            with contextlib.ExitStack() as stack:
                for p in range(port, port + count):
                    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                        s = stack.enter_context(socket.socket(family, kind))
                        s.bind((host, p))
        except OSError:
            continue
        return port
    raise AssertionError("no free port found")


def hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def make_uri(scheme: str, host: str, port: int, path: str) -> str:
    return f"{uri_scheme(scheme)}://{hostport(host, port)}{path}"


# --- credentials ---------------------------------------------------------------------------

PSK_IDENTITY = b"dotsd-interop"
PSK_KEY = b"interop-psk-0123"  # 16 bytes: aiocoap's tinydtls takes no more
PSK_HINT = "dotsd"


@dataclass(frozen=True)
class Creds:
    pki: PkiPaths  # CA, server and client certificates
    rogue: PkiPaths  # another CA and its certificates: refused by ``pki``'s peers
    psk_identity: bytes = PSK_IDENTITY
    psk_key: bytes = PSK_KEY


def tls_server_context(creds: Creds, require_client_cert: bool = True) -> Any:
    p = creds.pki
    return server_context(p.server_cert, p.server_key, p.ca_cert,
                          require_client_cert=require_client_cert)


def tls_client_context(creds: Creds) -> Any:
    p = creds.pki
    return client_context(p.client_cert, p.client_key, p.ca_cert)


# --- subprocesses --------------------------------------------------------------------------

_DUMP = re.compile(
    r"v:1 t:(?P<mtype>\S+) c:(?P<code>\S+) i:(?P<mid>[0-9a-f]+) \{(?P<token>[0-9a-f]*)\} "
    r"\[(?P<options>[^\]]*)\](?: :: (?P<payload>.*))?$", re.MULTILINE)


@dataclass(frozen=True)
class Dump:
    """One message as libcoap prints it with ``-v 6`` (sent requests, received responses)."""

    mtype: str
    code: str  # "GET", "2.05", ...
    mid: str  # hex
    token: str
    options: dict[str, list[str]]
    payload: str | None  # as printed: quoted text with \\xNN escapes, or None

    @property
    def is_response(self) -> bool:
        return self.code[:1].isdigit()

    def opt(self, name: str) -> str | None:
        values = self.options.get(name)
        return values[0] if values else None


def parse_dumps(output: str) -> list[Dump]:
    dumps = []
    for m in _DUMP.finditer(output):
        options: dict[str, list[str]] = {}
        for item in m["options"].split(", "):
            name, _, value = item.strip().partition(":")
            if name:
                options.setdefault(name, []).append(value)
        payload = m["payload"]
        if payload is not None and len(payload) >= 2 and payload[0] == payload[-1] == "'":
            payload = payload[1:-1]
        dumps.append(Dump(m["mtype"], m["code"], m["mid"], m["token"], options, payload))
    return dumps


@dataclass(frozen=True, repr=False)
class Completed:
    argv: list[str]
    returncode: int
    output: str  # stdout and stderr together

    @property
    def dumps(self) -> list[Dump]:
        return parse_dumps(self.output)

    @property
    def responses(self) -> list[Dump]:
        return [d for d in self.dumps if d.is_response]

    def codes(self) -> list[str]:
        return [d.code for d in self.responses]

    def __repr__(self) -> str:
        return f"\n$ {' '.join(self.argv)}\n(exit {self.returncode})\n{self.output}"


async def run_process(argv: Sequence[str], timeout: float) -> Completed:
    """Run to completion, killed after ``timeout`` seconds (then AssertionError)."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{argv[0]} still running after {timeout} s: {argv}") from None
    return Completed(list(argv), proc.returncode or 0, out.decode("utf-8", "replace"))


def libcoap_credentials(scheme: str, creds: Creds, pki: PkiPaths | None = None) -> list[str]:
    """The coap-client arguments for ``scheme``; ``pki`` replaces the client certificate."""
    if scheme in (COAPS, COAPS_TCP):
        client = pki or creds.pki
        return ["-c", str(client.client_cert), "-j", str(client.client_key),
                "-C", str(creds.pki.ca_cert)]
    if scheme == COAPS_PSK:
        return ["-k", creds.psk_key.decode(), "-u", creds.psk_identity.decode()]
    return []


async def libcoap_client(uri: str, *args: str, wait: int = 4,
                         timeout: float = 10.0) -> Completed:
    """coap-client-openssl ``args`` ``uri`` with ``-v 6``; ``-B wait`` bounds it too."""
    assert LIBCOAP_CLIENT is not None
    argv = [LIBCOAP_CLIENT, "-B", str(wait), "-v", "6", *args, uri]
    return await run_process(argv, timeout)


# --- a libcoap server ----------------------------------------------------------------------

_PING_MID = 0x7A11


async def wait_udp_coap(host: str, port: int, timeout: float = 5.0) -> None:
    """Wait until a CoAP ping (empty CON) to host:port is answered with RST."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect((host, port))
        while loop.time() < deadline:
            with contextlib.suppress(OSError):
                sock.send(struct.pack("!BBH", 0x40, 0, _PING_MID))
            await asyncio.sleep(0.05)
            with contextlib.suppress(OSError):
                data = sock.recv(64)
                if data[:4] == struct.pack("!BBH", 0x70, 0, _PING_MID):
                    return
    raise AssertionError(f"no CoAP server answered on {hostport(host, port)}")


@dataclass
class LibcoapServer:
    host: str
    port: int  # plain CoAP (UDP and TCP); DTLS and TLS on port + 1
    proc: asyncio.subprocess.Process
    log_path: Path

    @property
    def secure_port(self) -> int:
        return self.port + 1

    def port_for(self, scheme: str) -> int:
        return self.port if scheme in (COAP, COAP_TCP) else self.secure_port

    def log(self) -> str:
        return self.log_path.read_text("utf-8", "replace") if self.log_path.exists() else ""


@contextlib.asynccontextmanager
async def libcoap_server(creds: Creds, log_dir: Path, host: str = "127.0.0.1",
                         extra: Sequence[str] = ()) -> AsyncIterator[LibcoapServer]:
    """coap-server-openssl with certificates and a PSK at once, up to 8 dynamic resources."""
    assert LIBCOAP_SERVER is not None
    port = free_port(host, count=2)
    p = creds.pki
    argv = [LIBCOAP_SERVER, "-A", host, "-p", str(port), "-d", "8", "-v", "6",
            "-c", str(p.server_cert), "-j", str(p.server_key), "-C", str(p.ca_cert),
            "-k", creds.psk_key.decode(), "-h", PSK_HINT, *extra]
    log_path = log_dir / f"coap-server-{port}.log"
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)
    server = LibcoapServer(host, port, proc, log_path)
    try:
        await wait_udp_coap(host, port)
        yield server
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()


# --- a dotsd server ------------------------------------------------------------------------

BIG_BODY = b"".join(b"line %04d of a body too large for one CoAP block: dotsd/blockwise\n" % i
                    for i in range(45))  # 3 KB, printable
assert 2900 < len(BIG_BODY) < 3200


class Text(Resource):
    def __init__(self, text: bytes) -> None:
        self.text = text
        self.gets = 0

    def get(self, req: IncomingRequest) -> Message:
        self.gets += 1
        return Message(code=Code.CONTENT, payload=self.text)


class Store(Resource):
    """PUT stores, GET returns, DELETE removes; remembers every PUT body."""

    def __init__(self) -> None:
        self.value: bytes | None = None
        self.puts: list[bytes] = []
        self.deletes = 0

    def get(self, req: IncomingRequest) -> Message:
        if self.value is None:
            return Message(code=Code.NOT_FOUND)
        return Message(code=Code.CONTENT, payload=self.value)

    def put(self, req: IncomingRequest) -> Message:
        created = self.value is None
        self.value = req.message.payload
        self.puts.append(req.message.payload)
        return Message(code=Code.CREATED if created else Code.CHANGED)

    def delete(self, req: IncomingRequest) -> Message:
        self.value = None
        self.deletes += 1
        return Message(code=Code.DELETED)


class Slow(Resource):
    """Answers after ``delay`` seconds: a separate response on UDP (RFC 7252 §5.2.2)."""

    def __init__(self, delay: float = 0.7) -> None:
        self.delay = delay

    async def get(self, req: IncomingRequest) -> Message:
        await asyncio.sleep(self.delay)
        return Message(code=Code.CONTENT, payload=b"slow answer")


class Counter(Resource):
    observable = True

    def __init__(self) -> None:
        self.value = 0

    def representation(self) -> Message:
        return Message(code=Code.CONTENT, payload=b"count=%d" % self.value)

    def get(self, req: IncomingRequest) -> Message:
        return self.representation()


@dataclass
class DotsdServer:
    """A CoapNode serving /hello, /store, /counter (observable), /big (3 KB) and /slow."""

    creds: Creds | None = None
    hello: Text = field(default_factory=lambda: Text(b"hello from dotsd"))
    store: Store = field(default_factory=Store)
    counter: Counter = field(default_factory=Counter)
    big: Text = field(default_factory=lambda: Text(BIG_BODY))
    slow: Slow = field(default_factory=Slow)
    node: CoapNode = field(init=False)
    ports: dict[str, int] = field(default_factory=dict)
    _closers: list[Callable[[], Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        site = Site()
        site.add("/hello", self.hello)
        site.add("/store", self.store)
        site.add("/counter", self.counter)
        site.add("/big", self.big)
        site.add("/slow", self.slow)
        self.node = CoapNode(site)

    async def start(self, scheme: str, host: str = "127.0.0.1",
                    require_client_cert: bool = True) -> int:
        """Listen for ``scheme`` on a free port of ``host``; returns the port.

        ``require_client_cert`` False: TLS authenticates the server only (for clients that
        cannot present a certificate).
        """
        needs_transport(scheme)
        if scheme == COAP_TCP:
            tcp = await serve_tcp(self.node, host, 0)
            self._closers.append(tcp.close)
            port = tcp.port
        elif scheme == COAPS_TCP:
            assert self.creds is not None
            tls = await serve_tcp(self.node, host, 0, ssl_context=tls_server_context(
                self.creds, require_client_cert))
            self._closers.append(tls.close)
            port = tls.port
        elif scheme == COAP:
            port = await _serve_udp(self, host)
        else:
            port = await _serve_dtls(self, scheme, host)
        self.ports[scheme] = port
        return port

    def bump(self, confirmable: bool = False) -> int:
        """Change /counter and notify its observers; returns how many were notified."""
        self.counter.value += 1
        return self.node.notify("/counter", self._notification, confirmable)

    def _notification(self, peer: Hashable, request: Message) -> Message:
        return self.counter.representation()

    async def close(self) -> None:
        for close in reversed(self._closers):
            result = close()
            if asyncio.iscoroutine(result):
                await result
        await self.node.close()
        await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def dotsd_server(creds: Creds | None, *schemes: str,
                       host: str = "127.0.0.1") -> AsyncIterator[DotsdServer]:
    server = DotsdServer(creds)
    try:
        for scheme in schemes:
            await server.start(scheme, host)
        yield server
    finally:
        await server.close()


async def _serve_udp(server: DotsdServer, host: str) -> int:
    from dotsd.transport.udp import open_udp

    endpoint = await open_udp(server.node, (host, 0))
    server._closers.append(endpoint.close)
    return endpoint.port


def dtls_server_context(creds: Creds, scheme: str) -> Any:
    """Certificates (mutual authentication) for coaps, one PSK for coaps-psk."""
    from dotsd.dtls import DtlsConfig, server_context

    if scheme == COAPS:
        return server_context(DtlsConfig.from_pki(creds.pki))
    return server_context(DtlsConfig(psk_identity=creds.psk_identity, psk_key=creds.psk_key,
                                     psk_hint=PSK_HINT.encode()))


def dtls_client_context(creds: Creds, scheme: str) -> Any:
    from dotsd.dtls import DtlsConfig, client_context

    if scheme == COAPS:
        return client_context(DtlsConfig.from_pki(creds.pki, client=True))
    return client_context(DtlsConfig(psk_identity=creds.psk_identity, psk_key=creds.psk_key))


async def _serve_dtls(server: DotsdServer, scheme: str, host: str) -> int:
    from dotsd.transport.dtls import serve_dtls

    assert server.creds is not None
    dtls = await serve_dtls(server.node, host, 0, dtls_server_context(server.creds, scheme))
    server._closers.append(dtls.close)
    return dtls.port


# --- a dotsd client ------------------------------------------------------------------------

@dataclass
class DotsdClient:
    """A CoapNode with no resources that dials peers; every request has a deadline."""

    creds: Creds | None = None
    node: CoapNode = field(default_factory=CoapNode)
    _closers: list[Callable[[], Any]] = field(default_factory=list)

    async def connect(self, scheme: str, host: str, port: int) -> Link:
        needs_transport(scheme)
        if scheme == COAP_TCP:
            return await connect_tcp(self.node, host, port, timeout=5)
        if scheme == COAPS_TCP:
            assert self.creds is not None
            return await connect_tcp(self.node, host, port, tls_client_context(self.creds),
                                     timeout=5)
        if scheme == COAP:
            return await _connect_udp(self, host, port)
        return await _connect_dtls(self, scheme, host, port)

    async def request(self, link: Link, code: int, path: str, payload: bytes = b"",
                      timeout: float = 5.0) -> Message:
        msg = Message(code=code, payload=payload).set_path(path)
        return await asyncio.wait_for(self.node.request(link, msg, timeout=timeout),
                                      timeout + 1)

    async def close(self) -> None:
        await self.node.close()
        for close in reversed(self._closers):
            result = close()
            if asyncio.iscoroutine(result):
                await result
        await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def dotsd_client(creds: Creds | None) -> AsyncIterator[DotsdClient]:
    client = DotsdClient(creds)
    try:
        yield client
    finally:
        await client.close()


async def _connect_udp(client: DotsdClient, host: str, port: int) -> Link:
    from dotsd.transport.udp import open_udp

    endpoint = await open_udp(client.node, (host, 0))
    client._closers.append(endpoint.close)
    return endpoint.connect((host, port))


async def _connect_dtls(client: DotsdClient, scheme: str, host: str, port: int) -> Link:
    from dotsd.transport.dtls import dtls_connect

    assert client.creds is not None
    link = await dtls_connect(client.node, (host, port), dtls_client_context(client.creds, scheme),
                              timeout=5)
    client._closers.append(link.close)
    return link


async def bounded(aw: Any, timeout: float = 10.0) -> Any:
    return await asyncio.wait_for(aw, timeout)
