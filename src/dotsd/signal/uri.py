"""The Uri-Path and Uri-Query of the mitigation resource (RFC 9132 §4.2, §4.4).

A request to ``/.well-known/dots/mitigate`` names its resource by Uri-Path options after the
operation path, each ``name=value``:

* ``cdid=`` — optional, inserted by a server-domain DOTS gateway; "When present, 'cdid' MUST
  be positioned before 'cuid'" (RFC 9132 §4.4.1.2);
* ``cuid=`` — mandatory for PUT, GET and DELETE (RFC 9132 §4.4.1.1, §4.4.2, §4.4.4);
* ``mid=`` — an integer; "'mid' MUST follow 'cuid'" (RFC 9132 §4.4.1.1); mandatory for PUT and
  DELETE, optional for GET (absent = all mitigations of the client, RFC 9132 §4.4.2).

"Uri-Path parameters with empty values MUST NOT be present in a request" (RFC 9132 §4.4.1.1,
§4.4.2, §4.4.4). Each parameter appears at most once. Violations are 4.00 (Bad Request): "If
the request ... does not include 'cuid' or 'mid' Uri-Path options ... the DOTS server MUST reply
with 4.00" (RFC 9132 §4.4.1.3), likewise for DELETE (§4.4.4).

The Uri-Query ``c=`` (content selection, RFC 9132 §4.4.2 Table 2: ``c`` configuration only,
``n`` non-configuration only, ``a`` all, the default) only makes sense on GET; the server "MAY
support this optional filtering capability" — it is parsed here and applied by
:meth:`dotsd.signal.mitigation.MitigationTable.get`. On other methods it is ignored.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Final

from dotsd.coap.numbers import Code
from dotsd.signal.errors import BadRequest, NotFound

__all__ = [
    "MAX_MID",
    "MITIGATE_PATH",
    "Content",
    "MitigateUri",
    "mitigate_path",
    "parse_mitigate_uri",
]

MITIGATE_PATH: Final = (".well-known", "dots", "mitigate")  # RFC 9132 §4.2 Table 1

MAX_MID: Final = 2**32 - 1  # 'mid' is a uint32 (RFC 9132 §5.3 leaf mid; §4.4.1.1 rollover)

# 'cuid' / 'cdid' sanity. RFC 9132 §4.4.1.1: SHOULD be 22 characters (base64url of a 16-byte
# hash), but another generation method is allowed ("e.g., using [RFC4122]", Figure 11 uses 22
# hex digits). Accepted: 1..128 URI "unreserved" characters (RFC 3986 §2.3), which covers
# base64url and UUID text and keeps the Uri-Path option (max 255 bytes, RFC 7252 §5.10) sane.
MAX_ID_LENGTH: Final = 128
_ID_RE: Final = re.compile(rf"[A-Za-z0-9._~-]{{1,{MAX_ID_LENGTH}}}")
_MID_RE: Final = re.compile(r"[0-9]{1,10}")

_ORDER: Final = {"cdid": 0, "cuid": 1, "mid": 2}  # RFC 9132 §4.4.1.1/§4.4.1.2 order


class Content(Enum):
    """RFC 9132 §4.4.2 Table 2: values of the 'c' Uri-Query parameter."""

    CONFIG = "c"
    NON_CONFIG = "n"
    ALL = "a"


@dataclass(frozen=True, slots=True)
class MitigateUri:
    """A parsed mitigation resource name."""

    cuid: str
    mid: int | None = None
    cdid: str | None = None
    content: Content = Content.ALL


def mitigate_path(cuid: str, mid: int | None = None, cdid: str | None = None) -> tuple[str, ...]:
    """The Uri-Path options naming a mitigation (client side / tests)."""
    path = list(MITIGATE_PATH)
    if cdid is not None:
        path.append(f"cdid={cdid}")
    path.append(f"cuid={cuid}")
    if mid is not None:
        path.append(f"mid={mid}")
    return tuple(path)


def _check_id(name: str, value: str) -> str:
    if not _ID_RE.fullmatch(value):
        raise BadRequest(
            f"'{name}' must be 1..{MAX_ID_LENGTH} unreserved URI characters "
            f"(base64url recommended), got {value!r}",
            rule="RFC 9132 §4.4.1.1",
        )
    return value


def _parse_mid(value: str) -> int:
    if not _MID_RE.fullmatch(value) or int(value) > MAX_MID:
        raise BadRequest(
            f"'mid' must be an unsigned 32-bit decimal integer, got {value!r}",
            rule="RFC 9132 §4.4.1.1",
        )
    return int(value)


def _parse_query(query: Sequence[str]) -> Content:
    content: Content | None = None
    for option in query:
        name, eq, value = option.partition("=")
        if name != "c" or not eq:
            raise BadRequest(f"unsupported Uri-Query {option!r}", rule="RFC 9132 §4.4.2")
        if content is not None:
            raise BadRequest("'c' Uri-Query given more than once", rule="RFC 9132 §4.4.2")
        try:
            content = Content(value)
        except ValueError:
            raise BadRequest(
                f"'c' must be one of c, n, a; got {value!r}", rule="RFC 9132 §4.4.2 Table 2"
            ) from None
    return content if content is not None else Content.ALL


def parse_mitigate_uri(
    path: Sequence[str], query: Sequence[str] = (), *, method: Code = Code.GET
) -> MitigateUri:
    """Parse the Uri-Path options (all of them, ``.well-known`` first) and Uri-Query options of
    a request to the mitigation resource.

    Raises :class:`NotFound` (4.04) if the path is not under ``/.well-known/dots/mitigate`` and
    :class:`BadRequest` (4.00) for every violation of the rules in the module docstring.
    """
    if tuple(path[: len(MITIGATE_PATH)]) != MITIGATE_PATH:
        raise NotFound("not the mitigation resource", rule="RFC 9132 §4.2")
    values: dict[str, str] = {}
    last = -1
    for segment in path[len(MITIGATE_PATH) :]:
        name, eq, value = segment.partition("=")
        if not eq or name not in _ORDER:
            raise BadRequest(
                f"unexpected Uri-Path {segment!r}: expected cdid=, cuid=, mid=",
                rule="RFC 9132 §4.4.1.1",
            )
        if not value:
            raise BadRequest(
                f"Uri-Path parameter '{name}' has an empty value", rule="RFC 9132 §4.4.1.1"
            )
        if name in values:
            raise BadRequest(f"Uri-Path parameter '{name}' repeated", rule="RFC 9132 §4.4.1.1")
        if _ORDER[name] < last:
            rule = "RFC 9132 §4.4.1.2" if name == "cdid" else "RFC 9132 §4.4.1.1"
            raise BadRequest(
                "Uri-Path order must be cdid, cuid, mid ('mid' MUST follow 'cuid', "
                "'cdid' MUST be positioned before 'cuid')",
                rule=rule,
            )
        last = _ORDER[name]
        values[name] = value
    if "cuid" not in values:
        raise BadRequest("mandatory Uri-Path parameter 'cuid' missing", rule="RFC 9132 §4.4.1.3")
    if "mid" not in values and method in (Code.PUT, Code.DELETE):
        raise BadRequest(
            "mandatory Uri-Path parameter 'mid' missing",
            rule="RFC 9132 §4.4.4" if method == Code.DELETE else "RFC 9132 §4.4.1.3",
        )
    cuid = _check_id("cuid", values["cuid"])
    cdid = _check_id("cdid", values["cdid"]) if "cdid" in values else None
    mid = _parse_mid(values["mid"]) if "mid" in values else None
    content = _parse_query(query) if method == Code.GET else Content.ALL
    return MitigateUri(cuid=cuid, mid=mid, cdid=cdid, content=content)
