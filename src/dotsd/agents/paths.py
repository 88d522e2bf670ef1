"""What a DOTS client learnt of the path to its server, kept across runs.

A one-shot ``dotsd client mitigate`` starts a new session, often in the middle of an attack.
Two things learnt by earlier runs make that cold start faster, within the rules:

* the smoothed RTT (RFC 9132 §4.4: with "an RTT estimate" Non-confirmable requests may be
  repeated once per RTT instead of once every 3 s; RFC 6347 §4.2.4.1: the DTLS handshake's
  first retransmission timeout then starts at 2 RTT instead of the blind 1 s). Kept
  :data:`RTT_TTL` (a day): the path to a provisioned server changes little, and a too-short
  value only costs a few early retransmissions, doubled away;
* the DTLS sessions (RFC 9132 §7.1), to resume with an abbreviated handshake: one round trip
  fewer and no certificates in the flights (:mod:`dotsd.dtls.sessions`; the file then holds
  master secrets, hence 0600 in the client's own state directory). Kept :data:`SESSION_TTL`,
  the server's default session lifetime (a server that forgot it makes a full handshake),
  and only for the credentials it was made with (a replaced key or certificate must
  authenticate anew);
* the outcome of the last Happy Eyeballs (RFC 9132 §4.3: "the DOTS client MUST cache
  information regarding the outcome of each connection attempt ... (e.g., 10 min)"), so that
  a new process also tries the winner first. Kept as long as the dialer's cache
  (:data:`~dotsd.agents.dial.CACHE_TIME`).

The file is :class:`~dotsd.agents.statefile.JsonStateFile` (0600, atomic, locked); its times
are wall-clock times, turned into the loop's clock when loaded.
"""

from __future__ import annotations

import base64
import binascii
import logging
from pathlib import Path
from typing import Any, Final

from dotsd.agents.dial import CACHE_TIME, TRANSPORTS, Candidate, ServerDialer
from dotsd.agents.statefile import JsonStateFile, StateFileError
from dotsd.dtls.sessions import session_to_der
from dotsd.signal.pacing import RttEstimator

__all__ = ["RTT_TTL", "SESSION_TTL", "PathMemory"]

log = logging.getLogger("dotsd.client.paths")

RTT_TTL: Final = 86400.0
SESSION_TTL: Final = 3600.0  # dotsd.dtls.context.DtlsConfig.session_timeout
_MAX_RTT: Final = 60.0  # anything above is not an RTT worth starting from


class PathMemory:
    """Per server ("HOST:PORT"), in ``path``: its RTT and its Happy Eyeballs winner."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = JsonStateFile(path, lambda: {"servers": {}},
                                   lambda d: isinstance(d.get("servers"), dict))

    def restore(self, server: str, estimator: RttEstimator, dialer: ServerDialer, *,
                wall: float, mono: float) -> None:
        """Seed ``estimator`` and ``dialer``'s cache with what is still fresh. A damaged or
        unreadable file is logged and ignored: it only ever saves time."""
        try:
            entry = self._file.read()["servers"].get(server)
        except StateFileError as exc:
            log.warning("path memory ignored: %s", exc)
            return
        if not isinstance(entry, dict):
            return
        rtt, at = _number(entry.get("srtt")), _number(entry.get("srtt_at"))
        if (rtt is not None and at is not None and 0 < rtt <= _MAX_RTT
                and 0 <= wall - at < RTT_TTL and not estimator.has_estimate):
            estimator.sample(rtt)
        cand, at = _candidate(entry.get("winner")), _number(entry.get("winner_at"))
        if cand is not None and at is not None and 0 <= wall - at < CACHE_TIME:
            dialer.cache.remember(_cache_key(dialer), cand, mono - (wall - at))  # loop clock
        sessions = entry.get("sessions")
        for item in sessions if isinstance(sessions, list) else ():
            if not isinstance(item, dict):
                continue
            cand, at = _candidate(item), _number(item.get("at"))
            if cand is None or at is None or not 0 <= wall - at < SESSION_TTL:
                continue
            der, credentials = _base64(item.get("der")), item.get("credentials")
            if der is not None and isinstance(credentials, str):
                dialer.resume_with(cand, der, credentials)

    def save(self, server: str, estimator: RttEstimator, dialer: ServerDialer, *,
             wall: float, mono: float) -> None:
        """Record the estimator's RTT and the dialer's winner (if any) for ``server``."""
        cached = dialer.cache.entries().get(_cache_key(dialer))
        try:
            with self._file.locked(replace_damaged=True) as data:  # only a cache
                entry = data["servers"].setdefault(server, {})
                if not isinstance(entry, dict):
                    entry = data["servers"][server] = {}
                if estimator.srtt is not None:
                    entry["srtt"], entry["srtt_at"] = round(estimator.srtt, 6), wall
                if cached is not None:
                    cand, at = cached
                    entry["winner"] = {"transport": cand.transport, "address": cand.address,
                                       "port": cand.port}
                    entry["winner_at"] = wall - (mono - at)  # wall clock
                sessions = _merge_sessions(entry.pop("sessions", None), dialer, wall)
                if sessions:
                    entry["sessions"] = sessions
        except StateFileError as exc:
            log.warning("path memory not saved: %s", exc)


def _cache_key(dialer: ServerDialer) -> str:
    return f"{dialer.host}:{dialer.port}"  # the provisioned server, as ServerDialer.dial keys it


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _merge_sessions(stored: Any, dialer: ServerDialer, wall: float) -> list[dict[str, Any]]:
    """The stored sessions still fresh, updated with the dialer's: a session seen before
    keeps its age (a resumed session does not live longer), a new one is dated now."""
    kept: dict[Candidate, dict[str, Any]] = {}
    for item in stored if isinstance(stored, list) else ():
        where = _candidate(item)
        at = _number(item.get("at")) if where is not None else None
        if where is not None and at is not None and 0 <= wall - at < SESSION_TTL:
            kept[where] = item
    credentials = dialer.credentials
    for where, session in dialer.sessions.items():
        der = session_to_der(session)
        if der is None or credentials is None:
            continue
        text = base64.b64encode(der).decode("ascii")
        if where in kept and kept[where].get("der") == text:
            continue
        kept[where] = {"transport": where.transport, "address": where.address,
                       "port": where.port, "at": wall, "der": text,
                       "credentials": credentials}
    return list(kept.values())


def _base64(value: Any) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def _candidate(value: Any) -> Candidate | None:
    if not isinstance(value, dict):
        return None
    transport, address, port = value.get("transport"), value.get("address"), value.get("port")
    if (transport not in TRANSPORTS or not isinstance(address, str)
            or not isinstance(port, int) or not 0 < port < 65536):
        return None
    return Candidate(transport, address, port)
