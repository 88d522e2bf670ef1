"""Log lines about what peers send, bounded in rate (a flood must not become a log flood).

A hostile or broken peer can make the server refuse thousands of requests a second; one log
line each would fill the disk and slow the signal channel during the very attack it serves.
:class:`RateLimitedLog` lets through ``rate`` lines per second per instance and then counts
what it left out, reported in one line when the next second begins. Sans-IO: the caller gives
the time.
"""

from __future__ import annotations

import logging

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """At most ``rate`` lines a second to ``logger`` at ``level``; ``what`` names the lines in
    the summary of those left out ("malformed datagrams", ...)."""

    __slots__ = ("_left_out", "_logged", "_window", "level", "logger", "rate", "what")

    def __init__(self, logger: logging.Logger, what: str, rate: int = 10,
                 level: int = logging.INFO) -> None:
        self.logger = logger
        self.what = what
        self.rate = rate
        self.level = level
        self._window = float("-inf")
        self._logged = 0
        self._left_out = 0

    def __call__(self, now: float, msg: str, *args: object) -> bool:
        """Log ``msg % args`` unless this second's budget is spent; True if logged."""
        if now - self._window >= 1.0:
            if self._left_out:
                self.logger.log(self.level, "%s not logged count=%d", self.what,
                                self._left_out)
            self._window, self._logged, self._left_out = now, 0, 0
        if self._logged < self.rate:
            self._logged += 1
            self.logger.log(self.level, msg, *args)
            return True
        self._left_out += 1
        return False
