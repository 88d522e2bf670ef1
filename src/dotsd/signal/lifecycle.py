"""The lifecycle of a DOTS mitigation (RFC 9132 §4.4.2 Table 3) as an explicit table.

The vocabulary of the signal channel's status nodes (iana-dots-signal-channel, RFC 9132 §5.2):
:class:`Status`, :class:`AttackStatus`, :class:`ConflictStatus`, :class:`ConflictCause`, and
the events that move a mitigation (:class:`MitigationEvent`).

The status lifecycle is the table :data:`TRANSITIONS`: one screen lists every status and every
event that moves it (h11 style); :func:`transition` raises :class:`InvalidTransition` for a
pair it does not list. Statuses 1-4 are an active mitigation (:data:`ACTIVE`), 5 is active but
terminating (after the client's DELETE, RFC 9132 §4.4.4; with 1-4, :data:`RUNNING`), 7
withdrawn by the server and 8 a preconfigured request waiting for a signal loss (both
inactive); 6 (terminated) is final: the record leaves the table
(:class:`dotsd.signal.mitigation.MitigationTable`). Plain data, sans-IO.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum, IntEnum
from typing import Final, Self

from dotsd.errors import LocalError

__all__ = [
    "ACTIVE",
    "DEFAULT_ABT_MAX",
    "DEFAULT_ACTIVE_BUT_TERMINATING",
    "PRECONFIGURED_REPEATS",
    "RUNNING",
    "TRANSITIONS",
    "AttackStatus",
    "ConflictCause",
    "ConflictStatus",
    "InvalidTransition",
    "MitigationEvent",
    "Status",
    "transition",
]

DEFAULT_ACTIVE_BUT_TERMINATING: Final = 120.0  # RFC 9132 §4.4.4 "SHOULD be ... 120 seconds"
DEFAULT_ABT_MAX: Final = 300.0  # RFC 9132 §4.4.4 "up to a maximum of 300 seconds"
PRECONFIGURED_REPEATS: Final = 4  # RFC 9132 §4.4.2 Table 3 "transmitted four times"


# ---------------------------------------------------------------------------------------------
# Vocabulary (iana-dots-signal-channel, RFC 9132 §5.2; labels as in RFC 9132 §10.6.2-10.6.5)


class _Labelled(IntEnum):
    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")

    @classmethod
    def from_label(cls, label: str) -> Self:
        return cls[label.upper().replace("-", "_")]


class Status(_Labelled):
    """RFC 9132 §4.4.2 Table 3."""

    ATTACK_MITIGATION_IN_PROGRESS = 1
    ATTACK_SUCCESSFULLY_MITIGATED = 2
    ATTACK_STOPPED = 3
    ATTACK_EXCEEDED_CAPABILITY = 4
    DOTS_CLIENT_WITHDRAWN_MITIGATION = 5  # active but terminating (RFC 9132 §4.4.4)
    ATTACK_MITIGATION_TERMINATED = 6
    ATTACK_MITIGATION_WITHDRAWN = 7  # by the DOTS server
    ATTACK_MITIGATION_SIGNAL_LOSS = 8  # preconfigured, triggered only on signal loss


class AttackStatus(_Labelled):
    """RFC 9132 §4.4.3 Table 4."""

    UNDER_ATTACK = 1
    ATTACK_SUCCESSFULLY_MITIGATED = 2


class ConflictStatus(_Labelled):
    """RFC 9132 §4.4.1.3 'conflict-status'."""

    REQUEST_INACTIVE_OTHER_ACTIVE = 1
    REQUEST_ACTIVE = 2
    ALL_REQUESTS_INACTIVE = 3


class ConflictCause(_Labelled):
    """RFC 9132 §4.4.1.3 'conflict-cause' (1-3) and later registrations (extension points)."""

    OVERLAPPING_TARGETS = 1
    CONFLICT_WITH_ACCEPTLIST = 2
    CUID_COLLISION = 3
    REQUEST_REJECTED_LEGITIMATE_TRAFFIC = 4  # RFC 9066 §7.2 (Call Home)
    OVERLAPPING_PIPES = 5  # RFC 9244 §13.2 (telemetry)


ACTIVE: Final = frozenset(
    {
        Status.ATTACK_MITIGATION_IN_PROGRESS,
        Status.ATTACK_SUCCESSFULLY_MITIGATED,
        Status.ATTACK_STOPPED,
        Status.ATTACK_EXCEEDED_CAPABILITY,
    }
)
"""A mitigation running on behalf of a request the client maintains (status 1-4)."""

RUNNING: Final = ACTIVE | {Status.DOTS_CLIENT_WITHDRAWN_MITIGATION}
"""The mitigator should be mitigating (status 1-5): :data:`ACTIVE` and the active-but-
terminating period after a withdrawal (RFC 9132 §4.4.4)."""


# ---------------------------------------------------------------------------------------------
# Lifecycle table


class MitigationEvent(Enum):
    """What moves a mitigation's status."""

    MITIGATING = "mitigating"  # mitigator: attack traffic is being dropped
    EXCEEDED = "exceeded"  # mitigator: attack exceeds its capability
    ATTACK_STOPPED = "attack-stopped"  # mitigator: no more attack traffic
    ATTACK_RESUMED = "attack-resumed"  # mitigator: attack traffic again
    CLIENT_WITHDRAW = "client-withdraw"  # DELETE (RFC 9132 §4.4.4)
    TERMINATING_ELAPSED = "terminating-elapsed"  # active-but-terminating period over (§4.4.4)
    LIFETIME_EXPIRED = "lifetime-expired"  # RFC 9132 §4.4.1.1 lifetime
    OVERRIDDEN = "overridden"  # higher overlapping 'mid' (RFC 9132 §4.4.1.3)
    SERVER_WITHDRAW = "server-withdraw"  # RFC 9132 §4.4.1.3 / §4.4.2.1 (status 7)
    REARM = "rearm"  # preconfigured, after 3 or 7 sent four times (Table 3)
    SIGNAL_LOSS = "signal-loss"  # session lost: preconfigured request triggered (§4.4.1.3)


S, E = Status, MitigationEvent
TRANSITIONS: Final[Mapping[Status, Mapping[MitigationEvent, Status]]] = {
    S.ATTACK_MITIGATION_IN_PROGRESS: {
        E.MITIGATING: S.ATTACK_SUCCESSFULLY_MITIGATED,
        E.EXCEEDED: S.ATTACK_EXCEEDED_CAPABILITY,
        E.ATTACK_STOPPED: S.ATTACK_STOPPED,
        E.CLIENT_WITHDRAW: S.DOTS_CLIENT_WITHDRAWN_MITIGATION,
        E.SERVER_WITHDRAW: S.ATTACK_MITIGATION_WITHDRAWN,
        E.LIFETIME_EXPIRED: S.ATTACK_MITIGATION_TERMINATED,
        E.OVERRIDDEN: S.ATTACK_MITIGATION_TERMINATED,
    },
    S.ATTACK_SUCCESSFULLY_MITIGATED: {
        E.EXCEEDED: S.ATTACK_EXCEEDED_CAPABILITY,
        E.ATTACK_STOPPED: S.ATTACK_STOPPED,
        E.CLIENT_WITHDRAW: S.DOTS_CLIENT_WITHDRAWN_MITIGATION,
        E.SERVER_WITHDRAW: S.ATTACK_MITIGATION_WITHDRAWN,
        E.LIFETIME_EXPIRED: S.ATTACK_MITIGATION_TERMINATED,
        E.OVERRIDDEN: S.ATTACK_MITIGATION_TERMINATED,
    },
    S.ATTACK_STOPPED: {
        E.ATTACK_RESUMED: S.ATTACK_MITIGATION_IN_PROGRESS,
        E.MITIGATING: S.ATTACK_SUCCESSFULLY_MITIGATED,
        E.EXCEEDED: S.ATTACK_EXCEEDED_CAPABILITY,
        E.CLIENT_WITHDRAW: S.DOTS_CLIENT_WITHDRAWN_MITIGATION,
        E.SERVER_WITHDRAW: S.ATTACK_MITIGATION_WITHDRAWN,
        E.REARM: S.ATTACK_MITIGATION_SIGNAL_LOSS,  # preconfigured only
        E.LIFETIME_EXPIRED: S.ATTACK_MITIGATION_TERMINATED,
        E.OVERRIDDEN: S.ATTACK_MITIGATION_TERMINATED,
    },
    S.ATTACK_EXCEEDED_CAPABILITY: {
        E.MITIGATING: S.ATTACK_SUCCESSFULLY_MITIGATED,
        E.ATTACK_STOPPED: S.ATTACK_STOPPED,
        E.CLIENT_WITHDRAW: S.DOTS_CLIENT_WITHDRAWN_MITIGATION,
        E.SERVER_WITHDRAW: S.ATTACK_MITIGATION_WITHDRAWN,
        E.LIFETIME_EXPIRED: S.ATTACK_MITIGATION_TERMINATED,
        E.OVERRIDDEN: S.ATTACK_MITIGATION_TERMINATED,
    },
    S.DOTS_CLIENT_WITHDRAWN_MITIGATION: {
        E.TERMINATING_ELAPSED: S.ATTACK_MITIGATION_TERMINATED,
        E.LIFETIME_EXPIRED: S.ATTACK_MITIGATION_TERMINATED,
    },
    S.ATTACK_MITIGATION_TERMINATED: {},
    S.ATTACK_MITIGATION_WITHDRAWN: {
        E.CLIENT_WITHDRAW: S.ATTACK_MITIGATION_TERMINATED,  # nothing left to terminate
        E.REARM: S.ATTACK_MITIGATION_SIGNAL_LOSS,  # preconfigured only
        E.LIFETIME_EXPIRED: S.ATTACK_MITIGATION_TERMINATED,
        E.OVERRIDDEN: S.ATTACK_MITIGATION_TERMINATED,
    },
    S.ATTACK_MITIGATION_SIGNAL_LOSS: {
        E.SIGNAL_LOSS: S.ATTACK_MITIGATION_IN_PROGRESS,
        E.CLIENT_WITHDRAW: S.ATTACK_MITIGATION_TERMINATED,  # never active: no ABT period
        E.LIFETIME_EXPIRED: S.ATTACK_MITIGATION_TERMINATED,
        E.OVERRIDDEN: S.ATTACK_MITIGATION_TERMINATED,
    },
}
del S, E


class InvalidTransition(LocalError):
    """An event not allowed in the current status (a caller's mistake, not a peer's)."""

    def __init__(self, status: Status, event: MitigationEvent) -> None:
        self.status = status
        self.event = event
        super().__init__(f"event {event.value!r} not allowed in status {status.label!r}")


def transition(status: Status, event: MitigationEvent) -> Status:
    """The status after ``event`` per :data:`TRANSITIONS`; raise :class:`InvalidTransition`."""
    try:
        return TRANSITIONS[status][event]
    except KeyError:
        raise InvalidTransition(status, event) from None
