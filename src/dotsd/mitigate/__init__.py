"""Mitigators: the plugins a DOTS server hands its mitigations to (RFC 9132 §4.4.1.1).

* :mod:`dotsd.mitigate.base` — the interface: :class:`Mitigator`, :class:`MitigationOrder`,
  :class:`Feedback`, and :func:`execute`, which runs an order so that a failing plugin never
  crashes the server (it reports 'attack-exceeded-capability', RFC 9132 §4.4.2).
* :mod:`dotsd.mitigate.log` — ``log``, the default: logs orders, keeps the active set.
* :mod:`dotsd.mitigate.registry` — plugins by name, and the ``dotsd.mitigators`` entry points.

    mitigator = create("log", {"feedback_delay": 1.0}, report=on_feedback)
    await mitigator.start()
    await execute(mitigator, MitigationOrder(MitigatorAction.APPLY, cuid, mid, targets, lifetime))
"""

from dotsd.mitigate.base import (
    DEFAULT_TIMEOUT,
    INDEFINITE,
    DropCounters,
    Feedback,
    FeedbackSink,
    FeedbackStatus,
    MitigationOrder,
    Mitigator,
    MitigatorAction,
    MitigatorConfigError,
    MitigatorError,
    Targets,
    action_for,
    execute,
)
from dotsd.mitigate.registry import (
    DEFAULT,
    GROUP,
    PluginLoadError,
    UnknownMitigatorError,
    available,
    create,
)

__all__ = [
    "DEFAULT",
    "DEFAULT_TIMEOUT",
    "GROUP",
    "INDEFINITE",
    "DropCounters",
    "Feedback",
    "FeedbackSink",
    "FeedbackStatus",
    "MitigationOrder",
    "Mitigator",
    "MitigatorAction",
    "MitigatorConfigError",
    "MitigatorError",
    "PluginLoadError",
    "Targets",
    "UnknownMitigatorError",
    "action_for",
    "available",
    "create",
    "execute",
]
