"""The default mitigator, ``log``: mitigates nothing, says what it would do.

Each order is one log line of ``key=value`` fields (logger ``dotsd.mitigate.log``)::

    mitigation action=apply cuid=dz6pHjaADkaFTbjr0JGBpw mid=123 prefixes=2001:db8:6401::1/128
        ports=443 protocols=6 lifetime=3600 expires_at=1700000000

(one line in the log). Values other than plain tokens are JSON-quoted, so a client-chosen
'cuid' or 'target-uri' cannot forge a line. The same fields are attached to the record as
``record.dots`` (a dict) for structured handlers.

The active set (what would be mitigated) is kept in memory: :attr:`LogMitigator.active`. After
each apply, the plugin reports 'attack-successfully-mitigated' (RFC 9132 §4.4.2 status 2) once
``feedback_delay`` seconds have passed, so that a demo shows the status move from
'attack-mitigation-in-progress' and the client's observers get a notification
(RFC 9132 §4.4.2.1). It reports no counters: nothing is dropped.

Configuration (all optional):

* ``feedback_delay`` — seconds (float ≥ 0, default 1.0) before the feedback; ``null`` turns
  the feedback off (the mitigation then stays 'attack-mitigation-in-progress');
* ``level`` — the log level of order lines, a name such as ``"INFO"`` (default) or ``"DEBUG"``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Final

from dotsd.mitigate.base import (
    Feedback,
    FeedbackSink,
    FeedbackStatus,
    MitigationOrder,
    Mitigator,
    MitigatorConfigError,
)

__all__ = ["DEFAULT_FEEDBACK_DELAY", "LogMitigator", "format_fields"]

DEFAULT_FEEDBACK_DELAY: Final = 1.0

_logger = logging.getLogger("dotsd.mitigate.log")
_PLAIN: Final = re.compile(r"[A-Za-z0-9._:/,+@%~\[\]-]+")
_KEYS: Final = frozenset({"feedback_delay", "level"})


def format_fields(fields: Mapping[str, str]) -> str:
    """``key=value`` pairs separated by spaces; a value that is not a plain token (empty, or
    with spaces, quotes, '=', control characters, …) is JSON-quoted (RFC 8259 §7 escapes)."""
    return " ".join(
        f"{k}={v}" if _PLAIN.fullmatch(v) else f"{k}={json.dumps(v)}" for k, v in fields.items()
    )


class LogMitigator(Mitigator):
    """Logs orders, tracks the active set, reports 'successfully mitigated' after a delay."""

    name: ClassVar[str] = "log"

    def __init__(
        self,
        config: Mapping[str, Any] | None = None,
        report: FeedbackSink | None = None,
        *,
        logger: logging.Logger = _logger,
    ) -> None:
        super().__init__(config, report)
        unknown = set(self.config) - _KEYS
        if unknown:
            raise MitigatorConfigError(
                f"log mitigator: unknown option(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sorted(_KEYS))}"
            )
        self.feedback_delay = _delay(self.config.get("feedback_delay", DEFAULT_FEEDBACK_DELAY))
        self.level = _level(self.config.get("level", "INFO"))
        self.logger = logger
        self._active: dict[tuple[str, int], MitigationOrder] = {}
        self._pending: dict[tuple[str, int], asyncio.Task[None]] = {}

    @property
    def active(self) -> Mapping[tuple[str, int], MitigationOrder]:
        """What is being "mitigated", by ``(cuid, mid)``: the last APPLY of each (read-only)."""
        return MappingProxyType(self._active)

    async def stop(self) -> None:
        for task in self._pending.values():
            task.cancel()
        await asyncio.gather(*self._pending.values(), return_exceptions=True)
        self._pending.clear()

    async def apply(self, order: MitigationOrder) -> None:
        self._log(order)
        self._active[order.key] = order
        if self.feedback_delay is None:
            return
        previous = self._pending.pop(order.key, None)
        if previous is not None:  # a re-apply (refresh): one feedback for the latest order
            previous.cancel()
        self._pending[order.key] = asyncio.create_task(
            self._feedback_later(order), name=f"log-mitigator feedback {order.key}"
        )

    async def withdraw(self, order: MitigationOrder) -> None:
        self._log(order)
        self._active.pop(order.key, None)  # unknown key: nothing to do (base.Mitigator)
        task = self._pending.pop(order.key, None)
        if task is not None:
            task.cancel()

    def _log(self, order: MitigationOrder) -> None:
        fields = order.fields()
        self.logger.log(self.level, "mitigation %s", format_fields(fields), extra={"dots": fields})

    async def _feedback_later(self, order: MitigationOrder) -> None:
        try:
            await asyncio.sleep(self.feedback_delay or 0.0)
            if self._active.get(order.key) is not order:
                return  # withdrawn or replaced meanwhile
            self.report(
                Feedback(
                    order.cuid,
                    order.mid,
                    FeedbackStatus.SUCCESSFULLY_MITIGATED,
                    detail="log mitigator: demo feedback",
                )
            )
        except Exception:  # the server's sink failed: log it, this task has no awaiter
            self.logger.exception("log mitigator: feedback for %r failed", order.key)
        finally:
            if self._pending.get(order.key) is asyncio.current_task():
                del self._pending[order.key]


def _delay(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise MitigatorConfigError(
            f"log mitigator: feedback_delay must be a number >= 0 or null, not {value!r}"
        )
    return float(value)


def _level(value: object) -> int:
    if isinstance(value, str):
        level = logging.getLevelNamesMapping().get(value.upper())
        if level is not None:
            return level
    raise MitigatorConfigError(f"log mitigator: unknown log level {value!r}")
