"""``python -m dotsd._speedups``: say which compiled accelerators are in use."""

from dotsd._speedups import report

print(report())
