"""How a DOTS client reaches its DOTS server: Happy Eyeballs over DTLS/TLS and IPv6/IPv4
(RFC 9132 §4.3), a cache of what worked, and redirection to an alternate server (§4.6).

The choices are plain code (:func:`order_candidates`, :class:`AttemptCache`); :func:`race` and
:class:`ServerDialer` are the asyncio side that makes the connection attempts.

RFC 9132 §4.3 rules applied:

* preference order "UDP over IPv6, UDP over IPv4, TCP over IPv6, and finally TCP over IPv4";
* attempts start one "Connection Attempt Delay" apart (RFC 8305 §5; 250 ms by default here,
  "during an attack, the DOTS client SHOULD use ... 100 ms"), or at once when the previous one
  failed; the first link up wins and the others are abandoned;
* "the DOTS client MUST cache information regarding the outcome of each connection attempt for
  a specific time period ... on the order of few minutes (e.g., 10 min)": within that time a
  redial tries the winner first, alone for ``CACHED_HEAD_START`` (1 s), then races the others
  behind it (at once if it fails);
* a session that fell back to TLS probes DTLS again, at most every 5 minutes ("MUST NOT be
  done more frequently than every 5 minutes"): the
  :class:`~dotsd.signal.client_session.ClientSession` times it, :meth:`ServerDialer.probe_dtls`
  does it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from OpenSSL import SSL

from dotsd.dtls.context import DtlsContext
from dotsd.errors import PeerError
from dotsd.link import Link, LinkHandler
from dotsd.signal.redirect import Redirection, RedirectState

__all__ = [
    "ATTACK_ATTEMPT_DELAY",
    "DEFAULT_ATTEMPT_DELAY",
    "AttemptCache",
    "Candidate",
    "DialError",
    "ServerDialer",
    "order_candidates",
    "race",
]

log = logging.getLogger("dotsd.signal.dial")

Transport = Literal["dtls", "tls"]
TRANSPORTS: Final[tuple[Transport, ...]] = ("dtls", "tls")

DEFAULT_ATTEMPT_DELAY: Final = 0.25  # RFC 8305 §5: recommended Connection Attempt Delay
ATTACK_ATTEMPT_DELAY: Final = 0.1  # RFC 9132 §4.3: "during an attack ... 100 ms"
CACHE_TIME: Final = 600.0  # RFC 9132 §4.3: "e.g., 10 min"
# The cached winner is tried first and alone for this long, then the other candidates join
# the race (one Connection Attempt Delay apart): a path that worked a minute ago is not
# "thrashed", but a DTLS handshake stuck in loss does not hold TLS back for a whole timeout.
CACHED_HEAD_START: Final = 1.0


class DialError(PeerError, ConnectionError):
    """No candidate could be reached; ``failures`` says what happened to each."""

    def __init__(self, server: str, failures: Sequence[tuple[Candidate, str]]) -> None:
        self.server = server
        self.failures = list(failures)
        detail = "; ".join(f"{c}: {why}" for c, why in failures) or "no address"
        super().__init__(f"cannot reach DOTS server {server}: {detail}")


@dataclass(frozen=True, slots=True)
class Candidate:
    """One way to reach the server: a transport, an address and a port."""

    transport: Transport
    address: str
    port: int

    @property
    def family(self) -> int:
        return 6 if ":" in self.address else 4

    def __str__(self) -> str:
        host = f"[{self.address}]" if self.family == 6 else self.address
        return f"{self.transport}://{host}:{self.port}"


def order_candidates(addresses: Sequence[str], port: int,
                     transports: Sequence[Transport] = TRANSPORTS) -> list[Candidate]:
    """RFC 9132 §4.3: UDP/IPv6, UDP/IPv4, TCP/IPv6, TCP/IPv4; within one family the order of
    the resolver (RFC 6724) is kept; duplicates dropped."""
    unique = list(dict.fromkeys(addresses))
    v6 = [a for a in unique if ":" in a]
    v4 = [a for a in unique if ":" not in a]
    return [Candidate(t, a, port) for t in TRANSPORTS if t in transports
            for a in (*v6, *v4)]


class AttemptCache:
    """The outcome of the last Happy Eyeballs per server, kept ``ttl`` seconds (RFC 9132
    §4.3)."""

    def __init__(self, ttl: float = CACHE_TIME) -> None:
        self.ttl = ttl
        self._winners: dict[str, tuple[Candidate, float]] = {}

    def remember(self, server: str, winner: Candidate, now: float) -> None:
        self._winners[server] = (winner, now)

    def lookup(self, server: str, now: float) -> Candidate | None:
        entry = self._winners.get(server)
        if entry is None:
            return None
        if now - entry[1] >= self.ttl:
            del self._winners[server]  # "flushed when its age exceeds" the period
            return None
        return entry[0]

    def forget(self, server: str) -> None:
        self._winners.pop(server, None)

    def entries(self) -> dict[str, tuple[Candidate, float]]:
        """What is cached: server → (winner, when), on the caller's clock."""
        return dict(self._winners)


Attempt = Callable[[Candidate], Coroutine[Any, Any, Link]]


async def race(candidates: Sequence[Candidate], attempt: Attempt, delay: float,
               first_delay: float | None = None) -> tuple[Candidate, Link]:
    """Happy Eyeballs (RFC 8305 §5, RFC 9132 §4.3): start the attempts in order, the next one
    ``delay`` seconds after the previous (``first_delay`` after the first, when given) or as
    soon as it failed; the first link up wins, the others are cancelled (a link that still
    comes up is closed). Raises :class:`DialError`."""
    if not candidates:
        raise DialError("?", [])
    loop = asyncio.get_running_loop()
    pending: dict[asyncio.Task[Link], Candidate] = {}
    failures: list[tuple[Candidate, str]] = []
    queue = list(candidates)
    winner: tuple[Candidate, Link] | None = None
    try:
        while winner is None and (queue or pending):
            wait = delay
            if queue:
                if first_delay is not None and len(queue) == len(candidates):
                    wait = first_delay
                cand = queue.pop(0)
                pending[loop.create_task(attempt(cand))] = cand
            done, _ = await asyncio.wait(pending, timeout=wait if queue else None,
                                         return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                cand = pending.pop(task)
                exc = task.exception()
                if exc is None:
                    if winner is None:
                        winner = (cand, task.result())
                    else:
                        task.result().close()
                else:
                    failures.append((cand, _reason(exc)))
                    log.info("dial %s failed: %s", cand, _reason(exc))
    finally:
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(BaseException):
                link = await task
                link.close()  # came up after the winner
    if winner is None:
        raise DialError(str(candidates[0].address), failures)
    return winner


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


async def resolve(host: str, port: int) -> list[str]:
    """The addresses of ``host`` (an address literal is itself)."""
    try:
        return [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    return [str(info[4][0]) for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)]


class ServerDialer:
    """Dials the DOTS server for a client (pass :meth:`dial` as ``SignalClient(connect=)``).

    ``node``: the client's CoAP node; ``host``/``port``: the provisioned server (RFC 9132 §4.1);
    ``addresses``: its IPv4/IPv6 addresses when configured (RFC 9132 §4.3: "a list of IPv4 and
    IPv6 addresses"; else ``host`` is resolved), ``host`` then naming it for the certificate
    check;
    ``dtls``/``tls``: the client's contexts (None leaves that transport out); ``timeout``: per
    attempt; ``attack``: a callable telling whether an attack is ongoing (shorter attempt
    delay, redirection kept past its TTL); ``rtt``: a callable giving the client's smoothed
    RTT to the server, if it has one: the DTLS handshake's first retransmission timeout is
    then 2 RTT instead of the blind 1 s (RFC 6347 §4.2.4.1).
    """

    def __init__(self, node: LinkHandler, host: str, port: int, *,
                 dtls: DtlsContext | None, tls: ssl.SSLContext | None,
                 addresses: Sequence[str] = (), timeout: float = 10.0,
                 attack: Callable[[], bool] = lambda: False,
                 cache: AttemptCache | None = None,
                 rtt: Callable[[], float | None] = lambda: None) -> None:
        if dtls is None and tls is None:
            raise ValueError("at least one of DTLS and TLS is needed")
        self.node = node
        self.host = host
        self.port = port
        self.addresses = tuple(addresses)
        self.dtls = dtls
        self.tls = tls
        self.timeout = timeout
        self.attack = attack
        self.rtt = rtt
        self.cache = cache if cache is not None else AttemptCache()
        self.redirects = RedirectState(host)
        self.current: Candidate | None = None
        self.server_name: str = host
        self._tls_since: float | None = None
        self._sessions: dict[Candidate, SSL.Session] = {}  # DTLS sessions for resumption
        self._credentials: str | None = None

    @property
    def transports(self) -> tuple[Transport, ...]:
        wanted: list[Transport] = []
        if self.dtls is not None:
            wanted.append("dtls")
        if self.tls is not None:
            wanted.append("tls")
        return tuple(wanted)

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    async def dial(self) -> Link:
        """Connect to the server in force (an unexpired redirection, else the provisioned
        one); raises :class:`DialError`."""
        now = self._now()
        alt = self.redirects.target(now, attack=self.attack())
        if alt is not None:
            name, hosts, port = alt.alt_server, list(alt.endpoints()), self.port
        else:
            name, hosts, port = self.host, list(self.addresses or [self.host]), self.port
        addresses: list[str] = []
        failures: list[tuple[Candidate, str]] = []
        for host in hosts:
            try:
                addresses += await resolve(host, port)
            except OSError as exc:
                failures.append((Candidate("dtls", host, port), f"cannot resolve: {exc}"))
        candidates = order_candidates(addresses, port, self.transports)
        if not candidates:
            raise DialError(name, failures)
        key = f"{name}:{port}"
        delay = ATTACK_ATTEMPT_DELAY if self.attack() else DEFAULT_ATTEMPT_DELAY

        async def attempt(cand: Candidate) -> Link:
            return await self._attempt(cand, name)

        cached = self.cache.lookup(key, now)
        first_delay: float | None = None
        if cached is not None and cached in candidates:
            # RFC 9132 §4.3: the cached outcome goes first, alone for a while, to avoid
            # "thrashing the network"; the race goes on behind it if it is slow.
            candidates = [cached, *(c for c in candidates if c != cached)]
            first_delay = max(delay, CACHED_HEAD_START)
        try:
            cand, link = await race(candidates, attempt, delay, first_delay)
        except DialError as exc:
            self.cache.forget(key)
            raise DialError(name, failures + exc.failures) from None
        now = self._now()
        self.cache.remember(key, cand, now)
        self.redirects.contacted(name, now)
        self.redirects.contacted(cand.address, now)
        self.current, self.server_name = cand, name
        self._tls_since = now if cand.transport == "tls" and self.dtls is not None else None
        log.info("connected to DOTS server %s over %s", name, cand)
        return link

    async def _attempt(self, cand: Candidate, server_name: str) -> Link:
        from dotsd.transport.dtls import dtls_connect
        from dotsd.transport.tcp import connect_tcp

        if cand.transport == "dtls":
            from dotsd.dtls.connection import HandshakeTimers

            assert self.dtls is not None
            session = self._sessions.get(cand)
            rtt = self.rtt()
            link = await dtls_connect(self.node, (cand.address, cand.port), self.dtls,
                                      timeout=self.timeout, server_hostname=server_name,
                                      session=session, timers=None if rtt is None
                                      else HandshakeTimers.from_rtt(rtt))
            if link.session is not None:
                self._sessions[cand] = link.session  # RFC 9132 §7.2: resumption on redial
            if link.connection.resumed:
                log.info("DTLS session with %s resumed", cand)
            return link
        assert self.tls is not None
        return await connect_tcp(self.node, cand.address, cand.port, self.tls,
                                 server_hostname=server_name, timeout=self.timeout)

    @property
    def sessions(self) -> dict[Candidate, SSL.Session]:
        """The DTLS sessions to resume, per candidate (a copy; see :meth:`resume_with`)."""
        return dict(self._sessions)

    @property
    def credentials(self) -> str | None:
        """A digest of the DTLS credentials (:func:`~dotsd.dtls.sessions.credentials_digest`),
        which a stored session must match; None without DTLS."""
        from dotsd.dtls.sessions import credentials_digest

        if self.dtls is None:
            return None
        if self._credentials is None:
            self._credentials = credentials_digest(self.dtls)
        return self._credentials

    def resume_with(self, cand: Candidate, der: bytes, credentials: str) -> bool:
        """Offer a session of an earlier run (:func:`~dotsd.dtls.sessions.session_to_der`'s
        bytes, made with ``credentials``) when dialing ``cand`` over DTLS; False if it cannot
        be used (other credentials, not DTLS, not a session)."""
        from dotsd.dtls.sessions import session_from_der

        if self.dtls is None or cand.transport != "dtls" or credentials != self.credentials:
            return False
        session = session_from_der(der, self.dtls)
        if session is None:
            return False
        self._sessions[cand] = session
        return True

    def redirect(self, redirection: Redirection) -> tuple[bool, str]:
        """Follow a 5.03 redirection from the next :meth:`dial` on (RFC 9132 §4.6)."""
        return self.redirects.accept(redirection, self._now())

    def redirect_expiry(self) -> float | None:
        """When the redirection the current server was reached by ends (RFC 9132 §4.6;
        None: the provisioned server, or a redirection without end)."""
        if self.server_name == self.host:
            return None
        return self.redirects.expiry()

    @property
    def tls_fallback(self) -> bool:
        """Whether the session runs on TLS although DTLS is configured (RFC 9132 §4.3)."""
        return self._tls_since is not None

    async def probe_dtls(self) -> Link | None:
        """RFC 9132 §4.3: a session that fell back to TLS "periodically repeats the mechanism
        to discover whether DOTS signal channel messages with DTLS over UDP become available";
        returns a DTLS link to the same server (the caller moves the session to it), or None
        (the next probe waits another interval)."""
        current = self.current
        if current is None or current.transport != "tls" or self.dtls is None:
            return None
        cand = Candidate("dtls", current.address, current.port)
        try:
            link = await self._attempt(cand, self.server_name)
        except Exception as exc:
            log.info("DTLS probe to %s failed: %s", cand, _reason(exc))
            self._tls_since = self._now()
            return None
        self.current, self._tls_since = cand, None
        self.cache.remember(f"{self.server_name}:{cand.port}", cand, self._now())
        log.info("DTLS available again: moving the session to %s", cand)
        return link
