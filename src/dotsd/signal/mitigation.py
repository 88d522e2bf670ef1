"""DOTS mitigation requests, server side: the rules of RFC 9132 §4.4 as plain code.

Sans-IO: nothing here reads a clock (``now`` is an argument, wall-clock epoch seconds, so that
``mitigation-start`` is meaningful, RFC 9132 §4.4.2), touches a socket or a store. A
:class:`MitigationTable` holds every mitigation of the server in memory, keyed by
``(cuid, mid)``; each method returns what changed as small frozen dataclasses (:class:`Change`)
so the caller can persist (``Mitigation.to_dict``), notify observers (RFC 9132 §4.4.2.1) and
drive the mitigator. Bodies are JSON-shaped (RFC 7951), as :func:`dotsd.model.codec.to_cbor`
takes them.

The parts it builds on have modules of their own: the status lifecycle (RFC 9132 §4.4.2
Table 3) is the table of :mod:`dotsd.signal.lifecycle`; the request's scope, its parsing and the
overlap of two scopes are :mod:`dotsd.signal.scope`; the records held (:class:`Mitigation`,
:class:`ConflictInfo`, :class:`Counters`) are :mod:`dotsd.signal.records`.

Reading of RFC 9132 §4.4.1.3 that this module implements, rule by rule:

* a PUT with a 'mid' the client already has is a refresh / efficacy update (§4.4.1.3 last
  paragraph, §4.4.3): the scope must be unchanged apart from 'lifetime' (else 4.00); 2.04;
* a PUT with a new 'mid' is 2.01; if it overlaps (§4.4.1.3 "common IP address, IP prefix, FQDN,
  URI, or alias") a request of the same client with the same 'trigger-mitigation' type and a
  higher 'mid', it is rejected with 4.09 (conflict-cause 1, conflict-scope with that 'mid');
  otherwise the overlapped lower 'mid's "MUST be automatically deleted";
* overlapping requests of one client with distinct 'trigger-mitigation' types: an *active*
  preconfigured request is withdrawn (status 7, later 8) in favour of the immediate one;
* a conflict with another client's active request is answered per :class:`ConflictPolicy`:
  maintained (2.01 with conflict-status 2) or rejected (4.09 with conflict-status 1 and
  'retry-timer' = the remaining lifetime of the active request);
* a 'cuid' owned by another authenticated client is 4.09 conflict-cause 3 (Figure 11).

"Overlap" also requires the protocols and the port ranges to intersect (absent means all; see
:mod:`dotsd.signal.scope` for why); the strict wording of RFC 9132 is available with
``MitigationTable(..., match_ports_protocols=False)``.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any, NamedTuple

from dotsd.coap.numbers import Code
from dotsd.signal.errors import BadRequest, Conflict, NotFound, ServiceUnavailable
from dotsd.signal.lifecycle import (
    ACTIVE,
    DEFAULT_ABT_MAX,
    DEFAULT_ACTIVE_BUT_TERMINATING,
    PRECONFIGURED_REPEATS,
    TRANSITIONS,
    ConflictCause,
    ConflictStatus,
    MitigationEvent,
    Status,
    transition,
)
from dotsd.signal.policy import DEFAULT_REQUEST_LIMITS, INDEFINITE, LAB, Policy, RequestLimits
from dotsd.signal.records import ConflictInfo, Counters, Mitigation
from dotsd.signal.scope import (
    MITIGATION_MEMBER,
    MitigationRequest,
    Scope,
    common_targets,
    mid_newer,
    parse_request,
)
from dotsd.signal.targets import TargetIndex
from dotsd.signal.uri import MAX_MID, Content

__all__ = [
    "AliasCheck",
    "Change",
    "ConflictPolicy",
    "DeleteOutcome",
    "GetOutcome",
    "Ignored",
    "MitigationPutOutcome",
    "MitigationTable",
    "Reason",
    "conflict_body",
]


# ---------------------------------------------------------------------------------------------
# Outcomes


class Reason(Enum):
    """Why a :class:`Change` happened."""

    CREATED = "created"  # new request (2.01)
    REFRESHED = "refreshed"  # same 'mid' again (2.04, RFC 9132 §4.4.1.3)
    EFFICACY_UPDATE = "efficacy-update"  # RFC 9132 §4.4.3
    MITIGATOR = "mitigator"  # status reported by the mitigator
    WITHDRAWN_BY_CLIENT = "withdrawn-by-client"  # DELETE: active but terminating (§4.4.4)
    TERMINATED = "terminated"  # record gone (DELETE of an inactive one, ABT period over)
    EXPIRED = "expired"  # lifetime over (RFC 9132 §4.4.1.1)
    OVERRIDDEN = "overridden"  # by a higher overlapping 'mid' (RFC 9132 §4.4.1.3)
    PREEMPTED = "preempted"  # withdrawn by the server, status 7 (RFC 9132 §4.4.1.3)
    TRIGGERED = "triggered"  # preconfigured request activated by signal loss
    REARMED = "rearmed"  # preconfigured request back to 8 (Table 3)
    CONFLICT = "conflict"  # conflict-information set (RFC 9132 §4.4.2.1)
    CONFLICT_RESOLVED = "conflict-resolved"  # the other client's request is no longer active


@dataclass(frozen=True, slots=True)
class Change:
    """What happened to one mitigation. ``mitigation`` is the record after the change (for a
    removed one its last state, status 6); ``before`` the status before (None if new).

    The caller persists (``removed`` → delete the key, else store ``mitigation.to_dict()``),
    notifies the client's observers and starts / stops the mitigator per
    ``mitigation.is_active`` (and ``removed``).
    """

    reason: Reason
    mitigation: Mitigation
    before: Status | None = None
    removed: bool = False

    @property
    def key(self) -> tuple[str, int]:
        return self.mitigation.key


@dataclass(frozen=True, slots=True)
class MitigationPutOutcome:
    code: Code  # 2.01 Created or 2.04 Changed (RFC 9132 §4.4.1.3)
    body: dict[str, Any]
    mitigation: Mitigation
    changes: tuple[Change, ...]


@dataclass(frozen=True, slots=True)
class Ignored:
    """RFC 9132 §4.4.3: a PUT with If-Match matching no mitigation "is silently ignored"."""

    reason: str


@dataclass(frozen=True, slots=True)
class GetOutcome:
    code: Code  # 2.05 Content
    body: dict[str, Any]
    mitigations: tuple[Mitigation, ...]


@dataclass(frozen=True, slots=True)
class DeleteOutcome:
    code: Code  # 2.02 Deleted, no payload (RFC 9132 §4.4.4)
    changes: tuple[Change, ...]


class ConflictPolicy(Enum):
    """What to do with a request overlapping another client's active one (RFC 9132 §4.4.1.3:
    "the DOTS server may return 2.01 (Created) or 4.09 (Conflict)")."""

    ACCEPT = "accept"  # maintain both: 2.01 + conflict-status 2 (and notify the other side)
    REJECT = "reject"  # 4.09 + conflict-status 1 + retry-timer


def _body(entries: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    return {MITIGATION_MEMBER: {"scope": [dict(e) for e in entries]}}


def conflict_body(info: ConflictInfo) -> dict[str, Any]:
    """The body of a 4.09 response (RFC 9132 §4.4.1.3, Figure 11 (2))."""
    return _body([{"conflict-information": info.to_json()}])


AliasCheck = Callable[[str, str | None, str], bool]
"""(cuid, cdid, alias-name) -> whether that client created the alias (RFC 9132 §4.4.1.3)."""


# ---------------------------------------------------------------------------------------------
# The table


def _other_client_conflict(m: Mitigation) -> bool:
    """Whether ``m`` carries the overlap with another client's active request (cause 1,
    RFC 9132 §4.4.1.3) that :meth:`MitigationTable._resolve_conflicts` clears once it ends."""
    info = m.conflict
    return (info is not None and info.cause is ConflictCause.OVERLAPPING_TARGETS
            and info.mid is None)  # same-client conflicts are never stored; be safe


class _OwnOverlaps(NamedTuple):
    """The same client's requests a new one overlaps (RFC 9132 §4.4.1.3), and the
    active-but-terminating period it gets (§4.4.4)."""

    overridden: list[Mitigation]  # lower 'mid', same 'trigger-mitigation' type: deleted
    preempted: list[Mitigation]  # active preconfigured ones: withdrawn (status 7)
    abt_period: float


class MitigationTable:
    """All mitigations of a DOTS server (see the module docstring)."""

    def __init__(
        self,
        policy: Policy = LAB,
        *,
        conflict_policy: ConflictPolicy = ConflictPolicy.ACCEPT,
        active_but_terminating: float = DEFAULT_ACTIVE_BUT_TERMINATING,
        active_but_terminating_max: float = DEFAULT_ABT_MAX,
        match_ports_protocols: bool = True,
        alias_check: AliasCheck | None = None,
        records: Iterable[Mitigation] = (),
        request_limits: RequestLimits = DEFAULT_REQUEST_LIMITS,
    ) -> None:
        self.policy = policy
        self.request_limits = request_limits  # the size of one request (RFC 9132 §4.4.1.3)
        self.conflict_policy = conflict_policy
        self.abt_initial = active_but_terminating
        self.abt_max = active_but_terminating_max
        self.match_ports_protocols = match_ports_protocols
        self.alias_check = alias_check
        self._records: dict[tuple[str, int], Mitigation] = {}
        # Indexes kept by _store / _drop, so that no request costs O(all mitigations):
        self._by_client: dict[str, dict[int, Mitigation]] = {}
        self._targets = TargetIndex()
        self._deadlines: list[tuple[float, tuple[str, int]]] = []  # heap, stale entries skipped
        self._expired: deque[Change] = deque()  # what handle_timer ended, for next_event
        self._conflicted: set[tuple[str, int]] = set()  # with another client's overlap (cause 1)
        for record in records:
            self._store(record)

    # -- persistence ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"mitigations": [m.to_dict() for m in self]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], **kwargs: Any) -> MitigationTable:
        records = [Mitigation.from_dict(d) for d in data.get("mitigations", ())]
        return cls(records=records, **kwargs)

    def __iter__(self) -> Iterator[Mitigation]:
        return iter(sorted(self._records.values(), key=lambda m: (m.cuid, m.mid)))

    def __len__(self) -> int:
        return len(self._records)

    def lookup(self, cuid: str, mid: int) -> Mitigation | None:
        return self._records.get((cuid, mid))

    def of_client(self, cuid: str) -> list[Mitigation]:
        return sorted(self._by_client.get(cuid, {}).values(), key=lambda m: m.mid)

    def get_timer(self) -> float | None:
        """The earliest time :meth:`handle_timer` has something to do (to arm one timer)."""
        heap = self._deadlines
        while heap and not self._due_entry(*heap[0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    # -- indexes ----------------------------------------------------------------------------

    def _store(self, m: Mitigation) -> None:
        """Put a record in the table (new, or a new version of the one with its key)."""
        old = self._records.get(m.key)
        self._records[m.key] = m
        self._by_client.setdefault(m.cuid, {})[m.mid] = m
        if old is None:
            self._targets.add(m.key, m.scope)
        elif old.scope is not m.scope:
            self._targets.remove(m.key, old.scope)
            self._targets.add(m.key, m.scope)
        deadline = m.deadline()
        if deadline is not None and (old is None or old.deadline() != deadline):
            heapq.heappush(self._deadlines, (deadline, m.key))
            if len(self._deadlines) > 2 * len(self._records) + 64:
                # Refreshes leave stale entries behind; a client refreshing in a loop must
                # not grow the heap without bound: rebuild it (amortised O(1) per push).
                self._deadlines = [(d, k) for k, r in self._records.items()
                                   if (d := r.deadline()) is not None]
                heapq.heapify(self._deadlines)
        if _other_client_conflict(m):
            self._conflicted.add(m.key)
        else:
            self._conflicted.discard(m.key)

    def _drop(self, key: tuple[str, int]) -> None:
        old = self._records.pop(key)
        mine = self._by_client[old.cuid]
        del mine[old.mid]
        if not mine:
            del self._by_client[old.cuid]
        self._targets.remove(key, old.scope)
        self._conflicted.discard(key)

    def _due_entry(self, deadline: float, key: tuple[str, int]) -> bool:
        """Whether a heap entry still stands for its record (not removed, same deadline)."""
        m = self._records.get(key)
        return m is not None and m.deadline() == deadline

    def _overlapping(self, scope: Scope) -> list[Mitigation]:
        """The records sharing a target with ``scope``, in (cuid, mid) order."""
        return [self._records[k] for k in sorted(self._targets.candidates(scope))]

    # -- helpers ----------------------------------------------------------------------------

    def _overlap(self, a: Scope, b: Scope) -> Scope | None:
        return common_targets(a, b, match_ports_protocols=self.match_ports_protocols)

    def _visible(self, m: Mitigation, identity: str | None) -> bool:
        # RFC 9132 §4.1: "A DOTS client is entitled to access only the resources it creates."
        return identity is None or m.owner is None or m.owner == identity

    def _check_cuid(self, cuid: str, identity: str | None) -> None:
        if identity is None:
            return
        for m in self._by_client.get(cuid, {}).values():
            if m.owner is not None and m.owner != identity:
                # RFC 9132 §4.4.1.1 / §4.4.1.3 cause 3, Figure 11: no conflict-status,
                # conflict-scope or retry-timer.
                raise Conflict(
                    f"cuid {cuid!r} is already in use by another DOTS client",
                    body=conflict_body(ConflictInfo(ConflictCause.CUID_COLLISION)),
                    rule="RFC 9132 §4.4.1.1, §4.4.1.3",
                )

    def _expiry(self, lifetime: int, now: float) -> float | None:
        return None if lifetime == INDEFINITE else now + lifetime

    def _move(
        self, m: Mitigation, event: MitigationEvent, now: float, reason: Reason, **changes: Any
    ) -> Change:
        after_status = transition(m.status, event)
        if after_status is Status.ATTACK_MITIGATION_TERMINATED:
            after = replace(m, status=after_status, **changes)
            self._drop(m.key)
            return Change(reason, after, before=m.status, removed=True)
        if after_status is Status.ATTACK_MITIGATION_SIGNAL_LOSS:
            changes.setdefault("mitigation_start", None)
        elif m.status is Status.ATTACK_MITIGATION_SIGNAL_LOSS:
            changes.setdefault("mitigation_start", now)
        if after_status is not m.status:
            changes.setdefault("repeats", 0)
        after = replace(m, status=after_status, **changes)
        self._store(after)
        return Change(reason, after, before=m.status)

    def _resolve_conflicts(self) -> list[Change]:
        """Clear the conflict information of requests whose conflict with another client's
        active request (cause 1, RFC 9132 §4.4.1.3) is over, so their observers learn it."""
        changes: list[Change] = []
        for key in sorted(self._conflicted):
            m = self._records[key]
            still = any(
                o.cuid != m.cuid and o.status in ACTIVE and self._overlap(m.scope, o.scope)
                for o in self._overlapping(m.scope)
            )
            if not still:
                after = replace(m, conflict=None)
                self._store(after)
                changes.append(Change(Reason.CONFLICT_RESOLVED, after, before=m.status))
        return changes

    # -- PUT --------------------------------------------------------------------------------

    def put(
        self,
        cuid: str,
        mid: int,
        cdid: str | None,
        body: Mapping[str, Any],
        now: float,
        *,
        identity: str | None = None,
        if_match: bool = False,
        policy: Policy | None = None,
    ) -> MitigationPutOutcome | Ignored:
        """Handle a mitigation request / refresh / efficacy update (RFC 9132 §4.4.1, §4.4.3).

        ``identity`` is the authenticated client identity (e.g. its SPKI hash) used to detect
        'cuid' collisions; ``if_match`` tells whether the request carried an empty If-Match
        Option. ``cdid`` is stored as given: the caller passes it only when the request came
        from a trusted server-domain DOTS gateway ("DOTS servers MUST ignore 'cdid' attributes
        that are directly supplied by source DOTS clients", RFC 9132 §4.4.1.2). ``policy``:
        the client's own domain and limits (RFC 9132 §10), else the table's.
        Raises :class:`~dotsd.signal.errors.SignalError` (4.00, 4.09, 5.03).
        """
        if not 0 <= mid <= MAX_MID:
            raise BadRequest(f"'mid' {mid} out of range", rule="RFC 9132 §4.4.1.1")
        self._check_cuid(cuid, identity)
        request = parse_request(body, self.request_limits)
        existing = self._records.get((cuid, mid))
        withdrawn = (
            existing is not None and existing.status is Status.DOTS_CLIENT_WITHDRAWN_MITIGATION
        )
        if if_match and (existing is None or withdrawn):
            # RFC 9132 §4.4.3: out-of-order PUT after the mitigation is gone / withdrawn.
            return Ignored(f"If-Match: no mitigation {mid} for cuid {cuid!r}")
        if existing is not None and not withdrawn:
            return self._refresh(existing, request, now, policy or self.policy)
        return self._create(cuid, mid, cdid, identity, request, existing, now,
                            policy or self.policy)

    def _refresh(self, m: Mitigation, request: MitigationRequest, now: float,
                 policy: Policy) -> MitigationPutOutcome:
        # RFC 9132 §4.4.1.3: "MUST repeat all the other parameters as sent in the original
        # mitigation request apart from a possible change to the 'lifetime' parameter value
        # ... If this is not the case, the DOTS server MUST reject the request with a 4.00";
        # likewise for an efficacy update (§4.4.3).
        if request.scope.canonical() != m.scope.canonical():
            raise BadRequest(
                f"mitigation {m.mid} exists with another scope; only 'lifetime' may change "
                "(use a new 'mid' to change the scope)",
                rule="RFC 9132 §4.4.1.3, §4.4.3",
            )
        # An efficacy update (Figure 16) carries no 'lifetime': it is "treated as a refresh of
        # the current mitigation" (§4.4.3), i.e. with the lifetime granted before.
        lifetime = (
            m.lifetime if request.lifetime is None else policy.grant_lifetime(request.lifetime)
        )
        after = replace(
            m,
            lifetime=lifetime,
            expires_at=self._expiry(lifetime, now),
            attack_status=request.attack_status or m.attack_status,
        )
        self._store(after)
        reason = Reason.EFFICACY_UPDATE if request.attack_status else Reason.REFRESHED
        change = Change(reason, after, before=m.status)
        return MitigationPutOutcome(Code.CHANGED, self._put_body(after), after, (change,))

    def _put_body(self, m: Mitigation) -> dict[str, Any]:
        # RFC 9132 §4.4.1.3 Figure 10: 'mid' and the granted 'lifetime' (§4.4.1.1: "The DOTS
        # server MUST always indicate the actual lifetime in the response"); 'cuid' and 'cdid'
        # are forbidden in it. Conflict information when the request was maintained despite a
        # conflict ("For both 2.01 (Created) and 4.09 (Conflict) responses").
        entry: dict[str, Any] = {"mid": m.mid, "lifetime": m.lifetime}
        if m.conflict is not None:
            entry["conflict-information"] = m.conflict.to_json()
        return _body([entry])

    def _create(
        self,
        cuid: str,
        mid: int,
        cdid: str | None,
        identity: str | None,
        request: MitigationRequest,
        previous: Mitigation | None,
        now: float,
        policy: Policy,
    ) -> MitigationPutOutcome:
        """A new 'mid', or ``previous``: the same 'mid' active but terminating, requested
        again. 2.01 (RFC 9132 §4.4.1.3) once every check below passes; a failed check (4.00,
        4.09, 5.03) changes nothing."""
        if request.lifetime is None:
            raise BadRequest(
                "'lifetime' is mandatory in a mitigation request", rule="RFC 9132 §4.4.1.1"
            )
        scope = request.scope
        self._check_domain(cuid, cdid, scope, policy)
        self._check_capacity(cuid, previous, policy)
        own = self._same_client_overlaps(cuid, mid, scope, previous)
        conflict, changes = self._apply_conflict_policy(
            self._other_client_conflicts(cuid, scope), now
        )
        changes += self._end_own_overlaps(own, now)
        lifetime = policy.grant_lifetime(request.lifetime)
        immediate = scope.trigger_mitigation
        m = Mitigation(
            cuid=cuid,
            mid=mid,
            cdid=cdid,
            owner=identity,
            scope=scope,
            lifetime=lifetime,
            expires_at=self._expiry(lifetime, now),
            # RFC 9132 §4.4.1.1 trigger-mitigation: immediate requests start now, preconfigured
            # ones wait for a signal loss (Table 3 status 8).
            status=Status.ATTACK_MITIGATION_IN_PROGRESS
            if immediate
            else Status.ATTACK_MITIGATION_SIGNAL_LOSS,
            created_at=now,
            mitigation_start=now if immediate else None,
            attack_status=request.attack_status,
            conflict=conflict,
            abt_period=own.abt_period,
        )
        self._store(m)
        changes.append(
            Change(Reason.CREATED, m, before=None if previous is None else previous.status)
        )
        if own.overridden or own.preempted:
            changes.extend(self._resolve_conflicts())
        return MitigationPutOutcome(Code.CREATED, self._put_body(m), m, tuple(changes))

    def _check_domain(self, cuid: str, cdid: str | None, scope: Scope, policy: Policy) -> None:
        """RFC 9132 §4.4.1.1 / §10: the targets lie within the client's domain (4.00); and
        §4.4.1.3: an 'alias-name' must be one this client created (4.00)."""
        policy.check_prefixes(scope.networks)
        policy.check_fqdns(scope.target_fqdn)
        policy.check_uris(scope.target_uri)
        if self.alias_check is not None:
            for alias in scope.alias_name:
                if not self.alias_check(cuid, cdid, alias):
                    raise BadRequest(
                        f"alias {alias!r} was not created by this DOTS client",
                        rule="RFC 9132 §4.4.1.3",
                    )

    def _check_capacity(self, cuid: str, previous: Mitigation | None, policy: Policy) -> None:
        """RFC 9132 §4.4.1.3: "A DOTS server MAY reject mitigation requests when it is near
        capacity or needs to rate-limit a particular client"; §9: 5.03 when "unable to handle
        the request". A request again within its active-but-terminating period adds none."""
        limit = policy.max_mitigations_per_client
        if (limit is not None and previous is None
                and len(self._by_client.get(cuid, ())) >= limit):
            raise ServiceUnavailable(
                f"at most {limit} mitigations per DOTS client",
                max_age=policy.retry_after,
                rule="RFC 9132 §4.4.1.3, §9",
            )

    def _same_client_overlaps(
        self, cuid: str, mid: int, scope: Scope, previous: Mitigation | None
    ) -> _OwnOverlaps:
        """What a new request does to the same client's overlapping ones (RFC 9132 §4.4.1.3):

        * same 'trigger-mitigation' type: 4.09 (conflict-cause 1, conflict-scope with the
          higher 'mid') if one has a higher 'mid', else the lower ones are overridden;
        * distinct types: an active preconfigured request is withdrawn (7, later back to 8,
          Table 3) in favour of the immediate one;
        * one active but terminating (§4.4.4): "requested again" within that period, which
          doubles the new request's period, up to the maximum.
        """
        overridden: list[Mitigation] = []
        preempted: list[Mitigation] = []
        abt_period = self.abt_initial
        for other in self._overlapping(scope):
            if other.cuid != cuid or other.mid == mid:
                continue
            common = self._overlap(scope, other.scope)
            if common is None:
                continue
            if other.status is Status.DOTS_CLIENT_WITHDRAWN_MITIGATION:  # §4.4.4
                abt_period = max(abt_period, min(2 * other.abt_period, self.abt_max))
                continue
            if other.scope.trigger_mitigation == scope.trigger_mitigation:
                if not mid_newer(mid, other.mid):
                    raise Conflict(
                        f"overlaps mitigation {other.mid} which has a higher 'mid'",
                        body=conflict_body(
                            ConflictInfo(
                                ConflictCause.OVERLAPPING_TARGETS, scope=common, mid=other.mid
                            )
                        ),
                        rule="RFC 9132 §4.4.1.3",
                    )
                overridden.append(other)
            elif scope.trigger_mitigation and other.status in ACTIVE:  # distinct types
                preempted.append(other)
        if previous is not None:  # same 'mid', active but terminating, requested again
            abt_period = max(abt_period, min(2 * previous.abt_period, self.abt_max))
        return _OwnOverlaps(overridden, preempted, abt_period)

    def _end_own_overlaps(self, own: _OwnOverlaps, now: float) -> list[Change]:
        """RFC 9132 §4.4.1.3: "the overlapped lower numeric 'mid' MUST be automatically
        deleted and no longer available at the DOTS server"; an active preconfigured request
        overlapped by an immediate one is withdrawn (status 7, Table 3)."""
        changes = [self._move(other, MitigationEvent.OVERRIDDEN, now, Reason.OVERRIDDEN)
                   for other in own.overridden]
        changes += [self._move(other, MitigationEvent.SERVER_WITHDRAW, now, Reason.PREEMPTED)
                    for other in own.preempted]
        return changes

    def _other_client_conflicts(self, cuid: str, scope: Scope) -> list[tuple[Mitigation, Scope]]:
        """The other clients' requests a new one conflicts with, with the common targets of
        each (RFC 9132 §4.4.1.3): only active requests can conflict, and only an immediate
        request (a preconfigured one mitigates nothing yet)."""
        conflicts: list[tuple[Mitigation, Scope]] = []
        if scope.trigger_mitigation:
            for other in self._overlapping(scope):
                if other.cuid == cuid or other.status not in ACTIVE:
                    continue
                common = self._overlap(scope, other.scope)
                if common is not None:
                    conflicts.append((other, common))
        return conflicts

    def _apply_conflict_policy(
        self, conflicts: list[tuple[Mitigation, Scope]], now: float
    ) -> tuple[ConflictInfo | None, list[Change]]:
        """RFC 9132 §4.4.1.3: "the DOTS server may return 2.01 (Created) or 4.09 (Conflict)"
        for a request conflicting with another client's active one. REJECT: 4.09 with
        conflict-status 1 and a 'retry-timer'. ACCEPT: both are maintained (conflict-status 2)
        and the other side is told too (§4.4.2.1). Returns the new request's conflict
        information and the changes of the others."""
        changes: list[Change] = []
        if not conflicts:
            return None, changes
        first, common = conflicts[0]
        if self.conflict_policy is ConflictPolicy.REJECT:
            remaining = first.remaining_lifetime(now)
            # 'retry-timer' "SHOULD be equal to the lifetime of the active mitigation
            # request resulting in the deactivation" (§4.4.1.3).
            info = ConflictInfo(
                ConflictCause.OVERLAPPING_TARGETS,
                status=ConflictStatus.REQUEST_INACTIVE_OTHER_ACTIVE,
                retry_timer=None if remaining == INDEFINITE else remaining,
                scope=common,
            )
            raise Conflict(
                f"overlaps an active mitigation of another DOTS client (mid {first.mid})",
                body=conflict_body(info),
                rule="RFC 9132 §4.4.1.3",
            )
        for other, common_other in conflicts:
            after = replace(
                other,
                conflict=ConflictInfo(
                    ConflictCause.OVERLAPPING_TARGETS,
                    status=ConflictStatus.REQUEST_ACTIVE,
                    scope=common_other,
                ),
            )
            self._store(after)
            changes.append(Change(Reason.CONFLICT, after, before=other.status))
        conflict = ConflictInfo(
            ConflictCause.OVERLAPPING_TARGETS, status=ConflictStatus.REQUEST_ACTIVE, scope=common
        )
        return conflict, changes

    # -- GET --------------------------------------------------------------------------------

    def get(
        self,
        cuid: str,
        mid: int | None,
        now: float,
        *,
        identity: str | None = None,
        content: Content = Content.ALL,
    ) -> GetOutcome:
        """One mitigation or all of a client (RFC 9132 §4.4.2, Figure 14); 4.04 if none."""
        if mid is not None:
            found = self._records.get((cuid, mid))
            selected = [found] if found is not None and self._visible(found, identity) else []
            if not selected:
                raise NotFound(f"no mitigation {mid} for this client", rule="RFC 9132 §4.4.2")
        else:
            selected = [m for m in self.of_client(cuid) if self._visible(m, identity)]
            if not selected:
                raise NotFound("no mitigation for this client", rule="RFC 9132 §4.4.2")
        body = _body(m.status_entry(now, content) for m in selected)
        return GetOutcome(Code.CONTENT, body, tuple(selected))

    def status_body(self, m: Mitigation, now: float) -> dict[str, Any]:
        """A notification body for one mitigation (RFC 9132 §4.4.2.1)."""
        return _body([m.status_entry(now)])

    # -- DELETE -----------------------------------------------------------------------------

    def delete(
        self, cuid: str, mid: int, now: float, *, identity: str | None = None
    ) -> DeleteOutcome:
        """Withdraw a mitigation (RFC 9132 §4.4.4): always 2.02 without payload, "even if the
        'mid' parameter value ... does not exist". An active one stays active but terminating
        for its active-but-terminating period (default 120 s, doubled up to 300 s when the
        client requested mitigation again within it); an inactive one is removed."""
        m = self._records.get((cuid, mid))
        if m is None or not self._visible(m, identity):
            return DeleteOutcome(Code.DELETED, ())
        if m.status is Status.DOTS_CLIENT_WITHDRAWN_MITIGATION:
            return DeleteOutcome(Code.DELETED, ())
        if m.status in ACTIVE:
            change = self._move(
                m,
                MitigationEvent.CLIENT_WITHDRAW,
                now,
                Reason.WITHDRAWN_BY_CLIENT,
                terminating_until=now + m.abt_period,
            )
        else:
            change = self._move(m, MitigationEvent.CLIENT_WITHDRAW, now, Reason.TERMINATED)
        return DeleteOutcome(Code.DELETED, (change, *self._resolve_conflicts()))

    # -- time -------------------------------------------------------------------------------

    def handle_timer(self, now: float) -> None:
        """End what is due at ``now`` (see :meth:`_expire`); the changes come out of
        :meth:`next_event`."""
        self._expired.extend(self._expire(now))

    def next_event(self) -> Change | None:
        """The next change :meth:`handle_timer` made (None: none left)."""
        return self._expired.popleft() if self._expired else None

    def _expire(self, now: float) -> list[Change]:
        """End what is due at ``now``: active-but-terminating periods ("Once the
        active-but-terminating period elapses, the DOTS server MUST treat the mitigation as
        terminated", §4.4.4) and lifetimes ("Upon the expiry of the negotiated lifetime ...
        the mitigation request is removed", §4.4.1.1)."""
        changes: list[Change] = []
        due: set[tuple[str, int]] = set()
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            deadline, key = heapq.heappop(heap)
            if self._due_entry(deadline, key):
                due.add(key)
        for key in sorted(due):
            m = self._records[key]
            if m.terminating_until is not None and m.terminating_until <= now:
                changes.append(self._move(m, MitigationEvent.TERMINATING_ELAPSED, now,
                                          Reason.TERMINATED))
            elif m.expires_at is not None and m.expires_at <= now:
                changes.append(self._move(m, MitigationEvent.LIFETIME_EXPIRED, now, Reason.EXPIRED))
            after = self._records.get(key)  # still there: its deadline stays in the heap
            if after is not None and (later := after.deadline()) is not None:
                heapq.heappush(self._deadlines, (later, key))
        if changes:
            changes.extend(self._resolve_conflicts())
        return changes

    # -- session ----------------------------------------------------------------------------

    def on_session_lost(self, cuid: str, now: float) -> list[Change]:
        """The signal channel session of ``cuid`` is lost (RFC 9132 §4.4.1.3, §4.7).

        Its preconfigured requests (status 8) are triggered (status 1) and its active
        immediate requests overlapping them are withdrawn (status 7), without an
        active-but-terminating period ("not observed for mitigations withdrawn at the
        initiative of the DOTS server"). The session coming back stops nothing (§4.4.4).
        """
        changes: list[Change] = []
        triggered: list[Mitigation] = []
        for m in self.of_client(cuid):
            if m.preconfigured and m.status is Status.ATTACK_MITIGATION_SIGNAL_LOSS:
                change = self._move(m, MitigationEvent.SIGNAL_LOSS, now, Reason.TRIGGERED)
                triggered.append(change.mitigation)
                changes.append(change)
        for m in self.of_client(cuid):
            if m.preconfigured or m.status not in ACTIVE:
                continue
            if any(self._overlap(m.scope, t.scope) is not None for t in triggered):
                changes.append(self._move(m, MitigationEvent.SERVER_WITHDRAW, now,
                                          Reason.PREEMPTED))
        if changes:
            changes.extend(self._resolve_conflicts())
        return changes

    def on_notified(self, cuid: str, mid: int, now: float) -> list[Change]:
        """A status notification for this mitigation was sent. RFC 9132 §4.4.2 Table 3: for a
        preconfigured request, status 3 and 7 are "transmitted four times and then transition
        to '8'"."""
        m = self._records.get((cuid, mid))
        if m is None or not m.preconfigured:
            return []
        if m.status not in (Status.ATTACK_STOPPED, Status.ATTACK_MITIGATION_WITHDRAWN):
            return []
        if m.repeats + 1 < PRECONFIGURED_REPEATS:
            self._store(replace(m, repeats=m.repeats + 1))
            return []
        return [self._move(m, MitigationEvent.REARM, now, Reason.REARMED, conflict=None)]

    # -- mitigator --------------------------------------------------------------------------

    def mitigator_report(
        self,
        cuid: str,
        mid: int,
        event: MitigationEvent,
        now: float,
        *,
        counters: Counters | None = None,
    ) -> list[Change]:
        """Feedback of the mitigator (RFC 9132 §4.4.1.1: the server relays "the feedback of
        the thus-selected mitigator"). ``event`` is one of MITIGATING, EXCEEDED,
        ATTACK_STOPPED, ATTACK_RESUMED. Reports about a mitigation that is gone or in a status
        the event does not apply to are stale (the mitigator runs asynchronously): ignored,
        apart from the counters of a running mitigation."""
        if event not in (
            MitigationEvent.MITIGATING,
            MitigationEvent.EXCEEDED,
            MitigationEvent.ATTACK_STOPPED,
            MitigationEvent.ATTACK_RESUMED,
        ):
            raise ValueError(f"{event} is not a mitigator event")
        m = self._records.get((cuid, mid))
        if m is None:
            return []
        extra: dict[str, Any] = {} if counters is None else {"counters": counters}
        if event not in TRANSITIONS[m.status]:
            return [] if counters is None else self.update_counters(cuid, mid, counters)
        return [self._move(m, event, now, Reason.MITIGATOR, **extra)]

    def update_counters(self, cuid: str, mid: int, counters: Counters) -> list[Change]:
        """New mitigator counters for a running mitigation (RFC 9132 §4.4.2), its status
        unchanged; nothing for one that is gone or not active (a late report)."""
        m = self._records.get((cuid, mid))
        if m is None or not m.is_active:
            return []
        after = replace(m, counters=counters)
        self._store(after)
        return [Change(Reason.MITIGATOR, after, before=m.status)]

    def report_conflict(self, cuid: str, mid: int, info: ConflictInfo, now: float) -> list[Change]:
        """Record a conflict found after acceptance (extension point for conflict-cause 2,
        accept-listed ACL sources attacking the target, RFC 9132 §4.4.1.3; 4, RFC 9066 §7.2;
        5, RFC 9244 §13.2). When ``info.status`` says this request is inactive (1 or 3), an
        active mitigation is withdrawn: status 7 (RFC 9132 §4.4.2.1 first example)."""
        m = self._records.get((cuid, mid))
        if m is None:
            return []
        inactive = info.status in (
            ConflictStatus.REQUEST_INACTIVE_OTHER_ACTIVE,
            ConflictStatus.ALL_REQUESTS_INACTIVE,
        )
        if inactive and m.status in ACTIVE:
            return [self._move(m, MitigationEvent.SERVER_WITHDRAW, now, Reason.CONFLICT,
                               conflict=info)]
        after = replace(m, conflict=info)
        self._store(after)
        return [Change(Reason.CONFLICT, after, before=m.status)]
