"""A deadline heap with O(1) cancellation, for sans-IO protocol objects with many timers."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable


class TimerEntry:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[float], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class TimerHeap:
    """Callbacks due at a time; cancelled entries are dropped lazily when they reach the top."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, TimerEntry]] = []
        self._seq = itertools.count()

    def schedule(self, when: float, callback: Callable[[float], None]) -> TimerEntry:
        entry = TimerEntry(when, callback)
        heapq.heappush(self._heap, (when, next(self._seq), entry))
        return entry

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def run_due(self, now: float) -> int:
        """Run every callback due at ``now``; returns how many ran."""
        heap = self._heap
        ran = 0
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)[2]
            if not entry.cancelled:
                entry.cancelled = True
                entry.callback(now)
                ran += 1
        return ran

    def __len__(self) -> int:
        return len(self._heap)
