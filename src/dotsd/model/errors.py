"""Typed errors of the DOTS data model layer.

Every failure of the codec (:mod:`dotsd.model.codec`) or of YANG validation
(:mod:`dotsd.model.yang`) is a :class:`ModelError`. It carries the CoAP response code a DOTS
server answers with (RFC 9132 §9) and a diagnostic message suitable for the plain-text
diagnostic payload of that response (RFC 7252 §5.5.2; RFC 9132 §6: "The 4.00 response SHOULD
include a diagnostic payload describing the unknown comprehension-required CBOR key values").
"""

from __future__ import annotations

from collections.abc import Sequence

from dotsd.coap.numbers import Code
from dotsd.errors import DotsdError, LocalError, PeerError


class ModelError(DotsdError):
    """A DOTS message body could not be decoded, encoded or validated.

    ``coap_code`` is the response code a DOTS server sends for it; ``path`` locates the
    offending node (``/ietf-dots-signal-channel:mitigation-scope/scope/0/lifetime``) when known.
    The subclasses say whose fault it is (:mod:`dotsd.errors`): a peer's body that does not
    decode or validate is a :class:`PeerError`; our own data that cannot be encoded
    (:class:`EncodeError`) a :class:`LocalError`.
    """

    coap_code: Code = Code.BAD_REQUEST

    def __init__(self, message: str, *, path: str | None = None) -> None:
        self.message = message
        self.path = path
        super().__init__(self.diagnostic)

    @property
    def diagnostic(self) -> str:
        """Human-readable text for a CoAP diagnostic payload."""
        return f"{self.path}: {self.message}" if self.path else self.message


class MalformedError(PeerError, ModelError):
    """Not well-formed CBOR, too large or nested too deeply (4.00, RFC 9132 §9)."""


class UnknownKeyError(PeerError, ModelError):
    """The body holds comprehension-required CBOR keys this agent does not know.

    RFC 9132 §6: such a request cannot be processed; the 4.00 response SHOULD list the keys.
    """

    def __init__(self, keys: Sequence[int], *, paths: Sequence[str] = ()) -> None:
        self.keys = tuple(keys)
        self.paths = tuple(paths)
        listed = ", ".join(str(k) for k in self.keys)
        where = f" at {', '.join(self.paths)}" if self.paths else ""
        super().__init__(f"unknown comprehension-required CBOR key(s) {listed}{where}")


class TypeMismatchError(PeerError, ModelError):
    """A value does not have the CBOR major type / JSON type of RFC 9132 §6 Table 5 (4.00)."""


class EncodeError(LocalError, ModelError):
    """Our own JSON-shaped data cannot be mapped to CBOR (unknown name or wrong type).

    This is a local programming error rather than a peer's, hence 5.00 (RFC 7252 §5.9.3.1).
    """

    coap_code = Code.INTERNAL_SERVER_ERROR


class ValidationError(PeerError, ModelError):
    """A JSON-shaped instance does not conform to the DOTS YANG modules (4.00, RFC 9132 §9)."""
