"""An index of the targets of stored mitigations, to find the ones a new request may overlap.

RFC 9132 §4.4.1.3 makes the server compare a new mitigation request with the client's own
requests and with the active requests of every other client ("a common IP address, IP prefix,
FQDN, URI, or alias"). Compared pairwise with every stored request, that is O(N) per request
and O(N²) to fill a server: a table of 10,000 mitigations made each new one cost about 80 ms.

:class:`TargetIndex` keeps, for every stored request, its prefixes, FQDNs, URIs and aliases,
and returns the keys of those that share at least one of them with a scope
(:meth:`TargetIndex.candidates`); the caller then computes the exact overlap
(:func:`dotsd.signal.scope.common_targets`) on those only. Two IP prefixes overlap only when
one contains the other, so the candidates of a prefix x are its supernets (one lookup per prefix
length in use) and the prefixes starting inside x (a range of a sorted list). Names are compared
as ``common_targets`` compares them: FQDNs case-insensitively without a trailing dot, URIs and
aliases exactly. Sans-IO, no clock.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Hashable, Iterable
from typing import Any, Protocol

from dotsd.signal.policy import IPNetwork

__all__ = ["Indexed", "TargetIndex", "fqdn_key"]


class Indexed(Protocol):
    """What the index reads of a scope (:class:`dotsd.signal.scope.Scope`)."""

    @property
    def networks(self) -> tuple[IPNetwork, ...]: ...
    @property
    def target_fqdn(self) -> tuple[str, ...]: ...
    @property
    def target_uri(self) -> tuple[str, ...]: ...
    @property
    def alias_name(self) -> tuple[str, ...]: ...


def fqdn_key(name: str) -> str:
    """How two FQDNs are compared (RFC 4343: case-insensitive; the root dot is optional)."""
    return name.lower().rstrip(".")


def _names(scope: Indexed) -> Iterable[tuple[str, str]]:
    yield from (("fqdn", fqdn_key(f)) for f in scope.target_fqdn)
    yield from (("uri", u) for u in scope.target_uri)
    yield from (("alias", a) for a in scope.alias_name)


class TargetIndex:
    """Keys (any hashable, orderable value) of stored scopes, by target."""

    __slots__ = ("_exact", "_lengths", "_names", "_starts")

    def __init__(self) -> None:
        # (version, prefix length, first address) -> keys with that prefix
        self._exact: dict[tuple[int, int, int], set[Any]] = {}
        # version -> how many stored prefixes have each length
        self._lengths: dict[int, Counter[int]] = {4: Counter(), 6: Counter()}
        # version -> sorted (first address, prefix length, key)
        self._starts: dict[int, list[tuple[int, int, Any]]] = {4: [], 6: []}
        self._names: dict[tuple[str, str], set[Any]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self._starts.values()) + sum(
            len(v) for v in self._names.values())

    def add(self, key: Hashable, scope: Indexed) -> None:
        for net in set(scope.networks):
            version, length, start = net.version, net.prefixlen, int(net.network_address)
            self._exact.setdefault((version, length, start), set()).add(key)
            self._lengths[version][length] += 1
            bisect.insort(self._starts[version], (start, length, key))
        for name in set(_names(scope)):
            self._names.setdefault(name, set()).add(key)

    def remove(self, key: Hashable, scope: Indexed) -> None:
        """Forget what :meth:`add` stored for ``key`` and this same ``scope``."""
        for net in set(scope.networks):
            version, length, start = net.version, net.prefixlen, int(net.network_address)
            exact = self._exact.get((version, length, start))
            if exact is None or key not in exact:
                continue
            exact.discard(key)
            if not exact:
                del self._exact[(version, length, start)]
            lengths = self._lengths[version]
            lengths[length] -= 1
            if lengths[length] <= 0:
                del lengths[length]
            starts = self._starts[version]
            i = bisect.bisect_left(starts, (start, length, key))
            if i < len(starts) and starts[i] == (start, length, key):
                del starts[i]
        for name in set(_names(scope)):
            keys = self._names.get(name)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._names[name]

    def candidates(self, scope: Indexed) -> set[Any]:
        """The keys whose scope shares a prefix (one containing the other), an FQDN, a URI or
        an alias with ``scope``: a superset of those :func:`common_targets` finds overlapping."""
        found: set[Any] = set()
        lengths = {v: sorted(c) for v, c in self._lengths.items()}
        for net in scope.networks:
            version, bits = net.version, net.max_prefixlen
            start, end = int(net.network_address), int(net.broadcast_address)
            for length in lengths[version]:  # stored prefixes containing (or equal to) net
                if length > net.prefixlen:
                    break
                mask = ((1 << length) - 1) << (bits - length) if length else 0
                found.update(self._exact.get((version, length, start & mask), ()))
            starts = self._starts[version]  # stored prefixes inside net
            low = bisect.bisect_left(starts, (start,))
            high = bisect.bisect_left(starts, (end + 1,))
            found.update(key for _, length, key in starts[low:high] if length > net.prefixlen)
        for name in _names(scope):
            found.update(self._names.get(name, ()))
        return found
