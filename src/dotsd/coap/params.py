"""Transmission parameters (RFC 7252 §4.8), per peer and changeable at run time.

DOTS negotiates them per session (RFC 9132 §4.5), so every peer of an endpoint has its own
instance; derived values (§4.8.2) are computed from the current base values.
"""

from __future__ import annotations

from dataclasses import dataclass

from dotsd.coap import numbers


@dataclass(slots=True)
class TransmissionParameters:
    ack_timeout: float = numbers.ACK_TIMEOUT
    ack_random_factor: float = numbers.ACK_RANDOM_FACTOR
    max_retransmit: int = numbers.MAX_RETRANSMIT
    nstart: int = numbers.NSTART
    probing_rate: float = numbers.PROBING_RATE  # bytes per second
    default_leisure: float = numbers.DEFAULT_LEISURE
    max_latency: float = numbers.MAX_LATENCY

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.ack_timeout <= 0:
            raise ValueError("ack_timeout must be positive")
        if self.ack_random_factor < 1.0:
            raise ValueError("ack_random_factor must be at least 1.0")
        if not 0 <= self.max_retransmit <= 15:
            raise ValueError("max_retransmit must be within 0..15")
        if self.nstart < 1:
            raise ValueError("nstart must be at least 1")
        if self.probing_rate <= 0:
            raise ValueError("probing_rate must be positive")

    def copy(self) -> TransmissionParameters:
        return TransmissionParameters(self.ack_timeout, self.ack_random_factor,
                                      self.max_retransmit, self.nstart, self.probing_rate,
                                      self.default_leisure, self.max_latency)

    # RFC 7252 §4.8.2 derived time values.
    @property
    def max_transmit_span(self) -> float:
        return self.ack_timeout * ((1 << self.max_retransmit) - 1) * self.ack_random_factor

    @property
    def max_transmit_wait(self) -> float:
        return self.ack_timeout * ((1 << (self.max_retransmit + 1)) - 1) * self.ack_random_factor

    @property
    def processing_delay(self) -> float:
        return self.ack_timeout

    @property
    def max_rtt(self) -> float:
        return 2 * self.max_latency + self.processing_delay

    @property
    def exchange_lifetime(self) -> float:
        return self.max_transmit_span + 2 * self.max_latency + self.processing_delay

    @property
    def non_lifetime(self) -> float:
        return self.max_transmit_span + self.max_latency


def dots_defaults() -> TransmissionParameters:
    """RFC 9132 §4.5.2 defaults: ack-timeout 2 s, max-retransmit 3, probing-rate 5 B/s."""
    return TransmissionParameters(ack_timeout=2.0, ack_random_factor=1.5, max_retransmit=3,
                                  probing_rate=5.0)
