"""Durable state of a DOTS server: cuid bindings, mitigations, session configuration.

``base`` holds the interface (``Store``), the records and the errors; ``schema`` the one
schema and its migrations, written for SQLite and PostgreSQL alike; ``sqlite`` the SQLite
store, the default. A PostgreSQL store (several server instances sharing state) would be a
second implementation of ``Store`` over the same schema; it is not written yet.

    store = SqliteStore.open(state_dir)
    if (other := store.bind_cuid(cuid, identity)) is not None:
        ...  # RFC 9132 §4.4.1.3 cuid collision: the server answers 4.09
    store.put_mitigation(MitigationRecord(...))
"""

from dotsd.signal.policy import INDEFINITE  # RFC 9132 §4.4.1.1 'lifetime' -1, for the records
from dotsd.store.base import (
    CuidBinding,
    JsonObject,
    MitigationRecord,
    SessionConfigRecord,
    Store,
    StoreClosedError,
    StoreCorruptError,
    StoreError,
    StoreIntegrityError,
    StoreVersionError,
)
from dotsd.store.schema import SCHEMA_VERSION
from dotsd.store.sqlite import DB_FILENAME, SqliteStore

__all__ = [
    "DB_FILENAME",
    "INDEFINITE",
    "SCHEMA_VERSION",
    "CuidBinding",
    "JsonObject",
    "MitigationRecord",
    "SessionConfigRecord",
    "SqliteStore",
    "Store",
    "StoreClosedError",
    "StoreCorruptError",
    "StoreError",
    "StoreIntegrityError",
    "StoreVersionError",
]
