"""The mitigator plugin interface: what the DOTS server hands a mitigator, and what comes back.

RFC 9132 §4.4.1.1: the DOTS server selects a mitigator and relays "the feedback of the
thus-selected mitigator" to the client. This module is that boundary, on plain values that do
not depend on the signal layer's records (a plugin imports only this module):

* the server turns each change of a mitigation (``dotsd.signal.mitigation.Change``) into a
  :class:`MitigationOrder` — :func:`action_for` says which, if any;
* it runs the order with :func:`execute`, never with ``apply`` / ``withdraw`` directly, so that
  a failing plugin cannot crash the server (see :class:`MitigatorError`);
* the plugin reports :class:`Feedback` (a status and/or counters, RFC 9132 §4.4.2) through the
  ``report`` callback it was given at construction; the server applies it with
  ``MitigationTable.mitigator_report(cuid, mid,
  MitigationEvent(feedback.status.signal_event), now, counters=...)`` and notifies the
  client's observers (RFC 9132 §4.4.2.1).

Failure path (the documented contract, implemented by :func:`execute`):

* ``apply`` raises (a :class:`MitigatorError`, any other exception — a plugin bug — or it takes
  longer than the timeout): the server logs it and reports
  :attr:`FeedbackStatus.EXCEEDED_CAPABILITY` for that mitigation. RFC 9132 §4.4.2 Table 3
  status 4, "Attack has exceeded the mitigation provider capability", is the only status a
  mitigator may report that tells the client its traffic is *not* being handled; status 3,
  'attack-stopped', would be false ("Attack has stopped and the DOTS client can withdraw the
  mitigation request") and invite the client to withdraw during an attack. The client may then
  ask another DOTS server or try again (RFC 9132 §4.4.1.3 'retry').
* ``withdraw`` raises: the server logs it (level ERROR: rules may be left in the network) and
  reports nothing — the mitigation is leaving the table anyway (status 6, RFC 9132 §4.4.4), so
  there is no status left to give the client.
* ``start`` raises: dotsd refuses to start (a configuration error, shown to the operator before
  any client is served). ``stop`` failures are logged.
"""

from __future__ import annotations

import abc
import asyncio
import ipaddress
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, Final

from dotsd.errors import LocalError
from dotsd.signal.policy import INDEFINITE  # an order's lifetime -1 (RFC 9132 §4.4.1.1)

__all__ = [
    "DEFAULT_TIMEOUT",
    "INDEFINITE",
    "DropCounters",
    "Feedback",
    "FeedbackSink",
    "FeedbackStatus",
    "IPNetwork",
    "MitigationOrder",
    "Mitigator",
    "MitigatorAction",
    "MitigatorConfigError",
    "MitigatorError",
    "Targets",
    "action_for",
    "execute",
]

_log = logging.getLogger("dotsd.mitigate")

DEFAULT_TIMEOUT: Final = 30.0  # seconds an apply / withdraw may take before it counts as failed

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# ---------------------------------------------------------------------------------------------
# Errors


class MitigatorError(LocalError):
    """A mitigator could not carry out an order (router unreachable, rule rejected, …).

    Never fatal to the server: :func:`execute` logs it and, for an apply, reports
    :attr:`FeedbackStatus.EXCEEDED_CAPABILITY` (RFC 9132 §4.4.2 status 4; module docstring).
    """


class MitigatorConfigError(MitigatorError, ValueError):
    """A plugin's configuration is invalid (raised at construction, before serving)."""


# ---------------------------------------------------------------------------------------------
# Orders (server → mitigator)


class MitigatorAction(Enum):
    """What an order asks of the mitigator."""

    APPLY = "apply"  # start (or update: idempotent per (cuid, mid)) mitigating
    WITHDRAW = "withdraw"  # stop: terminated (RFC 9132 §4.4.4), overridden or preempted
    EXPIRE = "expire"  # stop: lifetime over (RFC 9132 §4.4.1.1)

    @property
    def stops(self) -> bool:
        return self is not MitigatorAction.APPLY


def action_for(*, was_active: bool, is_active: bool,
               expired: bool = False) -> MitigatorAction | None:
    """The order a change of one mitigation calls for, or None.

    ``was_active`` / ``is_active`` are ``Mitigation.is_active`` before and after the change
    (statuses 1-5: RFC 9132 §4.4.4 keeps a client-withdrawn mitigation *active but
    terminating*, status 5, so the mitigator stops at 5 → 6, not at the DELETE).
    ``expired``: the change is a lifetime expiry (``Reason.EXPIRED``, RFC 9132 §4.4.1.1).
    A refresh keeps the mitigation active: None here; the server may still send APPLY again to
    pass a new expiry, which a plugin treats as an update.
    """
    if is_active and not was_active:
        return MitigatorAction.APPLY
    if was_active and not is_active:
        return MitigatorAction.EXPIRE if expired else MitigatorAction.WITHDRAW
    return None


def _networks(values: Iterable[str | IPNetwork]) -> tuple[IPNetwork, ...]:
    return tuple(
        v
        if isinstance(v, ipaddress.IPv4Network | ipaddress.IPv6Network)
        # 'target-prefix' is ip-prefix (RFC 9132 §4.4.1.1): host bits are not significant.
        else ipaddress.ip_network(v, strict=False)
        for v in values
    )


@dataclass(frozen=True, slots=True)
class Targets:
    """What to mitigate (RFC 9132 §4.4.1.1 Figure 6). Empty port ranges / protocols mean all.

    ``port_ranges`` are inclusive ``(lower, upper)`` pairs ('target-port-range' with a missing
    'upper-port' is the single port ``(lower, lower)``). Aliases (RFC 8783 §6.1) are passed by
    name: a plugin that cannot resolve them raises :class:`MitigatorError`.
    """

    prefixes: tuple[IPNetwork, ...] = ()
    port_ranges: tuple[tuple[int, int], ...] = ()
    protocols: tuple[int, ...] = ()  # IANA protocol numbers (6 TCP, 17 UDP, …)
    fqdns: tuple[str, ...] = ()
    uris: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, scope: Mapping[str, Any]) -> Targets:
        """From a 'scope' entry in its RFC 7951 JSON shape (``Scope.to_json()`` in the signal
        layer, RFC 9132 Figure 6 names)."""
        ranges = []
        for r in scope.get("target-port-range", ()):
            lower = int(r["lower-port"])
            upper = r.get("upper-port")
            ranges.append((lower, lower if upper is None else int(upper)))
        return cls(
            prefixes=_networks(scope.get("target-prefix", ())),
            port_ranges=tuple(ranges),
            protocols=tuple(int(p) for p in scope.get("target-protocol", ())),
            fqdns=tuple(scope.get("target-fqdn", ())),
            uris=tuple(scope.get("target-uri", ())),
            aliases=tuple(scope.get("alias-name", ())),
        )

    def fields(self) -> dict[str, str]:
        """Non-empty targets as short text fields (for logs and displays)."""
        out: dict[str, str] = {}
        if self.prefixes:
            out["prefixes"] = ",".join(str(p) for p in self.prefixes)
        if self.port_ranges:
            out["ports"] = ",".join(
                str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in self.port_ranges
            )
        if self.protocols:
            out["protocols"] = ",".join(str(p) for p in self.protocols)
        if self.fqdns:
            out["fqdns"] = ",".join(self.fqdns)
        if self.uris:
            out["uris"] = ",".join(self.uris)
        if self.aliases:
            out["aliases"] = ",".join(self.aliases)
        return out


@dataclass(frozen=True, slots=True)
class MitigationOrder:
    """One thing for the mitigator to do about the mitigation ``(cuid, mid)``.

    ``lifetime`` is the granted lifetime in seconds (:data:`INDEFINITE` = -1), ``expires_at``
    its end in wall-clock epoch seconds (None = indefinite). The server sends EXPIRE itself when
    the lifetime is over (RFC 9132 §4.4.1.1); the expiry is given so that a plugin whose
    backend can age rules out by itself (e.g. a timeout on an nftables set element) may do so
    as a safety net should the server die. A WITHDRAW / EXPIRE carries the targets of the
    mitigation it ends, so that a plugin can undo it without state (e.g. after a restart).
    """

    action: MitigatorAction
    cuid: str
    mid: int
    targets: Targets
    lifetime: int = INDEFINITE
    expires_at: float | None = None
    cdid: str | None = None  # RFC 9132 §4.4.1.1, set by a server-domain DOTS gateway

    @property
    def key(self) -> tuple[str, int]:
        return (self.cuid, self.mid)

    def fields(self) -> dict[str, str]:
        """The order as ordered text fields: action, cuid, mid, [cdid], targets, lifetime."""
        out = {"action": self.action.value, "cuid": self.cuid, "mid": str(self.mid)}
        if self.cdid is not None:
            out["cdid"] = self.cdid
        out.update(self.targets.fields())
        out["lifetime"] = str(self.lifetime)
        if self.expires_at is not None:
            out["expires_at"] = str(int(self.expires_at))
        return out


# ---------------------------------------------------------------------------------------------
# Feedback (mitigator → server)


class FeedbackStatus(Enum):
    """The statuses a mitigator may report (RFC 9132 §4.4.2 Table 3, statuses 1-4), valued by
    their YANG labels (``Status.from_label`` in the signal layer reads them)."""

    IN_PROGRESS = "attack-mitigation-in-progress"  # 1: attack traffic again
    SUCCESSFULLY_MITIGATED = "attack-successfully-mitigated"  # 2: attack traffic dropped
    STOPPED = "attack-stopped"  # 3: no more attack traffic; the client can withdraw
    EXCEEDED_CAPABILITY = "attack-exceeded-capability"  # 4: beyond what the mitigator can do

    @property
    def signal_event(self) -> str:
        """The value of the ``dotsd.signal.lifecycle.MitigationEvent`` that moves a mitigation
        to this status (its lifecycle table, RFC 9132 §4.4.2 Table 3)."""
        return _SIGNAL_EVENTS[self]


_SIGNAL_EVENTS: Final = {
    FeedbackStatus.IN_PROGRESS: "attack-resumed",
    FeedbackStatus.SUCCESSFULLY_MITIGATED: "mitigating",
    FeedbackStatus.STOPPED: "attack-stopped",
    FeedbackStatus.EXCEEDED_CAPABILITY: "exceeded",
}


@dataclass(frozen=True, slots=True)
class DropCounters:
    """RFC 9132 §4.4.2 'bytes-dropped', 'bps-dropped', 'pkts-dropped', 'pps-dropped': totals
    since the mitigation started and current rates. Same field names as the signal layer's
    ``Counters``, so ``Counters(**dataclasses.asdict(c))`` converts."""

    bytes_dropped: int = 0
    bps_dropped: int = 0
    pkts_dropped: int = 0
    pps_dropped: int = 0


@dataclass(frozen=True, slots=True)
class Feedback:
    """A report about one mitigation: a status change, counters, or both."""

    cuid: str
    mid: int
    status: FeedbackStatus | None = None
    counters: DropCounters | None = None
    detail: str = field(default="", compare=False)  # for the server's log, not the client

    @property
    def key(self) -> tuple[str, int]:
        return (self.cuid, self.mid)


FeedbackSink = Callable[[Feedback], None]
"""Receives feedback; the server's sink is synchronous and must not block (an
``asyncio.Queue.put_nowait`` works too)."""


def _discard(feedback: Feedback) -> None:
    _log.debug("no feedback sink: dropped %s", feedback)


# ---------------------------------------------------------------------------------------------
# The plugin


class Mitigator(abc.ABC):
    """Base class of mitigator plugins.

    Constructed as ``Plugin(config, report)`` (what :func:`dotsd.mitigate.registry.create`
    does): ``config`` is the plugin's section of the dotsd configuration, validated in
    ``__init__`` (raise :class:`MitigatorConfigError`); ``report`` receives :class:`Feedback`
    (call :meth:`report`). The server awaits :meth:`start` before serving and :meth:`stop` at
    shutdown, and calls :meth:`apply` / :meth:`withdraw` one order at a time per ``(cuid,
    mid)``, through :func:`execute`.

    ``apply`` must be idempotent per ``(cuid, mid)`` (a second APPLY updates, e.g. after a
    refresh or a server restart re-applying what the store holds) and ``withdraw`` of an
    unknown ``(cuid, mid)`` must succeed: the server may lose track of what the plugin did, and
    the plugin must converge rather than fail.
    """

    name: ClassVar[str] = ""  # the registry name, e.g. "log"

    def __init__(
        self, config: Mapping[str, Any] | None = None, report: FeedbackSink | None = None
    ) -> None:
        self.config: Mapping[str, Any] = {} if config is None else config
        self._sink: FeedbackSink = _discard if report is None else report

    async def start(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Connect to the backend (BGP speaker, nftables, …)."""

    async def stop(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release the backend. Whether installed rules stay is the plugin's documented
        choice (dotsd re-applies active mitigations from its store on start)."""

    @abc.abstractmethod
    async def apply(self, order: MitigationOrder) -> None:
        """Start or update mitigating ``order.targets``; raise :class:`MitigatorError`."""

    @abc.abstractmethod
    async def withdraw(self, order: MitigationOrder) -> None:
        """Stop mitigating ``order.key`` (``order.action`` is WITHDRAW or EXPIRE)."""

    def report(self, feedback: Feedback) -> None:
        """Hand feedback to the server (RFC 9132 §4.4.1.1 "the feedback of the ...
        mitigator")."""
        self._sink(feedback)


# ---------------------------------------------------------------------------------------------
# Running an order: the failure path


async def execute(
    mitigator: Mitigator,
    order: MitigationOrder,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    log: logging.Logger = _log,
) -> bool:
    """Run ``order`` on ``mitigator``; True if it succeeded. Never raises, apart from the
    cancellation of the calling task: a failure follows the module's failure path (logged;
    an APPLY that fails reports :attr:`FeedbackStatus.EXCEEDED_CAPABILITY`)."""
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            if order.action is MitigatorAction.APPLY:
                await mitigator.apply(order)
            else:
                await mitigator.withdraw(order)
    except MitigatorError as exc:
        detail = str(exc) or type(exc).__name__
        log.error(
            "mitigator %r: %s failed (cuid=%r mid=%d): %s",
            mitigator.name,
            order.action.value,
            *order.key,
            detail,
        )
    except Exception as exc:  # a plugin bug or a hang must not crash the server (docstring)
        if isinstance(exc, TimeoutError) and deadline.expired():
            detail = f"{order.action.value} timed out after {timeout} s"
            log.error("mitigator %r: %s (cuid=%r mid=%d)", mitigator.name, detail, *order.key)
        else:
            detail = f"{type(exc).__name__}: {exc}"
            log.exception(
                "mitigator %r: %s raised (cuid=%r mid=%d)",
                mitigator.name,
                order.action.value,
                *order.key,
            )
    else:
        return True
    if order.action is MitigatorAction.APPLY:
        feedback = Feedback(
            order.cuid, order.mid, FeedbackStatus.EXCEEDED_CAPABILITY, detail=detail
        )
        try:
            mitigator.report(feedback)
        except Exception:
            log.exception("feedback sink failed for %s", feedback)
    return False
