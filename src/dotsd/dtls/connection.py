"""One DTLS 1.2 association with one peer, sans I/O (in the style of aioquic).

Inputs: ``receive_datagram(data, now)``, ``handle_timer(now)``, ``send(data)``, ``close()``.
Outputs: ``datagrams_to_send()``, ``get_timer()`` (an absolute time on the caller's clock, or
None) and ``next_event()`` (:mod:`dotsd.dtls.events`). No sockets, no clock of our own:
every time is a ``now`` argument. Errors caused by the peer (bad certificate, alert,
garbage) end as :class:`ConnectionClosed` or are dropped; they never raise.

OpenSSL (memory BIOs) runs the handshake. dotsd drives the retransmissions itself
(RFC 6347 §4.2.4): it keeps the datagrams of the last flight it sent and resends them when
its own timer expires (initial value configurable, doubled each time, up to a maximum) or
when the peer shows that it lacks them by retransmitting its own previous flight. OpenSSL's
built-in timer (1 s, 2 s, 4 s... on OpenSSL's clock) is still polled so that its state
machine stays consistent, but it no longer sets the pace.

Once the handshake is complete and the suite is an AEAD one, the records are protected by
:func:`~dotsd.dtls.records.record_protection` (compiled, or its Python twin) and the OpenSSL
object is freed: an idle session then costs a few KiB instead of tens.
"""

from __future__ import annotations

import contextlib
import enum
import hmac
import ipaddress
import logging
from collections import deque
from dataclasses import dataclass, replace
from typing import Final

from cryptography import x509
from OpenSSL import SSL
from OpenSSL._util import lib as _lib

from dotsd.dtls.context import DtlsContext
from dotsd.dtls.events import ConnectionClosed, DataReceived, DtlsEvent, HandshakeCompleted
from dotsd.dtls.records import (
    AEAD_SUITES,
    ALERT_CLOSE_NOTIFY,
    ALERT_FATAL,
    ALERT_NAMES,
    ALERT_WARNING,
    CT_ALERT,
    CT_APPLICATION_DATA,
    CT_HANDSHAKE,
    HEADER_LEN,
    MAX_PLAINTEXT,
    AeadProtection,
    Record,
    handshake_message_seq,
    pack_datagrams,
    record_protection,
    split_records,
)
from dotsd.dtls.sessions import session_to_der
from dotsd.errors import LocalError

log = logging.getLogger("dotsd.dtls")

_BIO_CHUNK: Final = 65536
_MAX_EARLY_RECORDS: Final = 4
_CLOSE_NOTIFY: Final = bytes((ALERT_WARNING, ALERT_CLOSE_NOTIFY))
MIN_INITIAL_TIMEOUT: Final = 0.1


class DtlsStateError(LocalError):
    """A local mistake: sending before the handshake is complete or after the close."""


class Retransmit(enum.Enum):
    """Who paces handshake retransmissions."""

    DOTSD = "dotsd"  # dotsd's timers and RFC 6347 §4.2.4 implicit acknowledgements
    OPENSSL = "openssl"  # OpenSSL's own timer only (for comparison)


@dataclass(frozen=True, slots=True)
class HandshakeTimers:
    """Handshake retransmission timers (RFC 6347 §4.2.4.1)."""

    initial: float = 1.0  # first retransmission timeout
    maximum: float = 60.0  # doubling stops here (RFC 6298's maximum)
    deadline: float = 60.0  # the handshake fails after this long
    floor: float = MIN_INITIAL_TIMEOUT  # lowest initial timeout that from_rtt gives
    # Keep the doubled timeout for the next flight after a loss (RFC 6347 §4.2.4.1 SHOULD).
    # Off by default: under heavy loss it stretches every later flight (see tests).
    keep_backoff: bool = False
    # Measure the round trip of each flight answered without a retransmission and start the
    # later flights at max(2 RTT, floor) (see DtlsConnection._rtt_sample).
    learn_rtt: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError("need 0 < initial <= maximum")
        if self.deadline <= 0:
            raise ValueError("deadline must be positive")

    @classmethod
    def from_rtt(cls, rtt: float, *, maximum: float = 60.0, deadline: float = 60.0,
                 floor: float = MIN_INITIAL_TIMEOUT,
                 keep_backoff: bool = False) -> HandshakeTimers:
        """Timers for a path whose round-trip time is known: initial = max(2 RTT, floor)."""
        return cls(initial=min(max(2.0 * rtt, floor), maximum), maximum=maximum,
                   deadline=deadline, floor=floor, keep_backoff=keep_backoff)

    def with_rtt(self, rtt: float) -> HandshakeTimers:
        return replace(self, initial=min(max(2.0 * rtt, self.floor), self.maximum))


class _State(enum.Enum):
    HANDSHAKING = "handshaking"
    ESTABLISHED = "established"
    CLOSED = "closed"


def ssl_error_reason(exc: BaseException) -> str:
    """A short text for an OpenSSL error (its last reason string)."""
    if isinstance(exc, SSL.Error) and exc.args and isinstance(exc.args[0], list):
        reasons = [str(r[2]) for r in exc.args[0] if isinstance(r, tuple) and len(r) == 3]
        if reasons:
            return reasons[-1]
    return str(exc) or type(exc).__name__


def _session_psk_identity(session: SSL.Session) -> bytes | None:
    """The PSK identity stored in a session (resumed sessions do not call the callback).

    Reads the DER form of SSL_SESSION (OpenSSL ssl_asn1.c: ``psk_identity [8] EXPLICIT
    OCTET STRING``), since no accessor is bound.
    """
    der = session_to_der(session)
    if der is None:
        return None

    def tlv(pos: int) -> tuple[int, int, int]:  # tag, value start, value end
        tag, length = der[pos], der[pos + 1]
        pos += 2
        if length & 0x80:
            n = length & 0x7F
            length = int.from_bytes(der[pos:pos + n], "big")
            pos += n
        return tag, pos, pos + length

    try:
        tag, pos, end = tlv(0)
        if tag != 0x30:
            return None
        while pos < end:
            tag, start, stop = tlv(pos)
            if tag == 0xA8:  # [8] psk_identity
                inner, istart, istop = tlv(start)
                return der[istart:istop] if inner == 0x04 else None
            pos = stop
    except IndexError:
        return None
    return None


class DtlsConnection:
    """A DTLS 1.2 connection, client or server side (from ``context.server_side``).

    Server side: give it the datagram of a ClientHello whose cookie was verified by
    :class:`~dotsd.dtls.cookie.CookieJar` (``cookie`` is that cookie; OpenSSL checks it
    again in DTLSv1_listen). Without ``cookie`` the server skips the cookie exchange.
    Client side: the ClientHello is ready to send as soon as the object exists.
    """

    __slots__ = (
        "_answered_seq", "_context", "_deadline", "_early", "_events", "_final_flight",
        "_final_until", "_flight", "_flight_at", "_last_sent_at", "_listen_pending", "_mode",
        "_mtu", "_offload", "_ossl_timer_at", "_our_max_msg_seq", "_out", "_peer_max_seq",
        "_prot", "_resent", "_retention", "_retransmitted", "_rto", "_sent_epoch1", "_ssl",
        "_state", "_timer_at", "_timers", "_write_seq1", "certificate", "cipher",
        "close_reason", "expected_cookie", "psk_identity", "psk_identity_seen", "resumed",
        "retransmissions", "rtt", "server_side", "session",
    )

    def __init__(self, context: DtlsContext, now: float, *, cookie: bytes | None = None,
                 server_hostname: str | None = None, session: SSL.Session | None = None,
                 timers: HandshakeTimers | None = None,
                 retransmit: Retransmit = Retransmit.DOTSD, offload: bool = True,
                 final_flight_retention: float = 60.0, mtu: int | None = None,
                 rtt_hint: float | None = None) -> None:
        self._context = context
        self.server_side = context.server_side
        self._mtu = mtu if mtu is not None else context.mtu
        self._timers = timers if timers is not None else HandshakeTimers()
        self._mode = retransmit
        if (rtt_hint is not None and self._timers.learn_rtt
                and 0 <= 2 * rtt_hint < self._timers.initial):
            # A round trip the cookie measured (dotsd.dtls.cookie); a later one only if it
            # is shorter (a ClientHello resent on the client's timer makes it look longer).
            self._timers = self._timers.with_rtt(rtt_hint)
        self._offload = offload
        self._retention = final_flight_retention
        self._state = _State.HANDSHAKING
        self._events: deque[DtlsEvent] = deque()
        self._out: list[bytes] = []
        self._prot: AeadProtection | None = None
        # Handshake retransmission state (RFC 6347 §4.2.4).
        self._rto = self._timers.initial
        self._timer_at: float | None = None
        self._deadline = now + self._timers.deadline
        self._ossl_timer_at: float | None = None
        self._retransmitted = False  # the current flight was sent more than once
        self._resent = False  # ... by our timer or because the peer repeated its own
        self._last_sent_at = now
        self._flight_at: float | None = None  # when the current flight was first sent
        self._flight: list[bytes] = []
        self._our_max_msg_seq = -1  # highest message_seq we sent (epoch 0)
        self._peer_max_seq = -1  # highest message_seq received from the peer (epoch 0)
        self._answered_seq = -1  # peer messages up to this one are answered by our flight
        self._sent_epoch1 = False
        self._write_seq1 = -1  # highest epoch-1 record sequence number OpenSSL sent
        self._early: list[bytes] = []  # epoch-1 application data seen before our Finished
        self._final_flight: list[bytes] | None = None
        self._final_until = 0.0
        # Results.
        self.expected_cookie = cookie
        self.psk_identity_seen: bytes | None = None
        self.certificate: x509.Certificate | None = None
        self.psk_identity: bytes | None = None
        self.resumed = False
        self.cipher: str | None = None
        self.session: SSL.Session | None = None
        self.close_reason: str | None = None
        self.retransmissions = 0
        self.rtt: float | None = None  # the smallest unambiguous handshake round trip

        ssl = SSL.Connection(context.ssl_context)
        ssl.set_app_data(self)
        ssl.set_ciphertext_mtu(self._mtu)
        self._ssl: SSL.Connection | None = ssl
        self._listen_pending = False
        if self.server_side:
            ssl.set_accept_state()
            self._listen_pending = cookie is not None
            return
        ssl.set_connect_state()
        if server_hostname:
            self._set_server_name(ssl, server_hostname)
        if session is not None:
            ssl.set_session(session)
        self._advance(now)

    def _set_server_name(self, ssl: SSL.Connection, name: str) -> None:
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            ip = None
        if ip is None:
            ssl.set_tlsext_host_name(name.encode("idna"))  # RFC 9132 §7.1: SNI
        if self._context.check_hostname and self._context.uses_certificates:
            # RFC 6125 name check, by OpenSSL during the handshake.
            param = _lib.SSL_get0_param(ssl._ssl)
            if ip is not None:
                packed = ip.packed
                ok = _lib.X509_VERIFY_PARAM_set1_ip(param, packed, len(packed))
            else:
                host = name.encode("idna")
                ok = _lib.X509_VERIFY_PARAM_set1_host(param, host, len(host))
            if ok != 1:
                raise ValueError(f"cannot verify server name {name!r}")

    # ------------------------------------------------------------------ properties
    @property
    def handshake_complete(self) -> bool:
        return self._state is _State.ESTABLISHED

    @property
    def closed(self) -> bool:
        return self._state is _State.CLOSED

    @property
    def offloaded(self) -> bool:
        """True once records are protected by dotsd and the OpenSSL object is gone."""
        return self._prot is not None

    @property
    def timers(self) -> HandshakeTimers:
        return self._timers

    @property
    def max_plaintext(self) -> int:
        """The largest application datagram that fits the MTU in one record."""
        if self._prot is not None:
            return max(0, self._mtu - self._prot.overhead())
        if self._ssl is not None and self._state is _State.ESTABLISHED:
            return int(self._ssl.get_cleartext_mtu())
        return max(0, self._mtu - HEADER_LEN - 8 - 16)

    def cookie_matches(self, cookie: bytes) -> bool:
        """OpenSSL's cookie-verify callback: the cookie our CookieJar accepted."""
        return self.expected_cookie is not None and hmac.compare_digest(
            cookie, self.expected_cookie)

    # ------------------------------------------------------------------ outputs
    def datagrams_to_send(self) -> list[bytes]:
        out = self._out
        self._out = []
        return out

    def next_event(self) -> DtlsEvent | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        if self._state is _State.HANDSHAKING:
            at = self._timer_at if self._mode is Retransmit.DOTSD else self._ossl_timer_at
            return self._deadline if at is None else min(at, self._deadline)
        if self._final_flight is not None:
            return self._final_until
        return None

    # ------------------------------------------------------------------ inputs
    def set_rtt(self, rtt: float, now: float) -> None:
        """Use a measured round-trip time: initial timeout = max(2 RTT, floor)."""
        self._timers = self._timers.with_rtt(rtt)
        if self._state is _State.HANDSHAKING and not self._retransmitted:
            self._rto = self._timers.initial
            if self._timer_at is not None:
                self._timer_at = min(self._timer_at, max(now, self._last_sent_at + self._rto))

    def receive_datagram(self, data: bytes, now: float) -> None:
        state = self._state
        if state is _State.CLOSED:
            return
        records = split_records(data)
        if not records:
            return  # RFC 6347 §4.1.2.7: invalid records are silently discarded
        if self._prot is not None:
            self._receive_protected(data, records, now)
        elif state is _State.ESTABLISHED:
            self._receive_openssl(data)
        else:
            self._receive_handshake(data, records, now)

    def receive_application_data(self, data: bytes, now: float) -> bytes | None:
        """``receive_datagram``, with a short cut for the usual datagram of a session.

        A datagram that is one application_data record of the current epoch (RFC 9132
        §7.3: one CoAP message per record) has its plaintext returned here instead of
        queued as :class:`DataReceived`. Anything else goes through ``receive_datagram``
        and None is returned: look at ``next_event()`` as usual (None is also returned
        for a replayed or forged record, which is dropped either way).
        """
        prot = self._prot
        if prot is not None:
            plain = prot.open_lone(data)
            if plain is not False:
                if plain is not None:
                    self._final_flight = None  # the peer has our last flight
                return plain
        self.receive_datagram(data, now)
        return None

    def protect(self, data: bytes) -> bytes | None:
        """The datagram carrying ``data`` as one application-data record, sealed by dotsd,
        to be sent now; None when ``send`` must be used instead (records protected by
        OpenSSL, output already queued, not established, or too large to fit)."""
        prot = self._prot
        if prot is None or self._out or len(data) > MAX_PLAINTEXT:
            return None
        sealed = prot.seal(CT_APPLICATION_DATA, data)
        return sealed if self._final_flight is None else self._with_final_flight(sealed)

    def _with_final_flight(self, sealed: bytes) -> bytes:
        """``sealed`` behind our last handshake flight, while the peer has not shown it got
        that flight (no application data from it yet): then the first datagram that arrives
        completes the handshake and delivers the data at once. It matters when this side
        sends the last flight (a resumed handshake's client, RFC 5246 §7.3): otherwise a
        lost Finished leaves every request waiting for the peer's retransmission timer.
        RFC 6347 §4.1.1 allows several records in one datagram; the peer drops the copies
        it already has (§4.1.2.6). Only when both fit in one datagram."""
        final = self._final_flight
        if final is not None and len(final) == 1 and len(final[0]) + len(sealed) <= self._mtu:
            return final[0] + sealed
        return sealed

    @property
    def has_output(self) -> bool:
        """Datagrams are waiting in ``datagrams_to_send()``."""
        return bool(self._out)

    def send(self, data: bytes) -> None:
        """Protect ``data`` as one application-data record; it leaves as one datagram."""
        if self._state is not _State.ESTABLISHED:
            raise DtlsStateError(f"cannot send: connection is {self._state.value}")
        if len(data) > MAX_PLAINTEXT:
            raise ValueError(f"{len(data)} bytes do not fit in one DTLS record")
        if self._prot is not None:
            sealed = self._prot.seal(CT_APPLICATION_DATA, data)
            self._out.append(sealed if self._final_flight is None
                             else self._with_final_flight(sealed))
            return
        ssl = self._ssl
        assert ssl is not None
        try:
            ssl.send(data)
        except SSL.Error as exc:
            self._close(f"TLS error: {ssl_error_reason(exc)}")
            return
        self._out.extend(self._collect()[0])

    def close(self) -> None:
        """Send close_notify (RFC 5246 §7.2.1) if the handshake was complete; then closed."""
        if self._state is _State.CLOSED:
            return
        if self._state is _State.ESTABLISHED:
            if self._prot is not None:
                self._out.append(self._prot.seal(CT_ALERT, _CLOSE_NOTIFY))
            elif self._ssl is not None:
                with contextlib.suppress(SSL.Error):
                    self._ssl.shutdown()
                self._out.extend(self._collect()[0])
        self._close("closed")

    def handle_timer(self, now: float) -> None:
        state = self._state
        if state is _State.HANDSHAKING:
            if now >= self._deadline:
                self._close("handshake timeout")
                return
            if self._mode is Retransmit.OPENSSL:
                if self._ossl_timer_at is not None and now >= self._ossl_timer_at:
                    self._openssl_timeout(now)
                return
            if self._timer_at is not None and now >= self._timer_at:
                self._retransmit(now, by_peer=False)
        elif (state is _State.ESTABLISHED and self._final_flight is not None
              and now >= self._final_until):
            self._final_flight = None

    # ------------------------------------------------------------------ handshake
    def _receive_handshake(self, data: bytes, records: list[Record], now: float) -> None:
        ssl = self._ssl
        assert ssl is not None
        if self._listen_pending:
            self._receive_cookie_hello(ssl, data, records[0], now)
            return
        retransmission = False
        flights_before = self._our_max_msg_seq, self._sent_epoch1
        for i, rec in enumerate(records):
            if rec.content_type == CT_APPLICATION_DATA and rec.epoch > 0:
                # Application data overtook the Finished; keep it for after the handshake.
                if len(self._early) < _MAX_EARLY_RECORDS:
                    self._early.append(data[rec.start:rec.end])
                continue
            msg_seq = handshake_message_seq(data, rec)
            if msg_seq is not None:
                if msg_seq <= self._answered_seq:
                    retransmission = True  # a message we already answered
                if msg_seq > self._peer_max_seq:
                    self._peer_max_seq = msg_seq
            try:
                ssl.bio_write(data[rec.start:rec.end])
            except SSL.Error:
                continue
            self._advance(now)
            if self._state is not _State.HANDSHAKING:
                if self._state is _State.ESTABLISHED and i + 1 < len(records):
                    rest = records[i + 1:]
                    if self._prot is not None:
                        self._receive_protected(data, rest, now)
                    else:
                        for r in rest:
                            self._receive_openssl(data[r.start:r.end])
                return
        if (retransmission and self._mode is Retransmit.DOTSD
                and flights_before == (self._our_max_msg_seq, self._sent_epoch1)
                and now - self._last_sent_at >= self._rto / 4):
            # RFC 6347 §4.2.4: the peer resent a flight we answered, so ours was lost.
            self._retransmit(now, by_peer=True)

    def _receive_cookie_hello(self, ssl: SSL.Connection, data: bytes, record: Record,
                              now: float) -> None:
        """The ClientHello with the cookie (RFC 6347 §4.2.1). DTLSv1_listen verifies the
        cookie again and sets the handshake and record sequence numbers to follow it."""
        self._listen_pending = False
        seq = handshake_message_seq(data, record)
        try:
            ssl.bio_write(data[record.start:record.end])
            ssl.DTLSv1_listen()
        except SSL.WantReadError:
            self._close("ClientHello refused (cookie)")
            return
        except SSL.Error as exc:
            self._close(f"ClientHello refused: {ssl_error_reason(exc)}")
            return
        self._peer_max_seq = seq if seq is not None else 0
        self._advance(now)

    def _advance(self, now: float) -> None:
        """Run OpenSSL's handshake on what it was given; take its output."""
        ssl = self._ssl
        assert ssl is not None
        done = False
        try:
            ssl.do_handshake()
            done = True
        except SSL.WantReadError:
            pass
        except SSL.Error as exc:
            self._out.extend(self._collect()[0])  # the alert tells the peer why
            self._close(f"handshake failed: {ssl_error_reason(exc)}")
            return
        datagrams, new_flight = self._collect()
        if new_flight or done:
            self._rtt_sample(now)
        if datagrams:
            self._out.extend(datagrams)
            self._last_sent_at = now
            if done:
                if new_flight:
                    # We sent the last flight (RFC 6347 §4.2.4: keep it to answer the peer's
                    # retransmissions).
                    self._final_flight = datagrams
                    self._final_until = now + self._retention
            elif new_flight:
                # A new flight starts at the initial timeout, as OpenSSL does; with
                # keep_backoff, RFC 6347 §4.2.4.1's SHOULD: keep a backed-off timer until
                # a flight gets through without loss.
                if not (self._retransmitted and self._timers.keep_backoff):
                    self._rto = self._timers.initial
                self._retransmitted = self._resent = False
                self._flight = datagrams
                self._flight_at = now
                self._answered_seq = self._peer_max_seq
                self._timer_at = now + self._rto
            elif any(d[0] == CT_HANDSHAKE for d in datagrams):
                self._flight = datagrams  # OpenSSL resent the flight itself
                self._resent = True
        if self._mode is Retransmit.OPENSSL and not done:
            timeout = ssl.DTLSv1_get_timeout()
            self._ossl_timer_at = None if timeout is None else now + float(timeout)
        if done:
            self._complete(now)

    def _collect(self) -> tuple[list[bytes], bool]:
        """OpenSSL's output as datagrams, and whether it starts a new flight."""
        ssl = self._ssl
        if ssl is None:
            return [], False
        chunks: list[bytes] = []
        while True:
            try:
                chunks.append(ssl.bio_read(_BIO_CHUNK))
            except SSL.WantReadError:
                break
        if not chunks:
            return [], False
        raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        records = split_records(raw)
        new_flight = False
        for rec in records:
            if rec.epoch == 0:
                msg_seq = handshake_message_seq(raw, rec)
                if msg_seq is not None and msg_seq > self._our_max_msg_seq:
                    self._our_max_msg_seq = msg_seq
                    new_flight = True
            else:
                if rec.seq > self._write_seq1:
                    self._write_seq1 = rec.seq
                if rec.content_type == CT_HANDSHAKE and not self._sent_epoch1:
                    self._sent_epoch1 = True
                    new_flight = True
        return pack_datagrams(raw, records, self._mtu), new_flight

    def _retransmit(self, now: float, by_peer: bool) -> None:
        ssl = self._ssl
        assert ssl is not None
        datagrams: list[bytes] = []
        if not by_peer:
            # Keep OpenSSL's own timer state consistent: if its timer (on its clock) has
            # expired it resends the flight itself, with fresh record numbers.
            fresh = self._run_openssl_timer(ssl)
            if fresh is None:
                return
            datagrams = fresh
        if datagrams:
            self._flight = datagrams
        else:
            # The same records again: a peer that has them drops them as replays
            # (RFC 6347 §4.1.2.6), one that lost them takes them.
            datagrams = self._flight
        self._out.extend(datagrams)
        self.retransmissions += 1
        self._last_sent_at = now
        self._resent = True
        if not by_peer:
            self._retransmitted = True
            self._rto = min(self._rto * 2.0, self._timers.maximum)
        self._timer_at = now + self._rto

    def _rtt_sample(self, now: float) -> None:
        """The peer answered our current flight. If that flight went out once, the time
        since is a round trip (Karn's rule, RFC 6298 §3; the peer's processing included):
        the flights still to come start at max(2 RTT, floor) instead of the blind default
        (RFC 6347 §4.2.4.1 asks for 1 s only "initially")."""
        if self._flight_at is None or self._resent:
            return
        sample = now - self._flight_at
        self._flight_at = None
        if self.rtt is None or sample < self.rtt:
            self.rtt = sample
            if self._mode is Retransmit.DOTSD and self._timers.learn_rtt:
                self._timers = self._timers.with_rtt(sample)

    def _run_openssl_timer(self, ssl: SSL.Connection) -> list[bytes] | None:
        """Let OpenSSL handle its timer; the datagrams it made, or None if it failed."""
        try:
            ssl.DTLSv1_handle_timeout()
        except SSL.Error as exc:
            self._out.extend(self._collect()[0])
            self._close(f"handshake failed: {ssl_error_reason(exc)}")
            return None
        return self._collect()[0]

    def _openssl_timeout(self, now: float) -> None:
        ssl = self._ssl
        assert ssl is not None
        datagrams = self._run_openssl_timer(ssl)
        if datagrams is None:
            return
        if datagrams:
            self.retransmissions += 1
            self._resent = True
            self._out.extend(datagrams)
        timeout = ssl.DTLSv1_get_timeout()
        self._ossl_timer_at = None if timeout is None else now + float(timeout)

    def _complete(self, now: float) -> None:
        ssl = self._ssl
        assert ssl is not None
        self._state = _State.ESTABLISHED
        self._timer_at = self._ossl_timer_at = None
        self._flight = []
        self.cipher = ssl.get_cipher_name()
        self.resumed = bool(_lib.SSL_session_reused(ssl._ssl))
        peer_cert = ssl.get_peer_certificate()
        self.certificate = peer_cert.to_cryptography() if peer_cert is not None else None
        session = ssl.get_session()
        if self.cipher is not None and "PSK" in self.cipher:
            if not self.server_side:
                self.psk_identity = self._context.psk_identity
            elif self.psk_identity_seen is not None:
                self.psk_identity = self.psk_identity_seen
            elif session is not None:
                self.psk_identity = _session_psk_identity(session)
        if not self.server_side:
            self.session = session  # for resumption (RFC 9132 §7.1)
        suite = AEAD_SUITES.get(self.cipher or "")
        if self._offload and suite is not None:
            master = ssl.master_key()
            client_random, server_random = ssl.client_random(), ssl.server_random()
            if master and client_random and server_random:
                self._prot = record_protection(
                    suite, master, client_random, server_random,
                    is_client=not self.server_side, next_write_seq=self._write_seq1 + 1)
                self._release_ssl(keep_session=True)
        self._events.append(HandshakeCompleted(self.certificate, self.psk_identity,
                                               self.resumed))
        early, self._early = self._early, []
        for record in early:
            self.receive_datagram(record, now)

    # ------------------------------------------------------------------ established
    def _receive_protected(self, data: bytes, records: list[Record], now: float) -> None:
        prot = self._prot
        assert prot is not None
        for rec in records:
            if rec.epoch != prot.epoch:
                continue  # epoch-0 retransmissions, stale records (RFC 6347 §4.1)
            ctype = rec.content_type
            if ctype in (CT_APPLICATION_DATA, CT_ALERT):
                if prot.window.seen(rec.seq):
                    continue  # RFC 6347 §4.1.2.6: replayed or too old
                plain = prot.open(data, rec)
                if plain is None:
                    continue  # RFC 6347 §4.1.2.7: bad records are dropped
                prot.window.mark(rec.seq)
                if ctype == CT_APPLICATION_DATA:
                    self._final_flight = None  # the peer has our last flight
                    self._events.append(DataReceived(plain))
                    continue
                if len(plain) != 2:
                    continue
                level, desc = plain[0], plain[1]
                if desc == ALERT_CLOSE_NOTIFY:
                    # RFC 5246 §7.2.1: answer close_notify with close_notify.
                    self._out.append(prot.seal(CT_ALERT, _CLOSE_NOTIFY))
                    self._close("closed by peer")
                    return
                if level == ALERT_FATAL:
                    self._close(f"alert from peer: {ALERT_NAMES.get(desc, str(desc))}")
                    return
            elif ctype == CT_HANDSHAKE:
                if prot.open(data, rec) is None:
                    continue
                # An authentic epoch-1 handshake record is the peer's Finished again: it
                # lacks our last flight (RFC 6347 §4.2.4). Renegotiation is refused
                # (RFC 7525 §3.5) by ignoring anything else.
                final = self._final_flight
                if (final is not None and now < self._final_until
                        and now - self._last_sent_at >= self._timers.initial / 4):
                    self._out.extend(final)
                    self._last_sent_at = now
                    self.retransmissions += 1

    def _receive_openssl(self, data: bytes) -> None:
        """Established, records still protected by OpenSSL (a suite dotsd does not offload)."""
        ssl = self._ssl
        assert ssl is not None
        try:
            ssl.bio_write(data)
        except SSL.Error:
            return
        while True:
            try:
                plain = ssl.recv(MAX_PLAINTEXT)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self._out.extend(self._collect()[0])
                self._close("closed by peer")
                return
            except SSL.Error as exc:
                self._out.extend(self._collect()[0])
                self._close(f"TLS error: {ssl_error_reason(exc)}")
                return
            self._events.append(DataReceived(plain))
        self._out.extend(self._collect()[0])  # OpenSSL answering a retransmitted Finished

    # ------------------------------------------------------------------ teardown
    def _release_ssl(self, keep_session: bool = False) -> None:
        ssl = self._ssl
        if ssl is not None:
            if keep_session:
                # SSL_free without a shutdown would mark the session not resumable
                # (OpenSSL's ssl_clear_bad_session); this one ended well.
                ssl.set_shutdown(SSL.SENT_SHUTDOWN | SSL.RECEIVED_SHUTDOWN)
            ssl.set_app_data(None)
            self._ssl = None

    def _close(self, reason: str) -> None:
        if self._state is _State.CLOSED:
            return
        if self._state is _State.HANDSHAKING or reason != "closed":
            log.debug("dtls connection closed: %s", reason)
        self._state = _State.CLOSED
        self.close_reason = reason
        self._timer_at = self._ossl_timer_at = None
        self._flight = []
        self._final_flight = None
        self._early = []
        self._prot = None
        self._release_ssl(keep_session=reason in ("closed", "closed by peer"))
        self._events.append(ConnectionClosed(reason))

    def __repr__(self) -> str:
        role = "server" if self.server_side else "client"
        return f"<DtlsConnection {role} {self._state.value} cipher={self.cipher}>"
