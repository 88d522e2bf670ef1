"""The one schema of the dotsd store, its migrations, and every SQL statement the store runs.

Portability (SQLite now, PostgreSQL later for several server instances sharing state):

* Types are the common subset: TEXT, INTEGER, BIGINT (mid/sid are uint32, too large for a
  PostgreSQL INTEGER), DOUBLE PRECISION (epoch seconds), BOOLEAN. SQLite maps these names to
  its affinities; PostgreSQL takes them literally.
* JSON is stored as TEXT (PostgreSQL could move to JSONB in a later migration; nothing in SQL
  looks inside it).
* Upserts use ``INSERT ... ON CONFLICT (...) DO UPDATE SET col = excluded.col`` and
  ``ON CONFLICT DO NOTHING``, identical in SQLite >= 3.24 and PostgreSQL >= 9.5.
* No triggers, no stored procedures, no CHECKs encoding protocol rules (style notes: protocol
  rules live in Python). Only keys, NOT NULL and foreign keys.

Statements are written with ``?`` placeholders; the only dialect differences (placeholder
style, how a write transaction begins, per-connection setup) are in ``Dialect`` below.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from dotsd.store.base import StoreVersionError

SCHEMA_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between the SQL engines; everything else is shared text."""

    name: str
    paramstyle: Literal["qmark", "format"]
    # SQLite: IMMEDIATE takes the write lock at BEGIN, so a transaction never fails half-way
    # with SQLITE_BUSY on its first write (busy_timeout applies to BEGIN instead).
    begin: str

    def sql(self, statement: str) -> str:
        """``statement`` with this dialect's placeholders (``?`` → ``%s`` for psycopg)."""
        if self.paramstyle == "qmark":
            return statement
        return statement.replace("%", "%%").replace("?", "%s")


SQLITE: Final = Dialect(name="sqlite", paramstyle="qmark", begin="BEGIN IMMEDIATE")
# Not used yet: the shape of the PostgreSQL port (psycopg, "format" paramstyle).
POSTGRESQL: Final = Dialect(name="postgresql", paramstyle="format", begin="BEGIN")

# -- schema ------------------------------------------------------------------------------------

CREATE_VERSION_TABLE: Final = """
CREATE TABLE IF NOT EXISTS schema_version (
    version    INTEGER PRIMARY KEY,
    applied_at DOUBLE PRECISION NOT NULL
)"""

# Migration N takes the schema from version N-1 to N. Append, never edit a released one.
MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {
    1: (
        # RFC 9132 §4.4.1.1: a cuid identifies one client; one identity per cuid.
        """
        CREATE TABLE cuid_binding (
            cuid       TEXT PRIMARY KEY,
            identity   TEXT NOT NULL,
            first_seen DOUBLE PRECISION NOT NULL,
            last_seen  DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX cuid_binding_identity ON cuid_binding (identity)",
        # RFC 9132 §4.4.1: a mitigation request is identified by (cuid, mid).
        """
        CREATE TABLE mitigation (
            cuid               TEXT NOT NULL
                               REFERENCES cuid_binding (cuid) ON DELETE CASCADE,
            mid                BIGINT NOT NULL,
            cdid               TEXT,
            scope              TEXT NOT NULL,
            status             INTEGER NOT NULL,
            lifetime           BIGINT NOT NULL,
            expires_at         DOUBLE PRECISION,
            trigger_mitigation BOOLEAN NOT NULL,
            created            DOUBLE PRECISION NOT NULL,
            updated            DOUBLE PRECISION NOT NULL,
            extra              TEXT NOT NULL,
            PRIMARY KEY (cuid, mid)
        )""",
        "CREATE INDEX mitigation_expires_at ON mitigation (expires_at)",
        # RFC 9132 §4.5.2: one session configuration (one 'sid') per client.
        """
        CREATE TABLE session_config (
            cuid    TEXT PRIMARY KEY
                    REFERENCES cuid_binding (cuid) ON DELETE CASCADE,
            sid     BIGINT NOT NULL,
            config  TEXT NOT NULL,
            updated DOUBLE PRECISION NOT NULL
        )""",
    ),
}

assert max(MIGRATIONS) == SCHEMA_VERSION

SELECT_VERSION: Final = "SELECT MAX(version) FROM schema_version"
INSERT_VERSION: Final = "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)"

# -- cuid bindings -----------------------------------------------------------------------------

BIND_CUID: Final = """
INSERT INTO cuid_binding (cuid, identity, first_seen, last_seen) VALUES (?, ?, ?, ?)
ON CONFLICT (cuid) DO NOTHING"""
TOUCH_CUID: Final = "UPDATE cuid_binding SET last_seen = ? WHERE cuid = ? AND identity = ?"
SELECT_BINDING: Final = (
    "SELECT cuid, identity, first_seen, last_seen FROM cuid_binding WHERE cuid = ?"
)
DELETE_BINDING: Final = "DELETE FROM cuid_binding WHERE cuid = ?"
ALL_BINDINGS: Final = "SELECT cuid, identity, first_seen, last_seen FROM cuid_binding"

# -- mitigations -------------------------------------------------------------------------------

_MITIGATION_COLUMNS: Final = (
    "cuid, mid, cdid, scope, status, lifetime, expires_at, trigger_mitigation, "
    "created, updated, extra"
)
UPSERT_MITIGATION: Final = f"""
INSERT INTO mitigation ({_MITIGATION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (cuid, mid) DO UPDATE SET
    cdid = excluded.cdid, scope = excluded.scope, status = excluded.status,
    lifetime = excluded.lifetime, expires_at = excluded.expires_at,
    trigger_mitigation = excluded.trigger_mitigation, created = excluded.created,
    updated = excluded.updated, extra = excluded.extra"""
SELECT_MITIGATION: Final = (
    f"SELECT {_MITIGATION_COLUMNS} FROM mitigation WHERE cuid = ? AND mid = ?"
)
SELECT_MITIGATIONS_BY_CUID: Final = (
    f"SELECT {_MITIGATION_COLUMNS} FROM mitigation WHERE cuid = ? ORDER BY mid"
)
SELECT_ALL_MITIGATIONS: Final = f"SELECT {_MITIGATION_COLUMNS} FROM mitigation ORDER BY cuid, mid"
SELECT_ACTIVE_MITIGATIONS: Final = (
    f"SELECT {_MITIGATION_COLUMNS} FROM mitigation "
    "WHERE expires_at IS NULL OR expires_at > ? ORDER BY cuid, mid"
)
SELECT_EXPIRED_MITIGATIONS: Final = (
    f"SELECT {_MITIGATION_COLUMNS} FROM mitigation "
    "WHERE expires_at IS NOT NULL AND expires_at <= ? ORDER BY expires_at, cuid, mid"
)
DELETE_MITIGATION: Final = "DELETE FROM mitigation WHERE cuid = ? AND mid = ?"
UPDATE_MITIGATION_STATUS: Final = (
    "UPDATE mitigation SET status = ?, updated = ? WHERE cuid = ? AND mid = ?"
)

# -- session configuration ---------------------------------------------------------------------

UPSERT_SESSION_CONFIG: Final = """
INSERT INTO session_config (cuid, sid, config, updated) VALUES (?, ?, ?, ?)
ON CONFLICT (cuid) DO UPDATE SET
    sid = excluded.sid, config = excluded.config, updated = excluded.updated"""
SELECT_SESSION_CONFIG: Final = (
    "SELECT cuid, sid, config, updated FROM session_config WHERE cuid = ?"
)
DELETE_SESSION_CONFIG: Final = "DELETE FROM session_config WHERE cuid = ?"
ALL_SESSION_CONFIGS: Final = "SELECT cuid, sid, config, updated FROM session_config"


# -- migration entry point ---------------------------------------------------------------------


class _Cursor(Protocol):
    def fetchone(self) -> Any: ...


class Executor(Protocol):
    """The part of a DB-API connection that ``migrate`` needs (sqlite3 and psycopg alike)."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> _Cursor: ...


def current_version(db: Executor, dialect: Dialect) -> int:
    """The schema version recorded in the database (0 for an empty database)."""
    db.execute(dialect.sql(CREATE_VERSION_TABLE))
    row = db.execute(dialect.sql(SELECT_VERSION)).fetchone()
    return 0 if row is None or row[0] is None else int(row[0])


def migrate(db: Executor, dialect: Dialect, now: float) -> int:
    """Bring the schema to ``SCHEMA_VERSION``; return the version found before.

    Run it inside one write transaction: DDL is transactional in SQLite and PostgreSQL, so a
    migration is applied entirely or not at all. A database from a newer dotsd is refused
    rather than half-understood.
    """
    found = current_version(db, dialect)
    if found > SCHEMA_VERSION:
        raise StoreVersionError(
            f"database schema version {found} is newer than this dotsd supports "
            f"({SCHEMA_VERSION}); upgrade dotsd"
        )
    for version in range(found + 1, SCHEMA_VERSION + 1):
        for statement in MIGRATIONS[version]:
            db.execute(dialect.sql(statement))
        db.execute(dialect.sql(INSERT_VERSION), (version, now))
    return found
