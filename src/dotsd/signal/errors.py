"""Errors of the DOTS signal channel layer, each one a CoAP response (RFC 9132 §9).

A :class:`SignalError` carries the response code, a diagnostic text for the plain-text
diagnostic payload (RFC 7252 §5.5.2; RFC 9132 §9: "there may be an additional plain text
diagnostic payload") and, for the errors whose body RFC 9132 defines, a JSON-shaped body to be
encoded as ``application/dots+cbor``: 4.09 (Conflict) carries ``conflict-information``
(RFC 9132 §4.4.1.3, §9), 5.03 (Service Unavailable) may carry a redirection (RFC 9132 §4.6).

The layer is a DOTS *server's*: these are a peer's mistakes (or the server's refusals of its
requests), hence :class:`~dotsd.errors.PeerError`; never programming errors, which are
:class:`~dotsd.errors.LocalError` (e.g. :class:`~dotsd.signal.lifecycle.InvalidTransition`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from dotsd.coap.numbers import Code, code_dotted
from dotsd.errors import PeerError
from dotsd.model.errors import ModelError

__all__ = [
    "BadRequest",
    "Conflict",
    "NotFound",
    "ServiceUnavailable",
    "SignalError",
    "Unauthorized",
    "from_model_error",
]


class SignalError(PeerError):
    """A request the DOTS server answers with an error response.

    ``code`` is the CoAP response code; ``diagnostic`` the plain-text diagnostic payload;
    ``body`` a JSON-shaped ``application/dots+cbor`` body when the RFC defines one (else None);
    ``rule`` the RFC rule that was applied, e.g. ``"RFC 9132 §4.4.1.3"`` (for logs).
    """

    default_code: ClassVar[Code] = Code.BAD_REQUEST

    def __init__(
        self,
        code: Code | None,
        diagnostic: str,
        *,
        body: Mapping[str, Any] | None = None,
        rule: str | None = None,
        max_age: int | None = None,
    ) -> None:
        self.code: Code = code if code is not None else self.default_code
        self.diagnostic = diagnostic
        self.body = dict(body) if body is not None else None
        self.rule = rule
        self.max_age = max_age
        super().__init__(f"{self.code_text}: {diagnostic}" + (f" ({rule})" if rule else ""))

    @property
    def code_text(self) -> str:
        """``"4.09"`` style text of :attr:`code`."""
        return code_dotted(self.code)


class BadRequest(SignalError):
    """4.00: the request violates the DOTS protocol (RFC 9132 §9, §4.4.1.3)."""

    default_code = Code.BAD_REQUEST

    def __init__(self, diagnostic: str, *, rule: str | None = None) -> None:
        super().__init__(None, diagnostic, rule=rule)


class Unauthorized(SignalError):
    """4.01: the DOTS client is not authorized to access the DOTS server (RFC 9132 §9, §8)."""

    default_code = Code.UNAUTHORIZED

    def __init__(self, diagnostic: str, *, rule: str | None = None) -> None:
        super().__init__(None, diagnostic, rule=rule)


class NotFound(SignalError):
    """4.04: unknown 'mid' (or no mitigation at all for a GET, RFC 9132 §4.4.2, §9)."""

    default_code = Code.NOT_FOUND

    def __init__(self, diagnostic: str, *, rule: str | None = None) -> None:
        super().__init__(None, diagnostic, rule=rule)


class Conflict(SignalError):
    """4.09 with a ``conflict-information`` body (RFC 9132 §4.4.1.3, §9)."""

    default_code = Code.CONFLICT

    def __init__(
        self, diagnostic: str, *, body: Mapping[str, Any], rule: str | None = None
    ) -> None:
        super().__init__(None, diagnostic, body=body, rule=rule)


class ServiceUnavailable(SignalError):
    """5.03: the server cannot handle the request now (RFC 9132 §9, §4.4.3); ``max_age`` is the
    Max-Age Option telling when to retry (RFC 7252 §5.9.3.4), ``body`` an optional redirection
    (RFC 9132 §4.6)."""

    default_code = Code.SERVICE_UNAVAILABLE

    def __init__(
        self,
        diagnostic: str,
        *,
        max_age: int | None = None,
        body: Mapping[str, Any] | None = None,
        rule: str | None = None,
    ) -> None:
        super().__init__(None, diagnostic, body=body, rule=rule, max_age=max_age)


def from_model_error(exc: ModelError) -> SignalError:
    """A codec / YANG error as the response the DOTS server sends (4.00, 4.13, ...)."""
    return SignalError(exc.coap_code, exc.diagnostic, rule="RFC 9132 §6, §9")
