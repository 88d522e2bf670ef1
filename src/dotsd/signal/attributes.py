"""The negotiable attributes of the DOTS signal channel session configuration (RFC 9132
§4.5.1), alone in a module: the command line builds its options from them without loading
the rest of :mod:`dotsd.signal.config`."""

from __future__ import annotations

from enum import Enum

__all__ = ["Attribute"]


class Attribute(Enum):
    """The negotiable attributes of RFC 9132 §4.5.1 (grouping ``config-parameters``)."""

    HEARTBEAT_INTERVAL = "heartbeat-interval"
    MISSING_HB_ALLOWED = "missing-hb-allowed"
    PROBING_RATE = "probing-rate"
    MAX_RETRANSMIT = "max-retransmit"
    ACK_TIMEOUT = "ack-timeout"
    ACK_RANDOM_FACTOR = "ack-random-factor"

    @property
    def is_decimal(self) -> bool:
        """decimal64 attributes use the ``*-value-decimal`` leaves (RFC 9132 §5.3)."""
        return self in (Attribute.ACK_TIMEOUT, Attribute.ACK_RANDOM_FACTOR)

    @property
    def field_name(self) -> str:
        return self.value.replace("-", "_")

    @property
    def transmission_related(self) -> bool:
        """RFC 9132 §4.5: 'missing-hb-allowed' and the signal loss ratio parameters are
        negotiated only for DOTS over unreliable transports."""
        return self in (Attribute.MISSING_HB_ALLOWED, Attribute.MAX_RETRANSMIT,
                        Attribute.ACK_TIMEOUT, Attribute.ACK_RANDOM_FACTOR)

    def leaf(self, which: str) -> str:
        """``current-value`` / ``min-value`` / ``max-value``, ``-decimal`` for decimal64."""
        return f"{which}-value-decimal" if self.is_decimal else f"{which}-value"
