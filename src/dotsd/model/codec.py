"""DOTS signal channel bodies: JSON-shaped data <-> CBOR (RFC 9132 §6).

The JSON-shaped side is what RFC 7951 gives for the YANG data (the form of the RFC figures):
member names as in the key table, enumerations as labels, uint64 and decimal64 as strings,
uint8/16/32 as numbers, booleans. The CBOR side (``application/dots+cbor``, RFC 9132 §10.3) uses
integer map keys and the major types of RFC 9132 §6 Table 5: enumerations are unsigned integers,
uint64 values unsigned integers, decimal64 values tag 4 ``[-2, mantissa]`` (a decimal fraction,
RFC 8949 §3.4.4), booleans simple values 20/21.

Decoding is strict about types (a mismatch is a :class:`TypeMismatchError`, 4.00) and about
unknown keys by their class (RFC 9132 §6, §10.6.1.1 Table 8): an unknown comprehension-required
key fails the request with :class:`UnknownKeyError` (4.00, listing every such key); an unknown
comprehension-optional key, including the private-use range 49152-65535, is ignored ("DOTS agents
can safely ignore comprehension-optional values they don't understand") and reported in
:attr:`Decoded.ignored`. For any input bytes the decoder returns a dict or raises a
:class:`~dotsd.model.errors.ModelError`, nothing else.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Final

import cbor2

from dotsd.coap.numbers import Code
from dotsd.model.cbor_keys import BY_KEY, BY_NAME, Comprehension, Kind, Param, Scalar
from dotsd.model.cbor_keys import comprehension_of_key as _comprehension_of_key
from dotsd.model.errors import (
    EncodeError,
    MalformedError,
    TypeMismatchError,
    UnknownKeyError,
)

__all__ = [
    "DOTS_CBOR_TAG",
    "MAX_DEPTH",
    "MAX_SIZE",
    "Decoded",
    "IgnoredKey",
    "PayloadTooLargeError",
    "decode",
    "from_cbor",
    "to_cbor",
]

DOTS_CBOR_TAG: Final = 271
"""RFC 9132 §10.5: optional CBOR tag of a DOTS signal channel object; accepted, never sent."""

MAX_SIZE: Final = 256 * 1024
"""Default largest payload accepted (bytes); bodies are normally one datagram (RFC 9132 §4.4),
larger ones (telemetry, RFC 9244) arrive by block transfer (RFC 7959 / RFC 9177)."""

MAX_DEPTH: Final = 32
"""Default deepest CBOR nesting accepted; the deepest DOTS body (telemetry) nests about 10."""

TAG_DECIMAL_FRACTION: Final = 4  # RFC 8949 §3.4.4
MAX_EXPONENT: Final = 18  # decimal64 has at most 18 fraction digits (RFC 7950 §9.3.4)
INT64_MAX: Final = 2**63 - 1  # decimal64 mantissa range (RFC 7950 §9.3)

JSONObject = dict[str, Any]


class PayloadTooLargeError(MalformedError):
    """Payload over the size limit (4.13 Request Entity Too Large, RFC 9132 §9)."""

    coap_code = Code.REQUEST_ENTITY_TOO_LARGE


@dataclass(frozen=True, slots=True)
class IgnoredKey:
    """An unknown comprehension-optional key dropped while decoding (RFC 9132 §6)."""

    path: str  # JSON path of the map that held it
    key: int


@dataclass(frozen=True, slots=True)
class Decoded:
    value: JSONObject
    ignored: tuple[IgnoredKey, ...] = ()


# --------------------------------------------------------------------------------------------
# Encoding


_DECIMAL_TEXT = re.compile(r"-?[0-9]+(\.[0-9]+)?")  # YANG decimal64 lexical form (RFC 7950 §9.3.1)
_UINT_TEXT = re.compile(r"[0-9]+")  # RFC 7951 §6.1 uint64 string


def to_cbor(obj: Mapping[str, Any]) -> bytes:
    """Encode a JSON-shaped DOTS body (e.g. ``{"ietf-dots-signal-channel:mitigation-scope":
    {...}}``) to ``application/dots+cbor``. Map entries keep their order.

    Accepted values: as from :func:`from_cbor`, and for convenience ints for uint64 leaves,
    ints (registered values) for enumerations, and Decimal/int/float for decimal64.
    Raises :class:`EncodeError` for an unknown name or a value of the wrong type.
    """
    return cbor2.dumps(_encode_map(obj, ""))


def _encode_map(obj: Any, path: str) -> dict[int, Any]:
    if not isinstance(obj, Mapping):
        raise EncodeError(f"expected an object, got {type(obj).__name__}", path=path or "/")
    out: dict[int, Any] = {}
    for name, value in obj.items():
        param = BY_NAME.get(name) if isinstance(name, str) else None
        here = f"{path}/{name}"
        if param is None:
            raise EncodeError("no CBOR key for this name (RFC 9132 §6)", path=here)
        out[param.key] = _encode_value(param, value, here)
    return out


def _encode_value(param: Param, value: Any, path: str) -> Any:
    if param.kind is Kind.CONTAINER:
        return _encode_map(value, path)
    if param.kind is Kind.LEAF:
        return _encode_scalar(param, value, path)
    if not isinstance(value, list | tuple):
        raise EncodeError(f"expected an array, got {type(value).__name__}", path=path)
    if param.kind is Kind.LIST:
        return [_encode_map(entry, f"{path}/{i}") for i, entry in enumerate(value)]
    return [_encode_scalar(param, item, f"{path}/{i}") for i, item in enumerate(value)]


def _encode_scalar(param: Param, value: Any, path: str) -> Any:
    scalar = param.scalar
    if scalar is Scalar.STRING and isinstance(value, str):
        return value
    if scalar is Scalar.BOOLEAN and isinstance(value, bool):
        return value
    if scalar in (Scalar.UINT, Scalar.INT, Scalar.UINT64):
        number: Any = value
        if scalar is Scalar.UINT64 and isinstance(value, str) and _UINT_TEXT.fullmatch(value):
            number = int(value)
        if _is_int(number) and _in_bounds(param, number):
            return number
    if scalar is Scalar.ENUM and param.values is not None and param.labels is not None:
        if isinstance(value, str) and value in param.values:
            return param.values[value]
        if _is_int(value) and value in param.labels:
            return value
    if scalar is Scalar.DECIMAL64:
        mantissa = _decimal_mantissa(param, value)
        if mantissa is not None:
            digits = param.fraction_digits or 0
            return cbor2.CBORTag(TAG_DECIMAL_FRACTION, [-digits, mantissa])
    raise EncodeError(f"{value!r} is not a valid {_describe_type(param)}", path=path)


def _decimal_mantissa(param: Param, value: Any) -> int | None:
    """The integer m with value = m * 10**-fraction_digits, if exact and in decimal64 range."""
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, str):
            if not _DECIMAL_TEXT.fullmatch(value):
                return None
            number = Decimal(value)
        elif isinstance(value, Decimal | int):
            number = Decimal(value)
        elif isinstance(value, float):
            number = Decimal(repr(value))
        else:
            return None
        if not number.is_finite():
            return None
        scaled = number.scaleb(param.fraction_digits or 0)
        if scaled != scaled.to_integral_value():
            return None
        mantissa = int(scaled)
    except (InvalidOperation, ValueError, OverflowError):
        return None
    return mantissa if -INT64_MAX - 1 <= mantissa <= INT64_MAX else None


# --------------------------------------------------------------------------------------------
# Decoding


class _Tagged:
    """A CBOR tag the decoder does not turn into a Python value (always a type mismatch,
    except tag 4 on decimal64 leaves and tag 271 around the whole body)."""

    __slots__ = ("tag", "value")

    def __init__(self, tag: int, value: Any) -> None:
        self.tag = tag
        self.value = value


def _keep_tag(tag: int) -> Any:
    def decoder(value: Any, immutable: bool) -> _Tagged:
        return _Tagged(tag, value)

    return decoder


# Every tag cbor2 6 decodes itself (dates, bignums, decimal fractions, bigfloats, string and
# shared references, regexes, MIME, UUIDs, sets, IP addresses, ...), plus 271: keep them as
# _Tagged so that no Python object other than dict/list/str/int/bool reaches the type checks,
# and shared references (tags 28/29) cannot build cyclic structures.
_SEMANTIC_DECODERS: Final = {
    tag: _keep_tag(tag)
    for tag in (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260, 261,
                1004, 43000, 55799, DOTS_CBOR_TAG)
}  # fmt: skip


def from_cbor(
    data: bytes | bytearray | memoryview, *, max_size: int = MAX_SIZE, max_depth: int = MAX_DEPTH
) -> JSONObject:
    """Decode an ``application/dots+cbor`` body to its JSON-shaped form (see :func:`decode`)."""
    return decode(data, max_size=max_size, max_depth=max_depth).value


def decode(
    data: bytes | bytearray | memoryview, *, max_size: int = MAX_SIZE, max_depth: int = MAX_DEPTH
) -> Decoded:
    """Decode an ``application/dots+cbor`` body; unknown comprehension-optional keys are
    dropped and listed in :attr:`Decoded.ignored`.

    Raises :class:`PayloadTooLargeError` (4.13), :class:`MalformedError`,
    :class:`TypeMismatchError` or :class:`UnknownKeyError` (4.00).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedError(f"payload must be bytes, got {type(data).__name__}")
    raw = bytes(data)
    if len(raw) > max_size:
        raise PayloadTooLargeError(f"payload of {len(raw)} bytes exceeds {max_size}")
    if not raw:
        raise MalformedError("empty payload: a DOTS body is a CBOR map (RFC 9132 §6)")
    item = _load_one_item(raw, max_depth)
    if isinstance(item, _Tagged) and item.tag == DOTS_CBOR_TAG:
        item = item.value  # RFC 9132 §10.5
    walker = _Decoder()
    value = walker.map(item, "")
    if walker.unknown_required:
        keys = [key for _, key in walker.unknown_required]
        paths = [path or "/" for path, _ in walker.unknown_required]
        raise UnknownKeyError(keys, paths=paths)
    return Decoded(value, tuple(walker.ignored))


def _load_one_item(raw: bytes, max_depth: int) -> Any:
    """Exactly one well-formed CBOR data item (RFC 8949 §5.1), without duplicate map keys."""
    try:
        item, consumed = _cbor_loads_with_length(raw, max_depth)
    except Exception as exc:  # cbor2 raises CBORDecodeError, but guard against anything
        raise MalformedError(f"not well-formed CBOR: {exc}") from None
    if consumed != len(raw):
        raise MalformedError(f"{len(raw) - consumed} byte(s) after the CBOR data item")
    return item


def _cbor_loads_with_length(raw: bytes, max_depth: int) -> tuple[Any, int]:
    stream = io.BytesIO(raw)
    decoder = cbor2.CBORDecoder(
        stream,
        semantic_decoders=_SEMANTIC_DECODERS,
        max_depth=max_depth,
        allow_duplicate_keys=False,  # RFC 8949 §5.6: a map with duplicate keys is not valid
        str_errors="strict",
    )
    item = decoder.decode()
    return item, stream.tell()


class _Decoder:
    """Walks a decoded CBOR item, mapping keys to names and checking types (RFC 9132 §6)."""

    def __init__(self) -> None:
        self.ignored: list[IgnoredKey] = []
        self.unknown_required: list[tuple[str, int]] = []

    def map(self, item: Any, path: str) -> JSONObject:
        if not isinstance(item, Mapping):
            raise TypeMismatchError(
                f"expected a CBOR map, got {_cbor_type(item)}", path=path or "/"
            )
        out: JSONObject = {}
        for key, value in item.items():
            if not _is_int(key):
                raise TypeMismatchError(
                    f"map key {_cbor_type(key)} is not an integer CBOR key (RFC 9132 §6)",
                    path=path or "/",
                )
            param = BY_KEY.get(key)
            if param is None:
                comprehension = _comprehension_of_key(key)
                if comprehension is None:
                    raise TypeMismatchError(
                        f"CBOR key {key} outside 1-65535 (RFC 9132 §10.6.1.1)", path=path or "/"
                    )
                if comprehension is Comprehension.REQUIRED:
                    self.unknown_required.append((path, key))
                else:
                    self.ignored.append(IgnoredKey(path or "/", key))
                continue
            here = f"{path}/{param.name}"
            out[param.name] = self.value(param, value, here)
        return out

    def value(self, param: Param, item: Any, path: str) -> Any:
        if param.kind is Kind.CONTAINER:
            return self.map(item, path)
        if param.kind is Kind.LEAF:
            return _decode_scalar(param, item, path)
        if not isinstance(item, list):
            raise TypeMismatchError(
                f"expected an array ({param.cbor_major_type}), got {_cbor_type(item)}", path=path
            )
        if param.kind is Kind.LIST:
            return [self.map(entry, f"{path}/{i}") for i, entry in enumerate(item)]
        return [_decode_scalar(param, entry, f"{path}/{i}") for i, entry in enumerate(item)]


def _decode_scalar(param: Param, item: Any, path: str) -> Any:
    scalar = param.scalar
    if scalar is Scalar.STRING and isinstance(item, str):
        return item
    if scalar is Scalar.BOOLEAN and isinstance(item, bool):
        return item
    if _is_int(item):
        if scalar in (Scalar.UINT, Scalar.INT) and _in_bounds(param, item):
            return item
        if scalar is Scalar.UINT64 and _in_bounds(param, item):
            return str(item)  # RFC 7951 §6.1
        if scalar is Scalar.ENUM and param.labels is not None:
            label = param.labels.get(item)
            if label is not None:
                return label
            raise TypeMismatchError(
                f"{item} is not a registered value of '{param.name}'", path=path
            )
    if scalar is Scalar.DECIMAL64 and isinstance(item, _Tagged):
        text = _decimal_text(param, item)
        if text is not None:
            return text
    raise TypeMismatchError(
        f"expected {_describe_type(param)}, got {_cbor_type(item)}", path=path
    )


def _decimal_text(param: Param, item: _Tagged) -> str | None:
    """RFC 8949 §3.4.4 decimal fraction → YANG decimal64 string with exactly fraction-digits
    digits (RFC 7951 §6.1, as in RFC 9132 Figure 20: "2.00")."""
    if item.tag != TAG_DECIMAL_FRACTION or not isinstance(item.value, list):
        return None
    if len(item.value) != 2 or not all(_is_int(v) for v in item.value):
        return None
    exponent, mantissa = item.value
    if not -MAX_EXPONENT <= exponent <= MAX_EXPONENT or abs(mantissa) > 2**64:
        return None
    digits = param.fraction_digits or 0
    scaled = Decimal(mantissa).scaleb(exponent + digits)
    if scaled != scaled.to_integral_value():
        return None  # more fraction digits than the YANG type has
    scaled_int = int(scaled)
    if not -INT64_MAX - 1 <= scaled_int <= INT64_MAX:
        return None
    return f"{Decimal(scaled_int).scaleb(-digits):f}"


# --------------------------------------------------------------------------------------------
# Helpers


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _in_bounds(param: Param, value: int) -> bool:
    low = param.low if param.low is not None else 0
    return low <= value and (param.high is None or value <= param.high)


def _describe_type(param: Param) -> str:
    scalar = param.scalar
    if scalar is Scalar.ENUM and param.values is not None:
        return f"'{param.name}' enumeration ({', '.join(param.values)})"
    if scalar in (Scalar.UINT, Scalar.INT, Scalar.UINT64):
        return f"'{param.name}' integer in {param.low}..{param.high} ({param.yang_type})"
    if scalar is Scalar.DECIMAL64:
        return f"'{param.name}' decimal64 with {param.fraction_digits} fraction digits"
    return f"'{param.name}' {scalar} ({param.cbor_major_type})"


def _cbor_type(item: Any) -> str:
    if isinstance(item, bool):
        return "a boolean"
    if isinstance(item, int):
        return "an unsigned integer" if item >= 0 else "a negative integer"
    if isinstance(item, str):
        return "a text string"
    if isinstance(item, bytes):
        return "a byte string"
    if isinstance(item, list):
        return "an array"
    if isinstance(item, Mapping):
        return "a map"
    if isinstance(item, float):
        return "a float"
    if isinstance(item, _Tagged):
        return f"tag {item.tag}"
    if isinstance(item, cbor2.CBORTag):
        return f"tag {item.tag}"
    if item is None:
        return "null"
    return f"a {type(item).__name__}"
