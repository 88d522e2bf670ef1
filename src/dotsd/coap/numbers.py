"""CoAP vocabulary: message types, codes, option numbers, content formats.

Names and values from RFC 7252 §12, RFC 7641 §7, RFC 7959 §2.1, RFC 8323 §5 and RFC 9132 §10.4.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum
from types import MappingProxyType


class MessageType(IntEnum):
    """RFC 7252 §3: the 2-bit message type."""

    CON = 0
    NON = 1
    ACK = 2
    RST = 3


def make_code(cls: int, detail: int) -> int:
    """RFC 7252 §3: a code is class (3 bits) and detail (5 bits), written c.dd."""
    return (cls << 5) | detail


class Code(IntEnum):
    """Method, response and (RFC 8323) signaling codes."""

    EMPTY = 0
    GET = 1
    POST = 2
    PUT = 3
    DELETE = 4
    FETCH = 5
    PATCH = 6
    IPATCH = 7

    CREATED = make_code(2, 1)
    DELETED = make_code(2, 2)
    VALID = make_code(2, 3)
    CHANGED = make_code(2, 4)
    CONTENT = make_code(2, 5)
    CONTINUE = make_code(2, 31)

    BAD_REQUEST = make_code(4, 0)
    UNAUTHORIZED = make_code(4, 1)
    BAD_OPTION = make_code(4, 2)
    FORBIDDEN = make_code(4, 3)
    NOT_FOUND = make_code(4, 4)
    METHOD_NOT_ALLOWED = make_code(4, 5)
    NOT_ACCEPTABLE = make_code(4, 6)
    REQUEST_ENTITY_INCOMPLETE = make_code(4, 8)
    CONFLICT = make_code(4, 9)
    PRECONDITION_FAILED = make_code(4, 12)
    REQUEST_ENTITY_TOO_LARGE = make_code(4, 13)
    UNSUPPORTED_CONTENT_FORMAT = make_code(4, 15)
    UNPROCESSABLE_ENTITY = make_code(4, 22)
    TOO_MANY_REQUESTS = make_code(4, 29)

    INTERNAL_SERVER_ERROR = make_code(5, 0)
    NOT_IMPLEMENTED = make_code(5, 1)
    BAD_GATEWAY = make_code(5, 2)
    SERVICE_UNAVAILABLE = make_code(5, 3)
    GATEWAY_TIMEOUT = make_code(5, 4)
    PROXYING_NOT_SUPPORTED = make_code(5, 5)
    HOP_LIMIT_REACHED = make_code(5, 8)

    # RFC 8323 §5: signaling codes, 7.xx, only on reliable transports.
    CSM = make_code(7, 1)
    PING = make_code(7, 2)
    PONG = make_code(7, 3)
    RELEASE = make_code(7, 4)
    ABORT = make_code(7, 5)


def code_class(code: int) -> int:
    return code >> 5


def is_request(code: int) -> bool:
    return 1 <= code <= 31


def is_response(code: int) -> bool:
    return 64 <= code < 192


def is_success(code: int) -> bool:
    """A 2.xx Success response (RFC 7252 §5.9.1): the only class that registers or keeps an
    Observe relationship (RFC 7641 §3.2, §4.1)."""
    return 64 <= code < 96


def code_dotted(code: int) -> str:
    """A code as RFC 7252 writes it: "4.04"."""
    return f"{code >> 5}.{code & 0x1F:02d}"


def code_str(code: int) -> str:
    """Render a code as RFC 7252 writes it ("4.04"), with its name when known."""
    text = code_dotted(code)
    try:
        return f"{text} {Code(code).name}"
    except ValueError:
        return text


class OptionNumber(IntEnum):
    """RFC 7252 §5.10, RFC 7641 §2, RFC 7959 §2.1, RFC 9177 §4, RFC 8768 §3, RFC 7967."""

    IF_MATCH = 1
    URI_HOST = 3
    ETAG = 4
    IF_NONE_MATCH = 5
    OBSERVE = 6
    URI_PORT = 7
    LOCATION_PATH = 8
    OSCORE = 9
    URI_PATH = 11
    CONTENT_FORMAT = 12
    MAX_AGE = 14
    URI_QUERY = 15
    HOP_LIMIT = 16
    ACCEPT = 17
    Q_BLOCK1 = 19
    LOCATION_QUERY = 20
    BLOCK2 = 23
    BLOCK1 = 27
    SIZE2 = 28
    Q_BLOCK2 = 31
    PROXY_URI = 35
    PROXY_SCHEME = 39
    SIZE1 = 60
    NO_RESPONSE = 258


def is_critical(number: int) -> bool:
    """RFC 7252 §5.4.6: odd option numbers are critical."""
    return bool(number & 1)


# Options this engine knows by name (OptionNumber).
KNOWN_OPTIONS: frozenset[int] = frozenset(int(o) for o in OptionNumber)

# The options this engine implements, each with its length range in bytes (RFC 7252 §5.10,
# RFC 7641 §2, RFC 7959 §2.1 and §4, RFC 8768 §3, RFC 7967 §2). An option outside its range
# is treated like an unrecognized option (RFC 7252 §5.4.3): critical, a request with it is
# 4.02; elective, it is ignored. Known but not implemented, so unrecognized: OSCORE
# (RFC 8613), Q-Block1 and Q-Block2 (RFC 9177 §9), all critical (RFC 7252 §5.4.1: 4.02).
OPTION_LENGTHS: Mapping[int, tuple[int, int]] = MappingProxyType({
    OptionNumber.IF_MATCH: (0, 8),
    OptionNumber.URI_HOST: (1, 255),
    OptionNumber.ETAG: (1, 8),
    OptionNumber.IF_NONE_MATCH: (0, 0),
    OptionNumber.OBSERVE: (0, 3),
    OptionNumber.URI_PORT: (0, 2),
    OptionNumber.LOCATION_PATH: (0, 255),
    OptionNumber.URI_PATH: (0, 255),
    OptionNumber.CONTENT_FORMAT: (0, 2),
    OptionNumber.MAX_AGE: (0, 4),
    OptionNumber.URI_QUERY: (0, 255),
    OptionNumber.HOP_LIMIT: (1, 1),
    OptionNumber.ACCEPT: (0, 2),
    OptionNumber.LOCATION_QUERY: (0, 255),
    OptionNumber.BLOCK2: (0, 3),
    OptionNumber.BLOCK1: (0, 3),
    OptionNumber.SIZE2: (0, 4),
    OptionNumber.PROXY_URI: (1, 1034),
    OptionNumber.PROXY_SCHEME: (1, 255),
    OptionNumber.SIZE1: (0, 4),
    OptionNumber.NO_RESPONSE: (0, 1),
})
UNIMPLEMENTED_OPTIONS: frozenset[int] = KNOWN_OPTIONS - OPTION_LENGTHS.keys()


class SignalOption:
    """RFC 8323 §5.3-5.6: options of signaling messages. Numbers are per signaling code and
    repeat across codes, so these are plain constants, not an enum (whose aliases would
    print the wrong name)."""

    MAX_MESSAGE_SIZE = 2  # CSM
    BLOCK_WISE_TRANSFER = 4  # CSM
    CUSTODY = 2  # Ping, Pong
    ALTERNATIVE_ADDRESS = 2  # Release
    HOLD_OFF = 4  # Release
    BAD_CSM_OPTION = 2  # Abort


class ContentFormat(IntEnum):
    """RFC 7252 §12.3 and the DOTS registration (RFC 9132 §10.4)."""

    TEXT_PLAIN = 0
    LINK_FORMAT = 40
    XML = 41
    OCTET_STREAM = 42
    EXI = 47
    JSON = 50
    CBOR = 60
    DOTS_CBOR = 271
    MISSING_BLOCKS_CBOR_SEQ = 272


# RFC 7252 §4.8: default transmission parameters.
ACK_TIMEOUT = 2.0
ACK_RANDOM_FACTOR = 1.5
MAX_RETRANSMIT = 4
NSTART = 1
DEFAULT_LEISURE = 5.0
PROBING_RATE = 1.0  # bytes/second
MAX_LATENCY = 100.0
PROCESSING_DELAY = ACK_TIMEOUT
