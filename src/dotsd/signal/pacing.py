"""Pacing of Non-confirmable mitigation requests (RFC 9132 §4.4), sans-IO.

RFC 9132 §4.4: "Requests marked by the DOTS client as Non-confirmable messages are sent at
regular intervals until a response is received from the DOTS server. If the DOTS client cannot
maintain an RTT estimate, it MUST NOT send more than one Non-confirmable request every 3 seconds
and SHOULD use an even less aggressive rate whenever possible (case 2 in Section 3.1.3 of
[RFC8085]). Mitigation requests MUST NOT be delayed because of checks on probing rate (Section
4.7 of [RFC7252])." and "DOTS agents MUST NOT send more than one UDP datagram per round-trip time
(RTT) to the peer DOTS agent on average".

* :class:`RttEstimator` — a smoothed RTT as RFC 6298 §2 computes it, fed from heartbeat round
  trips (:meth:`dotsd.signal.heartbeat.HeartbeatMonitor.on_heartbeat_response` returns the
  sample) and from earlier unambiguous exchanges (Karn's rule, RFC 6298 §3).
* :class:`MitigationRepeatPolicy` — a :data:`dotsd.coap.exchange.RepeatPolicy`: the delay
  before repeating an unanswered NON request. With an estimate it is the smoothed RTT (one
  repetition per RTT, what RFC 9132 §4.4 allows on average), the first one a little later
  (SRTT + 4 RTTVAR, at most 2 SRTT); without one, 3 s or more.
  Unlike the endpoint's default policy it never looks at the probing rate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from dotsd.coap.exchange import ClientRequest

__all__ = [
    "NO_ESTIMATE_INTERVAL",
    "MitigationRepeatPolicy",
    "RttEstimator",
]

NO_ESTIMATE_INTERVAL: Final = 3.0
"""RFC 9132 §4.4 / RFC 8085 §3.1.3: at most one Non-confirmable request every 3 seconds when
no RTT estimate can be maintained."""

ALPHA: Final = 1 / 8  # RFC 6298 §2.3
BETA: Final = 1 / 4  # RFC 6298 §2.3
K: Final = 4  # RFC 6298 §2.1


class RttEstimator:
    """Smoothed round-trip time and retransmission timeout (RFC 6298 §2).

    ``min_rto`` defaults to RFC 6298 §2.4's 1 s ("RTO SHOULD be rounded up to 1 second"),
    ``max_rto`` to §2.5's 60 s; ``granularity`` is the clock granularity G of §2.
    """

    def __init__(self, *, min_rto: float = 1.0, max_rto: float = 60.0,
                 granularity: float = 0.001) -> None:
        if not 0 <= min_rto <= max_rto:
            raise ValueError("need 0 <= min_rto <= max_rto")
        self.min_rto = min_rto
        self.max_rto = max_rto
        self.granularity = granularity
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.samples = 0

    @property
    def has_estimate(self) -> bool:
        return self.srtt is not None

    def sample(self, rtt: float) -> None:
        """Add a measured round trip (seconds). RFC 6298 §2.2 for the first, §2.3 after."""
        if rtt < 0:
            return
        if self.srtt is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = (1 - BETA) * self.rttvar + BETA * abs(self.srtt - rtt)
            self.srtt = (1 - ALPHA) * self.srtt + ALPHA * rtt
        self.samples += 1

    def restart(self, rtt: float) -> None:
        """Start afresh from one measured round trip (a new path or session: what was
        learnt before, or restored from an earlier run, no longer counts)."""
        self.srtt = None
        self.rttvar = 0.0
        self.samples = 0
        self.sample(rtt)

    def on_exchange(self, sent_at: float, now: float, *, repeated: bool) -> None:
        """A response to a request sent at ``sent_at``: a sample only if the request was not
        repeated (Karn's algorithm, RFC 6298 §3: ambiguous samples are not taken)."""
        if not repeated:
            self.sample(now - sent_at)

    @property
    def rto(self) -> float | None:
        """RTO = SRTT + max(G, K*RTTVAR) within [min_rto, max_rto] (RFC 6298 §2.3-2.5);
        None without a sample."""
        if self.srtt is None:
            return None
        rto = self.srtt + max(self.granularity, K * self.rttvar)
        return min(max(rto, self.min_rto), self.max_rto)


class MitigationRepeatPolicy:
    """Repeat an unanswered NON mitigation request at regular intervals (RFC 9132 §4.4).

    Callable as a :data:`~dotsd.coap.exchange.RepeatPolicy`: ``policy(request, attempts,
    rtt)`` → delay before the next repetition, or None to stop repeating (only when
    ``max_repeats`` is set; by default the request repeats until answered or until the
    endpoint's deadline).

    The interval is, with an RTT estimate, the estimator's smoothed RTT — or the endpoint's
    own (the ``rtt`` argument) when the estimator has none — never below the endpoint's RTT
    nor below ``min_interval``: one repetition per RTT, no more. Without any estimate it is
    ``no_estimate_interval`` (at least 3 s; choose more to be "even less aggressive").
    ``backoff`` > 1 multiplies the interval per repetition (capped by ``max_interval``); the
    default 1.0 keeps the "regular intervals" of RFC 9132 §4.4. The message size and the
    probing rate play no part (§4.4: "MUST NOT be delayed because of checks on probing rate").
    """

    def __init__(
        self,
        estimator: RttEstimator | None = None,
        *,
        no_estimate_interval: float = NO_ESTIMATE_INTERVAL,
        min_interval: float = 0.0,
        max_interval: float = 60.0,
        backoff: float = 1.0,
        max_repeats: int | None = None,
    ) -> None:
        if no_estimate_interval < NO_ESTIMATE_INTERVAL:
            raise ValueError("RFC 9132 §4.4: without an RTT estimate, at most one "
                             "Non-confirmable request every 3 seconds")
        if max_interval < no_estimate_interval:
            raise ValueError("max_interval must be at least no_estimate_interval")
        if backoff < 1.0:
            raise ValueError("backoff must be >= 1")
        if min_interval < 0:
            raise ValueError("min_interval must be >= 0")
        self.estimator = estimator
        self.no_estimate_interval = no_estimate_interval
        self.min_interval = min_interval
        self.max_interval = max_interval
        self.backoff = backoff
        self.max_repeats = max_repeats

    def interval(self, rtt: float | None = None) -> float:
        """The base interval between two sends of the same request."""
        floor = max(self.min_interval, rtt or 0.0)  # never more than one per RTT
        est = self.estimator
        if est is not None and est.srtt is not None:
            # RFC 9132 §4.4: "not more than one UDP datagram per RTT ... on average": the
            # smoothed RTT, not the RTO (RFC 6298's 1 s floor made it one a second, 20 times
            # fewer tries than allowed at 50 ms, when every try counts under loss).
            return max(est.srtt, floor)
        if rtt is not None and rtt > 0:
            return floor
        return max(self.no_estimate_interval, self.min_interval)

    def delay(self, attempts: int, rtt: float | None = None) -> float | None:
        """Delay before repetition number ``attempts + 1`` (``attempts`` repetitions sent)."""
        if self.max_repeats is not None and attempts >= self.max_repeats:
            return None
        base = self.interval(rtt)
        est = self.estimator
        if attempts == 0 and est is not None and est.srtt is not None:
            # The first copy's answer is due about one RTT plus its variation (RFC 6298 §2.3
            # without the 1 s floor, at most 2 SRTT): repeating at SRTT sharp crossed the
            # answer on a clean path whenever the server took a few ms.
            base = max(base, est.srtt + min(K * est.rttvar, est.srtt))
        if self.backoff == 1.0:
            return base
        # The cap never brings the delay under the base interval (the RTT / 3 s rules).
        return max(base, min(base * self.backoff ** attempts, self.max_interval))

    def __call__(self, request: ClientRequest, attempts: int, rtt: float | None
                 ) -> float | None:
        del request  # pacing depends on neither the message nor its size (RFC 9132 §4.4)
        return self.delay(attempts, rtt)
