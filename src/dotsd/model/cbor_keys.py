"""The DOTS signal channel CBOR key table (RFC 9132 §6), typed.

The numbers live only in the generated :mod:`dotsd.model._cbor_key_table` (from the spec pack's
``cbor-keys.tsv`` by ``scripts/gen_cbor_keys.py``); everything else asks this module.

How the mapping works (RFC 9132 §6, RFC 7951 §4):

* every parameter *name* has exactly one key, whatever its position in the message; a name is the
  RFC 7951 JSON member name, module-qualified where the node's module differs from its parent's
  (always at the top level). So ``acl-list`` (22, RFC 9132 conflict scope) and
  ``ietf-dots-signal-control:acl-list`` (53, RFC 9133, augmenting ``scope``) are different
  parameters, as are ``source-prefix`` (185, a telemetry talker) and
  ``ietf-dots-call-home:source-prefix`` (32768), or ``total-traffic`` (145) and
  ``ietf-dots-telemetry:total-traffic`` (204, augmenting ``scope``);
* the top-level names (``ietf-dots-signal-channel:mitigation-scope``, ``…:signal-config``,
  ``…:redirected-signal``, ``…:heartbeat``, ``ietf-dots-telemetry:telemetry-setup``,
  ``ietf-dots-telemetry:telemetry``) name the case of the structure's message-type choice;
* keys are comprehension-required or comprehension-optional by range (RFC 9132 §10.6.1.1 Table 8,
  which made 128-255 optional relative to RFC 8782 Table 7).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from dotsd.model._cbor_key_table import ENUMS, ROWS

__all__ = [
    "BY_KEY",
    "BY_NAME",
    "KEY_RANGES",
    "Comprehension",
    "Kind",
    "Param",
    "Scalar",
    "by_key",
    "by_name",
    "comprehension_of_key",
]


class Kind(StrEnum):
    """YANG node kind, which fixes the CBOR major type of the value (RFC 9132 §6 Table 5)."""

    CONTAINER = "container"  # 5 map
    LIST = "list"  # 4 array of maps
    LEAF_LIST = "leaf-list"  # 4 array of scalars
    LEAF = "leaf"  # scalar


class Scalar(StrEnum):
    """Value type of a leaf or of each leaf-list item: CBOR side / JSON side (RFC 7951 §6)."""

    STRING = "string"  # 3 text string / string
    UINT = "uint"  # 0 unsigned / number (uint8, uint16, uint32)
    UINT64 = "uint64"  # 0 unsigned / string (uint64, counter64, gauge64: RFC 7951 §6.1)
    INT = "int"  # 0 unsigned or 1 negative / number ('lifetime': uint32 | -1)
    ENUM = "enum"  # 0 unsigned (the enum value) / string (the label)
    DECIMAL64 = "decimal64"  # 6 tag 4 [-fraction-digits, integer] / string (RFC 7951 §6.1)
    BOOLEAN = "boolean"  # 7 simple 20/21 / false, true


class Comprehension(StrEnum):
    """RFC 9132 §6: unknown comprehension-optional keys can be ignored; unknown
    comprehension-required keys make the request fail with 4.00."""

    REQUIRED = "comprehension-required"
    OPTIONAL = "comprehension-optional"


# RFC 9132 §10.6.1.1, Table 8: (first, last, class). Keys are integers in 1-65535.
KEY_RANGES: Final[tuple[tuple[int, int, Comprehension], ...]] = (
    (1, 127, Comprehension.REQUIRED),  # IETF Review
    (128, 255, Comprehension.OPTIONAL),  # IETF Review
    (256, 16383, Comprehension.REQUIRED),  # IETF Review
    (16384, 32767, Comprehension.OPTIONAL),  # Specification Required
    (32768, 49151, Comprehension.OPTIONAL),  # IETF Review
    (49152, 65535, Comprehension.OPTIONAL),  # Private Use (vendor-specific)
)


def comprehension_of_key(key: int) -> Comprehension | None:
    """The class of ``key`` by its registry range, or None outside 1-65535 (RFC 9132 §10.6.1.1)."""
    for first, last, comprehension in KEY_RANGES:
        if first <= key <= last:
            return comprehension
    return None


@dataclass(frozen=True, slots=True)
class Param:
    """One row of the key table."""

    name: str  # JSON member name, e.g. "target-prefix" or "ietf-dots-call-home:source-prefix"
    key: int
    kind: Kind
    scalar: Scalar | None  # None for containers and lists
    low: int | None  # integer bounds of the base YANG type (UINT, UINT64, INT)
    high: int | None
    fraction_digits: int | None  # DECIMAL64
    comprehension: Comprehension
    cbor_major_type: str  # as printed in the RFC table, e.g. "4 array; items: 3 text string"
    json_type: str  # RFC 7951 JSON type the codec produces, e.g. "Array; items: String"
    table_json_type: str  # JSON type column of the RFC table (differs for 'retry-timer')
    yang_type: str
    source_rfc: str
    rfc_location: str
    labels: Mapping[int, str] | None  # ENUM: value -> label
    values: Mapping[str, int] | None  # ENUM: label -> value

    @property
    def module(self) -> str | None:
        """The module prefix of a qualified name, else None."""
        module, sep, _ = self.name.partition(":")
        return module if sep else None

    @property
    def local_name(self) -> str:
        return self.name.rpartition(":")[2]


def _load() -> tuple[Mapping[str, Param], Mapping[int, Param]]:
    by_name: dict[str, Param] = {}
    by_key: dict[int, Param] = {}
    for row in ROWS:
        (name, key, kind, scalar, low, high, digits, comp, major, json_type, table_json,
         yang_type, source, location) = row  # fmt: skip
        enum = ENUMS.get(name)
        param = Param(
            name=name,
            key=key,
            kind=Kind(kind),
            scalar=Scalar(scalar) if scalar is not None else None,
            low=low,
            high=high,
            fraction_digits=digits,
            comprehension=Comprehension(comp),
            cbor_major_type=major,
            json_type=json_type,
            table_json_type=table_json,
            yang_type=yang_type,
            source_rfc=source,
            rfc_location=location,
            labels=MappingProxyType({v: lbl for lbl, v in enum}) if enum else None,
            values=MappingProxyType(dict(enum)) if enum else None,
        )
        if name in by_name or key in by_key:  # RFC 9132 §6: one key per name, one name per key
            raise ValueError(f"duplicate CBOR key table entry {name} / {key}")
        by_name[name] = param
        by_key[key] = param
    return MappingProxyType(by_name), MappingProxyType(by_key)


_TABLES = _load()
BY_NAME: Final[Mapping[str, Param]] = _TABLES[0]
BY_KEY: Final[Mapping[int, Param]] = _TABLES[1]


def by_name(name: str) -> Param | None:
    return BY_NAME.get(name)


def by_key(key: int) -> Param | None:
    return BY_KEY.get(key)
