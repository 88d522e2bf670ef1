"""How a DOTS client chooses the 'mid' of a new request (RFC 9132 §4.4.1.1).

"'mid' values MUST increase monotonically" per 'cuid' and DOTS server, also across restarts of
the client; and "If the 'mid' value has reached 3/4 of (2^(32) - 1) (i.e., 3221225471) and no
attack is detected, the DOTS client MUST reset 'mid' to 0".

:func:`next_mid` is that rule, sans-IO; :class:`dotsd.agents.mids.MidFile` keeps the last
'mid' used per (server, cuid) across runs and applies it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from dotsd.errors import LocalError
from dotsd.signal.uri import MAX_MID

__all__ = ["ROLLOVER_MID", "MidStateError", "next_mid"]

ROLLOVER_MID: Final = 3221225471  # RFC 9132 §4.4.1.1: 3/4 of (2^32 - 1), then 'mid' restarts


class MidStateError(LocalError):
    """The 'mid' space is exhausted, or the state file (:class:`dotsd.agents.mids.MidFile`)
    cannot be read or written; the message says which."""


def next_mid(last: int | None, active: Iterable[int], attack: bool) -> int:
    """The 'mid' of a new request: above the last one used and above every active one; back
    to 0 once the rollover point is reached, no attack is detected and nothing is active
    (RFC 9132 §4.4.1.1). Raises :class:`MidStateError` when the space is exhausted."""
    active = list(active)
    floor = max([m for m in (last, *active) if m is not None], default=0)  # first: 1
    if floor >= ROLLOVER_MID and not attack and not active:
        return 0
    if floor >= MAX_MID:
        raise MidStateError("'mid' space exhausted: withdraw the active mitigations so that "
                            "'mid' can restart at 0 (RFC 9132 §4.4.1.1)")
    return floor + 1
