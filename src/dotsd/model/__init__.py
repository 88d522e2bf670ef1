"""DOTS data model: the signal channel CBOR key table (:mod:`.cbor_keys`), the JSON <-> CBOR
codec (:mod:`.codec`, RFC 9132 §6) and YANG validation (:mod:`.yang`, imported on demand
because it loads yangson and the modules).
"""

from dotsd.model.codec import decode, from_cbor, to_cbor
from dotsd.model.errors import (
    EncodeError,
    MalformedError,
    ModelError,
    TypeMismatchError,
    UnknownKeyError,
    ValidationError,
)

__all__ = [
    "EncodeError",
    "MalformedError",
    "ModelError",
    "TypeMismatchError",
    "UnknownKeyError",
    "ValidationError",
    "decode",
    "from_cbor",
    "to_cbor",
]
