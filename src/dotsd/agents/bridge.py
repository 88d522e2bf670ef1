"""The link between a signal server and a mitigator plugin.

The server reports every change of a mitigation (``SignalServer.on_change``); the bridge turns
the ones that start or stop mitigating into :class:`MitigationOrder` s (``action_for``: statuses
1-5 are "active", RFC 9132 §4.4.2 Table 3) and runs them on the plugin in background tasks, so
that a slow or failing backend never delays a signal-channel answer. The plugin's
:class:`Feedback` goes back to the server as a mitigator event (RFC 9132 §4.4.1.1), which the
server persists and notifies to the client's observers (§4.4.2.1).

Orders of one mitigation run in the order they were given (one queue per ``(cuid, mid)``):
an APPLY is never overtaken by the WITHDRAW that follows it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from dotsd.mitigate.base import (
    Feedback,
    MitigationOrder,
    Mitigator,
    MitigatorAction,
    Targets,
    action_for,
    execute,
)
from dotsd.signal.mitigation import (
    RUNNING,
    Change,
    Counters,
    Mitigation,
    MitigationEvent,
    Reason,
    Status,
)

if TYPE_CHECKING:
    from dotsd.agents.server import SignalServer

__all__ = ["MitigatorBridge", "order_for"]

log = logging.getLogger("dotsd.mitigate.bridge")


def _order(action: MitigatorAction, m: Mitigation) -> MitigationOrder:
    return MitigationOrder(action, m.cuid, m.mid, Targets.from_json(m.scope.to_json()),
                           lifetime=m.lifetime, expires_at=m.expires_at, cdid=m.cdid)


def order_for(change: Change) -> MitigationOrder | None:
    """The order ``change`` calls for, or None (RFC 9132 §4.4.2: active = statuses 1-5)."""
    m = change.mitigation
    action = action_for(
        was_active=change.before in RUNNING,
        is_active=m.is_active and not change.removed,
        expired=change.reason is Reason.EXPIRED,
    )
    return None if action is None else _order(action, m)


class MitigatorBridge:
    """Feeds ``server``'s changes to ``mitigator`` and its feedback back (module docstring).

    Create the mitigator with ``report=bridge.feedback``; then :meth:`attach` the server.
    """

    def __init__(self, mitigator: Mitigator, *, timeout: float | None = 30.0) -> None:
        self.mitigator = mitigator
        self.timeout = timeout
        self.server: SignalServer | None = None
        self._chains: dict[tuple[str, int], asyncio.Task[bool]] = {}
        self._tasks: set[asyncio.Task[bool]] = set()
        self.failures = 0

    def attach(self, server: SignalServer) -> None:
        self.server = server
        server.on_change = self.on_change

    # -- server → mitigator -------------------------------------------------------------------

    def on_change(self, change: Change) -> None:
        order = order_for(change)
        if order is not None:
            self.submit(order)

    def submit(self, order: MitigationOrder) -> None:
        """Run ``order`` after the earlier orders of the same mitigation."""
        previous = self._chains.get(order.key)
        task = asyncio.get_running_loop().create_task(self._run(order, previous))
        self._chains[order.key] = task
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._done, order.key))

    def _done(self, key: tuple[str, int], task: asyncio.Task[bool]) -> None:
        self._tasks.discard(task)
        if self._chains.get(key) is task:
            del self._chains[key]

    async def _run(self, order: MitigationOrder, previous: asyncio.Task[bool] | None) -> bool:
        if previous is not None:
            await asyncio.wait({previous})
        ok = await execute(self.mitigator, order, timeout=self.timeout)
        if not ok:
            self.failures += 1
        return ok

    def resume(self, mitigations: Iterable[Mitigation]) -> int:
        """After a restart: apply again every active mitigation (the plugin treats an APPLY
        of a known one as an update). Returns how many were submitted."""
        count = 0
        for m in mitigations:
            if m.is_active:
                self.submit(_order(MitigatorAction.APPLY, m))
                count += 1
        return count

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait (bounded) for the orders in flight, e.g. before shutting down."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    # -- mitigator → server -------------------------------------------------------------------

    def feedback(self, feedback: Feedback) -> None:
        """The mitigator's report sink: a status and/or counters for one mitigation."""
        server = self.server
        if server is None:
            log.warning("feedback before the server is attached: %s", feedback)
            return
        counters = (None if feedback.counters is None
                    else Counters(**dataclasses.asdict(feedback.counters)))
        if feedback.status is None and counters is None:
            return
        event = (MitigationEvent(feedback.status.signal_event) if feedback.status is not None
                 else None)
        try:
            if event is None:
                # counters only: report them with the current status's event
                m = next((r for r in server.table
                          if r.key == (feedback.cuid, feedback.mid)), None)
                if m is None:
                    return
                event = _event_of(m.status)
                if event is None:
                    return
            server.report(feedback.cuid, feedback.mid, event, counters=counters)
        except (KeyError, ValueError) as exc:  # gone meanwhile, or not a mitigator event
            log.info("feedback for %s/%d ignored: %s", feedback.cuid, feedback.mid, exc)
        if feedback.detail:
            log.info("mitigator %r on %s/%d: %s", self.mitigator.name, feedback.cuid,
                     feedback.mid, feedback.detail)


def _event_of(status: Status) -> MitigationEvent | None:
    return {
        Status.ATTACK_MITIGATION_IN_PROGRESS: MitigationEvent.ATTACK_RESUMED,
        Status.ATTACK_SUCCESSFULLY_MITIGATED: MitigationEvent.MITIGATING,
        Status.ATTACK_STOPPED: MitigationEvent.ATTACK_STOPPED,
        Status.ATTACK_EXCEEDED_CAPABILITY: MitigationEvent.EXCEEDED,
    }.get(status)
