"""The link between a signal server and a mitigator plugin.

The server tells its listeners of every change of a mitigation (``SignalServer.add_listener``);
the bridge turns
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
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from dotsd.mitigate.base import (
    Feedback,
    FeedbackSink,
    MitigationOrder,
    Mitigator,
    MitigatorAction,
    Targets,
    action_for,
    execute,
)
from dotsd.signal.lifecycle import RUNNING, MitigationEvent
from dotsd.signal.mitigation import Change, Reason
from dotsd.signal.records import Counters, Mitigation

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


MitigatorFactory = Callable[[FeedbackSink], Mitigator]
"""Makes the mitigator, given the sink its feedback goes to (e.g. ``lambda report:
registry.create(name, options, report=report)``)."""


class MitigatorBridge:
    """Feeds ``server``'s changes to the mitigator that ``create`` makes, and the mitigator's
    feedback back to the server (module docstring); ``timeout`` bounds each order."""

    def __init__(self, create: MitigatorFactory, server: SignalServer, *,
                 timeout: float | None = 30.0) -> None:
        self.timeout = timeout
        self.server = server
        self._feedback_listeners: list[FeedbackSink] = []
        self._chains: dict[tuple[str, int], asyncio.Task[bool]] = {}
        self._tasks: set[asyncio.Task[bool]] = set()
        self.failures = 0
        self.mitigator = create(self.feedback)
        server.add_listener(self.on_change)

    def add_feedback_listener(self, listener: FeedbackSink) -> None:
        """Also tell ``listener`` of the mitigator's feedback (a progress display)."""
        self._feedback_listeners.append(listener)

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
        for listener in list(self._feedback_listeners):
            try:
                listener(feedback)
            except Exception:
                log.exception("feedback listener failed")
        counters = (None if feedback.counters is None
                    else Counters(**dataclasses.asdict(feedback.counters)))
        if feedback.status is not None:
            # A late report about a mitigation that is gone or has moved on is ignored by
            # the table (the mitigator runs asynchronously).
            self.server.report(feedback.cuid, feedback.mid,
                               MitigationEvent(feedback.status.signal_event), counters=counters)
        elif counters is not None:
            self.server.report_counters(feedback.cuid, feedback.mid, counters)
        if feedback.detail:
            log.info("mitigator %r on %s/%d: %s", self.mitigator.name, feedback.cuid,
                     feedback.mid, feedback.detail)

